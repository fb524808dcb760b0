"""SSH host keys (SPEC step 4): real ssh-keygen, real files under a scratch root.

Most tests configure one ed25519 key through a HostKey line, so they stay fast; the
defaults (RSA included) are made once, in the first-boot test.
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootagent import state
from bootagent.steps import host_keys

UUID = "6a4b1d2e-0c3f-4e5a-9b8c-7d6e5f4a3b2c"
OTHER_UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
ED25519 = "/etc/ssh/ssh_host_ed25519_key"


def set_dmi(root: Path, uuid: str | None) -> None:
    path = root / "sys/class/dmi/id/product_uuid"
    if uuid is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(uuid + "\n")


def sshd_config(root: Path, text: str) -> None:
    (root / "etc/ssh/sshd_config").write_text(text)


def ed25519_only(root: Path) -> None:
    sshd_config(root, f"# test\nHostKey {ED25519}\nPasswordAuthentication no\n")


def pair_is_valid(private: Path) -> bool:
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(private)], capture_output=True, check=True)
    return derived.stdout.split()[:2] == Path(f"{private}.pub").read_bytes().split()[:2]


def keygen_fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def snapshot(root: Path) -> dict:
    """Every file under the root: bytes, mode, mtime (symlinks by their target)."""
    seen = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            seen[str(path)] = ("link", os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            seen[str(path)] = (path.read_bytes(), info.st_mode, info.st_mtime_ns)
        else:
            seen[str(path)] = ("dir", info.st_mode)
    return seen


def key_bytes(root: Path, logical: str = ED25519) -> tuple[bytes, bytes]:
    private = root / logical.lstrip("/")
    return private.read_bytes(), Path(f"{private}.pub").read_bytes()


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Where ssh-keygen's private directory goes, so a test can see it is removed."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def test_first_boot_makes_the_default_keys_with_right_modes_and_valid_pairs(root, make_ctx, private_tmp):
    set_dmi(root, UUID)
    result = host_keys.run(make_ctx(), None)

    assert result.status == "changed", result.error
    fingerprints = result.details["fingerprints"]
    assert sorted(fingerprints) == sorted(host_keys.DEFAULT_KEYS)
    for logical in host_keys.DEFAULT_KEYS:
        private, public = root / logical.lstrip("/"), root / f"{logical.lstrip('/')}.pub"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert stat.S_IMODE(public.stat().st_mode) == 0o644
        assert (private.stat().st_uid, private.stat().st_gid) == (0, 0)
        assert (public.stat().st_uid, public.stat().st_gid) == (0, 0)
        assert pair_is_valid(private)
        assert fingerprints[logical] == keygen_fingerprint(public)
        assert logical in result.changed and f"{logical}.pub" in result.changed
    assert public.read_text().endswith("\n") and len(public.read_text().split()) == 2  # no comment
    assert state.host_keys_instance(make_ctx()) == f"dmi:{UUID}"
    assert list(private_tmp.iterdir()) == []  # the private directory is gone


def test_same_instance_again_changes_nothing(root, make_ctx):
    ed25519_only(root)
    set_dmi(root, UUID)
    assert host_keys.run(make_ctx(), None).status == "changed"
    before = snapshot(root)

    result = host_keys.run(make_ctx(), "some-vm-id")

    assert result.status == "unchanged" and result.changed == []
    assert snapshot(root) == before


def test_a_new_dmi_uuid_replaces_every_host_key_the_image_had(root, make_ctx):
    ed25519_only(root)
    set_dmi(root, UUID)
    host_keys.run(make_ctx(), None)
    # a key the image carries but sshd_config does not name is replaced too
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(root / "etc/ssh/ssh_host_ecdsa_key")],
                   check=True)
    old = {name: key_bytes(root, name) for name in (ED25519, "/etc/ssh/ssh_host_ecdsa_key")}

    set_dmi(root, OTHER_UUID)
    result = host_keys.run(make_ctx(), None)

    assert result.status == "changed", result.error
    for name, (old_private, old_public) in old.items():
        new_private, new_public = key_bytes(root, name)
        assert new_private != old_private and new_public != old_public
        assert pair_is_valid(root / name.lstrip("/"))
        assert result.details["fingerprints"][name] == keygen_fingerprint(root / f"{name.lstrip('/')}.pub")
    assert not (root / "etc/ssh/ssh_host_rsa_key").exists()  # nothing sshd does not load is added
    assert state.host_keys_instance(make_ctx()) == f"dmi:{OTHER_UUID}"


def test_keep_never_replaces_but_remakes_a_deleted_key(root, make_ctx):
    ed25519_only(root)
    set_dmi(root, UUID)
    keep = {"ssh": {"host_keys": "keep"}}
    host_keys.run(make_ctx(config=keep), None)
    old = key_bytes(root)

    set_dmi(root, OTHER_UUID)
    assert host_keys.run(make_ctx(config=keep), None).status == "unchanged"
    assert key_bytes(root) == old

    (root / ED25519.lstrip("/")).unlink()
    result = host_keys.run(make_ctx(config=keep), None)
    assert result.status == "changed"
    assert key_bytes(root) != old and pair_is_valid(root / ED25519.lstrip("/"))


def test_keep_restores_a_missing_pub_from_the_private_key(root, make_ctx):
    ed25519_only(root)
    set_dmi(root, UUID)
    host_keys.run(make_ctx(config={"ssh": {"host_keys": "keep"}}), None)
    private, public = key_bytes(root)
    (root / f"{ED25519.lstrip('/')}.pub").unlink()

    result = host_keys.run(make_ctx(config={"ssh": {"host_keys": "keep"}}), None)

    assert result.status == "changed" and result.changed == [f"{ED25519}.pub"]
    assert key_bytes(root) == (private, public)


def test_without_dmi_the_vm_id_is_the_instance(root, make_ctx):
    ed25519_only(root)
    assert host_keys.run(make_ctx(), "VM-One").status == "changed"
    first = key_bytes(root)
    assert state.host_keys_instance(make_ctx()) == "vmid:vm-one"

    assert host_keys.run(make_ctx(), "vm-one").status == "unchanged"  # case does not matter
    assert host_keys.run(make_ctx(), "vm-two").status == "changed"
    assert key_bytes(root) != first


def test_with_no_instance_known_only_missing_keys_are_made(root, make_ctx):
    ed25519_only(root)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / ED25519.lstrip("/"))], check=True)
    baked = key_bytes(root)
    assert host_keys.run(make_ctx(), None).status == "unchanged"
    assert key_bytes(root) == baked
    assert state.host_keys_instance(make_ctx()) is None

    state.set_host_keys_instance(make_ctx(), "dmi:" + UUID)
    (root / ED25519.lstrip("/")).unlink()
    assert host_keys.run(make_ctx(), None).status == "changed"
    assert pair_is_valid(root / ED25519.lstrip("/"))
    assert state.host_keys_instance(make_ctx()) == "dmi:" + UUID  # left alone


def test_dmi_uuid_compares_without_regard_to_case(root, make_ctx):
    ed25519_only(root)
    set_dmi(root, UUID.upper())
    host_keys.run(make_ctx(), None)
    set_dmi(root, UUID.lower())
    assert host_keys.run(make_ctx(), None).status == "unchanged"


def test_hostkey_lines_and_included_files_are_what_sshd_loads(root, make_ctx):
    sshd_config(root, "Include sshd_config.d/*.conf\n"
                      "hostkey=/etc/ssh/ssh_host_ed25519_key\n"
                      "Match User nobody\n  PasswordAuthentication no\n")
    (root / "etc/ssh/sshd_config.d").mkdir()
    (root / "etc/ssh/sshd_config.d/50-keys.conf").write_text(
        '# extra keys\nHOSTKEY "/etc/ssh/keys/ssh_host_ecdsa_key"  # from an include\n')
    (root / "etc/ssh/sshd_config.d/ignored.txt").write_text("HostKey /etc/ssh/ssh_host_rsa_key\n")
    set_dmi(root, UUID)

    result = host_keys.run(make_ctx(), None)

    assert result.status == "changed", result.error
    assert sorted(result.details["fingerprints"]) == ["/etc/ssh/keys/ssh_host_ecdsa_key", ED25519]
    assert pair_is_valid(root / "etc/ssh/keys/ssh_host_ecdsa_key")
    assert not (root / "etc/ssh/ssh_host_rsa_key").exists()


def test_a_hostkey_whose_name_gives_no_type_fails_naming_it(root, make_ctx):
    sshd_config(root, f"HostKey /etc/ssh/my_key\nHostKey {ED25519}\n")
    result = host_keys.run(make_ctx(), "vm")
    assert result.status == "failed"
    assert "/etc/ssh/my_key" in result.error and "\n" not in result.error
    assert pair_is_valid(root / ED25519.lstrip("/"))  # the others are still made
    made = key_bytes(root)
    again = host_keys.run(make_ctx(), "vm")  # named again, and the good key does not churn
    assert again.status == "failed" and "/etc/ssh/my_key" in again.error and key_bytes(root) == made


def test_dry_run_names_the_files_and_changes_no_byte(root, make_ctx, private_tmp):
    ed25519_only(root)
    set_dmi(root, UUID)
    before = snapshot(root)
    ctx = make_ctx(dry_run=True)

    result = host_keys.run(ctx, "vm")

    assert snapshot(root) == before
    assert [path for path, _ in ctx.changes] == [ED25519, f"{ED25519}.pub"]
    assert result.changed == [ED25519, f"{ED25519}.pub"]
    assert list(private_tmp.iterdir()) == []  # no key was even made


def test_a_symlinked_host_key_is_refused_not_followed(root, make_ctx, tmp_path):
    ed25519_only(root)
    set_dmi(root, UUID)
    outside = tmp_path / "precious"
    outside.write_text("not a key\n")
    (root / ED25519.lstrip("/")).symlink_to(outside)

    result = host_keys.run(make_ctx(), None)

    assert result.status == "failed" and ED25519 in result.error and "symlink" in result.error
    assert outside.read_text() == "not a key\n"
    assert (root / ED25519.lstrip("/")).is_symlink()
    assert not (root / f"{ED25519.lstrip('/')}.pub").exists()
    assert host_keys.run(make_ctx(), None).status == "failed"  # every boot, until it is fixed
    assert outside.read_text() == "not a key\n"


def test_missing_ssh_keygen_fails_with_one_line(root, make_ctx, tmp_path):
    ed25519_only(root)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = host_keys.run(make_ctx(env={"PATH": str(empty)}), "vm")
    assert result.status == "failed" and "ssh-keygen" in result.error and "\n" not in result.error
    assert not (root / ED25519.lstrip("/")).exists()


ECDSA = "/etc/ssh/ssh_host_ecdsa_key"


def refusing_keygen(tmp_path: Path, kind: str) -> dict:
    """An ssh-keygen that cannot make one key type (as a FIPS-restricted build refuses
    Ed25519), and is the real one for everything else: the env to run under."""
    bin_dir = tmp_path / f"no-{kind}-bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh-keygen"
    wrapper.write_text(f"""#!/bin/sh
for arg in "$@"; do [ "$arg" = {kind} ] && {{ echo "unknown key type {kind}" >&2; exit 255; }}; done
exec {shutil.which("ssh-keygen")} "$@"
""")
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', os.defpath)}"}


def test_an_image_key_ssh_keygen_cannot_replace_is_removed_and_the_others_change_once(root, make_ctx, tmp_path):
    sshd_config(root, f"HostKey {ED25519}\nHostKey {ECDSA}\n")
    set_dmi(root, UUID)
    assert host_keys.run(make_ctx(), None).status == "changed"  # the image's keys
    image_ed25519 = key_bytes(root, ED25519)
    no_ecdsa = refusing_keygen(tmp_path, "ecdsa")

    set_dmi(root, OTHER_UUID)  # a VM made from the image
    first = host_keys.run(make_ctx(env=no_ecdsa), None)

    assert first.status == "failed" and ECDSA in first.error and "unknown key type" in first.error
    assert not (root / ECDSA.lstrip("/")).exists() and not (root / f"{ECDSA.lstrip('/')}.pub").exists()
    assert ECDSA in first.changed and f"{ECDSA}.pub" in first.changed
    own_ed25519 = key_bytes(root, ED25519)
    assert own_ed25519 != image_ed25519 and pair_is_valid(root / ED25519.lstrip("/"))
    assert state.host_keys_instance(make_ctx()) == f"dmi:{OTHER_UUID}"

    # the next boots of this VM: its keys stay; the missing one is asked for until it is made
    again = host_keys.run(make_ctx(env=no_ecdsa), None)
    assert again.status == "failed" and ECDSA in again.error
    assert key_bytes(root, ED25519) == own_ed25519
    fixed = host_keys.run(make_ctx(), None)
    assert fixed.status == "changed" and fixed.changed == [ECDSA, f"{ECDSA}.pub"]
    assert pair_is_valid(root / ECDSA.lstrip("/")) and key_bytes(root, ED25519) == own_ed25519


def test_skipped_when_off_or_without_sshd_config(root, make_ctx):
    assert host_keys.run(make_ctx(config={"ssh": {"host_keys": "off"}}), "vm").reason == "ssh.host_keys is off"
    (root / "etc/ssh/sshd_config").unlink()
    result = host_keys.run(make_ctx(), "vm")
    assert result.status == "skipped" and result.reason == "no /etc/ssh/sshd_config"
    assert list((root / "etc/ssh").iterdir()) == []


def test_dmi_uuid_reads_the_real_sysfs_layout_and_ignores_unset_ones(root, make_ctx):
    assert host_keys.dmi_uuid(make_ctx()) is None
    real = root / "sys/devices/virtual/dmi/id"
    real.mkdir(parents=True)
    (real / "product_uuid").write_text(UUID.upper() + "\n")
    (root / "sys/class/dmi").mkdir(parents=True)
    (root / "sys/class/dmi/id").symlink_to("../../devices/virtual/dmi/id")  # as on Linux
    assert host_keys.dmi_uuid(make_ctx()) == UUID
    (real / "product_uuid").write_text("00000000-0000-0000-0000-000000000000\n")
    assert host_keys.dmi_uuid(make_ctx()) is None


def test_a_run_killed_at_any_write_point_is_repaired_by_the_next(root, tmp_path):
    """Crash consistency: kill the step at each write point, run again: valid new pairs."""
    ed25519_only(root)
    set_dmi(root, UUID)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / ED25519.lstrip("/"))], check=True)
    image = key_bytes(root)
    script = ("import sys; from bootagent import config; from bootagent.context import Context;"
              "from bootagent.steps import host_keys;"
              "r = host_keys.run(Context(root=sys.argv[1], config=config.defaults()), None);"
              "sys.exit(0 if r.ok else 1)")
    count_file = tmp_path / "points"
    killed_at = 1
    while True:
        work = tmp_path / f"run{killed_at}"
        subprocess.run(["cp", "-a", str(root), str(work)], check=True)
        env = {**os.environ, "BOOTAGENT_FAULT_KILL_AT": str(killed_at), "BOOTAGENT_FAULT_COUNT_FILE": str(count_file)}
        first = subprocess.run([sys.executable, "-c", script, str(work)], env=env)
        assert first.returncode in (0, -9), f"killed at {killed_at}: the run failed on its own"
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTAGENT_")}
        again = subprocess.run([sys.executable, "-c", script, str(work)], env=clean_env)
        assert again.returncode == 0
        private, public = key_bytes(work)
        assert private != image[0] and public != image[1], f"killed at {killed_at}: image key kept"
        assert pair_is_valid(work / ED25519.lstrip("/")), f"killed at {killed_at}: broken pair"
        if first.returncode == 0:  # the run got past its last write point
            break
        killed_at += 1
        assert killed_at < 100
    assert killed_at > 4


def test_fingerprint_matches_ssh_keygen(tmp_path):
    for kind in ("ed25519", "ecdsa"):
        key = tmp_path / kind
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "a comment", "-f", str(key)], check=True)
        assert host_keys.fingerprint(Path(f"{key}.pub").read_text()) == keygen_fingerprint(Path(f"{key}.pub"))
    with pytest.raises(ValueError):
        host_keys.fingerprint("ssh-ed25519")


@given(st.binary(min_size=1, max_size=64))
def test_fingerprint_is_unpadded_sha256_of_any_blob(blob):
    shown = host_keys.fingerprint(f"ssh-test {base64.b64encode(blob).decode()}")
    assert shown.startswith("SHA256:") and len(shown) == 7 + 43 and not shown.endswith("=")


def test_instance_verdict_never_compares_the_dmi_uuid_with_the_vm_id():
    verdict = host_keys.instance_verdict
    assert verdict(None, None, None) == ("unknown", None)
    assert verdict(None, UUID.upper(), "vm") == ("new", f"dmi:{UUID}")
    assert verdict(f"dmi:{UUID}", UUID.upper(), None) == ("same", f"dmi:{UUID}")
    assert verdict(f"dmi:{UUID}", None, UUID) == ("unknown", None)  # a vmId is no DMI UUID
    assert verdict("vmid:vm", None, "VM") == ("same", "vmid:vm")
    assert verdict("vmid:vm", UUID, "vm") == ("same", f"dmi:{UUID}")  # now known by its DMI UUID
    assert verdict(f"vmid:{UUID}", UUID, None) == ("new", f"dmi:{UUID}")  # made offline, booted elsewhere
    assert verdict("vm", None, "vm") == ("new", "vmid:vm")  # a record of no kind the agent writes


def test_directives_parse_as_sshd_does():
    text = ('  HostKey /a\nhostkey=/b\n#HostKey /c\nHOSTKEY "/d e" # note\nInclude x/*.conf y\n'
            "PasswordAuthentication no\n")
    assert list(host_keys.directives(text, "f")) == [
        ("hostkey", ["/a"]), ("hostkey", ["/b"]), ("hostkey", ["/d e"]), ("include", ["x/*.conf", "y"]),
        ("passwordauthentication", ["no"])]


def test_dmi_fields_are_found_behind_the_sysfs_symlink(root, make_ctx):
    """On Linux /sys/class/dmi/id is a symlink the writer will not follow; the agent must still
    find the machine's UUID and Azure's asset tag under /sys/devices/virtual/dmi/id."""
    from bootagent import platform

    real = root / "sys/devices/virtual/dmi/id"
    real.mkdir(parents=True)
    (real / "product_uuid").write_text("4C4C4544-0000-1000-8000-000000000001\n")
    (real / "chassis_asset_tag").write_text(platform.AZURE_ASSET_TAG + "\n")
    (root / "sys/class").mkdir(parents=True)
    os.symlink("../devices/virtual/dmi/id", root / "sys/class/dmi")
    ctx = make_ctx()
    assert host_keys.dmi_uuid(ctx) == "4c4c4544-0000-1000-8000-000000000001"
    assert platform.on_azure(ctx)

"""Step `ssh_keys` on a real scratch root, after the real `useradd --root`: modes and
owners, existing lines kept, no duplicates, malformed keys refused by index while the
good ones go in, paths outside the home and symlinks on the way refused, dry-run."""

from __future__ import annotations

import base64
import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootagent.boot import Boot
from bootagent.errors import StepError
from bootagent.imds.document import parse_document
from bootagent.state import InstanceState
from bootagent.steps import ssh_keys, users
from bootagent.steps.ssh_keys import parse_key
from conftest import examples

HOME = "/home/azureuser"
AUTHORIZED = f"{HOME}/.ssh/authorized_keys"


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> dict[str, str]:
    """Real public keys made by ssh-keygen: name -> 'type blob comment'."""
    where = tmp_path_factory.mktemp("keys")
    made = {}
    for name, args in {"ed1": ["-t", "ed25519"], "ed2": ["-t", "ed25519"], "ed3": ["-t", "ed25519"],
                       "ecdsa": ["-t", "ecdsa", "-b", "384"], "rsa": ["-t", "rsa", "-b", "1024"]}.items():
        subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-C", f"{name}@test", "-f", str(where / name)],
                       check=True, capture_output=True)
        made[name] = (where / f"{name}.pub").read_text().strip()
    return made


def entry(key_data, path=AUTHORIZED) -> dict:
    return {"keyData": key_data, "path": path}


def make_boot(document: dict, public_keys: list | None = None) -> Boot:
    if public_keys is not None:
        document["compute"]["publicKeys"] = public_keys
    return Boot(parse_document(document), InstanceState({"steps": {}}))


def provision(ctx, boot: Boot):
    """users then ssh_keys, as the runner calls them."""
    boot.results["users"] = users.run(ctx, boot)
    result = ssh_keys.run(ctx, boot)
    boot.results["ssh_keys"] = result
    return result


def meta(path) -> tuple[int, int, int]:
    info = os.lstat(path)
    return info.st_mode & 0o7777, info.st_uid, info.st_gid


def tree(path) -> dict:
    """Every file and link under `path` with its bytes (or link target): to prove nothing moved."""
    found = {}
    for where, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(where, name)
            found[full] = os.readlink(full) if os.path.islink(full) else \
                (open(full, "rb").read() if os.path.isfile(full) else "dir")
    return found


# --- parse_key ------------------------------------------------------------------------------

def test_parse_key_accepts_real_keys_and_strips_noise(keys):
    for line in keys.values():
        assert parse_key(line) == line
        assert parse_key(f"  {line}\r\n") == line
        assert parse_key(line.replace(" ", "\t ", 1) + "\r") == line
    kind, blob, _ = keys["ed1"].split(" ")
    assert parse_key(f"{kind} {blob}") == f"{kind} {blob}"


@pytest.mark.parametrize("make, why", [
    (lambda k: "ssh-foo " + k["ed1"].split()[1], "unknown key type"),
    (lambda k: "ssh-dss " + k["ed1"].split()[1], "unknown key type"),
    (lambda k: "ssh-ed25519 not*base64!", "not a valid ssh-ed25519 key"),
    (lambda k: "ssh-ed25519 " + k["ed1"].split()[1][:-3], "not a valid ssh-ed25519 key"),
    (lambda k: "ssh-rsa " + k["ed1"].split()[1], "not a valid ssh-rsa key"),
    (lambda k: "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed2551").decode(), "not a valid"),
    (lambda k: k["ed1"] + "\n" + k["ed2"], "embedded newline"),
    (lambda k: 'command="/bin/sh" ' + k["ed1"], "options"),
    (lambda k: "no-pty,from=\"10.0.0.0/8\" " + k["ed1"], "options"),
    (lambda k: "ssh-ed25519", "no key"),
    (lambda k: "  \r\n ", "empty"),
    (lambda k: k["ed1"] + " \x1b[31mred", "non-printable"),
    (lambda k: None, "not a string"),
    (lambda k: ["ssh-ed25519"], "not a string"),
])
def test_parse_key_refuses_malformed_keys_by_index(keys, make, why):
    with pytest.raises(StepError) as caught:
        parse_key(make(keys), 3)
    assert "compute.publicKeys[3]" in str(caught.value) and why in str(caught.value)
    assert "\n" not in str(caught.value)


@settings(max_examples=examples(150), deadline=None)
@given(st.one_of(st.text(max_size=200), st.none(), st.integers(), st.binary(max_size=50),
                 st.builds(lambda kind, blob, rest: f"{kind} {blob}{rest}",
                           st.sampled_from(ssh_keys.KEY_TYPES + ("ssh-dss", "")),
                           st.from_regex(r"\A[A-Za-z0-9+/]{0,60}={0,2}\Z"), st.text(max_size=20))))
def test_parse_key_returns_a_line_or_raises_step_error(value):
    try:
        line = parse_key(value)
    except StepError:
        return
    assert isinstance(line, str) and "\n" not in line and "\r" not in line
    assert line.split()[0] in ssh_keys.KEY_TYPES
    assert parse_key(line) == line


@settings(max_examples=examples(50), deadline=None)
@given(st.sampled_from(["ed1", "ecdsa", "rsa"]), st.text(" \t\r\n", max_size=4),
       st.text(" \t\r\n", max_size=4))
def test_parse_key_normalizes_surrounding_blanks(keys, name, before, after):
    assert parse_key(before + keys[name] + after) == keys[name]


# --- check_key_path -------------------------------------------------------------------------

@pytest.mark.parametrize("path, expected", [
    (AUTHORIZED, AUTHORIZED),
    (f"{HOME}//.ssh/./authorized_keys", AUTHORIZED),
    (f"{HOME}/keys/extra", f"{HOME}/keys/extra"),
])
def test_key_paths_inside_home(path, expected):
    assert ssh_keys.check_key_path(path, HOME, 0) == expected


@pytest.mark.parametrize("path", ["/root/.ssh/authorized_keys", f"{HOME}/../other/.ssh/authorized_keys",
                                  f"{HOME}/.ssh/../../../etc/passwd", f"{HOME}X/.ssh/authorized_keys",
                                  HOME, f"{HOME}/", ".ssh/authorized_keys", "", None, 7,
                                  f"{HOME}/.ssh/authorized_keys\0x", "/etc/ssh/sshd_config"])
def test_key_paths_outside_home_are_refused(path):
    with pytest.raises(StepError) as caught:
        ssh_keys.check_key_path(path, HOME, 2)
    assert "compute.publicKeys[2].path" in str(caught.value)


# --- run ------------------------------------------------------------------------------------

def test_installs_keys_with_modes_and_owners_then_changes_nothing(make_ctx, root, document, keys):
    ctx = make_ctx()
    boot = make_boot(document, [entry(keys["ed1"] + "\r\n"), entry("  " + keys["rsa"])])
    result = provision(ctx, boot)
    assert (result.status, result.changed) == ("changed", [f"{HOME}/.ssh", AUTHORIZED])
    uid, gid = boot.admin.uid, boot.admin.gid
    assert uid != 0
    assert meta(root / "home/azureuser/.ssh") == (0o700, uid, gid)
    assert meta(root / "home/azureuser/.ssh/authorized_keys") == (0o600, uid, gid)
    assert (root / "home/azureuser/.ssh/authorized_keys").read_text() == f"{keys['ed1']}\n{keys['rsa']}\n"
    stamp = os.stat(root / "home/azureuser/.ssh/authorized_keys").st_mtime_ns
    again = make_boot(document)
    again.results["users"] = users.run(make_ctx(), again)
    assert again.results["users"].status == "unchanged"
    assert ssh_keys.run(make_ctx(), again).status == "unchanged"
    assert os.stat(root / "home/azureuser/.ssh/authorized_keys").st_mtime_ns == stamp


def test_default_document_keys_install(make_ctx, root, document):
    result = provision(make_ctx(), make_boot(document))
    assert result.status == "changed", result.error
    text = (root / "home/azureuser/.ssh/authorized_keys").read_text()
    assert text.count("\n") == 2 and text.startswith("ssh-ed25519 ")


def test_existing_lines_kept_byte_for_byte_and_no_duplicates(make_ctx, root, document, keys):
    ctx = make_ctx()
    boot = make_boot(document, [entry(keys["ed1"])])
    users.run(ctx, boot)
    kind, blob, _ = keys["ed1"].split(" ")
    existing = (b"# hand-written\r\n"
                + f'from="10.0.0.0/8",no-pty {kind} {blob} other-comment\r\n'.encode()
                + b"\n" + keys["ecdsa"].encode())          # no final newline
    ssh_dir = root / "home/azureuser/.ssh"
    ssh_dir.mkdir(mode=0o755)
    (ssh_dir / "authorized_keys").write_bytes(existing)
    boot = make_boot(document, [entry(keys["ed1"]), entry(keys["ecdsa"]), entry(keys["ed2"]),
                                entry(keys["ed2"] + " "), entry(f"{kind} {blob} third-comment")])
    result = provision(ctx, boot)
    assert result.status == "changed", result.error
    assert (ssh_dir / "authorized_keys").read_bytes() == existing + b"\n" + keys["ed2"].encode() + b"\n"
    uid, gid = boot.admin.uid, boot.admin.gid
    assert meta(ssh_dir) == (0o700, uid, gid)              # an existing ~/.ssh is fixed too
    assert meta(ssh_dir / "authorized_keys") == (0o600, uid, gid)


def test_malformed_keys_are_refused_by_index_and_the_others_installed(make_ctx, root, document, keys):
    boot = make_boot(document, [
        entry(keys["ed1"]),
        entry("ssh-rsa " + keys["ed2"].split()[1]),         # blob of another type
        entry('command="curl x|sh" ' + keys["ed3"]),         # options
        entry(keys["rsa"]),
        entry(keys["ecdsa"] + "\nssh-ed25519 AAAA"),         # embedded newline
    ])
    result = provision(make_ctx(), boot)
    assert result.status == "failed"
    assert "\n" not in result.error
    for index in (1, 2, 4):
        assert f"compute.publicKeys[{index}]" in result.error
    for index in (0, 3):
        assert f"compute.publicKeys[{index}]" not in result.error
    assert result.changed == [f"{HOME}/.ssh", AUTHORIZED]
    assert (root / "home/azureuser/.ssh/authorized_keys").read_text() == f"{keys['ed1']}\n{keys['rsa']}\n"


@pytest.mark.parametrize("path", ["/root/.ssh/authorized_keys",
                                  f"{HOME}/../../root/.ssh/authorized_keys",
                                  f"{HOME}/.ssh/../../../etc/cron.d/evil",
                                  "/home/azureuser2/.ssh/authorized_keys",
                                  "relative/authorized_keys"])
def test_key_path_outside_home_is_refused_others_installed(make_ctx, root, document, keys, path):
    before = tree(root / "root")
    boot = make_boot(document, [entry(keys["ed1"]), entry(keys["ed2"], path)])
    result = provision(make_ctx(), boot)
    assert result.status == "failed"
    assert "compute.publicKeys[1]" in result.error and "compute.publicKeys[0]" not in result.error
    assert (root / "home/azureuser/.ssh/authorized_keys").read_text() == keys["ed1"] + "\n"
    assert tree(root / "root") == before
    assert not (root / "etc/cron.d").exists() and not (root / "home/azureuser2").exists()
    assert not (root / "relative").exists()


def test_symlinked_ssh_dir_is_refused_and_its_target_not_written(make_ctx, root, document, keys, tmp_path):
    ctx = make_ctx()
    boot = make_boot(document, [entry(keys["ed1"]), entry(keys["ed2"], f"{HOME}/other/authorized_keys")])
    users.run(ctx, boot)
    target = tmp_path / "outside"
    target.mkdir()
    os.symlink(target, root / "home/azureuser/.ssh")
    boot.results["users"] = users.run(ctx, boot)
    result = ssh_keys.run(ctx, boot)
    assert result.status == "failed"
    assert "compute.publicKeys[0]" in result.error and "symlink" in result.error
    assert os.listdir(target) == []
    assert os.path.islink(root / "home/azureuser/.ssh")
    assert (root / "home/azureuser/other/authorized_keys").read_text() == keys["ed2"] + "\n"
    assert result.changed == [f"{HOME}/other", f"{HOME}/other/authorized_keys"]


def test_symlinked_authorized_keys_is_refused_and_its_target_not_written(make_ctx, root, document, keys,
                                                                        tmp_path):
    ctx = make_ctx()
    boot = make_boot(document, [entry(keys["ed1"])])
    users.run(ctx, boot)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    ssh_dir = root / "home/azureuser/.ssh"
    ssh_dir.mkdir()
    os.symlink(victim, ssh_dir / "authorized_keys")
    boot.results["users"] = users.run(ctx, boot)
    result = ssh_keys.run(ctx, boot)
    assert result.status == "failed" and "compute.publicKeys[0]" in result.error
    assert victim.read_text() == "precious\n"
    assert os.path.islink(ssh_dir / "authorized_keys")


def test_symlinked_home_is_refused(make_ctx, root, document, keys, tmp_path):
    ctx = make_ctx()
    boot = make_boot(document, [entry(keys["ed1"])])
    users.run(ctx, boot)
    elsewhere = tmp_path / "elsewhere"
    os.rename(root / "home/azureuser", elsewhere)
    os.symlink(elsewhere, root / "home/azureuser")
    boot.results["users"] = users.run(ctx, boot)
    result = ssh_keys.run(ctx, boot)
    assert result.status == "failed" and "compute.publicKeys[0]" in result.error
    assert os.listdir(elsewhere) == []


def test_users_failed_makes_ssh_keys_fail(make_ctx, root, document, keys):
    document["compute"]["osProfile"]["adminUsername"] = "Bad Name"
    boot = make_boot(document, [entry(keys["ed1"])])
    with pytest.raises(StepError) as caught:
        users.run(make_ctx(), boot)
    boot.results["users"] = ssh_keys.StepResult.failed(str(caught.value))
    result = ssh_keys.run(make_ctx(), boot)
    assert result.status == "failed"
    assert "could not be had" in result.error and "compute.osProfile.adminUsername" in result.error
    assert os.listdir(root / "home") == []


@pytest.mark.parametrize("change, reason", [
    (lambda doc: doc["compute"].pop("osProfile"), "no osProfile in the document"),
    (lambda doc: doc["compute"]["osProfile"].update(adminUsername=""), "no adminUsername in the document"),
])
def test_users_skipped_makes_ssh_keys_skipped_with_the_same_reason(make_ctx, root, document, change, reason):
    change(document)
    boot = make_boot(document)
    result = provision(make_ctx(), boot)
    assert boot.results["users"].reason == reason
    assert (result.status, result.reason) == ("skipped", reason)


@pytest.mark.parametrize("public_keys", [[], None])
def test_no_public_keys_is_skipped(make_ctx, root, document, public_keys):
    if public_keys is None:
        del document["compute"]["publicKeys"]
    else:
        document["compute"]["publicKeys"] = public_keys
    result = provision(make_ctx(), make_boot(document))
    assert (result.status, result.reason) == ("skipped", "no publicKeys in the document")


def test_disabled_in_config_is_skipped(make_ctx, root, document):
    ctx = make_ctx(config={"ssh": {"enabled": False}})
    result = provision(ctx, make_boot(document))
    assert result.status == "skipped"
    assert not (root / "home/azureuser/.ssh").exists()


def test_account_resolved_from_passwd_when_users_was_gated(make_ctx, root, document, keys):
    ctx = make_ctx()
    users.run(ctx, make_boot(document))
    boot = make_boot(document, [entry(keys["ed1"])])
    boot.results["users"] = ssh_keys.StepResult("unchanged")   # what the runner records when gated
    assert boot.admin is None
    result = ssh_keys.run(ctx, boot)
    assert result.status == "changed", result.error
    assert (root / "home/azureuser/.ssh/authorized_keys").read_text() == keys["ed1"] + "\n"


def test_nested_key_path_gets_private_directories(make_ctx, root, document, keys):
    path = f"{HOME}/keys/extra/authorized_keys"
    boot = make_boot(document, [entry(keys["ed1"], path)])
    result = provision(make_ctx(), boot)
    assert result.changed == [f"{HOME}/keys", f"{HOME}/keys/extra", path]
    uid, gid = boot.admin.uid, boot.admin.gid
    assert meta(root / "home/azureuser/keys") == (0o700, uid, gid)
    assert meta(root / "home/azureuser/keys/extra") == (0o700, uid, gid)
    assert meta(root / "home/azureuser/keys/extra/authorized_keys") == (0o600, uid, gid)


def test_dry_run_writes_nothing_and_records(make_ctx, root, document, keys):
    ctx = make_ctx()
    users.run(ctx, make_boot(document))
    home_before = tree(root / "home")
    dry = make_ctx(dry_run=True)
    boot = make_boot(document, [entry(keys["ed1"])])
    result = provision(dry, boot)
    assert (result.status, result.changed) == ("changed", [f"{HOME}/.ssh", AUTHORIZED])
    assert tree(root / "home") == home_before
    described = dict(dry.changes)
    assert keys["ed1"] in described[AUTHORIZED]


def test_dry_run_before_the_user_exists(make_ctx, root, document, keys):
    dry = make_ctx(dry_run=True)
    boot = make_boot(document, [entry(keys["ed1"]), entry(keys["ed2"], "/root/.ssh/authorized_keys")])
    result = provision(dry, boot)
    assert result.status == "failed" and "compute.publicKeys[1]" in result.error
    assert result.changed == [f"{HOME}/.ssh", AUTHORIZED]
    assert os.listdir(root / "home") == []
    assert "azureuser" not in (root / "etc/passwd").read_text()

"""`bootagent run` end to end, through the installed CLI, on a scratch root, with the
project's fake IMDS on loopback, the real `useradd --root` and the real ssh-keygen."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from bootagent.steps import ORDER
from conftest import BOOTAGENT, b64, result_json, run_cli

USERDATA_TEXT = "provisioned by bootagent"  # in the default document's userData: never in output
HOST_KEYS = ("ssh_host_rsa_key", "ssh_host_ecdsa_key", "ssh_host_ed25519_key")

MANIFEST = """\
templates:
  - src: motd.j2
    dest: /etc/motd
  - src: role.j2
    dest: /etc/app/role.conf
    mode: "0640"
    when: "tags.get('role') == 'web'"
  - src: never.j2
    dest: /etc/never.conf
    when: "tags.get('no-such-tag')"
"""
MOTD = ("Welcome to {{ hostname }} ({{ tags.env }}), admin {{ admin_user }}, in {{ compute.location }}, "
        "ip {{ network.interface[0].ipv4.ipAddress[0].privateIpAddress }}\n"
        "{{ userdata.get('motd_message', '') }}\n")
ROLE = "role={{ tags.role }}\n"


def install_templates(root: Path, manifest: str = MANIFEST, **extra: str) -> None:
    """The config and templates an image builder would bake into the image."""
    templates = root / "etc/bootagent/templates"
    templates.mkdir(parents=True, exist_ok=True)
    (root / "etc/bootagent/bootagent.yaml").write_text(manifest)
    sources = {"motd.j2": MOTD, "role.j2": ROLE, "never.j2": "never\n", **extra}
    for name, text in sources.items():
        (templates / name).write_text(text)


def boot(root: Path, fake, *extra: str):
    return run_cli("run", "--root", str(root), "--imds-url", fake.url, "--timeout", "30", *extra)


def passwd_entry(root: Path, name: str) -> list[str] | None:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def owner_mode(path: Path) -> tuple[int, int, int]:
    info = path.lstat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


def snapshot(*tops: Path) -> dict[str, tuple]:
    """Inode, times, mode, owner and size of every entry under `tops`: what 'touched' means."""
    seen = {}
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [*dirnames, *filenames, "."]:
                path = Path(dirpath) / name
                info = path.lstat()
                seen[str(path)] = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_mode,
                                   info.st_uid, info.st_gid, info.st_size)
    return seen


def tree_hash(top: Path, skip: tuple[str, ...] = (), dir_times: bool = True) -> dict[str, tuple]:
    """Content, mode, owner and mtime of every entry under `top`, except those under `skip`
    (and the mtime of directories, whose entries `skip` may change, unless `dir_times`)."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            relative = str(path.relative_to(top))
            if any(relative == s or relative.startswith(s + "/") for s in skip):
                continue
            info = path.lstat()
            content = ""
            if stat.S_ISREG(info.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            mtime = info.st_mtime_ns if dir_times or not stat.S_ISDIR(info.st_mode) else None
            seen[relative] = (content, info.st_mode, info.st_uid, info.st_gid, mtime)
    return seen


def host_key_bytes(root: Path) -> dict[str, bytes]:
    return {name: (root / "etc/ssh" / name).read_bytes() for name in HOST_KEYS}


def assert_no_userdata_in(*texts: str) -> None:
    for text in texts:
        assert USERDATA_TEXT not in text and "#cloud-config" not in text


def statuses(record: dict) -> dict[str, str]:
    return {name: step["status"] for name, step in record["steps"].items()}


# -- a first boot, a second, a new instance ---------------------------------------------------


def test_a_first_boot_provisions_everything(root, fake_imds, document):
    install_templates(root)
    done = boot(root, fake_imds)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert fake_imds.count() == 1

    # result.json in the spec's shape
    record = result_json(root)
    assert set(record) == {"status", "instance_id", "boot_id", "started", "finished", "imds", "steps",
                           "metadata_env", "duration_ms"}
    assert record["status"] == "ok"
    assert record["instance_id"] == document["compute"]["vmId"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["started"])
    assert record["finished"] >= record["started"]
    assert isinstance(record["imds"].pop("duration_ms"), int)
    assert record["imds"] == {"url": fake_imds.url, "api_version": "2021-08-01", "requests": 1}
    assert list(record["steps"]) == list(ORDER)
    for name, step in record["steps"].items():
        assert {"status", "changed", "error", "duration_ms"} <= set(step), name
        assert step["error"] is None, name
    assert statuses(record) == {"hostname": "changed", "users": "changed", "ssh_keys": "changed",
                                "host_keys": "changed", "network": "skipped", "resource_disk": "skipped",
                                "userdata": "changed", "customdata": "skipped",
                                "templates": "changed", "report_ready": "skipped"}
    assert set(record["steps"]["hostname"]["changed"]) == {"/etc/hostname", "/etc/hosts"}
    assert record["steps"]["report_ready"]["reason"]

    # hostname
    assert (root / "etc/hostname").read_text() == "demo-vm-01\n"
    hosts = (root / "etc/hosts").read_text().splitlines()
    assert hosts[:2] == ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost"]
    assert sum("demo-vm-01" in line for line in hosts) == 1
    assert owner_mode(root / "etc/hostname") == (0, 0, 0o644)

    # the admin user, its password locked, in the configured groups
    user = passwd_entry(root, "azureuser")
    assert user is not None and user[5:] == ["/home/azureuser", "/bin/bash"]
    uid, gid = int(user[2]), int(user[3])
    assert uid >= 1000
    shadow = {line.split(":")[0]: line.split(":")[1] for line in (root / "etc/shadow").read_text().splitlines()}
    assert shadow["azureuser"].startswith("!")
    sudo = [line for line in (root / "etc/group").read_text().splitlines() if line.startswith("sudo:")]
    assert "azureuser" in sudo[0].split(":")[3].split(",")

    # its SSH keys
    home = root / "home/azureuser"
    assert owner_mode(home / ".ssh") == (uid, gid, 0o700)
    assert owner_mode(home / ".ssh/authorized_keys") == (uid, gid, 0o600)
    lines = (home / ".ssh/authorized_keys").read_text().splitlines()
    assert sorted(lines) == sorted(key["keyData"] for key in document["compute"]["publicKeys"])

    # host keys, because etc/ssh/sshd_config exists
    for name in HOST_KEYS:
        assert owner_mode(root / "etc/ssh" / name) == (0, 0, 0o600)
        assert owner_mode(root / "etc/ssh" / (name + ".pub")) == (0, 0, 0o644)
        assert (root / "etc/ssh" / name).read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")

    # userData saved for other programs, 0600
    saved = root / "var/lib/bootagent/user-data"
    assert saved.read_bytes() == base64.b64decode(document["compute"]["userData"])
    assert owner_mode(saved) == (0, 0, 0o600)

    # templates: rendered from IMDS, tags and the YAML userData; `when` obeyed
    assert (root / "etc/motd").read_text() == (
        "Welcome to demo-vm-01 (demo), admin azureuser, in westeurope, ip 10.0.0.4\n"
        "Welcome to demo-vm-01, provisioned by bootagent.\n")
    assert owner_mode(root / "etc/motd") == (0, 0, 0o644)
    assert (root / "etc/app/role.conf").read_text() == "role=web\n"
    assert owner_mode(root / "etc/app/role.conf") == (0, 0, 0o640)
    assert owner_mode(root / "etc/app") == (0, 0, 0o755)
    assert not (root / "etc/never.conf").exists()

    assert_no_userdata_in(done.stdout, done.stderr, json.dumps(record))
    assert not list(root.rglob("*.bootagent-tmp.*"))


def test_a_second_run_changes_nothing(root, fake_imds):
    install_templates(root)
    assert boot(root, fake_imds).returncode == 0
    before = snapshot(root / "etc", root / "home")

    done = boot(root, fake_imds)

    assert done.returncode == 0, done.stderr
    record = result_json(root)
    assert record["status"] == "ok"
    assert all(status in ("unchanged", "skipped") for status in statuses(record).values()), statuses(record)
    assert all(step["changed"] == [] for step in record["steps"].values())
    assert snapshot(root / "etc", root / "home") == before
    assert fake_imds.count() == 2  # one request for each run


def test_the_vm_id_is_compared_without_regard_to_case(root, fake_imds, document):
    install_templates(root)
    assert boot(root, fake_imds).returncode == 0
    keys = host_key_bytes(root)
    fake_imds.document["compute"]["vmId"] = document["compute"]["vmId"].upper()
    fake_imds.document["compute"]["osProfile"]["computerName"] = "renamed-01"

    done = boot(root, fake_imds)

    assert done.returncode == 0, done.stderr
    assert statuses(result_json(root))["hostname"] == "unchanged"
    assert (root / "etc/hostname").read_text() == "demo-vm-01\n"
    assert host_key_bytes(root) == keys


def test_a_new_vm_id_provisions_again(root, fake_imds, document):
    install_templates(root)
    assert boot(root, fake_imds).returncode == 0
    keys = host_key_bytes(root)

    # the same instance with another name: per-instance steps are done, nothing changes
    fake_imds.document["compute"]["osProfile"]["computerName"] = "renamed-01"
    extra_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcGtGJzCzCh6Fx3OEwNRW7x6A3GYAfvNmPzrBFnVCpN new@vm"
    fake_imds.document["compute"]["publicKeys"].append(
        {"keyData": extra_key, "path": "/home/azureuser/.ssh/authorized_keys"})
    assert boot(root, fake_imds).returncode == 0
    assert (root / "etc/hostname").read_text() == "demo-vm-01\n"
    assert extra_key not in (root / "home/azureuser/.ssh/authorized_keys").read_text()

    # an image booted as a new VM
    fake_imds.document["compute"]["vmId"] = "0b9e8f02-4d55-4a3c-9d1e-7a6b5c4d3e2f"
    done = boot(root, fake_imds)

    assert done.returncode == 0, done.stderr
    record = result_json(root)
    assert record["instance_id"] == "0b9e8f02-4d55-4a3c-9d1e-7a6b5c4d3e2f"
    assert statuses(record)["hostname"] == "changed"
    assert (root / "etc/hostname").read_text() == "renamed-01\n"
    assert statuses(record)["ssh_keys"] == "changed"
    assert extra_key in (root / "home/azureuser/.ssh/authorized_keys").read_text().splitlines()
    # no DMI system UUID in this root: the vmId is the host keys' instance, so they are new
    assert statuses(record)["host_keys"] == "changed"
    new_keys = host_key_bytes(root)
    assert all(new_keys[name] != keys[name] for name in HOST_KEYS)


# -- a document that is not one ------------------------------------------------------------


@pytest.mark.parametrize("with_sshd", [False, True], ids=["no-sshd", "sshd"])
def test_a_truncated_metadata_file_is_exit_2_and_writes_nothing(root, document, tmp_path, with_sshd):
    install_templates(root)
    if not with_sshd:
        (root / "etc/ssh/sshd_config").unlink()
    text = json.dumps(document)
    metadata = tmp_path / "metadata.json"
    metadata.write_text(text[: len(text) // 2])
    agent_own = ("run/bootagent", "var/lib/bootagent")
    # host keys need no document: the one step that may still run (SPEC step 1)
    host_keys = tuple(f"etc/ssh/{name}{suffix}" for name in HOST_KEYS for suffix in ("", ".pub"))
    before = tree_hash(root, agent_own + host_keys, dir_times=False)

    done = run_cli("run", "--root", str(root), "--metadata-file", str(metadata))

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    error_lines = [line for line in done.stderr.splitlines() if str(metadata) in line]
    assert len(error_lines) == 1, done.stderr
    assert tree_hash(root, agent_own + host_keys, dir_times=False) == before
    if not with_sshd:
        assert not any(root.glob("etc/ssh/ssh_host_*"))
    record = result_json(root)
    assert record["status"] == "error" and str(metadata) in record["error"]
    assert set(record["steps"]) <= {"host_keys"}


# -- dry run and --json ----------------------------------------------------------------------


def test_dry_run_changes_no_byte_and_prints_the_diffs(root, fake_imds):
    install_templates(root)
    before = tree_hash(root)

    done = boot(root, fake_imds, "--dry-run")

    assert done.returncode == 0, done.stderr
    assert tree_hash(root) == before
    out = done.stdout
    assert "--- a/etc/hostname\n+++ b/etc/hostname\n" in out
    assert "-localhost\n+demo-vm-01\n" in out
    assert "+++ b/etc/motd" in out and "+Welcome to demo-vm-01 (demo)" in out
    assert "/home/azureuser/.ssh/authorized_keys" in out
    assert "/var/lib/bootagent/user-data" in out
    assert "#cloud-config" not in out  # the saved userData is shown as a size, not its content
    assert "Traceback" not in done.stderr


def test_json_prints_the_record(root, fake_imds):
    install_templates(root)
    done = boot(root, fake_imds, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == result_json(root)


# -- hostile input: each fails its own step (exit 1), the others are done ----------------------


def hostile_boot(root: Path, document: dict, failing: str | tuple[str, ...], **templates: str):
    """Boot on `document`; exactly the `failing` steps fail, every other step is done."""
    from bootagent.fake.server import FakeImds

    failing = (failing,) if isinstance(failing, str) else failing
    with FakeImds(document) as fake:
        done = boot(root, fake)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    record = result_json(root)
    assert record["status"] == "error"
    for name, step in record["steps"].items():
        if name in failing:
            assert step["status"] == "failed", (name, step)
            assert step["error"] and "\n" not in step["error"]
        else:
            assert step["status"] in ("changed", "unchanged", "skipped"), (name, step)
    assert_no_userdata_in(done.stdout, done.stderr)
    return done, record


def assert_provisioned_except(root: Path, *failed: str) -> None:
    """What the steps that did not fail must have left behind."""
    if "hostname" not in failed:
        assert (root / "etc/hostname").read_text() == "demo-vm-01\n"
    if "users" not in failed:
        assert passwd_entry(root, "azureuser") is not None
    if "host_keys" not in failed:
        assert all((root / "etc/ssh" / name).exists() for name in HOST_KEYS)
    if "templates" not in failed:
        assert (root / "etc/app/role.conf").read_text() == "role=web\n"


@pytest.mark.parametrize("bad_path", ["/root/.ssh/authorized_keys",
                                      "/home/azureuser/../../etc/cron.d/evil",
                                      "/home/azureuser/../other/.ssh/authorized_keys",
                                      "/home/azureuserx/.ssh/authorized_keys",
                                      ".ssh/authorized_keys"])
def test_a_key_path_outside_the_home_is_refused(root, document, bad_path):
    install_templates(root)
    good, evil = document["compute"]["publicKeys"]
    evil["path"] = bad_path
    done, record = hostile_boot(root, document, "ssh_keys")
    assert bad_path in record["steps"]["ssh_keys"]["error"] or "path" in record["steps"]["ssh_keys"]["error"]
    assert_provisioned_except(root, "ssh_keys")
    # the valid key beside it is still installed, and nothing appeared outside the home
    assert (root / "home/azureuser/.ssh/authorized_keys").read_text().splitlines() == [good["keyData"]]
    assert not (root / "root/.ssh").exists()
    assert not (root / "etc/cron.d").exists()
    assert not (root / "home/other").exists() and not (root / "home/azureuserx").exists()


def test_a_symlinked_ssh_directory_is_refused(root, document, tmp_path):
    install_templates(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "authorized_keys").write_text("precious\n")
    (root / "home/azureuser").mkdir()
    (root / "home/azureuser/.ssh").symlink_to(outside)

    done, record = hostile_boot(root, document, "ssh_keys")

    assert_provisioned_except(root, "ssh_keys")
    assert sorted(os.listdir(outside)) == ["authorized_keys"]
    assert (outside / "authorized_keys").read_text() == "precious\n"
    assert stat.S_IMODE(outside.stat().st_mode) == 0o755


def test_a_symlinked_authorized_keys_is_refused(root, document, tmp_path):
    install_templates(root)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (root / "home/azureuser/.ssh").mkdir(parents=True)
    (root / "home/azureuser/.ssh/authorized_keys").symlink_to(victim)

    hostile_boot(root, document, "ssh_keys")

    assert_provisioned_except(root, "ssh_keys")
    assert victim.read_text() == "precious\n"
    assert (root / "home/azureuser/.ssh/authorized_keys").is_symlink()


@pytest.mark.parametrize("name", ["web;rm -rf /", "web$(reboot)", "web`id`", "a b", "web|cat", "-web"])
def test_a_hostname_with_shell_metacharacters_is_refused(root, document, name):
    install_templates(root)
    document["compute"]["osProfile"]["computerName"] = name
    done, record = hostile_boot(root, document, "hostname")
    assert (root / "etc/hostname").read_text() == "localhost\n"
    assert name not in (root / "etc/hosts").read_text()
    assert "computerName" in record["steps"]["hostname"]["error"]
    assert_provisioned_except(root, "hostname")


def test_a_64_character_label_is_refused(root, document):
    install_templates(root)
    document["compute"]["osProfile"]["computerName"] = "a" * 64 + ".example.com"
    hostile_boot(root, document, "hostname")
    assert (root / "etc/hostname").read_text() == "localhost\n"
    assert_provisioned_except(root, "hostname")


def test_a_63_character_label_is_fine(root, fake_imds):
    install_templates(root)
    fake_imds.document["compute"]["osProfile"]["computerName"] = "a" * 63
    assert boot(root, fake_imds).returncode == 0
    assert (root / "etc/hostname").read_text() == "a" * 63 + "\n"


def test_user_data_that_is_not_base64_fails_only_that_step(root, document):
    install_templates(root)
    document["compute"]["userData"] = "#!/bin/sh\necho secret-token-123\n"
    done, record = hostile_boot(root, document, "userdata")
    assert "base64" in record["steps"]["userdata"]["error"]
    assert "secret-token-123" not in done.stderr + json.dumps(record)
    assert not (root / "var/lib/bootagent/user-data").exists()
    assert_provisioned_except(root, "userdata")


def test_a_gzip_bomb_is_refused_with_bounded_memory(root, document):
    install_templates(root, manifest=MANIFEST.replace("  - src: motd.j2\n    dest: /etc/motd\n", ""))
    bomb = gzip.compress(b"\0" * (256 << 20), compresslevel=9)
    assert len(bomb) < 512 << 10
    document["compute"]["userData"] = b64(bomb)

    from bootagent.fake.server import FakeImds
    with FakeImds(document) as fake:
        done = measured_run(root, fake.url)
    assert done.returncode == 1, done.stderr
    record = result_json(root)
    assert statuses(record)["userdata"] == "failed"
    assert "decompresses to more than" in record["steps"]["userdata"]["error"]
    assert not (root / "var/lib/bootagent/user-data").exists()
    assert_provisioned_except(root, "userdata")
    peak_kib = int(done.stdout.strip().splitlines()[-1])
    assert peak_kib < 64 * 1024, f"peak RSS {peak_kib} KiB for a 256 MiB bomb"


def measured_run(root: Path, url: str) -> subprocess.CompletedProcess:
    """Run the agent as a child of a small Python that prints the child's peak RSS (KiB)."""
    import sys

    wrapper = ("import resource, subprocess, sys\n"
               "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
               "sys.exit(code)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTAGENT_")}
    return subprocess.run([sys.executable, "-c", wrapper, BOOTAGENT, "run", "--root", str(root),
                           "--imds-url", url, "--timeout", "30"],
                          capture_output=True, text=True, timeout=120, env=env)


def test_a_tag_value_with_a_newline_fails_only_the_templates_that_use_it(root, document):
    manifest = MANIFEST + "  - src: env.j2\n    dest: /etc/app/env.conf\n"
    install_templates(root, manifest=manifest.replace("  - src: motd.j2\n    dest: /etc/motd\n", ""),
                      **{"env.j2": "ENV={{ tags.env }}\n"})
    document["compute"]["tagsList"] = [{"name": "env", "value": "prod\nPermitRootLogin yes"},
                                       {"name": "role", "value": "web"}]
    document["compute"]["tags"] = "role:web"

    done, record = hostile_boot(root, document, "templates")

    error = record["steps"]["templates"]["error"]
    assert "env" in error and "env.j2" in error
    assert "PermitRootLogin" not in error
    assert not (root / "etc/app/env.conf").exists()
    assert (root / "etc/app/role.conf").read_text() == "role=web\n"  # the other template renders
    assert_provisioned_except(root, "templates")


def test_a_template_with_an_undefined_variable_fails_naming_it(root, document):
    install_templates(root, manifest=MANIFEST + "  - src: broken.j2\n    dest: /etc/broken.conf\n",
                      **{"broken.j2": "value={{ no_such_variable }}\n"})
    done, record = hostile_boot(root, document, "templates")
    error = record["steps"]["templates"]["error"]
    assert "broken.j2" in error and "no_such_variable" in error
    assert not (root / "etc/broken.conf").exists()
    assert (root / "etc/motd").exists()
    assert_provisioned_except(root, "templates")


def test_a_template_cannot_reach_python_internals(root, document):
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}\n"
    install_templates(root, manifest=MANIFEST + "  - src: escape.j2\n    dest: /etc/escape.conf\n",
                      **{"escape.j2": escape})
    done, record = hostile_boot(root, document, "templates")
    assert "escape.j2" in record["steps"]["templates"]["error"]
    assert not (root / "etc/escape.conf").exists()
    assert "<class" not in done.stderr + done.stdout
    assert (root / "etc/motd").exists()
    assert_provisioned_except(root, "templates")


# -- two runs at once ----------------------------------------------------------------------


def test_two_runs_at_once_are_serialised(root, fake_imds, document, tmp_path):
    install_templates(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTAGENT_")}
    command = [BOOTAGENT, "run", "--root", str(root), "--imds-url", fake_imds.url, "--timeout", "30"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs

    # the tree is what one run makes
    from conftest import build_root
    single = build_root(tmp_path / "single")
    install_templates(single)
    assert boot(single, fake_imds).returncode == 0
    for relative in ("etc/hostname", "etc/hosts", "etc/motd", "etc/app/role.conf",
                     "home/azureuser/.ssh/authorized_keys", "var/lib/bootagent/user-data"):
        assert (root / relative).read_bytes() == (single / relative).read_bytes(), relative
    assert [line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("azureuser:")] \
        == [line for line in (single / "etc/passwd").read_text().splitlines() if line.startswith("azureuser:")]
    # one set of host keys, each public key the one of its private key
    for name in HOST_KEYS:
        derived = subprocess.run(["ssh-keygen", "-y", "-f", str(root / "etc/ssh" / name)],
                                 capture_output=True, text=True, check=True).stdout.split()[:2]
        assert (root / "etc/ssh" / (name + ".pub")).read_text().split()[:2] == derived
    record = result_json(root)
    assert record["status"] == "ok"
    assert all(status in ("unchanged", "skipped") for status in statuses(record).values())
    assert not list(root.rglob("*.bootagent-tmp.*"))


def test_progress_and_the_outcome_reach_systemd_through_sd_notify(root, fake_imds, tmp_path):
    """Under systemd (NotifyAccess=main) `systemctl status` shows the step and the outcome."""
    import socket
    import threading

    address = str(tmp_path / "notify")
    messages: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(0.5)
        running = True

        def read() -> None:  # as systemd does, all along the run
            while running:
                try:
                    messages.append(listener.recv(4096).decode())
                except TimeoutError:
                    pass

        reader = threading.Thread(target=read)
        reader.start()
        try:
            done = run_cli("run", "--root", str(root), "--imds-url", fake_imds.url,
                           env={"NOTIFY_SOCKET": address})
        finally:
            running = False
            reader.join()
    assert done.returncode == 0, done.stderr
    assert any(m.startswith("STATUS=step ") for m in messages), messages
    assert messages[-1] == "STATUS=finished: ok"  # a oneshot is ready when it exits: no READY=1


def test_a_notify_socket_that_nobody_reads_never_holds_the_run(root, fake_imds, tmp_path):
    """A datagram socket holds a few messages at most; a manager too busy to read them
    must not hold the boot (a blocking send hung the run once its queue was full)."""
    import socket

    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        done = run_cli("run", "--root", str(root), "--imds-url", fake_imds.url,
                       env={"NOTIFY_SOCKET": address}, timeout=60)
    assert done.returncode == 0, done.stderr

"""`bootagent clean`: an image made to forget its instance before capture (real files, the
installed command)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_host_keys import UUID, set_dmi

from conftest import background, lock_held, result_json, run_cli


@pytest.fixture
def provisioned(root: Path, fake_imds) -> Path:
    """A root after one boot: its instance recorded, an Ed25519 host key, a result."""
    (root / "etc/ssh/sshd_config").write_text("HostKey /etc/ssh/ssh_host_ed25519_key\n")
    set_dmi(root, UUID)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    done = run_cli("run", "--root", str(root), "--imds-url", fake_imds.url)
    assert done.returncode == 0, done.stderr
    return root


def test_clean_makes_the_next_boot_a_first_boot_and_removes_what_it_is_asked_to(provisioned, fake_imds):
    root = provisioned
    key = (root / "etc/ssh/ssh_host_ed25519_key").read_bytes()

    done = run_cli("clean", "--root", str(root), "--logs", "--machine-id", "--ssh-host-keys")

    assert done.returncode == 0, done.stderr
    assert "removed /var/lib/bootagent/host-keys-instance" in done.stdout
    assert "truncated /etc/machine-id" in done.stdout
    for gone in ("etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub",
                 "run/bootagent/result.json", "var/lib/bootagent/host-keys-instance",
                 "var/lib/bootagent/instance.json"):
        assert not (root / gone).exists(), gone
    assert (root / "etc/machine-id").read_bytes() == b""

    again = run_cli("run", "--root", str(root), "--imds-url", fake_imds.url)
    assert again.returncode == 0, again.stderr
    steps = result_json(root)["steps"]
    assert steps["host_keys"]["status"] == "changed"
    assert (root / "etc/ssh/ssh_host_ed25519_key").read_bytes() != key


def test_clean_waits_for_a_run_under_way(provisioned):
    root = provisioned
    record = root / "var/lib/bootagent/host-keys-instance"
    with lock_held(root / "var/lib/bootagent/lock") as release, background("clean", "--root", str(root)) as clean:
        time.sleep(0.5)
        assert clean.poll() is None, clean.communicate()
        assert record.exists()
        release()
        out, err = clean.communicate(timeout=60)
    assert clean.returncode == 0, err
    assert not record.exists()
    assert "removed /var/lib/bootagent/host-keys-instance" in out


def test_clean_refuses_a_configuration_every_vm_of_the_image_would_refuse(provisioned):
    root = provisioned
    (root / "etc/bootagent").mkdir(parents=True, exist_ok=True)
    (root / "etc/bootagent/bootagent.yaml").write_text("ssh:\n  host_keys: sometimes\n")

    done = run_cli("clean", "--root", str(root), "--ssh-host-keys")

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "ssh.host_keys" in lines[0] and "bootagent.yaml" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    # nothing was forgotten or removed: the capture stops before it starts
    assert (root / "var/lib/bootagent/host-keys-instance").exists()
    assert (root / "etc/ssh/ssh_host_ed25519_key").exists()


def test_the_first_boot_of_a_cleaned_image_reads_its_configuration_without_yaml(provisioned):
    from test_imports import loaded, modules_after

    root = provisioned
    key = (root / "etc/ssh/ssh_host_ed25519_key").read_bytes()
    (root / "etc/bootagent").mkdir(parents=True, exist_ok=True)
    (root / "etc/bootagent/bootagent.yaml").write_text("ssh:\n  host_keys: keep\n")
    assert run_cli("clean", "--root", str(root)).returncode == 0

    code, modules = modules_after("host-keys", "--root", str(root))

    assert code == 0
    assert loaded(modules, ("yaml",)) == []
    # the configuration it read is the new one: `keep` kept the key a new instance replaces
    assert (root / "etc/ssh/ssh_host_ed25519_key").read_bytes() == key


def test_clean_removes_the_kept_custom_data_and_its_output(provisioned):
    """customData may hold secrets of the instance the image was made on."""
    kept = provisioned / "var/lib/bootagent"
    (kept / "custom-data").write_bytes(b"#cloud-config\nsecret: x\n")
    (kept / "custom-data.output").write_bytes(b"output\n")
    done = run_cli("clean", "--root", str(provisioned), "--logs")
    assert done.returncode == 0, done.stderr
    assert "removed /var/lib/bootagent/custom-data\n" in done.stdout
    assert not (kept / "custom-data").exists() and not (kept / "custom-data.output").exists()

"""examples/packer/bootagent.pkr.hcl passes `packer validate` with Debian's packer
(1.6.6: HCL2, but no `required_plugins`). Skipped without packer, except in CI,
where it fails. The full build is examples/packer/build-local.py (not in CI)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parent.parent / "examples" / "packer" / "bootagent.pkr.hcl"


@pytest.fixture(scope="module")
def packer():
    path = shutil.which("packer")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("packer is not installed (apt-get install packer)")
        pytest.skip("packer is not installed (apt-get install packer)")
    return path


def validate(packer: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    base = tmp_path / "debian-12.qcow2"
    base.write_bytes(b"")
    key = tmp_path / "id_ed25519"  # validate parses the key
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    deb = tmp_path / "bootagent_0.1.0_all.deb"  # validate checks that the upload exists
    deb.write_bytes(b"")
    # from elsewhere than the template's directory: its paths must not depend on the cwd
    return subprocess.run([packer, "validate", f"-var=base_image={base}",
                           f"-var=ssh_private_key_file={key}", f"-var=bootagent_deb={deb}",
                           *extra, str(TEMPLATE)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_template_validates(packer, tmp_path):
    r = validate(packer, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_template_validates_with_a_fake_imds_and_direct_kernel_boot(packer, tmp_path):
    r = validate(packer, tmp_path, "-var=fake_imds_port=8080", "-var=delete_build_user=true",
                 "-var=accelerator=tcg",
                 '-var=extra_qemuargs=[["-kernel","/boot/vmlinuz"],["-append","root=/dev/vda"]]')
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_missing_package_is_refused(packer, tmp_path):
    """validate really checks the template: a package that is not there fails it."""
    r = validate(packer, tmp_path, f"-var=bootagent_deb={tmp_path / 'nowhere.deb'}")
    assert r.returncode != 0
    assert "nowhere.deb" in r.stdout + r.stderr


def test_the_package_is_installed_with_apt_and_no_tree_is_copied():
    """The image gets bootagent from its Debian package, as users will: no copied
    source tree, no hand-written launcher, no hand-installed unit."""
    text = TEMPLATE.read_text()
    assert "apt-get install -y --reinstall ${local.deb}" in text
    assert 'source      = var.bootagent_deb' in text
    for gone in ("dist-packages", "/usr/bin/bootagent", "systemctl enable", "units/"):
        assert gone not in text, gone


def test_no_required_plugins_block():
    """Debian's packer 1.6.6 rejects `required_plugins`; the builder is built in."""
    text = TEMPLATE.read_text()
    assert not re.search(r"^\s*required_plugins\b", text, re.M)
    assert 'source "qemu"' in text

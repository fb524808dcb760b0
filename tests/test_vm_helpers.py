"""The real-boot helpers' pure parts (tests/vm): mirrors from the host's apt
sources, the debugfs writer, and the QEMU command line that makes a guest look
like an Azure VM. Fast; the boot itself is tests/test_realboot.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vm import image, qemu  # noqa: E402

DEB822 = """\
Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://elsewhere.example/x
Suites: bookworm
Components: main
Enabled: no
"""


def apt_etc(tmp_path: Path, files: dict[str, str]) -> Path:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    return etc


def test_mirrors_come_from_the_hosts_deb822_sources(tmp_path):
    etc = apt_etc(tmp_path, {"sources.list.d/debian.sources": DEB822,
                             "sources.list.d/other.list.disabled": "deb http://no.example/ x main\n"})
    lines = image.debian_mirrors("bookworm", etc)
    assert [line.split()[-3:] for line in lines] == [
        ["http://mirror.example/debian", "bookworm", "main"],
        ["http://mirror.example/debian", "bookworm-updates", "main"],
        ["http://mirror.example/debian-security", "bookworm-security", "main"],
    ]
    assert not any("elsewhere" in line for line in lines)


def test_a_host_on_another_release_lends_its_mirror(tmp_path):
    etc = apt_etc(tmp_path, {"sources.list": (
        "deb [arch=amd64] http://m.example/debian trixie main\n"
        "# deb http://commented.example/debian bookworm main\n"
        "deb http://m.example/debian-security trixie-security main\n")})
    lines = image.debian_mirrors("bookworm", etc)
    assert lines == ["deb http://m.example/debian bookworm main",
                     "deb http://m.example/debian bookworm-updates main",
                     "deb http://m.example/debian-security bookworm-security main"]


def test_no_debian_mirror_is_a_clear_error(tmp_path):
    etc = apt_etc(tmp_path, {})
    with pytest.raises(RuntimeError, match="no Debian archive"):
        image.debian_mirrors("bookworm", etc)


def test_the_recipe_key_is_stable_and_follows_the_package_list(monkeypatch):
    key = image.recipe_key()
    assert key == image.recipe_key()
    monkeypatch.setattr(image, "PACKAGES", image.PACKAGES + ["vim"])
    assert image.recipe_key() != key


@pytest.fixture
def ext4(tmp_path):
    if not (shutil.which("mkfs.ext4") and shutil.which("debugfs")):
        if os.environ.get("CI"):
            pytest.fail("e2fsprogs (mkfs.ext4, debugfs) is not installed")
        pytest.skip("e2fsprogs (mkfs.ext4, debugfs) is not installed")
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/old").write_text("old\n")
    disk = tmp_path / "fs.img"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(disk)], check=True)
    return disk


def stat(disk: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"stat {path}", str(disk)],
                          capture_output=True, text=True).stdout


def test_ext4_writer_writes_replaces_and_links_without_mounting(ext4):
    w = image.Ext4Writer(ext4)
    w.write("/etc/old", "new\n", mode=0o600)
    w.write("/usr/lib/deep/dir/file.py", b"print(1)\n")
    w.write("/home/u/.ssh/authorized_keys", "ssh-ed25519 AAAA x\n", mode=0o600, uid=1000, gid=1000)
    w.mkdir("/home/u/.ssh", 0o700)
    w.symlink("/etc/systemd/system/multi-user.target.wants/x.service", "/etc/systemd/system/x.service")
    w.commit()
    assert image.read_file(ext4, "/etc/old") == b"new\n"
    assert image.read_file(ext4, "/usr/lib/deep/dir/file.py") == b"print(1)\n"
    assert "Mode:  0600" in stat(ext4, "/etc/old")
    assert "User:  1000   Group:  1000" in stat(ext4, "/home/u/.ssh/authorized_keys")
    assert "Mode:  0700" in stat(ext4, "/home/u/.ssh")
    link = stat(ext4, "/etc/systemd/system/multi-user.target.wants/x.service")
    assert "Type: symlink" in link and "/etc/systemd/system/x.service" in link
    # again on the same image: existing files and links are replaced, not refused
    w2 = image.Ext4Writer(ext4)
    w2.write("/etc/old", "newer\n")
    w2.symlink("/etc/systemd/system/multi-user.target.wants/x.service", "/etc/systemd/system/y.service")
    w2.commit()
    assert image.read_file(ext4, "/etc/old") == b"newer\n"


def test_the_guest_looks_like_an_azure_vm(tmp_path):
    vm = qemu.VM(tmp_path / "disk.qcow2", tmp_path / "vmlinuz", tmp_path / "initrd",
                 workdir=tmp_path, vm_uuid="0f3c6a52-1c9e-4d7b-9a51-3e2f0c8d7b64",
                 fake_port=4242, accel="tcg")
    (tmp_path / "disk.qcow2").write_bytes(b"QFI\xfb" + bytes(60))
    vm.ssh_port = 2222
    cmd = vm.command()
    args = dict(zip(cmd, cmd[1:]))
    netdev = args["-netdev"].split(",")
    assert "net=168.0.0.0/7" in netdev  # holds both Azure addresses
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in netdev
    fwd = "cmd:socat STDIO TCP:127.0.0.1:4242"
    assert f"guestfwd=tcp:169.254.169.254:80-{fwd}" in netdev
    assert f"guestfwd=tcp:168.63.129.16:80-{fwd}" in netdev
    assert "type=3,asset=7783-7084-3265-9085-8269-3286-77" in cmd
    assert args["-uuid"] == "0f3c6a52-1c9e-4d7b-9a51-3e2f0c8d7b64"
    assert "format=qcow2" in args["-drive"] and args["-accel"] == "tcg"
    assert args["-append"].startswith("root=/dev/vda ro console=ttyS0")  # as GRUB boots Debian


def test_forcing_the_accelerator(monkeypatch, tmp_path):
    monkeypatch.setenv("BOOTAGENT_VM_ACCEL", "tcg")
    assert qemu.detect_accel(tmp_path / "k", tmp_path / "i") == "tcg"
    monkeypatch.setenv("BOOTAGENT_VM_ACCEL", "xen")
    with pytest.raises(ValueError):
        qemu.detect_accel(tmp_path / "k", tmp_path / "i")


def test_a_second_nic_has_its_own_network_and_leaves_the_first_as_it_was(tmp_path):
    """The first NIC keeps its guestfwd (it works only inside slirp's own network); the
    second is a plain NIC on a user network of its own, with the MAC the test gives."""
    (tmp_path / "disk.qcow2").write_bytes(b"QFI\xfb" + bytes(60))
    commands = []
    for second in (None, "52:54:00:12:34:57"):
        vm = qemu.VM(tmp_path / "disk.qcow2", tmp_path / "vmlinuz", tmp_path / "initrd",
                     workdir=tmp_path, vm_uuid="0f3c6a52-1c9e-4d7b-9a51-3e2f0c8d7b64",
                     fake_port=4242, accel="tcg", second_nic_mac=second)
        vm.ssh_port = 2222
        commands.append(vm.command())
    one, two = commands
    assert two[:len(one) - 2] == one[:-2] and two[-2:] == one[-2:]  # -accel tcg last in both
    added = two[len(one) - 2:-2]
    assert added == ["-netdev", "user,id=n2,net=10.0.3.0/24",
                     "-device", "virtio-net-pci,netdev=n2,mac=52:54:00:12:34:57"]

"""A root on which one first boot does every kind of write the agent has: /etc/hostname
and /etc/hosts replaced, the admin made by useradd, two authorized keys in a new ~/.ssh,
the image's ed25519 host key replaced (only ed25519, through a HostKey line, to keep
key generation fast), a YAML userData kept, two templates rendered (one replacing an old
/etc/motd, one in a directory that does not exist yet), the admin's sudo rule in
/etc/sudoers.d, the report delivered to the fake wireserver and appended to the Hyper-V
KVP pool, and the agent's own records."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from conftest import REPO, build_root

HOST_KEY = "etc/ssh/ssh_host_ed25519_key"
OLD_MOTD = b"An image's motd, to be replaced.\n"
TEMPLATES = ("motd.j2", "environment.j2")


@lru_cache(maxsize=1)
def image_host_key() -> tuple[bytes, bytes]:
    """One ed25519 pair standing for the keys an image was captured with."""
    with tempfile.TemporaryDirectory() as work:
        key = os.path.join(work, "key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", key], check=True)
        return Path(key).read_bytes(), Path(key + ".pub").read_bytes()


def config_text(wireserver: str) -> str:
    return ("templates:\n"
            "  - src: motd.j2\n"
            "    dest: /etc/motd\n"
            "  - src: environment.j2\n"
            "    dest: /etc/profile.d/azure-tags.sh\n"
            "azure:\n"
            "  report_ready: true\n"
            f"  wireserver: {wireserver}\n")


def scenario_root(path: Path, wireserver: str) -> Path:
    build_root(path)
    (path / "etc/ssh/sshd_config").write_text(
        "# test sshd_config\nHostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\n")
    private, public = image_host_key()
    (path / HOST_KEY).write_bytes(private)
    os.chmod(path / HOST_KEY, 0o600)
    (path / f"{HOST_KEY}.pub").write_bytes(public)
    os.chmod(path / f"{HOST_KEY}.pub", 0o644)
    (path / "etc/motd").write_bytes(OLD_MOTD)
    templates = path / "etc/bootagent/templates"
    templates.mkdir(parents=True)
    for name in TEMPLATES:
        shutil.copy(REPO / "templates" / name, templates / name)
    (path / "etc/bootagent/bootagent.yaml").write_text(config_text(wireserver))
    (path / "var/lib/hyperv").mkdir(parents=True)
    (path / "etc/sudoers.d").mkdir(mode=0o750)
    return path


def copy_root(source: Path, dest: Path) -> Path:
    """A copy with modes and owners as they are (copytree keeps modes; chown keeps owners)."""
    shutil.copytree(source, dest, symlinks=True)
    for here, dirs, files in os.walk(source):
        for name in dirs + files:
            full = os.path.join(here, name)
            info = os.lstat(full)
            os.lchown(os.path.join(dest, os.path.relpath(full, source)), info.st_uid, info.st_gid)
    return dest

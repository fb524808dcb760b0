"""A throw-away live system for the userData script tests: the agent run with root `/`
inside a chroot, in private mount, UTS and PID namespaces.

The agent's live effects stay inside: the hostname it sets is the UTS namespace's, the
user it makes with `useradd` (no --root) is in the jail's /etc, the script runs in the
jail, and every process left in the PID namespace (a daemon the script forked) is killed
by the kernel when the agent, its PID 1, exits. /usr and the repository are bind-mounted
read-only; the mounts vanish with the mount namespace. The host's own `/` is never the
agent's root.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import BOOTAGENT, REPO, build_root

ENTER = r'''set -eu
jail="$1"; repo="$2"; shift 2
mount --bind /usr "$jail/usr"
mount -o remount,bind,ro "$jail/usr"
mount --bind "$repo" "$jail$repo"
mount -o remount,bind,ro "$jail$repo"
mount -t proc proc "$jail/proc"
exec chroot "$jail" "$@"
'''
DEVICES = {"null": 3, "zero": 5, "random": 8, "urandom": 9}


JAIL_CONFIG = "network:\n  enabled: false\n"


def jail_root(path: Path) -> Path:
    build_root(path)
    for name in ("bin", "sbin", "lib", "lib64"):
        os.symlink(f"usr/{name}", path / name)
    for name in ("usr", "proc", "dev", REPO.relative_to("/")):
        (path / name).mkdir(parents=True, exist_ok=True)
    for name, minor in DEVICES.items():
        os.mknod(path / "dev" / name, 0o666 | 0o020000, os.makedev(1, minor))
        os.chmod(path / "dev" / name, 0o666)
    os.chmod(path / "tmp", 0o1777)
    # the jail shares the host's network and /usr (netplan included): the network step is
    # never the jail's to run; a test that writes its own configuration keeps this line
    (path / "etc/bootagent").mkdir(parents=True, exist_ok=True)
    (path / "etc/bootagent/bootagent.yaml").write_text(JAIL_CONFIG)
    return path


def run_live(jail: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`bootagent run ARGS` as the jail's own agent (root `/`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTAGENT_")}
    argv = ["unshare", "--mount", "--uts", "--pid", "--fork", "--propagation", "private",
            "sh", "-c", ENTER, "enter", str(jail), str(REPO), BOOTAGENT, "run", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)

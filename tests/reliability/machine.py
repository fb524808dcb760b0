"""Faults of the machine, made real: mounts (a full tmpfs, a read-only bind mount) that
are undone in teardown, and a private mount namespace for hiding a program.

These need root. Where mounting is impossible the tests fail loudly under CI (which
runs as root) and are skipped only on a developer's unprivileged machine."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest


def require_root(what: str) -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} needs root; CI runs as root, so this is a broken CI machine")
    pytest.skip(f"{what} needs root")


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed: {done.stderr.strip()}")


class Mounts:
    """Mounts made by one test, unmounted (innermost first) by the fixture's teardown."""

    def __init__(self):
        self.points: list[Path] = []

    def tmpfs(self, where: Path, size: str) -> None:
        _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where))
        self.points.append(where)

    def read_only(self, where: Path) -> None:
        _run("mount", "--bind", str(where), str(where))
        self.points.append(where)
        _run("mount", "-o", "remount,bind,ro", str(where))

    def unmount_all(self) -> None:
        while self.points:
            where = self.points.pop()
            if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path) -> int:
    """Write a filler file until the file system says ENOSPC; returns its size."""
    written = 0
    with open(directory / ".filler", "wb", buffering=0) as out:
        chunk = b"\0" * 4096
        try:
            while True:
                written += out.write(chunk)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    return written


def without_program(directory: str, argv: list[str]) -> list[str]:
    """argv run in a private mount namespace where `directory` is an empty tmpfs (so the
    programs in it are missing for that process only; the host is untouched)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs tmpfs "{directory}" && exec "$0" "$@"', *argv]


def live_members(pgid: int) -> list[int]:
    """The processes of a process group that are still running (zombies aside)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def wait_for_group(pgid: int, timeout: float = 60) -> None:
    """Wait until every process of a group is gone: a killed agent's useradd or ssh-keygen
    finishes what it was doing, as it would if only the agent had died."""
    import time

    deadline = time.monotonic() + timeout
    while live_members(pgid):
        assert time.monotonic() < deadline, f"processes of group {pgid} still running: {live_members(pgid)}"
        time.sleep(0.01)

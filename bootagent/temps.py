"""The writer's temporary names, and the sweep of those a killed writer left behind.

Every file and directory the writer makes first exists under a hidden temp name beside
its final one (`.<name>.bootagent-tmp.<pid>-<8 hex digits>`), then is renamed. A run
killed in between leaves the temp; the first write of a later run into that directory
sweeps it away. Never one still in use: not one of this process's (`own`: the run makes
host keys in a thread beside its other steps), nor one of another process that still
runs, by the PID in its name (the early host-keys unit writes in /run/bootagent beside
the run).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager

from bootagent.context import Context

SUFFIX = ".bootagent-tmp."
_NAME = re.compile(r"^\..+\.bootagent-tmp\.(\d+)-[A-Za-z0-9_-]{6,}$")


def name(final: str) -> str:
    """A hidden temp name beside `final`: this process's PID and 8 random hex digits
    (os.urandom, as secrets.token_hex uses, without importing secrets and hmac on every
    boot)."""
    return f".{final}{SUFFIX}{os.getpid()}-{os.urandom(4).hex()}"


@contextmanager
def own(ctx: Context, final: str):
    """A temp name beside `final` that this process's sweeps leave alone for the block."""
    temp = name(final)
    ctx.writes.live_temps.add(temp)
    try:
        yield temp
    finally:
        ctx.writes.live_temps.discard(temp)


def sweep(ctx: Context, dir_fd: int) -> None:
    """Remove the stale temps of a directory, once per directory and process."""
    info = os.fstat(dir_fd)
    key = (info.st_dev, info.st_ino)
    if key in ctx.writes.swept_dirs:
        return
    ctx.writes.swept_dirs.add(key)
    if ctx.dry_run:
        return
    for entry in os.listdir(dir_fd):
        if stale(ctx, entry):
            try:
                os.unlink(entry, dir_fd=dir_fd)
            except IsADirectoryError:  # a directory a killed run was making, or
                import shutil  # ssh-keygen's work directory, keys in it (host_keys)

                shutil.rmtree(entry, dir_fd=dir_fd, ignore_errors=True)  # fd-based: no link followed
            except OSError:
                pass


def stale(ctx: Context, entry: str) -> bool:
    """True for a temp whose writer is gone. (A temp of a previous boot whose PID is now
    another process's waits for a later run.)"""
    match = _NAME.match(entry)
    if match is None or entry in ctx.writes.live_temps:
        return False
    pid = int(match.group(1))
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it runs, as another user's process
        pass
    return False

"""The one object every step receives: where the root is, what the config says, what time it is.

Tests swap the clock and the sleep instead of patching `time`; the root is a scratch
directory instead of `/`. Nothing here does I/O beyond reading the environment.
"""

from __future__ import annotations

import os
import time
from collections.abc import (  # not typing: 2 ms of import in every process
    Callable,
    Mapping,
)

from bootagent.errors import UnsafePath
from bootagent.record import TYPE_CHECKING, Factory, Record

if TYPE_CHECKING:
    from bootagent.log import Log


class Context(Record):
    root: str = "/"
    config: dict = Factory(dict)
    dry_run: bool = False
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall: Callable[[], float] = time.time
    env: Mapping[str, str] = Factory(lambda: os.environ)
    log: Log | None = None
    imds_url: str = ""
    on_arc: bool = False
    deadline: float = float("inf")
    # dry-run: (path, description) of every change the writer would make
    changes: list = Factory(list)
    # the writer's bookkeeping: directories already swept of stale temp files, the temp
    # names this process has in use (never swept), write points
    swept_dirs: set = Factory(set)
    live_temps: set = Factory(set)
    write_points: int = 0

    def __post_init__(self):
        self.root = os.path.abspath(self.root)
        self._live = same_directory(self.root, "/")
        kill_at = self.env.get("BOOTAGENT_FAULT_KILL_AT", "")
        self._kill_at = int(kill_at) if kill_at.isdigit() else 0
        self._count_file = self.env.get("BOOTAGENT_FAULT_COUNT_FILE", "")
        self._count_fd = -1

    @property
    def live(self) -> bool:
        """True when provisioning the running system (the root is `/` itself, however it is
        spelled: `//`, a symlink to it): only then are live side effects allowed."""
        return self._live

    def path(self, logical: str) -> str:
        """Map an absolute path of the provisioned system to where it lies under the root."""
        parts = split_logical(logical)
        return os.path.join(self.root, *parts) if parts else self.root

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def checkpoint(self) -> None:
        """A write point. Inert unless the crash-consistency sweep set BOOTAGENT_FAULT_KILL_AT."""
        self.write_points += 1
        if self._count_file:  # test seam only, never in production
            if self._count_fd < 0:  # opened once; the count only grows, so no truncation
                self._count_fd = os.open(self._count_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                         | os.O_CLOEXEC, 0o600)
            os.pwrite(self._count_fd, str(self.write_points).encode(), 0)
        if self._kill_at and self.write_points == self._kill_at:
            import signal
            os.kill(os.getpid(), signal.SIGKILL)


def same_directory(path: str, other: str) -> bool:
    """Whether two paths name the same directory (device and inode, links followed)."""
    try:
        first, second = os.stat(path), os.stat(other)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def split_logical(logical: str) -> list[str]:
    """Split an absolute path into components, refusing anything that could leave the root."""
    if not isinstance(logical, str) or not logical.startswith("/"):
        raise UnsafePath(f"refusing path {logical!r}: it must be absolute")
    if "\0" in logical:
        raise UnsafePath("refusing a path with a NUL byte")
    parts = [p for p in logical.split("/") if p]
    for part in parts:
        if part in (".", ".."):
            raise UnsafePath(f"refusing path {logical!r}: '.' and '..' are not allowed")
    return parts

"""The one object every step receives: where the root is, what the config says, what time it is.

Tests swap the clock and the sleep instead of patching `time`; the root is a scratch
directory instead of `/`. Nothing here does I/O beyond reading the environment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping  # not typing: imported by every process

from bootagent.config import Config, defaults
from bootagent.paths import split_logical
from bootagent.record import TYPE_CHECKING, Factory, Record

if TYPE_CHECKING:
    from bootagent.log import Log


class WriterState:
    """The writer's own bookkeeping for one process, apart from the run's settings.

    Shared by the run's threads (the host keys' thread writes beside the steps): the temp
    names in use must be known to every sweep of this process. Also the crash seam:
    `checkpoint` is a write point, inert unless BOOTAGENT_FAULT_KILL_AT is set."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.swept_dirs: set[tuple[int, int]] = set()  # directories already swept of stale temps
        self.live_temps: set[str] = set()               # this process's temps: never swept
        self.write_points = 0
        kill_at = env.get("BOOTAGENT_FAULT_KILL_AT", "")
        self._kill_at = int(kill_at) if kill_at.isdigit() else 0
        self._count_file = env.get("BOOTAGENT_FAULT_COUNT_FILE", "")
        self._count_fd = -1

    def checkpoint(self) -> None:
        """A write point: counted, and the process killed there when the sweep asks."""
        self.write_points += 1
        if self._count_file:  # test seam only, never in production
            if self._count_fd < 0:  # opened once; the count only grows, so no truncation
                self._count_fd = os.open(self._count_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                         | os.O_CLOEXEC, 0o600)
            os.pwrite(self._count_fd, str(self.write_points).encode(), 0)
        if self._kill_at and self.write_points == self._kill_at:
            import signal
            os.kill(os.getpid(), signal.SIGKILL)


class Context(Record):
    """What is fixed for a run (root, configuration, clock, IMDS URL, deadline), the run's
    log, the dry run's list of would-be changes, and the writer's state beside them."""

    root: str = "/"
    config: Config = Factory(defaults)
    dry_run: bool = False
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall: Callable[[], float] = time.time
    env: Mapping[str, str] = Factory(lambda: os.environ)
    log: Log | None = None
    imds_url: str = ""
    on_arc: bool = False
    deadline: float = float("inf")
    changes: list = Factory(list)   # dry-run: (path, description) of every change it would make
    writes: WriterState = None  # type: ignore[assignment]  # made from `env` after __init__

    def __post_init__(self):
        self.root = os.path.abspath(self.root)
        self._live = same_directory(self.root, "/")
        if self.writes is None:
            self.writes = WriterState(self.env)

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
        """A write point (see WriterState.checkpoint)."""
        self.writes.checkpoint()


def same_directory(path: str, other: str) -> bool:
    """Whether two paths name the same directory (device and inode, links followed)."""
    try:
        first, second = os.stat(path), os.stat(other)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


__all__ = ["Context", "WriterState", "same_directory", "split_logical"]

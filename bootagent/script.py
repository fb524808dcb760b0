"""Run one executable as a userData script: bounded in time and in output, never held by
the daemons it leaves behind.

The script runs in a new session (its own process group), stdin /dev/null, stdout and
stderr into one pipe that is read as it comes and kept bounded (`BoundedOutput`: the
first 3/4 and the last 1/4 of MAX_OUTPUT bytes, with a note of what was dropped between).
At the time limit the whole group gets SIGTERM, then SIGKILL KILL_GRACE seconds later.
Once the script itself has exited, its output is read for `grace` seconds more at most:
a daemon it started may keep the pipe open (and keeps running), but cannot hold the boot.
The script's exit is seen at once through a pidfd where the kernel has them.
It runs at the ordinary CPU priority, not the agent unit's raised one (`_ordinary_priority`).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time

from bootagent.record import Record

MAX_OUTPUT = 1 << 20        # bytes of script output kept (head and tail)
OUTPUT_GRACE = 1.0          # seconds to keep reading after the script itself exited
KILL_GRACE = 2.0            # seconds between SIGTERM and SIGKILL at the time limit


class ScriptRun(Record):
    exit_status: int | None = None      # exit code; -N when ended by signal N
    killed_after: float | None = None   # the time limit, when the script reached it
    seconds: float = 0.0
    output: bytes = b""                 # bounded: head, a note of what was dropped, tail
    dropped: int = 0
    pgid: int | None = None             # the script's process group (a daemon may live on in it)
    start_error: str | None = None


class BoundedOutput:
    """Keeps the first 3/4 of `limit` bytes and the last 1/4; counts what falls between."""

    def __init__(self, limit: int = MAX_OUTPUT):
        self.head_limit = limit - limit // 4
        self.tail_limit = limit // 4
        self.head, self.tail, self.total = bytearray(), bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > 2 * self.tail_limit:
                del self.tail[:len(self.tail) - self.tail_limit]

    @property
    def dropped(self) -> int:
        return self.total - len(self.head) - min(len(self.tail), self.tail_limit)

    def value(self) -> bytes:
        tail = bytes(self.tail[len(self.tail) - min(len(self.tail), self.tail_limit):])
        if not self.dropped:
            return bytes(self.head) + tail
        return bytes(self.head) + f"\n[bootagent: {self.dropped} bytes of output dropped]\n".encode() + tail


def execute(path: str, timeout: float, *, env: dict | None = None, cwd: str = "/",
            grace: float = OUTPUT_GRACE, limit: int = MAX_OUTPUT) -> ScriptRun:
    """Run the executable at `path`; never raises for the script's sake (a start failure
    is `start_error`)."""
    _ordinary_priority()
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen([path], stdin=subprocess.DEVNULL, stdout=write_fd, stderr=write_fd,
                                cwd=cwd, env=env, start_new_session=True)
    except OSError as err:
        os.close(read_fd)
        return ScriptRun(start_error=err.strerror or type(err).__name__)
    finally:
        os.close(write_fd)
    try:
        exit_fd = os.pidfd_open(proc.pid)   # readable when the script exits: no polling delay
    except (AttributeError, OSError):
        exit_fd = None
    output = BoundedOutput(limit)
    started = time.monotonic()
    ran = ScriptRun(pgid=proc.pid)
    try:
        _watch(proc, read_fd, exit_fd, output, started, timeout, grace, ran)
    finally:
        os.close(read_fd)
        if exit_fd is not None:
            os.close(exit_fd)
    ran.exit_status, ran.output, ran.dropped = proc.returncode, output.value(), output.dropped
    return ran


def _ordinary_priority() -> None:
    """The unit runs the agent at Nice=-10 because it stands between the network and sshd;
    the script is the instance's own work, last in the run, so it (and the rest of the run)
    goes back to nice 0. Raising one's own nice value is always allowed; an admin's
    positive one is kept. (Linux keeps it per thread: this is the thread that forks.)"""
    if os.getpriority(os.PRIO_PROCESS, 0) < 0:
        os.setpriority(os.PRIO_PROCESS, 0, 0)


def _watch(proc: subprocess.Popen, read_fd: int, exit_fd: int | None, output: BoundedOutput,
           started: float, timeout: float, grace: float, ran: ScriptRun) -> None:
    """Read output until the script is gone and its pipe is closed or `grace` has passed."""
    reading = True
    term_at: float | None = None
    stop_at: float | None = None
    while True:
        now = time.monotonic()
        if proc.poll() is None:
            if term_at is None and now - started >= timeout:
                _signal_group(proc.pid, signal.SIGTERM)
                term_at, ran.killed_after = now, timeout
            elif term_at is not None and now - term_at >= KILL_GRACE:
                _signal_group(proc.pid, signal.SIGKILL)
        if proc.returncode is not None:
            if stop_at is None:
                ran.seconds, stop_at = now - started, now + grace
                if term_at is not None:          # at the limit the whole group goes
                    _signal_group(proc.pid, signal.SIGKILL)
            if not reading or now >= stop_at:
                return
        if stop_at is not None:  # set once the script has exited
            wake_at = stop_at
        elif term_at is not None:
            wake_at = term_at + KILL_GRACE
        else:
            wake_at = started + timeout
        watched = [read_fd] if reading else []
        if exit_fd is not None and proc.returncode is None:
            watched.append(exit_fd)
        ready, _, _ = select.select(watched, [], [], min(max(wake_at - now, 0), 0.25))
        if read_fd in ready:
            chunk = os.read(read_fd, 1 << 16)
            if chunk:
                output.add(chunk)
            else:
                reading = False                  # every writer closed the pipe


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass

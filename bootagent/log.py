"""Log lines and progress: to the journal with structured fields when systemd runs us,
else to stderr. The agent keeps no log file of its own.

Journal fields: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER=bootagent, BOOTAGENT_STEP,
BOOTAGENT_INSTANCE_ID, and OBJECT_SYSTEMD_UNIT (the agent's own unit; see own_unit).
systemd-python is optional: its C modules are imported only when a journal is there
(they cost little; the Python wrappers cost more).
"""

from __future__ import annotations

import os
import sys

PRIORITIES = {"error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}


class Log:
    def __init__(self, env=os.environ, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.instance_id = ""
        self._sendv = None
        self._notify_socket = env.get("NOTIFY_SOCKET", "")
        self._unit_field = ""
        if env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"):
            try:
                from systemd._journal import sendv
                self._sendv = sendv
            except ImportError:
                pass
            else:
                unit = own_unit()
                self._unit_field = f"OBJECT_SYSTEMD_UNIT={unit}" if unit else ""

    def _emit(self, level: str, message: str, step: str | None) -> None:
        if self._sendv is not None:
            fields = [f"MESSAGE={message}", f"PRIORITY={PRIORITIES[level]}",
                      "SYSLOG_IDENTIFIER=bootagent"]
            if step:
                fields.append(f"BOOTAGENT_STEP={step}")
            if self.instance_id:
                fields.append(f"BOOTAGENT_INSTANCE_ID={self.instance_id}")
            if self._unit_field:
                fields.append(self._unit_field)
            try:
                self._sendv(*fields)
                return
            except OSError:
                pass
        if self.quiet and level in ("info", "debug"):
            return
        prefix = f"bootagent: {step}: " if step else "bootagent: "
        self.stream.write(f"{prefix}{message}\n")
        self.stream.flush()

    def info(self, message: str, step: str | None = None) -> None:
        self._emit("info", message, step)

    def warning(self, message: str, step: str | None = None) -> None:
        self._emit("warning", message, step)

    def error(self, message: str, step: str | None = None) -> None:
        self._emit("error", message, step)

    def notify(self, text: str) -> None:
        """sd_notify, spoken directly on the socket: no import, and a no-op outside systemd.
        Never blocks: a status line a busy manager has no room for is dropped, the boot
        does not wait for it."""
        if not self._notify_socket:
            return
        import socket

        address = self._notify_socket
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                sock.send(text.encode(), socket.MSG_DONTWAIT)
        except OSError:
            pass

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")


def unit_of_cgroup(text: str) -> str | None:
    """The systemd unit a /proc/<pid>/cgroup names (cgroup v2's `0::/system.slice/x.service`)."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name.endswith((".service", ".scope")):
            return name
    return None


def own_unit(cgroup_file: str = "/proc/self/cgroup") -> str | None:
    """The unit this process runs in. Journald learns it from the sender's cgroup, which
    it cannot read once the sender has exited: bootagent-host-keys.service starts before
    journald and, with nothing to do, can finish before journald reads its lines. Named
    in OBJECT_SYSTEMD_UNIT, `journalctl -u <unit>` finds them all the same."""
    try:
        with open(cgroup_file, encoding="utf-8", errors="replace") as handle:
            return unit_of_cgroup(handle.read(4096))
    except OSError:
        return None


def log(ctx, level: str, message: str, step: str | None = None) -> None:
    """Log through ctx.log when there is one (tests may build a Context without it)."""
    if ctx.log is not None:
        getattr(ctx.log, level)(message, step=step)


def log_step(ctx, name: str, outcome) -> None:
    """One line for a step's StepResult: its status, then its error, reason or changes."""
    detail = outcome.error or outcome.reason or ", ".join(outcome.changed)
    level = "error" if outcome.status == "failed" else "info"
    log(ctx, level, f"{outcome.status}{': ' + detail if detail else ''}", step=name)

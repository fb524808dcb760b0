"""`bootagent status`: the last run's result, and `--wait` for scripts and Packer.

A result counts only when it was written in this boot (on `/`, result.json newer than
the boot time; /run is normally a tmpfs anyway). A failed run writes its result too,
so `--wait` returns as soon as the run ended, whatever its outcome, and never waits
past the timeout. Imports neither requests nor Jinja.
"""

from __future__ import annotations

import json
import os

from bootagent import result
from bootagent.context import Context

POLL = 0.2


def _boot_time() -> float:
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def this_boots_result(ctx: Context) -> dict | None:
    record = result.read(ctx)
    if record is None:
        return None
    if ctx.live:
        try:
            if os.stat(ctx.path(result.RESULT_PATH)).st_mtime < _boot_time():
                return None
        except OSError:
            return None
    return record


def report(ctx: Context, *, wait: bool, timeout: float, as_json: bool) -> tuple[int, str]:
    """(exit code, text): 0 done and ok, 1 done with errors, 3 not finished."""
    deadline = ctx.clock() + max(0.0, timeout)
    record = this_boots_result(ctx)
    while record is None and wait and ctx.clock() < deadline:
        ctx.sleep(min(POLL, max(0.0, deadline - ctx.clock())))
        record = this_boots_result(ctx)
    if record is None:
        text = {"status": "running"} if as_json else None
        message = ("not finished: no result in this boot yet"
                   + (f" (waited {timeout:g} s)" if wait else ""))
        return 3, (json.dumps(text) + "\n" if as_json else message + "\n")
    code = 0 if record.get("status") == "ok" else 1
    if as_json:
        return code, json.dumps(record, indent=2) + "\n"
    return code, _human(record)


def _human(record: dict) -> str:
    lines = [f"status: {record.get('status')}",
             f"instance: {record.get('instance_id') or '-'}",
             f"finished: {record.get('finished') or '-'}"]
    if record.get("error"):
        lines.append(f"error: {record['error']}")
    for name, step in (record.get("steps") or {}).items():
        detail = step.get("error") or step.get("reason") or ", ".join(step.get("changed") or [])
        lines.append(f"  {name:<13} {step.get('status', '?'):<9} {detail}".rstrip())
    return "\n".join(lines) + "\n"

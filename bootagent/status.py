"""`bootagent status`: the last run's result, and `--wait` for scripts and Packer.

A result counts only when it was written in this boot: its `boot_id` is the running
kernel's (under any --root too: "this boot" is this machine's). File times would not
do: the clock is stepped at boot (chrony, Hyper-V time sync). A failed run writes its
result too, so `--wait` returns as soon as the run ended, whatever its outcome, and
never waits past the timeout. Imports neither requests nor Jinja.
"""

from __future__ import annotations

import json

from bootagent import result
from bootagent.context import Context

POLL = 0.2


def this_boots_result(ctx: Context, current_boot: str | None) -> dict | None:
    """The result record when it was written in the boot `current_boot` (any record
    when the kernel tells no boot id)."""
    record = result.read(ctx)
    if record is None:
        return None
    if current_boot is not None and record.get("boot_id") != current_boot:
        return None
    return record


def report(ctx: Context, *, wait: bool, timeout: float, as_json: bool,
           timings: bool = False) -> tuple[int, str]:
    """(exit code, text): 0 done and ok, 1 done with errors, 3 not finished. `timings`:
    the durations, slowest first, instead of the steps."""
    deadline = ctx.clock() + max(0.0, timeout)
    current_boot = result.boot_id()
    record = this_boots_result(ctx, current_boot)
    while record is None and wait and ctx.clock() < deadline:
        ctx.sleep(min(POLL, max(0.0, deadline - ctx.clock())))
        record = this_boots_result(ctx, current_boot)
    if record is None:
        text = {"status": "running"} if as_json else None
        message = ("not finished: no result in this boot yet"
                   + (f" (waited {timeout:g} s)" if wait else ""))
        return 3, (json.dumps(text) + "\n" if as_json else message + "\n")
    code = 0 if record.get("status") == "ok" else 1
    if timings:
        return code, _timings_json(record) if as_json else _timings_text(record)
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
    written = record.get("metadata_env")
    if isinstance(written, dict):
        left_out = written.get("left_out")
        detail = written.get("error") or (f"{left_out} left out (see the journal)" if left_out else "")
        lines.append(f"metadata.env: {written.get('status', '?')} {detail}".rstrip())
    return "\n".join(lines) + "\n"


def timings(record: dict) -> list[tuple[str, int]]:
    """(what, milliseconds) of the fetch, each step and metadata.env, slowest first (a
    record from an agent that kept no timings has none)."""
    found = []
    fetch = record.get("imds")
    if isinstance(fetch, dict) and isinstance(fetch.get("duration_ms"), int):
        found.append(("imds", fetch["duration_ms"]))
    steps = record.get("steps")
    for name, step in (steps.items() if isinstance(steps, dict) else ()):
        if isinstance(step, dict) and isinstance(step.get("duration_ms"), int):
            found.append((name, step["duration_ms"]))
    written = record.get("metadata_env")
    if isinstance(written, dict) and isinstance(written.get("duration_ms"), int):
        found.append(("metadata_env", written["duration_ms"]))
    return sorted(found, key=lambda item: (-item[1], item[0]))


def _timings_text(record: dict) -> str:
    found = timings(record)
    if not found:
        return (f"status: {record.get('status')}\n"
                "no timings in this result (written by an agent that kept none)\n")
    total = record.get("duration_ms")
    lines = [f"status: {record.get('status')}",
             f"run: {total} ms" if isinstance(total, int) else "run: -",
             "slowest first (imds: first request to document):"]
    width = max(len(str(ms)) for _, ms in found)
    lines += [f"  {ms:>{width}} ms  {name}" for name, ms in found]
    return "\n".join(lines) + "\n"


def _timings_json(record: dict) -> str:
    found = [{"name": name, "duration_ms": ms} for name, ms in timings(record)]
    return json.dumps({"status": record.get("status"), "duration_ms": record.get("duration_ms"),
                       "timings": found}, indent=2) + "\n"

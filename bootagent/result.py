"""The record of a run: `<root>/run/bootagent/result.json`, written once at the end.

`bootagent status` reads it back; a run that starts writes nothing here until it
ends, so "no result in this boot" means "not finished". The record carries the running
kernel's boot id, which tells "this boot" whatever the clock did at boot.
"""

from __future__ import annotations

import json
import time

from bootagent import writer
from bootagent.context import Context
from bootagent.steps import ORDER, StepResult

RESULT_DIR = "/run/bootagent"
RESULT_PATH = f"{RESULT_DIR}/result.json"
# the running kernel's, never taken under the root: a random UUID made anew at every boot
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def boot_id(path: str = BOOT_ID_FILE) -> str | None:
    """This boot's id, or None where the kernel does not tell it (no /proc)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(64).decode("ascii", "replace").strip() or None
    except OSError:
        return None


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else ""


def build(*, instance_id: str | None, started: float, finished: float, imds: dict,
          results: dict[str, StepResult], error: str | None = None, boot: str | None = None,
          duration_ms: int | None = None) -> dict:
    ok = error is None and all(r.ok for r in results.values())
    record: dict[str, object] = {
        "status": "ok" if ok else "error",
        "instance_id": instance_id,
        "boot_id": boot,
        "started": iso(started),
        "finished": iso(finished),
        "imds": imds,
        "steps": {name: results[name].to_json() for name in ORDER if name in results},
    }
    if "metadata_env" in results:  # written beside the record, not a step: SPEC "Tools..."
        record["metadata_env"] = results["metadata_env"].to_json()
    if duration_ms is not None:
        record["duration_ms"] = duration_ms
    if error is not None:
        record["error"] = error
    return record


def elapsed_ms(since: float, now: float) -> int:
    """Milliseconds between two readings of ctx.clock, as result.json records them."""
    return max(0, round((now - since) * 1000))


def write(ctx: Context, record: dict) -> None:
    body = json.dumps(record, indent=2, sort_keys=False).encode() + b"\n"
    writer.write_file(ctx, RESULT_PATH, body, mode=0o644, internal=True)
    if ctx.log is not None:  # `systemctl status bootagent` shows the outcome
        ctx.log.notify(f"STATUS=finished: {record['status']}")


def read(ctx: Context) -> dict | None:
    raw = writer.read_file(ctx, RESULT_PATH, limit=1 << 20)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

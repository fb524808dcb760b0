"""`bootagent clean`: make an image forget its instance before capture.

The next boot is then a first boot: every per-instance step runs again and the host
keys are a new instance's. Optional extras remove the agent's records, empty the
machine-id (truncated, never deleted: systemd fills an empty one at boot) and remove
the SSH host keys.
"""

from __future__ import annotations

from bootagent import result, state, writer
from bootagent.context import Context

INSTANCE_DATA = (f"{state.STATE_DIR}/user-data", state.CUSTOM_DATA_PATH)
LOG_FILES = (result.RESULT_PATH, f"{state.STATE_DIR}/user-data.output", f"{state.CUSTOM_DATA_PATH}.output")


def clean(ctx: Context, *, logs: bool, machine_id: bool, host_keys: bool) -> list[str]:
    """Do it, and say what was done, one line per change. A run or the early unit's key
    generation that is under way finishes first (their locks, taken in the run's order):
    otherwise it could record the instance, or install a key, just after it was forgotten."""
    with state.run_lock(ctx), state.host_keys_lock(ctx):
        return _clean(ctx, logs=logs, machine_id=machine_id, host_keys=host_keys)


def _clean(ctx: Context, *, logs: bool, machine_id: bool, host_keys: bool) -> list[str]:
    removed = state.forget_instance(ctx)
    removed += [p for p in INSTANCE_DATA if writer.remove_file(ctx, p)]
    if logs:
        removed += [p for p in LOG_FILES if writer.remove_file(ctx, p)]
    if host_keys:
        removed += [p for p in _host_key_files(ctx) if writer.remove_file(ctx, p)]
    lines = [f"removed {p}" for p in removed]
    if machine_id and writer.exists(ctx, "/etc/machine-id"):
        if writer.write_file(ctx, "/etc/machine-id", b"", mode=0o444):
            lines.append("truncated /etc/machine-id")
    if not lines:
        lines.append("nothing to clean")
    return lines


def _host_key_files(ctx: Context) -> list[str]:
    return [f"/etc/ssh/{name}" for name in writer.list_dir(ctx, "/etc/ssh")
            if name.startswith("ssh_host_") and (name.endswith("_key") or name.endswith("_key.pub"))]

"""Per-instance memory under var/lib/bootagent: which steps are done for which instance.

An instance is `compute.vmId`, compared without regard to case. A step that succeeded
for this instance is not run again; one that failed is. A new vmId forgets everything.
Host keys keep an instance of their own (the DMI system UUID, else the vmId), because
they must change once per VM and never later, even when IMDS was not reached.

Who holds what, in one place:
- the run lock (`LOCK_FILE`, on the root) is held by `bootagent run` for its whole pass;
  a second run waits. `clean` and `host-keys` do not take it.
- the host keys' lock (`HOST_KEYS_LOCK`, on /run) is held only while host keys are made:
  by the early unit (`bootagent host-keys`, before the root is writable), or by the run's
  host_keys step, which runs in a thread beside the fetch. The run takes it after the run
  lock, never the other way round, so the two cannot deadlock.
- the run's thread shares the run's Context; the writer's temp names live in its
  WriterState, so a sweep by either thread spares the other's files, and a sweep by
  another process spares them by PID (temps.py).
"""

from __future__ import annotations

import json

from bootagent import writer
from bootagent.context import Context
from bootagent.errors import BootagentError, StepError

STATE_DIR = "/var/lib/bootagent"
INSTANCE_FILE = f"{STATE_DIR}/instance.json"
HOST_KEYS_FILE = f"{STATE_DIR}/host-keys-instance"
LOCK_FILE = f"{STATE_DIR}/lock"
# the media's customData, kept for templates at every boot (steps/customdata.py)
CUSTOM_DATA_PATH = f"{STATE_DIR}/custom-data"
# Held by the host_keys step alone, not by the whole run: a run fetches and provisions
# while the early unit makes the keys, and only its own host_keys step waits. On /run:
# it must be taken before the root is writable, and it concerns this boot's processes only.
HOST_KEYS_LOCK = "/run/bootagent/host-keys.lock"
_STATE_FIX = (f"no per-instance step runs until it can be read; repair or remove {INSTANCE_FILE} "
              "(removed, this instance is provisioned again)")


def _read_json(ctx: Context, logical: str) -> dict:
    """The JSON object in `logical`; {} when it is missing or not a JSON object. Anything
    else (a directory, a symlink, an I/O error) is a StepError: taking it for "no state"
    would run every per-instance step again."""
    try:
        raw = writer.read_file(ctx, logical, limit=1 << 20)
    except BootagentError as err:
        raise StepError(f"cannot read the instance state: {err}; {_STATE_FIX}") from None
    except OSError as err:
        raise StepError(f"cannot read the instance state {logical}: {err.strerror or err}; "
                        f"{_STATE_FIX}") from None
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:  # a torn or foreign file: this instance is provisioned anew
        return {}
    return value if isinstance(value, dict) else {}


class InstanceState:
    def __init__(self, data: dict):
        self.data = data

    @classmethod
    def load(cls, ctx: Context) -> "InstanceState":
        data = _read_json(ctx, INSTANCE_FILE)
        if not isinstance(data.get("steps"), dict):
            data["steps"] = {}
        return cls(data)

    @property
    def instance_id(self) -> str | None:
        return self.data.get("instance_id")

    def begin(self, instance_id: str) -> bool:
        """Switch to `instance_id`; True when it is a new instance (everything runs again)."""
        instance_id = instance_id.lower()
        if self.instance_id == instance_id:
            return False
        self.data = {"instance_id": instance_id, "steps": {}}
        return True

    def done(self, step: str) -> bool:
        return bool(self.data["steps"].get(step, {}).get("ok"))

    def get(self, step: str) -> dict:
        return self.data["steps"].get(step, {})

    def record(self, step: str, ok: bool, **facts) -> None:
        self.data["steps"][step] = {"ok": ok, **facts}

    def forget(self, step: str) -> None:
        """As if `step` never ran for this instance: it runs at the next boot."""
        self.data["steps"].pop(step, None)

    def save(self, ctx: Context) -> None:
        """StepError when the state cannot be written: the run records it as its error."""
        body = json.dumps(self.data, sort_keys=True, indent=1).encode() + b"\n"
        try:
            writer.write_file(ctx, INSTANCE_FILE, body, mode=0o600, internal=True)
        except BootagentError as err:
            raise StepError(f"cannot save the instance state: {err}; the steps of this boot "
                            "run again at the next one") from None


def host_keys_instance(ctx: Context) -> str | None:
    raw = writer.read_file(ctx, HOST_KEYS_FILE, limit=4096)
    return raw.decode("utf-8", "replace").strip().lower() or None if raw else None


def set_host_keys_instance(ctx: Context, instance: str) -> None:
    writer.write_file(ctx, HOST_KEYS_FILE, instance.lower().encode() + b"\n", mode=0o600, internal=True)


def forget_instance(ctx: Context) -> list[str]:
    """For `clean`: the next boot is a first boot again (host keys included)."""
    removed = []
    for logical in (INSTANCE_FILE, HOST_KEYS_FILE):
        if writer.remove_file(ctx, logical):
            removed.append(logical)
    return removed


def run_lock(ctx: Context):
    return writer.exclusive_lock(ctx, LOCK_FILE)


def host_keys_lock(ctx: Context):
    """Never two ssh-keygen rounds for the same files; taken after the run lock when both are."""
    return writer.exclusive_lock(ctx, HOST_KEYS_LOCK, what="the host keys' lock")

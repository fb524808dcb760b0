"""DMI fields of the machine under the root (`/sys/class/dmi/id/<field>`).

On Linux `/sys/class/dmi/id` is a symlink to `/sys/devices/virtual/dmi/id`, and the
writer follows no symlink, so each field is looked up under both names. Azure tells
its VMs apart by two of them: the chassis asset tag says "this is Azure", the system
UUID is the VM's own.
"""

from __future__ import annotations

from bootagent import writer
from bootagent.context import Context
from bootagent.errors import BootagentError

DMI_DIRS = ("/sys/class/dmi/id", "/sys/devices/virtual/dmi/id")


def read_field(ctx: Context, field: str) -> str | None:
    """The stripped text of one DMI field, or None when no readable copy exists."""
    for directory in DMI_DIRS:
        try:
            raw = writer.read_file(ctx, f"{directory}/{field}", limit=4096)
        except (BootagentError, OSError):
            continue
        if raw is not None:
            return raw.decode("ascii", "replace").strip()
    return None

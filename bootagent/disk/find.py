"""Which block device is the resource disk, read from a sysfs tree and a mountinfo text.

The platform's udev rules (WALinuxAgent's, azure-vm-utils') name the disks by what the
kernel shows in sysfs, and so does this module, without needing those rules installed:
a SCSI disk of vendor Msft, model "Virtual Disk", whose VMBus device id is
`?00000000-0001-*` (Gen1) or the Gen2 controller `{f8b3781a-...}` at LUN 1; an NVMe
namespace whose controller's model is "Microsoft NVMe Direct Disk" (or "... v2").
The disks under the root file system are never candidates, whatever sysfs says.
Everything here takes paths and text, so tests run it on fake trees.
"""

from __future__ import annotations

import os

from bootagent.record import Record

GEN2_CONTROLLER = "{f8b3781a-1e82-4818-a1c3-63d806ec15bb}"
NVME_LOCAL_MODELS = ("Microsoft NVMe Direct Disk", "Microsoft NVMe Direct Disk v2")
# the mounts whose disks are the OS disk: never a resource disk, never formatted
SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/usr", "/var")


class Disk(Record, frozen=True):
    name: str   # the kernel's name: sdb, nvme0n1, vdb
    kind: str   # scsi | nvme | configured
    why: str    # how it was recognised, for the log


class Mount(Record, frozen=True):
    major: int
    minor: int
    point: str
    fstype: str
    source: str


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(4096).decode("utf-8", "replace").strip()
    except OSError:
        return None


def _natural(name: str) -> tuple:
    """sdz before sdaa, nvme2n1 before nvme10n1: the shorter name first."""
    return len(name), name


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/self/mountinfo's lines as Mounts (mount points unescaped)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:] or len(fields) < 10:
            continue
        dash = fields.index("-", 6)
        try:
            major, minor = (int(n) for n in fields[2].split(":"))
        except ValueError:
            continue
        point = _unescape(fields[4])
        mounts.append(Mount(major, minor, point, fields[dash + 1], _unescape(fields[dash + 2])))
    return mounts


def _unescape(text: str) -> str:
    """The kernel writes space, tab, newline and backslash in mountinfo as \\ooo."""
    if "\\" not in text:
        return text
    out, index = [], 0
    while index < len(text):
        chunk = text[index + 1:index + 4]
        if text[index] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            index += 4
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def block_name(sys_dir: str, major: int, minor: int) -> tuple[str, str | None] | None:
    """(disk, partition or None) of a device number, from /sys/dev/block; None when unknown."""
    real = os.path.realpath(os.path.join(sys_dir, "dev", "block", f"{major}:{minor}"))
    if not os.path.isdir(real):
        return None
    name = os.path.basename(real)
    if os.path.exists(os.path.join(real, "partition")):
        return os.path.basename(os.path.dirname(real)), name
    return name, None


def disks_beneath(sys_dir: str, name: str, seen: set) -> set[str]:
    """The whole disks beneath block device `name`: itself, or a dm/md device's slaves'."""
    if name in seen:
        return set()
    seen.add(name)
    slaves_dir = os.path.join(sys_dir, "class", "block", name, "slaves")
    try:
        slaves = os.listdir(slaves_dir)
    except OSError:
        slaves = []
    if not slaves:
        real = os.path.realpath(os.path.join(sys_dir, "class", "block", name))
        if os.path.exists(os.path.join(real, "partition")):
            return {os.path.basename(os.path.dirname(real))}
        return {name}
    disks: set[str] = set()
    for slave in slaves:
        disks |= disks_beneath(sys_dir, slave, seen)
    return disks


def os_disks(sys_dir: str, mounts: list[Mount]) -> set[str]:
    """The disks that hold the system's own file systems (root, /boot, /usr, /var)."""
    disks: set[str] = set()
    for mount in mounts:
        if mount.point not in SYSTEM_MOUNTS or mount.major == 0:
            continue
        found = block_name(sys_dir, mount.major, mount.minor)
        if found:
            disks |= disks_beneath(sys_dir, found[1] or found[0], set())
    return disks


def _vmbus_device_id(sys_dir: str, device_dir: str) -> str | None:
    """The `device_id` of the VMBus device above a SCSI device, e.g. '{00000000-0001-...}'."""
    top = os.path.realpath(sys_dir)
    here = os.path.realpath(device_dir)
    while here.startswith(top + os.sep) and here != top:
        value = _read(os.path.join(here, "device_id"))
        if value and value.startswith("{") and value.endswith("}"):
            return value.lower()
        here = os.path.dirname(here)
    return None


def _lun(device_dir: str) -> int | None:
    """The LUN of a SCSI device: the last field of its H:C:T:L directory name."""
    fields = os.path.basename(os.path.realpath(device_dir)).split(":")
    return int(fields[3]) if len(fields) == 4 and fields[3].isdigit() else None


def scsi_resource(sys_dir: str, name: str) -> str | None:
    """Why SCSI disk `name` is Azure's resource disk, or None when it is not."""
    device = os.path.join(sys_dir, "block", name, "device")
    if _read(os.path.join(device, "vendor")) != "Msft" or _read(os.path.join(device, "model")) != "Virtual Disk":
        return None
    device_id = _vmbus_device_id(sys_dir, device)
    if device_id is None:
        return None
    if len(device_id) > 15 and device_id[1:15] == "00000000-0001-":
        return f"VMBus device {device_id} (Gen1 resource disk)"
    if device_id == GEN2_CONTROLLER and _lun(device) == 1:
        return f"VMBus controller {device_id} LUN 1 (Gen2 resource disk)"
    return None


def nvme_local(sys_dir: str, name: str) -> str | None:
    """Why NVMe namespace `name` is a local (direct) disk, or None."""
    model = _read(os.path.join(sys_dir, "block", name, "device", "model"))
    return f"NVMe model {model!r}" if model in NVME_LOCAL_MODELS else None


def resource_disks(sys_dir: str, exclude: set[str]) -> list[Disk]:
    """The resource disks in the order they are used: the SCSI one first (the /mnt that
    Azure documents), then NVMe local disks. Disks in `exclude` (the OS disk) never."""
    try:
        names = sorted(os.listdir(os.path.join(sys_dir, "block")), key=_natural)
    except OSError:
        return []
    scsi, nvme = [], []
    for name in names:
        if name in exclude:
            continue
        if name.startswith("sd"):
            why = scsi_resource(sys_dir, name)
            if why:
                scsi.append(Disk(name, "scsi", why))
        elif name.startswith("nvme"):
            why = nvme_local(sys_dir, name)
            if why:
                nvme.append(Disk(name, "nvme", why))
    return scsi + nvme

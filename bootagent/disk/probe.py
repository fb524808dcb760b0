"""What a disk holds, read without changing a byte: `sfdisk --json`, `blkid -p`, `ntfsls`.

The same code reads a block device (the boot) and a disk image file (tests, offline
images): a partition of a block device is read through its own device node; one of an
image file through an offset (blkid -O) or, for ntfsls, which takes no offset, a copy of
its bytes. Tool failures become facts (`table_error`, `unreadable`), which the decision
never takes as a reason to format.
"""

from __future__ import annotations

import errno
import json
import os
import stat

from bootagent import tools
from bootagent.disk.find import Mount
from bootagent.disk.fresh import Facts, Part
from bootagent.errors import StepError, ToolError
from bootagent.text import one_line

TOOL_TIMEOUT = 120
MAX_NTFS_COPY = 1 << 30  # a test image's partition; a real one is read through its device
# C.UTF-8: ntfsls skips (with a message) a name it cannot show in the locale's charset
TOOL_ENV = {"LC_ALL": "C.UTF-8", "PATH": ":".join(tools.SYSTEM_BIN_DIRS)}


class ToolMissing(StepError):
    pass


def run_tool(argv: list[str], what: str, package: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a tool; ToolMissing / StepError when it cannot run."""
    try:
        done = tools.run(argv, where=os.environ, timeout=TOOL_TIMEOUT, env=TOOL_ENV, check=False)
    except ToolError as err:
        if err.reason == "missing":
            raise ToolMissing(f"{argv[0]} is missing, so {what} is not possible; install {package}") from None
        if err.reason == "timeout":
            raise StepError(f"{argv[0]} did not finish within {TOOL_TIMEOUT} s ({what})") from None
        raise StepError(f"cannot run {argv[0]} ({what}): {err.detail}") from None
    return done


def is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def partition_table(device: str) -> tuple[str | None, list[dict], str | None]:
    """(label, partitions, error): label None when the disk has no partition table."""
    code, out, err = run_tool(["sfdisk", "--json", device], f"reading the partition table of {device}",
                              "fdisk (util-linux)")
    if code != 0:
        if "does not contain a recognized partition table" in err:
            return None, [], None
        return None, [], one_line(err or f"sfdisk exit status {code}")
    try:
        table = json.loads(out)["partitiontable"]
        sector = int(table.get("sectorsize", 512))
        parts = [{"node": p["node"], "start": int(p["start"]) * sector, "size": int(p["size"]) * sector,
                  "type": str(p.get("type", ""))} for p in table.get("partitions", [])]
        return str(table["label"]), parts, None
    except (ValueError, KeyError, TypeError) as error:
        return None, [], f"sfdisk's output did not parse ({one_line(error)})"


def signature(device: str, offset: int | None = None, size: int | None = None) -> dict:
    """blkid -p's findings as udev keys (ID_FS_TYPE, ID_FS_LABEL_ENC, ID_PART_TABLE_TYPE...);
    {} when there is no signature; {"ID_FS_TYPE": "ambivalent"} when several compete."""
    argv = ["blkid", "-p", "-o", "udev"]
    if offset is not None:
        argv += ["-O", str(offset)]
    if size is not None:
        argv += ["-S", str(size)]
    code, out, err = run_tool(argv + [device], f"probing {device} for signatures", "util-linux")
    if code == 2:
        return {}
    if code == 8:
        return {"ID_FS_TYPE": "ambivalent"}
    if code != 0:
        raise StepError(f"blkid could not probe {device}: {one_line(err or f'exit status {code}')}")
    found = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key] = _unhex(value) if key.endswith("_ENC") else value
    return found


def _unhex(text: str) -> str:
    r"""blkid's *_ENC values: bytes outside [A-Za-z0-9#+-.:=@_] as \xHH."""
    raw, index = bytearray(), 0
    while index < len(text):
        if text.startswith("\\x", index) and len(text) >= index + 4:
            try:
                raw.append(int(text[index + 2:index + 4], 16))
                index += 4
                continue
            except ValueError:
                pass
        raw += text[index].encode()
        index += 1
    return raw.decode("utf-8", "replace")


def ntfs_entries(device: str, offset: int | None = None, size: int | None = None) \
        -> tuple[tuple | None, str | None]:
    """(names in the NTFS root, None) or (None, why it could not be read). Read-only: ntfsls
    opens the volume read-only. Anything on stderr (a damaged index, a name it could not
    show) makes the listing untrusted: a partial listing must never look empty."""
    if offset is not None:
        return _entries_of_slice(device, offset, size)
    try:
        code, out, err = run_tool(["ntfsls", "-a", "-i", device], f"reading the NTFS on {device}", "ntfs-3g")
    except ToolMissing:
        return None, None
    if code != 0 or err.strip():
        return None, one_line(err or f"ntfsls exit status {code}")
    names = []
    for line in out.splitlines():
        inode, _, name = line.lstrip(" ").partition(" ")
        if not inode.isdigit() or not name:
            return None, f"ntfsls printed a line that is not an entry: {one_line(line, 60)}"
        if name not in (".", ".."):
            names.append(name)
    return tuple(names), None


def _entries_of_slice(image: str, offset: int, size: int | None) -> tuple[tuple | None, str | None]:
    """An image file's partition, copied out for ntfsls (which takes no offset)."""
    import tempfile

    if size is None or size > MAX_NTFS_COPY:
        return None, "the partition is too large to copy out of an image file"
    with tempfile.NamedTemporaryFile(prefix="bootagent-ntfs-") as copy, open(image, "rb") as source:
        source.seek(offset)
        remaining = size
        while remaining:
            chunk = source.read(min(remaining, 1 << 20))
            if not chunk:
                break
            copy.write(chunk)
            remaining -= len(chunk)
        copy.flush()
        return ntfs_entries(copy.name)


def _mount_of(path: str, mounts: list[Mount]) -> tuple[str | None, bool]:
    """(where a block device is mounted, whether the kernel holds it); (None, False) for a file."""
    try:
        info = os.stat(path)
    except OSError:
        return None, False
    if not stat.S_ISBLK(info.st_mode):
        return None, False
    major, minor = os.major(info.st_rdev), os.minor(info.st_rdev)
    for mount in mounts:
        if (mount.major, mount.minor) == (major, minor):
            return mount.point, True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as err:
        return None, err.errno == errno.EBUSY
    os.close(fd)
    return None, False


def probe(device: str, kind: str, mounts: list[Mount]) -> Facts:
    """Everything the decision needs about `device` (a disk, a partition, an image file)."""
    block = is_block(device)
    if not block and not os.path.isfile(device):
        raise StepError(f"{device} is neither a block device nor a disk image; it may have vanished")
    label, rows, table_error = partition_table(device)
    whole = signature(device)
    mounted_at, busy = _mount_of(device, mounts)
    ntfs_readable = tools.which(os.environ, "ntfsls") is not None
    parts = []
    for row in rows:
        number = int("".join(c for c in row["node"][-3:] if c.isdigit()) or 0)
        if block:
            found = signature(row["node"])
            entries, unreadable = ntfs_entries(row["node"]) if found.get("ID_FS_TYPE") == "ntfs" \
                else (None, None)
            part_mount, part_busy = _mount_of(row["node"], mounts)
        else:
            found = signature(device, row["start"], row["size"])
            entries, unreadable = ntfs_entries(device, row["start"], row["size"]) \
                if found.get("ID_FS_TYPE") == "ntfs" else (None, None)
            part_mount, part_busy = None, False
        parts.append(Part(row["node"], number, row["type"], found.get("ID_FS_TYPE"),
                          found.get("ID_FS_LABEL_ENC"), found.get("ID_FS_UUID"), entries,
                          unreadable, part_mount, part_busy, start=row["start"], length=row["size"]))
    if not ntfs_readable:
        parts = [p.replace(entries=None) for p in parts]
    return Facts(device, kind, label, table_error, tuple(parts),
                 whole.get("ID_FS_TYPE") or whole.get("ID_PART_TABLE_TYPE"),
                 whole.get("ID_FS_LABEL_ENC"), whole.get("ID_FS_UUID"), mounted_at, busy, ntfs_readable)

"""Whether a disk may be formatted: a pure decision over what probing found.

A disk is formatted only when it is provably fresh (SPEC "Resource disk"): the SCSI
resource disk as Azure delivers it (one NTFS partition, or two on GPT with a Microsoft
reserved one first, whose root holds nothing but the data-loss warning and System
Volume Information), or an NVMe local disk with no partition table and no signature.
Our own file system is mounted; everything else is left as it is, with the reason.
"""

from __future__ import annotations

from bootagent.record import Record
from bootagent.text import quoted

LABEL = "bootagent-tmp"
AZURE_NTFS_LABEL = "Temporary Storage"
FRESH_NTFS_ENTRIES = ("dataloss_warning_readme.txt", "system volume information")
MS_RESERVED = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"


class Part(Record, frozen=True):
    node: str                        # the partition's device (/dev/sdb1)
    number: int = 1
    type: str = ""                   # sfdisk's type: "7" on dos, a GUID on gpt
    fstype: str | None = None        # blkid's TYPE; "ambivalent" when several signatures
    label: str | None = None
    uuid: str | None = None
    entries: tuple | None = None     # NTFS root directory names, when read
    unreadable: str | None = None    # why reading NTFS failed (never a reason to format)
    mounted_at: str | None = None
    busy: bool = False               # held by the kernel (mounted, swap, RAID, LVM)
    start: int = 0                   # its offset and size in bytes on the disk
    length: int = 0


class Facts(Record, frozen=True):
    device: str                      # the whole disk (/dev/sdb), or the configured device
    kind: str                        # scsi | nvme | configured
    table: str | None = None         # "dos" | "gpt" | None
    table_error: str | None = None   # sfdisk failed otherwise than "no table"
    parts: tuple = ()
    fstype: str | None = None        # a signature on the whole device (or its PTTYPE)
    label: str | None = None
    uuid: str | None = None
    mounted_at: str | None = None
    busy: bool = False
    ntfs_readable: bool = True       # a means to read NTFS exists here


class Verdict(Record, frozen=True):
    action: str                      # format | mount | ready | leave
    target: str | None = None        # the device to format or mount
    fstype: str | None = None        # the file system to mount (ours: as found)
    reason: str = ""
    uuid: str | None = None          # the identity of what was judged fresh, for the re-check


def _leave(facts: Facts, why: str) -> Verdict:
    return Verdict("leave", reason=f"left {facts.device} untouched: {why}")


def judge(facts: Facts, mount_point: str) -> Verdict:
    """What to do with the disk that `facts` describes."""
    if facts.table_error:
        return _leave(facts, f"its partition table could not be read ({facts.table_error})")
    whole = Part(facts.device, 0, "", facts.fstype, facts.label, facts.uuid,
                 mounted_at=facts.mounted_at, busy=facts.busy)
    every = (whole,) + tuple(facts.parts)
    ours = [p for p in every if p.label == LABEL]
    for part in every:  # mounts first: a mounted partition makes the whole disk busy too
        if part.mounted_at is not None:
            if part.label == LABEL and part.mounted_at == mount_point:
                return Verdict("ready", part.node, part.fstype, f"{part.node} is mounted at {mount_point}")
            return _leave(facts, f"{part.node} is mounted at {part.mounted_at}")
    for part in every:
        if part.busy:
            return _leave(facts, f"{part.node} is in use (swap, RAID, LVM or a mount elsewhere)")
    if len(ours) > 1:
        return _leave(facts, f"{len(ours)} file systems on it carry the label {LABEL}")
    if ours:
        return Verdict("mount", ours[0].node, ours[0].fstype, f"{ours[0].node} holds our file system")
    if facts.table is not None:
        if facts.kind == "nvme":
            return _leave(facts, f"it has a {facts.table} partition table, and a fresh NVMe local disk has none")
        return _ntfs_rule(facts)
    if facts.kind == "scsi":
        return _leave(facts, "it has no partition table, and a fresh resource disk has one NTFS partition")
    if facts.fstype is not None:
        return _leave(facts, f"it holds a {facts.fstype} signature")
    return Verdict("format", facts.device, reason=f"{facts.device} has no partition table and no signature")


def _ntfs_rule(facts: Facts) -> Verdict:
    parts = facts.parts
    if len(parts) == 1:
        part = parts[0]
    elif facts.table == "gpt" and len(parts) == 2 and parts[0].type.upper() == MS_RESERVED:
        part = parts[1]
    else:
        return _leave(facts, f"it has {len(parts)} partitions; a fresh resource disk has one NTFS "
                             "partition (two on GPT, the first Microsoft reserved)")
    if part.fstype != "ntfs":
        what = f"a {part.fstype} file system" if part.fstype else "no file system"
        return _leave(facts, f"{part.node} holds {what}, not the NTFS of a fresh resource disk")
    if part.entries is not None:
        others = [name for name in part.entries if name.casefold() not in FRESH_NTFS_ENTRIES]
        if others:
            shown = ", ".join(quoted(name, 60) for name in others[:3])
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            return _leave(facts, f"its NTFS holds files of its own: {shown}{more}")
        return Verdict("format", part.node, reason=f"{part.node} is the fresh NTFS of a new resource disk",
                       uuid=part.uuid)
    if part.unreadable:
        return _leave(facts, f"its NTFS on {part.node} could not be read ({part.unreadable})")
    if facts.ntfs_readable:  # a listing was due and none came: never a reason to format
        return _leave(facts, f"its NTFS on {part.node} was not read")
    if part.label == AZURE_NTFS_LABEL:
        return Verdict("format", part.node, uuid=part.uuid,
                       reason=f"{part.node} is NTFS labelled {AZURE_NTFS_LABEL!r} (no means to read NTFS here)")
    return _leave(facts, f"no means to read NTFS here (install ntfs-3g) and {part.node} is labelled "
                         f"{quoted(part.label)}, not {AZURE_NTFS_LABEL!r}")

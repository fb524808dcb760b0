"""Make a judged disk usable: mkfs in place, mount, the data-loss warning, the swap file.

mkfs writes the file system inside the partition Azure made (or over the whole raw
disk): the partition table is never rewritten, so e2fsprogs and util-linux suffice.
Nothing goes to /etc/fstab: the agent mounts the disk itself at every boot, so a
captured image never names a disk that a VM made from it may not have.
"""

from __future__ import annotations

import os

from bootagent import writer
from bootagent.context import Context
from bootagent.disk.fresh import LABEL
from bootagent.disk.probe import run_tool
from bootagent.errors import StepError
from bootagent.text import one_line

WARNING_NAME = "DATALOSS_WARNING_README.txt"
WARNING_TEXT = b"""WARNING: THIS IS A TEMPORARY DISK.

Any data stored on this drive is SUBJECT TO LOSS and THERE IS NO WAY TO RECOVER IT.

Please do not use this disk for storing any personal or application data.

Azure may replace this disk with a new, empty one after a deallocation, a resize or a
move to another host; bootagent formats such a new disk (ext4, label bootagent-tmp)
and mounts it here at every boot. It never formats a disk that holds anything else.
"""
SWAP_NAME = "swapfile"
SWAP_MAGIC = b"SWAPSPACE2"
MIB = 1 << 20


def mkfs(node: str, filesystem: str, extended: tuple = (), size_kib: int | None = None) -> None:
    """mkfs.<filesystem> -F -L bootagent-tmp on `node`. One -F only: mke2fs still refuses a
    device that is mounted. No discard: a fresh disk holds nothing, and discarding terabytes
    of NVMe takes minutes. `extended` (offset=...) and `size_kib` place a file system inside
    an image file; a partition's own device needs neither."""
    size = [f"{size_kib}k"] if size_kib else []
    options = ",".join(("nodiscard",) + tuple(extended))
    code, _, err = run_tool([f"mkfs.{filesystem}", "-F", "-q", "-L", LABEL, "-E", options, node, *size],
                            f"formatting {node}", "e2fsprogs")
    if code != 0:
        raise StepError(f"mkfs.{filesystem} failed on {node}: {one_line(err or f'exit status {code}')}; "
                        "the disk may be half-formatted: it is judged again at the next boot")


def mount(node: str, fstype: str, point: str) -> None:
    code, _, err = run_tool(["mount", "-t", fstype, node, point], f"mounting {node} at {point}", "mount (util-linux)")
    if code != 0:
        raise StepError(f"mounting {node} at {point} failed: {one_line(err or f'exit status {code}')}")


def warning_file(ctx: Context, point: str) -> list[str]:
    path = f"{point.rstrip('/')}/{WARNING_NAME}"
    return [path] if writer.write_file(ctx, path, WARNING_TEXT, mode=0o644, make_parents=False) else []


def active_swaps(text: str) -> set[str]:
    """The paths in /proc/swaps (the kernel writes spaces in them as \\040)."""
    from bootagent.disk.find import _unescape

    return {_unescape(line.split()[0]) for line in text.splitlines()[1:] if line.split()}


def swap_file(ctx: Context, point: str, size_mb: int, swaps_text: str) -> list[str]:
    """A 0600 swap file of `size_mb` MiB at the mount point, made again when its size
    differs, and enabled. Returns what changed."""
    logical = f"{point.rstrip('/')}/{SWAP_NAME}"
    path = ctx.path(logical)
    want = size_mb * MIB
    active = path in active_swaps(swaps_text)
    changed = []
    if not _is_swap(path, want):
        if ctx.dry_run:
            ctx.changes.append((logical, f"would make a {size_mb} MiB swap file {logical} (0600) and enable it"))
            return [logical]
        if active:
            _tool(["swapoff", path], f"disabling the old swap file {logical}")
            active = False
        _make_swap(path, want, logical)
        changed.append(logical)
    if not active:
        if ctx.dry_run:
            ctx.changes.append((logical, f"would enable the swap file {logical}"))
            return [logical]
        _tool(["swapon", path], f"enabling the swap file {logical}")
        changed.append(f"swapon {logical}")
    return changed


def _is_swap(path: str, size: int) -> bool:
    """Whether `path` is a regular 0600 file of `size` bytes with a swap signature."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        page = os.sysconf("SC_PAGE_SIZE")
        return (info.st_size == size and info.st_mode & 0o7777 == 0o600 and info.st_uid == 0
                and os.pread(fd, len(SWAP_MAGIC), page - len(SWAP_MAGIC)) == SWAP_MAGIC)
    finally:
        os.close(fd)


def _make_swap(path: str, size: int, logical: str) -> None:
    """Made under a temporary name, given its size and signature, then renamed."""
    temp = os.path.join(os.path.dirname(path), f".{SWAP_NAME}.bootagent-tmp")
    try:
        os.unlink(temp)  # a run killed while making it
    except FileNotFoundError:
        pass
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError:  # a file system without fallocate: write the zeros
                zeros = bytes(MIB)
                for _ in range(size // MIB):
                    os.write(fd, zeros)
            os.fsync(fd)
        finally:
            os.close(fd)
        _tool(["mkswap", temp], f"making the swap file {logical}")
        os.rename(temp, path)
    except OSError as err:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise StepError(f"cannot make the swap file {logical}: {err.strerror}; check free space on the disk") from None


def _tool(argv: list[str], what: str) -> None:
    code, _, err = run_tool(argv, what, "util-linux")
    if code != 0:
        raise StepError(f"{what} failed: {one_line(err or f'exit status {code}')}")

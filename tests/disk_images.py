"""Disk images in regular files, made with the real tools (sfdisk, mkntfs, ntfscp, mkfs.ext4):
the states a resource disk can be in, for the host tests and the real boot alike.

No loop device and no mount: a partition's file system is made in a file of its own and
copied into the image at the partition's offset.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

MIB = 1 << 20
SECTOR = 512
FIRST = 2048  # the first partition's sector, as Azure and every partitioner puts it
MS_RESERVED = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
TOOLS = ("sfdisk", "mkntfs", "ntfscp", "ntfsls", "blkid", "mkfs.ext4", "debugfs")
WARNING_TEXT = b"WARNING: THIS IS A TEMPORARY DISK.\r\n"


def missing_tools() -> list[str]:
    path = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))
    return [tool for tool in TOOLS if shutil.which(tool, path=path) is None]


def run(*argv: str, stdin: bytes | None = None) -> None:
    env = dict(os.environ, PATH=os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin")))
    subprocess.run(argv, input=stdin, check=True, capture_output=True, env=env)


def sha256(path: Path, start: int = 0, length: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining = length if length is not None else os.path.getsize(path) - start
        while remaining > 0:
            chunk = handle.read(min(remaining, MIB))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def blank(path: Path, size_mb: int) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size_mb * MIB)
    return path


def partition(image: Path, label: str, parts: list[tuple[int | None, str]]) -> list[tuple[int, int]]:
    """Write a partition table: (size in MiB or None for the rest, type) per partition.
    Returns each partition's (offset, size) in bytes."""
    lines = [f"label: {label}"]
    for size, kind in parts:
        lines.append(("" if size is None else f"size={size * MIB // SECTOR}, ") + f"type={kind}")
    run("sfdisk", "-q", str(image), stdin=("\n".join(lines) + "\n").encode())
    import json

    out = subprocess.run(["sfdisk", "--json", str(image)], check=True, capture_output=True,
                         env=dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")).stdout
    table = json.loads(out)["partitiontable"]
    return [(p["start"] * SECTOR, p["size"] * SECTOR) for p in table["partitions"]]


def put(image: Path, offset: int, fs_file: Path) -> None:
    """Copy a file system made in `fs_file` into the image at `offset`."""
    with open(fs_file, "rb") as source, open(image, "r+b") as target:
        target.seek(offset)
        while chunk := source.read(MIB):
            target.write(chunk)


def ntfs(work: Path, size: int, files: dict[str, bytes], label: str = "Temporary Storage") -> Path:
    """An NTFS file system of `size` bytes holding `files` in its root."""
    fs_file = work / f"ntfs-{len(list(work.iterdir()))}.fs"
    with open(fs_file, "wb") as handle:
        handle.truncate(size)
    run("mkntfs", "-F", "-Q", "-q", "-L", label, str(fs_file))
    for name, data in files.items():
        source = work / "ntfs-file.tmp"
        source.write_bytes(data)
        run("ntfscp", "-q", str(fs_file), str(source), name)
        source.unlink()
    return fs_file


def ext4(work: Path, size: int, label: str, files: dict[str, bytes]) -> Path:
    fs_file = work / f"ext4-{len(list(work.iterdir()))}.fs"
    content = work / f"ext4-content-{len(list(work.iterdir()))}"
    content.mkdir()
    for name, data in files.items():
        (content / name).write_bytes(data)
    with open(fs_file, "wb") as handle:
        handle.truncate(size)
    run("mkfs.ext4", "-q", "-F", "-L", label, "-d", str(content), str(fs_file))
    return fs_file


def azure_fresh(path: Path, work: Path, size_mb: int = 64, files: dict[str, bytes] | None = None,
                gpt: bool = False) -> Path:
    """A resource disk as Azure delivers it: one NTFS partition labelled "Temporary
    Storage" (on GPT after a Microsoft reserved one) holding the data-loss warning;
    `files` adds to its root."""
    blank(path, size_mb)
    if gpt:
        spans = partition(path, "gpt", [(16, MS_RESERVED), (None, BASIC_DATA)])
    else:
        spans = partition(path, "dos", [(None, "7")])
    offset, size = spans[-1]
    put(path, offset, ntfs(work, size, {"DATALOSS_WARNING_README.txt": WARNING_TEXT, **(files or {})}))
    return path

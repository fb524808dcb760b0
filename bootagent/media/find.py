"""Finding the provisioning media and reading its ovf-env.xml, never writing to it.

`azure.provisioning_media`: `auto` looks only on a live root on Azure (not on Arc): the CD
devices `/dev/sr*`, then any block device whose udev record says it holds UDF or ISO 9660.
While there is none, nothing runs (no subprocess, no import of a parser). A device is
mounted read-only in a private 0700 directory under /run/bootagent and always unmounted
again. A path (the configuration's, under the root, or `run --provisioning-media`, the
caller's own) may be a device, an ISO 9660 image (read without mounting, by xorriso or
isoinfo), a UDF image (loop-mounted read-only: that needs root), a directory holding
ovf-env.xml, or that file itself. The bytes are returned; the agent keeps no copy.
"""

from __future__ import annotations

import os
import stat

from bootagent.context import Context
from bootagent.errors import MediaError
from bootagent.record import Record
from bootagent.text import one_line, quoted

FILE_NAME = "ovf-env.xml"
READ_LIMIT = (1 << 20) + 1          # the parser refuses anything larger; read one byte past it
TOOL_TIMEOUT = 30
CD_FILESYSTEMS = ("udf", "iso9660")
MOUNT_DIR = "/run/bootagent"


class Found(Record, frozen=True):
    data: bytes
    source: str                     # where it was read, for messages: a device, a path

    def __repr__(self) -> str:      # never the bytes: they hold the password
        return f"Found({len(self.data)} bytes from {self.source})"




def read_media(ctx: Context, explicit: str | None = None) -> Found | None:
    """ovf-env.xml's bytes, or None when there is no media. `explicit` is the caller's
    own path (run --provisioning-media); else the configuration decides."""
    if explicit:
        return read_path(explicit, f"--provisioning-media {explicit}")
    value = ctx.config.azure.provisioning_media
    if value == "off":
        return None
    if value == "auto":
        return _auto(ctx)
    return read_path(ctx.path(value), f"azure.provisioning_media {value}")


def _auto(ctx: Context) -> Found | None:
    if not ctx.live or ctx.on_arc:
        return None
    from bootagent.platform import on_azure

    if not on_azure(ctx):
        return None
    for device in cd_devices(ctx):
        try:
            found = _from_device(ctx, device)
        except MediaError as err:
            if ctx.log is not None:
                from bootagent.log import log
                log(ctx, "info", f"no provisioning media on {device}: {err}")
            continue
        if found is not None:
            return found
    return None


def cd_devices(ctx: Context) -> list[str]:
    """The devices that may hold the media: /dev/sr*, then block devices whose udev
    record says UDF or ISO 9660. Pure reads of /dev, /run/udev/data and /sys."""
    devices = []
    try:
        names = sorted(os.listdir(ctx.path("/dev")))
    except OSError:
        names = []
    for name in names:
        if name.startswith("sr") and name[2:].isdigit():
            devices.append(f"/dev/{name}")
    try:
        records = sorted(os.listdir(ctx.path("/run/udev/data")))
    except OSError:
        records = []
    for record in records:
        if not record.startswith("b") or ":" not in record:
            continue
        if _udev_fs_type(ctx, record) not in CD_FILESYSTEMS:
            continue
        try:
            target = os.readlink(ctx.path(f"/sys/dev/block/{record[1:]}"))
        except OSError:
            continue
        device = f"/dev/{os.path.basename(target)}"
        if device not in devices:
            devices.append(device)
    return devices


def _udev_fs_type(ctx: Context, record: str) -> str | None:
    try:
        with open(ctx.path(f"/run/udev/data/{record}"), "rb") as handle:
            text = handle.read(1 << 16).decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("E:ID_FS_TYPE="):
            return line.partition("=")[2].strip()
    return None


def read_path(path: str, label: str) -> Found:
    """A device, an ISO 9660/UDF image, a directory holding ovf-env.xml, or the file."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise MediaError(f"cannot read {label}: {err.strerror}; give a device, an ISO image, "
                         f"a directory holding {FILE_NAME} or the file itself") from None
    if stat.S_ISDIR(info.st_mode):
        found = _from_directory(path)
        if found is None:
            raise MediaError(f"{label} is a directory without {FILE_NAME}")
        return found
    if stat.S_ISBLK(info.st_mode):
        from bootagent.context import Context as _Ctx

        found = _from_device(_Ctx(root="/"), path)
        if found is None:
            raise MediaError(f"{label}: the device holds no {FILE_NAME}")
        return found
    if not stat.S_ISREG(info.st_mode):
        raise MediaError(f"{label} is neither a file, a directory nor a block device")
    kind = image_kind(path)
    if kind == "iso9660":
        return Found(_extract_iso(path, label), path)
    if kind == "udf":
        return _from_udf_image(path, label)
    data = _read(path)
    if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<":
        return Found(data, path)
    raise MediaError(f"{label} is not {FILE_NAME}, a directory, a device or an ISO 9660/UDF image "
                     "(no file system found in it)")


def image_kind(path: str) -> str | None:
    """'iso9660' or 'udf' by the volume descriptors at 32 KiB, else None."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0x8000)
            head = handle.read(2048 * 16)
    except OSError:
        return None
    idents = {head[offset + 1:offset + 6] for offset in range(0, len(head), 2048)}
    if b"CD001" in idents:
        return "iso9660"
    if b"BEA01" in idents and (b"NSR02" in idents or b"NSR03" in idents):
        return "udf"
    return None


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise MediaError(f"cannot read {path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(READ_LIMIT)


def _from_directory(directory: str) -> Found | None:
    try:
        names = os.listdir(directory)
    except OSError as err:
        raise MediaError(f"cannot list {directory}: {err.strerror}") from None
    match = FILE_NAME if FILE_NAME in names else next(
        (n for n in names if n.lower() in (FILE_NAME, "ovf_env.xml")), None)
    if match is None:
        return None
    path = os.path.join(directory, match)
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise MediaError(f"{path} is not a regular file; refused")
    return Found(_read(path), path)


def _tool(*argv: str) -> tuple[int, str]:
    """(exit status, stderr) of a system tool, found in the system's bin directories only;
    127, 124, 126 (as a shell says) when it is missing, hangs or cannot start."""
    from bootagent import tools
    from bootagent.errors import ToolError

    try:
        done = tools.run(argv, where={}, timeout=TOOL_TIMEOUT, check=False,
                         env={"PATH": os.pathsep.join(tools.SYSTEM_BIN_DIRS), "LC_ALL": "C"})
    except ToolError as err:
        status = {"missing": 127, "timeout": 124}.get(err.reason, 126)
        said = {"missing": f"{argv[0]} not found", "timeout": f"{argv[0]} did not finish within {TOOL_TIMEOUT} s"}
        return status, said.get(err.reason, err.detail)
    return done.exit_status, done.stderr


def _from_device(ctx: Context, device: str) -> Found | None:
    """Mount `device` read-only in a private directory, read ovf-env.xml, unmount."""
    return _mounted(ctx, device, ["-o", "ro", "-t", ",".join(CD_FILESYSTEMS)], device)


def _from_udf_image(path: str, label: str) -> Found:
    from bootagent.context import Context as _Ctx

    if os.geteuid() != 0:
        raise MediaError(f"{label} is a UDF image: reading it needs a loop mount, so root; "
                         "give the directory or ovf-env.xml instead")
    found = _mounted(_Ctx(root="/"), path, ["-o", "ro,loop", "-t", "udf"], label)
    if found is None:
        raise MediaError(f"{label}: the image holds no {FILE_NAME}")
    return Found(found.data, path)


def _mounted(ctx: Context, source: str, options: list[str], label: str) -> Found | None:
    import tempfile

    from bootagent import writer

    writer.make_dirs(ctx, MOUNT_DIR)
    directory = tempfile.mkdtemp(prefix=".media.", dir=ctx.path(MOUNT_DIR))   # 0700
    try:
        code, err = _tool("mount", *options, source, directory)
        if code != 0:
            raise MediaError(f"cannot mount {label} read-only: {one_line(err) or f'exit {code}'}")
        try:
            found = _from_directory(directory)
            return Found(found.data, label) if found is not None else None
        finally:
            code, err = _tool("umount", directory)
            if code != 0:
                _tool("umount", "-l", directory)
    finally:
        try:
            os.rmdir(directory)
        except OSError:
            pass


def _extract_iso(path: str, label: str) -> bytes:
    """ovf-env.xml out of an ISO 9660 image without mounting (xorriso, else isoinfo), through
    a private temporary directory that is removed at once."""
    import shutil
    import tempfile

    from bootagent import tools

    work = tempfile.mkdtemp(prefix="bootagent-media.")
    try:
        out = os.path.join(work, FILE_NAME)
        if tools.which({}, "xorriso"):
            code, err = _tool("xorriso", "-osirrox", "on", "-indev", path,
                              "-extract", f"/{FILE_NAME}", out)
            if code == 0 and os.path.isfile(out):
                return _read(out)
            raise MediaError(f"{label}: no /{FILE_NAME} in the ISO image "
                             f"(xorriso: {quoted(one_line(err, 120), 140)})")
        isoinfo = tools.which({}, "isoinfo")
        if isoinfo:
            import subprocess

            with open(out, "wb") as handle:
                done = subprocess.run([isoinfo, "-R", "-J", "-i", path, "-x", f"/{FILE_NAME}"],
                                      stdout=handle, stderr=subprocess.PIPE, timeout=TOOL_TIMEOUT,
                                      stdin=subprocess.DEVNULL)
            data = _read(out)
            if done.returncode == 0 and data:
                return data
            raise MediaError(f"{label}: no /{FILE_NAME} in the ISO image")
        raise MediaError(f"{label} is an ISO image, and reading it needs xorriso or isoinfo "
                         "(apt-get install xorriso)")
    finally:
        shutil.rmtree(work, ignore_errors=True)

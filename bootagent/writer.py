"""The one writer: every file the agent touches goes through here.

Promises (SPEC "Every file the agent writes"): paths stay inside the root and never
pass through a symlink; a file is replaced atomically (hidden temp file in the same
directory, fsync, rename, fsync of the directory) with its mode and owner set before
the rename, and only when its bytes differ; temp files a killed run left behind are
removed the first time a run touches their directory, never those of a process that is
still running (temps.py); in dry-run nothing changes and
each would-be change is recorded in `ctx.changes`. The one exception to the rename
rule is `append_record`, for files other writers share (the Hyper-V KVP pool).
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager

from bootagent import temps
from bootagent.context import Context
from bootagent.errors import StepError, TooLarge, UnsafePath
from bootagent.paths import split_logical

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextmanager
def work_dir(ctx: Context, logical: str, label: str):
    """A private (0700) working directory for a tool's output (ssh-keygen's keys), inside
    `logical` under the root, with a temp name: removed after the block, and by the
    sweep of the next run when this one is killed. Yields its path on the host."""
    make_dirs(ctx, logical)
    with temps.own(ctx, label) as temp, _directory(ctx, split_logical(logical), logical) as dir_fd:
        os.mkdir(temp, 0o700, dir_fd=dir_fd)
        try:
            yield os.path.join(ctx.path(logical), temp)
        finally:
            import shutil

            shutil.rmtree(temp, dir_fd=dir_fd, ignore_errors=True)


def _refuse(logical: str, where: str, err: OSError) -> Exception:
    if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return UnsafePath(f"refusing {logical}: {where} is a symlink or not a directory; "
                          "remove it or fix the path", reason="symlink")
    return StepError(f"cannot reach {logical}: {where}: {err.strerror}")


@contextmanager
def _directory(ctx: Context, parts: list[str], logical: str, create: bool = False,
               mode: int = 0o755, owner: tuple[int, int] = (0, 0)):
    """Yield an fd of the directory `parts` under the root, walked without following links."""
    fd = os.open(ctx.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        walked = ""
        for name in parts:
            walked += "/" + name
            try:
                next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                next_fd = _make_dir(ctx, fd, name, mode, owner)
            except OSError as err:
                raise _refuse(logical, walked, err) from None
            os.close(fd)
            fd = next_fd
        yield fd
    finally:
        os.close(fd)


def _make_dir(ctx: Context, parent_fd: int, name: str, mode: int, owner: tuple[int, int]) -> int:
    """Create directory `name` atomically: made under a hidden temporary name, given its
    mode and owner, then renamed, so it never appears with the wrong owner (a ~/.ssh of
    root's after a kill). Returns its fd.

    Makers of one parent's directories take turns (an flock on the parent) and look again
    once it is their turn: the early unit and the run may both make /run/bootagent, and
    a rename onto an empty directory would replace the other's unseen."""
    with _turn(parent_fd):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)  # made while we waited
        except FileNotFoundError:
            pass
        temps.sweep(ctx, parent_fd)
        with temps.own(ctx, name) as temp:
            ctx.checkpoint()
            os.mkdir(temp, 0o700, dir_fd=parent_fd)
            fd = -1
            try:
                fd = os.open(temp, _DIR_FLAGS, dir_fd=parent_fd)
                os.fchown(fd, *owner)
                os.fchmod(fd, mode)
                ctx.checkpoint()
                os.rename(temp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            except BaseException as err:
                if fd >= 0:
                    os.close(fd)
                try:
                    os.rmdir(temp, dir_fd=parent_fd)
                except OSError:
                    pass
                if isinstance(err, OSError) and err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)  # made by someone else
                raise
        ctx.checkpoint()
        os.fsync(parent_fd)
        return fd


@contextmanager
def _turn(dir_fd: int):
    """An exclusive flock on a directory for the block; where the file system has no flock,
    the block runs without one."""
    import fcntl

    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        fcntl.flock(dir_fd, fcntl.LOCK_UN)


def _read_at(dir_fd: int, name: str, logical: str, limit: int | None) -> tuple[bytes, os.stat_result] | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _refuse(logical, logical, err) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"refusing {logical}: it is not a regular file", reason="not a regular file")
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                raise TooLarge(f"{logical} is larger than {limit} bytes; refusing to read it")
        return b"".join(chunks), info
    finally:
        os.close(fd)


def read_file(ctx: Context, logical: str, limit: int | None = None) -> bytes | None:
    """The bytes of a file under the root, or None when it (or its directory) is missing."""
    parts = split_logical(logical)
    try:
        with _directory(ctx, parts[:-1], logical) as dir_fd:
            found = _read_at(dir_fd, parts[-1], logical, limit)
    except FileNotFoundError:
        return None
    return found[0] if found else None


def lstat(ctx: Context, logical: str) -> os.stat_result | None:
    """The entry itself (a symlink is not followed, nor one on the way: UnsafePath), or None
    when it or its directory is missing."""
    parts = split_logical(logical)
    if not parts:
        return os.stat(ctx.root)
    try:
        with _directory(ctx, parts[:-1], logical) as dir_fd:
            return os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def exists(ctx: Context, logical: str) -> bool:
    """Whether the entry is there (a symlink counts; none is followed on the way)."""
    return lstat(ctx, logical) is not None


def is_dir(ctx: Context, logical: str) -> bool:
    """Whether the entry is a directory; a symlink to one is not."""
    info = lstat(ctx, logical)
    return info is not None and stat.S_ISDIR(info.st_mode)


def make_dirs(ctx: Context, logical: str, mode: int = 0o755, owner: tuple[int, int] = (0, 0)) -> bool:
    """Make sure a directory exists (missing ones made with `mode`/`owner`); True if it was made.

    An existing final directory gets `mode` and `owner` too (e.g. ~/.ssh must be 0700)."""
    parts = split_logical(logical)
    if ctx.dry_run:  # walked as the real run walks it, so it refuses what the real run refuses
        try:
            with _directory(ctx, parts, logical) as fd:
                info = os.fstat(fd)
        except FileNotFoundError:
            ctx.changes.append((logical, f"would create directory {logical} (mode {mode:04o})"))
            return True
        return _fix_meta_dry(ctx, logical, mode, owner, info)
    try:
        try:
            with _directory(ctx, parts, logical) as fd:
                return _fix_meta(ctx, fd, mode, owner)
        except FileNotFoundError:
            pass
        with _directory(ctx, parts, logical, create=True, mode=mode, owner=owner) as fd:
            _fix_meta(ctx, fd, mode, owner)
            return True
    except OSError as err:
        raise _io_error(f"cannot make directory {logical}", err) from None


def _fix_meta(ctx: Context, fd: int, mode: int, owner: tuple[int, int]) -> bool:
    """Give an open directory `mode` and `owner`; True when it had others."""
    info = os.fstat(fd)
    if stat.S_IMODE(info.st_mode) == mode and (info.st_uid, info.st_gid) == owner:
        return False
    ctx.checkpoint()
    os.fchown(fd, *owner)
    os.fchmod(fd, mode)
    return True


def read_only(ctx: Context, logical: str) -> bool:
    """Whether the file system holding `logical` (or its nearest existing parent) is
    mounted read-only."""
    parts = split_logical(logical)
    info = lstat(ctx, logical)
    if info is None or not stat.S_ISDIR(info.st_mode):
        parts = parts[:-1]  # a file, or nothing yet: its directory's file system decides
    for depth in range(len(parts), -1, -1):
        try:
            with _directory(ctx, parts[:depth], logical) as fd:
                return bool(os.fstatvfs(fd).f_flag & os.ST_RDONLY)
        except FileNotFoundError:
            continue
        except OSError as err:
            raise _io_error(f"cannot check that {logical} is writable", err) from None
    raise StepError(f"cannot reach {logical}: the root {ctx.root} is gone")


def wait_writable(ctx: Context, logical: str, timeout: float) -> None:
    """Return once `logical` is on a read-write mount; raise StepError after `timeout` s.

    `bootagent host-keys` starts before systemd remounts the root read-write, so that key
    generation overlaps the remount, and installs nothing until then."""
    deadline = ctx.clock() + timeout
    while read_only(ctx, logical):
        if ctx.clock() >= deadline:
            raise StepError(f"cannot write {logical}: its file system is still read-only after "
                            f"{timeout:g} s; mount it read-write (systemd-remount-fs does at boot)")
        ctx.sleep(0.05)


def _io_error(what: str, err: OSError) -> StepError:
    """A full disk or a read-only file system is the machine's fault: one clear line,
    never an internal error."""
    return StepError(f"{what}: {err.strerror or err}; check free space and that the file system is writable")


def _fix_meta_dry(ctx: Context, logical: str, mode: int, owner: tuple[int, int],
                  info: os.stat_result | None = None) -> bool:
    info = info or lstat(ctx, logical)
    if info is None:
        return False
    if stat.S_IMODE(info.st_mode) != mode or (info.st_uid, info.st_gid) != owner:
        ctx.changes.append((logical, f"would set {logical} to mode {mode:04o} owner {owner[0]}:{owner[1]}"))
        return True
    return False


def write_file(ctx: Context, logical: str, data: bytes, *, mode: int = 0o644,
               owner: tuple[int, int] = (0, 0), secret: bool = False, make_parents: bool = True,
               internal: bool = False) -> bool:
    """Atomically make `logical` hold `data` with `mode` and `owner`. True when anything changed.

    `secret` keeps the content out of dry-run diffs; `internal` marks the agent's own
    records, which a dry run neither writes nor reports."""
    parts = split_logical(logical)
    if not parts:
        raise UnsafePath("refusing to write the root itself")
    name = parts[-1]
    if ctx.dry_run:
        if internal:
            return False
        return _describe_write(ctx, logical, data, mode, owner, secret)
    try:
        with _directory(ctx, parts[:-1], logical, create=make_parents) as dir_fd:
            temps.sweep(ctx, dir_fd)
            found = _read_at(dir_fd, name, logical, None)
            if found is not None and found[0] == data:
                info = found[1]
                if stat.S_IMODE(info.st_mode) == mode and (info.st_uid, info.st_gid) == owner:
                    return False
                _set_meta_in_place(ctx, dir_fd, name, mode, owner)
                return True
            _replace(ctx, dir_fd, name, data, mode, owner)
            return True
    except FileNotFoundError:
        raise StepError(f"cannot write {logical}: its directory does not exist") from None
    except OSError as err:
        raise StepError(f"cannot write {logical}: {err.strerror or err}; "
                        "check free space and that the file system is writable") from None


def _set_meta_in_place(ctx: Context, dir_fd: int, name: str, mode: int, owner: tuple[int, int]) -> None:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        ctx.checkpoint()
        os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(ctx: Context, dir_fd: int, name: str, data: bytes, mode: int, owner: tuple[int, int]) -> None:
    with temps.own(ctx, name) as temp:
        ctx.checkpoint()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchown(fd, *owner)
                os.fchmod(fd, mode)
                ctx.checkpoint()
                os.fsync(fd)
            finally:
                os.close(fd)
            ctx.checkpoint()
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
    ctx.checkpoint()
    os.fsync(dir_fd)


def _describe_write(ctx: Context, logical: str, data: bytes, mode: int, owner: tuple[int, int],
                    secret: bool) -> bool:
    current = read_file(ctx, logical)
    if current == data:
        if current is not None:
            return _fix_meta_dry(ctx, logical, mode, owner)
        return False
    if secret:
        text = f"would write {logical} ({len(data)} bytes, content not shown), mode {mode:04o}"
    else:
        text = _unified_diff(logical, current, data)
    ctx.changes.append((logical, text))
    return True


def _unified_diff(logical: str, old: bytes | None, new: bytes) -> str:
    import difflib

    try:
        old_lines = (old or b"").decode("utf-8").splitlines(keepends=True)
        new_lines = new.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return f"binary file {logical} would change ({len(new)} bytes)"
    before = "/dev/null" if old is None else f"a{logical}"
    return "".join(difflib.unified_diff(old_lines, new_lines, before, f"b{logical}"))


def remove_file(ctx: Context, logical: str) -> bool:
    """Remove a file (never a directory, never through a symlink). True when it was there."""
    parts = split_logical(logical)
    if ctx.dry_run:
        try:
            with _directory(ctx, parts[:-1], logical) as dir_fd:
                os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        ctx.changes.append((logical, f"would remove {logical}"))
        return True
    try:
        with _directory(ctx, parts[:-1], logical) as dir_fd:
            ctx.checkpoint()
            os.unlink(parts[-1], dir_fd=dir_fd)
            os.fsync(dir_fd)
            return True
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        raise StepError(f"refusing to remove {logical}: it is a directory") from None
    except OSError as err:
        raise _io_error(f"cannot remove {logical}", err) from None


def list_dir(ctx: Context, logical: str) -> list[str]:
    """Names in a directory under the root (walked without following links); [] when missing."""
    parts = split_logical(logical)
    try:
        with _directory(ctx, parts, logical) as dir_fd:
            return sorted(os.listdir(dir_fd))
    except FileNotFoundError:
        return []


def append_record(ctx: Context, logical: str, record: bytes, mode: int = 0o644) -> None:
    """Append one whole record under an exclusive flock; existing records are never rewritten."""
    import fcntl

    parts = split_logical(logical)
    if ctx.dry_run:
        ctx.changes.append((logical, f"would append a {len(record)}-byte record to {logical}"))
        return
    with _directory(ctx, parts[:-1], logical) as dir_fd:
        ctx.checkpoint()
        fd = os.open(parts[-1], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode, dir_fd=dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def exclusive_lock(ctx: Context, logical: str, what: str = "the run lock"):
    """Hold an flock on `logical` for the block. The kernel drops it when a run dies, so a
    lock left by a killed run never blocks the next one."""
    import fcntl

    parts = split_logical(logical)
    try:
        with _directory(ctx, parts[:-1], logical, create=True) as dir_fd:
            fd = os.open(parts[-1], os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
    except OSError as err:  # a read-only or full root: one line, not an internal error
        raise _io_error(f"cannot take {what} {logical}", err) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

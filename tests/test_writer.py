"""The one writer on a real file system: atomic, only when bytes differ, mode and owner
before the rename, never through a symlink or out of the root, dry-run changes nothing."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bootagent import writer
from bootagent.context import Context
from bootagent.errors import UnsafePath

TEMP_MARK = ".bootagent-tmp."


def temp_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if TEMP_MARK in name]


def tree_digest(top: Path) -> dict[str, tuple]:
    """Every entry under `top`: its kind, mode, owner, and content hash or link target."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                what = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                what = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mtime_ns)
            else:
                what = ("dir",)
            seen[str(path.relative_to(top))] = (*what, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    return seen


# -- atomic replace, only when the bytes differ -------------------------------------------


def test_a_replace_is_a_rename_and_leaves_no_temp_file(make_ctx, root):
    ctx = make_ctx()
    target = root / "etc/motd"
    target.write_text("old\n")
    old_inode = target.stat().st_ino

    assert writer.write_file(ctx, "/etc/motd", b"new\n") is True

    assert target.read_bytes() == b"new\n"
    assert target.stat().st_ino != old_inode  # a new file renamed over the old one
    assert temp_files(root / "etc") == []


def test_a_new_file_and_its_missing_directories_are_made(make_ctx, root):
    ctx = make_ctx()
    assert writer.write_file(ctx, "/etc/app/conf.d/x.conf", b"x=1\n") is True
    assert (root / "etc/app/conf.d/x.conf").read_bytes() == b"x=1\n"
    assert stat.S_IMODE((root / "etc/app").stat().st_mode) == 0o755
    assert temp_files(root / "etc/app/conf.d") == []


def test_unchanged_bytes_are_not_written(make_ctx, root):
    ctx = make_ctx()
    writer.write_file(ctx, "/etc/motd", b"same\n", mode=0o644)
    before = (root / "etc/motd").stat()
    time.sleep(0.01)

    assert writer.write_file(make_ctx(), "/etc/motd", b"same\n", mode=0o644) is False

    after = (root / "etc/motd").stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == \
        (before.st_ino, before.st_mtime_ns, before.st_ctime_ns)


def test_mode_and_owner_are_set(make_ctx, root):
    ctx = make_ctx()
    writer.write_file(ctx, "/home/alice/.ssh/authorized_keys", b"key\n", mode=0o600, owner=(1234, 1235))
    info = (root / "home/alice/.ssh/authorized_keys").stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert (info.st_uid, info.st_gid) == (1234, 1235)


def test_same_bytes_with_another_mode_fixes_the_mode_in_place(make_ctx, root):
    target = root / "etc/secret"
    target.write_bytes(b"s\n")
    os.chmod(target, 0o644)
    inode = target.stat().st_ino

    assert writer.write_file(make_ctx(), "/etc/secret", b"s\n", mode=0o600, owner=(0, 5)) is True

    info = target.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, info.st_ino) == (0o600, 0, 5, inode)


class WatchingContext(Context):
    """At each write point, note the mode and owner of any temp file in `watched`."""

    watched: Path | None = None  # a Record field: set after construction

    def checkpoint(self) -> None:
        super().checkpoint()
        for name in temp_files(self.watched):
            info = (self.watched / name).lstat()
            self.seen.append((stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid,
                              (self.watched / name).read_bytes()))


def test_mode_and_owner_are_set_before_the_rename(root):
    ctx = WatchingContext(root=str(root))
    ctx.watched, ctx.seen = root / "etc", []
    (root / "etc/motd").write_text("old\n")

    writer.write_file(ctx, "/etc/motd", b"new\n", mode=0o640, owner=(0, 42))

    complete = [entry for entry in ctx.seen if entry[3] == b"new\n"]
    assert complete, "the temp file was never seen complete before the rename"
    assert all(entry[:3] == (0o640, 0, 42) for entry in complete)
    # and nobody could read a world-readable partial temp file before that
    assert all(entry[0] & 0o077 == 0 for entry in ctx.seen if entry[3] != b"new\n")


# -- symlinks and '..' -----------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    place = tmp_path / "outside"
    place.mkdir()
    (place / "victim").write_text("precious\n")
    return place


def test_a_symlinked_parent_directory_is_refused(make_ctx, root, outside):
    (root / "etc/app").symlink_to(outside)
    before = tree_digest(outside)

    with pytest.raises(UnsafePath) as caught:
        writer.write_file(make_ctx(), "/etc/app/victim", b"owned\n")

    assert "/etc/app" in str(caught.value)
    assert tree_digest(outside) == before


def test_a_symlink_high_up_the_path_is_refused(make_ctx, root, outside):
    (outside / "alice/.ssh").mkdir(parents=True)
    (root / "home/alice").symlink_to(outside / "alice")
    before = tree_digest(outside)

    with pytest.raises(UnsafePath):
        writer.write_file(make_ctx(), "/home/alice/.ssh/authorized_keys", b"key\n")
    with pytest.raises(UnsafePath):
        writer.make_dirs(make_ctx(), "/home/alice/.ssh", mode=0o700)

    assert tree_digest(outside) == before


def test_a_symlinked_final_file_is_refused_and_its_target_untouched(make_ctx, root, outside):
    (root / "etc/motd").symlink_to(outside / "victim")
    before = tree_digest(outside)

    with pytest.raises(UnsafePath):
        writer.write_file(make_ctx(), "/etc/motd", b"owned\n")
    with pytest.raises(UnsafePath):
        writer.read_file(make_ctx(), "/etc/motd")

    assert tree_digest(outside) == before
    assert (root / "etc/motd").is_symlink()


def test_a_dangling_symlink_is_not_followed_to_create_its_target(make_ctx, root, outside):
    (root / "etc/motd").symlink_to(outside / "created-by-the-agent")
    with pytest.raises(UnsafePath):
        writer.write_file(make_ctx(), "/etc/motd", b"owned\n")
    assert not (outside / "created-by-the-agent").exists()


def test_remove_and_append_refuse_a_symlinked_directory(make_ctx, root, outside):
    (root / "var/lib/hyperv").symlink_to(outside)
    before = tree_digest(outside)
    with pytest.raises(UnsafePath):
        writer.remove_file(make_ctx(), "/var/lib/hyperv/victim")
    with pytest.raises(UnsafePath):
        writer.append_record(make_ctx(), "/var/lib/hyperv/victim", b"record")
    assert tree_digest(outside) == before


@pytest.mark.parametrize("logical", ["/etc/../../outside/victim", "/home/alice/../../x", "/etc/./motd",
                                     "etc/motd", "/etc/mo\0td"])
def test_dot_dot_and_relative_paths_are_refused(make_ctx, root, outside, logical):
    before = tree_digest(root.parent)
    with pytest.raises(UnsafePath):
        writer.write_file(make_ctx(), logical, b"owned\n")
    assert tree_digest(root.parent) == before


# -- temp files a killed run left --------------------------------------------------------------


# a PID no process can have (above Linux's largest pid_max): the writer that left it is gone
GONE = 99999999


def test_stale_temp_files_are_removed_on_the_next_write_in_that_directory(make_ctx, root):
    stale = [f".hosts.bootagent-tmp.{GONE}-a1b2c3d4", f".motd.bootagent-tmp.{GONE}-XyZ_09"]
    kept = [f"hosts.bootagent-tmp.{GONE}-a1b2c3d4", f".hosts.bootagent-tmp.{GONE}-ab",
            ".hosts.bootagent-tmp.a1b2c3d4", "notes"]  # not ours: no writer's PID in it
    for name in stale + kept:
        (root / "etc" / name).write_text("half\n")
    (root / f"var/lib/.other.bootagent-tmp.{GONE}-a1b2c3d4").write_text("half\n")

    writer.write_file(make_ctx(), "/etc/hostname", b"localhost\n")  # no change needed

    names = os.listdir(root / "etc")
    assert not any(name in names for name in stale)
    assert all(name in names for name in kept)
    assert (root / f"var/lib/.other.bootagent-tmp.{GONE}-a1b2c3d4").exists()  # another directory


# -- dry run -----------------------------------------------------------------------------------


def test_dry_run_records_a_unified_diff_and_changes_no_byte(make_ctx, root):
    (root / f"etc/.hosts.bootagent-tmp.{GONE}-a1b2c3d4").write_text("half\n")
    before = tree_digest(root)
    ctx = make_ctx(dry_run=True)

    assert writer.write_file(ctx, "/etc/hostname", b"web-01\n") is True
    assert writer.write_file(ctx, "/etc/app/new.conf", b"a=1\n") is True
    assert writer.write_file(ctx, "/etc/hosts", (root / "etc/hosts").read_bytes()) is False
    assert writer.make_dirs(ctx, "/home/alice/.ssh", mode=0o700) is True
    assert writer.remove_file(ctx, "/etc/hosts") is True
    writer.append_record(ctx, "/var/lib/hyperv/.kvp_pool_1", b"r" * 16)

    assert tree_digest(root) == before
    diffs = dict(reversed(ctx.changes))  # the first change recorded for each path
    assert diffs["/etc/hostname"].startswith("--- a/etc/hostname\n+++ b/etc/hostname\n")
    assert "-localhost\n" in diffs["/etc/hostname"] and "+web-01\n" in diffs["/etc/hostname"]
    assert "--- /dev/null\n+++ b/etc/app/new.conf\n" in diffs["/etc/app/new.conf"]
    assert diffs["/etc/hosts"] == "would remove /etc/hosts"  # not the no-op write before it
    assert "/home/alice/.ssh" in diffs and "/var/lib/hyperv/.kvp_pool_1" in diffs


def test_dry_run_of_a_secret_hides_its_content(make_ctx, root):
    (root / "etc/secret").write_text("old-secret-value\n")
    ctx = make_ctx(dry_run=True)
    writer.write_file(ctx, "/etc/secret", b"new-secret-value\n", mode=0o600, secret=True)
    writer.write_file(ctx, "/var/lib/bootagent/user-data", b"password: hunter2\n", mode=0o600, secret=True)
    text = "".join(change for _, change in ctx.changes)
    assert "/etc/secret" in text and "/var/lib/bootagent/user-data" in text
    assert "secret-value" not in text and "hunter2" not in text
    assert (root / "etc/secret").read_text() == "old-secret-value\n"


# -- records shared with other writers ---------------------------------------------------------


def test_append_record_appends_whole_records(make_ctx, root):
    (root / "var/lib/hyperv").mkdir()
    pool = root / "var/lib/hyperv/.kvp_pool_1"
    pool.write_bytes(b"E" * 2560)  # another writer's record stays as it is
    ctx = make_ctx()
    writer.append_record(ctx, "/var/lib/hyperv/.kvp_pool_1", b"A" * 2560)
    writer.append_record(ctx, "/var/lib/hyperv/.kvp_pool_1", b"B" * 2560)
    assert pool.read_bytes() == b"E" * 2560 + b"A" * 2560 + b"B" * 2560


APPENDER = """
import sys
from bootagent import writer
from bootagent.context import Context
ctx = Context(root=sys.argv[1])
letter = sys.argv[2].encode()
for _ in range(40):
    writer.append_record(ctx, "/var/lib/hyperv/.kvp_pool_1", letter * 2560)
"""


def test_concurrent_appends_never_interleave(root):
    (root / "var/lib/hyperv").mkdir()
    writers = [subprocess.Popen([sys.executable, "-c", APPENDER, str(root), letter])
               for letter in "WXYZ"]
    assert [p.wait(timeout=60) for p in writers] == [0, 0, 0, 0]
    data = (root / "var/lib/hyperv/.kvp_pool_1").read_bytes()
    assert len(data) == 4 * 40 * 2560
    records = [data[i:i + 2560] for i in range(0, len(data), 2560)]
    assert all(len(set(record)) == 1 for record in records)


# -- the run lock --------------------------------------------------------------------------------


HOLDER = """
import sys, time
from bootagent import writer
from bootagent.context import Context
with writer.exclusive_lock(Context(root=sys.argv[1]), "/var/lib/bootagent/lock"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def start_holder(root: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def acquire_in_thread(ctx: Context) -> tuple[threading.Thread, list[float]]:
    acquired: list[float] = []

    def take():
        with writer.exclusive_lock(ctx, "/var/lib/bootagent/lock"):
            acquired.append(time.monotonic())

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread, acquired


def test_exclusive_lock_serialises(make_ctx, root):
    holder = start_holder(root, 0.8)
    started = time.monotonic()
    thread, acquired = acquire_in_thread(make_ctx())
    thread.join(10)
    holder.wait(10)
    assert acquired, "the lock was never granted"
    assert acquired[0] - started >= 0.5  # it waited for the holder to finish


def test_a_lock_held_by_a_killed_process_does_not_block(make_ctx, root):
    holder = start_holder(root, 600)
    thread, acquired = acquire_in_thread(make_ctx())
    thread.join(0.3)
    assert not acquired  # still held by the live holder

    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    thread.join(5)
    assert acquired, "a lock left by a killed process blocked the next run"


# -- reading ------------------------------------------------------------------------------------


def test_read_file_is_bounded_and_none_when_missing(make_ctx, root):
    from bootagent.errors import StepError

    (root / "etc/big").write_bytes(b"x" * 5000)
    ctx = make_ctx()
    assert writer.read_file(ctx, "/etc/nothing") is None
    assert writer.read_file(ctx, "/nowhere/at/all") is None
    assert writer.read_file(ctx, "/etc/big", limit=5000) == b"x" * 5000
    with pytest.raises(StepError):
        writer.read_file(ctx, "/etc/big", limit=4096)


def test_read_file_refuses_what_is_not_a_regular_file(make_ctx, root):
    os.mkfifo(root / "etc/fifo")
    with pytest.raises(UnsafePath):
        writer.read_file(make_ctx(), "/etc/fifo")  # and does not hang on it


def test_dry_run_refuses_a_symlink_as_the_real_run_does(make_ctx, root, outside):
    """A dry run must not promise a change that the real run would refuse."""
    (outside / "alice/.ssh").mkdir(parents=True)
    (root / "home/alice").symlink_to(outside / "alice")
    (root / "etc/app").symlink_to(outside)
    before = tree_digest(root.parent)
    ctx = make_ctx(dry_run=True)

    with pytest.raises(UnsafePath):
        writer.make_dirs(ctx, "/home/alice/.ssh", mode=0o700)
    with pytest.raises(UnsafePath):
        writer.write_file(ctx, "/home/alice/.ssh/authorized_keys", b"key\n", mode=0o600)
    with pytest.raises(UnsafePath):
        writer.remove_file(ctx, "/etc/app/victim")

    assert ctx.changes == []
    assert tree_digest(root.parent) == before


def test_a_sweep_removes_a_killed_runs_temp_files_but_not_those_this_process_is_using(make_ctx, root):
    """The host keys are made in a thread beside the run: the first write into a directory
    sweeps it of the temp files a killed run left, never of one the other thread is using."""
    ctx = make_ctx()
    run_dir = root / "run/bootagent"
    run_dir.mkdir(parents=True)
    stale_file = run_dir / f".result.json.bootagent-tmp.{GONE}-0a1b2c3d"
    stale_file.write_text("left by a killed run")
    stale_dir = run_dir / f".host-keys.bootagent-tmp.{GONE}-9f8e7d6c"
    stale_dir.mkdir()
    (stale_dir / "key0").write_text("a killed run's private key")

    with writer.work_dir(ctx, "/run/bootagent", "host-keys") as work:
        (Path(work) / "key0").write_text("a private key ssh-keygen is writing")
        assert writer.write_file(ctx, "/run/bootagent/result.json", b"{}")  # the first write there
        assert (Path(work) / "key0").read_text() == "a private key ssh-keygen is writing"
        assert not stale_file.exists() and not stale_dir.exists()
    assert not Path(work).exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["result.json"]


# -- two processes in one directory (the early host-keys unit beside the run) ------------------

WORKER = """
import sys
from bootagent import writer
from bootagent.context import Context
root, action = sys.argv[1], sys.argv[2]

class Pausing(Context):
    def checkpoint(self):  # the first write point: inside the directory's making
        super().checkpoint()
        if action == "pause" and self.writes.write_points == 1:
            print("paused", flush=True)
            sys.stdin.readline()

ctx = Pausing(root=root)
if action == "work":
    with writer.work_dir(ctx, "/run/bootagent", "host-keys") as work:
        open(work + "/key0", "w").write("a private key ssh-keygen is writing")
        print(work, flush=True)
        sys.stdin.readline()
else:
    writer.write_file(ctx, "/run/bootagent/" + sys.argv[3], b"mine\\n")
"""


def worker(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(root), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_sweep_leaves_another_live_processes_temps_and_removes_a_dead_ones(make_ctx, root):
    early = worker(root, "work")                      # the early unit, making keys
    work = Path(early.stdout.readline().strip())
    gone = subprocess.Popen(["true"])                 # a writer since killed: its PID is free
    gone.wait()
    dead_temp = root / f"run/bootagent/.result.json.bootagent-tmp.{gone.pid}-0a1b2c3d"
    dead_temp.write_text("left by a killed writer")
    try:
        assert writer.write_file(make_ctx(), "/run/bootagent/result.json", b"{}")  # the run sweeps
        assert (work / "key0").read_text() == "a private key ssh-keygen is writing"
        assert not dead_temp.exists()
    finally:
        out, err = early.communicate("\n", timeout=30)
    assert early.returncode == 0, err
    assert not work.exists()                          # and the early unit cleans up after itself


def test_two_processes_making_one_directory_take_turns_and_both_files_land_in_it(root):
    first = worker(root, "pause", "a")                # pauses inside the making of /run/bootagent
    assert first.stdout.readline() == "paused\n"
    second = worker(root, "write", "b")
    time.sleep(0.5)
    assert second.poll() is None                      # waiting for its turn
    first.stdin.write("\n")
    first.stdin.flush()
    for proc in (first, second):
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    run_dir = root / "run/bootagent"
    assert sorted(p.name for p in run_dir.iterdir()) == ["a", "b"]
    assert (run_dir / "a").read_text() == (run_dir / "b").read_text() == "mine\n"

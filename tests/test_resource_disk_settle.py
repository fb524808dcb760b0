"""The step's own path from verdict to a mounted disk, on a loop device under a scratch
root (the mount point is <root>/mnt): format, mount, the warning file; the next judgement
of the same disk mounts, never formats; the faults (a taken mount point, a vanished
device) are one line each and format nothing; --dry-run changes nothing. The real boot
(tests/test_realboot_disk.py) does the same on a VM's second disk, swap included."""

from __future__ import annotations

import subprocess
from pathlib import Path

import disk_images as images
import pytest

from bootagent import config
from bootagent.disk import prepare
from bootagent.log import Log
from bootagent.steps import resource_disk


def _loop(image: Path) -> str | None:
    try:
        done = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                              timeout=30, check=False)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@pytest.fixture
def loop(tmp_path):
    """A 32 MiB raw disk image on a loop device (skipped where loop devices cannot be had)."""
    image = images.blank(tmp_path / "disk.img", 32)
    device = _loop(image)
    if device is None:
        pytest.skip("no loop device here (needs root and /dev/loop-control)")
    mounts: list[str] = []
    yield image, device, mounts
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


def settle(make_ctx, device: str, **options):
    ctx = make_ctx(log=Log(), **options)
    ctx.config = config.validate({"azure": {"resource_disk": {"device": device}}}, "the test's")
    return ctx, resource_disk.settle(ctx, device, "nvme", resource_disk._mounts())


def test_a_fresh_raw_disk_is_formatted_mounted_and_found_again_without_formatting(make_ctx, root, loop):
    _, device, mounts = loop
    _, outcome = settle(make_ctx, device)
    mounts.append(str(root / "mnt"))
    assert outcome.status == "changed", outcome
    assert outcome.changed == [f"formatted {device}", f"mounted {device} at /mnt",
                               "/mnt/DATALOSS_WARNING_README.txt"]
    assert (root / "mnt/DATALOSS_WARNING_README.txt").read_bytes() == prepare.WARNING_TEXT
    found = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE,LABEL", str(root / "mnt")],
                           capture_output=True, text=True, check=False).stdout.split()
    assert found == [device, "ext4", "bootagent-tmp"]
    (root / "mnt/kept.txt").write_text("the user's\n")

    _, again = settle(make_ctx, device)  # a second run in the same boot: its own mount
    assert (again.status, again.details["action"]) == ("unchanged", "ready"), again

    subprocess.run(["umount", str(root / "mnt")], check=True)
    _, later = settle(make_ctx, device)  # the next boot: mounted, never formatted
    assert later.changed == [f"mounted {device} at /mnt"], later
    assert (root / "mnt/kept.txt").read_text() == "the user's\n"


def test_a_taken_mount_point_fails_the_step_and_formats_nothing(make_ctx, root, loop):
    image, device, mounts = loop
    (root / "mnt").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "scratch", str(root / "mnt")], check=True)
    mounts.append(str(root / "mnt"))
    before = images.sha256(image)
    ctx = make_ctx(log=Log())
    outcome = resource_disk.settle(ctx, device, "nvme", resource_disk._mounts())
    assert outcome.status == "failed"
    assert outcome.error == (f"/mnt already holds scratch (tmpfs), so {device} was neither formatted "
                             "nor mounted; unmount it or set azure.resource_disk.mount")
    assert images.sha256(image) == before


def test_dry_run_says_what_it_would_do_to_which_device_and_does_nothing(make_ctx, root, loop):
    image, device, _ = loop
    before = images.sha256(image)
    ctx, outcome = settle(make_ctx, device, dry_run=True)
    assert outcome.status == "changed"
    [(what, said)] = ctx.changes
    assert what == device
    assert said.startswith(f"would format {device} as ext4 labelled bootagent-tmp ({device} has no partition "
                           "table and no signature), mount it at /mnt")
    assert images.sha256(image) == before
    assert not (root / "mnt").exists()


def test_a_vanished_device_fails_with_one_line(make_ctx, root):
    ctx = make_ctx(log=Log())
    outcome = resource_disk.settle(ctx, str(root / "dev/vdb"), "configured", [])
    assert outcome.error == f"{root}/dev/vdb is not a block device (it may have vanished); nothing was formatted"

"""The resource disk in a real boot: a Debian 12 guest under QEMU with a second virtio disk
(`azure.resource_disk.device: /dev/vdb`), as an Azure VM with its temporary disk.

- A fresh Azure NTFS image: the first boot formats it in place and mounts it at /mnt
  (ext4, label bootagent-tmp, the warning file, a 0600 swap file enabled), no fstab line,
  the partition table byte for byte as it was; `run --dry-run` on a third, fresh disk
  says it would format it and changes not a byte of it. A reboot keeps what was written
  to /mnt in between.
- An NTFS image holding a user file: left alone, /mnt not mounted, and after the boot the
  image file on the host is byte-identical (sha256) to before.

Run: flock /tmp/realboot.lock .venv/bin/pytest -m realboot -s -q tests/test_realboot_disk.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import disk_images as images
from test_realboot import ADMIN, Bench

from vm import image as vmimage
from vm import session as vmsession

pytestmark = pytest.mark.realboot

SWAP_MB = 32
CONFIG = f"""\
azure:
  resource_disk:
    device: /dev/vdb
    swap_mb: {SWAP_MB}
"""
DISK_MB = 256


@pytest.fixture(scope="module", autouse=True)
def _prerequisites():
    vmsession.require("the resource-disk real boot",
                      vmsession.missing_prerequisites() + images.missing_tools())


class DiskBench(Bench):
    """Bench's helpers (ssh, journal, results) with this module's configuration and disks."""

    def __init__(self, workdir: Path):  # not Bench.__init__: it installs the templates' config
        self.workdir = workdir
        self.report = {"boots": {}}
        self.fingerprints, self.results = {}, {}
        self.key = workdir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "realboot-disk",
                        "-f", str(self.key)], check=True)
        self.base = vmimage.build_base()
        self.installed = vmimage.install_bootagent(self.base, workdir / "installed.raw", config=CONFIG)
        self.images = workdir / "images"
        self.images.mkdir()

    def boot_with(self, label: str, vm_id: str, disk: Path, drives: list[Path]):
        return vmsession.power_on(self.base, disk, self.workdir, self.document(vm_id, label),
                                  label=label, vm_id=vm_id, admin=ADMIN, key=self.key, measured=True,
                                  drives=drives)

    def step_seconds(self, vm, step: str) -> float | None:
        """The step's time: from the line of the step before it to its own result line (guest
        monotonic clock of the journal; this base's result.json has no per-step times)."""
        tagged = [(int(e["__MONOTONIC_TIMESTAMP"]), e["BOOTAGENT_STEP"]) for e in self.journal(vm, "bootagent")
                  if e.get("BOOTAGENT_STEP")]
        for index in range(len(tagged) - 1, 0, -1):
            if tagged[index][1] == step:
                before = [t for t, name in tagged[:index] if name != step]
                return round((tagged[index][0] - before[-1]) / 1e6, 3) if before else None
        return None

    def result(self, vm) -> dict:
        return json.loads(self.run(vm, "sudo cat /run/bootagent/result.json"))

    def stop(self, vm, fake) -> None:
        try:
            assert vm.poweroff(ADMIN, self.key), "the guest did not power off"
        finally:
            vm.kill()
            fake.stop()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return DiskBench(tmp_path_factory.mktemp("realboot-disk"))


def test_a_fresh_resource_disk_is_formatted_mounted_and_kept_across_a_reboot(bench):
    fresh = images.azure_fresh(bench.images / "fresh.raw", bench.images, DISK_MB)
    spare = images.azure_fresh(bench.images / "spare.raw", bench.images, DISK_MB)
    table_before = images.sha256(fresh, 0, images.FIRST * images.SECTOR)
    spare_before = images.sha256(spare)
    disk = vmimage.overlay(bench.installed, bench.workdir / "fresh-vm.qcow2")
    vm_id = str(uuid.uuid4())

    vm, fake = bench.boot_with("disk-first", vm_id, disk, [fresh, spare])
    try:
        result = bench.result(vm)
        step = result["steps"]["resource_disk"]
        assert step["status"] == "changed", step
        assert step["changed"][:2] == ["formatted /dev/vdb1", "mounted /dev/vdb1 at /mnt"], step
        bench.report["boots"]["format"] = {"resource_disk_s": bench.step_seconds(vm, "resource_disk"),
                                           "unit_active_s": bench.record("disk-first", vm, fake)["unit_active_s"]}
        assert bench.run(vm, "findmnt -n -o SOURCE,FSTYPE,LABEL /mnt").split() == \
            ["/dev/vdb1", "ext4", "bootagent-tmp"]
        assert "THIS IS A TEMPORARY DISK" in bench.run(vm, "cat /mnt/DATALOSS_WARNING_README.txt")
        assert bench.run(vm, "stat -c '%a %U %s' /mnt/swapfile").split() == ["600", "root", str(SWAP_MB << 20)]
        assert "/mnt/swapfile" in bench.run(vm, "cat /proc/swaps")
        assert "/mnt" not in bench.run(vm, "cat /etc/fstab")
        # --dry-run on the spare disk: what it would do, to which device, and nothing done
        # (elsewhere than /mnt, which vdb holds now: a dry run refuses a taken mount point too)
        dry_config = CONFIG.replace("/dev/vdb", "/dev/vdc") + "    mount: /srv/scratch\n"
        dry = bench.run(vm, f"printf '%s' '{dry_config}' | sudo tee /run/dry.yaml >/dev/null && "
                            "sudo bootagent run --dry-run --config /run/dry.yaml")
        assert "would format /dev/vdc1 as ext4 labelled bootagent-tmp" in dry, dry
        bench.run(vm, "echo 'written between boots' | sudo tee /mnt/kept.txt >/dev/null && sync")
    finally:
        bench.stop(vm, fake)
    assert images.sha256(fresh, 0, images.FIRST * images.SECTOR) == table_before
    assert images.sha256(spare) == spare_before

    vm, fake = bench.boot_with("disk-reboot", vm_id, disk, [fresh, spare])
    try:
        step = bench.result(vm)["steps"]["resource_disk"]
        assert step["status"] == "changed" and step["changed"][0] == "mounted /dev/vdb1 at /mnt", step
        assert not any(c.startswith("formatted") for c in step["changed"]), step
        bench.report["boots"]["remount"] = {"resource_disk_s": bench.step_seconds(vm, "resource_disk"),
                                            "unit_active_s": bench.record("disk-reboot", vm, fake)["unit_active_s"]}
        assert bench.run(vm, "cat /mnt/kept.txt").strip() == "written between boots"
        assert "/mnt/swapfile" in bench.run(vm, "cat /proc/swaps")
    finally:
        bench.stop(vm, fake)
    print(f"\n[resource disk] {json.dumps({k: bench.report['boots'][k] for k in ('format', 'remount')})}",
          flush=True)


def test_an_ntfs_holding_a_user_file_is_left_byte_for_byte(bench):
    used = images.azure_fresh(bench.images / "used.raw", bench.images, DISK_MB,
                              files={"important.txt": b"the user's data\n"})
    before = images.sha256(used)
    disk = vmimage.overlay(bench.installed, bench.workdir / "used-vm.qcow2")
    vm, fake = bench.boot_with("disk-used", str(uuid.uuid4()), disk, [used])
    try:
        step = bench.result(vm)["steps"]["resource_disk"]
        assert step["status"] == "skipped", step
        assert step["reason"] == ("left /dev/vdb untouched: its NTFS holds files of its own: "
                                  "'important.txt'"), step
        rc, _ = vm.ssh(ADMIN, bench.key, "findmnt /mnt")
        assert rc != 0, "/mnt is mounted"
        warned = bench.run(vm, "sudo journalctl -b -u bootagent -p warning --no-pager -o cat")
        assert "left /dev/vdb untouched" in warned
        bench.report["boots"]["left"] = {"resource_disk_s": bench.step_seconds(vm, "resource_disk"),
                                         "unit_active_s": bench.record("disk-used", vm, fake)["unit_active_s"]}
        print(f"\n[resource disk] {json.dumps(bench.report['boots'])}", flush=True)
    finally:
        bench.stop(vm, fake)
    time.sleep(0.5)
    assert images.sha256(used) == before

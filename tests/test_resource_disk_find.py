"""Finding the resource disk in sysfs, as the platform's udev rules define it, on fake
trees shaped as the kernel lays them out (symlinks included): Gen1 and Gen2 SCSI, NVMe
direct disks; never the OS disk, never a data disk. And the configuration it takes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootagent import config
from bootagent.disk import find
from bootagent.errors import ConfigError
from bootagent.steps import resource_disk

VMBUS = "devices/LNXSYSTM:00/LNXSYBUS:00/PNP0A03:00/device:07/VMBUS:01"
GEN1_OS = "{00000000-0000-8899-0000-000000000000}"
GEN1_RESOURCE = "{00000000-0001-8899-0000-000000000000}"
GEN2_OS_AND_RESOURCE = find.GEN2_CONTROLLER
GEN2_DATA = "{f8b3781b-1e82-4818-a1c3-63d806ec15bb}"


class Sysfs:
    """A fake /sys under a root: block devices with their device links and numbers."""

    def __init__(self, root: Path):
        self.root = root
        self.sys = root / "sys"
        (self.sys / "block").mkdir(parents=True)
        (self.sys / "dev/block").mkdir(parents=True)
        (self.sys / "class/block").mkdir(parents=True)
        self.minor = {}

    def _link(self, link: Path, target: Path) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(target, link.parent), link)

    def _block(self, device_dir: Path, name: str, major: int, partitions: int) -> None:
        block = device_dir / "block" / name
        block.mkdir(parents=True)
        self._link(block / "device", device_dir)
        self._link(self.sys / "block" / name, block)
        self._link(self.sys / "class/block" / name, block)
        first = self.minor.get(major, 0)
        self._link(self.sys / f"dev/block/{major}:{first}", block)
        for number in range(1, partitions + 1):
            part = block / f"{name}{'p' if name[-1].isdigit() else ''}{number}"
            part.mkdir()
            (part / "partition").write_text(f"{number}\n")
            self._link(self.sys / f"dev/block/{major}:{first + number}", part)
            self._link(self.sys / "class/block" / part.name, part)
        self.minor[major] = first + 16

    def scsi(self, name: str, device_id: str, host: int, lun: int, partitions: int = 1,
             vendor: str = "Msft", model: str = "Virtual Disk") -> None:
        vmbus = self.sys / VMBUS / device_id.strip("{}")
        vmbus.mkdir(parents=True, exist_ok=True)
        (vmbus / "device_id").write_text(device_id + "\n")
        device = vmbus / f"host{host}/target{host}:0:0/{host}:0:0:{lun}"
        device.mkdir(parents=True)
        (device / "vendor").write_text(f"{vendor:<8}\n")
        (device / "model").write_text(f"{model:<16}\n")
        self._block(device, name, 8, partitions)

    def nvme(self, name: str, model: str, partitions: int = 0) -> None:
        controller = self.sys / "devices/pci0000:00/0000:00:01.0/nvme" / name.split("n1")[0]
        controller.mkdir(parents=True)
        (controller / "model").write_text(f"{model:<40}\n")
        self._block(controller, name, 259, partitions)

    def dm(self, name: str, slaves: list[str]) -> None:
        block = self.sys / "devices/virtual/block" / name
        (block / "slaves").mkdir(parents=True)
        for slave in slaves:
            self._link(block / "slaves" / slave, self.sys / "class/block" / slave)
        self._link(self.sys / "class/block" / name, block)
        self._link(self.sys / "dev/block/254:0", block)


def mountinfo(*lines: tuple[str, str, str]) -> list[find.Mount]:
    """(major:minor, mount point, source) per mount, as /proc/self/mountinfo writes it."""
    text = "".join(f"{20 + i} 1 {numbers} / {point} rw,relatime shared:1 - ext4 {source} rw\n"
                   for i, (numbers, point, source) in enumerate(lines))
    return find.parse_mountinfo(text)


ROOT_ON_SDA1 = mountinfo(("8:1", "/", "/dev/sda1"), ("0:22", "/proc", "proc"))


@pytest.fixture
def sysfs(tmp_path):
    return Sysfs(tmp_path / "root")


def found(sysfs: Sysfs, mounts=ROOT_ON_SDA1) -> list[tuple[str, str]]:
    sys_dir = str(sysfs.sys)
    return [(d.name, d.kind) for d in find.resource_disks(sys_dir, find.os_disks(sys_dir, mounts))]


def test_gen1_resource_disk_by_its_vmbus_device_id(sysfs):
    sysfs.scsi("sda", GEN1_OS, 0, 0)
    sysfs.scsi("sdb", GEN1_RESOURCE, 1, 0)
    assert found(sysfs) == [("sdb", "scsi")]


def test_gen2_resource_disk_is_lun_1_of_the_os_controller_and_data_disks_never(sysfs):
    sysfs.scsi("sda", GEN2_OS_AND_RESOURCE, 0, 0)
    sysfs.scsi("sdb", GEN2_OS_AND_RESOURCE, 0, 1)
    sysfs.scsi("sdc", GEN2_DATA, 1, 1, partitions=0)  # a data disk at LUN 1 of its own controller
    assert found(sysfs) == [("sdb", "scsi")]


def test_a_disk_that_is_not_msft_virtual_disk_is_not_the_resource_disk(sysfs):
    sysfs.scsi("sda", GEN1_OS, 0, 0)
    sysfs.scsi("sdb", GEN1_RESOURCE, 1, 0, vendor="QEMU", model="QEMU HARDDISK")
    assert found(sysfs) == []


def test_the_os_disk_is_never_a_candidate_whatever_its_ids_say(sysfs):
    sysfs.scsi("sda", GEN1_RESOURCE, 0, 0)  # a root file system on the "resource" ids
    assert found(sysfs, mountinfo(("8:1", "/", "/dev/sda1"))) == []
    assert found(sysfs, mountinfo(("8:17", "/", "/dev/sdb1"))) == [("sda", "scsi")]


def test_nvme_local_disks_by_model_v1_and_v2_after_the_scsi_resource_disk(sysfs):
    sysfs.nvme("nvme0n1", "MSFT NVMe Accelerator v1.0", partitions=1)  # the OS disk on NVMe sizes
    sysfs.nvme("nvme1n1", "Microsoft NVMe Direct Disk")
    sysfs.nvme("nvme2n1", "Microsoft NVMe Direct Disk v2")
    assert found(sysfs, mountinfo(("259:1", "/", "/dev/nvme0n1p1"))) == [("nvme1n1", "nvme"), ("nvme2n1", "nvme")]
    sysfs.scsi("sdb", GEN1_RESOURCE, 1, 0)
    assert found(sysfs, mountinfo(("259:1", "/", "/dev/nvme0n1p1")))[0] == ("sdb", "scsi")


def test_a_root_on_device_mapper_excludes_the_disks_beneath_it(sysfs):
    sysfs.scsi("sda", GEN1_RESOURCE, 0, 0, partitions=2)
    sysfs.dm("dm-0", ["sda2"])
    assert find.os_disks(str(sysfs.sys), mountinfo(("254:0", "/", "/dev/mapper/root"))) == {"sda"}
    assert found(sysfs, mountinfo(("254:0", "/", "/dev/mapper/root"))) == []


def test_no_sysfs_at_all_finds_nothing(tmp_path):
    assert find.resource_disks(str(tmp_path / "sys"), set()) == []


def test_mountinfo_mount_points_are_unescaped():
    [mount] = find.parse_mountinfo("36 35 8:17 / /mnt/my\\040disk rw - ext4 /dev/sdb1 rw\n")
    assert (mount.major, mount.minor, mount.point, mount.source) == (8, 17, "/mnt/my disk", "/dev/sdb1")


@pytest.mark.skipif(os.geteuid() != 0, reason="makes device nodes")
def test_a_configured_device_on_the_os_disk_is_refused(sysfs, tmp_path):
    sysfs.scsi("sda", GEN1_OS, 0, 0, partitions=2)
    sysfs.scsi("sdb", GEN1_RESOURCE, 1, 0)
    nodes = tmp_path / "dev"
    nodes.mkdir()
    for name, minor in (("sda", 0), ("sda2", 2), ("sdb", 16)):
        os.mknod(nodes / name, 0o600 | 0o060000, os.makedev(8, minor))
    sys_dir = str(sysfs.sys)
    refusal = resource_disk.os_disk_refusal(sys_dir, str(nodes / "sda2"), ROOT_ON_SDA1)
    assert refusal == (f"azure.resource_disk.device {nodes}/sda2 is a partition of the OS disk /dev/sda: "
                       "it would be formatted; name the resource disk, or set device: auto")
    assert "is on the OS disk /dev/sda" in resource_disk.os_disk_refusal(sys_dir, str(nodes / "sda"), ROOT_ON_SDA1)
    assert resource_disk.os_disk_refusal(sys_dir, str(nodes / "sdb"), ROOT_ON_SDA1) is None


# -- configuration ---------------------------------------------------------------------------

def test_the_resource_disk_configuration_takes_its_keys():
    loaded = config.validate({"azure": {"resource_disk": {"device": "/dev/vdb", "swap_mb": 512,
                                                          "enabled": True}}}, "test")
    assert loaded.to_dict()["azure"]["resource_disk"] == {"enabled": True, "device": "/dev/vdb", "mount": "/mnt",
                                                          "filesystem": "ext4", "swap_mb": 512}
    assert loaded.azure.report_ready == "auto"


@pytest.mark.parametrize("value, words", [
    ({"enabled": "yes"}, "'azure.resource_disk.enabled' must be auto, true or false, not 'yes'"),
    ({"device": "vdb"}, "'azure.resource_disk.device' must be auto or an absolute path"),
    ({"device": "/dev/../etc"}, "'azure.resource_disk.device' must be auto or an absolute path"),
    ({"mount": "auto"}, "'azure.resource_disk.mount' must be an absolute path"),
    ({"mount": "/usr/"}, "it would hide a system directory"),
    ({"mount": "/mnt\n"}, "not '/mnt\\n'"),
    ({"filesystem": "xfs"}, "xfs cannot hold the 13-character label bootagent-tmp"),
    ({"swap_mb": -1}, "'azure.resource_disk.swap_mb' must be a whole number of MiB"),
    ({"swap_mb": True}, "'azure.resource_disk.swap_mb' must be a whole number of MiB"),
    ({"size": 1}, "unknown key 'azure.resource_disk.size'"),
    ("on", "'azure.resource_disk' must be a mapping"),
])
def test_a_bad_resource_disk_setting_names_the_key(value, words):
    with pytest.raises(ConfigError) as caught:
        config.validate({"azure": {"resource_disk": value}}, "bootagent.yaml")
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_the_step_is_skipped_off_the_live_root_and_when_disabled(make_ctx):
    ctx = make_ctx()
    assert resource_disk.run(ctx, None).reason == "root is not /"
    ctx = make_ctx(config={"azure": {"resource_disk": {"enabled": False}}})
    assert resource_disk.run(ctx, None).reason == "azure.resource_disk.enabled is false"

"""Never a byte lost: the decision on real disk images (regular files, made with sfdisk,
mkntfs, ntfscp, mkfs.ext4), read by the production probe (sfdisk --json, blkid -p,
ntfsls), and formatting in place that leaves the partition table byte for byte."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import disk_images as images
import pytest

from bootagent import tools
from bootagent.disk import fresh, prepare, probe
from bootagent.errors import StepError

MNT = "/mnt"

missing = images.missing_tools()
pytestmark = pytest.mark.skipif(bool(missing) and not os.environ.get("CI"),
                                reason=f"missing tools: {', '.join(missing)} (ntfs-3g, fdisk, e2fsprogs)")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def verdict_of(image: Path, kind: str = "scsi") -> tuple[fresh.Verdict, fresh.Facts]:
    facts = probe.probe(str(image), kind, [])
    return fresh.judge(facts, MNT), facts


def unchanged(image: Path, before: str) -> bool:
    return images.sha256(image) == before


def test_a_fresh_azure_ntfs_is_formatted(work):
    image = images.azure_fresh(work / "disk.img", work)
    verdict, facts = verdict_of(image)
    assert facts.table == "dos" and facts.parts[0].fstype == "ntfs"
    assert facts.parts[0].entries == ("DATALOSS_WARNING_README.txt",)
    assert (verdict.action, verdict.target) == ("format", f"{image}1")
    assert verdict.uuid == facts.parts[0].uuid


def test_an_ntfs_holding_one_user_file_is_left_and_named(work):
    image = images.azure_fresh(work / "disk.img", work, files={"results.csv": b"precious\n"})
    before = images.sha256(image)
    verdict, _ = verdict_of(image)
    assert verdict.action == "leave"
    assert verdict.reason == f"left {image} untouched: its NTFS holds files of its own: 'results.csv'"
    assert unchanged(image, before)


def test_ntfs_on_gpt_after_a_microsoft_reserved_partition_is_formatted(work):
    image = images.azure_fresh(work / "disk.img", work, gpt=True)
    verdict, facts = verdict_of(image)
    assert facts.table == "gpt" and facts.parts[0].type.upper() == images.MS_RESERVED
    assert (verdict.action, verdict.target) == ("format", f"{image}2")


def test_three_partitions_are_left(work):
    image = images.blank(work / "disk.img", 64)
    spans = images.partition(image, "dos", [(8, "7"), (8, "83"), (None, "83")])
    images.put(image, spans[0][0], images.ntfs(work, spans[0][1], {}))
    before = images.sha256(image)
    verdict, _ = verdict_of(image)
    assert verdict.action == "leave" and "it has 3 partitions" in verdict.reason
    assert unchanged(image, before)


def test_ext4_with_data_under_another_label_is_never_formatted_nor_mounted(work):
    image = images.blank(work / "disk.img", 32)
    images.put(image, 0, images.ext4(work, 32 << 20, "data", {"db.sqlite": b"rows"}))
    before = images.sha256(image)
    for kind in ("scsi", "nvme", "configured"):
        verdict, _ = verdict_of(image, kind)
        assert verdict.action == "leave", kind
        assert verdict.reason.endswith("it holds a ext4 signature") or "no partition table" in verdict.reason
    assert unchanged(image, before)


def test_our_ext4_holding_data_is_mounted_never_formatted(work):
    """A later boot: the disk we formatted, with what the user wrote to /mnt since."""
    image = images.blank(work / "disk.img", 32)
    images.put(image, 0, images.ext4(work, 32 << 20, fresh.LABEL, {"work.txt": b"kept"}))
    for kind in ("nvme", "configured"):
        verdict, _ = verdict_of(image, kind)
        assert (verdict.action, verdict.target, verdict.fstype) == ("mount", str(image), "ext4")


def test_our_file_system_in_the_azure_partition_is_mounted(work):
    """The SCSI resource disk after our first boot: the NTFS partition now holds our ext4."""
    image = images.azure_fresh(work / "disk.img", work)
    offset, size = probe.partition_table(str(image))[1][0]["start"], probe.partition_table(str(image))[1][0]["size"]
    images.put(image, offset, images.ext4(work, size, fresh.LABEL, {}))
    verdict, _ = verdict_of(image, "scsi")
    assert (verdict.action, verdict.target) == ("mount", f"{image}1")


def test_a_raw_nvme_disk_without_any_signature_is_formatted_a_raw_scsi_disk_is_left(work):
    image = images.blank(work / "disk.img", 16)
    verdict, facts = verdict_of(image, "nvme")
    assert facts.table is None and facts.fstype is None
    assert (verdict.action, verdict.target) == ("format", str(image))
    verdict, _ = verdict_of(image, "scsi")
    assert verdict.action == "leave" and "no partition table" in verdict.reason


def test_an_nvme_disk_with_a_partition_table_is_left(work):
    image = images.azure_fresh(work / "disk.img", work)
    verdict, _ = verdict_of(image, "nvme")
    assert verdict.action == "leave" and "a fresh NVMe local disk has none" in verdict.reason


def test_a_configured_device_is_judged_by_the_ntfs_rule_when_partitioned_else_the_raw_rule(work):
    fresh_ntfs = images.azure_fresh(work / "fresh.img", work)
    assert verdict_of(fresh_ntfs, "configured")[0].action == "format"
    used = images.azure_fresh(work / "used.img", work, files={"a.txt": b"x"})
    assert verdict_of(used, "configured")[0].action == "leave"
    raw = images.blank(work / "raw.img", 16)
    assert verdict_of(raw, "configured")[0].action == "format"
    swap = images.blank(work / "swap.img", 16)
    images.run("mkswap", str(swap))
    verdict, _ = verdict_of(swap, "configured")
    assert verdict.action == "leave" and "swap signature" in verdict.reason


def test_a_disk_mounted_already_is_left_unless_it_is_ours_at_the_mount_point(work):
    image = images.azure_fresh(work / "disk.img", work)
    facts = probe.probe(str(image), "scsi", [])
    mounted = facts.replace(parts=(facts.parts[0].replace(mounted_at="/data"),))
    assert fresh.judge(mounted, MNT).reason == f"left {image} untouched: {image}1 is mounted at /data"
    ours = images.blank(work / "ours.img", 16)
    images.put(ours, 0, images.ext4(work, 16 << 20, fresh.LABEL, {}))
    facts = probe.probe(str(ours), "nvme", [])
    assert fresh.judge(facts.replace(mounted_at=MNT), MNT).action == "ready"
    assert fresh.judge(facts.replace(mounted_at="/srv"), MNT).action == "leave"
    assert fresh.judge(facts.replace(busy=True), MNT).action == "leave"


def test_an_ntfs_that_cannot_be_read_is_left(work):
    """A damaged $MFTMirr: blkid still sees NTFS labelled "Temporary Storage", ntfsls
    refuses to mount it. Doubt is never a reason to format."""
    image = images.azure_fresh(work / "disk.img", work)
    offset = probe.partition_table(str(image))[1][0]["start"]
    with open(image, "r+b") as handle:
        handle.seek(offset)
        boot = handle.read(512)
        cluster = int.from_bytes(boot[11:13], "little") * boot[13]
        handle.seek(offset + int.from_bytes(boot[56:64], "little") * cluster)
        handle.write(b"\xff" * 1024)
    verdict, facts = verdict_of(image)
    assert facts.parts[0].fstype == "ntfs" and facts.parts[0].label == "Temporary Storage"
    assert verdict.action == "leave" and "could not be read" in verdict.reason


def test_without_ntfs_tools_only_the_azure_label_counts(work, monkeypatch):
    real_which = tools.which
    monkeypatch.setattr(tools, "which", lambda where, name: None if name == "ntfsls" else real_which(where, name))
    image = images.azure_fresh(work / "disk.img", work)
    verdict, facts = verdict_of(image)
    assert not facts.ntfs_readable and facts.parts[0].entries is None
    assert verdict.action == "format" and "no means to read NTFS here" in verdict.reason
    other = images.blank(work / "other.img", 64)
    span = images.partition(other, "dos", [(None, "7")])[0]
    images.put(other, span[0], images.ntfs(work, span[1], {}, label="Backup"))
    verdict, _ = verdict_of(other)
    assert verdict.action == "leave"
    assert verdict.reason.endswith("is labelled 'Backup', not 'Temporary Storage'")


def test_formatting_in_place_leaves_the_partition_table_byte_for_byte(work):
    """mkfs inside the fresh NTFS partition (at its offset in the image): the table region
    before it and the GPT backup after it are unchanged, and the result is ours."""
    image = images.azure_fresh(work / "disk.img", work, gpt=True)
    verdict, facts = verdict_of(image)
    part = facts.parts[1]
    assert verdict.target == part.node
    head = images.sha256(image, 0, facts.parts[0].start)
    reserved = images.sha256(image, part.start - (16 << 20), 16 << 20)
    tail_start = part.start + part.length
    tail = images.sha256(image, tail_start)
    prepare.mkfs(str(image), "ext4", (f"offset={part.start}",), size_kib=part.length // 1024)
    assert images.sha256(image, 0, facts.parts[0].start) == head
    assert images.sha256(image, part.start - (16 << 20), 16 << 20) == reserved
    assert images.sha256(image, tail_start) == tail
    assert os.path.getsize(image) == 64 << 20
    verdict, facts = verdict_of(image)
    assert (verdict.action, verdict.target, verdict.fstype) == ("mount", part.node, "ext4")
    verify = subprocess.run(["sfdisk", "--verify", str(image)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0


def test_mkfs_missing_or_failing_is_one_clear_line(work, monkeypatch):
    image = images.blank(work / "disk.img", 1)
    with pytest.raises(StepError) as caught:
        prepare.mkfs(str(image), "ext4", size_kib=1)  # too small for ext4
    assert str(caught.value).startswith(f"mkfs.ext4 failed on {image}: ") and "\n" not in str(caught.value)
    monkeypatch.setattr(tools, "SYSTEM_BIN_DIRS", ())
    monkeypatch.setenv("PATH", str(work))
    with pytest.raises(StepError) as caught:
        prepare.mkfs(str(image), "ext4")
    assert str(caught.value) == "mkfs.ext4 is missing, so formatting " + str(image) + \
        " is not possible; install e2fsprogs"


def test_a_device_that_vanished_is_a_clear_failure(work):
    with pytest.raises(StepError) as caught:
        probe.probe(str(work / "gone"), "nvme", [])
    assert "may have vanished" in str(caught.value)

"""The freshness rule itself, over values: what probing may find, and what is done with it.
Anything not provably fresh is left, with a reason that names the device."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootagent.disk.fresh import LABEL, MS_RESERVED, Facts, Part, judge

MNT = "/mnt"


def ntfs_disk(entries=("DATALOSS_WARNING_README.txt",), label="Temporary Storage", **facts) -> Facts:
    part = Part("/dev/sdb1", 1, "7", "ntfs", label, "60EF0BA46B8C4512", tuple(entries) if entries is not None
                else None)
    return Facts("/dev/sdb", "scsi", "dos", parts=(part,), fstype="dos", **facts)


@pytest.mark.parametrize("entries", [
    (), ("DATALOSS_WARNING_README.txt",), ("dataloss_warning_readme.txt", "System Volume Information"),
    ("SYSTEM VOLUME INFORMATION",), ("DataLoss_Warning_ReadMe.TXT", "system volume information"),
])
def test_only_the_warning_and_system_volume_information_in_any_case_is_fresh(entries):
    verdict = judge(ntfs_disk(entries), MNT)
    assert (verdict.action, verdict.target, verdict.uuid) == ("format", "/dev/sdb1", "60EF0BA46B8C4512")


@pytest.mark.parametrize("entries, shown", [
    (("DATALOSS_WARNING_README.txt", "notes.txt"), "'notes.txt'"),
    (("DATALOSS_WARNING_README.txt ",), "'DATALOSS_WARNING_README.txt '"),  # a near miss is a user file
    (("a", "b", "c", "d", "e"), "'a', 'b', 'c' and 2 more"),
    (("bad\nname",), "'bad\\nname'"),
])
def test_any_other_entry_leaves_the_disk_and_is_named(entries, shown):
    verdict = judge(ntfs_disk(entries), MNT)
    assert verdict.action == "leave"
    assert verdict.reason == f"left /dev/sdb untouched: its NTFS holds files of its own: {shown}"
    assert "\n" not in verdict.reason


def test_an_ntfs_not_read_although_a_means_exists_is_left():
    verdict = judge(ntfs_disk(entries=None), MNT)
    assert verdict.action == "leave" and "was not read" in verdict.reason


def test_without_a_means_to_read_ntfs_the_label_decides():
    assert judge(ntfs_disk(None, ntfs_readable=False), MNT).action == "format"
    verdict = judge(ntfs_disk(None, label="Data", ntfs_readable=False), MNT)
    assert verdict.action == "leave" and "install ntfs-3g" in verdict.reason


def test_our_partition_mounted_at_the_mount_point_is_ready_though_the_disk_is_busy():
    """Mounting a partition makes the kernel hold the whole disk too: a second run in the
    same boot must see its own mount, not a disk in use."""
    part = Part("/dev/sdb1", 1, "7", "ext4", LABEL, mounted_at=MNT, busy=True)
    facts = Facts("/dev/sdb", "scsi", "dos", parts=(part,), fstype="dos", busy=True)
    assert judge(facts, MNT).action == "ready"
    facts = facts.replace(parts=(part.replace(mounted_at="/data"),))
    assert judge(facts, MNT).reason == "left /dev/sdb untouched: /dev/sdb1 is mounted at /data"


def test_gpt_needs_the_reserved_partition_first():
    reserved = Part("/dev/sdb1", 1, MS_RESERVED.lower())
    data = Part("/dev/sdb2", 2, "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "ntfs", "Temporary Storage",
                entries=("DATALOSS_WARNING_README.txt",))
    assert judge(Facts("/dev/sdb", "scsi", "gpt", parts=(reserved, data)), MNT).target == "/dev/sdb2"
    assert judge(Facts("/dev/sdb", "scsi", "gpt", parts=(data, reserved)), MNT).action == "leave"
    assert judge(Facts("/dev/sdb", "scsi", "dos", parts=(reserved, data)), MNT).action == "leave"


@pytest.mark.parametrize("facts, words", [
    (Facts("/dev/sdb", "scsi", table_error="bad"), "its partition table could not be read (bad)"),
    (Facts("/dev/nvme1n1", "nvme", fstype="ambivalent"), "it holds a ambivalent signature"),
    (Facts("/dev/nvme1n1", "nvme", fstype="LVM2_member"), "it holds a LVM2_member signature"),
    (Facts("/dev/nvme1n1", "nvme", busy=True), "is in use"),
    (Facts("/dev/sdb", "scsi"), "it has no partition table"),
    (Facts("/dev/vdb", "configured", "dos", parts=(Part("/dev/vdb1", fstype="ext4", label="x"),)),
     "/dev/vdb1 holds a ext4 file system, not the NTFS"),
])
def test_what_is_left_and_why(facts, words):
    verdict = judge(facts, MNT)
    assert verdict.action == "leave" and words in verdict.reason and facts.device in verdict.reason


def test_our_label_is_mounted_whatever_kind_of_disk_holds_it():
    for kind in ("scsi", "nvme", "configured"):
        verdict = judge(Facts("/dev/sdb", kind, fstype="ext4", label=LABEL), MNT)
        assert (verdict.action, verdict.target, verdict.fstype) == ("mount", "/dev/sdb", "ext4")


def test_two_file_systems_of_ours_are_not_guessed_between():
    parts = (Part("/dev/vdb1", 1, "83", "ext4", LABEL), Part("/dev/vdb2", 2, "83", "ext4", LABEL))
    assert judge(Facts("/dev/vdb", "configured", "dos", parts=parts), MNT).action == "leave"


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)


@given(st.lists(names, max_size=4), st.sampled_from(["scsi", "configured"]))
def test_a_format_verdict_always_means_nothing_but_the_fresh_entries(entries, kind):
    facts = ntfs_disk(entries).replace(kind=kind)
    verdict = judge(facts, MNT)
    fresh_only = all(e.casefold() in ("dataloss_warning_readme.txt", "system volume information")
                     for e in entries)
    assert (verdict.action == "format") == fresh_only

"""The resource disk (SPEC "Resource disk"): find it, judge it, and only then format it.

    find.py     which block device is the resource disk (sysfs and mountinfo; no tool)
    fresh.py    the decision over what probing found (pure: values in, a verdict out)
    probe.py    what a disk holds (sfdisk, blkid, ntfsls); works on image files too
    prepare.py  mkfs, mount, the warning file and the swap file

find.py is all a boot without a resource disk loads; the rest only when there is one.
"""

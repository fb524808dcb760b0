"""Helpers of the reliability tests: snapshots of a root, the old-or-new judge, and a
scenario root that exercises every step of a first boot."""

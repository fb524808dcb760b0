"""Step `resource_disk` (SPEC "Resource disk"): every boot, the live root only.

Find the disk (sysfs), judge it (probe.py's facts, fresh.py's rules), and only when it is
provably fresh format it; mount our own file system at every boot; leave anything else
untouched with one warning. Just before mkfs the disk is judged again from scratch, so
nothing that changed since the first look is formatted. A boot without a resource disk
reads a few sysfs files and nothing more: no tool runs, no probing module is imported.
"""

from __future__ import annotations

import os

from bootagent import writer
from bootagent.config import ResourceDiskSettings
from bootagent.errors import ConfigError, StepError
from bootagent.log import log
from bootagent.steps import StepResult

STEP = "resource_disk"
MOUNTINFO = "/proc/self/mountinfo"


def _conf(ctx) -> ResourceDiskSettings:
    return ctx.config.azure.resource_disk


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _mounts():
    from bootagent.disk import find

    return find.parse_mountinfo(_read(MOUNTINFO))


def os_disk_refusal(sys_dir: str, device: str, mounts) -> str | None:
    """Why a configured `device` must never be used (it is or lies on the OS disk), or None."""
    from bootagent.disk import find

    try:
        info = os.stat(device)
    except OSError:
        return None  # a device that is not there is the step's business, not the configuration's
    import stat

    if not stat.S_ISBLK(info.st_mode):
        return None
    found = find.block_name(sys_dir, os.major(info.st_rdev), os.minor(info.st_rdev))
    if found is None:
        return None
    beneath = find.disks_beneath(sys_dir, found[1] or found[0], set())
    system = beneath & find.os_disks(sys_dir, mounts)
    if not system:
        return None
    what = "a partition of the OS disk" if found[1] else "on the OS disk"
    return (f"azure.resource_disk.device {device} is {what} /dev/{min(system)}: it would be "
            "formatted; name the resource disk, or set device: auto")


def check_config(ctx) -> None:
    """At configuration load on a live root: a configured device on the OS disk is exit 2."""
    device = _conf(ctx).device
    if device == "auto" or not ctx.live or _conf(ctx).enabled is False:
        return
    refusal = os_disk_refusal(ctx.path("/sys"), device, _mounts())
    if refusal:
        raise ConfigError(refusal)


def skip_reason(ctx) -> str | None:
    enabled = _conf(ctx).enabled
    if enabled is False:
        return "azure.resource_disk.enabled is false"
    if not ctx.live:
        return "root is not /"
    if enabled == "auto":
        from bootagent.platform import on_azure

        if not on_azure(ctx):
            return "not on Azure (no Azure chassis asset tag); set azure.resource_disk.enabled: true to use it"
    return None


def run(ctx, boot) -> StepResult:
    reason = skip_reason(ctx)
    if reason:
        return StepResult.skipped(reason)
    return provision(ctx, _mounts())


def provision(ctx, mounts) -> StepResult:
    """Find the disk in the root's sysfs and settle it; without one, nothing else is loaded."""
    from bootagent.disk import find

    conf = _conf(ctx)
    sys_dir = ctx.path("/sys")
    if conf.device == "auto":
        disks = find.resource_disks(sys_dir, find.os_disks(sys_dir, mounts))
        if not disks:
            return StepResult.skipped("no resource disk on this VM")
        disk, device = disks[0], f"/dev/{disks[0].name}"
        for other in disks[1:]:
            log(ctx, "info", f"/dev/{other.name} ({other.why}) is left alone: only {device} is used", step=STEP)
    else:
        # a udev link (/dev/disk/azure/resource) resolved: sfdisk names partitions after the path
        device = os.path.realpath(conf.device)
        refusal = os_disk_refusal(sys_dir, device, mounts)
        if refusal:
            return StepResult.failed(refusal)
        disk = find.Disk(os.path.basename(device), "configured", "azure.resource_disk.device")
    return settle(ctx, device, disk.kind, mounts)


def settle(ctx, device: str, kind: str, mounts) -> StepResult:
    """Judge `device` and act on the verdict."""
    from bootagent.disk import fresh, prepare, probe

    conf = _conf(ctx)
    point = conf.mount
    if not probe.is_block(device):
        return StepResult.failed(f"{device} is not a block device (it may have vanished); nothing was formatted")
    where = ctx.path(point)  # the mount point as mountinfo shows it (the same on a live root)
    verdict = fresh.judge(probe.probe(device, kind, mounts), where)
    details = {"device": device, "action": verdict.action}
    if verdict.action == "leave":
        log(ctx, "warning", verdict.reason, step=STEP)
        return StepResult("skipped", reason=verdict.reason, details=details)
    holder = [m for m in mounts if m.point == where]
    if verdict.action != "ready" and holder:
        return StepResult.failed(f"{point} already holds {holder[-1].source} ({holder[-1].fstype}), so {device} "
                                 f"was neither formatted nor mounted; unmount it or set azure.resource_disk.mount")
    target, fstype = verdict.target or device, verdict.fstype or conf.filesystem
    if ctx.dry_run and verdict.action != "ready":
        doing = (f"format {target} as {fstype} labelled {fresh.LABEL} ({verdict.reason})"
                 if verdict.action == "format" else f"mount {target} ({verdict.reason})")
        ctx.changes.append((device, f"would {doing}, mount it at {point}, write "
                                    f"{prepare.WARNING_NAME} there"
                                    + (f" and make a {conf.swap_mb} MiB swap file" if conf.swap_mb else "")))
        return StepResult("changed", changed=[device], details=details)
    changed = []
    if verdict.action == "format":
        _recheck(device, kind, where, verdict)
        log(ctx, "info", f"formatting {target}: {verdict.reason}", step=STEP)
        prepare.mkfs(target, fstype)
        changed.append(f"formatted {target}")
    if verdict.action in ("format", "mount"):
        writer.make_dirs(ctx, point)
        prepare.mount(target, fstype, where)
        changed.append(f"mounted {target} at {point}")
    changed += prepare.warning_file(ctx, point)
    if conf.swap_mb > 0:
        changed += prepare.swap_file(ctx, point, conf.swap_mb, _read("/proc/swaps"))
    return StepResult.done(changed).replace(details=details)


def _recheck(device: str, kind: str, point: str, verdict) -> None:
    """Judge the disk again from nothing, just before mkfs: the same verdict on the same
    file system, and nobody holding the target, or no format."""
    from bootagent.disk import fresh, probe

    try:
        again = fresh.judge(probe.probe(device, kind, _mounts()), point)
    except StepError as err:
        raise StepError(f"{device} could not be judged again just before formatting ({err}); "
                        "nothing was formatted") from None
    if (again.action, again.target, again.uuid) != (verdict.action, verdict.target, verdict.uuid):
        raise StepError(f"{device} changed between the check and the format ({again.reason or again.action}); "
                        "nothing was formatted")
    try:
        fd = os.open(verdict.target, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as err:
        raise StepError(f"{verdict.target} cannot be had for formatting ({err.strerror}); "
                        "nothing was formatted") from None
    os.close(fd)

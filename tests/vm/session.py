"""What every real-boot module does the same way: check the host's tools, and power a VM
on against a fake IMDS until its admin can log in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from . import fake as vmfake
from . import qemu as vmqemu

# the tools every real boot needs on the host
HOST_TOOLS = ("mmdebstrap", "mkfs.ext4", "debugfs", "qemu-system-x86_64", "qemu-img", "socat",
              "ssh", "ssh-keygen", "ssh-keyscan")
# Guards, not measurements: TCG boots reach SSH in 20-30 s.
SSH_DEADLINE = 300


def missing_prerequisites(extra_tools: tuple[str, ...] = ()) -> list[str]:
    missing = [tool for tool in HOST_TOOLS + tuple(extra_tools) if not shutil.which(tool)]
    if os.geteuid() != 0:
        missing.append("root (mmdebstrap --mode=root)")
    return missing


def require(what: str, missing: list[str]) -> None:
    """Fail under CI (a real boot is never skipped silently there), else skip."""
    if missing:
        message = (f"{what} needs " + ", ".join(missing) + " (scripts/bootstrap.sh --full "
                   "installs them)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def power_on(base, disk: Path, workdir: Path, document: dict, *, label: str, vm_id: str,
             admin: str, key: Path, measured: bool = False, **vm_options):
    """Boot `disk` against a fake serving `document` until `admin` logs in with `key`
    (`measured`: the first-login timing poll). Returns (vm, fake), both running; the
    caller powers off. `vm_options`: the VM's extra hardware (a CD, drives, a NIC)."""
    fake = vmfake.FakeImds(document, workdir, name=label).start()
    vm = vmqemu.VM(disk, base.kernel, base.initrd, workdir=workdir, vm_uuid=vm_id,
                   fake_port=fake.port, name=label, **vm_options)
    try:
        vm.boot()
        print(f"\n[{label}] booting ({vm.accel}), console: {vm.console_log}", flush=True)
        if measured:
            vm.wait_for_first_login(admin, key, SSH_DEADLINE)
        else:
            vm.wait_for_ssh(admin, key, SSH_DEADLINE)
    except BaseException:
        vm.kill()
        fake.stop()
        raise
    return vm, fake

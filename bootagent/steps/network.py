"""Step `network` (every boot, SPEC "Network from IMDS"): every NIC and every IP that IMDS
lists, configured through the image's own network stack.

The backend is what the root has: netplan when /usr/sbin/netplan is there (Ubuntu),
else systemd-networkd when systemd-networkd.service is enabled (a link of that name in
an /etc/systemd/system/*.wants/ directory, read without following it). The files come
from bootagent/netconf.py (pure); the writer writes only what differs and our networkd
files for NICs no longer configured are removed. Only when a file changed on the live
root is the backend told (`networkctl reload`, `netplan apply`), and nothing waits for
the addresses: a later boot with nothing to change runs no subprocess.

The live NICs' drivers (for Accelerated Networking's hv_netvsc match) are read from the
root's /sys/class/net, never followed out of the root.
"""

from __future__ import annotations

import os

from bootagent import netconf, tools, writer
from bootagent.boot import Boot
from bootagent.context import Context
from bootagent.errors import StepError, ToolError
from bootagent.steps import StepResult
from bootagent.text import one_line

NETPLAN_BIN = "/usr/sbin/netplan"
UNITS_DIR = "/etc/systemd/system"
NETWORKD_UNIT = "systemd-networkd.service"
APPLY = {"networkd": ("networkctl", "reload"), "netplan": ("netplan", "apply")}
APPLY_TIMEOUT = 60


def run(ctx: Context, boot: Boot) -> StepResult:
    enabled = ctx.config.network.enabled
    if enabled is False:
        return StepResult.skipped("network disabled in the configuration (network.enabled: false)")
    if enabled == "auto" and ctx.on_arc:
        return StepResult.skipped("on Azure Arc the machine's own network configuration is kept "
                                  "(network.enabled: true configures it from IMDS)")
    if boot.instance is None:
        return StepResult.skipped("no instance document")
    backend = detect_backend(ctx)
    if backend is None:
        reason = (f"no network backend in the root: neither {NETPLAN_BIN} nor an enabled "
                  f"{NETWORKD_UNIT}")
        if enabled is True:
            raise StepError(f"{reason}; network.enabled is true: install netplan or enable "
                            "systemd-networkd in the image, or set network.enabled: auto")
        return StepResult.skipped(reason)
    found = netconf.plan(boot.instance.network, live_drivers(ctx))
    errors = list(found.errors)
    changed: list[str] = []
    if found.nics:  # a document without one usable NIC changes nothing
        write = _write_networkd if backend == "networkd" else _write_netplan
        changed = write(ctx, found.nics)
    if changed and ctx.live and not ctx.dry_run:
        try:
            _apply(ctx, backend)
        except StepError as err:
            errors.append(str(err))
    if errors:
        outcome = StepResult.failed("network: " + "; ".join(errors), changed)
    else:
        outcome = StepResult.done(changed)
    outcome.details.update({"backend": backend, "nics": [nic.mac for nic in found.nics]})
    return outcome


def detect_backend(ctx: Context) -> str | None:
    """'netplan', 'networkd', or None when the root has neither."""
    if writer.exists(ctx, NETPLAN_BIN):
        return "netplan"
    return "networkd" if networkd_enabled(ctx) else None


def networkd_enabled(ctx: Context) -> bool:
    """Whether some /etc/systemd/system/*.wants/ holds systemd-networkd.service. The links
    point to the unit's absolute path: they are listed, never followed."""
    for name in writer.list_dir(ctx, UNITS_DIR):
        if not name.endswith(".wants"):
            continue
        try:
            if NETWORKD_UNIT in writer.list_dir(ctx, f"{UNITS_DIR}/{name}"):
                return True
        except StepError:  # a .wants that is a link or a file: not systemctl's doing
            continue
    return False


def live_drivers(ctx: Context) -> dict[str, str]:
    """MAC -> driver of the NICs in the root's /sys/class/net; hv_netvsc wins when a MAC
    is shared (Accelerated Networking's virtual function has the synthetic NIC's MAC)."""
    base = _inside(ctx, ctx.path("/sys/class/net"))
    if not base:
        return {}
    try:
        names = os.listdir(base)
    except OSError:
        return {}
    drivers: dict[str, str] = {}
    for name in names:
        entry = _inside(ctx, os.path.join(base, name))
        if not entry:
            continue
        device = _inside(ctx, os.path.join(entry, "device"))
        if not device:
            continue
        mac = netconf.normalise_mac(_read_small(entry, "address").strip())
        try:
            driver = os.path.basename(os.readlink(os.path.join(device, "driver")))
        except OSError:
            continue
        if mac and drivers.get(mac) != netconf.ACCELERATED_DRIVER:
            drivers[mac] = driver
    return drivers


def _inside(ctx: Context, path: str) -> str | None:
    """`path` with its links resolved, or None when that leaves the root."""
    real = os.path.realpath(path)
    root = ctx.root.rstrip("/") + "/"
    return real if real == ctx.root or real.startswith(root) else None


def _read_small(directory: str, name: str) -> str:
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return os.read(fd, 64).decode("ascii", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def _write_networkd(ctx: Context, nics: list) -> list[str]:
    files = netconf.networkd_files(nics)
    changed = []
    for name, body in files.items():
        path = f"{netconf.NETWORKD_DIR}/{name}"
        if writer.write_file(ctx, path, body, mode=0o644):
            changed.append(path)
    for name in writer.list_dir(ctx, netconf.NETWORKD_DIR):
        if netconf.mac_of_file(name) and name not in files:
            path = f"{netconf.NETWORKD_DIR}/{name}"
            if writer.remove_file(ctx, path):
                changed.append(path)
    return changed


def _write_netplan(ctx: Context, nics: list) -> list[str]:
    body = netconf.netplan_file(nics)
    return [netconf.NETPLAN_PATH] if writer.write_file(ctx, netconf.NETPLAN_PATH, body, mode=0o600) else []


def _apply(ctx: Context, backend: str) -> None:
    """Tell the running backend; it brings the addresses up on its own time."""
    tool = APPLY[backend][0]
    command = " ".join(APPLY[backend])
    try:
        tools.run(APPLY[backend], where=ctx, timeout=APPLY_TIMEOUT)
    except ToolError as err:
        raise err.worded(missing=f"{tool} not found (searched {err.search.strip(os.pathsep)}); the files are "
                                 f"written: run `{command}` or reboot",
                         timeout=f"`{command}` did not finish within {APPLY_TIMEOUT} s; the files are "
                                 "written and apply at the next boot",
                         failed=f"`{command}` failed (exit {err.exit_status}): "
                                f"{one_line(err.stderr or err.stdout or 'no message')}; the files are "
                                "written and apply at the next boot") from None

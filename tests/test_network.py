"""Step `network` (SPEC "Network from IMDS"): the generator against cloud-init's own
expectations for the same IMDS input, each backend's output read by the backend itself
(systemd-networkd's parser, `netplan generate`), the step on scratch roots (backends,
Accelerated Networking's driver match, removal, idempotence, dry-run) and bad input.
"""

from __future__ import annotations

import copy
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bootagent import netconf
from bootagent.boot import Boot
from bootagent.errors import StepError
from bootagent.imds.document import parse_document
from bootagent.state import InstanceState
from bootagent.steps import network
from conftest import result_json, run_cli

NETWORKD_BIN = "/lib/systemd/systemd-networkd"
ND = "etc/systemd/network"


def nic(mac: str, ipv4=(), ipv4_prefix="24", ipv6=(), ipv6_prefix=None) -> dict:
    entry = {"macAddress": mac,
             "ipv4": {"ipAddress": [{"privateIpAddress": a, "publicIpAddress": ""} for a in ipv4],
                      "subnet": [{"address": "10.0.0.0", "prefix": ipv4_prefix}]},
             "ipv6": {"ipAddress": [{"privateIpAddress": a} for a in ipv6]}}
    if ipv6_prefix is not None:
        entry["ipv6"]["subnet"] = [{"address": "2001:dead:beef::16", "prefix": ipv6_prefix}]
    return entry


# --- cloud-init's expectations (tests/unittests/sources/test_azure.py, the same inputs) -----

CLOUD_INIT_CASES = {
    "secondary IPv4s are static": (
        {"interface": [nic("000D3A047598", ipv4=("10.0.0.4", "11.0.0.5", "12.0.0.6"),
                           ipv6=("2001:dead:beef::1",), ipv6_prefix="10")]},
        {"bootagent-000d3a047598": {
            "addresses": ["11.0.0.5/24", "12.0.0.6/24"],
            "dhcp4": True, "dhcp4-overrides": {"route-metric": 100},
            "dhcp6": True, "dhcp6-overrides": {"route-metric": 100},
            "match": {"macaddress": "00:0d:3a:04:75:98"}}}),
    # cloud-init's case repeats one MAC three times; a MAC listed twice is refused here, so
    # the same NIC entries with their own MACs
    "multiple interfaces with increasing route metric": (
        {"interface": [nic("000D3A047598", ipv4=("10.0.0.4",)), nic("000D3A047599", ipv4=("10.0.1.4",))]},
        {"bootagent-000d3a047598": {
            "dhcp4": True, "dhcp4-overrides": {"route-metric": 100}, "dhcp6": False,
            "match": {"macaddress": "00:0d:3a:04:75:98"}},
         "bootagent-000d3a047599": {
            "dhcp4": True, "dhcp4-overrides": {"route-metric": 200, "use-dns": False}, "dhcp6": False,
            "match": {"macaddress": "00:0d:3a:04:75:99"}}}),
    "ipv6 secondaries": (
        {"interface": [{"macAddress": "000D3A047598",
                        "ipv6": {"subnet": [{"prefix": "10", "address": "2001:dead:beef::16"}],
                                 "ipAddress": [{"privateIpAddress": "2001:dead:beef::1"},
                                               {"privateIpAddress": "2001:dead:beef::2"}]}}]},
        {"bootagent-000d3a047598": {
            "addresses": ["2001:dead:beef::2/10"],
            "dhcp4": True, "dhcp4-overrides": {"route-metric": 100},
            "dhcp6": True, "dhcp6-overrides": {"route-metric": 100},
            "match": {"macaddress": "00:0d:3a:04:75:98"}}}),
    "hv_netvsc driver": (
        {"interface": [nic("001122334400", ipv4=("10.0.0.4",))]},
        {"bootagent-001122334400": {
            "dhcp4": True, "dhcp4-overrides": {"route-metric": 100}, "dhcp6": False,
            "match": {"macaddress": "00:11:22:33:44:00", "driver": "hv_netvsc"}}}),
}
DRIVERS = {"00:11:22:33:44:00": "hv_netvsc", "00:0d:3a:04:75:98": "virtio_net"}


@pytest.mark.parametrize("label", CLOUD_INIT_CASES)
def test_netplan_output_is_cloud_inits_for_the_same_imds_input(label):
    """cloud-init also names each NIC eth<i> (`set-name`); we rename nothing."""
    metadata, expected = CLOUD_INIT_CASES[label]
    found = netconf.plan(metadata, DRIVERS)
    assert found.errors == []
    rendered = yaml.safe_load(netconf.netplan_file(found.nics))
    assert rendered == {"network": {"version": 2, "ethernets": expected}}


def sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """A .network file as {section: [(key, value), ...]} (keys repeat: Address=)."""
    out: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = out.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key, value))
    return out


def values(parsed: dict, section: str, key: str) -> list[str]:
    return [v for k, v in parsed.get(section, []) if k == key]


def test_networkd_files_say_what_cloud_init_says():
    """One NIC with three IPv4 and one IPv6 address: the two after the first static with the
    subnet's /24, DHCPv6 on; two NICs: metrics 100 and 200, DNS off on the second only."""
    one = netconf.plan(CLOUD_INIT_CASES["secondary IPv4s are static"][0], DRIVERS)
    [(name, body)] = netconf.networkd_files(one.nics).items()
    assert name == "10-bootagent-000d3a047598.network"
    parsed = sections(body.decode())
    assert parsed["Match"] == [("MACAddress", "00:0d:3a:04:75:98")]
    assert values(parsed, "Network", "DHCP") == ["yes"]
    assert values(parsed, "Network", "Address") == ["11.0.0.5/24", "12.0.0.6/24"]
    assert values(parsed, "DHCPv4", "RouteMetric") == ["100"]
    assert values(parsed, "DHCPv4", "UseDNS") == []

    two = netconf.plan(CLOUD_INIT_CASES["multiple interfaces with increasing route metric"][0], DRIVERS)
    files = netconf.networkd_files(two.nics)
    first = sections(files["10-bootagent-000d3a047598.network"].decode())
    second = sections(files["10-bootagent-000d3a047599.network"].decode())
    assert values(first, "Network", "DHCP") == values(second, "Network", "DHCP") == ["ipv4"]
    assert values(first, "DHCPv4", "RouteMetric") == ["100"] and values(first, "DHCPv4", "UseDNS") == []
    assert values(second, "DHCPv4", "RouteMetric") == ["200"] and values(second, "DHCPv4", "UseDNS") == ["no"]
    assert values(first, "Network", "Address") == values(second, "Network", "Address") == []

    driven = netconf.plan(CLOUD_INIT_CASES["hv_netvsc driver"][0], DRIVERS)
    parsed = sections(netconf.networkd_file(driven.nics[0]).decode())
    assert parsed["Match"] == [("MACAddress", "00:11:22:33:44:00"), ("Driver", "hv_netvsc")]


# --- each backend reads our output with its own parser -------------------------------------

def _tool_or_skip(ok: bool, what: str) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is needed to check the generated files")
        pytest.skip(f"{what} is needed to check the generated files")


CANARY = "99-canary.network"


def networkd_complaints(directory: Path) -> list[str]:
    """What systemd-networkd itself says about the .network files in `directory`: it runs
    in private mount and network namespaces, with a copy of them as its
    /etc/systemd/network, until it has read them; its lines naming a file are its
    complaints. It reads them as user systemd-network, so the copy is world-readable, and
    a canary file with an unknown key proves that it read the directory at all."""
    import tempfile

    _tool_or_skip(os.geteuid() == 0 and shutil.which("unshare") is not None
                  and os.access(NETWORKD_BIN, os.X_OK), "root, unshare and systemd-networkd")
    with tempfile.TemporaryDirectory(prefix="networkd-check-") as readable:
        os.chmod(readable, 0o755)
        for path in directory.iterdir():
            shutil.copyfile(path, Path(readable) / path.name)
            os.chmod(Path(readable) / path.name, 0o644)
        (Path(readable) / CANARY).write_text("[Network]\nCanaryKey=yes\n")
        os.chmod(Path(readable) / CANARY, 0o644)
        script = ('mount -t tmpfs tmpfs /run/systemd && mkdir -p /etc/systemd/network && '
                  'mount --bind "$1" /etc/systemd/network && '
                  f'SYSTEMD_LOG_TARGET=console SYSTEMD_LOG_LEVEL=info exec {NETWORKD_BIN}')
        process = subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private",
                                    "sh", "-c", script, "check", readable],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        lines = []
        try:
            for line in process.stdout:
                lines.append(line.rstrip("\n"))
                if "Enumeration completed" in line:
                    break
        finally:
            process.kill()
            process.wait()
    named = [line for line in lines if line.startswith("/etc/systemd/network/")]
    assert any(line.startswith(f"/etc/systemd/network/{CANARY}:2: Unknown key 'CanaryKey'")
               for line in named), lines  # it did read the directory
    return [line for line in named if not line.startswith(f"/etc/systemd/network/{CANARY}:")]


RICH = {"interface": [
    nic("000D3A047598", ipv4=("10.0.0.4", "10.0.0.5", "10.0.0.6"), ipv6=("2001:db8::4", "2001:db8::5"),
        ipv6_prefix="64"),
    nic("000D3A047599", ipv4=("10.0.1.4", "10.0.1.5"), ipv4_prefix=""),
    nic("000D3A04759A", ipv6=("fd00::1",)),
]}


def test_systemd_networkd_reads_our_files_without_a_complaint(tmp_path):
    found = netconf.plan(RICH, {"00:0d:3a:04:75:98": "hv_netvsc"})
    assert found.errors == [] and len(found.nics) == 3
    for name, body in netconf.networkd_files(found.nics).items():
        (tmp_path / name).write_bytes(body)
    assert networkd_complaints(tmp_path) == []


def test_the_networkd_check_does_see_a_bad_file(tmp_path):
    """The check above is honest: networkd names a key it does not know and a bad value."""
    (tmp_path / "10-bad.network").write_text("[Match]\nMACAddress=00:0d:3a:04:75:98\n\n"
                                              "[Network]\nDHCP=ipv4\nAdress=10.0.0.5/24\n\n"
                                              "[DHCPv4]\nRouteMetric=lots\n")
    complaints = networkd_complaints(tmp_path)
    assert len(complaints) == 2 and "Adress" in complaints[0] and "RouteMetric" in complaints[1]


def netplan_generate(root: Path) -> subprocess.CompletedProcess:
    _tool_or_skip(shutil.which("netplan") is not None, "netplan (netplan.io)")
    return subprocess.run(["netplan", "generate", "--root-dir", str(root)], capture_output=True,
                          text=True, timeout=120)


def test_netplan_generates_from_our_file_what_our_networkd_files_say(tmp_path):
    """`netplan generate` accepts the YAML, and the networkd files it makes from it say what
    ours say: same match, addresses, DHCP, metric and DNS."""
    found = netconf.plan(RICH, {"00:0d:3a:04:75:98": "hv_netvsc"})
    target = tmp_path / netconf.NETPLAN_PATH.lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_bytes(netconf.netplan_file(found.nics))
    target.chmod(0o600)
    done = netplan_generate(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Permissions" not in done.stderr  # 0600 as netplan wants
    for one in found.nics:
        theirs = sections((tmp_path / f"run/systemd/network/10-netplan-bootagent-{one.key}.network").read_text())
        ours = sections(netconf.networkd_file(one).decode())
        assert values(theirs, "Match", "PermanentMACAddress") + values(theirs, "Match", "MACAddress") \
            == values(ours, "Match", "MACAddress")
        assert values(theirs, "Match", "Driver") == values(ours, "Match", "Driver")
        assert values(theirs, "Network", "DHCP") == values(ours, "Network", "DHCP")
        assert values(theirs, "Network", "Address") == values(ours, "Network", "Address")
        assert values(theirs, "DHCP", "RouteMetric") == values(ours, "DHCPv4", "RouteMetric")
        assert [v == "false" for v in values(theirs, "DHCP", "UseDNS")] == \
            [v == "no" for v in values(ours, "DHCPv4", "UseDNS")]


def test_the_netplan_check_does_see_a_bad_file(tmp_path):
    target = tmp_path / netconf.NETPLAN_PATH.lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_text('network:\n  version: 2\n  ethernets:\n    x:\n      match:\n'
                      '        macaddress: "00:0d:3a:04:75:98"\n      dhcp4: maybe\n')
    target.chmod(0o600)
    assert netplan_generate(tmp_path).returncode != 0


# --- the step on a scratch root -------------------------------------------------------------

def enable_networkd(root: Path) -> None:
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    # as systemctl enable makes it: absolute, pointing out of a scratch root
    os.symlink("/lib/systemd/system/systemd-networkd.service", wants / "systemd-networkd.service")


def install_netplan(root: Path) -> None:
    (root / "usr/sbin").mkdir(parents=True, exist_ok=True)
    (root / "usr/sbin/netplan").write_text("#!/bin/sh\n")


def two_nics(document: dict) -> dict:
    document["network"] = {"interface": [
        nic("000D3A6B1C2E", ipv4=("10.0.0.4", "10.0.0.5")),
        nic("000D3A6B1C2F", ipv4=("10.0.1.4",)),
    ]}
    return document


def run_step(ctx, document: dict):
    return network.run(ctx, Boot(parse_document(document), InstanceState({"steps": {}})))


def our_files(root: Path) -> dict[str, bytes]:
    directory = root / ND
    return {p.name: p.read_bytes() for p in sorted(directory.glob("10-bootagent-*"))} if directory.exists() else {}


def test_networkd_files_per_nic_then_a_second_run_writes_nothing(root, make_ctx, document):
    enable_networkd(root)
    outcome = run_step(make_ctx(), two_nics(document))
    assert outcome.status == "changed", outcome
    assert outcome.details["backend"] == "networkd"
    names = ["10-bootagent-000d3a6b1c2e.network", "10-bootagent-000d3a6b1c2f.network"]
    assert sorted(outcome.changed) == [f"/{ND}/{n}" for n in names]
    assert list(our_files(root)) == names
    for name in names:
        info = (root / ND / name).stat()
        assert stat.S_IMODE(info.st_mode) == 0o644 and (info.st_uid, info.st_gid) == (0, 0)
    assert b"Address=10.0.0.5/24\n" in our_files(root)[names[0]]
    before = {n: (root / ND / n).stat().st_mtime_ns for n in names}

    again = run_step(make_ctx(), two_nics(document))
    assert (again.status, again.changed) == ("unchanged", [])
    assert {n: (root / ND / n).stat().st_mtime_ns for n in names} == before


def test_a_nic_no_longer_listed_loses_its_file_and_other_files_stay(root, make_ctx, document):
    enable_networkd(root)
    run_step(make_ctx(), two_nics(document))
    (root / ND / "20-wired.network").write_text("[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\n")
    (root / ND / "10-bootagent-local.network").write_text("# an admin's, not a MAC of ours\n")
    document["network"]["interface"] = document["network"]["interface"][:1]
    outcome = run_step(make_ctx(), document)
    assert outcome.status == "changed"
    assert outcome.changed == [f"/{ND}/10-bootagent-000d3a6b1c2f.network"]
    assert sorted(p.name for p in (root / ND).iterdir()) == [
        "10-bootagent-000d3a6b1c2e.network", "10-bootagent-local.network", "20-wired.network"]


def test_netplan_when_the_root_has_it(root, make_ctx, document):
    install_netplan(root)
    enable_networkd(root)  # Ubuntu has both: netplan is the one to write for
    outcome = run_step(make_ctx(), two_nics(document))
    assert (outcome.status, outcome.details["backend"]) == ("changed", "netplan")
    path = root / netconf.NETPLAN_PATH.lstrip("/")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert yaml.safe_load(path.read_text())["network"]["ethernets"]["bootagent-000d3a6b1c2f"][
        "dhcp4-overrides"] == {"route-metric": 200, "use-dns": False}
    assert our_files(root) == {}
    assert run_step(make_ctx(), two_nics(document)).status == "unchanged"


def test_without_a_backend_the_step_is_skipped_or_fails_when_forced(root, make_ctx, document):
    outcome = run_step(make_ctx(), two_nics(document))
    assert outcome.status == "skipped" and "no network backend" in outcome.reason
    with pytest.raises(StepError, match="network.enabled is true"):
        run_step(make_ctx(config={"network": {"enabled": True}}), two_nics(document))
    assert our_files(root) == {}


def test_network_enabled_false_and_arc_leave_the_network_alone(root, make_ctx, document):
    enable_networkd(root)
    off = run_step(make_ctx(config={"network": {"enabled": False}}), two_nics(document))
    assert off.status == "skipped" and "network.enabled: false" in off.reason
    arc = run_step(make_ctx(on_arc=True), two_nics(document))
    assert arc.status == "skipped" and "Arc" in arc.reason
    assert our_files(root) == {}
    forced = run_step(make_ctx(on_arc=True, config={"network": {"enabled": True}}), two_nics(document))
    assert forced.status == "changed"


def test_an_enabled_link_is_listed_never_followed(root, make_ctx, document, tmp_path):
    """A *.wants directory that is itself a link (here out of the root) is not systemctl's
    doing: it does not count, and nothing outside the root is read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "systemd-networkd.service").write_text("")
    (root / "etc/systemd/system").mkdir(parents=True)
    os.symlink(outside, root / "etc/systemd/system/multi-user.target.wants")
    assert network.detect_backend(make_ctx()) is None
    assert run_step(make_ctx(), two_nics(document)).status == "skipped"


def make_sys_nic(root: Path, name: str, mac: str, driver: str, device: str) -> None:
    """/sys/class/net/<name> as the kernel lays it out: relative links into /sys/devices
    and /sys/bus."""
    devices = root / "sys/devices" / device
    (devices / "net" / name).mkdir(parents=True)
    (devices / "net" / name / "address").write_text(mac + "\n")
    (root / "sys/bus/drivers" / driver).mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(root / "sys/bus/drivers" / driver, devices), devices / "driver")
    os.symlink("../..", devices / "net" / name / "device")
    (root / "sys/class/net").mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(devices / "net" / name, root / "sys/class/net"), root / "sys/class/net" / name)


def test_accelerated_networking_matches_the_synthetic_nic_by_its_driver(root, make_ctx, document, tmp_path):
    """The VF (mlx5_core) shares the synthetic NIC's MAC; the file names hv_netvsc so networkd
    leaves the VF alone. A NIC on another driver gets no Driver=; a /sys entry that leads
    out of the root is not read."""
    enable_networkd(root)
    make_sys_nic(root, "eth0", "00:0d:3a:6b:1c:2e", "hv_netvsc", "vmbus/0001")
    make_sys_nic(root, "enP1s1", "00:0d:3a:6b:1c:2e", "mlx5_core", "pci0000:00/0001:00:02.0")
    make_sys_nic(root, "eth1", "00:0d:3a:6b:1c:2f", "virtio_net", "pci0000:00/0000:00:03.0")
    outside = tmp_path / "elsewhere/net/eth9"
    outside.mkdir(parents=True)
    (outside / "address").write_text("00:0d:3a:6b:1c:30\n")
    os.symlink(outside, root / "sys/class/net/eth9")
    assert network.live_drivers(make_ctx()) == {"00:0d:3a:6b:1c:2e": "hv_netvsc",
                                                 "00:0d:3a:6b:1c:2f": "virtio_net"}
    run_step(make_ctx(), two_nics(document))
    files = our_files(root)
    assert b"[Match]\nMACAddress=00:0d:3a:6b:1c:2e\nDriver=hv_netvsc\n" in files["10-bootagent-000d3a6b1c2e.network"]
    assert b"Driver=" not in files["10-bootagent-000d3a6b1c2f.network"]


def test_dry_run_shows_the_diffs_and_writes_nothing(root, make_ctx, document):
    enable_networkd(root)
    run_step(make_ctx(), two_nics(document))
    document["network"]["interface"][0]["ipv4"]["ipAddress"].append({"privateIpAddress": "10.0.0.6"})
    document["network"]["interface"].pop()
    before = our_files(root)
    ctx = make_ctx(dry_run=True)
    outcome = run_step(ctx, document)
    assert outcome.status == "changed" and our_files(root) == before
    shown = dict(ctx.changes)
    assert "+Address=10.0.0.6/24" in shown[f"/{ND}/10-bootagent-000d3a6b1c2e.network"]
    assert shown[f"/{ND}/10-bootagent-000d3a6b1c2f.network"] == f"would remove /{ND}/10-bootagent-000d3a6b1c2f.network"


# --- bad input ------------------------------------------------------------------------------

def bad_documents():
    def with_interfaces(*entries):
        return {"interface": list(entries)}

    good = nic("000D3A6B1C2E", ipv4=("10.0.0.4", "10.0.0.5"))
    other = nic("000D3A6B1C2F", ipv4=("10.0.1.4",))
    no_mac = {k: v for k, v in other.items() if k != "macAddress"}
    short_mac = dict(other, macAddress="000D3A6B1C2")
    control_mac = dict(other, macAddress="000D3A6B1C2F\n[Match]")
    bad_address = copy.deepcopy(other)
    bad_address["ipv4"]["ipAddress"].append({"privateIpAddress": "10.0.1.999"})
    control_address = copy.deepcopy(other)
    control_address["ipv4"]["ipAddress"].append({"privateIpAddress": "10.0.1.5\nDNS=6.6.6.6"})
    bad_prefix = copy.deepcopy(other)
    bad_prefix["ipv4"]["ipAddress"].append({"privateIpAddress": "10.0.1.5"})
    bad_prefix["ipv4"]["subnet"][0]["prefix"] = "24\n"
    scoped = copy.deepcopy(other)
    scoped["ipv6"]["ipAddress"] = [{"privateIpAddress": "fe80::1"}, {"privateIpAddress": "fe80::2%eth0\n"}]
    many = [nic(f"000D3A{i:06X}", ipv4=(f"10.1.{i}.4",)) for i in range(100)]
    return {
        "no MAC": (with_interfaces(good, no_mac), "network.interface[1]: it has no macAddress"),
        "MAC not 12 hex digits": (with_interfaces(good, short_mac), "'000D3A6B1C2' is not 12 hex digits"),
        "control character in the MAC": (with_interfaces(good, control_mac), r"'000D3A6B1C2F\n[Match]'"),
        "address that does not parse": (with_interfaces(good, bad_address), "'10.0.1.999' is not an IPv4"),
        "control character in an address": (with_interfaces(good, control_address),
                                            r"'10.0.1.5\nDNS=6.6.6.6' is not an IPv4"),
        "prefix that does not parse": (with_interfaces(good, bad_prefix), r"prefix '24\n' is not a prefix"),
        "an IPv6 scope id": (with_interfaces(good, scoped), "is not an IPv6 address"),
        "100 NICs": ({"interface": [good] + many[1:]}, "has 100 entries; the ones after the first 32"),
        "a MAC twice": (with_interfaces(good, good), "MAC 00:0d:3a:6b:1c:2e is listed twice"),
        "an entry that is not an object": (with_interfaces(good, "eth1"), "network.interface[1] is not an object"),
    }


BAD = bad_documents()


@pytest.mark.parametrize("label", BAD)
def test_a_bad_nic_is_skipped_and_named_the_good_ones_written(root, make_ctx, document, label):
    enable_networkd(root)
    document["network"], said = BAD[label]
    outcome = run_step(make_ctx(), document)
    assert outcome.status == "failed"
    assert said in outcome.error
    assert "\n" not in outcome.error and "\x00" not in outcome.error
    primary = our_files(root)["10-bootagent-000d3a6b1c2e.network"].decode()
    assert "DHCP=ipv4" in primary and "Address=10.0.0.5/24" in primary
    for body in our_files(root).values():
        assert b"DNS=" not in body.replace(b"UseDNS=", b"") and b"%" not in body
    if label == "100 NICs":
        assert len(our_files(root)) == netconf.MAX_NICS


@pytest.mark.parametrize("network_value", [None, {}, {"interface": []}, {"interface": "eth0"},
                                           {"interface": [{"ipv4": {}}]}])
def test_a_document_without_a_usable_nic_fails_and_changes_nothing(root, make_ctx, document, network_value):
    """No network key, an empty list, no NIC with a MAC: nothing is written or removed (the
    files of the last good document stay)."""
    enable_networkd(root)
    run_step(make_ctx(), two_nics(copy.deepcopy(document)))
    before = our_files(root)
    if network_value is None:
        document.pop("network")
    else:
        document["network"] = network_value
    outcome = run_step(make_ctx(), document)
    assert outcome.status == "failed" and outcome.changed == []
    assert "network" in outcome.error
    assert our_files(root) == before


def test_the_primary_nic_keeps_dhcp_whatever_its_addresses_say(root, make_ctx, document):
    enable_networkd(root)
    two_nics(document)
    document["network"]["interface"][0]["ipv4"]["subnet"][0]["prefix"] = "33"
    outcome = run_step(make_ctx(), document)
    assert outcome.status == "failed"
    assert "the primary NIC" in outcome.error and "configured by DHCP only" in outcome.error
    primary = sections(our_files(root)["10-bootagent-000d3a6b1c2e.network"].decode())
    assert values(primary, "Network", "DHCP") == ["ipv4"] and values(primary, "Network", "Address") == []
    assert values(primary, "DHCPv4", "UseDNS") == []  # DNS still from the primary
    assert "10-bootagent-000d3a6b1c2f.network" in our_files(root)


def test_the_run_exits_1_with_one_line_and_writes_the_good_nics(root, document, tmp_path):
    enable_networkd(root)
    document["network"], _ = BAD["control character in an address"]
    doc = tmp_path / "doc.json"
    import json
    doc.write_text(json.dumps(document))
    done = run_cli("run", "--root", str(root), "--metadata-file", str(doc))
    assert done.returncode == 1, done.stderr
    [line] = [line for line in done.stderr.splitlines() if "network:" in line]
    assert line.startswith("bootagent: network: failed: network: network.interface[1] (MAC 00:0d:3a:6b:1c:2f)")
    assert "DNS=6.6.6.6" in line and "\\n" in line  # shown escaped, never as a line of its own
    assert result_json(root)["steps"]["network"]["status"] == "failed"
    assert list(our_files(root)) == ["10-bootagent-000d3a6b1c2e.network"]


def test_telling_the_backend_names_a_failure_in_one_line(root, make_ctx, tmp_path):
    """`networkctl reload` (only on a live root, so here by itself): a tool that fails or is
    missing is one line that says the files are written."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "networkctl").write_text("#!/bin/sh\necho \"Failed to reload network settings:\n"
                                      "Unit dbus-org.freedesktop.network1.service not found.\" >&2\nexit 1\n")
    (tools / "networkctl").chmod(0o755)
    with pytest.raises(StepError) as failed:
        network._apply(make_ctx(env={"PATH": str(tools)}), "networkd")
    assert str(failed.value) == ("`networkctl reload` failed (exit 1): Failed to reload network settings: "
                                 "Unit dbus-org.freedesktop.network1.service not found.; the files are "
                                 "written and apply at the next boot")
    (tools / "networkctl").write_text("#!/bin/sh\n[ \"$*\" = reload ] && touch \"$0.ran\"\n")
    network._apply(make_ctx(env={"PATH": str(tools)}), "networkd")
    assert (tools / "networkctl.ran").exists()


# --- the generator is total and its output cannot be steered ---------------------------------

TEXT = st.text(alphabet=st.sampled_from(list("0123456789abcdefABCDEF:.-/%x \n\r\t\x00\x1b[]=#\"'") + ["é"]),
               max_size=24)
MACS = st.one_of(st.sampled_from(["000D3A6B1C2E", "00:0d:3a:6b:1c:2f", "000d3a6b1c30"]), TEXT)

def addresses(*valid: str):
    """Mostly valid ones, so that static lines are made too."""
    good = st.sampled_from(valid)
    return st.one_of(good, good, good, good, good, good, st.just("fe80::1%x"), TEXT)


ADDRESSES4 = addresses("10.0.0.4", "10.0.0.5", "0.0.0.0", "255.255.255.255")
ADDRESSES6 = addresses("2001:db8::1", "::ffff:1.2.3.4", "::", "fe80::1")
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)


def family(listed):
    entries = st.lists(st.fixed_dictionaries({"privateIpAddress": listed}), max_size=4)
    prefixes = st.lists(st.fixed_dictionaries({"prefix": st.one_of(st.sampled_from(["24", "32", "0"]),
                                                                   st.sampled_from(["24", "32", "0"]),
                                                                   SCALARS)}), max_size=2)
    return st.fixed_dictionaries({"ipAddress": st.one_of(entries, entries, JSON),
                                  "subnet": st.one_of(prefixes, prefixes, JSON)})


NIC = st.fixed_dictionaries({"macAddress": MACS, "ipv4": family(ADDRESSES4), "ipv6": family(ADDRESSES6)})
NICS = st.one_of(NIC, NIC, JSON)
# well-formed NICs with text (control characters too) where the agent reads nothing
WELL_FORMED = st.fixed_dictionaries({
    "macAddress": st.sampled_from(["000D3A6B1C2E", "000d3a6b1c2f", "00-0D-3A-6B-1C-30"]),
    "ipv4": st.fixed_dictionaries({
        "ipAddress": st.lists(st.fixed_dictionaries({"privateIpAddress": st.sampled_from(["10.0.0.4", "10.0.0.5"]),
                                                     "publicIpAddress": TEXT}), min_size=1, max_size=3),
        "subnet": st.lists(st.fixed_dictionaries({"prefix": st.sampled_from(["24", "", "32"]),
                                                  "address": TEXT}), max_size=1)}),
    "ipv6": st.fixed_dictionaries({
        "ipAddress": st.lists(st.fixed_dictionaries({"privateIpAddress": st.sampled_from(["2001:db8::1", "::"])}),
                              max_size=3)}),
}, optional={"name": TEXT, "extra": JSON})
NETWORKS = st.one_of(st.fixed_dictionaries({"interface": st.lists(NICS, max_size=5)}),
                     st.fixed_dictionaries({"interface": st.lists(WELL_FORMED, min_size=1, max_size=4)}),
                     JSON)
LINE = (r"# .*|\[(Match|Network|DHCPv4|DHCPv6|IPv6AcceptRA)\]|"
        r"MACAddress=([0-9a-f]{2}:){5}[0-9a-f]{2}|Driver=hv_netvsc|DHCP=(ipv4|yes)|"
        r"Address=[0-9a-f.:]+/[0-9]{1,3}|RouteMetric=[0-9]+00|UseDNS=no|")


@settings(max_examples=400, deadline=None)
@given(NETWORKS, st.dictionaries(st.sampled_from(["00:0d:3a:6b:1c:2e", "00:0d:3a:6b:1c:2f"]),
                                 st.sampled_from(["hv_netvsc", "mlx5_core", "a\nb"])))
def test_the_generator_never_crashes_and_its_output_cannot_be_steered(value, drivers):
    import re

    found = netconf.plan(value, drivers)
    for line in found.errors:
        assert line.isprintable(), line
    for nic_ in found.nics:
        for text_line in netconf.networkd_file(nic_).decode("ascii").split("\n"):
            assert re.fullmatch(LINE, text_line), text_line
    rendered = netconf.netplan_file(found.nics).decode("ascii")
    assert all(ch == "\n" or ch.isprintable() for ch in rendered)
    assert yaml.safe_load(rendered)["network"]["version"] == 2

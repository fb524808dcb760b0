"""A real boot with two NICs (SPEC "Network from IMDS"): the fake's document lists both
MACs and a secondary IPv4 on the first; after the first boot the guest has the secondary
address on NIC 1, NIC 2 up with its DHCP address, both by the agent's per-MAC networkd
files (the image's own 20-wired.network gives DHCP to every en*, with the default
route metric: our files, sorting first, win, and their metrics 100 and 200 show it),
and SSH through NIC 1 still works. A reboot changes nothing.

Run: flock /tmp/realboot.lock .venv/bin/pytest -m realboot -s -q tests/test_realboot_network.py
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vm import image as vmimage  # noqa: E402
from vm import qemu as vmqemu  # noqa: E402
from vm import session as vmsession  # noqa: E402

pytestmark = pytest.mark.realboot

ADMIN = "azureuser"
SECOND_MAC = "52:54:00:12:34:57"
# slirp's DHCP hands out x.x.2.15 first (its host is x.x.2.2 whatever the net's size); the
# secondary address is another one inside the first NIC's network (168.0.0.0/7), which
# only the agent's file can add
NIC1_DHCP, NIC1_SECONDARY, NIC1_PREFIX = "168.0.2.15", "168.0.0.100", 7
NIC2_DHCP = "10.0.3.15"
VM_ID = str(uuid.uuid4())


@pytest.fixture(scope="module", autouse=True)
def _prerequisites():
    vmsession.require("the network real boot", vmsession.missing_prerequisites())


def hex12(mac: str) -> str:
    return mac.replace(":", "").upper()


def document(public_key: str) -> dict:
    from bootagent.fake.server import default_document

    doc = copy.deepcopy(default_document())
    compute = doc["compute"]
    compute.update(vmId=VM_ID, name="netvm", osType="Linux")
    compute.pop("userData", None)
    compute["osProfile"] = {"adminUsername": ADMIN, "computerName": "netvm",
                            "disablePasswordAuthentication": "true"}
    compute["publicKeys"] = [{"keyData": public_key, "path": f"/home/{ADMIN}/.ssh/authorized_keys"}]
    doc["network"] = {"interface": [
        {"macAddress": hex12(vmqemu.FIRST_MAC),
         "ipv4": {"ipAddress": [{"privateIpAddress": NIC1_DHCP, "publicIpAddress": ""},
                                {"privateIpAddress": NIC1_SECONDARY, "publicIpAddress": ""}],
                  "subnet": [{"address": "168.0.0.0", "prefix": str(NIC1_PREFIX)}]},
         "ipv6": {"ipAddress": []}},
        {"macAddress": hex12(SECOND_MAC),
         "ipv4": {"ipAddress": [{"privateIpAddress": NIC2_DHCP, "publicIpAddress": ""}],
                  "subnet": [{"address": "10.0.3.0", "prefix": "24"}]},
         "ipv6": {"ipAddress": []}},
    ]}
    return doc


class Guest:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.key = workdir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "realboot-net",
                        "-f", str(self.key)], check=True)
        self.base = vmimage.build_base()
        installed = vmimage.install_bootagent(self.base, workdir / "installed.raw")
        self.disk = vmimage.overlay(installed, workdir / "vm.qcow2")
        self.document = document(Path(f"{self.key}.pub").read_text().strip())

    def boot(self, label: str):
        return vmsession.power_on(self.base, self.disk, self.workdir, self.document, label=label,
                                  vm_id=VM_ID, admin=ADMIN, key=self.key, second_nic_mac=SECOND_MAC)

    def run(self, vm, cmd: str) -> str:
        rc, out = vm.ssh(ADMIN, self.key, cmd)
        assert rc == 0, f"`{cmd}` in the guest exited {rc}:\n{out}"
        return out

    def result(self, vm) -> dict:
        self.run(vm, "sudo bootagent status --wait --timeout 120 >/dev/null; true")
        return json.loads(self.run(vm, "sudo cat /run/bootagent/result.json"))

    def links(self, vm) -> dict[str, dict]:
        """`ip -j addr`, by MAC."""
        return {link.get("address"): link for link in json.loads(self.run(vm, "ip -j addr"))}

    def default_routes(self, vm) -> dict[str, int]:
        """Interface name -> metric of its IPv4 default route."""
        routes = json.loads(self.run(vm, "ip -j -4 route show default"))
        return {route["dev"]: route.get("metric", 0) for route in routes}


def ipv4(link: dict) -> set[tuple[str, int]]:
    return {(a["local"], a["prefixlen"]) for a in link.get("addr_info", []) if a.get("family") == "inet"}


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    return Guest(tmp_path_factory.mktemp("realboot-network"))


def wait_for(check, what: str, vm, timeout: float = 60):
    """The step does not wait for addresses: the guest gets them a moment later."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s\n{vm.tail()}")
        time.sleep(1)


def test_both_nics_and_the_secondary_address_from_imds(guest):
    vm, fake = guest.boot("net-boot1")
    with vm, fake:
        result = guest.result(vm)
        network = result["steps"]["network"]
        assert network["status"] == "changed", result
        assert network["backend"] == "networkd"
        files = sorted(network["changed"])
        assert files == [f"/etc/systemd/network/10-bootagent-{hex12(mac).lower()}.network"
                         for mac in (vmqemu.FIRST_MAC, SECOND_MAC)], network
        assert result["status"] == "ok", result

        def configured():
            links = guest.links(vm)
            one, two = links.get(vmqemu.FIRST_MAC), links.get(SECOND_MAC)
            if not one or not two:
                return None
            if (NIC1_SECONDARY, NIC1_PREFIX) in ipv4(one) and (NIC2_DHCP, 24) in ipv4(two):
                return one, two
            return None

        one, two = wait_for(configured, "no secondary address on NIC 1 and DHCP address on NIC 2", vm)
        assert (NIC1_DHCP, NIC1_PREFIX) in ipv4(one)
        assert two["operstate"] == "UP"
        # the image's own file would give both the same default metric: ours give 100 and 200
        routes = wait_for(lambda: (r := guest.default_routes(vm)) and len(r) == 2 and r,
                          "no default route on each NIC", vm)
        assert routes == {one["ifname"]: 100, two["ifname"]: 200}, routes
        # SSH comes in through NIC 1: still working after the agent reconfigured it
        assert guest.run(vm, "echo still-here").strip() == "still-here"
        assert guest.run(vm, f"networkctl status {two['ifname']} --no-pager | grep 'Network File'").split()[-1] \
            == f"/etc/systemd/network/10-bootagent-{hex12(SECOND_MAC).lower()}.network"
        assert vm.poweroff(ADMIN, guest.key), "the guest did not power off cleanly"


def test_a_reboot_changes_nothing(guest):
    vm, fake = guest.boot("net-boot2")
    with vm, fake:
        result = guest.result(vm)
        assert result["status"] == "ok", result
        assert result["steps"]["network"]["status"] == "unchanged", result
        changed = {name: step["status"] for name, step in result["steps"].items()
                   if step["status"] not in ("unchanged", "skipped")}
        assert not changed, result
        one = wait_for(lambda: (NIC1_SECONDARY, NIC1_PREFIX) in ipv4(guest.links(vm)[vmqemu.FIRST_MAC]),
                       "no secondary address on NIC 1 after the reboot", vm)
        assert one
        assert (NIC2_DHCP, 24) in ipv4(guest.links(vm)[SECOND_MAC])
        assert vm.poweroff(ADMIN, guest.key), "the guest did not power off cleanly"

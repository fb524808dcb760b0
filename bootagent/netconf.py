"""Network configuration from IMDS's `network.interface[]`: pure, no I/O (SPEC "Network
from IMDS").

`plan(network, drivers)` reads the document's `network` value (and the live NICs'
drivers, MAC -> driver) into `Nic`s and error lines; `networkd_files` and `netplan_file`
turn the NICs into file contents. Nothing from the document reaches a file but what
was parsed into a normalised value: a MAC as 12 hex digits, an address as
`ipaddress` prints it, a prefix as an int. So no input can add a line or a key.

Per NIC (index i in the document): DHCPv4, route metric 100 x (i + 1), DNS from the
primary (i = 0) only; every IPv4 address after the first static with the first
subnet's prefix (24 when missing); DHCPv6 when IPv6 addresses are listed, every one
after the first static (prefix 128 when missing), as cloud-init does.

A NIC entry that does not parse is left out and named. The primary NIC is never left
out while its MAC parses: a bad address on it costs only its static addresses, so no
document can take DHCP away from it. `ipaddress` costs about 1 ms of import and every
fetch (requests, http.client) loads it anyway.
"""

from __future__ import annotations

import re

from bootagent.record import Record
from bootagent.text import quoted

MAX_NICS = 32               # Azure allows at most 8 NICs; more is a broken document
MAX_ADDRESSES = 256         # per family and NIC: Azure's limit of IP configurations
FILE_PREFIX = "10-bootagent-"
FILE_SUFFIX = ".network"
NETWORKD_DIR = "/etc/systemd/network"
NETPLAN_PATH = "/etc/netplan/50-bootagent.yaml"
ACCELERATED_DRIVER = "hv_netvsc"
HEADER = "# Written by bootagent from the instance metadata (IMDS) at every boot: edits are replaced.\n"
_MAC = re.compile(r"[0-9A-Fa-f]{12}")
_MAC_SEPARATED = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")
_DIGITS = re.compile(r"[0-9]{1,3}")


class Nic(Record, frozen=True):
    index: int                  # in network.interface[]: 0 is the primary NIC
    mac: str                    # aa:bb:cc:dd:ee:ff
    ipv4_static: tuple = ()     # "11.0.0.5/24", ... (the first address is DHCP's)
    dhcp6: bool = False
    ipv6_static: tuple = ()
    driver: str | None = None   # hv_netvsc when a live NIC with this MAC uses it

    @property
    def key(self) -> str:
        """The MAC's 12 hex digits: the file name's part."""
        return self.mac.replace(":", "")

    @property
    def metric(self) -> int:
        return 100 * (self.index + 1)

    @property
    def primary(self) -> bool:
        return self.index == 0


class Plan(Record):
    nics: list          # the NICs to configure, in document order
    errors: list        # one line per NIC left out (or primary cut to DHCP)


class _Bad(Exception):
    """One entry's defect, as a message fragment."""


def normalise_mac(value: object) -> str | None:
    """'000D3A6B1C2E' (IMDS), or the same with ':' or '-' between the pairs, to
    '00:0d:3a:6b:1c:2e'; None for anything else."""
    if not isinstance(value, str):
        return None
    if _MAC.fullmatch(value):
        digits = value
    elif _MAC_SEPARATED.fullmatch(value):
        digits = value.replace(":", "").replace("-", "")
    else:
        return None
    digits = digits.lower()
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def plan(network: object, drivers: dict | None = None) -> Plan:
    """The NICs to configure from the document's `network` value, and what was wrong."""
    drivers = drivers or {}
    if not isinstance(network, dict) or "interface" not in network:
        return Plan([], ["the instance document has no network.interface list; "
                         "nothing configured (IMDS lists every NIC there)"])
    entries = network["interface"]
    if not isinstance(entries, list) or not entries:
        return Plan([], [f"network.interface is {'empty' if entries == [] else 'not a list'}; "
                         "nothing configured (IMDS lists every NIC there)"])
    nics: list[Nic] = []
    errors: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries[:MAX_NICS]):
        where = f"network.interface[{index}]"
        if not isinstance(entry, dict):
            errors.append(f"{where} is not an object; NIC skipped")
            continue
        mac = normalise_mac(entry.get("macAddress"))
        if mac is None:
            what = (f"macAddress {quoted(entry['macAddress'])} is not 12 hex digits"
                    if "macAddress" in entry else "it has no macAddress")
            errors.append(f"{where}: {what}; NIC skipped")
            continue
        if mac in seen:
            errors.append(f"{where}: MAC {mac} is listed twice; NIC skipped")
            continue
        seen.add(mac)
        driver = ACCELERATED_DRIVER if drivers.get(mac) == ACCELERATED_DRIVER else None
        try:
            ipv4, ipv4_prefix = _family(entry, "ipv4", 24, where)
            ipv6, ipv6_prefix = _family(entry, "ipv6", 128, where)
        except _Bad as bad:
            if index == 0:
                errors.append(f"{where} (MAC {mac}, the primary NIC): {bad}; "
                              "configured by DHCP only")
                nics.append(Nic(index, mac, driver=driver))
            else:
                errors.append(f"{where} (MAC {mac}): {bad}; NIC skipped")
            continue
        nics.append(Nic(index, mac,
                        ipv4_static=tuple(f"{a}/{ipv4_prefix}" for a in ipv4[1:]),
                        dhcp6=bool(ipv6),
                        ipv6_static=tuple(f"{a}/{ipv6_prefix}" for a in ipv6[1:]),
                        driver=driver))
    if len(entries) > MAX_NICS:
        errors.append(f"network.interface has {len(entries)} entries; the ones after the "
                      f"first {MAX_NICS} are skipped")
    return Plan(nics, errors)


def _family(entry: dict, family: str, default_prefix: int, where: str) -> tuple[list[str], int]:
    """The addresses (canonical text) and the subnet prefix of `ipv4` or `ipv6`."""
    block = entry.get(family)
    if block is None:
        return [], default_prefix
    if not isinstance(block, dict):
        raise _Bad(f"{family} is not an object")
    listed = block.get("ipAddress", [])
    if not isinstance(listed, list):
        raise _Bad(f"{family}.ipAddress is not a list")
    if len(listed) > MAX_ADDRESSES:
        raise _Bad(f"{family}.ipAddress has {len(listed)} entries (at most {MAX_ADDRESSES})")
    addresses = []
    for number, item in enumerate(listed):
        if not isinstance(item, dict):
            raise _Bad(f"{family}.ipAddress[{number}] is not an object")
        value = item.get("privateIpAddress")
        address = _address(value, family)
        if address is None:
            raise _Bad(f"{family}.ipAddress[{number}].privateIpAddress {quoted(value)} "
                       f"is not an {family.upper().replace('V', 'v')} address")
        addresses.append(address)
    return addresses, _prefix(block, family, default_prefix)


def _address(value: object, family: str) -> str | None:
    import ipaddress

    if not isinstance(value, str) or "%" in value:  # a scope id would carry any text along
        return None
    try:
        parsed = ipaddress.IPv4Address(value) if family == "ipv4" else ipaddress.IPv6Address(value)
    except ValueError:
        return None
    return str(parsed)


def _prefix(block: dict, family: str, default: int) -> int:
    subnets = block.get("subnet", [])
    if subnets in (None, []):
        return default
    if not isinstance(subnets, list) or not isinstance(subnets[0], dict):
        raise _Bad(f"{family}.subnet is not a list of objects")
    value = subnets[0].get("prefix")
    if value is None or value == "":
        return default
    limit = 32 if family == "ipv4" else 128
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    else:
        number = -1
    if not 0 <= number <= limit:
        raise _Bad(f"{family}.subnet[0].prefix {quoted(value)} is not a prefix length (0-{limit})")
    return number


def file_name(nic: Nic) -> str:
    return f"{FILE_PREFIX}{nic.key}{FILE_SUFFIX}"


def mac_of_file(name: str) -> str | None:
    """The 12 hex digits of one of our networkd file names, else None (not ours)."""
    if not (name.startswith(FILE_PREFIX) and name.endswith(FILE_SUFFIX)):
        return None
    key = name[len(FILE_PREFIX):-len(FILE_SUFFIX)]
    return key if _MAC.fullmatch(key) and key == key.lower() else None


def networkd_file(nic: Nic) -> bytes:
    """One systemd-networkd .network file for `nic`."""
    lines = [HEADER.rstrip("\n"), f"# network.interface[{nic.index}]", "[Match]",
             f"MACAddress={nic.mac}"]
    if nic.driver:
        lines.append(f"Driver={nic.driver}")
    lines += ["", "[Network]", f"DHCP={'yes' if nic.dhcp6 else 'ipv4'}"]
    lines += [f"Address={address}" for address in nic.ipv4_static + nic.ipv6_static]
    lines += ["", "[DHCPv4]", f"RouteMetric={nic.metric}"]
    if not nic.primary:
        lines.append("UseDNS=no")
    if nic.dhcp6:
        lines += ["", "[DHCPv6]", f"RouteMetric={nic.metric}"]
        if not nic.primary:
            lines.append("UseDNS=no")
        lines += ["", "[IPv6AcceptRA]", f"RouteMetric={nic.metric}"]
        if not nic.primary:
            lines.append("UseDNS=no")
    return ("\n".join(lines) + "\n").encode("ascii")


def networkd_files(nics: list) -> dict[str, bytes]:
    """{file name under /etc/systemd/network: content}, one file per NIC."""
    return {file_name(nic): networkd_file(nic) for nic in nics}


def netplan_file(nics: list) -> bytes:
    """/etc/netplan/50-bootagent.yaml for every NIC. Every string is quoted: YAML 1.1 reads
    an unquoted MAC of digits as a base-60 number."""
    lines = [HEADER.rstrip("\n"), "network:", "  version: 2", "  ethernets:"]
    for nic in nics:
        lines += [f"    bootagent-{nic.key}:", "      match:", f'        macaddress: "{nic.mac}"']
        if nic.driver:
            lines.append(f'        driver: "{nic.driver}"')
        overrides = [f"route-metric: {nic.metric}"] + ([] if nic.primary else ["use-dns: false"])
        lines += ["      dhcp4: true", "      dhcp4-overrides:"]
        lines += [f"        {item}" for item in overrides]
        lines.append(f"      dhcp6: {'true' if nic.dhcp6 else 'false'}")
        if nic.dhcp6:  # networkd needs the same overrides for both
            lines.append("      dhcp6-overrides:")
            lines += [f"        {item}" for item in overrides]
        if nic.ipv4_static or nic.ipv6_static:
            lines.append("      addresses:")
            lines += [f'        - "{address}"' for address in nic.ipv4_static + nic.ipv6_static]
    return ("\n".join(lines) + "\n").encode("ascii")

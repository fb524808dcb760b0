"""Step `hostname` (SPEC step 3): name the machine once per instance.

The name comes from a YAML userData `hostname`, else a YAML customData `hostname` (the
provisioning media's), else `compute.osProfile.computerName`, else the media's HostName,
else `compute.name` when that is a valid hostname (scale-set names are not, so they are
simply not a source). It is written to /etc/hostname and to one managed line of
/etc/hosts:

    127.0.1.1<TAB><name>[ <short name>]<TAB># managed by bootagent

Every other line of /etc/hosts is kept byte for byte (CRLFs and a missing final newline
included): an existing managed line is replaced where it is, duplicates of it removed;
without one, ours goes before the image's first 127.0.1.1 line (so that a reverse
lookup of 127.0.1.1 finds the new name first), else before the file's last element of
a split on "\\n", which keeps the file's final newline, or its absence, as it was.
The live hostname is set only when the root is `/` and never in a dry run.
"""

from __future__ import annotations

import re

from bootagent import writer
from bootagent.boot import Boot
from bootagent.context import Context
from bootagent.errors import StepError
from bootagent.steps import StepResult
from bootagent.text import quoted

MAX_HOSTNAME = 253
HOSTS_ADDRESS = b"127.0.1.1"
HOSTS_MARKER = b"# managed by bootagent"
NEW_HOSTS = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_RULE = ("RFC 1123: dot-separated labels of 1-63 letters, digits and '-', "
         "not starting or ending with '-', at most 253 characters")


def valid_hostname(name: object) -> bool:
    """True for an RFC 1123 host name (a single label or a dotted FQDN), case as given."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_HOSTNAME:
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def choose_hostname(instance, userdata_mapping: dict, customdata_mapping: dict | None = None,
                    media_hostname: str | None = None) -> tuple[str | None, str]:
    """(name, source) by the spec's precedence; (None, reason) when there is no source.

    userData `hostname`, then the media's customData `hostname`, then `computerName`, then
    the media's HostName (it fills in what the document lacks), then a valid
    `compute.name`. An invalid userData/customData `hostname` or `computerName` is an error
    (userData and customData values are never quoted); an invalid `compute.name` or
    media HostName is not a source."""
    for mapping, label in ((userdata_mapping, "userData"), (customdata_mapping, "customData")):
        if isinstance(mapping, dict) and "hostname" in mapping:
            if not valid_hostname(mapping["hostname"]):
                raise StepError(f"the {label} hostname is not a valid hostname ({_RULE}); "
                                f"fix `hostname` in the VM's {label}")
            return mapping["hostname"], f"{label} hostname"
    computer_name = getattr(instance, "computer_name", None)
    if computer_name is not None:
        if not valid_hostname(computer_name):
            raise StepError(f"compute.osProfile.computerName {quoted(computer_name)} is not a valid hostname "
                            f"({_RULE}); fix the VM's computer name")
        return computer_name, "compute.osProfile.computerName"
    if valid_hostname(media_hostname):
        return media_hostname, "ovf-env.xml HostName"
    name = getattr(instance, "name", None)
    if valid_hostname(name):
        return name, "compute.name"
    return None, "no hostname in userData, osProfile.computerName or a valid compute.name"


def hosts_line(name: str) -> bytes:
    """The managed /etc/hosts line for `name` (without its line end)."""
    short = name.split(".", 1)[0]
    names = name if short == name else f"{name} {short}"
    return HOSTS_ADDRESS + b"\t" + names.encode("ascii") + b"\t" + HOSTS_MARKER


def update_hosts(current: bytes | None, name: str) -> bytes:
    """/etc/hosts with exactly one managed line for `name`, every other line unchanged."""
    ours = hosts_line(name)
    lines = (NEW_HOSTS if current is None else current).split(b"\n")
    managed = [i for i, line in enumerate(lines) if line.rstrip(b"\r \t").endswith(HOSTS_MARKER)]
    if managed:
        lines[managed[0]] = ours
        for index in reversed(managed[1:]):
            del lines[index]
        return b"\n".join(lines)
    at = next((i for i, line in enumerate(lines) if line.split()[:1] == [HOSTS_ADDRESS]),
              len(lines) - 1)
    lines.insert(at, ours)
    return b"\n".join(lines)


def run(ctx: Context, boot: Boot) -> StepResult:
    if not ctx.config.hostname.enabled:
        return StepResult.skipped("hostname disabled in the configuration")
    media_hostname = boot.media.hostname if boot.media is not None else None
    name, source = choose_hostname(boot.instance, boot.user_data_mapping(), boot.custom_data_mapping(),
                                   media_hostname)
    if name is None:
        return StepResult.skipped(source)
    changed = []
    if writer.write_file(ctx, "/etc/hostname", name.encode("ascii") + b"\n", mode=0o644):
        changed.append("/etc/hostname")
    current = writer.read_file(ctx, "/etc/hosts", limit=4 << 20)
    if writer.write_file(ctx, "/etc/hosts", update_hosts(current, name), mode=0o644):
        changed.append("/etc/hosts")
    live_changed = ctx.live and not ctx.dry_run and _set_live(name)
    boot.hostname = name
    outcome = StepResult.done(changed)
    if live_changed:
        outcome.status = "changed"
    return outcome


def _set_live(name: str) -> bool:
    """Set the running kernel's hostname; True when it was different."""
    import socket

    if socket.gethostname() == name:
        return False
    try:
        socket.sethostname(name)
    except OSError as err:
        raise StepError(f"cannot set the live hostname to {name}: {err.strerror}; "
                        "run bootagent as root") from None
    return True

"""/run/bootagent/metadata.env and /run/bootagent/instance.json: the instance document
for other units (SPEC "Tools for template and unit authors").

Written by the runner at every boot once the document is had, beside result.json: two
atomic writes, skipped when the bytes are the same, and no import the boot does not
already make. Not a step: /run is new at every boot, so it would be "changed" each time.

Every value is written in one of three forms that systemd's `EnvironmentFile=` and a
POSIX shell's `.` read as the same bytes: a plain token, `'...'` without a `'` inside,
or `"..."` with only `\\"`, `\\\\`, `\\$` and `` \\` `` escaped. Concatenations such as
shlex.quote's `'it'"'"'s'` are never written: the two parsers need not agree on them.
A value with a control character (a newline, a NUL) is left out; so are tags whose name
has no letter or digit, and every tag of a group whose names map to one variable (which
one a unit got would depend on the order of the tags). Each is named in the log.
"""

from __future__ import annotations

import json
import re

from bootagent import writer
from bootagent.imds.document import Instance
from bootagent.text import quoted

ENV_PATH = "/run/bootagent/metadata.env"
INSTANCE_PATH = "/run/bootagent/instance.json"
HEADER = ("# The instance document for units: written by bootagent at every boot; do not edit.\n"
          "# systemd: EnvironmentFile=/run/bootagent/metadata.env (After=bootagent.service)\n"
          "# sh: set -a; . /run/bootagent/metadata.env; set +a\n")
# compute fields, by variable
COMPUTE_FIELDS = (("AZURE_VM_ID", "vmId"), ("AZURE_VM_NAME", "name"), ("AZURE_LOCATION", "location"),
                  ("AZURE_ZONE", "zone"), ("AZURE_VM_SIZE", "vmSize"),
                  ("AZURE_RESOURCE_GROUP", "resourceGroupName"),
                  ("AZURE_SUBSCRIPTION_ID", "subscriptionId"))
TAG_PREFIX = "AZURE_TAG_"
SECRET_FIELDS = ("userData", "customData")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# characters that neither parser treats specially, in any position (no '~', '=', '#', blanks)
_PLAIN = re.compile(r"[A-Za-z0-9_@%+:,./-]+")
_DOUBLE_QUOTED_ESCAPES = re.compile(r'(["\\$`])')


def quote_value(value: str) -> str:
    """`value` in a form sh and systemd read alike. The caller has left out control characters."""
    if _PLAIN.fullmatch(value):
        return value
    if "'" not in value:
        return f"'{value}'"
    return '"' + _DOUBLE_QUOTED_ESCAPES.sub(r"\\\1", value) + '"'


def tag_variable(name: str) -> str | None:
    """AZURE_TAG_<NAME>: ASCII letters upper-cased, every other character '_'; None for a
    name without a letter or digit (empty or all punctuation)."""
    body = "".join(ch.upper() if ch.isascii() and ch.isalnum() else "_" for ch in name)
    return TAG_PREFIX + body if body.strip("_") else None


def _unusable(value: str) -> str | None:
    """Why a value cannot be written, or None."""
    if _CONTROL.search(value):
        return "it holds a control character (a newline?)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid Unicode text"
    return None


def variables(instance: Instance, hostname: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, value) pairs to write, and one line for each variable or tag left out."""
    wanted: list[tuple[str, str, str]] = []  # (variable, value, what it comes from)
    compute = instance.compute
    for variable, field in COMPUTE_FIELDS:
        value = compute.get(field)
        if isinstance(value, str) and value:
            wanted.append((variable, value, f"compute.{field}"))
    if hostname:
        wanted.append(("AZURE_HOSTNAME", hostname, "the hostname"))
    private, public = _first_addresses(instance.network)
    if private:
        wanted.append(("AZURE_PRIVATE_IPV4", private, "the first private IPv4 address"))
    if public:
        wanted.append(("AZURE_PUBLIC_IPV4", public, "the first public IPv4 address"))
    left_out = []
    by_variable: dict[str, list[str]] = {}
    for name in instance.tags:
        tag_var = tag_variable(name)
        if tag_var is None:
            left_out.append(f"tag {quoted(name)} left out of metadata.env: its name has no letter "
                            "or digit to make a variable name of; rename the tag")
            continue
        by_variable.setdefault(tag_var, []).append(name)
    for variable, names in by_variable.items():
        if len(names) > 1:
            shown = " and ".join(quoted(name) for name in names)
            left_out.append(f"tags {shown} all map to {variable}: all left out of metadata.env; "
                            "rename all but one")
            continue
        value = instance.tags[names[0]]
        wanted.append((variable, value if isinstance(value, str) else "", f"tag {quoted(names[0])}"))
    written = []
    for variable, value, source in wanted:
        why = _unusable(value)
        if why is None:
            written.append((variable, value))
        else:
            left_out.append(f"{variable} ({source}) left out of metadata.env: {why}; fix the value")
    return written, left_out


def _first_addresses(network: dict) -> tuple[str, str]:
    """The first interface's first private and public IPv4 address ("" when unknown)."""
    try:
        address = network["interface"][0]["ipv4"]["ipAddress"][0]
    except (KeyError, IndexError, TypeError):
        return "", ""
    if not isinstance(address, dict):
        return "", ""
    private, public = address.get("privateIpAddress"), address.get("publicIpAddress")
    return (private if isinstance(private, str) else "", public if isinstance(public, str) else "")


def encode(pairs: list[tuple[str, str]]) -> bytes:
    """The file's bytes: the header, then one `NAME=value` line per pair."""
    return (HEADER + "".join(f"{name}={quote_value(value)}\n" for name, value in pairs)).encode("utf-8")


def instance_json(document: dict) -> bytes:
    """The document as instance.json holds it: without userData and customData."""
    compute = document.get("compute")
    if isinstance(compute, dict):
        compute = {key: value for key, value in compute.items() if key not in SECRET_FIELDS}
        document = {**document, "compute": compute}
    return json.dumps(document, indent=2).encode() + b"\n"


def write(ctx, instance: Instance, hostname: str) -> tuple[list[str], list[str]]:
    """Write both files; (paths changed, lines naming what was left out)."""
    pairs, left_out = variables(instance, hostname)
    changed = []
    if writer.write_file(ctx, ENV_PATH, encode(pairs), mode=0o644, internal=True):
        changed.append(ENV_PATH)
    document = instance.document or {"compute": instance.compute, "network": instance.network}
    if writer.write_file(ctx, INSTANCE_PATH, instance_json(document), mode=0o644, internal=True):
        changed.append(INSTANCE_PATH)
    return changed, left_out

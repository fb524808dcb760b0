"""bootagent.yaml: defaults as the spec shows them, strict validation, and a parse cache.

Every key is optional; an unknown key, a wrong type or a bad value is a ConfigError
naming the key and the file (exit 2). PyYAML is imported only when the file's bytes
differ from the last parse: the parsed result is cached under var/lib/bootagent keyed
by the bytes' digest, so a boot with nothing to do never imports it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re

from bootagent import __version__, writer
from bootagent.context import Context, split_logical
from bootagent.errors import ConfigError, UnsafePath
from bootagent.imds.versions import SUPPORTED_API_VERSIONS
from bootagent.text import quoted

CONFIG_PATH = "/etc/bootagent/bootagent.yaml"
CACHE_PATH = "/var/lib/bootagent/config-cache.json"
MAX_CONFIG = 1 << 20

RESOURCE_DISK_DEFAULTS = {"enabled": "auto", "device": "auto", "mount": "/mnt", "filesystem": "ext4",
                          "swap_mb": 0}
DEFAULTS = {
    "imds": {"url": "auto", "api_version": "2021-08-01", "timeout": 300},
    "hostname": {"enabled": True},
    "users": {"enabled": True, "groups": ["sudo"], "sudo": True},
    "ssh": {"enabled": True, "host_keys": "regenerate"},
    "userdata": {"run_scripts": True, "script_timeout": 300},
    "azure": {"report_ready": "auto", "wireserver": "http://168.63.129.16",
              "resource_disk": RESOURCE_DISK_DEFAULTS},
    "templates": [],
}
TEMPLATE_KEYS = {"src", "dest", "when", "mode", "owner", "group"}
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


def defaults() -> dict:
    return copy.deepcopy(DEFAULTS)


def load(ctx: Context, explicit: str | None = None) -> dict:
    """The validated configuration: `explicit` (a host path from --config) or the root's file."""
    if explicit is not None:
        source = explicit
        try:
            with open(explicit, "rb") as handle:
                data = handle.read(MAX_CONFIG + 1)
        except OSError as err:
            raise ConfigError(f"cannot read the configuration {explicit}: {err.strerror}; "
                              "check the --config path") from None
    else:
        source = ctx.path(CONFIG_PATH)
        try:
            data = writer.read_file(ctx, CONFIG_PATH, limit=MAX_CONFIG)
        except Exception as err:
            raise ConfigError(f"cannot read the configuration {source}: {err}") from None
        if data is None:
            return defaults()
    if len(data) > MAX_CONFIG:
        raise ConfigError(f"{source} is larger than {MAX_CONFIG} bytes; is it the right file?")
    # keyed by the agent's version too: another version may validate the same bytes otherwise
    digest = hashlib.sha256(__version__.encode() + b"\0" + data).hexdigest()
    cached = _cached(ctx, digest)
    if cached is not None:
        return cached
    config = validate(_parse_yaml(data, source), source)
    _store(ctx, digest, config)
    return config


def _cached(ctx: Context, digest: str) -> dict | None:
    try:
        raw = writer.read_file(ctx, CACHE_PATH, limit=MAX_CONFIG * 4)
        entry = json.loads(raw) if raw else None
    except (ValueError, OSError, UnsafePath):
        return None
    if isinstance(entry, dict) and entry.get("sha256") == digest and isinstance(entry.get("config"), dict):
        return entry["config"]
    return None


def _store(ctx: Context, digest: str, config: dict) -> None:
    try:
        body = json.dumps({"sha256": digest, "config": config}, sort_keys=True).encode()
        writer.write_file(ctx, CACHE_PATH, body, mode=0o600, internal=True)
    except Exception:
        pass  # a cache that cannot be written only costs the next boot a parse


def _parse_yaml(data: bytes, source: str) -> object:
    import yaml

    try:
        return yaml.safe_load(data.decode("utf-8")) if data.strip() else {}
    except UnicodeDecodeError:
        raise ConfigError(f"{source} is not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{source} is not valid YAML: it is nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        why = getattr(err, "problem", None) or err  # a ReaderError has no `problem`
        raise ConfigError(f"{source} is not valid YAML{where}: {_one_line(why)}") from None
    except Exception as err:  # noqa: BLE001
        # PyYAML's constructors raise plain ValueError/KeyError/TypeError on a malformed
        # scalar (`2001-02-30`, `!!bool x`); safe_load builds only plain data, so any
        # failure is a malformed file, never a bug to report.
        raise ConfigError(f"{source} is not valid YAML: a dated or tagged value is malformed "
                          f"({_one_line(err)})") from None


def _one_line(why: object) -> str:
    text = " ".join(str(why).split())
    return text if len(text) <= 200 else text[:197] + "..."


def validate(raw: object, source: str) -> dict:
    """Merge `raw` over the defaults, refusing anything the spec does not define."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    config = defaults()
    for section, value in raw.items():
        if section not in DEFAULTS:
            raise ConfigError(f"{source}: unknown key '{section}' (known: {', '.join(DEFAULTS)})")
        if section == "templates":
            config["templates"] = _templates(value, source)
            continue
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{section}' must be a mapping")
        for key, item in value.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(f"{source}: unknown key '{section}.{key}' "
                                  f"(known: {', '.join(DEFAULTS[section])})")
            config[section][key] = _check(f"{section}.{key}", item, source)
    return config


def _check(key: str, value: object, source: str) -> object:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: '{key}' must be {expected}, not {value!r}")

    if key in ("hostname.enabled", "users.enabled", "users.sudo", "ssh.enabled", "userdata.run_scripts"):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif key in ("imds.timeout", "userdata.script_timeout"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400:
            raise bad("a number of seconds between 0 and 86400")
    elif key == "imds.url":
        if not isinstance(value, str) or not (value == "auto" or _URL.match(value)):
            raise bad("'auto' or an http:// URL")
    elif key == "imds.api_version":
        if hasattr(value, "isoformat") and not isinstance(value, str):
            value = value.isoformat()  # unquoted 2021-08-01 is a date to YAML; the user meant the text
        if value not in SUPPORTED_API_VERSIONS:
            raise bad(f"one of the supported api-versions ({SUPPORTED_API_VERSIONS[0]} … "
                      f"{SUPPORTED_API_VERSIONS[-1]})")
    elif key == "users.groups":
        if not isinstance(value, list) or not all(isinstance(g, str) and _NAME.match(g) for g in value):
            raise bad("a list of group names")
    elif key == "ssh.host_keys":
        if value not in ("regenerate", "keep", "off"):
            raise bad("regenerate, keep or off")
    elif key == "azure.report_ready":
        if value != "auto" and not isinstance(value, bool):  # `in (True, False)` would take 0 and 1
            raise bad("auto, true or false")
    elif key == "azure.wireserver":
        if not isinstance(value, str) or not _URL.match(value):
            raise bad("an http:// URL")
    elif key == "azure.resource_disk":
        return _resource_disk(value, source)
    return value


# mount points that would hide a part of the system itself
_SYSTEM_DIRS = {"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc",
                "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var"}
MAX_SWAP_MB = 1 << 20


def _resource_disk(value: object, source: str) -> dict:
    """azure.resource_disk: its own mapping, merged over its defaults key by key."""
    merged: dict = dict(RESOURCE_DISK_DEFAULTS)
    if value is None:
        return merged
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: 'azure.resource_disk' must be a mapping")
    for key, item in value.items():
        name = f"azure.resource_disk.{key}"
        if key not in merged:
            raise ConfigError(f"{source}: unknown key {name!r} (known: {', '.join(merged)})")
        expected = _resource_disk_problem(key, item)
        if expected:
            raise ConfigError(f"{source}: {name!r} must be {expected}, not {quoted(item)}")
        merged[key] = item
    return merged


def _resource_disk_problem(key: str, item: object) -> str | None:
    """What `azure.resource_disk.<key>` must be, when `item` is not that; else None."""
    if key == "enabled" and item != "auto" and not isinstance(item, bool):
        return "auto, true or false"
    if key in ("device", "mount"):
        auto = key == "device" and item == "auto"
        if not (isinstance(item, str) and item.isprintable() and (auto or _absolute(item))):
            return "'auto' or an absolute path" if key == "device" else "an absolute path"
        if key == "mount" and "/" + "/".join(split_logical(item)) in _SYSTEM_DIRS:
            return "a directory of its own such as /mnt (it would hide a system directory)"
    if key == "filesystem" and item not in ("ext4", "ext3", "ext2"):
        return "ext4, ext3 or ext2 (xfs cannot hold the 13-character label bootagent-tmp)"
    if key == "swap_mb" and (isinstance(item, bool) or not isinstance(item, int)
                             or not 0 <= item <= MAX_SWAP_MB):
        return f"a whole number of MiB from 0 (no swap) to {MAX_SWAP_MB}"
    return None


def _absolute(path: str) -> bool:
    try:
        return bool(split_logical(path))
    except UnsafePath:
        return False


def _templates(value: object, source: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{source}: 'templates' must be a list of entries")
    return [_template_entry(entry, index, source) for index, entry in enumerate(value)]


def _template_entry(entry: object, index: int, source: str) -> dict:
    where = f"{source}: templates[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping with src and dest")
    unknown = set(entry) - TEMPLATE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key '{sorted(unknown)[0]}' (known: {', '.join(sorted(TEMPLATE_KEYS))})")
    src, dest = entry.get("src"), entry.get("dest")
    if not isinstance(src, str) or not src or src.startswith("/") or ".." in src.split("/"):
        raise ConfigError(f"{where}.src must be a file name under /etc/bootagent/templates/, not {src!r}")
    if not isinstance(dest, str) or not dest.startswith("/"):
        raise ConfigError(f"{where}.dest must be an absolute path, not {dest!r}")
    try:
        if not split_logical(dest):
            raise UnsafePath("the root itself")
    except UnsafePath:
        raise ConfigError(f"{where}.dest {dest!r} leaves the root or names no file") from None
    when = entry.get("when")
    if when is not None and not isinstance(when, str):
        raise ConfigError(f"{where}.when must be a Jinja expression in a string")
    for key in ("owner", "group"):
        if key in entry and not (isinstance(entry[key], str) and _NAME.match(entry[key])):
            raise ConfigError(f"{where}.{key} must be a user or group name, not {entry[key]!r}")
    return {"src": src, "dest": dest, "when": when, "mode": _mode(entry.get("mode", "0644"), where),
            "owner": entry.get("owner", "root"), "group": entry.get("group", "root")}


def _mode(value: object, where: str) -> int:
    """'0644' (a string of octal digits) or 0644 unquoted, which YAML reads as an octal int.

    An unquoted 644 is the decimal 644 to YAML (0o1204, sticky and owner write-only), so
    an int above 0o777 is refused with the fix: quote the mode (special bits too)."""
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
        mode = int(value, 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 0o777:
            meant = f"0{value}" if re.fullmatch(r"[0-7]{3,4}", str(value)) else "0644"
            raise ConfigError(f"{where}.mode {value} is a decimal number to YAML, not an octal "
                              f"mode; quote it, e.g. mode: \"{meant}\"")
        mode = value
    else:
        raise ConfigError(f"{where}.mode must be an octal mode such as \"0644\", not {value!r}")
    if not 0 <= mode <= 0o7777:
        raise ConfigError(f"{where}.mode {value!r} is not a file mode")
    return mode

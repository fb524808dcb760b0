"""bootagent.yaml: one schema table, a frozen typed `Config`, and a parse cache.

`SCHEMA` lists every setting once: its dotted key, the check its value must pass and its
default. `validate` walks a parsed file against it (an unknown key, a wrong type or a bad
value is a ConfigError naming the key and the file: exit 2) and yields a `Config` that the
steps read as attributes (`ctx.config.users.sudo`). PyYAML is imported only when the
file's bytes differ from the last parse: the validated result is cached under
var/lib/bootagent keyed by the bytes' digest, so a boot with nothing to do never imports it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from bootagent import __version__
from bootagent.errors import ConfigError, UnsafePath, UsageError
from bootagent.imds.versions import SUPPORTED_API_VERSIONS
from bootagent.paths import split_logical
from bootagent.record import Record
from bootagent.text import one_line, quoted

TYPE_CHECKING = False  # typing's constant without importing typing; mypy knows the name
if TYPE_CHECKING:
    from typing import Any

    from bootagent.context import Context

CONFIG_PATH = "/etc/bootagent/bootagent.yaml"
CACHE_PATH = "/var/lib/bootagent/config-cache.json"
MAX_CONFIG = 1 << 20
MAX_SECONDS = 86400
MAX_SWAP_MB = 1 << 20
TEMPLATE_KEYS = ("src", "dest", "when", "mode", "owner", "group")
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


class Invalid(Exception):
    """Raised by a check: the value is not what the key needs; `expected` says what is."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


# --- checks: each returns the value as the Config holds it, or raises Invalid --------------

def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


def auto_or_boolean(value: object) -> str | bool:
    if value != "auto" and not isinstance(value, bool):  # `in (True, False)` would take 0 and 1
        raise Invalid("auto, true or false")
    return value


def seconds(value: object) -> float:
    """A deadline: a finite number of seconds, 0 < t <= 86400 (nan and inf fail the test)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_SECONDS:
        raise Invalid(f"a number of seconds above 0 and at most {MAX_SECONDS}")
    return value


def http_url(value: object) -> str:
    if not isinstance(value, str) or not _URL.match(value):
        raise Invalid("an http:// URL")
    return value


def api_version(value: object) -> str:
    if hasattr(value, "isoformat") and not isinstance(value, str):
        value = value.isoformat()  # unquoted 2021-08-01 is a date to YAML; the user meant the text
    if value not in SUPPORTED_API_VERSIONS:
        raise Invalid(f"one of the supported api-versions ({SUPPORTED_API_VERSIONS[0]} … "
                      f"{SUPPORTED_API_VERSIONS[-1]})")
    return value


def group_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(g, str) and _NAME.match(g) for g in value):
        raise Invalid("a list of group names")
    return tuple(value)


def absolute_path(value: object) -> str:
    try:
        if isinstance(value, str) and value.isprintable() and split_logical(value):
            return value
    except UnsafePath:
        pass
    raise Invalid("an absolute path without '.' or '..'")


SYSTEM_DIRS = {"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc",
               "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var"}


def mount_point(value: object) -> str:
    """A directory of its own: a mount there must not hide a system directory."""
    path = absolute_path(value)
    if "/" + "/".join(split_logical(path)) in SYSTEM_DIRS:
        raise Invalid("a directory of its own such as /mnt (it would hide a system directory)")
    return path


def one_of(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise Invalid(", ".join(choices[:-1]) + " or " + choices[-1])
        return value
    return check


def off_as_written(value: object) -> object:
    """YAML 1.1 reads an unquoted `off` as false: the user wrote off, and meant it."""
    return "off" if value is False else value


def off_or(check: Callable[[object], str]) -> Callable[[object], str]:
    """`check` with YAML's false read back as the word off."""
    return lambda value: check(off_as_written(value))


def words_or(words: tuple[str, ...], check: Callable[[object], str], expected: str) -> Callable[[object], str]:
    """One of `words` as it is, else what `check` takes; `expected` names both."""
    def combined(value: object) -> str:
        if value in words:
            return value
        try:
            return check(value)
        except Invalid:
            raise Invalid(expected) from None
    return combined


url_or_auto = words_or(("auto",), http_url, "'auto' or an http:// URL")
auto_or_path = words_or(("auto",), absolute_path, "auto or an absolute path")
auto_off_or_path = off_or(words_or(("auto", "off"), absolute_path, "auto, off or an absolute path"))
host_keys_mode = off_or(one_of("regenerate", "keep", "off"))


def e2fs_type(value: object) -> str:
    if value not in ("ext4", "ext3", "ext2"):
        raise Invalid("ext4, ext3 or ext2 (xfs cannot hold the 13-character label bootagent-tmp)")
    return value


def megabytes(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SWAP_MB:
        raise Invalid(f"a whole number of MiB from 0 (no swap) to {MAX_SWAP_MB}")
    return value


# --- the schema: every setting once ---------------------------------------------------------

SCHEMA: tuple[tuple[str, Callable[[object], Any], object], ...] = (
    ("imds.url", url_or_auto, "auto"),
    ("imds.api_version", api_version, "2021-08-01"),
    ("imds.timeout", seconds, 300),
    ("hostname.enabled", boolean, True),
    ("users.enabled", boolean, True),
    ("users.groups", group_names, ("sudo",)),
    ("users.sudo", boolean, True),
    ("ssh.enabled", boolean, True),
    ("ssh.host_keys", host_keys_mode, "regenerate"),
    ("userdata.run_scripts", boolean, True),
    ("userdata.script_timeout", seconds, 300),
    ("azure.report_ready", auto_or_boolean, "auto"),
    ("azure.wireserver", http_url, "http://168.63.129.16"),
    ("azure.provisioning_media", auto_off_or_path, "auto"),
    ("azure.resource_disk.enabled", auto_or_boolean, "auto"),
    ("azure.resource_disk.device", auto_or_path, "auto"),
    ("azure.resource_disk.mount", mount_point, "/mnt"),
    ("azure.resource_disk.filesystem", e2fs_type, "ext4"),
    ("azure.resource_disk.swap_mb", megabytes, 0),
    ("network.enabled", auto_or_boolean, "auto"),
)
CHECKS = {key: check for key, check, _ in SCHEMA}
DEFAULTS = {key: default for key, _, default in SCHEMA}
# every section (a key that holds settings), the top level "" included
SECTIONS = {".".join(key.split(".")[:depth]) for key in CHECKS for depth in range(len(key.split(".")))}


# --- the typed configuration ----------------------------------------------------------------

class ImdsSettings(Record, frozen=True):
    url: str
    api_version: str
    timeout: float


class HostnameSettings(Record, frozen=True):
    enabled: bool


class UsersSettings(Record, frozen=True):
    enabled: bool
    groups: tuple[str, ...]
    sudo: bool


class SshSettings(Record, frozen=True):
    enabled: bool
    host_keys: str


class UserDataSettings(Record, frozen=True):
    run_scripts: bool
    script_timeout: float


class ResourceDiskSettings(Record, frozen=True):
    enabled: str | bool
    device: str
    mount: str
    filesystem: str
    swap_mb: int


class AzureSettings(Record, frozen=True):
    report_ready: str | bool
    wireserver: str
    provisioning_media: str
    resource_disk: ResourceDiskSettings


class NetworkSettings(Record, frozen=True):
    enabled: str | bool


class Template(Record, frozen=True):
    """One manifest entry: render `src` to `dest` when `when` holds."""
    src: str
    dest: str
    when: str | None
    mode: int
    owner: str
    group: str

    def to_dict(self) -> dict:
        return plain_record(self)


class Config(Record, frozen=True):
    imds: ImdsSettings
    hostname: HostnameSettings
    users: UsersSettings
    ssh: SshSettings
    userdata: UserDataSettings
    azure: AzureSettings
    network: NetworkSettings
    templates: tuple[Template, ...]

    def to_dict(self) -> dict:
        """Plain data (the parse cache's form; `from_dict` reads it back)."""
        return plain_record(self)


SECTION_TYPES: dict[str, type[Record]] = {
    "": Config, "imds": ImdsSettings, "hostname": HostnameSettings, "users": UsersSettings,
    "ssh": SshSettings, "userdata": UserDataSettings, "azure": AzureSettings,
    "azure.resource_disk": ResourceDiskSettings, "network": NetworkSettings,
}


def plain_record(record: Record) -> dict:
    """A settings record as JSON-ready data: dicts and lists."""
    return {name: plain(getattr(record, name)) for name in record._fields}


def plain(value: object) -> object:
    if isinstance(value, Record):
        return plain_record(value)
    if isinstance(value, tuple):
        return [plain(item) for item in value]
    return value


def _build(section: str, values: dict[str, object], templates: tuple[Template, ...]) -> Any:
    fields: dict[str, object] = {}
    for name in SECTION_TYPES[section]._fields:
        key = f"{section}.{name}" if section else name
        if key == "templates":
            fields[name] = templates
        elif key in SECTION_TYPES:
            fields[name] = _build(key, values, templates)
        else:
            fields[name] = values[key]
    return SECTION_TYPES[section](**fields)


def from_dict(plain: dict) -> Config:
    """A Config from `to_dict()`'s form, as the cache stores it (already validated)."""
    values = {}
    for key in CHECKS:
        node: Any = plain
        for part in key.split("."):
            node = node[part]
        values[key] = tuple(node) if isinstance(node, list) else node
    templates = tuple(Template(**entry) for entry in plain["templates"])
    return _build("", values, templates)


def defaults() -> Config:
    return _build("", dict(DEFAULTS), ())


# --- validation -----------------------------------------------------------------------------

def validate(raw: object, source: str) -> Config:
    """The Config that `raw` (parsed YAML) asks for, refusing anything the schema lacks."""
    values = dict(DEFAULTS)
    templates: tuple[Template, ...] = ()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    if "templates" in raw:
        templates = _templates(raw["templates"], source)
    _walk("", {k: v for k, v in raw.items() if k != "templates"}, values, source)
    return _build("", values, templates)


def _walk(section: str, mapping: dict, values: dict[str, object], source: str) -> None:
    for name, value in mapping.items():
        key = f"{section}.{name}" if section else str(name)
        if key in CHECKS:
            values[key] = check(key, value, source)
        elif key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{key}' must be a mapping")
            _walk(key, value, values, source)
        else:
            where = f"unknown key {quoted(key)}" if section else f"unknown key {quoted(name)}"
            raise ConfigError(f"{source}: {where} (known: {', '.join(_known(section))})")


def _known(section: str) -> list[str]:
    prefix = f"{section}." if section else ""
    names = {key[len(prefix):].split(".")[0] for key in (*CHECKS, "templates") if key.startswith(prefix)}
    return sorted(names, key=list(SECTION_TYPES[section]._fields).index)


def check(key: str, value: object, source: str) -> Any:
    """`value` for `key` as the Config holds it; ConfigError naming the key and `source`."""
    try:
        return CHECKS[key](value)
    except Invalid as err:
        raise ConfigError(f"{source}: '{key}' must be {err.expected}, not {quoted(value)}") from None


def check_option(option: str, key: str, value: object) -> Any:
    """A command-line value checked exactly as the same value in the file (`--timeout` as
    `imds.timeout`); UsageError naming the option."""
    try:
        return CHECKS[key](value)
    except Invalid as err:
        raise UsageError(f"{option} must be {err.expected}, not {quoted(value)}") from None


def _templates(value: object, source: str) -> tuple[Template, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{source}: 'templates' must be a list of entries")
    return tuple(_template_entry(entry, index, source) for index, entry in enumerate(value))


def _template_entry(entry: object, index: int, source: str) -> Template:
    where = f"{source}: templates[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping with src and dest")
    unknown = sorted(str(key) for key in set(entry) - set(TEMPLATE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {quoted(unknown[0])} (known: {', '.join(TEMPLATE_KEYS)})")
    src, dest = entry.get("src"), entry.get("dest")
    if not isinstance(src, str) or not src or src.startswith("/") or ".." in src.split("/"):
        raise ConfigError(f"{where}.src must be a file name under /etc/bootagent/templates/, not {quoted(src)}")
    if not isinstance(dest, str) or not dest.startswith("/"):
        raise ConfigError(f"{where}.dest must be an absolute path, not {quoted(dest)}")
    try:
        if not split_logical(dest):
            raise UnsafePath("the root itself")
    except UnsafePath:
        raise ConfigError(f"{where}.dest {quoted(dest)} leaves the root or names no file") from None
    when = entry.get("when")
    if when is not None and not isinstance(when, str):
        raise ConfigError(f"{where}.when must be a Jinja expression in a string")
    for key in ("owner", "group"):
        if key in entry and not (isinstance(entry[key], str) and _NAME.match(entry[key])):
            raise ConfigError(f"{where}.{key} must be a user or group name, not {quoted(entry[key])}")
    return Template(src=src, dest=dest, when=when, mode=_mode(entry.get("mode", "0644"), where),
                    owner=entry.get("owner", "root"), group=entry.get("group", "root"))


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
        raise ConfigError(f"{where}.mode must be an octal mode such as \"0644\", not {quoted(value)}")
    if not 0 <= mode <= 0o7777:
        raise ConfigError(f"{where}.mode {quoted(value)} is not a file mode")
    return mode


# --- the file and its cache -----------------------------------------------------------------

def load(ctx: Context, explicit: str | None = None) -> Config:
    """The validated configuration: `explicit` (a host path from --config) or the root's file."""
    import hashlib

    from bootagent import writer

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
            found = writer.read_file(ctx, CONFIG_PATH, limit=MAX_CONFIG)
        except Exception as err:
            raise ConfigError(f"cannot read the configuration {source}: {err}") from None
        if found is None:
            return defaults()
        data = found
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


def _cached(ctx: Context, digest: str) -> Config | None:
    import json

    from bootagent import writer

    try:
        raw = writer.read_file(ctx, CACHE_PATH, limit=MAX_CONFIG * 4)
        entry = json.loads(raw) if raw else None
        if isinstance(entry, dict) and entry.get("sha256") == digest and isinstance(entry.get("config"), dict):
            return from_dict(entry["config"])
    except (ValueError, OSError, UnsafePath, KeyError, TypeError):
        pass  # an unreadable or stale cache only costs a parse
    return None


def _store(ctx: Context, digest: str, config: Config) -> None:
    import json

    from bootagent import writer

    try:
        body = json.dumps({"sha256": digest, "config": config.to_dict()}, sort_keys=True).encode()
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
        raise ConfigError(f"{source} is not valid YAML{where}: {one_line(why)}") from None
    except Exception as err:  # noqa: BLE001
        # PyYAML's constructors raise plain ValueError/KeyError/TypeError on a malformed
        # scalar (`2001-02-30`, `!!bool x`); safe_load builds only plain data, so any
        # failure is a malformed file, never a bug to report.
        raise ConfigError(f"{source} is not valid YAML: a dated or tagged value is malformed "
                          f"({one_line(err)})") from None

"""Step `templates` (every boot): render the manifest's files from tags, userData and IMDS.

Each entry of `templates:` is read from /etc/bootagent/templates/<src>, its `when`
evaluated and its body rendered in Jinja's sandbox (bootagent/render.py), and written
through the writer only when the bytes differ.

The fast path (SPEC "Budgets"): a later boot with nothing to do must not import Jinja
or PyYAML. `templates-cache.json` remembers, per entry, a key over everything that
decides its output (the template's bytes, the entry, the context's inputs in their raw
form: compute and network JSON, hostname, admin user) and the digest of the bytes last
written to `dest` (or that `when` was false). When the key matches and `dest` still
holds those bytes with the entry's mode and owner, the entry is `unchanged` without
rendering, without Jinja, and without decoding userData. Failures are never cached.

The context (render.template_context) is built by `render_context`, which `bootagent
render` calls too: a template renders there exactly as at boot. customData is read from
where the customdata step keeps it, and its digest is part of the cache key.
"""

from __future__ import annotations

import hashlib
import json
import stat

from bootagent import __version__, accounts, writer
from bootagent.boot import Boot
from bootagent.config import Template
from bootagent.context import Context
from bootagent.errors import StepError
from bootagent.imds.userdata import MAX_DECODED
from bootagent.state import CUSTOM_DATA_PATH, STATE_DIR
from bootagent.steps import StepResult

TEMPLATE_DIR = "/etc/bootagent/templates"
CACHE_PATH = f"{STATE_DIR}/templates-cache.json"
CACHE_FORMAT = f"1/{__version__}"    # a new agent version renders everything once again
MAX_TEMPLATE = 1 << 20
MAX_CACHE = 4 << 20


def run(ctx: Context, boot: Boot) -> StepResult:
    entries = ctx.config.templates
    if not entries:
        return StepResult.skipped("no templates in the configuration")
    if boot.instance is None:
        return StepResult.skipped("no instance document")
    inputs = context_inputs(ctx, boot)
    customdata = kept_customdata(ctx)
    inputs_digest = _digest(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
                            + b"\0" + (_digest(customdata).encode() if customdata is not None else b"-"))
    old_cache = _load_cache(ctx)
    new_cache: dict[str, dict] = {}
    lazy = _LazyRender(lambda: render_context(ctx, boot, customdata, inputs))
    changed, errors = [], []
    srcs = [entry.src for entry in entries]
    for entry in entries:
        label = entry.src if srcs.count(entry.src) == 1 else f"{entry.src} ({entry.dest})"
        try:
            key, outcome, wrote = _one(ctx, entry, inputs_digest, old_cache, lazy)
        except StepError as err:
            errors.append(f"{label}: {err}")
            continue
        new_cache[key] = outcome
        if wrote:
            changed.append(entry.dest)
    _store_cache(ctx, new_cache)
    if errors:
        return StepResult.failed("templates: " + "; ".join(errors), changed)
    return StepResult.done(changed)


def context_inputs(ctx: Context, boot: Boot) -> dict:
    """What the template context is made of, in raw form: cheap to build and to hash.
    `tags` and `userdata` are derived from `compute` (tags, tagsList, userData)."""
    instance = boot.instance
    if instance is None:  # the runner provisions only with a document
        return {"compute": {}, "network": {}, "hostname": context_hostname(ctx, boot), "admin_user": ""}
    admin = instance.admin_username
    return {"compute": instance.compute, "network": instance.network,
            "hostname": context_hostname(ctx, boot),
            "admin_user": admin if isinstance(admin, str) else ""}


def context_hostname(ctx: Context, boot: Boot) -> str:
    """The hostname the hostname step set or would set; when it failed, is disabled or had
    no source, what /etc/hostname holds; else "localhost"."""
    outcome = boot.results.get("hostname")
    if boot.hostname and not (outcome is not None and outcome.status == "failed"):
        return boot.hostname
    try:
        raw = writer.read_file(ctx, "/etc/hostname", limit=4096)
    except StepError:
        raw = None
    lines = (raw or b"").decode("utf-8", "replace").strip().splitlines()
    return lines[0].strip() if lines and lines[0].strip() else "localhost"


def kept_customdata(ctx: Context) -> bytes | None:
    """The customData the customdata step keeps (SPEC "Provisioning media"), None when
    there is none. Read on every boot: the media is gone after the first."""
    try:
        return writer.read_file(ctx, CUSTOM_DATA_PATH, limit=MAX_DECODED)
    except (StepError, OSError):  # `render` by a user who may not read the state directory
        return None


def data_mapping(data: bytes | None) -> dict:
    """The mapping a YAML userData or customData gives templates, else {} (as
    Boot.user_data_mapping: bytes that are not a YAML mapping give none)."""
    if not data:
        return {}
    from bootagent.imds.userdata import UserDataError, classify

    try:
        found = classify(data)
    except UserDataError:
        return {}
    return found.mapping if found.mapping is not None else {}


def render_context(ctx: Context, boot: Boot, customdata: bytes | None, inputs: dict | None = None) -> dict:
    """The template context, built in one place for the boot and `bootagent render`."""
    from bootagent.render import template_context

    return template_context(inputs if inputs is not None else context_inputs(ctx, boot),
                            boot.instance.tags if boot.instance is not None else {},
                            boot.user_data_mapping(), data_mapping(customdata))


def read_template(ctx: Context, src: str) -> bytes:
    """A manifest entry's template, by its name under the templates directory."""
    source = writer.read_file(ctx, f"{TEMPLATE_DIR}/{src}", limit=MAX_TEMPLATE)
    if source is None:
        raise StepError(f"not found at {ctx.path(TEMPLATE_DIR)}/{src} (add it or remove the entry)")
    return source


def template_text(source: bytes) -> str:
    try:
        return source.decode("utf-8")
    except UnicodeDecodeError:
        raise StepError("the template is not UTF-8 text") from None


class _LazyRender:
    """The Jinja side, built on the first cache miss only: the renderer and the context
    (whose userData and customData mappings are decoded here, never on the fast path)."""

    def __init__(self, make_context):
        self.make_context = make_context
        self._renderer = self._context = None

    def get(self):
        if self._renderer is None:
            from bootagent.render import Renderer

            self._renderer = Renderer()
            self._context = self.make_context()
        return self._renderer, self._context


def _one(ctx: Context, entry: Template, inputs_digest: str, cache: dict, lazy: _LazyRender):
    """Bring one entry's destination up to date: (cache key, cache record, whether it changed)."""
    source = read_template(ctx, entry.src)
    owner = accounts.owner_ids(ctx, entry.owner, entry.group)
    key = _digest(b"\0".join([CACHE_FORMAT.encode(), _digest(source).encode(),
                              json.dumps(entry.to_dict(), sort_keys=True).encode(), inputs_digest.encode()]))
    known = cache.get(key)
    if known is not None and _still_there(ctx, entry, owner, known):
        return key, known, False
    text = template_text(source)
    renderer, context = lazy.get()
    from bootagent.render import render_entry

    output = render_entry(renderer, text, entry.when, context)
    if output is None:
        return key, {"when": False}, False
    data = output.encode("utf-8")
    wrote = writer.write_file(ctx, entry.dest, data, mode=entry.mode, owner=owner)
    return key, {"dest": entry.dest, "sha256": _digest(data)}, wrote


def _still_there(ctx: Context, entry: Template, owner: tuple[int, int], known: dict) -> bool:
    """True when the cached outcome still holds: `when` was false, or dest has the bytes,
    mode and owner last written."""
    if known.get("when") is False:
        return True
    try:
        current = writer.read_file(ctx, entry.dest, limit=MAX_TEMPLATE * 8)
        if current is None or _digest(current) != known.get("sha256"):
            return False
        info = writer.lstat(ctx, entry.dest)
    except (StepError, OSError):
        return False
    if info is None:
        return False
    return stat.S_IMODE(info.st_mode) == entry.mode and (info.st_uid, info.st_gid) == owner


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load_cache(ctx: Context) -> dict:
    try:
        raw = writer.read_file(ctx, CACHE_PATH, limit=MAX_CACHE)
        value = json.loads(raw) if raw else {}
    except (ValueError, StepError):
        return {}
    entries = value.get("entries") if isinstance(value, dict) else None
    return entries if isinstance(entries, dict) else {}


def _store_cache(ctx: Context, entries: dict) -> None:
    body = json.dumps({"format": CACHE_FORMAT, "entries": entries}, sort_keys=True, indent=1).encode()
    try:
        writer.write_file(ctx, CACHE_PATH, body + b"\n", mode=0o600, internal=True)
    except StepError:
        pass  # a cache that cannot be written only costs the next boot a render

"""`bootagent render`: a template as the boot renders it, for the people who write them.

The context is built by the templates step's own `render_context` and rendered by the
same `render_entry` (bootagent/render.py): the same sandbox, strictness and names. What
differs is only where the inputs come from: the document from --metadata-file, IMDS
(--imds-url) or the fake's default document; the hostname the hostname step would set;
the document's userData and the kept customData unless --userdata/--customdata name
files; tags set by --tag over the document's. Nothing is written: the context is a dry
run, and --manifest's diffs are the writer's dry-run descriptions.

Exit codes: 0 rendered; 1 a template failed (RenderError: what and where); 2 usage, or
a template that cannot be read (UsageError).
"""

from __future__ import annotations

import base64

from bootagent import accounts, writer
from bootagent.boot import Boot
from bootagent.context import Context
from bootagent.errors import DocumentError, StepError, UsageError
from bootagent.imds.document import Instance, parse_document
from bootagent.imds.userdata import FIELD as USER_DATA_FIELD
from bootagent.imds.userdata import MAX_DECODED, UserDataError
from bootagent.state import InstanceState
from bootagent.steps import StepResult, templates
from bootagent.text import quoted

MAX_TAGS_GIVEN = 1000


def render_one(ctx: Context, args) -> bytes:
    """The output of the template SRC (a name under the templates directory, or the
    caller's path when it has a '/'), as UTF-8 bytes."""
    if not args.src:
        raise UsageError("render needs a template (a name under /etc/bootagent/templates/ or a "
                         "path with '/') or --manifest; see `bootagent render --help`")
    text = template_text(ctx, args.src)
    renderer, context = _renderer_and_context(ctx, args)
    from bootagent.render import render_entry

    try:
        output = render_entry(renderer, text, None, context)
    except StepError as err:
        raise StepError(f"render {args.src}: {err}") from None
    return (output or "").encode("utf-8")


def render_manifest(ctx: Context, args) -> tuple[int, str, list[str]]:
    """(exit code, report, error lines) for every entry of the configured manifest: whether
    its `when` holds, and the diff against the root's file (or "unchanged")."""
    if args.src:
        raise UsageError("render takes a template or --manifest, not both")
    entries = ctx.config.templates
    if not entries:
        return 0, f"no templates in the configuration ({ctx.path('/etc/bootagent/bootagent.yaml')})\n", []
    renderer, context = _renderer_and_context(ctx, args)
    from bootagent.render import render_entry

    lines, errors, code = [], [], 0
    for entry in entries:
        label = f"{entry.src} -> {entry.dest}"
        try:
            text = template_text(ctx, entry.src)
        except UsageError as err:
            errors.append(str(err))
            code = 2
            continue
        when = f"when {entry.when!r}" if entry.when else "always"
        try:
            owner = accounts.owner_ids(ctx, entry.owner, entry.group)
            output = render_entry(renderer, text, entry.when, context)
        except StepError as err:
            errors.append(f"{label}: {err}")
            code = max(code, 1)
            continue
        if output is None:
            lines.append(f"{label}: {when}: does not hold, not rendered\n")
            continue
        ctx.changes.clear()
        writer.write_file(ctx, entry.dest, output.encode("utf-8"), mode=entry.mode, owner=owner)
        diff = "".join(change if change.endswith("\n") else change + "\n" for _, change in ctx.changes)
        lines.append(f"{label}: {when}: {'holds' if entry.when else 'rendered'}, "
                     f"{'would change' if diff else 'unchanged'}\n{diff}")
    return code, "".join(lines), errors


def template_text(ctx: Context, src: str) -> str:
    """A template's text; UsageError (exit 2) when it cannot be read."""
    try:
        if "/" in src:
            source = _read_host_file(src, templates.MAX_TEMPLATE, "the template")
        else:
            source = templates.read_template(ctx, src)
        return templates.template_text(source)
    except StepError as err:
        raise UsageError(f"cannot read the template {quoted(src)}: {err}") from None


def _read_host_file(path: str, limit: int, what: str) -> bytes:
    """A file the caller named (never taken under the root); UsageError when unreadable."""
    from bootagent.runner import read_caller_file

    return read_caller_file(path, limit, what, UsageError)


def _renderer_and_context(ctx: Context, args):
    from bootagent.render import Renderer

    boot = _boot(ctx, args)
    customdata = (_read_host_file(args.customdata, MAX_DECODED, "the customData file") if args.customdata
                  else templates.kept_customdata(ctx))
    return Renderer(), templates.render_context(ctx, boot, customdata)


def _boot(ctx: Context, args) -> Boot:
    """A Boot as the templates step would see it: the document, the userData, and the
    hostname the hostname step would set (when it would fail or is off, the templates
    step's own fallback applies)."""
    instance = _document(ctx, args)
    if args.tag:
        instance = instance.replace(tags={**instance.tags, **parse_tags(args.tag)})
    boot = Boot(instance, InstanceState({"steps": {}}), api_version=ctx.config.imds.api_version)
    if args.userdata:
        data = _read_host_file(args.userdata, MAX_DECODED, "the userData file")
        try:  # the document's pipeline from its base64 on: a gzip file is unpacked as at boot
            boot.decode_once(USER_DATA_FIELD, base64.b64encode(data).decode("ascii"))
        except UserDataError:
            pass  # kept: the userData and templates steps meet it as at boot
    if ctx.config.hostname.enabled:
        from bootagent.steps.hostname import choose_hostname

        try:
            boot.hostname, _ = choose_hostname(instance, boot.user_data_mapping())
        except StepError as err:
            boot.results["hostname"] = StepResult.failed(str(err))
    return boot


def _document(ctx: Context, args) -> Instance:
    if args.metadata_file and args.imds_url:
        raise UsageError("render takes --metadata-file or --imds-url, not both")
    if args.metadata_file:
        from bootagent.runner import read_metadata_file

        try:
            return read_metadata_file(args.metadata_file)
        except DocumentError as err:
            raise UsageError(str(err)) from None
    if args.imds_url:
        from bootagent.http import Http
        from bootagent.imds.client import ImdsClient

        client = ImdsClient(Http(ctx.clock, ctx.sleep), ctx.imds_url, ctx.config.imds.api_version)
        return client.fetch_document(ctx.deadline)
    from bootagent.fake.imds import default_document

    return parse_document(default_document(), "the fake IMDS's default document")


def parse_tags(given: list[str]) -> dict[str, str]:
    """--tag KEY=VALUE options to a dict (a later one wins); UsageError on a malformed one."""
    if len(given) > MAX_TAGS_GIVEN:
        raise UsageError(f"more than {MAX_TAGS_GIVEN} --tag options")
    tags = {}
    for item in given:
        name, has_value, value = item.partition("=")
        if not has_value or not name:
            raise UsageError(f"--tag {quoted(item)} is not KEY=VALUE; e.g. --tag env=prod")
        tags[name] = value
    return tags

"""The command line: one small function per command, and the only place that turns an
error into an exit code and a printed line. No traceback reaches a user."""

from __future__ import annotations

import gc
import json
import os
import sys

from bootagent import __version__
from bootagent.errors import BootagentError, UsageError

# `metadata --endpoint`: the IMDS categories beside the instance (bootagent.imds.client.ENDPOINTS)
ENDPOINTS = ("loadbalancer", "scheduledevents", "versions", "attested/document")
ROOT_HELP = "provision the tree under DIR instead of / (default /)"
# Every command's options, read by argparse and by the fast path alike:
# (option, kind, default, help); kind is "str", "float", "flag", "optional" (a value that
# may be left out: argparse decides), "append" (repeatable) or a tuple of choices.
COMMAND_OPTIONS: dict[str, tuple[str, list]] = {
    "run": ("the boot job: fetch the instance document and provision", [
        ("--imds-url", "str", None, "IMDS base URL, or auto (IMDS_ENDPOINT, else 169.254.169.254)"),
        ("--metadata-file", "str", None, "read the instance document from FILE instead of IMDS"),
        ("--provisioning-media", "str", None, "read ovf-env.xml from PATH (a device, an ISO image, a "
                                              "directory or the file) instead of azure.provisioning_media"),
        ("--config", "str", None, "configuration file (default <root>/etc/bootagent/bootagent.yaml)"),
        ("--timeout", "float", None, "seconds to keep trying IMDS (default imds.timeout)"),
        ("--dry-run", "flag", False, "print what would change; change nothing"),
        ("--json", "flag", False, "print the result record as JSON"),
    ]),
    "status": ("the last run's result", [
        ("--wait", "flag", False, "block until this boot's run has finished"),
        ("--timeout", "float", 600.0, "longest wait in seconds (default 600)"),
        ("--json", "flag", False, "print the result record as JSON"),
        ("--timings", "flag", False, "the fetch's and each step's duration, slowest first"),
    ]),
    "clean": ("prepare an image for capture: the next boot is a first boot again", [
        ("--logs", "flag", False, "also remove run/bootagent/ and saved script output"),
        ("--machine-id", "flag", False, "also truncate /etc/machine-id"),
        ("--ssh-host-keys", "flag", False, "also remove /etc/ssh/ssh_host_* keys"),
    ]),
    "metadata": ("print IMDS (or one sub-path) as IMDS served it", [
        ("--format", ("json", "text"), None, "json (default) or text (needed for leaves)"),
        ("--media", "optional", None, "print what the provisioning media gives instead (PATH: a "
                                      "device, ISO image, directory or ovf-env.xml; else as configured)"),
        ("--imds-url", "str", None, "IMDS base URL, or auto"),
        ("--timeout", "float", None, "seconds to keep trying (default imds.timeout)"),
        ("--endpoint", ENDPOINTS, None, "read another IMDS category instead of the instance (no PATH)"),
    ]),
    "attest": ("verify this VM's attested document (signed by Azure) and print its claims", [
        ("--nonce", "str", None, "the nonce to ask for: 1 to 10 digits (default: 10 random digits)"),
        ("--ca-file", "str", None, "PEM file of trusted CAs and intermediates, beside the system's store"),
        ("--imds-url", "str", None, "IMDS base URL, or auto"),
        ("--timeout", "float", None, "seconds to keep trying IMDS (default imds.timeout)"),
        ("--json", "flag", False, "print the verified claims as one JSON object"),
    ]),
    "doctor": ("check the way to IMDS and the platform, one line per check", [
        ("--imds-url", "str", None, "IMDS base URL, or auto"),
        ("--json", "flag", False, "print the checks as one JSON object"),
    ]),
    "host-keys": ("make this instance's SSH host keys now (the early unit's job; no IMDS)", [
        ("--config", "str", None, "configuration file (default <root>/etc/bootagent/bootagent.yaml)"),
    ]),
    "fake-imds": ("serve a local IMDS and wireserver for tests", []),  # options: bootagent.fake
    "render": ("print a template as the boot would render it; writes nothing", [
        ("--manifest", "flag", False, "render every entry of the configured manifest, with diffs"),
        ("--metadata-file", "str", None, "the instance document from FILE (default: the fake's)"),
        ("--imds-url", "str", None, "the instance document from IMDS at this URL, or auto"),
        ("--timeout", "float", None, "seconds to keep trying IMDS (default imds.timeout)"),
        ("--userdata", "str", None, "userData from FILE (its bytes, not base64) instead of the document's"),
        ("--customdata", "str", None, "customData from FILE instead of the kept one"),
        ("--tag", "append", None, "KEY=VALUE: set a tag (repeatable)"),
        ("--config", "str", None, "configuration file (default <root>/etc/bootagent/bootagent.yaml)"),
    ]),
}
# A command's optional positional argument: (name, default, help).
POSITIONAL = {"metadata": ("path", "", "e.g. compute/vmId or compute/tagsList")}
POSITIONAL["render"] = ("src", "", "a template name under <root>/etc/bootagent/templates/, or a path with '/'")


def _dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def _fast_parse(argv: list[str]):
    """The arguments of a plain invocation (`run --root DIR --imds-url URL`, `status`...)
    without importing or building argparse (measured: about 8 ms, each boot). Anything
    it does not know for certain (help, errors, abbreviations, values that look like
    options, `--`, fake-imds) gives None, and argparse decides, as before."""
    if not argv or argv[0] not in COMMAND_OPTIONS or argv[0] == "fake-imds":
        return None
    command = argv[0]
    options = {"--root": ("str", "/")}
    options.update((option, (kind, default)) for option, kind, default, _ in COMMAND_OPTIONS[command][1])
    values: dict[str, object] = {_dest(option): default for option, (kind, default) in options.items()}
    positional = POSITIONAL.get(command)
    if positional:
        values[positional[0]] = positional[1]
    seen_positional = False
    rest = iter(argv[1:])
    for arg in rest:
        if not arg.startswith("-"):
            if not positional or seen_positional:
                return None
            values[positional[0]], seen_positional = arg, True
            continue
        option, has_inline, inline = arg.partition("=")
        if option not in options:
            return None
        kind, _ = options[option]
        if kind in ("optional", "append"):  # a value that may be left out, or repeated: argparse decides
            return None
        if kind == "flag":
            if has_inline:
                return None
            values[_dest(option)] = True
            continue
        value = inline if has_inline else next(rest, None)
        if value is None or (not has_inline and value.startswith("-")):
            return None
        if kind == "float":
            try:
                values[_dest(option)] = float(value)
            except ValueError:
                return None
            continue
        if isinstance(kind, tuple) and value not in kind:
            return None
        values[_dest(option)] = value
    from types import SimpleNamespace

    return SimpleNamespace(command=command, **values)


def _parser(argv: list[str]):
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message):  # one line, exit 2, as for every usage error
            raise UsageError(f"{message}; see `{self.prog} --help`")

    parser = _Parser(prog="bootagent", description="First-boot provisioning for Azure VMs and Arc servers.")
    parser.add_argument("--version", action="version", version=f"bootagent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, options) in COMMAND_OPTIONS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--root", default="/", help=ROOT_HELP)
        if name in POSITIONAL:
            dest, default, help_positional = POSITIONAL[name]
            sub.add_argument(dest, nargs="?", default=default, help=help_positional)
        for option, kind, default, help_option in options:
            if kind == "flag":
                sub.add_argument(option, action="store_true", help=help_option)
            elif kind == "float":
                sub.add_argument(option, type=float, default=default, help=help_option)
            elif kind == "optional":
                sub.add_argument(option, nargs="?", const="", default=default, metavar="PATH",
                                 help=help_option)
            elif isinstance(kind, tuple):
                sub.add_argument(option, choices=kind, default=default, help=help_option)
            elif kind == "append":
                sub.add_argument(option, action="append", default=default, help=help_option)
            else:
                sub.add_argument(option, default=default, help=help_option)
        if name == "fake-imds" and "fake-imds" in argv:  # its options live with the fake
            from bootagent.fake.command import add_arguments
            add_arguments(sub)
    return parser


# Options that stand for a configuration key: checked by the same rule as the key.
OPTION_KEYS = {"timeout": ("--timeout", "imds.timeout"), "imds_url": ("--imds-url", "imds.url")}


def _check_options(args) -> None:
    from bootagent.config import check_option

    for dest, (option, key) in OPTION_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            setattr(args, dest, check_option(option, key, value))


def _context(args, *, read_config: bool = True, imds: bool = True):
    """The context every command runs in. `read_config`: the root's configuration (or
    --config), else the defaults (status needs none). `imds`: resolve the IMDS URL too,
    for the commands that talk to IMDS."""
    from bootagent import config
    from bootagent.context import Context
    from bootagent.log import Log

    if not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root} is not a directory; create it or fix the path")
    ctx = Context(root=args.root, dry_run=getattr(args, "dry_run", False), log=Log())
    ctx.config = config.load(ctx, getattr(args, "config", None)) if read_config else config.defaults()
    if read_config and ctx.live and ctx.config.azure.resource_disk.device != "auto":
        from bootagent.steps.resource_disk import check_config
        check_config(ctx)  # a device on the OS disk: exit 2 before anything runs
    if imds:
        from bootagent.runner import resolve_imds_url

        url = getattr(args, "imds_url", None) or ctx.config.imds.url
        ctx.imds_url, ctx.on_arc = resolve_imds_url(url, ctx.env)
    timeout = getattr(args, "timeout", None)
    ctx.deadline = ctx.clock() + (timeout if timeout is not None else ctx.config.imds.timeout)
    return ctx


def cmd_run(args) -> int:
    from bootagent import runner

    ctx = _context(args)
    code, record = runner.run(ctx, metadata_file=args.metadata_file,
                              provisioning_media=args.provisioning_media)
    if args.dry_run:
        for _, change in ctx.changes:
            sys.stdout.write(change if change.endswith("\n") else change + "\n")
        if not ctx.changes:
            sys.stdout.write("nothing would change\n")
    if args.json:
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
    return code


def cmd_status(args) -> int:
    from bootagent import status

    ctx = _context(args, read_config=False, imds=False)
    code, text = status.report(ctx, wait=args.wait, timeout=args.timeout, as_json=args.json,
                               timings=args.timings)
    sys.stdout.write(text)
    return code


def cmd_clean(args) -> int:
    """Also reads the configuration, as the boot will: a configuration that every VM made
    from the image would refuse fails the capture (exit 2) instead, and a valid one leaves
    its parse cached, so the image's first boot reads it without PyYAML."""
    from bootagent import clean

    ctx = _context(args, imds=False)
    for line in clean.clean(ctx, logs=args.logs, machine_id=args.machine_id, host_keys=args.ssh_host_keys):
        sys.stdout.write(line + "\n")
    return 0


def cmd_metadata(args) -> int:
    from bootagent.http import Http
    from bootagent.imds.client import ImdsClient

    ctx = _context(args)
    if getattr(args, "endpoint", None):
        return _metadata_endpoint(ctx, args)
    fmt = args.format or "json"
    if getattr(args, "media", None) is not None:
        from bootagent.media.show import describe

        sys.stdout.write(describe(ctx, args.media or None, fmt))
        return 0
    client = ImdsClient(Http(ctx.clock, ctx.sleep), ctx.imds_url, ctx.config.imds.api_version)
    body = client.fetch_path(args.path, fmt, ctx.deadline)
    if fmt == "json":
        try:
            text = json.dumps(json.loads(body), indent=2) + "\n"
        except ValueError:
            text = body.decode("utf-8", "replace")
    else:
        text = body.decode("utf-8", "replace")
        text = text if text.endswith("\n") else text + "\n"
    sys.stdout.write(text)
    return 0


def _metadata_endpoint(ctx, args) -> int:
    """`metadata --endpoint CATEGORY`: that category as IMDS served it, JSON pretty-printed."""
    from bootagent.http import Http
    from bootagent.imds.client import ImdsClient

    if args.path:
        raise UsageError(f"PATH is a sub-path of /metadata/instance; give either PATH or --endpoint "
                         f"{args.endpoint}, not both")
    if args.format == "text":
        raise UsageError(f"--endpoint {args.endpoint} is served as JSON only; leave out --format text")
    client = ImdsClient(Http(ctx.clock, ctx.sleep), ctx.imds_url, ctx.config.imds.api_version)
    body = client.fetch_endpoint(args.endpoint, ctx.deadline)
    try:
        text = json.dumps(json.loads(body), indent=2) + "\n"
    except ValueError:
        text = body.decode("utf-8", "replace")
    sys.stdout.write(text)
    return 0


def cmd_attest(args) -> int:
    """The attested document, verified (exit 0), refused naming the check (1), or IMDS
    not to be had (3). The only command that runs openssl."""
    from bootagent.attest.command import attest, report

    ctx = _context(args)
    result = attest(ctx, nonce=args.nonce, ca_file=args.ca_file)
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if args.json else report(result))
    return 0


def cmd_doctor(args) -> int:
    from bootagent import doctor

    ctx = _context(args)
    code, text = doctor.report(ctx, as_json=args.json)
    sys.stdout.write(text)
    return code


def cmd_host_keys(args) -> int:
    """The host_keys step alone, for units/bootagent-host-keys.service, which starts it
    before systemd remounts the root read-write: ssh-keygen (RSA above all) works in /run
    meanwhile, and the keys are installed once the root is writable. Its instance is the
    DMI system UUID (no document is fetched): with none it only makes missing keys, and
    the boot's run decides by the vmId. It takes the step's own lock, not the run lock
    (which lives on the root): the run fetches and provisions beside it, and only the
    run's host_keys step waits, then finds this instance's keys in place. It logs its
    result and writes nothing but the keys and their instance record."""
    from bootagent.log import log_step
    from bootagent.steps import host_keys

    ctx = _context(args, imds=False)
    outcome = host_keys.run(ctx, None, remount_wait=host_keys.REMOUNT_TIMEOUT)
    log_step(ctx, "host_keys", outcome)
    return 1 if outcome.status == "failed" else 0


def cmd_render(args) -> int:
    """Writes nothing: a dry-run context, so even the configuration's parse cache is not stored."""
    from bootagent import render_command

    args.dry_run = True
    ctx = _context(args, imds=args.imds_url is not None)
    if args.manifest:
        code, text, errors = render_command.render_manifest(ctx, args)
        sys.stdout.write(text)
        for line in errors:
            sys.stderr.write(f"bootagent: error: {line}\n")
        return code
    sys.stdout.buffer.write(render_command.render_one(ctx, args))
    return 0


def cmd_fake_imds(args) -> int:
    from bootagent.fake.server import serve

    return serve(args)


COMMANDS = {"run": cmd_run, "status": cmd_status, "clean": cmd_clean, "metadata": cmd_metadata,
            "doctor": cmd_doctor, "host-keys": cmd_host_keys, "fake-imds": cmd_fake_imds}
COMMANDS["attest"] = cmd_attest
COMMANDS["render"] = cmd_render


def main(argv: list[str] | None = None) -> int:
    gc.disable()  # a run this short needs no cyclic collector
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = _fast_parse(argv) or _parser(argv).parse_args(argv)
        _check_options(args)
        code = COMMANDS[args.command](args)
    except BootagentError as err:
        sys.stderr.write(f"bootagent: error: {err}\n")
        code = err.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("bootagent: interrupted\n")
        code = 130
    except Exception as err:  # a bug: still one line, never a traceback
        sys.stderr.write(f"bootagent: internal error: {type(err).__name__}: {err}; please report it\n")
        code = 1
    return code


def entry() -> None:
    """Console-script entry: flush, then leave without the interpreter's slow shutdown."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)

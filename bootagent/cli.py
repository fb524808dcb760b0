"""The command line: one small function per command, and the only place that turns an
error into an exit code and a printed line. No traceback reaches a user."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys

from bootagent import __version__
from bootagent.errors import BootagentError, UsageError

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every usage error
        raise UsageError(f"{message}; see `bootagent {self.prog.split()[-1]} --help`")


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="bootagent", description="First-boot provisioning for Azure VMs and Arc servers.")
    parser.add_argument("--version", action="version", version=f"bootagent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--root", default="/", help="provision the tree under DIR instead of / (default /)")
        return sub

    run = command("run", "the boot job: fetch the instance document and provision")
    run.add_argument("--imds-url", help="IMDS base URL, or auto (IMDS_ENDPOINT, else 169.254.169.254)")
    run.add_argument("--metadata-file", help="read the instance document from FILE instead of IMDS")
    run.add_argument("--config", help="configuration file (default <root>/etc/bootagent/bootagent.yaml)")
    run.add_argument("--timeout", type=float, help="seconds to keep trying IMDS (default imds.timeout)")
    run.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    run.add_argument("--json", action="store_true", help="print the result record as JSON")

    status = command("status", "the last run's result")
    status.add_argument("--wait", action="store_true", help="block until this boot's run has finished")
    status.add_argument("--timeout", type=float, default=600.0, help="longest wait in seconds (default 600)")
    status.add_argument("--json", action="store_true", help="print the result record as JSON")

    clean = command("clean", "prepare an image for capture: the next boot is a first boot again")
    clean.add_argument("--logs", action="store_true", help="also remove run/bootagent/ and saved script output")
    clean.add_argument("--machine-id", action="store_true", help="also truncate /etc/machine-id")
    clean.add_argument("--ssh-host-keys", action="store_true", help="also remove /etc/ssh/ssh_host_* keys")

    metadata = command("metadata", "print IMDS (or one sub-path) as IMDS served it")
    metadata.add_argument("path", nargs="?", default="", help="e.g. compute/vmId or compute/tagsList")
    metadata.add_argument("--format", choices=("json", "text"), default=None,
                          help="json (default) or text (needed for leaves)")
    metadata.add_argument("--imds-url", help="IMDS base URL, or auto")
    metadata.add_argument("--timeout", type=float, help="seconds to keep trying (default imds.timeout)")

    doctor = command("doctor", "check the way to IMDS and the platform, one line per check")
    doctor.add_argument("--imds-url", help="IMDS base URL, or auto")
    doctor.add_argument("--json", action="store_true", help="print the checks as one JSON object")

    fake = command("fake-imds", "serve a local IMDS and wireserver for tests")
    if "fake-imds" in argv:  # its options live with the fake; only this command pays for them
        from bootagent.fake.command import add_arguments
        add_arguments(fake)
    return parser


def _context(args, *, need_config: bool = True):
    from bootagent import config
    from bootagent.context import Context
    from bootagent.log import Log

    if not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root} is not a directory; create it or fix the path")
    ctx = Context(root=args.root, dry_run=getattr(args, "dry_run", False), log=Log())
    ctx.config = config.load(ctx, getattr(args, "config", None)) if need_config else config.defaults()
    if need_config:  # the commands that talk to IMDS; status and clean need no URL (nor the runner)
        from bootagent.runner import resolve_imds_url

        url = getattr(args, "imds_url", None) or ctx.config["imds"]["url"]
        ctx.imds_url, ctx.on_arc = resolve_imds_url(url, ctx.env)
    timeout = getattr(args, "timeout", None)
    ctx.deadline = ctx.clock() + (timeout if timeout is not None else ctx.config["imds"]["timeout"])
    return ctx


def cmd_run(args) -> int:
    from bootagent import runner

    ctx = _context(args)
    code, record = runner.run(ctx, metadata_file=args.metadata_file)
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

    ctx = _context(args, need_config=False)
    code, text = status.report(ctx, wait=args.wait, timeout=args.timeout, as_json=args.json)
    sys.stdout.write(text)
    return code


def cmd_clean(args) -> int:
    from bootagent import clean

    ctx = _context(args, need_config=False)
    for line in clean.clean(ctx, logs=args.logs, machine_id=args.machine_id, host_keys=args.ssh_host_keys):
        sys.stdout.write(line + "\n")
    return 0


def cmd_metadata(args) -> int:
    from bootagent.http import Http
    from bootagent.imds.client import ImdsClient

    ctx = _context(args)
    fmt = args.format or "json"
    client = ImdsClient(Http(ctx.clock, ctx.sleep), ctx.imds_url, ctx.config["imds"]["api_version"])
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


def cmd_doctor(args) -> int:
    from bootagent import doctor

    ctx = _context(args)
    code, text = doctor.report(ctx, as_json=args.json)
    sys.stdout.write(text)
    return code


def cmd_fake_imds(args) -> int:
    from bootagent.fake.server import serve

    return serve(args)


COMMANDS = {"run": cmd_run, "status": cmd_status, "clean": cmd_clean, "metadata": cmd_metadata,
            "doctor": cmd_doctor, "fake-imds": cmd_fake_imds}


def main(argv: list[str] | None = None) -> int:
    gc.disable()  # a run this short needs no cyclic collector
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = _parser(argv).parse_args(argv)
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

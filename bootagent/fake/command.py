"""The ``bootagent fake-imds`` command: options, and the body that serves until a
signal. ``add_arguments`` lets the main CLI reuse the options; ``main`` makes
``python -m bootagent.fake`` work on its own.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from .faults import FaultPlanError
from .imds import load_document
from .pki import Issued, PkiError
from .scheduled import EVENT_TYPES

FAKE_IMDS_HELP = (
    "Serve a local Azure IMDS (instance metadata, attested data signed by a test CA, "
    "scheduled events, load balancer, api-versions, managed-identity "
    "tokens) and wireserver (goal state, health reports) on one port, behaving as "
    "the IMDS documentation says, to test images and templates without Azure. The "
    "URL it listens on is the first line of its output; each request is logged as "
    "one JSON line; SIGTERM or Ctrl-C stops it cleanly."
)

FAULT_HELP = (
    "comma-separated faults for the first requests, in order: an HTTP status "
    "(500, 410, 429, 404, 400...), slow:SECONDS, hang, reset, truncate, html, "
    "big:SIZE (e.g. big:20M), notdoc; prefix ws: or id: to aim at the wireserver "
    "or the identity endpoint instead of /metadata/instance; suffix * to never "
    "recover (or always:FAULT) or *N for N requests; versions:V1+V2 restricts "
    "the api-versions served. Example: 500,410,429,ws:500"
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The fake-imds options, for this module's parser and for the main CLI's."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0,
                        help="port to listen on (default 0: a free port, printed at start)")
    parser.add_argument("--metadata", metavar="FILE",
                        help="serve this instance document (JSON) instead of the shipped "
                             "Linux VM example")
    parser.add_argument("--fault", metavar="PLAN", help=FAULT_HELP)
    parser.add_argument("--log", metavar="FILE",
                        help="append one JSON line per request to FILE")
    parser.add_argument("--no-identity", action="store_true",
                        help="answer token requests as a VM without a managed identity")
    parser.add_argument("--arc", action="store_true",
                        help="behave as Azure Arc: 401 challenge with a secret file for "
                             "tokens, no wireserver, no osProfile in the default document")
    parser.add_argument("--arc-tokens-dir", metavar="DIR",
                        help="where --arc writes its secret files (default: a temporary "
                             "directory, removed at exit)")
    parser.add_argument("--rate-limit", type=int, default=5, metavar="N",
                        help="requests per second to /metadata/* before 429 "
                             "(default 5, as IMDS; 0 disables)")
    parser.add_argument("--ca-out", metavar="FILE",
                        help="write the test CA that signs attested documents to FILE (PEM), "
                             "for `bootagent attest --ca-file FILE`")
    parser.add_argument("--event", action="append", default=[], metavar="TYPE",
                        choices=sorted(EVENT_TYPES),
                        help="a scheduled event to serve (repeatable): " + ", ".join(EVENT_TYPES))
    parser.add_argument("--attest-cert", metavar="FILE",
                        help="testing verifiers: sign attested documents with this certificate "
                             "(PEM) instead of the test CA's leaf; needs --attest-key")
    parser.add_argument("--attest-key", metavar="FILE", help="the --attest-cert's private key (PEM)")
    parser.add_argument("--attest-chain", metavar="FILE",
                        help="intermediates (PEM) to send along with --attest-cert")
    parser.add_argument("--media-out", metavar="DIR|FILE.iso",
                        help="also write the provisioning media for the document: ovf-env.xml "
                             "into DIR, or an image FILE (.iso/.img) to attach as a CD")
    parser.add_argument("--password-file", metavar="FILE",
                        help="the admin password for --media-out, read from FILE (first line)")
    parser.add_argument("--custom-data", metavar="FILE",
                        help="customData for --media-out: FILE's bytes (cloud-config, a script...)")
    parser.add_argument("--media-format", choices=("iso9660", "udf"),
                        help="the image's file system for --media-out (default iso9660; udf: "
                             "UDF with an ISO 9660 bridge, made by genisoimage)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bootagent fake-imds", description=FAKE_IMDS_HELP)
    return add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    return serve(build_parser().parse_args(argv))


def serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 0 then, 2 on a bad document, plan or address."""
    import gc

    from .server import FakeImds  # here: server.py imports this module

    gc.enable()  # the agent's short runs go without it; a fake may serve for days

    try:
        signer = _attest_signer(args)
        fake = FakeImds(_document_from(args), faults=getattr(args, "fault", None),
                        host=getattr(args, "host", "127.0.0.1"), port=getattr(args, "port", 0),
                        identity=not getattr(args, "no_identity", False),
                        arc=getattr(args, "arc", False),
                        arc_tokens_dir=getattr(args, "arc_tokens_dir", None),
                        log_path=getattr(args, "log", None),
                        rate_limit=getattr(args, "rate_limit", 5),
                        events=getattr(args, "event", None) or (), attest_signer=signer)
    except (ValueError, FaultPlanError) as exc:
        return _usage_error(str(exc))
    try:
        _prepare_attested(fake, getattr(args, "ca_out", None))
    except (OSError, PkiError) as exc:
        fake.stop()
        return _usage_error(str(exc) if isinstance(exc, PkiError)
                            else f"--ca-out {exc.filename}: {exc.strerror or exc}")
    try:
        media = _write_media(args, fake.document)
    except (ValueError, OSError) as exc:
        fake.stop()
        return _usage_error(f"cannot write the provisioning media: {exc}")
    try:
        fake.start()
    except OSError as exc:
        fake.stop()
        where = (f"cannot open the log {exc.filename}" if exc.filename
                 else f"cannot listen on {fake.host}:{fake.port}")
        return _usage_error(f"{where}: {exc.strerror or exc}")
    stop, previous_handlers = _stop_on_signals()
    try:
        print(fake.url, flush=True)
        _announce(fake)
        if media:
            print(f"fake-imds: provisioning media {media}", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        fake.stop()
        _restore(previous_handlers)
    return 0


def _document_from(args) -> dict | None:
    path = getattr(args, "metadata", None)
    return load_document(path) if path else None


def _attest_signer(args) -> Issued | None:
    """The test-only signer of --attest-cert/--attest-key/--attest-chain, if given."""
    cert, key, chain = (getattr(args, name, None) for name in ("attest_cert", "attest_key", "attest_chain"))
    if not cert and not key and not chain:
        return None
    if not (cert and key):
        raise ValueError("--attest-cert and --attest-key go together")
    if getattr(args, "ca_out", None):
        raise ValueError("--ca-out writes the fake's own test CA, which --attest-cert replaces")
    for option, path in (("--attest-cert", cert), ("--attest-key", key), ("--attest-chain", chain)):
        if path and not Path(path).is_file():
            raise ValueError(f"{option} {path}: no such file")
    return Issued(cert, key, chain)


def _prepare_attested(fake, ca_out: str | None) -> None:
    """Make the test CA at start (the command serves at once what it announces) and write
    its certificate where --ca-out says, before the URL is printed."""
    try:
        fake.attested.prepare(fake.document)
    except PkiError as exc:
        if ca_out:
            raise
        # without openssl everything else still serves; attested requests answer 500
        print(f"fake-imds: no attested documents: {exc}", file=sys.stderr, flush=True)
        return
    if ca_out and fake.attested.ca_cert is not None:
        Path(ca_out).write_bytes(fake.attested.ca_cert.read_bytes())
def _write_media(args, document: dict) -> str | None:
    """--media-out: ovf-env.xml for the served document; the password from a file only."""
    out = getattr(args, "media_out", None)
    if not out:
        if getattr(args, "password_file", None) or getattr(args, "custom_data", None):
            raise ValueError("--password-file and --custom-data need --media-out")
        return None
    from .media import build_ovf, write_media

    password = None
    if getattr(args, "password_file", None):
        with open(args.password_file, "rb") as handle:
            lines = handle.read(4096).decode("utf-8").splitlines()
        password = lines[0] if lines else None
    custom_data = None
    if getattr(args, "custom_data", None):
        with open(args.custom_data, "rb") as handle:
            custom_data = handle.read(1 << 20)
    return write_media(out, build_ovf(document, password, custom_data), getattr(args, "media_format", None))


def _usage_error(message: str) -> int:
    print(f"bootagent fake-imds: {message}", file=sys.stderr, flush=True)
    return 2


def _announce(fake) -> None:
    """What is served where, on stderr (stdout holds only the URL)."""
    lines = [f"fake-imds: IMDS and identity at {fake.url}/metadata/"]
    lines.append("fake-imds: no wireserver (Arc)" if fake.arc
                 else f"fake-imds: wireserver at {fake.url}/machine/")
    if fake.arc:
        lines.append(f"fake-imds: Arc secret files in {fake.arc_tokens_dir}")
    if fake.plan.text:
        lines.append(f"fake-imds: fault plan {fake.plan.text}")
    if fake.log_path:
        lines.append(f"fake-imds: logging requests to {fake.log_path}")
    if fake.attested.ca_cert is not None:
        lines.append("fake-imds: attested documents signed by a test CA made at start")
    if fake.scheduled.events:
        kinds = ", ".join(event["EventType"] for event in fake.scheduled.events)
        lines.append(f"fake-imds: scheduled events {kinds}")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _stop_on_signals() -> tuple[threading.Event, dict]:
    """An event set by SIGTERM or SIGINT (no KeyboardInterrupt, no traceback)."""
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    return stop, previous


def _restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)



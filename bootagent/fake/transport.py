"""The HTTP side of the fake: parse each request, hand it to the FakeImds, and
deliver the reply, or the fault that replaces it (delay, hang, reset, cut body,
huge body).

HTTP/1.1 with keep-alive like IMDS; every reply has a Content-Length, and the
connection is closed after any fault delivery so a client never waits on a
half-used connection.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from .faults import Fault
from .messages import JSON_TYPE, Reply, Request

MAX_BODY = 1024 * 1024
HANG_LIMIT = 3600.0
HANG_POLL = 0.1
CHUNK = 64 * 1024


class FakeHTTPServer(ThreadingHTTPServer):
    """Daemon threads, and closing never waits for a hanging handler."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address, fake):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.fake = fake
        super().__init__(address, FakeHandler)

    def handle_error(self, request, client_address):
        """A client that hangs up (or a connection cut at stop) is normal: say nothing.
        Anything else is one line on stderr, never socketserver's traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        sys.stderr.write(f"fake-imds: request from {client_address[0]} failed: "
                         f"{type(error).__name__}: {error}\n")


class FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bootagent-fake-imds"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection is dropped after this
    server: FakeHTTPServer

    def setup(self):
        super().setup()
        self.server.fake.track_connection(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.fake.untrack_connection(self.connection)

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        """Silent: the fake keeps its own JSON log."""

    def _dispatch(self):
        request, refusal = self._read_request()
        fake = self.server.fake
        if refusal:
            reply, fault = refusal, None
            fake.record(request, reply, None)
        else:
            reply, fault = fake.handle(request)
        self._deliver(reply, fault)

    def _read_request(self) -> tuple[Request, Reply | None]:
        parts = urlsplit(self.path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        request = Request(self.command, parts.path or "/", query, self.headers)
        length = self.headers.get("Content-Length")
        if length is None:
            refusal = None
            if self.command == "POST" or self.headers.get("Transfer-Encoding"):
                refusal = _plain(411, "Length Required")
                self.close_connection = True
            return request, refusal
        if not length.isdigit() or int(length) > MAX_BODY:
            self.close_connection = True
            return request, _plain(413, "Request body too large")
        request.body = self.rfile.read(int(length))
        return request, None

    def _deliver(self, reply: Reply, fault: Fault | None):
        kind = fault.kind if fault else None
        stopping = self.server.fake.stopping
        if fault and kind == "slow" and stopping.wait(fault.seconds):
            kind = "reset"
        if kind == "hang":
            self._hang()
            kind = "reset"
        if kind == "reset":
            self._reset()
        elif fault and kind == "big":
            self._stream_big(fault.size)
        else:
            self._send(reply, truncate=kind == "truncate", close=kind is not None)

    def _send(self, reply: Reply, *, truncate: bool, close: bool):
        body = reply.body
        declared = max(len(body), 64) if truncate else len(body)
        self.send_response(reply.status)
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(declared))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if close or truncate:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self._write(body[: len(body) // 2] if truncate else body)

    def _stream_big(self, size: int):
        """A valid JSON object of exactly ``size`` bytes, never held whole in memory."""
        head = b'{"compute":{"vmId":"00000000-0000-0000-0000-000000000000","padding":"'
        tail = b'"}}'
        self.send_response(200)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Content-Length", str(size))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        padding = size - len(head) - len(tail)  # the plan's minimum size leaves room
        chunk = b"x" * CHUNK
        if not self._write(head):
            return
        while padding > 0:
            piece = chunk if padding >= CHUNK else chunk[:padding]
            if not self._write(piece):
                return
            padding -= len(piece)
        self._write(tail)

    def _write(self, data: bytes) -> bool:
        """Write, tolerating a client that went away; False when it did."""
        try:
            self.wfile.write(data)
            return True
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
            return False

    def _hang(self):
        """Answer nothing until the server stops or the client gives up (so that an
        ``always:hang`` plan does not pile up a thread per abandoned request)."""
        waited, stopping = 0.0, self.server.fake.stopping
        while waited < HANG_LIMIT and not stopping.wait(HANG_POLL):
            waited += HANG_POLL
            if _peer_closed(self.connection):
                return

    def _reset(self):
        """Close the connection with an RST and no answer at all."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()
        except OSError:
            pass


def _peer_closed(connection: socket.socket) -> bool:
    """True once the client has closed its end (readable, and nothing to read)."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _plain(status: int, message: str) -> Reply:
    return Reply(status, (message + "\n").encode("utf-8"), "text/plain; charset=utf-8")

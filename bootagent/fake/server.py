"""FakeImds: a local IMDS, identity endpoint and wireserver on one loopback port.

It behaves as the IMDS documentation says (see ``imds.py``; the attested, scheduled
events and load balancer categories in ``attested.py``, ``scheduled.py`` and
``loadbalancer.py``, under the instance's header, rate and fault rules), plays the
platform's side of managed identity and Azure Arc (``identity.py``) and of the
report-ready handshake (``wireserver.py``), logs every request as one JSON
line, and injects the failures of a fault plan (``faults.py`` draws the
grammar). Stdlib only, so that importing it costs the agent nothing.

Order of handling: rate limit (for /metadata/* paths only), then the fault
plan, then the endpoint's own checks. The rate limit is the documented 5
requests in any sliding second, counted over every /metadata/* request
(instance, versions and identity alike; the real identity endpoint allows 20/s
on its own, the fake keeps one budget); wireserver requests are not limited.
A request answered 429 still counts.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import TextIO

from . import imds
from .attested import ATTESTED_PATH, AttestedEndpoint
from .command import FAKE_IMDS_HELP, add_arguments, main, serve  # noqa: F401 - API
from .faults import Fault, FaultPlan
from .identity import IDENTITY_PATH, ArcChallenge, IdentityEndpoint
from .imds import default_document  # noqa: F401 - part of this module's API
from .loadbalancer import LOADBALANCER_PATH, loadbalancer_reply
from .messages import HTML_TYPE, JSON_TYPE, Reply, Request, error_reply, html_error_page, json_reply, phrase
from .scheduled import SCHEDULED_EVENTS_PATH, ScheduledEvents
from .transport import FakeHTTPServer
from .wireserver import Wireserver, error_xml, goal_state_of

REPLACING_FAULTS = ("status", "html", "big", "hang", "reset")
CATEGORY_PATHS = (ATTESTED_PATH, SCHEDULED_EVENTS_PATH, LOADBALANCER_PATH)
# requests (and health reports) kept in memory: a fake that serves an image pipeline for
# days must not grow without bound; the --log file keeps every one
KEEP_REQUESTS = 10_000


class KeptLog(list):
    """A list that keeps only its last `keep` entries; `dropped` counts the others."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep = keep
        self.dropped = 0

    def append(self, entry) -> None:
        super().append(entry)
        if len(self) > self.keep:
            excess = len(self) - self.keep
            del self[:excess]
            self.dropped += excess


class RateLimiter:
    """At most ``limit`` requests in any sliding window of ``window`` seconds."""

    def __init__(self, limit: int = 5, window: float = 1.0, clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Count this request; False when it is one too many. A limit of 0 disables."""
        if not self.limit:
            return True
        with self._lock:
            now = self.clock()
            while self._times and self._times[0] <= now - self.window:
                self._times.popleft()
            self._times.append(now)
            return len(self._times) <= self.limit


class FakeImds:
    """Serve IMDS, identity and wireserver on ``url`` from a daemon thread."""

    def __init__(self, document: dict | None = None, *, faults: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, identity: bool = True,
                 arc: bool = False, arc_tokens_dir: str | None = None,
                 log_path: str | None = None, rate_limit: int = 5, events=(),
                 attest_signer=None, keep_requests: int = KEEP_REQUESTS):
        self._lock = threading.Lock()
        self._document = document if document is not None else default_document(arc=arc)
        self.plan = FaultPlan(faults)
        self.host, self.port, self.url = host, port, ""
        self.arc = arc
        self.arc_challenge = ArcChallenge(arc_tokens_dir) if arc else None
        self.identity = IdentityEndpoint(enabled=identity, arc=self.arc_challenge)
        self.wireserver = Wireserver()
        self.attested = AttestedEndpoint(attest_signer)
        self.scheduled = ScheduledEvents(events)
        self.rate_limiter = RateLimiter(rate_limit)
        self.log_path = log_path
        self.requests: KeptLog = KeptLog(keep_requests)
        self.health_reports: KeptLog = KeptLog(keep_requests)
        self.stopping = threading.Event()
        self._connections: set = set()
        self._httpd: FakeHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._log_file: TextIO | None = None

    # -- the document and the plan, replaceable between runs --------------------

    @property
    def document(self) -> dict:
        with self._lock:
            return self._document

    @document.setter
    def document(self, value: dict) -> None:
        with self._lock:
            self._document = value

    def set_faults(self, plan: str | None) -> None:
        """Replace the fault plan (FaultPlanError when it does not parse)."""
        self.plan = FaultPlan(plan)

    @property
    def arc_tokens_dir(self) -> str | None:
        return str(self.arc_challenge.tokens_dir) if self.arc_challenge else None

    def goal_state(self) -> dict:
        """The incarnation, container id and instance id the wireserver serves now."""
        return goal_state_of(self.document, self.wireserver.incarnation)

    def versions(self) -> tuple[str, ...]:
        return self.plan.versions or imds.SUPPORTED_VERSIONS

    # -- life cycle ---------------------------------------------------------

    def start(self) -> "FakeImds":
        """Listen and serve from a daemon thread; calling it again changes nothing."""
        if self._httpd:
            return self
        self.stopping.clear()
        if self.log_path:
            self._log_file = open(self.log_path, "a", encoding="utf-8")
        self._httpd = FakeHTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        shown_host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown_host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name=f"fake-imds-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hanging handlers and open connections; idempotent."""
        self.stopping.set()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self._close_connections()
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            if self._log_file:
                self._log_file.close()
                self._log_file = None
        if self.arc_challenge:
            self.arc_challenge.cleanup()
        self.attested.cleanup()

    def __enter__(self) -> "FakeImds":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def track_connection(self, connection) -> None:
        with self._lock:
            self._connections.add(connection)

    def untrack_connection(self, connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _close_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(2)  # SHUT_RDWR: wakes a handler blocked on it
            except OSError:
                pass

    # -- requests -------------------------------------------------------------

    def count(self, path_prefix: str = "/metadata/instance", method: str = "GET") -> int:
        """Matching requests among those kept (all of them below KEEP_REQUESTS)."""
        with self._lock:
            return sum(1 for entry in self.requests
                       if entry["path"].startswith(path_prefix) and entry["method"] == method)

    def handle(self, request: Request) -> tuple[Reply, Fault | None]:
        """The reply to one request and the fault, if any, that shapes its delivery."""
        fault = None
        try:
            reply, fault = self._answer(request)
        except Exception as exc:  # a bug in the fake must not look like a hang
            reply = error_reply(500, f"fake-imds internal error: {type(exc).__name__}: {exc}")
        self.record(request, reply, fault)
        return reply, fault

    def _answer(self, request: Request) -> tuple[Reply, Fault | None]:
        target = _target_of(request.path)
        if _is_metadata(request.path) and not self.rate_limiter.allow():
            return error_reply(429, "Too many requests"), None
        if target == "ws" and self.arc:
            return error_reply(404, "Not found"), None
        fault = self.plan.take(target) if target else None
        if fault and target and fault.kind in REPLACING_FAULTS:
            return _fault_reply(fault, target), fault
        if fault and fault.kind == "notdoc":
            return json_reply(200, imds.compute_subtree(self.document)), fault
        return self._endpoint_reply(request, target), fault

    def _endpoint_reply(self, request: Request, target: str | None) -> Reply:
        path = request.path.rstrip("/") or "/"
        if target == "ws":
            return self.wireserver.reply(request, self.document)
        if target is None and path != imds.VERSIONS_PATH:
            return error_reply(404, "Not found")
        if path == ATTESTED_PATH:
            return self.attested.reply(request, self.document, self.versions())
        if path == SCHEDULED_EVENTS_PATH:
            return self.scheduled.reply(request, self.document, self.plan.versions)
        if path == LOADBALANCER_PATH:
            return loadbalancer_reply(request, self.document, self.versions())
        if request.method != "GET":
            return error_reply(405, "Method not allowed")
        if target == "id":
            return self.identity.reply(request)
        if target == "imds":
            return imds.instance_reply(request, self.document, self.versions())
        return imds.versions_reply(request, self.versions())

    def record(self, request: Request, reply: Reply, fault: Fault | None) -> dict:
        """Append one log entry (memory and --log file) before the reply is sent."""
        delivered = fault is None or fault.kind not in ("hang", "reset")
        entry = {
            "time": time.time(),
            "method": request.method,
            "path": request.path,
            "query": _query_for_log(request),
            "headers": _headers_for_log(request),
            "status": reply.status if delivered else None,
            "fault": fault.spec if fault else None,
            **reply.record,
        }
        with self._lock:
            self.requests.append(entry)
            if "health" in reply.record:
                self.health_reports.append(reply.record["health"])
            if self._log_file:
                self._log_file.write(json.dumps(entry, sort_keys=False) + "\n")
                self._log_file.flush()
        return entry


def _is_metadata(path: str) -> bool:
    """Paths under IMDS's rate limit: everything below /metadata."""
    return path == "/metadata" or path.startswith("/metadata/")


def _target_of(path: str) -> str | None:
    """The fault-plan target a path belongs to: imds, ws, id, or None."""
    if path == imds.INSTANCE_PATH or path.startswith(imds.INSTANCE_PATH + "/"):
        return "imds"
    if path.rstrip("/") in CATEGORY_PATHS:  # the other categories follow the instance's rules
        return "imds"
    if path.rstrip("/") == IDENTITY_PATH:
        return "id"
    if path == "/machine" or path.startswith("/machine/"):
        return "ws"
    return None


def _fault_reply(fault: Fault, target: str) -> Reply:
    """The reply a replacing fault sends (hang and reset send nothing at all)."""
    if fault.kind == "html":
        return Reply(200, html_error_page(), HTML_TYPE)
    if fault.kind == "big":
        return Reply(200, b"", JSON_TYPE, record={"bytes": fault.size})
    status = fault.status or 500
    if target == "ws":
        return error_xml(status, phrase(status).replace(" ", ""), phrase(status))
    return error_reply(status, phrase(status))


def _query_for_log(request: Request) -> dict:
    """Parameters by name; a name given twice maps to the list of its values."""
    query: dict = {}
    for name, value in request.query:
        if name in query:
            previous = query[name]
            query[name] = (previous if isinstance(previous, list) else [previous]) + [value]
        else:
            query[name] = value
    return query


def _headers_for_log(request: Request) -> dict:
    """The headers that matter; Authorization and X-Forwarded-For by presence only."""
    get = request.header
    return {
        "Metadata": get("Metadata"),
        "X-Forwarded-For": get("X-Forwarded-For") is not None,
        "Authorization": get("Authorization") is not None,
        "x-ms-agent-name": get("x-ms-agent-name"),
        "x-ms-version": get("x-ms-version"),
        "Content-Type": get("Content-Type"),
        "User-Agent": get("User-Agent"),
    }


if __name__ == "__main__":
    raise SystemExit(main())

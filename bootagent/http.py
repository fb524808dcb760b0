"""The one HTTP client: IMDS, identity and wireserver requests all pass through here.

The standard library's `http.client`, one connection per request: it knows no proxy
and no netrc, so nothing from the environment can send IMDS traffic elsewhere. One
retry loop with a rate cap of five requests in any second, and bodies bounded in size.
`Http.transport` is a seam: tests may observe or replace the exchange, but ours run
against a real server on loopback.

Not `requests`: importing it cost every boot about 0.3 x the anchor (bench/README.md)
for what the agent never uses (proxies, cookies, redirects, charset detection). An
https URL (the configuration allows one) is verified as `requests` verifies it, with
certifi's bundle when that is installed, imported only then.
"""

from __future__ import annotations

import errno
import http.client
import random
import socket
from collections import deque
from dataclasses import dataclass
from typing import Callable, TypeVar
from urllib.parse import urlsplit

from bootagent import __version__
from bootagent.errors import BootagentError, HttpError

MAX_BODY = 4 << 20
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 8.0
RATE_WINDOW = 1.0
RATE_MAX = 5
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 4.0
QUICK_RETRY = 0.2
RETRY_STATUSES = frozenset({410, 429}) | frozenset(range(500, 600))

T = TypeVar("T")


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes
    url: str


class RetryLater(BootagentError):
    """Raised by an `accept` function: this answer is transient, ask again like a 5xx."""


class Http:
    def __init__(self, clock: Callable[[], float], sleep: Callable[[float], None],
                 max_body: int = MAX_BODY, transport: Callable[..., Response] | None = None):
        self.clock = clock
        self.sleep = sleep
        self.max_body = max_body
        self.attempts = 0
        self._sent = deque(maxlen=RATE_MAX)
        self.default_headers = {"User-Agent": f"bootagent/{__version__}", "Accept": "*/*"}
        self.transport = transport or exchange  # a seam: tests may observe or replace it

    def _rate_wait(self) -> float:
        """Seconds until one more request keeps the last second at RATE_MAX or fewer."""
        if len(self._sent) < RATE_MAX:
            return 0.0
        return max(0.0, self._sent[0] + RATE_WINDOW - self.clock())

    def _wait_for_rate(self) -> None:
        wait = self._rate_wait()
        if wait > 0:
            self.sleep(wait)

    def send(self, method: str, url: str, *, headers: dict, data: bytes | None = None,
             timeout: float = READ_TIMEOUT) -> Response:
        """One attempt. Any status comes back as a Response; a transport failure is HttpError."""
        self._wait_for_rate()
        self._sent.append(self.clock())
        self.attempts += 1
        connect = max(0.05, min(CONNECT_TIMEOUT, timeout))
        return self.transport(method, url, {**self.default_headers, **headers}, data, connect,
                              max(0.05, timeout), self.max_body)


    def retrying(self, method: str, url: str, *, headers: dict, deadline: float,
                 accept: Callable[[Response], T], data: bytes | None = None,
                 what: str = "the request") -> T:
        """Send until `accept` returns a value or the deadline passes.

        Transport failures, 410, 429, 5xx and RetryLater are retried: refused connections
        quickly (the network may not be up yet), the rest with exponential backoff and
        jitter, honouring Retry-After. Anything `accept` raises otherwise is final."""
        backoff = FIRST_BACKOFF
        last = "no attempt was made"
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise HttpError(f"{what} did not succeed before the deadline; last error: {last}")
            quick, retry_after = False, 0.0
            try:
                answer = self.send(method, url, headers=headers, data=data,
                                   timeout=min(READ_TIMEOUT, remaining))
                if answer.status in RETRY_STATUSES:
                    last = f"HTTP {answer.status} from {url}"
                    retry_after = _retry_after(answer)
                else:
                    return accept(answer)
            except HttpError as err:
                if not err.retryable:
                    raise
                last = str(err)
                quick = err.quick
            except RetryLater as err:
                last = str(err)
            if quick:
                delay = QUICK_RETRY * random.uniform(0.8, 1.2)
            else:  # jitter the backoff, never the server's Retry-After
                delay = max(backoff * random.uniform(0.8, 1.2), retry_after)
                backoff = min(MAX_BACKOFF, backoff * 2)
            delay = max(delay, self._rate_wait())  # the rate cap's wait is part of this one
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise HttpError(f"{what} did not succeed before the deadline; last error: {last}")
            self.sleep(min(delay, remaining))


def exchange(method: str, url: str, headers: dict, data: bytes | None, connect_timeout: float,
             read_timeout: float, max_body: int) -> Response:
    """One request on a connection of its own: the default transport of `Http`."""
    try:
        connection, target = _connection(url, connect_timeout)
    except ValueError as err:  # a URL that no retry can mend
        raise HttpError(f"{method} {url}: {err}; check the URL") from None
    try:
        connection.connect()
        connection.sock.settimeout(read_timeout)
        try:
            connection.request(method, target, body=data, headers=headers)
        except ValueError:  # a header value with a line break: never quote it (secrets)
            raise HttpError(f"{method} {url}: a header of the request is not valid HTTP") from None
        answer = connection.getresponse()
        body = _read_bounded(answer, url, max_body)
        return Response(answer.status, _header_dict(answer.getheaders()), body, url)
    except (OSError, http.client.HTTPException) as err:
        raise HttpError(f"{method} {url}: {_describe(err)}", retryable=True,
                        quick=_refused(err)) from None
    finally:
        connection.close()


def _read_bounded(answer: http.client.HTTPResponse, url: str, max_body: int) -> bytes:
    declared = answer.getheader("Content-Length", "")
    if declared.isdigit():
        if int(declared) > max_body:
            raise HttpError(f"GET {url}: the answer is {declared} bytes, more than the "
                            f"{max_body} allowed", retryable=True)
        return answer.read()  # IncompleteRead when the connection ends early
    chunks, size = [], 0
    while chunk := answer.read(1 << 16):
        size += len(chunk)
        if size > max_body:
            raise HttpError(f"GET {url}: the answer is larger than the {max_body} bytes "
                            "allowed", retryable=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _connection(url: str, connect_timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """An unconnected connection for `url`, and the request target (path and query).
    ValueError for a URL that is not http(s)://host[:port]/..."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http:// URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)  # ValueError when not a port
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname, port, timeout=connect_timeout,
                                                 context=_tls_context())
    else:
        connection = http.client.HTTPConnection(parts.hostname, port, timeout=connect_timeout)
    return connection, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _tls_context():
    import ssl

    try:
        import certifi
        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


def _header_dict(pairs: list[tuple[str, str]]) -> dict:
    """Headers as a dict; a repeated header's values joined with ", " (RFC 9110 5.3)."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers

def _retry_after(answer: Response) -> float:
    value = answer.headers.get("Retry-After", "")
    try:
        return min(MAX_BACKOFF * 4, max(0.0, float(value)))
    except ValueError:
        return 0.0


def _refused(err: Exception) -> bool:
    """True for 'connection refused' and 'no route': the network is coming up, ask again soon."""
    seen = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (
                errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
            return True
        nested = [getattr(cause, "reason", None), *cause.args] if cause.args else [getattr(cause, "reason", None)]
        cause = next((c for c in nested if isinstance(c, BaseException)), None) or cause.__context__
    text = str(err)
    return "Connection refused" in text or "No route to host" in text or "unreachable" in text


def _describe(err: Exception) -> str:
    """What went wrong, in the words a user can act on (never the body or a header)."""
    if isinstance(err, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(err, http.client.IncompleteRead):
        return "the answer was cut short"
    if isinstance(err, (http.client.RemoteDisconnected, http.client.BadStatusLine)):
        return "connection aborted"  # closed, or not HTTP, before a status line
    if isinstance(err, http.client.HTTPException):
        return f"the answer is not valid HTTP ({type(err).__name__})"
    if isinstance(err, socket.gaierror):
        return "name or service not known"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, ConnectionResetError):
        return "connection reset"
    if isinstance(err, (ConnectionAbortedError, BrokenPipeError)):
        return "connection aborted"
    if err.errno == errno.EHOSTUNREACH:
        return "no route to host"
    if err.errno == errno.ENETUNREACH:
        return "network is unreachable"
    return "connection failed"

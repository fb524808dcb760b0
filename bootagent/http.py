"""The one HTTP client: IMDS, identity and wireserver requests all pass through here.

One `requests.Session` that trusts nothing from the environment (no proxy, no netrc:
IMDS must never be reached through a proxy), one retry loop with a rate cap of five
requests in any second, and bodies bounded in size. The session is a seam: tests may
hand in another transport, but ours run against a real server on loopback.
"""

from __future__ import annotations

import errno
import os
import random
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar  # requests imports typing already: no cost here

import requests

from bootagent import __version__
from bootagent.errors import BootagentError, HttpError
from bootagent.record import Record

MAX_BODY = 4 << 20
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 8.0
RATE_WINDOW = 1.0
RATE_MAX = 5
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 4.0
QUICK_RETRY = 0.2
RETRY_STATUSES = frozenset({410, 429}) | frozenset(range(500, 600))
_T = TypeVar("_T")


class Headers(dict):
    """Header names compared without regard to case (SPEC "Hardening"): a `retry-after` is
    a Retry-After. Keys are kept as the server sent them; lookups fold case."""

    def __init__(self, items: Any = ()):
        super().__init__()
        self._names: dict[str, str] = {}
        for name, value in (items.items() if hasattr(items, "items") else items):
            self[name] = value

    def __setitem__(self, name: str, value: str) -> None:
        folded = name.lower()
        if folded in self._names:
            super().__delitem__(self._names[folded])
        self._names[folded] = name
        super().__setitem__(name, value)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(self._names[name.lower()])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._names

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default


class Response(Record):
    status: int
    headers: Headers
    body: bytes
    url: str

    def __post_init__(self) -> None:
        if not isinstance(self.headers, Headers):
            self.headers = Headers(self.headers or {})


class RetryLater(BootagentError):
    """Raised by an `accept` function: this answer is transient, ask again like a 5xx."""


class Http:
    def __init__(self, clock: Callable[[], float], sleep: Callable[[float], None],
                 session: requests.Session | None = None, max_body: int = MAX_BODY):
        self.clock = clock
        self.sleep = sleep
        self.max_body = max_body
        self.attempts = 0
        self._sent: deque[float] = deque(maxlen=RATE_MAX)
        self.session = session or requests.Session()
        self.session.trust_env = False
        # identity: the bytes counted against max_body are the bytes read (no gzip bomb), and
        # _reader may read below urllib3's decoder
        self.session.headers.update({"User-Agent": f"bootagent/{__version__}", "Accept-Encoding": "identity"})

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
             timeout: float = READ_TIMEOUT, deadline: float = float("inf")) -> Response:
        """One attempt. Any status comes back as a Response; a transport failure, or a body
        still arriving at `deadline`, is HttpError."""
        self._wait_for_rate()
        self._sent.append(self.clock())
        self.attempts += 1
        connect = max(0.05, min(CONNECT_TIMEOUT, timeout))
        try:
            with self.session.request(method, url, headers=headers, data=data, stream=True,
                                      allow_redirects=False,
                                      timeout=(connect, max(0.05, timeout))) as answer:
                body = self._read_bounded(answer, method, url, deadline)
                return Response(answer.status_code, Headers(answer.headers), body, url)
        except _transport_errors() as err:
            raise HttpError(f"{method} {url}: {_describe(err)}", retryable=True,
                            quick=_refused(err)) from None

    def _read_bounded(self, answer: requests.Response, method: str, url: str, deadline: float) -> bytes:
        """The body, at most max_body bytes, read as it arrives so that the deadline is
        checked between reads: a server that trickles bytes cannot hold the run past it
        (each read waits at most the read timeout)."""
        declared = answer.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise HttpError(f"{method} {url}: the answer is {declared} bytes, more than the "
                            f"{self.max_body} allowed", retryable=True)
        read = _reader(answer)
        chunks: list[bytes] = []
        size = 0
        while True:
            if self.clock() >= deadline:
                raise HttpError(f"{method} {url}: the answer was still arriving at the deadline "
                                f"({size} bytes read)", retryable=True)
            chunk = read(1 << 16)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_body:
                raise HttpError(f"{method} {url}: the answer is larger than the {self.max_body} bytes "
                                "allowed", retryable=True)
            chunks.append(chunk)

    def retrying(self, method: str, url: str, *, headers: dict, deadline: float,
                 accept: Callable[[Response], _T], data: bytes | None = None,
                 what: str = "the request") -> _T:
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
                                   timeout=min(READ_TIMEOUT, remaining), deadline=deadline)
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


def _retry_after(answer: Response) -> float:
    value = answer.headers.get("Retry-After") or ""
    try:
        return min(MAX_BACKOFF * 4, max(0.0, float(value)))
    except ValueError:
        return 0.0


def _reader(answer: requests.Response) -> Callable[[int], bytes]:
    """A read that returns as soon as any bytes arrive (one recv at most), never waiting
    to fill its size: urllib3 2's read1, else (urllib3 1, Debian 12's) http.client's own.
    The session asks for no content coding, so these are the body's bytes as sent."""
    raw = answer.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None:
        read1 = getattr(raw, "_fp").read1  # urllib3 1 has no read1 of its own
    return read1


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a request or a body read raises when the connection fails: requests' own, and
    urllib3's and http.client's, which reach us unwrapped from a direct read."""
    import http.client

    import urllib3.exceptions

    return (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


def _causes(err: BaseException):
    """`err` and every exception it carries (args, reason, cause, context), each once."""
    seen: set[int] = set()
    pending = [err]
    while pending and len(seen) < 32:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [*current.args, getattr(current, "reason", None), current.__cause__, current.__context__]
        pending += [item for item in nested if isinstance(item, BaseException)]


_QUICK_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL})


def _refused(err: BaseException) -> bool:
    """True for 'connection refused' and 'no route': the network is coming up, ask again soon."""
    return any(isinstance(cause, OSError) and cause.errno in _QUICK_ERRNOS for cause in _causes(err))


def _describe(err: BaseException) -> str:
    """A transport failure in a few words, from the exceptions' types and errno."""
    import http.client
    import socket

    import urllib3.exceptions

    causes = list(_causes(err))
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            return "cannot resolve the host name"
    for cause in causes:
        if isinstance(cause, OSError) and isinstance(cause.errno, int) and cause.errno > 0:
            return os.strerror(cause.errno).lower()
    if any(isinstance(cause, http.client.RemoteDisconnected) for cause in causes):
        return "the server closed the connection without answering"
    cut = (http.client.IncompleteRead, urllib3.exceptions.ProtocolError,
           requests.exceptions.ChunkedEncodingError)
    if any(isinstance(cause, cut) for cause in causes):
        return "the answer was cut short"
    if any(isinstance(cause, (requests.Timeout, TimeoutError, urllib3.exceptions.TimeoutError))
           for cause in causes):
        return "timed out"
    if isinstance(err, requests.ConnectionError):
        return "connection failed"
    return type(err).__name__

"""The one HTTP client: IMDS, identity and wireserver requests all pass through here.

One `requests.Session` that trusts nothing from the environment (no proxy, no netrc:
IMDS must never be reached through a proxy), one retry loop with a rate cap of five
requests in any second, and bodies bounded in size. The session is a seam: tests may
hand in another transport, but ours run against a real server on loopback.
"""

from __future__ import annotations

import errno
import random
from collections import deque
from collections.abc import Callable

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


class Response(Record):
    status: int
    headers: dict
    body: bytes
    url: str


class RetryLater(BootagentError):
    """Raised by an `accept` function: this answer is transient, ask again like a 5xx."""


class Http:
    def __init__(self, clock: Callable[[], float], sleep: Callable[[float], None],
                 session: requests.Session | None = None, max_body: int = MAX_BODY):
        self.clock = clock
        self.sleep = sleep
        self.max_body = max_body
        self.attempts = 0
        self._sent = deque(maxlen=RATE_MAX)
        self.session = session or requests.Session()
        self.session.trust_env = False
        self.session.headers.update({"User-Agent": f"bootagent/{__version__}"})

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
        try:
            with self.session.request(method, url, headers=headers, data=data, stream=True,
                                      allow_redirects=False,
                                      timeout=(connect, max(0.05, timeout))) as answer:
                body = self._read_bounded(answer, url)
                return Response(answer.status_code, dict(answer.headers), body, url)
        except requests.RequestException as err:
            raise HttpError(f"{method} {url}: {_describe(err)}", retryable=True,
                            quick=_refused(err)) from None

    def _read_bounded(self, answer: requests.Response, url: str) -> bytes:
        declared = answer.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise HttpError(f"GET {url}: the answer is {declared} bytes, more than the "
                            f"{self.max_body} allowed", retryable=True)
        chunks, size = [], 0
        for chunk in answer.iter_content(1 << 16):
            size += len(chunk)
            if size > self.max_body:
                raise HttpError(f"GET {url}: the answer is larger than the {self.max_body} bytes "
                                "allowed", retryable=True)
            chunks.append(chunk)
        return b"".join(chunks)

    def retrying(self, method: str, url: str, *, headers: dict, deadline: float,
                 accept: Callable[[Response], object], data: bytes | None = None,
                 what: str = "the request") -> object:
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


def _describe(err: requests.RequestException) -> str:
    if isinstance(err, requests.Timeout):
        return "timed out"
    if isinstance(err, requests.ConnectionError):
        text = str(err)
        for marker in ("Connection refused", "No route to host", "Network is unreachable",
                       "Connection reset", "Connection aborted", "IncompleteRead",
                       "Name or service not known"):
            if marker in text:
                return marker.lower() if marker != "IncompleteRead" else "the answer was cut short"
        return "connection failed"
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return "the answer was cut short"
    return type(err).__name__

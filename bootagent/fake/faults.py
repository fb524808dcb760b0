"""The fault plan of the fake IMDS: which requests fail, and how.

A plan is a comma-separated list of items. Each item is consumed by one request
to its target, in order; a request finding its target's queue empty is served
normally. ``versions:`` is a setting, not a queued item.

    PLAN     := ITEM ("," ITEM)*
    ITEM     := [TARGET ":"] ["always:"] FAULT [REPEAT]
              | "versions:" VERSION ("+" VERSION)*
    TARGET   := "imds"   requests to /metadata/instance[/...]   (the default)
              | "ws"     wireserver requests: goal state GETs and health POSTs
              | "id"     identity token requests (/metadata/identity/oauth2/token)
    FAULT    := STATUS         answer that HTTP status (400-599), e.g. 500, 410, 429
              | "slow:" SECS   answer after SECS (float) seconds; the request itself
                               is handled at once (a health POST is recorded)
              | "hang"         never answer; the connection closes when the server stops
              | "reset"        close the connection with a TCP RST, no answer
              | "truncate"     handle the request, but send only half of the body
                               (Content-Length announces the full body), then close
              | "html"         200 with an HTML error page (text/html)
              | "big:" SIZE    200 application/json, a valid JSON object of SIZE bytes
                               (suffix K, M or G: binary units), streamed in chunks
              | "notdoc"       200 with valid JSON that is not an instance document
                               (the compute sub-tree); imds target only
    REPEAT   := "*"            the fault never ends (same as the "always:" prefix)
              | "*" N          the fault applies to the next N requests

A fault is taken after the rate limit (a 429 from the limit consumes none) and
before the endpoint's own checks (a faulted request is not validated). A status
answers ``{"error": "<reason phrase>"}`` (an XML ``Error`` on the wireserver),
without Retry-After. ``big`` takes 1K to 4G.

Examples: ``500,410,429`` (three refusals, then success); ``ws:500,ws:500``
(the first two wireserver requests fail); ``slow:2,hang,reset,truncate``;
``big:20M``; ``versions:2019-06-01+2020-09-01`` (only those api-versions
exist); ``always:500`` or ``ws:503*`` (never recovers); ``429*3``.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

TARGETS = ("imds", "ws", "id")
SIMPLE_KINDS = ("hang", "reset", "truncate", "html", "notdoc")
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
MIN_BIG_SIZE = 1024
MAX_BIG_SIZE = 4 * 1024 ** 3


class FaultPlanError(ValueError):
    """A --fault plan that does not follow the grammar."""


@dataclass(frozen=True)
class Fault:
    """One failure to inject; ``spec`` is its spelling in the plan, for the log."""

    kind: str  # "status", "slow", "big" or one of SIMPLE_KINDS
    spec: str
    status: int = 0
    seconds: float = 0.0
    size: int = 0


class FaultPlan:
    """Per-target queues of faults, consumed one per request (thread-safe)."""

    def __init__(self, text: str | None = None):
        self._lock = threading.Lock()
        self._queues: dict[str, deque] = {target: deque() for target in TARGETS}
        self.versions: tuple[str, ...] | None = None
        self.text = text or ""
        for item in _split_items(self.text):
            self._add_item(item)

    def take(self, target: str) -> Fault | None:
        """The fault for the next request to ``target``, or None to serve it."""
        with self._lock:
            queue = self._queues[target]
            if not queue:
                return None
            entry = queue[0]
            fault, remaining = entry
            if remaining is not None:
                if remaining <= 1:
                    queue.popleft()
                else:
                    entry[1] = remaining - 1
            return fault

    def pending(self, target: str) -> int:
        """How many queued items the target still has (a never-ending one counts 1)."""
        with self._lock:
            return len(self._queues[target])

    def _add_item(self, item: str) -> None:
        if item.startswith("versions:"):
            self.versions = _parse_versions(item)
            return
        target, rest = _split_target(item)
        fault, repeat = _parse_fault(rest, item)
        if fault.kind == "notdoc" and target != "imds":
            raise FaultPlanError(f"fault {item!r}: notdoc applies to the imds target only")
        self._queues[target].append([fault, repeat])


def _split_items(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")] if text.strip() else []
    if any(not item for item in items):
        raise FaultPlanError(f"fault plan {text!r} has an empty item")
    return items


def _split_target(item: str) -> tuple[str, str]:
    head, sep, rest = item.partition(":")
    if sep and head in TARGETS:
        return head, rest
    return "imds", item


def _parse_fault(text: str, item: str) -> tuple[Fault, int | None]:
    """Parse ``[always:]FAULT[*[N]]``; the repeat count None means forever."""
    repeat: int | None = 1
    if text.startswith("always:"):
        text, repeat = text[len("always:"):], None
    if "*" in text:
        text, _, count = text.partition("*")
        repeat = _parse_repeat(count, item)
    return _parse_kind(text, item), repeat


def _parse_repeat(count: str, item: str) -> int | None:
    if count == "":
        return None
    if not count.isdigit() or int(count) < 1:
        raise FaultPlanError(f"fault {item!r}: repeat count must be a positive integer")
    return int(count)


def _parse_kind(text: str, item: str) -> Fault:
    name, _, arg = text.partition(":")
    if name.isdigit() and not arg:
        return _status_fault(name, item)
    if name in SIMPLE_KINDS and not arg:
        return Fault(kind=name, spec=item)
    if name == "slow":
        return Fault(kind="slow", spec=item, seconds=_parse_seconds(arg, item))
    if name == "big":
        return Fault(kind="big", spec=item, size=parse_size(arg, item))
    raise FaultPlanError(
        f"unknown fault {item!r}: expected an HTTP status, slow:SECONDS, hang, reset, "
        "truncate, html, big:SIZE, notdoc or versions:V1+V2, optionally after "
        "ws: or id:")


def _status_fault(code: str, item: str) -> Fault:
    status = int(code)
    if not 400 <= status <= 599:
        raise FaultPlanError(f"fault {item!r}: an HTTP status fault must be 400-599")
    return Fault(kind="status", spec=item, status=status)


def _parse_seconds(text: str, item: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise FaultPlanError(f"fault {item!r}: slow needs a number of seconds") from None
    if not 0 <= seconds <= 3600:
        raise FaultPlanError(f"fault {item!r}: slow takes 0 to 3600 seconds")
    return seconds


def parse_size(text: str, item: str = "") -> int:
    """``20M`` -> 20 MiB; the unit suffix is optional and binary."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in SIZE_UNITS and text[-1:] else ""
    digits = text[: len(text) - len(unit)]
    if not digits.isdigit():
        raise FaultPlanError(f"fault {item!r}: big needs a size such as 20M")
    size = int(digits) * SIZE_UNITS[unit]
    if not MIN_BIG_SIZE <= size <= MAX_BIG_SIZE:
        raise FaultPlanError(f"fault {item!r}: big takes 1K to 4G")
    return size


def _parse_versions(item: str) -> tuple[str, ...]:
    versions = tuple(v.strip() for v in item[len("versions:"):].split("+"))
    if not versions or any(not _looks_like_version(v) for v in versions):
        raise FaultPlanError(f"fault {item!r}: versions takes dates such as 2019-06-01+2020-09-01")
    return tuple(sorted(set(versions)))


def _looks_like_version(text: str) -> bool:
    parts = text.split("-")
    return len(parts) == 3 and all(p.isdigit() for p in parts) and len(parts[0]) == 4

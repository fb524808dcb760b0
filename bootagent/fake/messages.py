"""Requests as the endpoints see them, and what they answer before the transport
(and any fault) delivers it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus

JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
XML_TYPE = "text/xml; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"


@dataclass
class Request:
    """One parsed HTTP request; ``headers`` is case-insensitive (an email Message)."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: Message
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def query_dict(self) -> dict[str, str]:
        """Parameters by name; a duplicated name keeps its last value."""
        return dict(self.query)

    def duplicate_params(self) -> list[str]:
        names = [name for name, _ in self.query]
        return sorted({name for name in names if names.count(name) > 1})


@dataclass
class Reply:
    """An HTTP answer; ``record`` holds extra fields for the request log."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    record: dict = field(default_factory=dict)


def compact_json(value) -> bytes:
    """JSON as IMDS sends it: no whitespace between tokens."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_reply(status: int, value, **headers: str) -> Reply:
    return Reply(status, compact_json(value), JSON_TYPE, dict(headers))


def error_reply(status: int, message: str, **extra) -> Reply:
    """IMDS's error shape: ``{"error": message, ...}``."""
    return json_reply(status, {"error": message, **extra})


def text_reply(status: int, text: str) -> Reply:
    return Reply(status, text.encode("utf-8"), TEXT_TYPE)


def phrase(status: int) -> str:
    """The reason phrase of a status code, e.g. "Internal Server Error"."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def html_error_page(status: int = 502) -> bytes:
    """The kind of page a captive portal or a broken proxy serves instead of JSON."""
    title = f"{status} {phrase(status)}"
    return (f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>\n"
            f"<body><h1>{title}</h1><p>The upstream server did not answer.</p>"
            "</body></html>\n").encode("utf-8")

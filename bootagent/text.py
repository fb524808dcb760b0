"""Quoting input in one-line messages: control characters escaped, length bounded.

Every error line that shows a value it was given goes through `quoted` (or `shorten` for
the agent's own text), so no input can split a line or flood a log.
"""

from __future__ import annotations


def shorten(text: str, limit: int = 200) -> str:
    """`text` cut to at most `limit` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[:max(0, limit - 3)] + "..."


def escaped(text: str) -> str:
    """`text` with every control or non-printable character written as an escape."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def quoted(value: object, limit: int = 80) -> str:
    """A value as an error line shows it: its repr (strings in quotes), control characters
    escaped, at most `limit` characters."""
    return shorten(escaped(repr(value)), limit)


def one_line(text: object, limit: int = 200) -> str:
    """A message from elsewhere (a tool's stderr, an exception) as one bounded line."""
    return shorten(escaped(" ".join(str(text).split())), limit)

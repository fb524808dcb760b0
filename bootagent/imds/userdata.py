"""userData decoding: pure functions from the base64 string to bytes and a kind.

Strict base64, then gunzip when compressed, both bounded so a bomb cannot exhaust
memory. The media's customData goes through exactly these functions, named by
`field`. Errors name the field, never its content: userData may hold secrets.
"""

from __future__ import annotations

import base64
import binascii
import zlib

from bootagent.errors import StepError
from bootagent.record import Record

MAX_ENCODED = 1 << 20          # Azure allows 64 KiB; be generous, not unbounded
MAX_DECODED = 4 << 20
FIELD = "compute.userData"


class UserDataError(StepError):
    pass


class UserData(Record, frozen=True):
    data: bytes
    kind: str               # "yaml", "script" or "other"
    mapping: dict | None    # the YAML mapping when kind == "yaml"


def decode(encoded: object, field: str = FIELD) -> bytes:
    """compute.userData (or the media's CustomData, named by `field`) to the bytes the
    user supplied."""
    if not isinstance(encoded, str):
        raise UserDataError(f"{field} is not a string; it must be base64 text")
    text = encoded.strip()
    if len(text) > MAX_ENCODED:
        raise UserDataError(f"{field} is larger than {MAX_ENCODED} bytes")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UserDataError(f"{field} is not valid base64; encode it with `base64 -w0`") from None
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip(raw, field)
    if len(raw) > MAX_DECODED:
        raise UserDataError(f"{field} decodes to more than {MAX_DECODED} bytes")
    return raw


def _gunzip(raw: bytes, field: str) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(raw, MAX_DECODED + 1)
    except zlib.error:
        raise UserDataError(f"{field} is gzip data that does not decompress") from None
    if len(out) > MAX_DECODED or inflater.unconsumed_tail:
        raise UserDataError(f"{field} decompresses to more than {MAX_DECODED} bytes; refused")
    if not inflater.eof:
        raise UserDataError(f"{field} is truncated gzip data")
    return out


def classify(data: bytes, field: str = FIELD) -> UserData:
    """A `#!` script, a YAML mapping (optionally after `#cloud-config`), or other bytes."""
    if data.startswith(b"#!"):
        return UserData(data, "script", None)
    mapping = _yaml_mapping(data, field)
    if mapping is not None:
        return UserData(data, "yaml", mapping)
    return UserData(data, "other", None)


def _yaml_mapping(data: bytes, field: str = FIELD) -> dict | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.strip() or "\0" in text:
        return None
    import yaml

    try:
        value = yaml.safe_load(text)
    except RecursionError:
        raise UserDataError(f"{field} YAML is nested too deeply") from None
    except Exception:  # noqa: BLE001 - see below
        # Not only YAMLError: PyYAML's constructors raise plain ValueError, KeyError or
        # TypeError on a malformed scalar (`2001-02-30`, `!!bool x`, `!!float x`), and
        # safe_load builds nothing but plain data, so any failure means "not valid YAML".
        if text.startswith("#cloud-config"):
            raise UserDataError(f"{field} says #cloud-config but is not valid YAML") from None
        return None
    return value if isinstance(value, dict) else None

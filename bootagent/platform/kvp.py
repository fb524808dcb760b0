"""The provisioning outcome for the Hyper-V host, through the KVP pool file (SPEC step 7).

The host's KVP daemon reads `/var/lib/hyperv/.kvp_pool_1`: a sequence of fixed-size
records, a 512-byte key and a 2048-byte value, each UTF-8 and NUL-padded. The file is
shared with other writers, so a record is appended whole under flock, never rewritten
(writer.append_record). Keys and values always keep a terminating NUL, as C readers
expect. The value never holds userData: it is built from step names and errors only.
"""

from __future__ import annotations

import re

KEY_SIZE = 512
VALUE_SIZE = 2048
RECORD_SIZE = KEY_SIZE + VALUE_SIZE
KVP_DIR = "/var/lib/hyperv"
POOL_FILE = f"{KVP_DIR}/.kvp_pool_1"
REPORT_KEY = "PROVISIONING_REPORT"

_UNSAFE = re.compile(r"[\x00-\x1f\x7f|]")


def _fit(text: str, size: int) -> bytes:
    """UTF-8 bytes of `text`, cut at a character boundary to leave room for a NUL."""
    data = text.encode("utf-8", "replace")  # a lone surrogate (JSON allows them) becomes "?"
    if len(data) >= size:
        data = data[:size - 1].decode("utf-8", "ignore").encode("utf-8")
    return data


def encode_record(key: str, value: str) -> bytes:
    """One pool record. A key that does not fit is refused; a long value is truncated."""
    if not key or "\0" in key or len(key.encode("utf-8")) >= KEY_SIZE:
        raise ValueError(f"a KVP key must be 1 to {KEY_SIZE - 1} bytes of UTF-8 without NUL")
    return (_fit(key, KEY_SIZE).ljust(KEY_SIZE, b"\0")
            + _fit(value.replace("\0", " "), VALUE_SIZE).ljust(VALUE_SIZE, b"\0"))


def decode_records(data: bytes) -> list[tuple[str, str]]:
    """The (key, value) pairs of a pool file; ValueError when it is not whole records."""
    if len(data) % RECORD_SIZE:
        raise ValueError(f"a KVP pool holds whole {RECORD_SIZE}-byte records; {len(data)} bytes is not")
    records = []
    for start in range(0, len(data), RECORD_SIZE):
        key = data[start:start + KEY_SIZE].split(b"\0", 1)[0]
        value = data[start + KEY_SIZE:start + RECORD_SIZE].split(b"\0", 1)[0]
        records.append((key.decode("utf-8", "replace"), value.decode("utf-8", "replace")))
    return records


def sanitize(text: str) -> str:
    """A field of the encoded report: no `|` (the separator) and no control character."""
    return _UNSAFE.sub(" ", text).strip()


def report_value(ok: bool, vm_id: str, reason: str | None, timestamp: str) -> str:
    from bootagent import __version__

    fields = ["result=success"] if ok else ["result=error", f"reason={sanitize(reason or 'provisioning failed')}"]
    fields += [f"agent=bootagent/{__version__}", f"vm_id={sanitize(vm_id)}", f"timestamp={timestamp}"]
    if ok:
        return "|".join(fields)
    # the reason is the one part of unbounded length: shorten it, keep the rest whole
    tail = "|" + "|".join(fields[2:])
    room = VALUE_SIZE - 1 - len(tail.encode("utf-8"))
    head = "|".join(fields[:2])
    return _fit(head, room + 1).decode("utf-8") + tail


def report(ctx, ok: bool, vm_id: str, reason: str | None) -> str | None:
    """Append one PROVISIONING_REPORT record when the KVP directory exists; its path, or None."""
    from bootagent import writer
    from bootagent.result import iso

    if not writer.is_dir(ctx, KVP_DIR):
        return None
    value = report_value(ok, vm_id, reason, iso(ctx.wall()))
    writer.append_record(ctx, POOL_FILE, encode_record(REPORT_KEY, value))
    return POOL_FILE

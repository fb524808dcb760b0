"""Logical paths: absolute paths of the provisioned system, checked before any use."""

from __future__ import annotations

from bootagent.errors import UnsafePath


def split_logical(logical: str) -> list[str]:
    """Split an absolute path into components, refusing anything that could leave the root."""
    if not isinstance(logical, str) or not logical.startswith("/"):
        raise UnsafePath(f"refusing path {logical!r}: it must be absolute")
    if "\0" in logical:
        raise UnsafePath("refusing a path with a NUL byte")
    parts = [p for p in logical.split("/") if p]
    for part in parts:
        if part in (".", ".."):
            raise UnsafePath(f"refusing path {logical!r}: '.' and '..' are not allowed")
    return parts

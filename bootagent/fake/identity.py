"""The managed-identity token endpoint of the fake, with Azure Arc's challenge.

On a VM, ``GET /metadata/identity/oauth2/token?api-version=...&resource=...`` with
``Metadata: true`` answers a token, or 400 "Identity not found" when the VM has
no identity. On Arc the first request is answered 401 with
``WWW-Authenticate: Basic realm=<dir>/<random>.key``; the fake writes a random
secret into that file (0600) and answers a token to a request that carries
``Authorization: Basic <secret>``. Any api-version from 2018-02-01 on is taken
(the identity endpoint has its own version list; the fake does not police it).
The token is random and opaque: it authenticates nothing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

from .messages import Reply, Request, json_reply

IDENTITY_PATH = "/metadata/identity/oauth2/token"
IDENTITY_SINCE = "2018-02-01"
TOKEN_LIFETIME = 86399


def oauth_error(status: int, code: str, description: str, **headers: str) -> Reply:
    """Identity errors use the OAuth shape, not IMDS's ``{"error": ...}``."""
    return json_reply(status, {"error": code, "error_description": description}, **headers)


class ArcChallenge:
    """Issues secret files for the 401 challenge and checks the secrets sent back."""

    def __init__(self, tokens_dir: str | None = None):
        self.owns_dir = tokens_dir is None
        self._tokens_dir = Path(tokens_dir) if tokens_dir else None
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    @property
    def tokens_dir(self) -> Path:
        """The secrets directory; without one given, a temporary one made on first use."""
        with self._lock:
            if self._tokens_dir is None:
                self._tokens_dir = Path(tempfile.mkdtemp(prefix="bootagent-fake-arc-"))
            return self._tokens_dir

    def refuse(self, authorization: str | None) -> Reply | None:
        """None when the request carries an issued secret, else a fresh 401 challenge."""
        scheme, _, secret = (authorization or "").strip().partition(" ")
        with self._lock:
            if scheme.lower() == "basic" and secret.strip() in self._secrets:
                return None
        return self._challenge()

    def cleanup(self) -> None:
        """Remove the secrets directory when the fake made it itself."""
        with self._lock:
            made, self._tokens_dir = self._tokens_dir, (None if self.owns_dir else self._tokens_dir)
        if self.owns_dir and made is not None:
            shutil.rmtree(made, ignore_errors=True)

    def _challenge(self) -> Reply:
        secret = secrets.token_hex(32)
        key_file = self._write_secret(secret)
        with self._lock:
            self._secrets.add(secret)
        return oauth_error(401, "unauthorized_client",
                           "Authorization header missing or invalid; read the realm file",
                           **{"WWW-Authenticate": f"Basic realm={key_file}"})

    def _write_secret(self, secret: str) -> Path:
        self.tokens_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_file = self.tokens_dir / f"{secrets.token_hex(8)}.key"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(key_file, flags, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secret)
        return key_file


class IdentityEndpoint:
    """Answers token requests as a VM (or an Arc server) with or without an identity."""

    def __init__(self, *, enabled: bool = True, arc: ArcChallenge | None = None):
        self.enabled = enabled
        self.arc = arc

    def reply(self, request: Request) -> Reply:
        refusal = self._refuse_request(request)
        if refusal:
            return refusal
        if self.arc:
            refusal = self.arc.refuse(request.header("Authorization"))
            if refusal:
                return refusal
        if not self.enabled:
            return oauth_error(400, "invalid_request", "Identity not found")
        return json_reply(200, token_for(request.query_dict()["resource"]))

    @staticmethod
    def _refuse_request(request: Request) -> Reply | None:
        if (request.header("Metadata") or "").strip().lower() != "true":
            return oauth_error(400, "invalid_request", "Required metadata header not specified")
        if request.header("X-Forwarded-For") is not None:
            return oauth_error(400, "invalid_request", "X-Forwarded-For header is not allowed")
        if request.duplicate_params():
            return oauth_error(400, "invalid_request", "Duplicate query parameter")
        query = request.query_dict()
        version = query.get("api-version", "")
        if not version:
            return oauth_error(400, "invalid_request", "Required query variable 'api-version' is missing")
        if not (len(version) == 10 and version >= IDENTITY_SINCE):
            return oauth_error(400, "invalid_request", "Invalid api-version")
        if not query.get("resource"):
            return oauth_error(400, "invalid_request", "Required query variable 'resource' is missing")
        return None


def token_for(resource: str) -> dict:
    """A token answer shaped like IMDS's; every number a string, as it sends them."""
    now = int(time.time())
    return {
        "access_token": "fake-" + secrets.token_urlsafe(48),
        "client_id": "00000000-0000-0000-0000-000000000000",
        "expires_in": str(TOKEN_LIFETIME),
        "expires_on": str(now + TOKEN_LIFETIME),
        "ext_expires_in": str(TOKEN_LIFETIME),
        "not_before": str(now),
        "resource": resource,
        "token_type": "Bearer",
    }

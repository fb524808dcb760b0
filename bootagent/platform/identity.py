"""Managed-identity tokens: on a VM from IMDS, on Azure Arc through its 401 challenge.

Arc answers a first token request with 401 and `WWW-Authenticate: Basic realm=<file>`;
the client proves it may read that file by sending its content back. A server could
name any file, so only the realm's base name is used, it must end in `.key`, and the
file read is `<root>/var/opt/azcmagent/tokens/<name>`: a regular file, no symlink, at
most 4096 bytes. Neither the secret nor the token leaves this module: callers get
the lifetime only.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

from bootagent import writer
from bootagent.errors import BootagentError, HttpError, StepError, TooLarge, UnsafePath
from bootagent.http import Http, Response
from bootagent.text import one_line, quoted

TOKEN_PATH = "/metadata/identity/oauth2/token"
RESOURCE = "https://management.azure.com/"
VM_API_VERSION = "2018-02-01"
ARC_API_VERSION = "2019-11-01"
TOKENS_DIR = "/var/opt/azcmagent/tokens"
MAX_SECRET = 4096

_REALM = re.compile(r"^\s*basic\s+realm\s*=\s*(.+?)\s*$", re.IGNORECASE)
_KEY_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,250}\.key$")
_SECRET = re.compile(r"^[\x21-\x7e]+$")


class IdentityNotFound(BootagentError):
    """IMDS says this machine has no managed identity."""


class _Challenge(Exception):
    def __init__(self, header: str):
        super().__init__("challenge")
        self.header = header


def is_arc(ctx) -> bool:
    return bool(ctx.on_arc or ctx.env.get("IDENTITY_ENDPOINT", "").strip())


def token_url(ctx) -> str:
    """IDENTITY_ENDPOINT when the Arc agent set it, else the IMDS URL's token path."""
    endpoint = ctx.env.get("IDENTITY_ENDPOINT", "").strip() or ctx.imds_url.rstrip("/") + TOKEN_PATH
    version = ARC_API_VERSION if is_arc(ctx) else VM_API_VERSION
    separator = "&" if "?" in endpoint else "?"
    return f"{endpoint}{separator}api-version={version}&resource={quote(RESOURCE, safe='')}"


def realm_key_name(header: str) -> str:
    """The base name of the secret file a `Basic realm=` challenge names (pure)."""
    found = _REALM.match(header or "")
    if not found:
        raise StepError("the identity endpoint's challenge is not `Basic realm=<file>`; "
                        "check that the Arc agent (himdsd) is healthy")
    realm = found.group(1).strip('"').replace("\\", "/")
    name = realm.rsplit("/", 1)[-1]
    if not _KEY_NAME.match(name):
        raise StepError(f"refusing the challenge's secret file {quoted(name)}: its name must end in .key; "
                        "check that the Arc agent (himdsd) is genuine and healthy")
    return name


def read_secret(ctx, name: str) -> str:
    """The secret from `<root>/var/opt/azcmagent/tokens/<name>`, never another file."""
    logical = f"{TOKENS_DIR}/{name}"
    try:
        raw = writer.read_file(ctx, logical, limit=MAX_SECRET)
    except BootagentError as err:
        raise StepError(f"refusing the challenge's secret file {logical}: {_why(err)}; "
                        "it must be a regular file of at most 4096 bytes, not a symlink") from None
    if raw is None:
        raise StepError(f"the challenge's secret file {name} is not in {TOKENS_DIR}; "
                        "check that the Arc agent (himdsd) runs and that this is the Arc agent answering")
    secret = raw.decode("ascii", "replace").strip()
    if not _SECRET.match(secret):
        raise StepError(f"the challenge's secret file {logical} does not hold a usable secret")
    return secret


def _why(err: BootagentError) -> str:
    if isinstance(err, TooLarge):
        return f"it is larger than {MAX_SECRET} bytes"
    if isinstance(err, UnsafePath) and err.reason == "symlink":
        return "it, or a directory on its way, is a symlink"
    if isinstance(err, UnsafePath) and err.reason == "not a regular file":
        return "it is not a regular file"
    return str(err)


def request_token(ctx, http: Http, deadline: float) -> int:
    """Ask for a token for Azure Resource Manager; its lifetime in seconds (the token is dropped)."""
    url = token_url(ctx)
    arc = is_arc(ctx)
    headers = {"Metadata": "true"}
    try:
        return http.retrying("GET", url, headers=headers, deadline=deadline,
                             accept=lambda answer: _accept(answer, challenge_ok=arc),
                             what="requesting a managed-identity token")
    except _Challenge as challenge:
        name = realm_key_name(challenge.header)
        secret = read_secret(ctx, name)
    headers = {"Metadata": "true", "Authorization": f"Basic {secret}"}
    return http.retrying("GET", url, headers=headers, deadline=deadline,
                         accept=lambda answer: _accept(answer, challenge_ok=False),
                         what="requesting a managed-identity token with the Arc secret")


def _accept(answer: Response, challenge_ok: bool) -> int:
    if answer.status == 401:
        header = answer.headers.get("WWW-Authenticate") or ""
        if challenge_ok and header:
            raise _Challenge(header)
        if header:
            raise HttpError("the identity endpoint refused the request (HTTP 401)"
                            + ("" if challenge_ok else "; on Azure Arc set IDENTITY_ENDPOINT/IMDS_ENDPOINT "
                               "as the Arc agent does"), status=401)
    error = _oauth_error(answer.body)
    if answer.status != 200:
        if "identity not found" in error.lower():
            raise IdentityNotFound("IMDS answered 'Identity not found': this machine has no managed identity")
        raise HttpError(f"the identity endpoint answered HTTP {answer.status}"
                        + (f": {error}" if error else ""), status=answer.status)
    try:
        value = json.loads(answer.body)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("access_token"), str) \
            or not value["access_token"]:
        raise HttpError("the identity endpoint answered 200 without an access_token; "
                        "a proxy or another server may be answering in its place")
    try:
        return int(value.get("expires_in", 0))
    except (TypeError, ValueError):
        return 0


def _oauth_error(body: bytes) -> str:
    """The error text of an OAuth or IMDS error body, shortened; never a token."""
    try:
        value = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(value, dict):
        return ""
    text = value.get("error_description") or value.get("error") or ""
    return one_line(text) if isinstance(text, str) else ""

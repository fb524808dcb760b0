"""The attested-data endpoint of the fake: ``GET /metadata/attested/document``.

As IMDS does, it answers ``{"encoding": "pkcs7", "signature": <base64 of DER>}``, the
PKCS#7 SignedData carrying its signer's certificate and the compact JSON claims:
licenseType (2020-09-01 on, when the document has one), nonce, plan, sku,
subscriptionId, timeStamp (createdOn, expiresOn LIFETIME seconds later, in the
documentation's ``11/30/20 21:19:24 -0000`` form) and vmId, all from the served
document. The nonce is 1 to 10 digits, else 400; without one the current UTC time
(``20201130-211924``), as the documentation says.

The signer is a test CA the fake makes at start with the openssl command (its
certificate is ``ca_cert``; ``bootagent fake-imds --ca-out FILE`` writes it) and a leaf
with a SAN under the document's cloud domain. Tests may hand in another signer, and
``claims`` / ``content`` / ``signature`` overrides, to serve what a verifier must refuse.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bootagent.attest.claims import CLOUD_DOMAINS, PUBLIC_DOMAIN

from . import pki
from .imds import refuse_newer_get
from .messages import Reply, Request, compact_json, error_reply, json_reply

ATTESTED_PATH = "/metadata/attested/document"
ATTESTED_SINCE = "2018-10-01"
LICENSE_TYPE_SINCE = "2020-09-01"
LIFETIME = 300
NONCE_MAX = 10
DOCUMENT_DATE = "%m/%d/%y %H:%M:%S -0000"


def signer_domain(document: dict) -> str:
    compute = document.get("compute")
    compute = compute if isinstance(compute, dict) else {}
    return CLOUD_DOMAINS.get(str(compute.get("azEnvironment") or "").lower(), PUBLIC_DOMAIN)


class AttestedEndpoint:
    """Signs claims from the document; the test CA is made on first need (``prepare``)."""

    def __init__(self, signer: pki.Issued | None = None):
        self.signer = signer
        self.ca_cert: Path | None = None
        self.claims: dict = {}  # merged over the claims (a test's wrong nonce, vmId...)
        self.content: bytes | None = None  # signed instead of the claims
        self.signature: str | None = None  # served as the signature, as is
        self._directory: Path | None = None
        self._lock = threading.Lock()

    def prepare(self, document: dict) -> None:
        """Make the test CA and its leaf now, unless a signer was given (PkiError)."""
        with self._lock:
            if self.signer is not None:
                return
            self._directory = Path(tempfile.mkdtemp(prefix="bootagent-fake-ca-"))
            ca = pki.make_ca(self._directory / "ca")
            self.signer = pki.issue_leaf(ca, self._directory / "leaf",
                                         san="fake-imds." + signer_domain(document))
            self.ca_cert = ca.cert

    def cleanup(self) -> None:
        with self._lock:
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory, self.signer, self.ca_cert = None, None, None

    def reply(self, request: Request, document: dict, versions: tuple[str, ...]) -> Reply:
        refusal = refuse_newer_get(request, versions, ATTESTED_SINCE)
        if refusal:
            return refusal
        query = request.query_dict()
        nonce = query.get("nonce")
        if nonce is not None and not (nonce.isascii() and nonce.isdigit() and len(nonce) <= NONCE_MAX):
            return error_reply(400, "Bad request. nonce must be a string of at most 10 digits")
        now = datetime.now(timezone.utc)
        claims = claims_of(document, nonce or f"{now:%Y%m%d-%H%M%S}", query["api-version"], now)
        claims.update(self.claims)
        if self.signature is not None:
            signature = self.signature
        else:
            self.prepare(document)
            signer = self.signer
            if signer is None:  # cleaned up by a stop() racing this request
                return error_reply(503, "Service unavailable")
            content = self.content if self.content is not None else compact_json(claims)
            signature = base64.b64encode(pki.sign(signer, content)).decode("ascii")
        return json_reply(200, {"encoding": "pkcs7", "signature": signature})


def claims_of(document: dict, nonce: str, version: str, now: datetime) -> dict:
    """The signed fields, in the documentation's order."""
    compute = document.get("compute")
    compute = compute if isinstance(compute, dict) else {}
    plan = compute.get("plan")
    plan = plan if isinstance(plan, dict) else {}
    claims = {}
    if version >= LICENSE_TYPE_SINCE and compute.get("licenseType"):
        claims["licenseType"] = compute["licenseType"]
    claims.update({
        "nonce": nonce,
        "plan": {key: str(plan.get(key, "")) for key in ("name", "product", "publisher")},
        "sku": str(compute.get("sku", "")),
        "subscriptionId": str(compute.get("subscriptionId", "")),
        "timeStamp": {"createdOn": f"{now:{DOCUMENT_DATE}}",
                      "expiresOn": f"{now + timedelta(seconds=LIFETIME):{DOCUMENT_DATE}}"},
        "vmId": str(compute.get("vmId", "")),
    })
    return claims

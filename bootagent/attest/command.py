"""`bootagent attest`: fetch this instance's compute section and its attested document,
then verify the document as the documentation's guidance says, one check after another;
the first that fails is named (NotVerified, exit 1)."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from bootagent.attest import claims as checks
from bootagent.attest.openssl import ISSUER_MISSING, Openssl
from bootagent.errors import HttpError, ImdsUnavailable, NotVerified, UsageError
from bootagent.http import Http, Response
from bootagent.imds.client import ImdsClient
from bootagent.imds.versions import ATTESTED_SINCE
from bootagent.text import one_line, quoted

MAX_FETCHED_ISSUERS = 3  # intermediates fetched from issuer URLs, at most
ISSUER_FETCH_TIMEOUT = 15.0
CHAIN_HINT = "give the issuing CA (and any intermediate) with --ca-file, or install it in the system's store"


def attest(ctx, *, nonce: str | None = None, ca_file: str | None = None) -> dict:
    """The verified claims and the signer, or NotVerified naming the failed check; IMDS
    that cannot be had is ImdsUnavailable (exit 3)."""
    try:
        nonce = (checks.check_nonce_option(nonce) if nonce is not None
                 else f"{secrets.randbelow(10 ** 10):010d}")
    except ValueError as err:
        raise UsageError(str(err)) from None
    if ca_file is not None:
        if not Path(ca_file).is_file():
            raise UsageError(f"--ca-file {quoted(ca_file)} is not a file; give a PEM file of trusted "
                             "certificates")
        ca_file = str(Path(ca_file).resolve())  # openssl runs in the scratch directory
    http = Http(ctx.clock, ctx.sleep)
    compute, body = _fetch(ctx, http, nonce)
    signature = _signature_of(body)
    with tempfile.TemporaryDirectory(prefix="bootagent-attest-") as scratch:
        return _verify(Openssl(scratch), Path(scratch), signature, compute=compute, nonce=nonce,
                       ca_file=ca_file, http=http, deadline=ctx.deadline)


def _fetch(ctx, http: Http, nonce: str) -> tuple[dict, bytes]:
    """The instance's compute section (vmId, azEnvironment) and the attested document."""
    client = ImdsClient(http, ctx.imds_url, ctx.config.imds.api_version)
    try:
        compute_body = client.fetch_path("compute", "json", ctx.deadline)
        body = client.fetch_endpoint("attested/document", ctx.deadline, since=ATTESTED_SINCE, nonce=nonce)
    except ImdsUnavailable as err:
        raise ImdsUnavailable(str(err), exit_code=3) from None
    try:
        compute = json.loads(compute_body)
    except ValueError:
        compute = None
    if not isinstance(compute, dict) or not isinstance(compute.get("vmId"), str):
        raise ImdsUnavailable(f"IMDS at {ctx.imds_url} served no compute.vmId to compare the "
                              "document with; check the URL with `bootagent metadata compute`")
    return compute, body


def _signature_of(body: bytes) -> bytes:
    """The DER bytes of the document's base64 `signature` (encoding pkcs7)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("signature"), str):
        # a captive portal's page, a proxy's error: no attested document was had (exit 3)
        raise ImdsUnavailable(f"IMDS answered no attested document (JSON with a signature) but "
                              f"{quoted(body[:60].decode('utf-8', 'replace'))}; check the URL with "
                              "`bootagent doctor`")
    if str(document.get("encoding", "pkcs7")).lower() != "pkcs7":
        raise NotVerified("encoding", f"the document's encoding is {quoted(document.get('encoding'))}, "
                          "not pkcs7", "this agent verifies PKCS#7 documents only")
    text = "".join(document["signature"].split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NotVerified("base64", f"the signature is not base64: {quoted(text[:40])}",
                          "the document is damaged or not IMDS's") from None


def _verify(ssl: Openssl, scratch: Path, der: bytes, *, compute: dict, nonce: str,
            ca_file: str | None, http: Http, deadline: float) -> dict:
    (scratch / "signature.der").write_bytes(der)
    ssl.embedded_certificates(scratch / "signature.der", scratch / "embedded.pem")
    content = ssl.signed_content(scratch / "signature.der", scratch / "signer.pem", scratch / "content")
    signer = ssl.certificate(scratch / "signer.pem")
    now = datetime.now(timezone.utc)
    try:
        not_before, not_after = checks.openssl_date(signer.not_before), checks.openssl_date(signer.not_after)
    except ValueError:
        raise NotVerified("validity", f"openssl printed dates {quoted(signer.not_before)} and "
                          f"{quoted(signer.not_after)} this agent cannot read", "report it") from None
    checks.check_validity(not_before, not_after, now)
    san = checks.check_san(checks.san_dns_names(signer.san), checks.domain_for(compute.get("azEnvironment")))
    _verify_chain(ssl, scratch, signer, ca_file, http, deadline)
    claims = checks.parse_content(content)
    checks.check_claims(claims, nonce=nonce, vm_id=compute["vmId"], now=datetime.now(timezone.utc))
    return {"verified": True,
            "signer": {"san": san, "subject": signer.subject, "issuer": signer.issuer,
                       "notAfter": f"{not_after:%Y-%m-%dT%H:%M:%SZ}"},
            "claims": checks.shown_claims(claims)}


def _verify_chain(ssl: Openssl, scratch: Path, signer, ca_file: str | None, http: Http,
                  deadline: float) -> None:
    """The signer chains to a trusted root; a missing issuer is fetched from the issuer URL
    (AIA caIssuers) of the certificate that lacks it, at most MAX_FETCHED_ISSUERS times."""
    fetched: list[Path] = []
    lacking = signer
    while True:
        failure = ssl.verify(scratch / "signer.pem", [scratch / "embedded.pem", *fetched], ca_file)
        if failure is None:
            return
        if failure.code not in ISSUER_MISSING or len(fetched) >= MAX_FETCHED_ISSUERS or lacking is None:
            raise NotVerified("chain", f"the signing certificate does not chain to a trusted root: "
                              f"{failure.message} (depth {failure.depth})", CHAIN_HINT)
        urls = [url for url in lacking.ca_issuers if url.startswith(("http://", "https://"))]
        if not urls:
            raise NotVerified("chain", f"the signing certificate does not chain to a trusted root: "
                              f"{failure.message}, and names no issuer URL to fetch it from", CHAIN_HINT)
        path = scratch / f"issuer{len(fetched)}.pem"
        _fetch_issuer(ssl, http, urls[0], path, deadline)
        fetched.append(path)
        lacking = ssl.certificate(path)
        if lacking.subject == lacking.issuer:  # a root: nothing further to fetch
            lacking = None


def _fetch_issuer(ssl: Openssl, http: Http, url: str, out: Path, deadline: float) -> None:
    def accept(answer: Response) -> bytes:
        if answer.status != 200:
            raise HttpError(f"HTTP {answer.status} from {url}", status=answer.status)
        return answer.body

    try:
        body = http.retrying("GET", url, headers={}, accept=accept, what=f"fetching the issuer {url}",
                             deadline=min(deadline, http.clock() + ISSUER_FETCH_TIMEOUT))
    except HttpError as err:
        raise NotVerified("chain", f"cannot fetch the issuing certificate: {one_line(err)}",
                          CHAIN_HINT) from None
    raw = out.with_suffix(".fetched")
    raw.write_bytes(body)
    if not ssl.to_pem(raw, out):
        raise NotVerified("chain", f"the issuer URL {quoted(url)} served no certificate", CHAIN_HINT)


def report(result: dict) -> str:
    """The claims, one per line, for a person (values escaped: they are input)."""
    from bootagent.text import escaped

    signer = result["signer"]
    lines = [f"attested document verified: signed by {escaped(signer['san'])} "
             f"(issuer {escaped(signer['issuer'])}), valid until {signer['notAfter']}"]
    for name, value in result["claims"].items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v) or ""
        shown = "" if value is None else str(value)
        lines.append(f"{name}: {escaped(shown) if shown else '(none)'}")
    return "\n".join(lines) + "\n"

"""The checks of an attested document that need no cryptography: values in, values out.

The openssl command has already verified the signature and the chain; what is left is
to read what it printed and what the signed content says.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from bootagent.errors import NotVerified
from bootagent.text import quoted

NONCE_MAX_DIGITS = 10  # the documentation: "a 10-digit string"

# compute.azEnvironment -> the domain every signing certificate's SAN is under.
CLOUD_DOMAINS = {
    "azurepubliccloud": "metadata.azure.com",
    "azureusgovernmentcloud": "metadata.azure.us",
    "azureusgovernment": "metadata.azure.us",
    "azurechinacloud": "metadata.azure.cn",
    "azuregermancloud": "metadata.microsoftazure.de",
    "azuregermanycloud": "metadata.microsoftazure.de",
}
PUBLIC_DOMAIN = CLOUD_DOMAINS["azurepubliccloud"]
# openssl's dates, e.g. "Nov 20 21:57:57 2018 GMT"; the document's, e.g. "11/30/20 21:19:24 -0000"
OPENSSL_DATE = "%b %d %H:%M:%S %Y %Z"
DOCUMENT_DATE = "%m/%d/%y %H:%M:%S %z"


def check_nonce_option(nonce: str) -> str:
    """A nonce the user gave: digits only, at most the documented ten (ValueError else)."""
    if not nonce.isascii() or not nonce.isdigit() or len(nonce) > NONCE_MAX_DIGITS:
        raise ValueError(f"--nonce {quoted(nonce)} is not 1 to {NONCE_MAX_DIGITS} digits; "
                         "give digits only, e.g. --nonce 1234567890")
    return nonce


def domain_for(az_environment: object) -> str:
    """The SAN domain of the cloud `compute.azEnvironment` names (public when absent)."""
    if az_environment in (None, ""):
        return PUBLIC_DOMAIN
    domain = CLOUD_DOMAINS.get(str(az_environment).lower())
    if domain is None:
        raise NotVerified("san", f"compute.azEnvironment {quoted(az_environment)} is no cloud the "
                          "documentation lists, so its signing domain is unknown",
                          "run it on Azure, or report the new cloud")
    return domain


def san_dns_names(entries: list[str]) -> list[str]:
    """The DNS names among the SAN entries openssl printed ("DNS:a", "IP Address:...")."""
    return [entry[4:].strip().lower() for entry in entries if entry.startswith("DNS:")]


def check_san(names: list[str], domain: str) -> str:
    """The SAN name under `domain` (the domain itself or any subdomain), else NotVerified."""
    for name in names:
        bare = name.removeprefix("*.")
        if bare == domain or bare.endswith("." + domain):
            return name
    shown = ", ".join(names) or "no DNS name"
    raise NotVerified("san", f"the signing certificate's SAN ({quoted(shown, 120)}) is not under "
                      f"{domain}", "the document was not signed by the cloud's metadata service")


def openssl_date(text: str) -> datetime:
    """A date as `openssl x509 -startdate/-enddate` prints it."""
    return datetime.strptime(" ".join(text.split()), OPENSSL_DATE).replace(tzinfo=timezone.utc)


def check_validity(not_before: datetime, not_after: datetime, now: datetime) -> None:
    if now < not_before:
        raise NotVerified("validity", f"the signing certificate is not valid before "
                          f"{not_before:%Y-%m-%d %H:%M:%S} UTC (now {now:%Y-%m-%d %H:%M:%S})",
                          "check this machine's clock")
    if now > not_after:
        raise NotVerified("validity", f"the signing certificate expired at "
                          f"{not_after:%Y-%m-%d %H:%M:%S} UTC (now {now:%Y-%m-%d %H:%M:%S})",
                          "check this machine's clock; an expired certificate is never trusted")


def parse_content(content: bytes) -> dict:
    """The signed content: a JSON object, else NotVerified("content")."""
    try:
        claims = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise NotVerified("content", f"the signed content is not JSON: "
                          f"{quoted(content[:60].decode('utf-8', 'replace'))}",
                          "the signer is not IMDS's attested-data service") from None
    if not isinstance(claims, dict):
        raise NotVerified("content", "the signed content is JSON but not an object",
                          "the signer is not IMDS's attested-data service")
    return claims


def timestamps(claims: dict) -> dict:
    """createdOn and expiresOn ("timeStamp" in the documentation's example, "timestamp" in
    its table: either is read)."""
    stamp = claims.get("timeStamp", claims.get("timestamp"))
    return stamp if isinstance(stamp, dict) else {}


def document_date(text: object) -> datetime | None:
    try:
        return datetime.strptime(str(text).strip(), DOCUMENT_DATE).astimezone(timezone.utc)
    except ValueError:
        return None


def check_claims(claims: dict, *, nonce: str, vm_id: str, now: datetime) -> None:
    """The nonce we sent, a document not yet expired, and this instance's vmId."""
    if claims.get("nonce") != nonce:
        raise NotVerified("nonce", f"the signed nonce {quoted(claims.get('nonce'))} is not the "
                          f"{quoted(nonce)} asked for", "the document was replayed; ask again")
    expires = timestamps(claims).get("expiresOn")
    expires_at = document_date(expires)
    if expires_at is None:
        raise NotVerified("expiresOn", f"the signed timeStamp.expiresOn {quoted(expires)} is not a "
                          "date such as '11/30/20 21:19:24 -0000'", "the signer is not IMDS")
    if now > expires_at:
        raise NotVerified("expiresOn", f"the document expired at {expires_at:%Y-%m-%d %H:%M:%S} UTC "
                          f"(now {now:%Y-%m-%d %H:%M:%S})", "check this machine's clock; ask again")
    signed_vm_id = claims.get("vmId")
    if not isinstance(signed_vm_id, str) or signed_vm_id.lower() != vm_id.lower():
        raise NotVerified("vmId", f"the signed vmId {quoted(signed_vm_id)} is not this instance's "
                          f"{quoted(vm_id)}", "the document belongs to another VM")


def shown_claims(claims: dict) -> dict:
    """What `attest` prints: the documented fields, in the documentation's order."""
    stamp = timestamps(claims)
    shown = {name: claims.get(name) for name in ("vmId", "subscriptionId", "sku", "plan",
                                                  "licenseType", "nonce")}
    shown["createdOn"] = stamp.get("createdOn")
    shown["expiresOn"] = stamp.get("expiresOn")
    return shown

"""Test certificates made with the openssl command: a CA, and leaves it issues with the
SAN, dates and issuer URL a test wants (an expired leaf, one outside the domain...).
The fake signs attested documents with them; tests make second signers with them."""

from __future__ import annotations

import secrets
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

OPENSSL_TIMEOUT = 30.0
CURVE = "prime256v1"  # EC keys: made in milliseconds, unlike RSA
CA_DAYS = 30
LEAF_DAYS = 7

CA_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ca]
default_ca = issuing
[issuing]
database = {directory}/index.txt
new_certs_dir = {directory}
serial = {directory}/serial
default_md = sha256
policy = any_name
unique_subject = no
copy_extensions = none
[any_name]
commonName = supplied
"""


class PkiError(RuntimeError):
    """openssl refused to make a certificate (its stderr, one line)."""


class Issued:
    """A certificate and its key, as PEM files; `chain` the intermediates to send along."""

    def __init__(self, cert: Path, key: Path, chain: Path | None = None):
        self.cert, self.key, self.chain = Path(cert), Path(key), Path(chain) if chain else None


def openssl(*args: str, cwd: Path | None = None, data: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(["openssl", *args], input=data, capture_output=True,
                              timeout=OPENSSL_TIMEOUT, cwd=cwd)
    except FileNotFoundError:
        raise PkiError("the openssl command is not installed") from None
    if done.returncode != 0:
        message = " ".join(done.stderr.decode("utf-8", "replace").split())[:300]
        raise PkiError(f"openssl {args[0]} failed: {message}")
    return done.stdout


def make_ca(directory: Path, name: str = "bootagent fake-imds test CA", *,
            issuer: Issued | None = None, ca_issuers_url: str | None = None) -> Issued:
    """A CA in `directory` (made if needed): self-signed, or an intermediate of `issuer`."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = directory / "ca.key"
    cert = directory / "ca.pem"
    _new_key(key)
    if issuer is None:
        config = _config(directory)
        openssl("req", "-new", "-x509", "-config", str(config), "-extensions", "ca_ext",
                "-key", str(key), "-subj", "/CN=" + name, "-days", str(CA_DAYS),
                "-set_serial", _serial(), "-out", str(cert))
    else:
        extensions = "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
        _issue(issuer, key, cert, name, extensions, ca_issuers_url=ca_issuers_url,
               not_before=None, not_after=None)
    return Issued(cert, key)


def issue_leaf(ca: Issued, directory: Path, *, san: str | None = "fake-imds.metadata.azure.com",
               common_name: str | None = None, not_before: datetime | None = None,
               not_after: datetime | None = None, ca_issuers_url: str | None = None,
               chain: Path | None = None) -> Issued:
    """A signing certificate from `ca`: SAN DNS name `san` (None: no SAN), valid from
    `not_before` to `not_after` (default: from now for LEAF_DAYS days)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key, cert = directory / "leaf.key", directory / "leaf.pem"
    _new_key(key)
    extensions = "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
    if san:
        extensions += f"subjectAltName = DNS:{san}\n"
    _issue(ca, key, cert, common_name or san or "attested-data signer", extensions,
           ca_issuers_url=ca_issuers_url, not_before=not_before, not_after=not_after)
    return Issued(cert, key, chain)


def sign(signer: Issued, content: bytes) -> bytes:
    """PKCS#7 SignedData over `content`, content attached, in DER: as IMDS signs."""
    args = ["smime", "-sign", "-binary", "-nodetach", "-outform", "DER", "-md", "sha256",
            "-signer", str(signer.cert), "-inkey", str(signer.key)]
    if signer.chain:
        args += ["-certfile", str(signer.chain)]
    return openssl(*args, data=content)


def der_of(cert: Path) -> bytes:
    """A certificate as DER (what an issuer URL serves)."""
    return openssl("x509", "-in", str(cert), "-outform", "DER")


def _new_key(path: Path) -> None:
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{CURVE}", "-out", str(path))
    path.chmod(0o600)


def _config(directory: Path) -> Path:
    config = directory / "openssl.cnf"
    if not config.exists():
        config.write_text(CA_CONFIG.format(directory=directory))
        (directory / "index.txt").write_text("")
        (directory / "serial").write_text(_serial()[2:] + "\n")
    return config


def _issue(ca: Issued, key: Path, cert: Path, name: str, extensions: str, *,
           ca_issuers_url: str | None, not_before: datetime | None, not_after: datetime | None) -> None:
    """`openssl ca` signs a request for `key`: the one command that takes any dates."""
    ca_dir = ca.cert.parent
    config = _config(ca_dir)
    if ca_issuers_url:
        extensions += f"authorityInfoAccess = caIssuers;URI:{ca_issuers_url}\n"
    extfile = cert.with_suffix(".ext")
    extfile.write_text(extensions)
    request = cert.with_suffix(".csr")
    openssl("req", "-new", "-config", str(config), "-key", str(key), "-subj", "/CN=" + name,
            "-out", str(request))
    start = not_before or datetime.now(timezone.utc) - timedelta(minutes=5)
    end = not_after or start + timedelta(days=LEAF_DAYS)
    openssl("ca", "-batch", "-config", str(config), "-cert", str(ca.cert), "-keyfile", str(ca.key),
            "-in", str(request), "-out", str(cert), "-notext", "-extfile", str(extfile),
            "-startdate", f"{start:%Y%m%d%H%M%SZ}", "-enddate", f"{end:%Y%m%d%H%M%SZ}")


def _serial() -> str:
    return "0x" + secrets.token_hex(8)

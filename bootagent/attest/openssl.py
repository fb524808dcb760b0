"""The openssl command: the only cryptography `bootagent attest` uses. It parses the
PKCS#7, verifies the signature over the content, prints the signer's fields and builds
the chain; we read what it prints, never DER or ASN.1 ourselves."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bootagent.errors import NotVerified, StepError
from bootagent.record import Factory, Record
from bootagent.text import one_line

OPENSSL_TIMEOUT = 30.0
# `openssl verify`'s errors that mean "the issuer is not at hand" (fetch it, then retry)
ISSUER_MISSING = (2, 20)
NOT_PKCS7_HINT = "the signature is not PKCS#7 SignedData as IMDS sends it"


class Certificate(Record):
    """What `openssl x509` printed about one certificate."""

    subject: str = ""
    issuer: str = ""
    not_before: str = ""
    not_after: str = ""
    san: list = Factory(list)
    ca_issuers: list = Factory(list)


class ChainFailure(Record):
    code: int
    depth: int
    message: str


class Openssl:
    """Runs `openssl` on files in `directory` (the caller's private scratch directory)."""

    def __init__(self, directory: str | Path, binary: str = "openssl"):
        self.directory = Path(directory)
        self.binary = binary

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([self.binary, *args], capture_output=True, timeout=OPENSSL_TIMEOUT,
                                  cwd=self.directory, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise StepError("the openssl command is not installed; install the openssl "
                            "package") from None
        except subprocess.TimeoutExpired:
            raise StepError(f"openssl {args[0]} did not finish in {OPENSSL_TIMEOUT:.0f} s") from None

    def embedded_certificates(self, der: Path, out: Path) -> None:
        """Every certificate the PKCS#7 carries, as PEM in `out`; NotVerified("pkcs7")."""
        done = self._run("pkcs7", "-inform", "DER", "-in", str(der), "-print_certs", "-out", str(out))
        if done.returncode != 0:
            raise NotVerified("pkcs7", f"openssl cannot read it as PKCS#7: {_stderr(done)}",
                              NOT_PKCS7_HINT)
        if b"BEGIN CERTIFICATE" not in out.read_bytes():
            raise NotVerified("pkcs7", "the PKCS#7 carries no certificate", NOT_PKCS7_HINT)

    def signed_content(self, der: Path, signer_out: Path, content_out: Path) -> bytes:
        """The content, once the signature over it verifies with the embedded signer's key
        (the signer's chain is checked apart); NotVerified("signature") else."""
        done = self._run("cms", "-verify", "-inform", "DER", "-in", str(der), "-binary", "-noverify",
                         "-signer", str(signer_out), "-out", str(content_out))
        if done.returncode != 0:
            raise NotVerified("signature", f"the PKCS#7 signature does not verify over its content: "
                              f"{_stderr(done)}", "the document was altered or not signed by IMDS")
        return content_out.read_bytes()

    def certificate(self, pem: Path, inform: str = "PEM") -> Certificate:
        """The first certificate of `pem`: subject, issuer, dates, SAN and issuer URLs."""
        done = self._run("x509", "-inform", inform, "-in", str(pem), "-noout", "-nameopt", "RFC2253",
                         "-subject", "-issuer", "-startdate", "-enddate",
                         "-ext", "subjectAltName,authorityInfoAccess")
        if done.returncode != 0:
            raise NotVerified("pkcs7", f"openssl cannot read the signer's certificate: {_stderr(done)}",
                              NOT_PKCS7_HINT)
        return parse_x509_text(done.stdout.decode("utf-8", "replace"))

    def to_pem(self, source: Path, out: Path) -> bool:
        """A certificate fetched from an issuer URL (DER, else PEM) as PEM; False if neither."""
        for inform in ("DER", "PEM"):
            if self._run("x509", "-inform", inform, "-in", str(source), "-out", str(out)).returncode == 0:
                return True
        return False

    def verify(self, signer: Path, untrusted: list[Path], ca_file: str | None) -> ChainFailure | None:
        """None when `signer` chains to a trusted root (the system's store, plus `ca_file`);
        else the first failure openssl names."""
        args = ["verify"]
        if ca_file:
            args += ["-CAfile", ca_file]
        for path in untrusted:
            args += ["-untrusted", str(path)]
        done = self._run(*args, str(signer))
        if done.returncode == 0:
            return None
        return parse_verify_failure((done.stdout + done.stderr).decode("utf-8", "replace"))


def parse_x509_text(text: str) -> Certificate:
    """`openssl x509 -noout -subject -issuer -startdate -enddate -ext ...`'s output."""
    cert = Certificate()
    section = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith((" ", "\t")):
            name, _, value = line.partition("=")
            section = None
            if line.startswith("X509v3 Subject Alternative Name"):
                section = cert.san
            elif line.startswith("Authority Information Access"):
                section = cert.ca_issuers
            elif name in ("subject", "issuer"):
                setattr(cert, name, value.strip())
            elif name == "notBefore":
                cert.not_before = value.strip()
            elif name == "notAfter":
                cert.not_after = value.strip()
            continue
        if section is cert.san:
            cert.san.extend(part.strip() for part in line.split(",") if part.strip())
        elif section is cert.ca_issuers and line.strip().startswith("CA Issuers - URI:"):
            cert.ca_issuers.append(line.strip()[len("CA Issuers - URI:"):])
    return cert


def parse_verify_failure(text: str) -> ChainFailure:
    """`error 20 at 0 depth lookup: unable to get local issuer certificate` -> its parts."""
    for line in text.splitlines():
        head, _, message = line.partition(" depth lookup:")
        words = head.split()
        if message and len(words) >= 4 and words[0] == "error" and words[1].isdigit() \
                and words[3].isdigit():
            return ChainFailure(int(words[1]), int(words[3]), message.strip())
    return ChainFailure(-1, 0, one_line(text) or "openssl verify failed")


def _stderr(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return one_line(" ".join(lines[:2]) or f"exit {done.returncode}", 160)

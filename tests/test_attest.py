"""`bootagent attest` against the fake over loopback: a verified document, and each way
a document must be refused (exit 1, one line naming the check, never a traceback), made
by signers this module controls (certificates made with the openssl command)."""

from __future__ import annotations

import base64
import json
import socket
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from bootagent.fake import pki
from bootagent.fake.server import FakeImds
from conftest import background, loopback_server, run_cli


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1 and "Traceback" not in text


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A trusted CA with good and bad leaves, and a second CA nobody trusts."""
    base = tmp_path_factory.mktemp("pki")
    now = datetime.now(timezone.utc)
    ca = pki.make_ca(base / "ca", "attest test CA")
    other = pki.make_ca(base / "other", "untrusted CA")
    return {
        "ca": ca,
        "good": pki.issue_leaf(ca, base / "good", san="eastus.metadata.azure.com"),
        "untrusted": pki.issue_leaf(other, base / "untrusted", san="eastus.metadata.azure.com"),
        "outside": pki.issue_leaf(ca, base / "outside", san="metadata.azure.com.example.net"),
        "china": pki.issue_leaf(ca, base / "china", san="chinanorth2.metadata.azure.cn"),
        "expired": pki.issue_leaf(ca, base / "expired", san="eastus.metadata.azure.com",
                                  not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)),
        "future": pki.issue_leaf(ca, base / "future", san="eastus.metadata.azure.com",
                                 not_before=now + timedelta(days=1), not_after=now + timedelta(days=30)),
    }


def attest(fake: FakeImds, ca: Path, *args: str):
    return run_cli("attest", "--imds-url", fake.url, "--ca-file", str(ca), "--timeout", "20", *args)


@pytest.fixture
def signed_by(certs, document):
    """A fake that signs with one of `certs`' leaves (stopped after the test)."""
    fakes = []

    def make(name: str, doc: dict | None = None) -> FakeImds:
        fake = FakeImds(doc or document, attest_signer=certs[name]).start()
        fakes.append(fake)
        return fake
    yield make
    for fake in fakes:
        fake.stop()


def refused(done, check: str):
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert one_line(done.stderr), done.stderr
    assert f"not verified: {check} check failed" in done.stderr, done.stderr
    return done.stderr


# -- verified -------------------------------------------------------------------------

def test_the_fakes_own_document_verifies_with_its_ca_out(tmp_path, document):
    """As the README shows it: fake-imds --ca-out, then attest --ca-file."""
    ca = tmp_path / "fake-ca.pem"
    with background("fake-imds", "--ca-out", str(ca)) as fake:
        url = fake.stdout.readline().strip()
        assert ca.read_text().startswith("-----BEGIN CERTIFICATE-----")  # written before the URL
        done = run_cli("attest", "--imds-url", url, "--ca-file", str(ca), "--timeout", "20")
    assert done.returncode == 0, done.stderr
    compute = document["compute"]
    assert done.stdout.startswith("attested document verified: signed by fake-imds.metadata.azure.com")
    for name in ("vmId", "subscriptionId", "sku"):
        assert f"{name}: {compute[name]}\n" in done.stdout
    nonce = next(line for line in done.stdout.splitlines() if line.startswith("nonce: "))[7:]
    assert nonce.isdigit() and len(nonce) == 10
    assert "expiresOn: " in done.stdout and "createdOn: " in done.stdout


def test_json_is_one_object_with_the_nonce_given(signed_by, certs, document):
    fake = signed_by("good")
    done = attest(fake, certs["ca"].cert, "--nonce", "0042", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["verified"] is True
    assert result["signer"]["san"] == "eastus.metadata.azure.com"
    assert result["claims"]["nonce"] == "0042"
    assert result["claims"]["vmId"] == document["compute"]["vmId"]
    assert result["claims"]["plan"] == {"name": "", "product": "", "publisher": ""}
    query = [entry["query"] for entry in fake.requests if entry["path"] == "/metadata/attested/document"]
    assert query == [{"api-version": "2021-08-01", "nonce": "0042"}]
    assert any(entry["path"] == "/metadata/instance/compute" for entry in fake.requests)


def test_a_sovereign_cloud_is_checked_against_its_own_domain(signed_by, certs, document):
    document["compute"]["azEnvironment"] = "AzureChinaCloud"
    assert attest(signed_by("china", document), certs["ca"].cert).returncode == 0
    stderr = refused(attest(signed_by("good", document), certs["ca"].cert), "san")
    assert "metadata.azure.cn" in stderr


def test_a_missing_intermediate_is_fetched_from_the_issuer_url(tmp_path, document):
    root = pki.make_ca(tmp_path / "root", "test root")
    served = {}

    class Issuer(BaseHTTPRequestHandler):
        def do_GET(self):
            served[self.path] = served.get(self.path, 0) + 1
            body = pki.der_of(intermediate.cert)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with loopback_server(Issuer) as issuer_url:
        intermediate = pki.make_ca(tmp_path / "intermediate", "test intermediate", issuer=root)
        leaf = pki.issue_leaf(intermediate, tmp_path / "leaf", san="westeurope.metadata.azure.com",
                              ca_issuers_url=issuer_url + "/intermediate.crt")
        with FakeImds(document, attest_signer=leaf) as fake:
            done = attest(fake, root.cert)
    assert done.returncode == 0, done.stderr
    assert served == {"/intermediate.crt": 1}


def test_a_relative_ca_file_is_the_callers(signed_by, certs, tmp_path):
    """openssl runs in a scratch directory: the path is taken where the user gave it."""
    import shutil
    import subprocess

    from conftest import BOOTAGENT, plain_env

    shutil.copy(certs["ca"].cert, tmp_path / "ca.pem")
    fake = signed_by("good")
    done = subprocess.run([BOOTAGENT, "attest", "--imds-url", fake.url, "--ca-file", "ca.pem"],
                          cwd=tmp_path, env=plain_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    missing = run_cli("attest", "--imds-url", fake.url, "--ca-file", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2 and one_line(missing.stderr)


# -- refused: one line, the check named --------------------------------------------------

def test_a_signature_that_is_not_base64(signed_by, certs):
    fake = signed_by("good")
    fake.attested.signature = "MIIE$$not-base64!!"
    refused(attest(fake, certs["ca"].cert), "base64")


def test_a_signature_that_is_not_pkcs7(signed_by, certs):
    fake = signed_by("good")
    fake.attested.signature = base64.b64encode(b"this is base64, but no PKCS#7 at all").decode()
    refused(attest(fake, certs["ca"].cert), "pkcs7")


def test_a_signature_that_does_not_verify_over_its_content(signed_by, certs):
    der = bytearray(pki.sign(certs["good"], b'{"vmId": "x"}'))
    der[-1] ^= 0x01  # the last byte of the signature value itself
    fake = signed_by("good")
    fake.attested.signature = base64.b64encode(bytes(der)).decode()
    refused(attest(fake, certs["ca"].cert), "signature")


def test_a_signer_from_an_untrusted_ca(signed_by, certs):
    stderr = refused(attest(signed_by("untrusted"), certs["ca"].cert), "chain")
    assert "--ca-file" in stderr


def test_a_signer_whose_san_is_outside_the_domain(signed_by, certs):
    stderr = refused(attest(signed_by("outside"), certs["ca"].cert), "san")
    assert "metadata.azure.com.example.net" in stderr


def test_an_expired_signer(signed_by, certs):
    assert "expired" in refused(attest(signed_by("expired"), certs["ca"].cert), "validity")


def test_a_signer_not_yet_valid(signed_by, certs):
    assert "not valid before" in refused(attest(signed_by("future"), certs["ca"].cert), "validity")


def test_a_wrong_nonce(signed_by, certs):
    fake = signed_by("good")
    fake.attested.claims = {"nonce": "1111111111"}
    stderr = refused(attest(fake, certs["ca"].cert, "--nonce", "2222222222"), "nonce")
    assert "'1111111111'" in stderr and "'2222222222'" in stderr


def test_an_expired_document(signed_by, certs):
    fake = signed_by("good")
    fake.attested.claims = {"timeStamp": {"createdOn": "11/30/20 21:19:19 -0000",
                                          "expiresOn": "11/30/20 21:19:24 -0000"}}
    refused(attest(fake, certs["ca"].cert), "expiresOn")


def test_a_vm_id_that_is_not_the_instances(signed_by, certs, document):
    fake = signed_by("good")
    fake.attested.claims = {"vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6"}
    stderr = refused(attest(fake, certs["ca"].cert), "vmId")
    assert document["compute"]["vmId"] in stderr


def test_content_that_is_not_json(signed_by, certs):
    fake = signed_by("good")
    fake.attested.content = b"vmId=6fce6ebb\x1b[31m"
    stderr = refused(attest(fake, certs["ca"].cert), "content")
    assert "\x1b" not in stderr and "\\x1b" in stderr


def test_the_fake_command_signs_with_a_given_certificate(certs):
    """--attest-cert/--attest-key: a verifier's tests serve a bad signer from the shell."""
    expired = certs["expired"]
    with background("fake-imds", "--attest-cert", str(expired.cert),
                    "--attest-key", str(expired.key)) as fake:
        url = fake.stdout.readline().strip()
        done = run_cli("attest", "--imds-url", url, "--ca-file", str(certs["ca"].cert), "--timeout", "20")
    refused(done, "validity")


def test_the_fake_refuses_ca_out_beside_a_given_signer(certs, tmp_path):
    good = certs["good"]
    done = run_cli("fake-imds", "--attest-cert", str(good.cert), "--attest-key", str(good.key),
                   "--ca-out", str(tmp_path / "ca.pem"))
    assert done.returncode == 2 and "--ca-out" in done.stderr and done.stdout == ""
    assert not (tmp_path / "ca.pem").exists()


# -- usage and IMDS ---------------------------------------------------------------------

@pytest.mark.parametrize("nonce", ["abc", "12345678901", "12 34", "１２３"])
def test_a_nonce_that_is_not_up_to_ten_digits_is_a_usage_error(fake_imds, tmp_path, nonce):
    done = run_cli("attest", "--imds-url", fake_imds.url, "--nonce", nonce, "--timeout", "5")
    assert done.returncode == 2 and one_line(done.stderr), done.stderr
    assert fake_imds.count("/metadata/") == 0


def test_an_answer_that_is_no_attested_document_is_exit_3(document, certs):
    """A captive portal's page where the document should be: IMDS was not had."""
    # the plan's first item answers the compute request with the compute section (what it
    # asked for anyway), the second answers the attested request with an HTML page
    with FakeImds(document, faults="notdoc,html", rate_limit=0) as fake:
        done = attest(fake, certs["ca"].cert)
    assert done.returncode == 3, done.stderr
    assert one_line(done.stderr) and "no attested document" in done.stderr, done.stderr


def test_imds_unreachable_is_exit_3(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = run_cli("attest", "--imds-url", f"http://127.0.0.1:{port}", "--timeout", "1")
    assert done.returncode == 3, done.stderr
    assert one_line(done.stderr), done.stderr


def test_every_subpackage_ships_in_the_wheel():
    """A package left out installs without it (the bench's regular install of this tree
    once failed so: no bootagent.attest): pyproject's discovery must find every one."""
    import tomllib

    from setuptools import find_packages

    from conftest import REPO

    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = set(find_packages(str(REPO), include=find["include"]))
    found = {".".join(init.parent.relative_to(REPO).parts)
             for init in (REPO / "bootagent").rglob("__init__.py")}
    assert found <= shipped, sorted(found - shipped)


def test_the_fake_serves_the_rest_without_openssl(tmp_path, document):
    """A machine without openssl still gets its fake IMDS (attested data answers 500);
    --ca-out there is a usage error, not a missing file."""
    import os
    import subprocess
    import sys

    from conftest import plain_env

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python3")
    env = {**plain_env(), "PATH": str(bin_dir)}
    command = [sys.executable, "-m", "bootagent.fake"]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as fake:
        try:
            url = fake.stdout.readline().strip()
            done = run_cli("metadata", "--imds-url", url, "compute/vmId", "--format", "text")
            assert done.returncode == 0 and done.stdout.strip() == document["compute"]["vmId"]
        finally:
            fake.terminate()
        assert "no attested documents" in fake.communicate(timeout=10)[1]
    refused_start = subprocess.run([*command, "--ca-out", str(tmp_path / "ca.pem")], env=env,
                                   capture_output=True, text=True, timeout=60)
    assert refused_start.returncode == 2 and "openssl" in refused_start.stderr
    assert refused_start.stdout == ""


def test_attest_without_openssl_says_so_in_one_line(signed_by, certs, tmp_path):
    fake = signed_by("good")
    done = run_cli("attest", "--imds-url", fake.url, "--ca-file", str(certs["ca"].cert),
                   env={"PATH": str(tmp_path)})
    assert done.returncode == 1 and one_line(done.stderr), done.stderr
    assert "openssl command is not installed" in done.stderr

"""Azure Arc: IMDS_ENDPOINT, no wireserver, and the managed-identity 401 challenge."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_doctor import lines
from test_report import make_boot, on_azure

from bootagent import doctor
from bootagent.errors import StepError
from bootagent.fake.server import FakeImds
from bootagent.http import Http
from bootagent.platform import identity
from bootagent.runner import resolve_imds_url
from bootagent.steps import report
from conftest import result_json, run_cli

SECRET = "0123456789abcdef-arc-secret"
TOKEN = "eyJ-super-secret-token"
NO_PROXY_ENV = {"HTTP_PROXY": "", "HTTPS_PROXY": "", "http_proxy": "", "https_proxy": "",
                "ALL_PROXY": "", "all_proxy": "", "IDENTITY_ENDPOINT": ""}


def tokens_dir(root):
    path = root / "var/opt/azcmagent/tokens"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Challenger:
    """A tiny Arc identity endpoint whose challenge names a realm chosen by the test."""

    def __init__(self, realm: str):
        self.realm = realm
        self.authorizations: list[str | None] = []
        challenger = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                auth = self.headers.get("Authorization")
                if not self.path.startswith(identity.TOKEN_PATH):
                    status, body = 404, {"error": "Not found"}
                elif auth == f"Basic {SECRET}":
                    status, body = 200, {"access_token": TOKEN, "expires_in": "3599"}
                else:
                    status, body = 401, {"error": "unauthorized_client"}
                if status != 404:
                    challenger.authorizations.append(auth)
                data = json.dumps(body).encode()
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", f"Basic realm={challenger.realm}")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def challenger():
    made = []

    def make(realm: str) -> Challenger:
        made.append(Challenger(realm))
        return made[-1]
    yield make
    for server in made:
        server.close()


def token(ctx) -> int:
    return identity.request_token(ctx, Http(ctx.clock, ctx.sleep), time.monotonic() + 3)


# --- IMDS_ENDPOINT --------------------------------------------------------------------

def test_auto_uses_imds_endpoint_and_means_arc():
    assert resolve_imds_url("auto", {"IMDS_ENDPOINT": "http://localhost:40342/"}) == ("http://localhost:40342", True)
    assert resolve_imds_url("auto", {}) == ("http://169.254.169.254", False)
    assert resolve_imds_url("auto", {"IMDS_ENDPOINT": "  "}) == ("http://169.254.169.254", False)
    assert resolve_imds_url("http://10.0.0.5/", {"IMDS_ENDPOINT": "http://localhost:40342"}) == \
        ("http://10.0.0.5", False)


def test_cli_doctor_on_arc_follows_imds_endpoint_and_passes_the_challenge(root):
    on_azure(root)  # the DMI may say Azure: IMDS_ENDPOINT still means Arc
    with FakeImds(arc=True, arc_tokens_dir=str(tokens_dir(root))) as fake:
        result = run_cli("doctor", "--root", str(root), env={**NO_PROXY_ENV, "IMDS_ENDPOINT": fake.url})
        secrets = [p.read_text() for p in tokens_dir(root).iterdir()]
        wire = fake.count("/machine", "GET") + fake.count("/machine", "POST")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines(result.stdout)
    assert checks["route"] == ("SKIP", "on Azure Arc: IMDS is the local Arc agent")
    assert checks["metadata"][0] == "PASS"
    assert checks["token"] == ("PASS", "issued through the Arc challenge, expires in 86399 s")
    assert checks["wireserver"] == ("SKIP", "on Azure Arc: no wireserver")
    assert wire == 0
    assert secrets and not any(secret in result.stdout + result.stderr for secret in secrets)


def test_identity_endpoint_is_used_for_tokens(make_ctx, root):
    with FakeImds(arc=True, arc_tokens_dir=str(tokens_dir(root))) as fake:
        ctx = make_ctx(imds_url="http://127.0.0.1:9", env={"IDENTITY_ENDPOINT": fake.url + identity.TOKEN_PATH})
        assert token(ctx) == 86399
        assert fake.count(identity.TOKEN_PATH, "GET") == 2


def test_arc_report_sends_nothing_to_any_wireserver(root, make_ctx, document):
    on_azure(root)
    with FakeImds(document, arc=True) as fake:
        ctx = make_ctx(on_arc=True, config={"azure": {"wireserver": fake.url}}, deadline=time.monotonic() + 5)
        outcome = report.run(ctx, make_boot(document))
        assert outcome.status == "skipped" and outcome.reason == "on Azure Arc: no wireserver"
        assert fake.requests == []


# --- the challenge --------------------------------------------------------------------

def test_the_secret_is_read_from_the_tokens_dir_and_never_printed(root, make_ctx, challenger):
    (tokens_dir(root) / "abc.key").write_text(SECRET + "\n")
    server = challenger("/var/opt/azcmagent/tokens/abc.key")
    ctx = make_ctx(imds_url=server.url, on_arc=True, env={})
    code, text = doctor.report(ctx)
    assert lines(text)["token"] == ("PASS", "issued through the Arc challenge, expires in 3599 s")
    assert server.authorizations == [None, f"Basic {SECRET}"]
    assert SECRET not in text and TOKEN not in text


def test_a_realm_outside_the_tokens_dir_is_refused(make_ctx):
    with FakeImds(arc=True) as fake:  # the fake's secrets live in a temp dir, not under the root
        ctx = make_ctx(imds_url=fake.url, on_arc=True, env={})
        code, text = doctor.report(ctx)
        secrets = [p.read_text() for p in Path(fake.arc_tokens_dir).iterdir()]
    status, reason = lines(text)["token"]
    assert code == 1 and status == "FAIL"
    assert "is not in /var/opt/azcmagent/tokens" in reason
    assert not any(secret in text for secret in secrets)


def test_only_the_realms_base_name_is_used(root, make_ctx, challenger):
    (root / "etc/evil.key").write_text(SECRET)          # what the realm's own path points at
    server = challenger(f"{root}/var/opt/azcmagent/tokens/../../../../etc/evil.key")
    ctx = make_ctx(imds_url=server.url, on_arc=True, env={})
    with pytest.raises(StepError, match="evil.key is not in /var/opt/azcmagent/tokens"):
        token(ctx)
    assert server.authorizations == [None]


def test_a_symlinked_key_file_is_refused(root, make_ctx, challenger, tmp_path):
    outside = tmp_path / "outside.key"
    outside.write_text(SECRET)
    os.symlink(outside, tokens_dir(root) / "link.key")
    server = challenger("/var/opt/azcmagent/tokens/link.key")
    ctx = make_ctx(imds_url=server.url, on_arc=True, env={})
    code, text = doctor.report(ctx)
    status, reason = lines(text)["token"]
    assert status == "FAIL" and "symlink" in reason
    assert server.authorizations == [None]


def test_a_symlinked_tokens_dir_is_refused(root, make_ctx, challenger, tmp_path):
    elsewhere = tmp_path / "tokens"
    elsewhere.mkdir()
    (elsewhere / "abc.key").write_text(SECRET)
    (root / "var/opt/azcmagent").mkdir(parents=True)
    os.symlink(elsewhere, root / "var/opt/azcmagent/tokens")
    server = challenger("/var/opt/azcmagent/tokens/abc.key")
    with pytest.raises(StepError, match="symlink"):
        token(make_ctx(imds_url=server.url, on_arc=True, env={}))
    assert server.authorizations == [None]


def test_an_oversize_or_odd_key_file_is_refused(root, make_ctx, challenger):
    (tokens_dir(root) / "big.key").write_text("x" * 4097)
    (tokens_dir(root) / "dir.key").mkdir()
    (tokens_dir(root) / "odd.key").write_text("two words\n")
    for name, why in (("big.key", "larger than 4096"), ("dir.key", "not a regular file"),
                      ("odd.key", "does not hold a usable secret")):
        server = challenger(f"/var/opt/azcmagent/tokens/{name}")
        with pytest.raises(StepError, match=why):
            token(make_ctx(imds_url=server.url, on_arc=True, env={}))
        assert server.authorizations == [None]


@pytest.mark.parametrize("header, expected", [
    ("Basic realm=/var/opt/azcmagent/tokens/abc.key", "abc.key"),
    ('Basic realm="/var/opt/azcmagent/tokens/abc.key"', "abc.key"),
    ("basic realm=C:\\ProgramData\\AzureConnectedMachineAgent\\Tokens\\x-1.key", "x-1.key"),
    ("Basic realm=/tmp/../var/opt/azcmagent/tokens/a_b.key", "a_b.key"),
])
def test_realm_key_name_takes_the_base_name(header, expected):
    assert identity.realm_key_name(header) == expected


@pytest.mark.parametrize("header", [
    "Basic realm=/etc/shadow", "Basic realm=/var/opt/azcmagent/tokens/", "Basic realm=.key",
    "Basic realm=/x/..key", "Bearer realm=/var/opt/azcmagent/tokens/a.key", "Basic",
    "Basic realm=/var/opt/azcmagent/tokens/a.key.txt",
])
def test_realm_key_name_refuses_anything_else(header):
    with pytest.raises(StepError):
        identity.realm_key_name(header)


def test_a_challenge_off_arc_is_not_followed(root, make_ctx, challenger):
    (tokens_dir(root) / "abc.key").write_text(SECRET)
    server = challenger("/var/opt/azcmagent/tokens/abc.key")
    ctx = make_ctx(imds_url=server.url, env={})
    code, text = doctor.report(ctx)
    status, reason = lines(text)["token"]
    assert status == "FAIL" and "HTTP 401" in reason
    assert server.authorizations == [None]


def test_cli_run_on_arc_skips_what_arc_lacks_and_exits_0(root):
    on_azure(root)
    with FakeImds(arc=True) as fake:
        result = run_cli("run", "--root", str(root), "--timeout", "5", env={"IMDS_ENDPOINT": fake.url})
        assert fake.count("/metadata/instance", "GET") == 1
        assert fake.count("/machine", "GET") + fake.count("/machine", "POST") == 0
    assert result.returncode == 0, result.stderr
    record = result_json(root)
    assert record["imds"]["url"] == fake.url
    steps = record["steps"]
    assert steps["users"]["status"] == "skipped" and steps["ssh_keys"]["status"] == "skipped"
    assert isinstance(steps["report_ready"].pop("duration_ms"), int)
    assert steps["report_ready"] == {"status": "skipped", "changed": [], "error": None,
                                     "reason": "on Azure Arc: no wireserver"}

"""`bootagent doctor`: the reference connectivity checks against real loopback servers."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler

import pytest
from test_report import closed_port, on_azure

from bootagent import doctor
from bootagent.fake.server import FakeImds, default_document
from conftest import loopback_server, run_cli

ORDER = ["proxy", "route", "tcp", "metadata", "api-version", "token", "wireserver"]
# /proc/net/route of a VM: default route via 192.168.2.1 on eth0, 192.168.2.0/24 on-link
ROUTES = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
          "eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
          "eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
NO_DEFAULT = ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[2] + "\n"


def lines(text: str) -> dict:
    """{check: (status, reason)} from doctor's output, asserting one line per check in order."""
    parsed = [line.split(" ", 2) for line in text.splitlines()]
    assert [name for name, *_ in parsed] == ORDER
    return {name: (status, reason) for name, status, reason in parsed}


@pytest.fixture
def ctx_for(make_ctx):
    def make(url: str, **overrides):
        overrides.setdefault("env", {})
        return make_ctx(imds_url=url, **overrides)
    return make


class ImpostorHandler(BaseHTTPRequestHandler):
    """Answers like IMDS but never checks the Metadata header (a proxy or an impostor)."""

    def do_GET(self):
        if self.path.startswith("/metadata/versions"):
            value = {"apiVersions": ["2021-08-01"]}
        elif self.path.startswith("/metadata/instance"):
            value = default_document()
        else:
            value = {"hello": "world"}
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def impostor():
    with loopback_server(ImpostorHandler) as url:
        yield url


def test_healthy_fake_passes_and_never_shows_the_token(ctx_for, fake_imds):
    code, text = doctor.report(ctx_for(fake_imds.url))
    checks = lines(text)
    assert code == 0
    assert checks["proxy"] == ("PASS", "no proxy variables in the environment")
    assert checks["route"][0] == "SKIP" and "loopback" in checks["route"][1]
    for name in ("tcp", "metadata", "api-version", "token"):
        assert checks[name][0] == "PASS", (name, checks[name])
    assert checks["token"][1] == "issued, expires in 86399 s"
    assert checks["wireserver"] == ("SKIP", "not on Azure (no Azure chassis asset tag)")
    assert "fake-" not in text and "access_token" not in text


def test_on_azure_the_wireserver_goal_state_is_checked(root, ctx_for, fake_imds):
    on_azure(root)
    code, text = doctor.report(ctx_for(fake_imds.url, config={"azure": {"wireserver": fake_imds.url}}))
    assert code == 0
    assert lines(text)["wireserver"] == ("PASS", "goal state incarnation 1 answered")
    assert fake_imds.count("/machine", "GET") == 1 and fake_imds.count("/machine", "POST") == 0


def test_an_unreachable_wireserver_fails_with_a_hint(root, ctx_for, fake_imds):
    on_azure(root)
    ctx = ctx_for(fake_imds.url, config={"azure": {"wireserver": f"http://127.0.0.1:{closed_port()}"}})
    code, text = doctor.report(ctx)
    status, reason = lines(text)["wireserver"]
    assert code == 1 and status == "FAIL" and "firewall" in reason


def test_dead_port_fails_tcp_with_a_hint_and_skips_what_needs_it(ctx_for):
    started = time.monotonic()
    code, text = doctor.report(ctx_for(f"http://127.0.0.1:{closed_port()}"))
    checks = lines(text)
    assert code == 1
    assert checks["tcp"][0] == "FAIL" and "connection refused" in checks["tcp"][1].lower()
    assert "check that" in checks["tcp"][1]
    for name in ("metadata", "api-version", "token"):
        assert checks[name] == ("SKIP", doctor.NEEDS_TCP)
    assert time.monotonic() - started < 5


def test_proxy_variables_are_named_bypassed_and_their_values_never_shown(ctx_for, fake_imds):
    env = {"HTTP_PROXY": "http://alice:pa55word@proxy.invalid:3128", "https_proxy": "http://proxy.invalid:3128"}
    code, text = doctor.report(ctx_for(fake_imds.url, env=env))
    checks = lines(text)
    assert code == 0
    status, reason = checks["proxy"]
    assert status == "PASS" and "https_proxy" in reason and "HTTP_PROXY" in reason and "bypasses" in reason
    assert "no_proxy" in reason
    assert "pa55word" not in text and "proxy.invalid" not in text
    assert checks["metadata"][0] == "PASS"  # the proxy does not exist: IMDS was reached directly


def test_a_server_that_drops_the_header_check_fails_metadata(ctx_for, impostor):
    code, text = doctor.report(ctx_for(impostor))
    checks = lines(text)
    assert code == 1
    status, reason = checks["metadata"]
    assert status == "FAIL" and "not a genuine IMDS" in reason and "remove the proxy" in reason
    status, reason = checks["token"]
    assert status == "FAIL" and "without an access_token" in reason


def test_a_server_answering_html_fails_metadata_with_a_hint(ctx_for, document):
    with FakeImds(document, faults="always:html") as fake:
        code, text = doctor.report(ctx_for(fake.url))
    status, reason = lines(text)["metadata"]
    assert code == 1 and status == "FAIL" and "text/html" in reason and "proxy" in reason


def test_no_managed_identity_skips_the_token(ctx_for, document):
    with FakeImds(document, identity=False) as fake:
        code, text = doctor.report(ctx_for(fake.url))
    assert code == 0
    assert lines(text)["token"] == ("SKIP", "IMDS answered 'Identity not found': no managed identity is assigned")


def test_an_api_version_imds_does_not_offer_fails_with_the_version_to_use(ctx_for, document):
    with FakeImds(document, faults="versions:2019-06-01+2020-09-01") as fake:
        code, text = doctor.report(ctx_for(fake.url))
    checks = lines(text)
    assert code == 1
    assert checks["metadata"][0] == "PASS" and "2020-09-01" in checks["metadata"][1]
    assert checks["api-version"] == ("FAIL", "IMDS does not offer api-version 2021-08-01; "
                                             "set imds.api_version to 2020-09-01")


def test_a_hanging_imds_fails_within_a_few_seconds(ctx_for, document):
    with FakeImds(document, faults="always:hang") as fake:
        started = time.monotonic()
        code, text = doctor.report(ctx_for(fake.url))
        elapsed = time.monotonic() - started
    status, reason = lines(text)["metadata"]
    assert code == 1 and status == "FAIL" and "timed out" in reason
    assert elapsed < 2 * doctor.CHECK_TIMEOUT + 2


def test_json_is_the_same_checks_as_one_object(ctx_for, fake_imds):
    ctx = ctx_for(fake_imds.url)
    code, text = doctor.report(ctx, as_json=True)
    value = json.loads(text)
    assert code == 0 and value["status"] == "ok"
    assert list(value["checks"]) == ORDER
    assert value["checks"]["token"] == {"status": "PASS", "reason": "issued, expires in 86399 s"}


# --- the route check ------------------------------------------------------------------

def test_route_to_finds_the_most_specific_route():
    assert doctor.route_to(ROUTES, "169.254.169.254") == ("eth0", "192.168.2.1")
    assert doctor.route_to(ROUTES, "192.168.2.7") == ("eth0", None)
    assert doctor.route_to(NO_DEFAULT, "169.254.169.254") is None
    host_route = NO_DEFAULT + "eth1\tFEA9FEA9\t0102A8C0\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n"
    assert doctor.route_to(host_route, "169.254.169.254") == ("eth1", "192.168.2.1")
    down = NO_DEFAULT + "eth1\tFEA9FEA9\t00000000\t0000\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n"
    assert doctor.route_to(down, "169.254.169.254") is None


def write_routes(root, table):
    (root / "proc/net").mkdir(parents=True, exist_ok=True)
    (root / "proc/net/route").write_text(table)


def test_no_route_to_imds_fails_with_the_route_to_add(root, ctx_for):
    write_routes(root, NO_DEFAULT)
    check = doctor.check_route(doctor.Doctor(ctx_for("http://169.254.169.254")))
    assert check.status == "FAIL"
    assert "ip route add 169.254.169.254/32" in check.reason


def test_a_route_to_imds_passes(root, ctx_for):
    write_routes(root, ROUTES)
    check = doctor.check_route(doctor.Doctor(ctx_for("http://169.254.169.254")))
    assert check == doctor.Check("route", "PASS", "169.254.169.254 via eth0 (gateway 192.168.2.1)")


def test_route_is_skipped_on_arc(root, ctx_for):
    write_routes(root, NO_DEFAULT)
    check = doctor.check_route(doctor.Doctor(ctx_for("http://169.254.169.254", on_arc=True)))
    assert check.status == "SKIP" and "Arc" in check.reason


# --- the command ----------------------------------------------------------------------

def test_cli_prints_the_lines_and_exits_0(root, fake_imds):
    result = run_cli("doctor", "--root", str(root), "--imds-url", fake_imds.url,
                     env={"HTTP_PROXY": "", "HTTPS_PROXY": "", "http_proxy": "", "https_proxy": "",
                          "ALL_PROXY": "", "all_proxy": "", "IMDS_ENDPOINT": "", "IDENTITY_ENDPOINT": ""})
    assert result.returncode == 0, result.stderr
    checks = lines(result.stdout)
    assert checks["metadata"][0] == "PASS" and checks["token"][0] == "PASS"
    assert result.stderr == ""


def test_cli_exits_1_against_a_dead_port(root):
    result = run_cli("doctor", "--root", str(root), "--imds-url", f"http://127.0.0.1:{closed_port()}",
                     "--json")
    assert result.returncode == 1
    value = json.loads(result.stdout)
    assert value["status"] == "error" and value["checks"]["tcp"]["status"] == "FAIL"


def test_a_refusing_imds_fails_metadata_with_its_error(ctx_for, document):
    with FakeImds(document, faults="always:404") as fake:
        code, text = doctor.report(ctx_for(fake.url))
    status, reason = lines(text)["metadata"]
    assert code == 1 and status == "FAIL"
    assert "answered HTTP 404: Not Found; check the URL" in reason

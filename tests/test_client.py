"""The IMDS client against a real server on loopback: the project's fake IMDS (and, for a
body without Content-Length, a tiny stdlib server). No HTTP is mocked; where backoff
arithmetic is checked, the clock and the sleep are injected so it runs in milliseconds."""

from __future__ import annotations

import json
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler

import pytest

from bootagent.errors import ImdsUnavailable
from bootagent.fake.server import FakeImds
from bootagent.http import FIRST_BACKOFF, MAX_BACKOFF, Http
from bootagent.imds.client import ImdsClient
from conftest import loopback_server, result_json, run_cli

VERSION = "2021-08-01"


class FakeClock:
    """Monotonic time that moves only when the code under test sleeps."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def closed_port_url() -> str:
    """A loopback URL where nothing listens: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def real_client(url: str) -> tuple[Http, ImdsClient]:
    http = Http(time.monotonic, time.sleep)
    return http, ImdsClient(http, url, VERSION)


def watch_sends(http: Http, clock) -> list[float]:
    """Record the clock at every request that really leaves (after the rate cap's wait)."""
    times: list[float] = []
    send = http.session.request

    def observed(*args, **kwargs):
        times.append(clock())
        return send(*args, **kwargs)

    http.session.request = observed
    return times


def busiest_second(times: list[float]) -> int:
    """The most requests any window of one second saw."""
    times = sorted(times)
    return max((sum(1 for t in times if start <= t < start + 1.0 - 1e-9) for start in times), default=0)


def instance_requests(fake: FakeImds) -> list[dict]:
    return [entry for entry in fake.requests if entry["path"].startswith("/metadata/instance")]


def assert_one_line(text: str) -> str:
    line = text.strip()
    assert line and "\n" not in line, text
    assert "Traceback" not in text
    return line


# -- the happy path and transient failures ---------------------------------------------


def test_happy_path_is_one_request_with_metadata_header_and_no_forwarded_for(fake_imds, document):
    http, client = real_client(fake_imds.url)
    instance = client.fetch_document(time.monotonic() + 10)

    assert instance.vm_id == document["compute"]["vmId"]
    assert http.attempts == 1
    [request] = fake_imds.requests
    assert request["path"] == "/metadata/instance"
    assert request["query"] == {"api-version": VERSION}
    assert request["headers"]["Metadata"] == "true"
    assert request["headers"]["X-Forwarded-For"] is False
    assert request["status"] == 200


DEAD_PROXY_VARIABLES = [(), ("HTTP_PROXY",), ("http_proxy",), ("ALL_PROXY",), ("HTTPS_PROXY",),
                        ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY")]


@pytest.mark.parametrize("proxy_vars", DEAD_PROXY_VARIABLES, ids=lambda v: "+".join(v) or "no-proxy")
def test_transient_errors_then_success_never_exceeds_five_requests_a_second(
        document, monkeypatch, proxy_vars):
    dead_proxy = closed_port_url()
    for name in proxy_vars:
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("no_proxy", "")
    with FakeImds(document, faults="500,410,429") as fake:
        http, client = real_client(fake.url)
        instance = client.fetch_document(time.monotonic() + 30)
        requests = instance_requests(fake)

    assert instance.vm_id == document["compute"]["vmId"]
    assert [r["status"] for r in requests] == [500, 410, 429, 200]
    assert http.attempts == len(requests) == 4
    assert all(r["headers"]["Metadata"] == "true" for r in requests)
    assert not any(r["headers"]["X-Forwarded-For"] for r in requests)
    assert busiest_second([r["time"] for r in requests]) <= 5


def test_the_cli_ignores_a_dead_proxy_too(fake_imds, document, root):
    dead = closed_port_url()
    proxies = {name: dead for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "HTTPS_PROXY")}
    done = run_cli("metadata", "compute/vmId", "--format", "text", "--root", str(root),
                   "--imds-url", fake_imds.url, "--timeout", "10", env=proxies)
    assert done.returncode == 0, done.stderr
    assert done.stdout == document["compute"]["vmId"] + "\n"


def test_a_body_that_is_not_a_document_is_retried_like_a_5xx(fake_imds, document):
    for plan in ("notdoc", "html", "truncate"):
        fake_imds.set_faults(plan)
        before = len(fake_imds.requests)
        http, client = real_client(fake_imds.url)
        instance = client.fetch_document(time.monotonic() + 20)
        assert instance.vm_id == document["compute"]["vmId"], plan
        assert len(fake_imds.requests) - before == http.attempts == 2, plan
        time.sleep(0.5)  # stay clear of the fake's own rate limit between plans


def test_a_slow_answer_is_waited_for_not_asked_again(document):
    with FakeImds(document, faults="slow:2.5") as fake:
        http, client = real_client(fake.url)
        instance = client.fetch_document(time.monotonic() + 20)
        assert instance.vm_id == document["compute"]["vmId"]
        assert http.attempts == fake.count() == 1


# -- api-versions ------------------------------------------------------------------------


def test_a_server_with_only_older_versions_gets_one_fallback(document):
    with FakeImds(document, faults="versions:2019-06-01+2020-09-01") as fake:
        http, client = real_client(fake.url)
        instance = client.fetch_document(time.monotonic() + 20)
        requests = instance_requests(fake)

    assert instance.vm_id == document["compute"]["vmId"]
    assert client.api_version == "2020-09-01"
    assert 2 <= len(requests) <= 3  # the first one, then at most 2 further requests
    assert requests[0]["query"]["api-version"] == VERSION
    assert requests[-1]["query"]["api-version"] == "2020-09-01"
    assert requests[-1]["status"] == 200


def test_the_run_reports_the_api_version_it_fell_back_to(document, root):
    with FakeImds(document, faults="versions:2019-06-01+2020-09-01") as fake:
        done = run_cli("run", "--root", str(root), "--imds-url", fake.url, "--timeout", "20")
        assert fake.count() <= 3
    assert "Traceback" not in done.stderr
    imds = result_json(root)["imds"]
    assert imds["api_version"] == "2020-09-01"
    assert imds["url"] == fake.url
    assert imds["requests"] == fake.count()
    userdata = result_json(root)["steps"]["userdata"]
    assert userdata["status"] == "skipped"
    assert "2020-09-01" in userdata["reason"]


def test_a_server_with_no_version_the_agent_knows_is_a_clear_error(document):
    with FakeImds(document, faults="versions:2017-03-01+2017-04-02") as fake:
        http, client = real_client(fake.url)
        started = time.monotonic()
        with pytest.raises(ImdsUnavailable) as caught:
            client.fetch_document(started + 20)
        assert time.monotonic() - started < 5  # a 400 is final, not retried to the deadline
        assert fake.count() == 1
    message = assert_one_line(str(caught.value))
    assert "400" in message and fake.url in message and "api_version" in message


# -- no document before the deadline -------------------------------------------------------


def run_until_deadline(root, url: str):
    started = time.monotonic()
    done = run_cli("run", "--root", str(root), "--imds-url", url, "--timeout", "2")
    return done, time.monotonic() - started


def assert_clear_exit_3(done, elapsed: float, url: str, root) -> None:
    assert done.returncode == 3, done.stderr
    assert elapsed < 8, f"took {elapsed:.1f} s for a 2 s deadline"
    assert "Traceback" not in done.stderr
    error_lines = [line for line in done.stderr.splitlines() if url in line]
    assert len(error_lines) == 1, done.stderr
    assert "deadline" in error_lines[0] and "doctor" in error_lines[0]
    record = result_json(root)
    assert record["status"] == "error"
    assert record["instance_id"] is None
    assert url in record["error"]


def test_a_server_that_never_answers_is_exit_3_at_the_deadline(document, root):
    with FakeImds(document, faults="always:hang") as fake:
        done, elapsed = run_until_deadline(root, fake.url)
    assert_clear_exit_3(done, elapsed, fake.url, root)
    assert "timed out" in done.stderr


def test_a_closed_port_is_exit_3_at_the_deadline(root):
    url = closed_port_url()
    done, elapsed = run_until_deadline(root, url)
    assert_clear_exit_3(done, elapsed, url, root)
    assert "refused" in done.stderr
    assert elapsed > 1.5  # it kept trying until the deadline


def test_refused_connections_are_retried_within_a_fraction_of_a_second():
    http, client = real_client(closed_port_url())
    sent = watch_sends(http, time.monotonic)
    with pytest.raises(ImdsUnavailable):
        client.fetch_document(time.monotonic() + 1.2)
    assert len(sent) >= 4, sent
    gaps = [later - earlier for earlier, later in zip(sent, sent[1:])]
    assert max(gaps) < 0.5, gaps
    assert busiest_second(sent) <= 5


# -- backoff arithmetic with an injected clock ---------------------------------------------


def test_refused_retries_are_quick_but_capped_at_five_a_second():
    clock = FakeClock()
    http = Http(clock, clock.sleep)
    client = ImdsClient(http, closed_port_url(), VERSION)
    sent = watch_sends(http, clock)
    with pytest.raises(ImdsUnavailable) as caught:
        client.fetch_document(clock() + 10)

    assert "refused" in str(caught.value)
    assert http.attempts == len(sent)
    assert busiest_second(sent) == 5  # quick retries would go faster; the cap holds them
    assert 40 <= len(sent) <= 51
    assert max(clock.sleeps) < 0.5  # a fraction of a second, rate-cap waits included
    assert clock.now <= 1000.0 + 10 + 1e-9


def test_server_errors_back_off_exponentially_with_jitter_until_the_deadline(document):
    clock = FakeClock()
    with FakeImds(document, faults="always:503", rate_limit=0) as fake:
        http = Http(clock, clock.sleep)
        client = ImdsClient(http, fake.url, VERSION)
        with pytest.raises(ImdsUnavailable) as caught:
            client.fetch_document(clock() + 30)
        assert http.attempts == fake.count()

    assert "503" in str(caught.value) and "deadline" in str(caught.value)
    assert clock.now == pytest.approx(1030.0)  # it waited to the deadline, not past it
    sleeps = clock.sleeps
    expected = FIRST_BACKOFF
    for slept in sleeps[:-1]:  # the last sleep is cut short by the deadline
        assert expected * 0.8 - 1e-9 <= slept <= expected * 1.2 + 1e-9, sleeps
        expected = min(MAX_BACKOFF, expected * 2)
    assert sleeps[-1] <= expected * 1.2 + 1e-9
    assert max(sleeps) <= MAX_BACKOFF * 1.2 + 1e-9
    assert len(set(round(s, 6) for s in sleeps)) > 3  # jittered, not lock-step


class _RetryAfterThenDocument(BaseHTTPRequestHandler):
    """Every odd request: 503 with Retry-After: 3; every even one: a document."""

    protocol_version = "HTTP/1.0"
    served = 0

    def do_GET(self):
        type(self).served += 1
        if self.served % 2:
            body, status, extra = b'{"error": "busy"}', 503, {"Retry-After": "3"}
        else:
            body, status, extra = b'{"compute": {"vmId": "retry-after-vm"}}', 200, {}
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **extra}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_retry_after_is_honoured_never_shortened_by_jitter():
    with loopback_server(_RetryAfterThenDocument) as url:
        for _ in range(10):  # jitter is random: a shortened wait would show in one of these
            clock = FakeClock()
            http = Http(clock, clock.sleep)
            client = ImdsClient(http, url, VERSION)
            assert client.fetch_document(clock() + 30).vm_id == "retry-after-vm"
            assert http.attempts == 2
            assert len(clock.sleeps) == 1 and 3.0 <= clock.sleeps[0] <= 3.0 * 1.2, clock.sleeps


class _LowerCaseRetryAfter(_RetryAfterThenDocument):
    """As above, but its header names are lower case, as HTTP allows (names fold case)."""

    def send_header(self, keyword, value):
        super().send_header(keyword.lower(), value)


def test_retry_after_in_lower_case_is_honoured():
    with loopback_server(_LowerCaseRetryAfter) as url:
        clock = FakeClock()
        http = Http(clock, clock.sleep)
        assert ImdsClient(http, url, VERSION).fetch_document(clock() + 30).vm_id == "retry-after-vm"
        assert clock.sleeps == [3.0]


class _Trickle(BaseHTTPRequestHandler):
    """Announces a document of 400 bytes and sends a byte every 0.2 s (80 s in all): a
    server that keeps one attempt alive. `hung_up` counts the clients that left mid-body."""

    protocol_version = "HTTP/1.0"
    hung_up = 0

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "400")
        self.end_headers()
        try:
            for _ in range(400):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            type(self).hung_up += 1

    def log_message(self, *args):
        pass


def test_a_trickling_body_cannot_hold_a_request_past_the_deadline():
    """Each byte comes well within the read timeout; the deadline still ends the attempt."""
    with loopback_server(_Trickle) as url:
        http, client = real_client(url)
        with pytest.raises(ImdsUnavailable) as caught:
            client.fetch_document(time.monotonic() + 1.5)
        message = assert_one_line(str(caught.value))
        assert "the answer was still arriving at the deadline" in message
        for _ in range(50):  # the server notices the hang-up at its next byte
            if _Trickle.hung_up:
                break
            time.sleep(0.1)
        assert _Trickle.hung_up == http.attempts == 1


# -- bodies that are not documents: clear errors, bounded memory ---------------------------


@pytest.mark.parametrize("plan,says", [
    ("always:truncate", "cut short"),
    ("always:html", "is not JSON"),
    ("always:big:20M", "allowed"),
    ("always:notdoc", "not an instance document"),
])
def test_a_body_that_never_becomes_a_document_is_a_clear_error(document, plan, says):
    with FakeImds(document, faults=plan) as fake:
        http, client = real_client(fake.url)
        with pytest.raises(ImdsUnavailable) as caught:
            client.fetch_document(time.monotonic() + 1.5)
        assert http.attempts == fake.count() >= 1
    message = assert_one_line(str(caught.value))
    assert says in message and fake.url in message
    assert caught.value.exit_code == 3


class _EndlessJson(BaseHTTPRequestHandler):
    """Streams a JSON string of 20 MiB with no Content-Length (the body ends at close)."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        try:
            self.wfile.write(b'{"compute": {"vmId": "')
            chunk = b"x" * (1 << 20)
            for _ in range(20):
                self.wfile.write(chunk)
            self.wfile.write(b'"}}')
        except OSError:
            pass  # the client hung up once it had seen enough: that is the point

    def log_message(self, *args):
        pass


@pytest.fixture
def endless_server():
    with loopback_server(_EndlessJson) as url:
        yield url


def test_a_big_body_without_content_length_is_cut_at_the_bound(endless_server):
    http, client = real_client(endless_server)
    with pytest.raises(ImdsUnavailable) as caught:
        client.fetch_document(time.monotonic() + 1.5)
    assert "larger than" in assert_one_line(str(caught.value))


FETCH_ONCE = """
import sys, time
from bootagent.errors import BootagentError
from bootagent.http import Http
from bootagent.imds.client import ImdsClient
client = ImdsClient(Http(time.monotonic, time.sleep), sys.argv[1], "2021-08-01")
try:
    client.fetch_document(time.monotonic() + 1.5)
except BootagentError as err:
    print(err)
"""

PEAK_OF_CHILD = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_kib_of_fetch(url: str) -> int:
    import subprocess

    done = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, sys.executable, "-c", FETCH_ONCE, url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    *messages, peak = done.stdout.strip().splitlines()
    assert messages and "allowed" in messages[-1], done.stdout
    return int(peak)


def test_a_20_mib_body_keeps_memory_bounded(document, endless_server):
    with FakeImds(document, faults="always:big:20M") as fake:
        announced = peak_rss_kib_of_fetch(fake.url)
    streamed = peak_rss_kib_of_fetch(endless_server)
    assert announced < 60 * 1024, f"peak RSS {announced} KiB"
    assert streamed < 60 * 1024, f"peak RSS {streamed} KiB"


# -- bootagent metadata ---------------------------------------------------------------------


def test_metadata_text_prints_the_bare_vm_id(fake_imds, document, root):
    done = run_cli("metadata", "compute/vmId", "--format", "text", "--root", str(root),
                   "--imds-url", fake_imds.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == document["compute"]["vmId"] + "\n"
    assert fake_imds.count() == 1


def test_metadata_prints_the_servers_json_pretty_printed(fake_imds, document, root):
    done = run_cli("metadata", "--root", str(root), "--imds-url", fake_imds.url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == document
    assert done.stdout == json.dumps(document, indent=2) + "\n"
    [request] = fake_imds.requests
    assert request["headers"]["Metadata"] == "true"


def test_metadata_of_a_sub_tree_is_route_filtered(fake_imds, document, root):
    done = run_cli("metadata", "compute/tagsList", "--root", str(root), "--imds-url", fake_imds.url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == document["compute"]["tagsList"]
    assert fake_imds.requests[0]["path"] == "/metadata/instance/compute/tagsList"


def test_metadata_of_an_unknown_path_is_one_clear_line(fake_imds, root):
    done = run_cli("metadata", "compute/noSuchThing", "--root", str(root), "--imds-url", fake_imds.url,
                   "--timeout", "10")
    assert done.returncode == 1  # IMDS answered: not 3, which says IMDS could not be had
    line = assert_one_line(done.stderr)
    assert "404" in line and "compute/noSuchThing" in line and "check the path" in line
    assert done.stdout == ""
    assert fake_imds.count() == 1  # a 404 is final, not retried


class _ProxyErrorPage(BaseHTTPRequestHandler):
    """A 404 whose body is a page of many lines and a terminal escape, as a proxy's may be."""

    def do_GET(self):
        body = b"<html>\n<h1>Not Found</h1>\n\x1b[2Jgone\r\n</html>\n"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_refusal_with_a_page_of_many_lines_is_still_one_line(root):
    with loopback_server(_ProxyErrorPage) as url:
        done = run_cli("metadata", "compute/vmId", "--root", str(root), "--imds-url", url, "--timeout", "5")
    assert done.returncode == 1
    line = assert_one_line(done.stderr)
    assert line.isprintable() and "<h1>Not Found</h1> \\x1b[2Jgone </html>" in line


def test_metadata_without_an_imds_is_exit_3_at_the_deadline(root):
    done = run_cli("metadata", "compute/vmId", "--root", str(root), "--imds-url", closed_port_url(),
                   "--timeout", "1")
    assert done.returncode == 3
    line = assert_one_line(done.stderr)
    assert "refused" in line and "bootagent doctor" in line


def test_metadata_of_a_leaf_as_json_says_to_ask_for_text(fake_imds, root):
    done = run_cli("metadata", "compute/vmId", "--root", str(root), "--imds-url", fake_imds.url)
    assert done.returncode == 1
    line = assert_one_line(done.stderr)
    assert "format=text" in line and "--format text" in line

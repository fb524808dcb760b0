"""The fake IMDS, identity endpoint and wireserver, over real loopback HTTP.

These tests use http.client only, so they do not depend on the agent's client.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from bootagent.fake.faults import FaultPlan, FaultPlanError
from bootagent.fake.server import FakeImds, RateLimiter, default_document

API = "2021-08-01"
META = {"Metadata": "true"}
WIRE = {"x-ms-version": "2012-11-30", "x-ms-agent-name": "bootagent"}
XML_POST = {**WIRE, "Content-Type": "text/xml; charset=utf-8"}
NEWEST = ["2023-11-15", "2023-07-01", "2021-12-13"]


class Answer:
    def __init__(self, response: http.client.HTTPResponse):
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    def json(self):
        return json.loads(self.body)


def call(fake, path, headers=None, method="GET", body=None, timeout=5.0) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        return Answer(connection.getresponse())
    finally:
        connection.close()


def instance(fake, route="", query=f"api-version={API}", headers=META, **kwargs) -> Answer:
    return call(fake, f"/metadata/instance{route}?{query}", headers, **kwargs)


@pytest.fixture
def fake():
    """A fake without the rate limit, so tests may send many requests at once."""
    with FakeImds(rate_limit=0) as server:
        yield server


def make(**kwargs) -> FakeImds:
    kwargs.setdefault("rate_limit", 0)
    return FakeImds(**kwargs).start()


# -- the documented refusals --------------------------------------------------

def test_happy_path_serves_compact_json(fake):
    answer = instance(fake)
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert b": " not in answer.body and b", " not in answer.body[:200]
    assert answer.json() == default_document()
    assert fake.count() == 1


def test_missing_metadata_header_is_400(fake):
    answer = instance(fake, headers={})
    assert answer.status == 400
    assert answer.json() == {"error": "Bad request. Required metadata header not specified"}


def test_metadata_header_other_than_true_is_400(fake):
    assert instance(fake, headers={"Metadata": "yes"}).status == 400


def test_x_forwarded_for_is_refused(fake):
    answer = instance(fake, headers={**META, "X-Forwarded-For": "10.0.0.9"})
    assert answer.status == 400
    assert "X-Forwarded-For" in answer.json()["error"]
    assert fake.requests[-1]["headers"]["X-Forwarded-For"] is True


def test_missing_api_version_names_newest_versions(fake):
    answer = instance(fake, query="format=json")
    assert answer.status == 400
    body = answer.json()
    assert body["error"].startswith("Bad request. api-version was not specified in the request.")
    assert body["newest-versions"] == NEWEST


def test_unknown_api_version_names_newest_versions(fake):
    answer = instance(fake, query="api-version=2099-01-01")
    assert answer.status == 400
    assert "api-version is invalid" in answer.json()["error"]
    assert answer.json()["newest-versions"] == NEWEST


def test_duplicate_query_parameter_is_refused(fake):
    answer = instance(fake, query=f"api-version={API}&api-version={API}")
    assert answer.status == 400
    assert fake.requests[-1]["query"] == {"api-version": [API, API]}


def test_unknown_paths_are_404(fake):
    assert instance(fake, "/compute/noSuchField").status == 404
    assert instance(fake, "/network/interface/7").status == 404
    assert call(fake, "/metadata/attested/other?api-version=2020-09-01", META).status == 404
    assert call(fake, "/", META).status == 404


def test_only_get_is_allowed_on_metadata(fake):
    assert instance(fake, method="POST", body=b"{}").status == 405


def test_leaf_needs_format_text(fake):
    assert instance(fake, "/compute/vmId").status == 400
    assert instance(fake, "/compute/vmId", query=f"api-version={API}&format=json").status == 400
    answer = instance(fake, "/compute/vmId", query=f"api-version={API}&format=text")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert answer.body.decode() == default_document()["compute"]["vmId"]


def test_route_filtering_walks_keys_and_indexes(fake):
    text = f"api-version={API}&format=text"
    path = "/network/interface/0/ipv4/ipAddress/0/privateIpAddress"
    assert instance(fake, path, query=text).body == b"10.0.0.4"
    tags = instance(fake, "/compute/tagsList").json()
    assert tags == [{"name": "env", "value": "demo"}, {"name": "role", "value": "web"}]


def test_format_text_on_a_node_lists_its_children(fake):
    answer = instance(fake, "/network/interface/0", query=f"api-version={API}&format=text")
    assert answer.body.decode().splitlines() == ["ipv4/", "ipv6/", "macAddress"]


def test_versions_endpoint_needs_the_header_but_no_version(fake):
    answer = call(fake, "/metadata/versions", META)
    assert answer.status == 200
    versions = answer.json()["apiVersions"]
    assert versions[0] == "2017-03-01" and versions[-1] == "2023-11-15"
    assert call(fake, "/metadata/versions").status == 400


def test_userdata_only_from_2021_01_01(fake):
    old = instance(fake, query="api-version=2020-09-01").json()
    assert "userData" not in old["compute"]
    assert instance(fake, "/compute/userData", query="api-version=2020-12-01&format=text").status == 404
    new = instance(fake, query="api-version=2021-01-01").json()
    assert new["compute"]["userData"] == default_document()["compute"]["userData"]


def test_document_can_be_replaced_between_runs(fake):
    document = default_document()
    document["compute"]["vmId"] = "11111111-2222-3333-4444-555555555555"
    fake.document = document
    answer = instance(fake, "/compute/vmId", query=f"api-version={API}&format=text")
    assert answer.body == b"11111111-2222-3333-4444-555555555555"


# -- rate limit -----------------------------------------------------------------

def test_sixth_request_in_one_second_is_429():
    with FakeImds() as fake:
        statuses = [instance(fake).status for _ in range(6)]
    assert statuses == [200] * 5 + [429]


def test_rate_window_slides():
    now = [0.0]
    limiter = RateLimiter(5, 1.0, clock=lambda: now[0])
    for step in range(5):
        now[0] = step * 0.1
        assert limiter.allow()
    assert not limiter.allow()  # sixth within the same second
    now[0] = 1.15  # 0.0 and 0.1 have left the window; the refused one at 0.4 still counts
    assert limiter.allow()


# -- faults ---------------------------------------------------------------------

def test_status_faults_then_success():
    with make(faults="500,410,429") as fake:
        statuses = [instance(fake).status for _ in range(4)]
        assert statuses == [500, 410, 429, 200]
        assert [entry["fault"] for entry in fake.requests] == ["500", "410", "429", None]


def test_repeated_and_endless_faults():
    with make(faults="404*2,400") as fake:
        assert [instance(fake).status for _ in range(4)] == [404, 404, 400, 200]
    with make(faults="always:500") as fake:
        assert {instance(fake).status for _ in range(4)} == {500}
    with make(faults="503*") as fake:
        assert {instance(fake).status for _ in range(3)} == {503}


def test_slow_answers_after_the_delay():
    with make(faults="slow:0.3") as fake:
        started = time.monotonic()
        assert instance(fake).status == 200
        assert time.monotonic() - started >= 0.3


def test_hang_times_the_client_out_and_does_not_block_stop():
    fake = make(faults="hang")
    with pytest.raises((socket.timeout, TimeoutError)):
        instance(fake, timeout=0.3)
    assert fake.requests[-1]["status"] is None and fake.requests[-1]["fault"] == "hang"
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 2


def test_hang_lets_go_of_a_client_that_gave_up():
    with make(faults="always:hang") as fake:
        before = threading.active_count()
        for _ in range(3):
            with pytest.raises((socket.timeout, TimeoutError)):
                instance(fake, timeout=0.1)
        deadline = time.monotonic() + 2
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= before


def test_reset_closes_without_an_answer():
    with make(faults="reset") as fake:
        with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
            instance(fake)
        assert instance(fake).status == 200


def test_truncate_cuts_the_body():
    with make(faults="truncate") as fake:
        with pytest.raises(http.client.IncompleteRead):
            instance(fake)


def test_html_fault_is_an_error_page_with_200():
    with make(faults="html") as fake:
        answer = instance(fake)
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/html")
        assert answer.body.lstrip().startswith(b"<!DOCTYPE html>")


def test_big_body_is_streamed_json_of_the_size():
    with make(faults="big:2M") as fake:
        answer = instance(fake)
        assert int(answer.headers["Content-Length"]) == 2 * 1024 * 1024
        assert len(answer.body) == 2 * 1024 * 1024
        assert "compute" in answer.json()


def test_client_leaving_a_big_body_early_is_harmless():
    with make(faults="big:64M") as fake:
        connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
        connection.request("GET", f"/metadata/instance?api-version={API}", headers=META)
        response = connection.getresponse()
        response.read(1024)
        connection.close()
        assert instance(fake).status == 200


def test_notdoc_serves_the_compute_subtree():
    with make(faults="notdoc") as fake:
        body = instance(fake).json()
        assert "compute" not in body and body["vmId"] == default_document()["compute"]["vmId"]


def test_versions_setting_restricts_api_versions():
    with make(faults="versions:2019-06-01+2020-09-01") as fake:
        answer = instance(fake)
        assert answer.status == 400
        assert answer.json()["newest-versions"] == ["2020-09-01", "2019-06-01"]
        assert instance(fake, query="api-version=2020-09-01").status == 200
        assert call(fake, "/metadata/versions", META).json() == {
            "apiVersions": ["2019-06-01", "2020-09-01"]}


def test_wireserver_faults_leave_imds_alone():
    with make(faults="ws:500,ws:500") as fake:
        assert instance(fake).status == 200
        assert call(fake, "/machine/?comp=goalstate", WIRE).status == 500
        assert call(fake, "/machine/?comp=goalstate", WIRE).status == 500
        assert call(fake, "/machine/?comp=goalstate", WIRE).status == 200


@pytest.mark.parametrize("plan", ["teapot", "600", "slow:x", "big:2", "big:9Q", "ws:notdoc",
                                  "versions:latest", "500*0", "500,,410"])
def test_bad_plans_are_refused(plan):
    with pytest.raises(FaultPlanError):
        FaultPlan(plan)


def test_plan_grammar():
    plan = FaultPlan("500, id:429*2, ws:always:503, slow:1.5, big:1K, versions:2021-08-01")
    assert plan.versions == ("2021-08-01",)
    assert [plan.take("imds").spec for _ in range(2)] == ["500", "slow:1.5"]
    assert plan.take("imds").size == 1024 and plan.take("imds") is None
    first, second, third = (plan.take("id") for _ in range(3))
    assert first.status == second.status == 429 and third is None
    assert plan.take("ws").status == 503 and plan.take("ws").status == 503


# -- wireserver -------------------------------------------------------------------

def health_xml(goal, state="Ready", details=""):
    return f"""<?xml version="1.0" encoding="utf-8"?>
<Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <GoalStateIncarnation>{goal['incarnation']}</GoalStateIncarnation>
  <Container>
    <ContainerId>{goal['container_id']}</ContainerId>
    <RoleInstanceList>
      <Role>
        <InstanceId>{goal['instance_id']}</InstanceId>
        <Health>
          <State>{state}</State>{details}
        </Health>
      </Role>
    </RoleInstanceList>
  </Container>
</Health>
""".encode()


def read_goal_state(fake, path="/machine/?comp=goalstate") -> dict:
    answer = call(fake, path, WIRE)
    assert answer.status == 200
    root = ElementTree.fromstring(answer.body)
    return {
        "incarnation": root.findtext("Incarnation"),
        "container_id": root.findtext("Container/ContainerId"),
        "instance_id": root.findtext("Container/RoleInstanceList/RoleInstance/InstanceId"),
    }


def test_goal_state_xml_carries_the_ids(fake):
    goal = read_goal_state(fake)
    vm_id = default_document()["compute"]["vmId"]
    assert goal == fake.goal_state()
    assert goal["incarnation"] == "1" and goal["instance_id"] == f"{vm_id}.demo-vm-01"
    assert read_goal_state(fake, "/machine?comp=goalstate") == goal


def test_goal_state_needs_the_wire_headers(fake):
    assert call(fake, "/machine/?comp=goalstate").status == 400
    assert call(fake, "/machine/?comp=goalstate", {"x-ms-version": "2012-11-30"}).status == 400
    assert call(fake, "/machine/?comp=goalstate", {"x-ms-agent-name": "x"}).status == 400


def test_ready_report_is_validated_and_recorded(fake):
    goal = read_goal_state(fake)
    answer = call(fake, "/machine?comp=health", XML_POST, "POST", health_xml(goal))
    assert answer.status == 200
    report = fake.health_reports[-1]
    assert report["state"] == "Ready" and report["container_id"] == goal["container_id"]
    assert report["headers"]["x-ms-agent-name"] == "bootagent"
    assert fake.requests[-1]["health"]["state"] == "Ready"


def test_not_ready_report_needs_details(fake):
    goal = fake.goal_state()
    post = lambda body: call(fake, "/machine?comp=health", XML_POST, "POST", body).status  # noqa: E731
    assert post(health_xml(goal, "NotReady")) == 400
    details = ("<Details><SubStatus>ProvisioningFailed</SubStatus>"
               "<Description>users failed</Description></Details>")
    assert post(health_xml(goal, "NotReady", details)) == 200
    assert fake.health_reports[-1]["substatus"] == "ProvisioningFailed"
    assert fake.health_reports[-1]["description"] == "users failed"


@pytest.mark.parametrize("spoil", ["container", "state", "doctype", "content-type", "agent"])
def test_bad_health_reports_are_400(fake, spoil):
    goal = dict(fake.goal_state())
    headers, state = dict(XML_POST), "Ready"
    if spoil == "container":
        goal["container_id"] = "00000000-0000-0000-0000-000000000000"
    if spoil == "state":
        state = "Fine"
    if spoil == "content-type":
        headers["Content-Type"] = "application/xml"
    if spoil == "agent":
        del headers["x-ms-agent-name"]
    body = health_xml(goal, state)
    if spoil == "doctype":
        body = body.replace(b"<Health ", b'<!DOCTYPE Health [<!ENTITY x "y">]>\n<Health ', 1)
    assert call(fake, "/machine?comp=health", headers, "POST", body).status == 400
    assert fake.health_reports == []


def test_health_takes_post_only(fake):
    assert call(fake, "/machine?comp=health", XML_POST).status == 405


def test_new_vm_id_means_a_new_goal_state(fake):
    before = fake.goal_state()
    document = default_document()
    document["compute"]["vmId"] = "99999999-0000-0000-0000-000000000001"
    fake.document = document
    after = read_goal_state(fake)
    assert after["container_id"] != before["container_id"]
    assert after["instance_id"].startswith("99999999-")


# -- identity and Arc ---------------------------------------------------------------

TOKEN = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"


def test_token_is_issued(fake):
    answer = call(fake, TOKEN, META)
    assert answer.status == 200
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == "86399"
    assert body["resource"] == "https://management.azure.com/" and body["access_token"]
    assert call(fake, TOKEN).status == 400


def test_no_identity_answers_identity_not_found():
    with make(identity=False) as fake:
        answer = call(fake, TOKEN, META)
        assert answer.status == 400
        assert answer.json() == {"error": "invalid_request", "error_description": "Identity not found"}


def test_arc_challenge(tmp_path):
    tokens = tmp_path / "var/opt/azcmagent/tokens"
    with make(arc=True, arc_tokens_dir=str(tokens)) as fake:
        challenge = call(fake, TOKEN, META)
        assert challenge.status == 401
        realm = challenge.headers["WWW-Authenticate"]
        assert realm.startswith("Basic realm=")
        key_file = Path(realm.split("=", 1)[1])
        assert key_file.parent == tokens and key_file.suffix == ".key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        secret = key_file.read_text()
        assert call(fake, TOKEN, {**META, "Authorization": "Basic wrong"}).status == 401
        answer = call(fake, TOKEN, {**META, "Authorization": f"Basic {secret}"})
        assert answer.status == 200 and answer.json()["access_token"]
        assert secret not in json.dumps(fake.requests)
        assert fake.requests[-1]["headers"]["Authorization"] is True


def test_arc_has_no_wireserver_and_no_os_profile():
    with make(arc=True) as fake:
        tokens_dir = Path(fake.arc_tokens_dir)
        assert call(fake, "/machine/?comp=goalstate", WIRE).status == 404
        compute = instance(fake, "/compute").json()
        assert "osProfile" not in compute and "publicKeys" not in compute
    assert not tokens_dir.exists()  # the fake's own temporary directory is removed


# -- log, default document, command ------------------------------------------------------

def test_log_file_has_one_json_line_per_request(tmp_path):
    log = tmp_path / "requests.jsonl"
    with make(log_path=str(log), faults="500") as fake:
        instance(fake)
        call(fake, TOKEN, {**META, "Authorization": "Basic s3cret"})
        lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["status"] for line in lines] == [500, 200]
    assert lines[0]["fault"] == "500" and lines[0]["headers"]["Metadata"] == "true"
    assert lines[0]["query"] == {"api-version": API}
    assert "s3cret" not in log.read_text()
    assert lines == fake.requests


def test_default_document_is_a_linux_vm():
    compute = default_document()["compute"]
    assert compute["osType"] == "Linux" and compute["osProfile"]["adminUsername"] == "azureuser"
    assert compute["osProfile"]["disablePasswordAuthentication"] == "true"
    assert compute["tags"] == "env:demo;role:web"
    for key in compute["publicKeys"]:
        kind, blob, _comment = key["keyData"].split(" ")
        assert base64.b64decode(blob, validate=True)[4:4 + len(kind)] == kind.encode()
        assert key["path"] == "/home/azureuser/.ssh/authorized_keys"
    user_data = base64.b64decode(compute["userData"]).decode()
    assert user_data.startswith("#cloud-config\n") and "hostname" not in user_data
    assert default_document() is not default_document()


def run_command(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "bootagent.fake.server", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_command_prints_its_url_and_stops_on_sigterm(tmp_path):
    log = tmp_path / "log.jsonl"
    process = run_command("--port", "0", "--log", str(log))
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        connection = http.client.HTTPConnection(url[len("http://"):], timeout=5)
        connection.request("GET", f"/metadata/instance?api-version={API}", headers=META)
        assert connection.getresponse().status == 200
        connection.close()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=5)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "Traceback" not in err
    assert json.loads(log.read_text().splitlines()[0])["status"] == 200


@pytest.mark.parametrize("args, says", [
    (["--fault", "teapot"], "unknown fault"),
    (["--metadata", "/nonexistent/doc.json"], "cannot read"),
    (["--metadata", "BAD_JSON"], "not JSON"),
])
def test_command_refuses_bad_input_with_exit_2(tmp_path, args, says):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    args = [str(bad) if arg == "BAD_JSON" else arg for arg in args]
    process = run_command(*args)
    out, err = process.communicate(timeout=5)
    assert process.returncode == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and says in err


def test_command_serves_a_metadata_file(tmp_path):
    document = {"compute": {"vmId": "abc", "name": "x"}, "network": {"interface": []}}
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(document))
    process = run_command("--metadata", str(path), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = process.stdout.readline().strip()
        connection = http.client.HTTPConnection(url[len("http://"):], timeout=5)
        connection.request("GET", f"/metadata/instance?api-version={API}", headers=META)
        assert json.loads(connection.getresponse().read()) == document
        connection.close()
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=5)
    finally:
        process.kill()
    assert process.returncode == 0 and "Traceback" not in err

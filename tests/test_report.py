"""Report ready (SPEC step 7): real HTTP to the fake wireserver on loopback, a scratch root."""

from __future__ import annotations

import socket
import time
from xml.etree import ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootagent.boot import Boot
from bootagent.errors import StepError
from bootagent.fake.server import FakeImds
from bootagent.fake.wireserver import GOAL_STATE_XML
from bootagent.imds.document import parse_document
from bootagent.platform import AZURE_ASSET_TAG, wireserver
from bootagent.state import InstanceState
from bootagent.steps import StepResult, report
from conftest import b64, examples, result_json, run_cli

SECRET = "hunter2-correct-horse-battery"
OK_STEPS = {"hostname": StepResult("changed", ["/etc/hostname"]), "users": StepResult("changed"),
            "ssh_keys": StepResult("changed"), "host_keys": StepResult("unchanged"),
            "userdata": StepResult.skipped("no userData"), "templates": StepResult("unchanged")}


def on_azure(root):
    tag = root / "sys/class/dmi/id/chassis_asset_tag"
    tag.parent.mkdir(parents=True, exist_ok=True)
    tag.write_text(AZURE_ASSET_TAG + "\n")


def make_boot(document, results=None, steps=None) -> Boot:
    boot = Boot(parse_document(document), InstanceState({"steps": dict(steps or {})}), True, "2021-08-01")
    boot.results.update(OK_STEPS if results is None else results)
    return boot


@pytest.fixture
def azure_ctx(root, make_ctx, fake_imds):
    """A context on "Azure": the asset tag under the root, the wireserver on the fake."""
    on_azure(root)

    def make(**overrides):
        config = overrides.pop("config", {})
        config.setdefault("azure", {}).setdefault("wireserver", fake_imds.url)
        return make_ctx(config=config, deadline=time.monotonic() + 10, **overrides)
    return make


def wire_requests(fake):
    return [entry for entry in fake.requests if entry["path"].startswith("/machine")]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the step -------------------------------------------------------------------------

def test_first_boot_on_azure_reports_ready_once(azure_ctx, fake_imds, document):
    boot = make_boot(document)
    outcome = report.run(azure_ctx(), boot)

    assert outcome.status == "changed" and outcome.details == {"reported": "Ready"}
    assert fake_imds.count("/machine", "GET") == 1
    assert fake_imds.count("/machine", "POST") == 1
    goal_state = fake_imds.goal_state()
    [health] = fake_imds.health_reports
    assert health["incarnation"] == goal_state["incarnation"]
    assert health["container_id"] == goal_state["container_id"]
    assert health["instance_id"] == goal_state["instance_id"]
    assert health["state"] == "Ready" and health["description"] is None
    assert health["headers"]["x-ms-agent-name"] == "bootagent"
    assert health["headers"]["x-ms-version"] == "2012-11-30"
    assert health["headers"]["Content-Type"] == "text/xml; charset=utf-8"
    [get] = [e for e in wire_requests(fake_imds) if e["method"] == "GET"]
    assert get["headers"]["x-ms-agent-name"] == "bootagent" and get["headers"]["x-ms-version"] == "2012-11-30"
    assert boot.state.get("report_ready") == {"ok": True, "delivered": "Ready"}


def test_second_boot_reports_nothing(azure_ctx, fake_imds, document):
    boot = make_boot(document, steps={"report_ready": {"ok": True, "delivered": "Ready"}})
    outcome = report.run(azure_ctx(), boot)
    assert outcome.status == "unchanged"
    assert "already reported" in outcome.reason
    assert wire_requests(fake_imds) == []


def test_user_data_words_never_garble_the_not_ready_description(azure_ctx, fake_imds, document):
    """userData holding common words (`keys`, `host`, `ssh`) leaves the steps' own text as it is."""
    document["compute"]["userData"] = b64("#cloud-config\nssh: keys\nhost: host\nrole: web\n")
    error = ("cannot make SSH host key /etc/ssh/ssh_host_rsa_key: ssh-keygen failed (unknown key type); "
             "check that this ssh-keygen makes that key type")
    boot = make_boot(document, dict(OK_STEPS, host_keys=StepResult.failed(error)))
    report.run(azure_ctx(), boot)
    [health] = fake_imds.health_reports
    assert health["description"] == f"failed steps: host_keys; host_keys: {error}"


def test_failed_step_posts_not_ready_naming_it_without_user_data(azure_ctx, fake_imds, document):
    document["compute"]["userData"] = b64(f"#cloud-config\nhostname: web01\npassword: {SECRET}\n")
    results = dict(OK_STEPS, users=StepResult.failed("useradd refused adminUsername; fix the name"),
                   # a buggy step quoting userData: the description must still not carry it
                   templates=StepResult.failed(f"motd.j2: cannot render {SECRET}"))
    boot = make_boot(document, results)
    outcome = report.run(azure_ctx(), boot)

    assert outcome.status == "changed" and outcome.details == {"reported": "NotReady"}
    [health] = fake_imds.health_reports
    assert health["state"] == "NotReady" and health["substatus"] == "ProvisioningFailed"
    description = health["description"]
    assert description.startswith("failed steps: users, templates;")
    assert "useradd refused adminUsername" in description
    assert SECRET not in description and document["compute"]["userData"] not in description
    assert len(description) <= 512
    assert boot.state.get("report_ready") == {"ok": True, "delivered": "NotReady"}


def test_long_errors_keep_the_description_within_512_and_the_names_first(azure_ctx, fake_imds, document):
    results = dict(OK_STEPS, hostname=StepResult.failed("x" * 2000), templates=StepResult.failed("y" * 900))
    report.run(azure_ctx(), make_boot(document, results))
    [health] = fake_imds.health_reports
    assert len(health["description"]) <= 512
    assert health["description"].startswith("failed steps: hostname, templates;")


def test_ready_after_a_delivered_not_ready_is_reported_once_more(azure_ctx, fake_imds, document):
    boot = make_boot(document, steps={"report_ready": {"ok": True, "delivered": "NotReady"}})
    assert report.run(azure_ctx(), boot).status == "changed"
    assert [h["state"] for h in fake_imds.health_reports] == ["Ready"]
    assert boot.state.get("report_ready")["delivered"] == "Ready"


def test_not_ready_again_after_not_ready_is_not_reported(azure_ctx, fake_imds, document):
    results = dict(OK_STEPS, users=StepResult.failed("boom"))
    boot = make_boot(document, results, steps={"report_ready": {"ok": True, "delivered": "NotReady"}})
    assert report.run(azure_ctx(), boot).status == "unchanged"
    assert wire_requests(fake_imds) == []


def test_wireserver_500s_are_retried_soon_then_delivered(root, make_ctx, document):
    on_azure(root)
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        time.sleep(seconds)

    with FakeImds(document, faults="ws:500,ws:500") as fake:
        ctx = make_ctx(config={"azure": {"wireserver": fake.url}}, deadline=time.monotonic() + 20, sleep=sleep)
        outcome = report.run(ctx, make_boot(document))
        assert outcome.status == "changed"
        assert fake.count("/machine", "GET") == 3
        assert fake.count("/machine", "POST") == 1
        assert [h["state"] for h in fake.health_reports] == ["Ready"]
    assert waits and waits[0] < 1.0 and max(waits) <= 5.0


def test_retries_stay_at_most_5_seconds_apart_even_with_retry_after(root, make_ctx):
    waits = []
    ctx = make_ctx(sleep=waits.append)
    http = wireserver.client(ctx)
    http.sleep(16.0)  # what Http would wait for a `Retry-After: 16`
    assert waits == [wireserver.MAX_GAP] and wireserver.MAX_GAP <= 5.0


def test_unreachable_wireserver_fails_only_this_step(root, make_ctx, document):
    on_azure(root)
    ctx = make_ctx(config={"azure": {"wireserver": f"http://127.0.0.1:{closed_port()}"}},
                   deadline=time.monotonic() + 1.0)
    boot = make_boot(document)
    others = {name: result.status for name, result in boot.results.items()}
    started = time.monotonic()
    outcome = report.run(ctx, boot)

    assert time.monotonic() - started < 3
    assert outcome.status == "failed"
    assert "did not succeed before the deadline" in outcome.error
    assert "tried again at the next boot" in outcome.error and "\n" not in outcome.error
    assert {name: result.status for name, result in boot.results.items()} == others
    assert boot.state.get("report_ready") == {}  # undelivered: due again next boot


def test_not_on_azure_sends_nothing(make_ctx, fake_imds, document):
    ctx = make_ctx(config={"azure": {"wireserver": fake_imds.url}}, deadline=time.monotonic() + 5)
    outcome = report.run(ctx, make_boot(document))
    assert outcome.status == "skipped"
    assert outcome.reason == "not on Azure (no Azure chassis asset tag)"
    assert fake_imds.requests == []


def test_a_wrong_asset_tag_is_not_azure(root, make_ctx, fake_imds, document):
    tag = root / "sys/class/dmi/id/chassis_asset_tag"
    tag.parent.mkdir(parents=True)
    tag.write_text("No Asset Tag\n")
    ctx = make_ctx(config={"azure": {"wireserver": fake_imds.url}}, deadline=time.monotonic() + 5)
    assert report.run(ctx, make_boot(document)).status == "skipped"
    assert fake_imds.requests == []


def test_report_ready_true_reports_off_azure(make_ctx, fake_imds, document):
    ctx = make_ctx(config={"azure": {"wireserver": fake_imds.url, "report_ready": True}},
                   deadline=time.monotonic() + 5)
    assert report.run(ctx, make_boot(document)).status == "changed"
    assert len(fake_imds.health_reports) == 1


def test_report_ready_false_never_reports(azure_ctx, fake_imds, document):
    outcome = report.run(azure_ctx(config={"azure": {"report_ready": False}}), make_boot(document))
    assert outcome.status == "skipped" and outcome.reason == "azure.report_ready is false"
    assert fake_imds.requests == []


def test_arc_never_reports_even_when_dmi_says_azure(azure_ctx, fake_imds, document):
    for mode in ("auto", True):
        outcome = report.run(azure_ctx(on_arc=True, config={"azure": {"report_ready": mode}}),
                             make_boot(document))
        assert outcome.status == "skipped" and outcome.reason == "on Azure Arc: no wireserver"
    assert fake_imds.requests == []


def test_dry_run_sends_nothing_and_says_what_it_would_report(azure_ctx, fake_imds, document):
    ctx = azure_ctx(dry_run=True)
    boot = make_boot(document, dict(OK_STEPS, users=StepResult.failed("useradd failed")))
    outcome = report.run(ctx, boot)
    assert outcome.status == "changed"
    assert fake_imds.requests == []
    assert any("would report NotReady" in text and "users" in text for _, text in ctx.changes)
    assert boot.state.get("report_ready") == {}


# --- pure parts -----------------------------------------------------------------------

def goal_state_xml(incarnation="7", container="c-1", instance="i-1") -> bytes:
    return GOAL_STATE_XML.format(version="2012-11-30", incarnation=incarnation, container_id=container,
                                 instance_id=instance, config_url="http://x/?a=1").encode()


def test_parse_goal_state_reads_the_three_values():
    assert wireserver.parse_goal_state(goal_state_xml()) == wireserver.GoalState("7", "c-1", "i-1")


def test_parse_goal_state_accepts_a_default_namespace():
    xml = b'<GoalState xmlns="http://schemas.microsoft.com/x"><Incarnation>2</Incarnation><Container>' \
          b'<ContainerId>c</ContainerId><RoleInstanceList><RoleInstance><InstanceId>i</InstanceId>' \
          b'</RoleInstance></RoleInstanceList></Container></GoalState>'
    assert wireserver.parse_goal_state(xml) == wireserver.GoalState("2", "c", "i")


@pytest.mark.parametrize("body", [
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
    b"<GoalState><Incarnation>&lol2;</Incarnation></GoalState>",
    b'<!DOCTYPE GoalState SYSTEM "file:///etc/passwd"><GoalState/>',
    b"<!doctype goalstate><GoalState/>",
    '<?xml version="1.0" encoding="utf-16"?><!DOCTYPE x [<!ENTITY a "b">]><GoalState/>'.encode("utf-16"),
    '<?xml version="1.0" encoding="utf-16"?><!DOCTYPE x [<!ENTITY a "b">]><GoalState/>'.encode("utf-16-le"),
])
def test_parse_goal_state_refuses_dtds_and_entities(body):
    with pytest.raises(StepError):
        wireserver.parse_goal_state(body)


@pytest.mark.parametrize("path", ["Incarnation", "Container/ContainerId",
                                  "Container/RoleInstanceList/RoleInstance/InstanceId"])
def test_parse_goal_state_names_what_is_missing(path):
    tag = path.rsplit("/", 1)[-1]
    body = goal_state_xml().replace(f"<{tag}>".encode(), f"<Other{tag}>".encode()) \
        .replace(f"</{tag}>".encode(), f"</Other{tag}>".encode())
    with pytest.raises(StepError, match=f"no {path}"):
        wireserver.parse_goal_state(body)


def test_parse_goal_state_refuses_oversize_and_garbage():
    with pytest.raises(StepError, match="larger than"):
        wireserver.parse_goal_state(b"<GoalState>" + b" " * wireserver.MAX_GOAL_STATE + b"</GoalState>")
    with pytest.raises(StepError, match="not well-formed"):
        wireserver.parse_goal_state(b"<GoalState><Incarnation>")
    with pytest.raises(StepError, match="not GoalState"):
        wireserver.parse_goal_state(b"<Error><Message>x</Message></Error>")


SPEC_READY = """<?xml version="1.0" encoding="utf-8"?>
<Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <GoalStateIncarnation>1</GoalStateIncarnation>
  <Container>
    <ContainerId>c-1</ContainerId>
    <RoleInstanceList>
      <Role>
        <InstanceId>i-1</InstanceId>
        <Health>
          <State>Ready</State>
        </Health>
      </Role>
    </RoleInstanceList>
  </Container>
</Health>
"""


def test_health_document_is_the_spec_document():
    goal_state = wireserver.GoalState("1", "c-1", "i-1")
    assert wireserver.health_document(goal_state, True).decode() == SPEC_READY


def test_not_ready_document_carries_details_escaped():
    goal_state = wireserver.GoalState("1&2", "<c>", "i\"1")
    root = ElementTree.fromstring(wireserver.health_document(goal_state, False, "a < b & c\nnext"))
    assert root.findtext("GoalStateIncarnation") == "1&2"
    assert root.findtext("Container/ContainerId") == "<c>"
    role = root.find("Container/RoleInstanceList/Role")
    assert role.findtext("InstanceId") == "i\"1"
    assert role.findtext("Health/State") == "NotReady"
    assert role.findtext("Health/Details/SubStatus") == "ProvisioningFailed"
    assert role.findtext("Health/Details/Description") == "a < b & c next"


@settings(max_examples=examples(200), deadline=None)
@given(values=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cn"))).map(str.strip)
                       .filter(bool), min_size=3, max_size=3),
       description=st.text())
def test_health_document_round_trips_any_values(values, description):
    goal_state = wireserver.GoalState(*values)
    root = ElementTree.fromstring(wireserver.health_document(goal_state, False, description))
    role = root.find("Container/RoleInstanceList/Role")
    assert (root.findtext("GoalStateIncarnation"), root.findtext("Container/ContainerId"),
            role.findtext("InstanceId")) == tuple(values)
    text = role.findtext("Health/Details/Description")
    assert 0 < len(text) <= 512 and "\n" not in text


# --- end to end: `bootagent run` against the fake -------------------------------------

def run_on_azure(root, fake, *extra):
    config = root / "etc/bootagent/bootagent.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    # no host keys: RSA generation on a busy host could eat the 3 s deadline before the report
    config.write_text(f"azure:\n  wireserver: {extra[0] if extra else fake.url}\n"
                      "ssh:\n  host_keys: off\n")
    return run_cli("run", "--root", str(root), "--imds-url", fake.url, "--timeout", "3",
                   env={"IMDS_ENDPOINT": ""})


def test_cli_first_boot_reports_ready_and_the_second_reports_nothing(root, fake_imds):
    on_azure(root)
    first = run_on_azure(root, fake_imds)
    assert first.returncode == 0, first.stderr
    assert result_json(root)["steps"]["report_ready"]["status"] == "changed"
    assert [h["state"] for h in fake_imds.health_reports] == ["Ready"]

    second = run_on_azure(root, fake_imds)
    assert second.returncode == 0, second.stderr
    assert result_json(root)["steps"]["report_ready"]["status"] == "unchanged"
    assert fake_imds.count("/machine", "GET") == 1 and fake_imds.count("/machine", "POST") == 1


def test_cli_failed_step_posts_not_ready_then_ready_once_fixed(root, fake_imds, document):
    on_azure(root)
    good = document["compute"]["osProfile"]["adminUsername"]
    document["compute"]["osProfile"]["adminUsername"] = "Bad Name"
    fake_imds.document = document
    first = run_on_azure(root, fake_imds)
    assert first.returncode == 1
    [health] = fake_imds.health_reports
    assert health["state"] == "NotReady" and health["description"].startswith("failed steps: users, ssh_keys")

    document["compute"]["osProfile"]["adminUsername"] = good
    second = run_on_azure(root, fake_imds)
    assert second.returncode == 0, second.stderr
    assert [h["state"] for h in fake_imds.health_reports] == ["NotReady", "Ready"]


def test_cli_unreachable_wireserver_fails_only_report_ready(root, fake_imds):
    on_azure(root)
    result = run_on_azure(root, fake_imds, f"http://127.0.0.1:{closed_port()}")
    assert result.returncode == 1
    steps = result_json(root)["steps"]
    assert steps["report_ready"]["status"] == "failed"
    assert all(step["status"] != "failed" for name, step in steps.items() if name != "report_ready")

"""The IMDS categories beside the instance: the fake serves them as documented (scheduled
events, load balancer, versions, attested data, each with its own api-versions), and
`bootagent metadata --endpoint` reads them with the agent's client."""

from __future__ import annotations

import http.client
import json

import pytest

from bootagent.fake.server import FakeImds
from bootagent.imds.versions import SCHEDULED_EVENTS_VERSIONS
from conftest import background, run_cli

META = {"Metadata": "true"}
EVENTS = "/metadata/scheduledevents?api-version=2020-07-01"
EVENT_FIELDS = {"EventId", "EventType", "ResourceType", "Resources", "EventStatus", "NotBefore",
                "Description", "EventSource", "DurationInSeconds"}


def call(fake, path, headers=META, method="GET", body=None):
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def events_of(fake) -> dict:
    status, body = call(fake, EVENTS)
    assert status == 200
    return json.loads(body)


def metadata(fake, endpoint: str, *args: str):
    return run_cli("metadata", "--imds-url", fake.url, "--endpoint", endpoint, "--timeout", "10", *args)


# -- scheduled events -------------------------------------------------------------------

def test_two_events_one_acknowledged_the_incarnation_moves_and_the_other_remains(document):
    with FakeImds(document, events=["Reboot", "Preempt"], rate_limit=0) as fake:
        before = events_of(fake)
        assert [event["EventType"] for event in before["Events"]] == ["Reboot", "Preempt"]
        for event in before["Events"]:
            assert set(event) == EVENT_FIELDS
            assert event["EventStatus"] == "Scheduled"
            assert event["Resources"] == [document["compute"]["name"]]
            assert event["NotBefore"].endswith(" GMT")
        reboot, preempt = before["Events"]
        status, _ = call(fake, EVENTS, {**META, "Content-Type": "application/json"}, "POST",
                         json.dumps({"StartRequests": [{"EventId": reboot["EventId"]}]}).encode())
        assert status == 200
        after = events_of(fake)
    assert after["DocumentIncarnation"] > before["DocumentIncarnation"]
    assert after["Events"] == [preempt]


def test_an_injected_event_bumps_the_incarnation_and_acknowledging_twice_changes_nothing(document):
    with FakeImds(document, rate_limit=0) as fake:
        empty = events_of(fake)
        assert empty["Events"] == []
        event_id = fake.scheduled.inject("Freeze")
        one = events_of(fake)
        assert one["DocumentIncarnation"] == empty["DocumentIncarnation"] + 1
        assert one["Events"][0]["DurationInSeconds"] > 0
        body = json.dumps({"StartRequests": [{"EventId": event_id}]}).encode()
        assert call(fake, EVENTS, META, "POST", body)[0] == 200
        gone = events_of(fake)
        assert call(fake, EVENTS, META, "POST", body)[0] == 200
        assert events_of(fake) == gone == {"DocumentIncarnation": one["DocumentIncarnation"] + 1,
                                           "Events": []}


@pytest.mark.parametrize("body", [b"", b"{}", b'{"StartRequests": "x"}', b'{"StartRequests": [{"Id": 1}]}'])
def test_a_post_that_is_not_start_requests_is_refused(fake_imds, body):
    fake_imds.rate_limiter.limit = 0
    assert call(fake_imds, EVENTS, META, "POST", body)[0] == 400


def test_scheduled_events_have_their_own_versions_and_the_header_rule(fake_imds):
    fake_imds.rate_limiter.limit = 0
    status, body = call(fake_imds, "/metadata/scheduledevents?api-version=2021-08-01")
    assert status == 400
    assert json.loads(body)["newest-versions"] == sorted(SCHEDULED_EVENTS_VERSIONS, reverse=True)[:3]
    assert call(fake_imds, EVENTS, headers={})[0] == 400


def test_the_fake_command_serves_the_events_it_was_given(tmp_path):
    with background("fake-imds", "--event", "Reboot", "--event", "Terminate") as fake:
        url = fake.stdout.readline().strip()
        done = run_cli("metadata", "--imds-url", url, "--endpoint", "scheduledevents", "--timeout", "10")
    assert done.returncode == 0, done.stderr
    assert [event["EventType"] for event in json.loads(done.stdout)["Events"]] == ["Reboot", "Terminate"]


def test_an_unknown_event_type_is_a_usage_error():
    done = run_cli("fake-imds", "--event", "Explode")
    assert done.returncode == 2 and "Explode" in done.stderr


# -- load balancer ----------------------------------------------------------------------

def test_loadbalancer_without_the_key_is_200_with_empty_lists(fake_imds):
    done = metadata(fake_imds, "loadbalancer")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"loadbalancer": {"publicIpAddresses": [], "inboundRules": [],
                                                        "outboundRules": []}}


def test_loadbalancer_serves_the_document_files_key_and_only_there(document):
    balancer = {"publicIpAddresses": [{"frontendIpAddress": "51.0.0.1", "privateIpAddress": "10.1.0.4"}],
                "inboundRules": [{"frontendIpAddress": "50.0.0.1", "protocol": "tcp", "frontendPort": 80,
                                  "backendPort": 443, "privateIpAddress": "10.1.0.4"}],
                "outboundRules": []}
    document["loadbalancer"] = balancer
    with FakeImds(document, rate_limit=0) as fake:
        done = metadata(fake, "loadbalancer")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"loadbalancer": balancer}
        assert call(fake, "/metadata/loadbalancer?api-version=2020-09-01")[0] == 400  # before 2020-10-01
        instance = json.loads(call(fake, "/metadata/instance?api-version=2021-08-01")[1])
    assert "loadbalancer" not in instance


# -- metadata --endpoint ----------------------------------------------------------------

def test_metadata_endpoint_versions(fake_imds):
    done = metadata(fake_imds, "versions")
    assert done.returncode == 0, done.stderr
    assert "2021-08-01" in json.loads(done.stdout)["apiVersions"]
    assert fake_imds.requests[-1]["query"] == {}  # unversioned
    assert fake_imds.requests[-1]["headers"]["Metadata"] == "true"


def test_metadata_endpoint_scheduledevents_asks_with_a_version_of_its_own(fake_imds):
    done = metadata(fake_imds, "scheduledevents")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"DocumentIncarnation": 1, "Events": []}
    assert fake_imds.requests[-1]["query"] == {"api-version": "2020-07-01"}


def test_metadata_endpoint_attested_document(fake_imds):
    done = metadata(fake_imds, "attested/document")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["encoding"] == "pkcs7" and len(answer["signature"]) > 500
    assert fake_imds.requests[-1]["path"] == "/metadata/attested/document"


def test_metadata_endpoint_retries_like_the_instance(document):
    with FakeImds(document, faults="500,429") as fake:
        done = metadata(fake, "loadbalancer")
        assert done.returncode == 0, done.stderr
        assert [entry["status"] for entry in fake.requests] == [500, 429, 200]


def test_metadata_endpoint_falls_back_to_a_version_the_server_offers(document):
    with FakeImds(document, faults="versions:2019-06-01+2020-12-01") as fake:
        done = metadata(fake, "loadbalancer")
        assert done.returncode == 0, done.stderr
        assert [entry["query"]["api-version"] for entry in fake.requests] == ["2021-08-01", "2020-12-01"]


def test_metadata_endpoint_with_a_path_or_text_is_a_usage_error(fake_imds):
    both = metadata(fake_imds, "versions", "compute/vmId")
    text = metadata(fake_imds, "loadbalancer", "--format", "text")
    assert both.returncode == 2 and "PATH" in both.stderr
    assert text.returncode == 2 and "--format text" in text.stderr
    assert fake_imds.count("/metadata/") == 0


def test_metadata_endpoint_unknown_category_is_a_usage_error(fake_imds):
    done = metadata(fake_imds, "identity")
    assert done.returncode == 2

"""The wireserver side of the fake: the goal state and the health report.

``GET /machine/?comp=goalstate`` (``/machine?comp=goalstate`` too) answers a
GoalState document shaped like the platform's (Version, Incarnation, Machine,
Container/ContainerId, Container/RoleInstanceList/RoleInstance/InstanceId).
``POST /machine?comp=health`` takes the Health document of the product spec.
Both need ``x-ms-version: 2012-11-30`` and an ``x-ms-agent-name``; the POST also
``Content-Type: text/xml; charset=utf-8``. The container id is derived from the
vmId and the instance id is ``<vmId>.<name>``, so a new document (a new vmId)
is a new goal state.

The fake is stricter than the platform where that catches agent bugs: a body
with a DTD or an entity is refused, the incarnation/container/instance must be
the current goal state's, State must be Ready or NotReady, a NotReady needs
Details with a SubStatus and a Description, and a Description is at most 512
characters. Every refusal is 400.
"""

from __future__ import annotations

import uuid
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from .messages import XML_TYPE, Reply, Request

WIRE_VERSION = "2012-11-30"
HEALTH_CONTENT_TYPE = "text/xml;charset=utf-8"
MAX_DESCRIPTION = 512
STATES = ("Ready", "NotReady")
_CONTAINER_NAMESPACE = uuid.UUID("5b0f3f5e-7c1a-4c8e-9d55-0b6f3c1e2a71")

GOAL_STATE_XML = """<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>{version}</Version>
  <Incarnation>{incarnation}</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
    <LBProbePorts>
      <Port>16001</Port>
    </LBProbePorts>
    <ExpectHealthReport>FALSE</ExpectHealthReport>
  </Machine>
  <Container>
    <ContainerId>{container_id}</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>{instance_id}</InstanceId>
        <State>Started</State>
        <Configuration>
          <HostingEnvironmentConfig>{config_url}&amp;type=hostingEnvironmentConfig&amp;incarnation={incarnation}</HostingEnvironmentConfig>
          <SharedConfig>{config_url}&amp;type=sharedConfig&amp;incarnation={incarnation}</SharedConfig>
          <ExtensionsConfig>{config_url}&amp;type=extensionsConfig&amp;incarnation={incarnation}</ExtensionsConfig>
          <FullConfig>{config_url}&amp;type=fullConfig&amp;incarnation={incarnation}</FullConfig>
          <ConfigName>{container_id}.0.{instance_id}.1.xml</ConfigName>
        </Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"""


class HealthError(ValueError):
    """A health report the fake refuses (answered 400 with this message)."""


def goal_state_of(document: dict, incarnation: str) -> dict:
    """Incarnation, container id and instance id for the VM this document describes."""
    found = document.get("compute")
    compute: dict = found if isinstance(found, dict) else {}
    vm_id = str(compute.get("vmId") or "00000000-0000-0000-0000-000000000000")
    name = str(compute.get("name") or "vm")
    return {
        "incarnation": incarnation,
        "container_id": str(uuid.uuid5(_CONTAINER_NAMESPACE, vm_id.lower())),
        "instance_id": f"{vm_id}.{name}",
    }


def error_xml(status: int, code: str, message: str) -> Reply:
    body = ('<?xml version="1.0" encoding="utf-8"?>\n'
            f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>\n")
    return Reply(status, body.encode("utf-8"), XML_TYPE)


class Wireserver:
    """Routes /machine requests; ``incarnation`` may be changed by tests."""

    def __init__(self, incarnation: str = "1"):
        self.incarnation = incarnation

    def reply(self, request: Request, document: dict) -> Reply:
        if request.path not in ("/machine", "/machine/"):
            return error_xml(404, "ResourceNotFound", "The requested resource does not exist")
        comp = request.query_dict().get("comp", "")
        expected_method = {"goalstate": "GET", "health": "POST"}.get(comp)
        if expected_method is None:
            return error_xml(400, "InvalidQuery", "comp must be goalstate or health")
        if request.method != expected_method:
            return error_xml(405, "MethodNotAllowed", f"comp={comp} takes {expected_method}")
        refusal = refuse_headers(request, with_body=comp == "health")
        if refusal:
            return refusal
        goal_state = goal_state_of(document, self.incarnation)
        if comp == "goalstate":
            return goal_state_reply(goal_state)
        return health_reply(request, goal_state)


def refuse_headers(request: Request, *, with_body: bool) -> Reply | None:
    if request.header("x-ms-version") != WIRE_VERSION:
        return error_xml(400, "MissingOrInvalidHeader", f"x-ms-version must be {WIRE_VERSION}")
    if not (request.header("x-ms-agent-name") or "").strip():
        return error_xml(400, "MissingOrInvalidHeader", "x-ms-agent-name is required")
    content_type = (request.header("Content-Type") or "").replace(" ", "").lower()
    if with_body and content_type != HEALTH_CONTENT_TYPE:
        return error_xml(400, "MissingOrInvalidHeader", "Content-Type must be text/xml; charset=utf-8")
    return None


def goal_state_reply(goal_state: dict) -> Reply:
    values = {key: escape(value) for key, value in goal_state.items()}
    config_url = escape(f"http://168.63.129.16:80/machine/{goal_state['container_id']}/"
                        f"{goal_state['instance_id']}?comp=config")
    body = GOAL_STATE_XML.format(version=WIRE_VERSION, config_url=config_url, **values)
    return Reply(200, body.encode("utf-8"), XML_TYPE)


def health_reply(request: Request, goal_state: dict) -> Reply:
    """Validate the report against the goal state; 200 and a record when it holds."""
    try:
        report = parse_health(request.body)
        check_against(report, goal_state)
    except HealthError as exc:
        return error_xml(400, "InvalidHealthReport", str(exc))
    report["headers"] = {name: request.header(name)
                         for name in ("x-ms-agent-name", "x-ms-version", "Content-Type")}
    return Reply(200, b"", None, record={"health": report})


def parse_health(body: bytes) -> dict:
    """The fields of a Health document; the stdlib parser, never a DTD or entity."""
    upper = body.upper()
    if b"<!DOCTYPE" in upper or b"<!ENTITY" in upper:
        raise HealthError("a DTD or entity declaration is not accepted")
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise HealthError(f"not well-formed XML: {exc}") from None
    if root.tag != "Health":
        raise HealthError(f"root element is {root.tag!r}, not 'Health'")
    roles = root.findall("Container/RoleInstanceList/Role")
    if len(roles) != 1:
        raise HealthError(f"expected one Container/RoleInstanceList/Role, found {len(roles)}")
    return {
        "incarnation": _text(root, "GoalStateIncarnation"),
        "container_id": _text(root, "Container/ContainerId"),
        "instance_id": _text(roles[0], "InstanceId"),
        "state": _text(roles[0], "Health/State"),
        "substatus": _text(roles[0], "Health/Details/SubStatus", required=False),
        "description": _text(roles[0], "Health/Details/Description", required=False),
    }


def check_against(report: dict, goal_state: dict) -> None:
    for field in ("incarnation", "container_id", "instance_id"):
        if report[field] != goal_state[field]:
            raise HealthError(f"{field} {report[field]!r} is not the goal state's {goal_state[field]!r}")
    if report["state"] not in STATES:
        raise HealthError(f"State {report['state']!r} is not Ready or NotReady")
    if report["state"] == "NotReady" and not (report["substatus"] and report["description"]):
        raise HealthError("a NotReady report needs Details/SubStatus and Details/Description")
    if len(report["description"] or "") > MAX_DESCRIPTION:
        raise HealthError(f"Description is longer than {MAX_DESCRIPTION} characters")


def _text(node, path: str, *, required: bool = True) -> str | None:
    found = node.find(path)
    if found is None:
        if required:
            raise HealthError(f"{path} is missing")
        return None
    return (found.text or "").strip()

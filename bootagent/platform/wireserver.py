"""Report ready through the wireserver, as cloud-init and WALinuxAgent do (SPEC step 7).

    GET  {wireserver}/machine/?comp=goalstate   -> Incarnation, ContainerId, InstanceId
    POST {wireserver}/machine?comp=health       <- the Health document (Ready / NotReady)

The goal-state parser and the Health document are pure functions. The parser is the
standard library's, and it never sees a DTD or an entity declaration: those are
refused before parsing, so no entity can expand (billion laughs) or reach outside.
"""

from __future__ import annotations

import re
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from bootagent.errors import HttpError, StepError
from bootagent.http import Http, Response, RetryLater
from bootagent.record import Record
from bootagent.text import one_line, quoted, shorten

WIRE_VERSION = "2012-11-30"
HEADERS = {"x-ms-agent-name": "bootagent", "x-ms-version": WIRE_VERSION}
POST_HEADERS = {**HEADERS, "Content-Type": "text/xml; charset=utf-8"}
MAX_GOAL_STATE = 256 << 10
MAX_DESCRIPTION = 512
MAX_FIELD = 1024
# SPEC: retries at most 5 s apart. Http honours Retry-After (up to 16 s): cap every wait.
MAX_GAP = 4.5
SUBSTATUS = "ProvisioningFailed"

_FORBIDDEN = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# what XML 1.0 cannot carry at all (and lone surrogates, which UTF-8 cannot encode)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_XML_MESSAGE = re.compile(rb"<Message>(.{0,400}?)</Message>", re.DOTALL)


class GoalState(Record, frozen=True):
    incarnation: str
    container_id: str
    instance_id: str


def parse_goal_state(xml_bytes: bytes) -> GoalState:
    """The three values a health report needs; StepError names what is wrong or missing."""
    if len(xml_bytes) > MAX_GOAL_STATE:
        raise StepError(f"the goal state is larger than {MAX_GOAL_STATE} bytes; refusing it")
    try:
        # Parsing a str makes expat read UTF-8 whatever the XML declaration claims, so a
        # UTF-16 body cannot hide a DTD from the check below.
        text = xml_bytes.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise StepError("the goal state is not UTF-8 XML") from None
    if _FORBIDDEN.search(text) or "\0" in text:
        raise StepError("the goal state holds a DTD or an entity declaration; refusing it")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as err:
        raise StepError(f"the goal state is not well-formed XML ({err})") from None
    for element in root.iter():
        if isinstance(element.tag, str) and "}" in element.tag:
            element.tag = element.tag.split("}", 1)[1]
    if root.tag != "GoalState":
        raise StepError(f"the goal state's root element is {quoted(root.tag, 40)}, not GoalState")
    return GoalState(
        incarnation=_field(root, "Incarnation"),
        container_id=_field(root, "Container/ContainerId"),
        instance_id=_field(root, "Container/RoleInstanceList/RoleInstance/InstanceId"),
    )


def _field(root: ElementTree.Element, path: str) -> str:
    found = root.find(path)
    value = (found.text or "").strip() if found is not None else ""
    if not value:
        raise StepError(f"the goal state has no {path}")
    if len(value) > MAX_FIELD or _CONTROL.search(value):
        raise StepError(f"the goal state's {path} is too long or holds control characters")
    return value


def clean_description(description: str | None) -> str:
    """One line of at most 512 characters that XML 1.0 can carry."""
    text = _NOT_XML.sub(" ", description or "").replace("\r", " ").replace("\n", " ").strip()
    return shorten(text, MAX_DESCRIPTION) or "provisioning failed"


def health_document(goal_state: GoalState, ready: bool, description: str | None = None) -> bytes:
    """The Health document of the SPEC, values XML-escaped; NotReady carries Details."""
    if ready:
        health = "          <State>Ready</State>\n"
    else:
        health = ("          <State>NotReady</State>\n"
                  "          <Details>\n"
                  f"            <SubStatus>{SUBSTATUS}</SubStatus>\n"
                  f"            <Description>{escape(clean_description(description))}</Description>\n"
                  "          </Details>\n")
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema">\n'
        f"  <GoalStateIncarnation>{escape(goal_state.incarnation)}</GoalStateIncarnation>\n"
        "  <Container>\n"
        f"    <ContainerId>{escape(goal_state.container_id)}</ContainerId>\n"
        "    <RoleInstanceList>\n"
        "      <Role>\n"
        f"        <InstanceId>{escape(goal_state.instance_id)}</InstanceId>\n"
        "        <Health>\n"
        f"{health}"
        "        </Health>\n"
        "      </Role>\n"
        "    </RoleInstanceList>\n"
        "  </Container>\n"
        "</Health>\n"
    ).encode("utf-8")


def client(ctx) -> Http:
    """An Http whose waits between attempts never exceed MAX_GAP seconds."""
    sleep = ctx.sleep
    return Http(ctx.clock, lambda seconds: sleep(min(seconds, MAX_GAP)))


def goal_state_url(wireserver_url: str) -> str:
    return f"{wireserver_url.rstrip('/')}/machine/?comp=goalstate"


def health_url(wireserver_url: str) -> str:
    return f"{wireserver_url.rstrip('/')}/machine?comp=health"


def fetch_goal_state(http: Http, wireserver_url: str, deadline: float) -> GoalState:
    """GET the goal state; transport errors, 5xx and malformed bodies retried to the deadline."""
    url = goal_state_url(wireserver_url)

    def accept(answer: Response) -> GoalState:
        if answer.status != 200:
            raise _refused(answer, "GET")
        try:
            return parse_goal_state(answer.body)
        except StepError as err:
            raise RetryLater(f"{err} (from {url})") from None

    return http.retrying("GET", url, headers=HEADERS, deadline=deadline, accept=accept,
                         what=f"fetching the goal state from {wireserver_url}")


def post_health(http: Http, wireserver_url: str, document: bytes, deadline: float) -> None:
    url = health_url(wireserver_url)

    def accept(answer: Response) -> None:
        if not 200 <= answer.status < 300:
            raise _refused(answer, "POST")

    http.retrying("POST", url, headers=POST_HEADERS, deadline=deadline, accept=accept, data=document,
                  what=f"posting the health report to {wireserver_url}")


def report(ctx, http: Http, wireserver_url: str, ready: bool, description: str | None,
           deadline: float) -> GoalState:
    """Tell the platform Ready or NotReady; HttpError/StepError when not delivered in time."""
    goal_state = fetch_goal_state(http, wireserver_url, deadline)
    post_health(http, wireserver_url, health_document(goal_state, ready, description), deadline)
    return goal_state


def _refused(answer: Response, method: str) -> HttpError:
    """A final refusal (4xx, 3xx): the wireserver's own <Message>, sanitised, when it sent one."""
    found = _XML_MESSAGE.search(answer.body[:8192])
    message = one_line(found.group(1).decode("utf-8", "replace")) if found else ""
    return HttpError(f"the wireserver answered HTTP {answer.status} to {method} {answer.url}"
                     + (f": {message}" if message else ""), status=answer.status, body=answer.body)

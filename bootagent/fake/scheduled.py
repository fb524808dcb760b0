"""The scheduled-events endpoint of the fake: ``/metadata/scheduledevents``.

``GET`` answers ``{"DocumentIncarnation": N, "Events": [...]}``, each event with
EventId, EventType, ResourceType, Resources, EventStatus, NotBefore, Description,
EventSource and DurationInSeconds. Events are injected (``--event TYPE`` or
``inject``); ``POST`` with ``{"StartRequests": [{"EventId": "..."}]}`` acknowledges
events, and the fake removes them (the platform would now start them). Every change
bumps DocumentIncarnation. An acknowledged id the fake does not hold changes nothing
(acknowledging twice is harmless); a body not of that shape is a 400.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from email.utils import formatdate

from bootagent.imds.versions import SCHEDULED_EVENTS_VERSIONS

from .imds import check_api_version, refuse_unsafe
from .messages import Reply, Request, error_reply, json_reply

SCHEDULED_EVENTS_PATH = "/metadata/scheduledevents"
# type -> (seconds until NotBefore, DurationInSeconds, Description): typical values
EVENT_TYPES = {
    "Reboot": (15 * 60, -1, "Virtual machine is going to be restarted as requested by an authorized user."),
    "Redeploy": (10 * 60, -1, "Virtual machine is going to be moved to another host."),
    "Freeze": (15 * 60, 9, "Virtual machine is being paused for a memory-preserving host update."),
    "Preempt": (30, -1, "The Spot virtual machine is being deleted."),
    "Terminate": (5 * 60, -1, "The virtual machine is going to be deleted from its scale set."),
}


class ScheduledEvents:
    """The events document; thread-safe, changed by inject() and acknowledge()."""

    def __init__(self, event_types=()):
        self.incarnation = 1
        self.events: list[dict] = []
        self._lock = threading.Lock()
        for event_type in event_types:
            self.inject(event_type)

    def inject(self, event_type: str, resources: list[str] | None = None) -> str:
        """Add one Scheduled event of `event_type` (ValueError if unknown); its EventId."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"--event {event_type!r} is not one of {', '.join(EVENT_TYPES)}")
        delay, duration, description = EVENT_TYPES[event_type]
        event_id = str(uuid.uuid4()).upper()
        event = {
            "EventId": event_id,
            "EventType": event_type,
            "ResourceType": "VirtualMachine",
            "Resources": list(resources or []),
            "EventStatus": "Scheduled",
            "NotBefore": formatdate(time.time() + delay, usegmt=True),
            "Description": description,
            "EventSource": "Platform",
            "DurationInSeconds": duration,
        }
        with self._lock:
            self.events.append(event)
            self.incarnation += 1
        return event_id

    def acknowledge(self, event_ids: list[str]) -> int:
        """Remove the events named; how many were removed."""
        wanted = {event_id.lower() for event_id in event_ids}
        with self._lock:
            kept = [event for event in self.events if event["EventId"].lower() not in wanted]
            removed = len(self.events) - len(kept)
            if removed:
                self.events = kept
                self.incarnation += 1
        return removed

    def document(self, vm_name: str) -> dict:
        with self._lock:
            events = [dict(event, Resources=event["Resources"] or [vm_name]) for event in self.events]
            return {"DocumentIncarnation": self.incarnation, "Events": events}

    def reply(self, request: Request, document: dict, versions: tuple[str, ...] | None) -> Reply:
        usable = tuple(v for v in SCHEDULED_EVENTS_VERSIONS if versions is None or v in versions)
        refusal = refuse_unsafe(request) or check_api_version(request, usable)
        if refusal:
            return refusal
        if request.method == "GET":
            compute = document.get("compute")
            compute = compute if isinstance(compute, dict) else {}
            return json_reply(200, self.document(str(compute.get("name") or "vm")))
        if request.method != "POST":
            return error_reply(405, "Method not allowed")
        event_ids = start_requests(request.body)
        if event_ids is None:
            return error_reply(400, 'Bad request. The body must be {"StartRequests": [{"EventId": "..."}]}')
        removed = self.acknowledge(event_ids)
        return Reply(200, b"", None, record={"acknowledged": event_ids, "removed": removed})


def start_requests(body: bytes) -> list[str] | None:
    """The EventIds of a StartRequests body, or None when it is not that shape."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    requests = value.get("StartRequests") if isinstance(value, dict) else None
    if not isinstance(requests, list):
        return None
    ids = [item.get("EventId") for item in requests if isinstance(item, dict)]
    named = [event_id for event_id in ids if isinstance(event_id, str)]
    return named if len(named) == len(requests) else None

"""The load-balancer endpoint of the fake: ``GET /metadata/loadbalancer`` (2020-10-01 on).

It serves the document file's optional top-level ``loadbalancer`` key, wrapped as IMDS
wraps it; without one, a VM behind no Standard Load Balancer: empty lists (SPEC).
"""

from __future__ import annotations

from bootagent.imds.versions import LOADBALANCER_SINCE

from .imds import check_api_version, refuse_unsafe
from .messages import Reply, Request, error_reply, json_reply

LOADBALANCER_PATH = "/metadata/loadbalancer"
EMPTY: dict[str, list] = {"publicIpAddresses": [], "inboundRules": [], "outboundRules": []}


def loadbalancer_reply(request: Request, document: dict, versions: tuple[str, ...]) -> Reply:
    if request.method != "GET":
        return error_reply(405, "Method not allowed")
    usable = tuple(v for v in versions if v >= LOADBALANCER_SINCE)
    refusal = refuse_unsafe(request) or check_api_version(request, usable)
    if refusal:
        return refusal
    served = document.get("loadbalancer")
    return json_reply(200, {"loadbalancer": served if isinstance(served, dict) else dict(EMPTY)})

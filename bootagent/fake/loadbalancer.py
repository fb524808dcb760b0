"""The load-balancer endpoint of the fake: ``GET /metadata/loadbalancer`` (2020-10-01 on).

It serves the document file's optional top-level ``loadbalancer`` key, wrapped as IMDS
wraps it; without one, a VM behind no Standard Load Balancer: empty lists (SPEC).
"""

from __future__ import annotations

from bootagent.imds.versions import LOADBALANCER_SINCE

from .imds import refuse_newer_get
from .messages import Reply, Request, json_reply

LOADBALANCER_PATH = "/metadata/loadbalancer"
EMPTY: dict[str, list] = {"publicIpAddresses": [], "inboundRules": [], "outboundRules": []}


def loadbalancer_reply(request: Request, document: dict, versions: tuple[str, ...]) -> Reply:
    refusal = refuse_newer_get(request, versions, LOADBALANCER_SINCE)
    if refusal:
        return refusal
    served = document.get("loadbalancer")
    return json_reply(200, {"loadbalancer": served if isinstance(served, dict) else dict(EMPTY)})

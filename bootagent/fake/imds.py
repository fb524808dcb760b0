"""The instance-metadata endpoints of the fake: /metadata/instance and /metadata/versions.

They answer as the IMDS documentation says: ``Metadata: true`` required, no
``X-Forwarded-For``, no duplicated query parameter, a mandatory and known
``api-version`` (else 400 with ``newest-versions``), route filtering by dict key
and list index, ``format=text`` required on leaves, compact JSON.

Two choices where the documentation is silent:

- ``format=text`` on a node that is not a leaf lists its children one per line:
  dict keys in document order, or list indexes, each followed by ``/`` when it
  is itself not a leaf (a directory-style listing).
- ``userData`` is removed for api-versions before 2021-01-01, when the real
  service introduced it; no other field is filtered by version.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from urllib.parse import unquote

from .messages import Reply, Request, error_reply, json_reply, text_reply

INSTANCE_PATH = "/metadata/instance"
VERSIONS_PATH = "/metadata/versions"
USERDATA_SINCE = "2021-01-01"
DEFAULT_DOCUMENT_FILE = Path(__file__).with_name("default_document.json")

# The documented api-versions, oldest first.
SUPPORTED_VERSIONS = (
    "2017-03-01", "2017-04-02", "2017-08-01", "2017-10-01", "2017-12-01",
    "2018-02-01", "2018-04-02", "2018-10-01", "2019-02-01", "2019-03-11",
    "2019-04-30", "2019-06-01", "2019-06-04", "2019-08-01", "2019-08-15",
    "2019-11-01", "2020-06-01", "2020-07-15", "2020-09-01", "2020-10-01",
    "2020-12-01", "2021-01-01", "2021-02-01", "2021-03-01", "2021-05-01",
    "2021-08-01", "2021-10-01", "2021-11-01", "2021-11-15", "2021-12-13",
    "2023-07-01", "2023-11-15",
)

NO_HEADER = "Bad request. Required metadata header not specified"
FORWARDED = "Bad request. The request contains an X-Forwarded-For header"
NO_VERSION = ("Bad request. api-version was not specified in the request. "
              "For more information refer to aka.ms/azureimds")
BAD_VERSION = ("Bad request. api-version is invalid or was not specified in the request. "
               "For more information refer to aka.ms/azureimds")
LEAF_NEEDS_TEXT = "Bad request. Querying a leaf node requires format=text"

_default_text: str | None = None


def default_document(*, arc: bool = False) -> dict:
    """A fresh copy of the shipped Linux VM document; ``arc`` drops what Arc lacks."""
    global _default_text
    if _default_text is None:
        _default_text = DEFAULT_DOCUMENT_FILE.read_text(encoding="utf-8")
    document = json.loads(_default_text)
    if arc:
        document["compute"].pop("osProfile", None)
        document["compute"].pop("publicKeys", None)
    return document


def load_document(path: str) -> dict:
    """Read a --metadata file; ValueError (one clear line) when it is not a JSON object."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--metadata {path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--metadata {path}: not UTF-8 text") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--metadata {path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(document, dict):
        raise ValueError(f"--metadata {path}: not a JSON object")
    return document


def newest_versions(versions: tuple[str, ...]) -> list[str]:
    """The three newest supported versions, newest first, as the 400 lists them."""
    return sorted(versions, reverse=True)[:3]


def refuse_unsafe(request: Request) -> Reply | None:
    """The checks every IMDS endpoint makes before anything else."""
    if (request.header("Metadata") or "").strip().lower() != "true":
        return error_reply(400, NO_HEADER)
    if request.header("X-Forwarded-For") is not None:
        return error_reply(400, FORWARDED)
    duplicates = request.duplicate_params()
    if duplicates:
        return error_reply(400, "Bad request. Duplicate query parameter: " + ", ".join(duplicates))
    return None


def check_api_version(request: Request, versions: tuple[str, ...]) -> Reply | None:
    version = request.query_dict().get("api-version", "")
    if not version:
        return error_reply(400, NO_VERSION, **{"newest-versions": newest_versions(versions)})
    if version not in versions:
        return error_reply(400, BAD_VERSION, **{"newest-versions": newest_versions(versions)})
    return None


def refuse_newer_get(request: Request, versions: tuple[str, ...], since: str) -> Reply | None:
    """The checks of an endpoint that answers GET only, from api-version `since` on."""
    if request.method != "GET":
        return error_reply(405, "Method not allowed")
    return refuse_unsafe(request) or check_api_version(request, tuple(v for v in versions if v >= since))


def versions_reply(request: Request, versions: tuple[str, ...]) -> Reply:
    """GET /metadata/versions: unversioned, but still behind the header checks."""
    return refuse_unsafe(request) or json_reply(200, {"apiVersions": sorted(versions)})


def instance_reply(request: Request, document: dict, versions: tuple[str, ...]) -> Reply:
    """GET /metadata/instance[/route...]: the document, or the node the route names."""
    refusal = refuse_unsafe(request) or check_api_version(request, versions)
    if refusal:
        return refusal
    query = request.query_dict()
    output = query.get("format", "json")
    if output not in ("json", "text"):
        return error_reply(400, "Bad request. format must be json or text")
    found, node = walk(document_for_version(document, query["api-version"]), route_of(request.path))
    if not found:
        return error_reply(404, "Not found")
    if is_leaf(node):
        return text_reply(200, leaf_text(node)) if output == "text" else error_reply(400, LEAF_NEEDS_TEXT)
    return text_reply(200, listing(node)) if output == "text" else json_reply(200, node)


def document_for_version(document: dict, version: str) -> dict:
    """The document as that api-version shows it (no userData before 2021-01-01); the
    file's `loadbalancer` key is the load-balancer category's, never the instance's."""
    if "loadbalancer" in document:
        document = {key: value for key, value in document.items() if key != "loadbalancer"}
    compute = document.get("compute")
    if version >= USERDATA_SINCE or not isinstance(compute, dict) or "userData" not in compute:
        return document
    shown = dict(document)
    shown["compute"] = {key: value for key, value in compute.items() if key != "userData"}
    return shown


def compute_subtree(document: dict):
    """What the ``notdoc`` fault serves: valid JSON that is not a document."""
    return copy.deepcopy(document.get("compute", {}))


def route_of(path: str) -> list[str]:
    rest = path[len(INSTANCE_PATH):].strip("/")
    return [unquote(part) for part in rest.split("/")] if rest else []


def walk(node, route: list[str]) -> tuple[bool, object]:
    """Follow dict keys and list indexes; (False, None) when an element is unknown."""
    for element in route:
        if isinstance(node, dict) and element in node:
            node = node[element]
        elif isinstance(node, list) and element.isdigit() and int(element) < len(node):
            node = node[int(element)]
        else:
            return False, None
    return True, node


def is_leaf(node) -> bool:
    return not isinstance(node, (dict, list))


def leaf_text(node) -> str:
    if isinstance(node, str):
        return node
    return "" if node is None else json.dumps(node)


def listing(node) -> str:
    names = list(node) if isinstance(node, dict) else [str(i) for i in range(len(node))]
    children = list(node.values()) if isinstance(node, dict) else node
    return "\n".join(name + ("" if is_leaf(child) else "/") for name, child in zip(names, children))

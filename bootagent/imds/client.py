"""IMDS requests: the instance document, a sub-path for `bootagent metadata`, the versions.

Every request carries `Metadata: true` and goes through the one HTTP client (proxies
bypassed, one retry loop, rate cap, size bound). A 400 naming `newest-versions` is
answered once with the newest of those the agent supports.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from bootagent.errors import DocumentError, HttpError, ImdsUnavailable
from bootagent.http import Http, Response, RetryLater
from bootagent.imds.document import Instance, parse_body
from bootagent.imds.versions import CATEGORY_VERSIONS, SUPPORTED_API_VERSIONS, newest_supported, version_for
from bootagent.text import one_line

HEADERS = {"Metadata": "true"}
ARC_URL_HINT = "on Azure Arc check that the Arc agent runs (IMDS_ENDPOINT)"
# the categories `metadata --endpoint` reads beside the instance (cli.py holds a copy: it
# must not import this module to parse its options)
ENDPOINTS = ("loadbalancer", "scheduledevents", "versions", "attested/document")
PATH_HINT = ("check the path (`bootagent metadata compute --format text` lists the names under "
             "compute); a single value needs --format text")


class ImdsClient:
    def __init__(self, http: Http, base_url: str, api_version: str):
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version

    def url(self, path: str = "instance", **query: str) -> str:
        query = {"api-version": self.api_version, **query}
        params = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        return f"{self.base_url}/metadata/{path.strip('/')}?{params}"

    def fetch_document(self, deadline: float) -> Instance:
        """The instance document, retried until the deadline (ImdsUnavailable then)."""
        def accept(answer: Response) -> Instance:
            if answer.status != 200:
                raise HttpError(f"IMDS answered HTTP {answer.status} for {answer.url}",
                                status=answer.status, body=answer.body)
            try:
                return parse_body(answer.body, f"IMDS at {answer.url}")
            except DocumentError as err:
                raise RetryLater(str(err)) from None

        return self._with_version_fallback(lambda: self.url("instance"), accept, deadline,
                                           "fetching the instance document")

    def fetch_path(self, path: str, fmt: str, deadline: float) -> bytes:
        """One sub-path as IMDS serves it (route filtering), for `bootagent metadata`."""
        target = "instance/" + path.strip("/") if path.strip("/") else "instance"
        # IMDS answered, and refused this path: exit 1, not 3 (IMDS could not be had)
        return self._with_version_fallback(lambda: self.url(target, format=fmt), _body_when_ok, deadline,
                                           f"fetching {target}", PATH_HINT, refused_exit=1)

    def fetch_endpoint(self, endpoint: str, deadline: float, *, since: str = "", **query: str) -> bytes:
        """Another category (one of ENDPOINTS) as IMDS serves it, asked with that category's
        own api-version (SPEC "Every IMDS endpoint"); a 400 naming `newest-versions` is
        answered once with the newest of those the category documents."""
        category = endpoint.split("/")[0]
        client = (self if category == "versions"
                  else ImdsClient(self.http, self.base_url, version_for(category, self.api_version, since)))

        def make_url() -> str:
            if category == "versions":  # unversioned
                return f"{self.base_url}/metadata/versions"
            return client.url(endpoint, **query)
        return client._with_version_fallback(
            make_url, _body_when_ok, deadline, f"fetching {endpoint}", "check the endpoint and the URL",
            refused_exit=1, supported=CATEGORY_VERSIONS.get(category, SUPPORTED_API_VERSIONS), since=since)

    def _with_version_fallback(self, make_url, accept, deadline: float, what: str,
                               hint: str = "check imds.api_version and the URL", refused_exit: int = 3,
                               supported: tuple = SUPPORTED_API_VERSIONS, since: str = ""):
        for attempt in range(2):
            url = make_url()
            try:
                return self.http.retrying("GET", url, headers=HEADERS, deadline=deadline,
                                          accept=accept, what=f"{what} from {self.base_url}")
            except HttpError as err:
                fallback = _fallback_version(err, supported, since) if attempt == 0 else None
                if fallback and fallback != self.api_version:
                    self.api_version = fallback
                    continue
                if err.status is None:
                    raise ImdsUnavailable(f"{err}; check the network with `bootagent doctor`") from None
                raise ImdsUnavailable(f"{err}; {hint}", exit_code=refused_exit) from None
        raise AssertionError("unreachable")


def _body_when_ok(answer: Response) -> bytes:
    if answer.status != 200:
        raise HttpError(f"IMDS answered HTTP {answer.status} for {answer.url}: "
                        f"{_error_text(answer.body)}", status=answer.status, body=answer.body)
    return answer.body


def _fallback_version(err: HttpError, supported: tuple = SUPPORTED_API_VERSIONS,
                      since: str = "") -> str | None:
    if err.status != 400:
        return None
    try:
        offered = json.loads(err.body).get("newest-versions")
    except (ValueError, AttributeError):
        return None
    if not isinstance(offered, list):
        return None
    return newest_supported([v for v in offered if isinstance(v, str) and v >= since], supported)


def _error_text(body: bytes) -> str:
    """IMDS's own words for a refusal, on one bounded line (a proxy's page may be anything)."""
    try:
        value = json.loads(body)
        if isinstance(value, dict) and isinstance(value.get("error"), str):
            return one_line(value["error"])
    except ValueError:
        pass
    return one_line(body[:400].decode("utf-8", "replace"))

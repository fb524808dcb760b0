"""`bootagent doctor`: the reference IMDS troubleshooting steps, one line per check.

    proxy  route  tcp  metadata  api-version  token  wireserver

Each check is a function returning a Check; none waits more than CHECK_TIMEOUT
seconds, and every FAIL says what to do. When TCP to IMDS fails, the checks that need
IMDS are SKIPped (they could only repeat the same failure after a wait).

The metadata check also sends one request *without* `Metadata: true`. Genuine IMDS
refuses it (400); an endpoint that answers it with 200 is not IMDS (a proxy, a
captive portal or an impostor sits in the way), and the check FAILs.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from urllib.parse import urlsplit

from bootagent.errors import BootagentError, StepError
from bootagent.record import Record
from bootagent.text import one_line, quoted

CHECK_TIMEOUT = 3.0
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
ROUTE_TABLE = "/proc/net/route"
RTF_UP = 0x1
RTF_GATEWAY = 0x2


class Check(Record):
    name: str
    status: str  # PASS | FAIL | SKIP
    reason: str

    def line(self) -> str:
        return f"{self.name} {self.status} {self.reason}"


class Doctor:
    """What the checks share: the context, one HTTP client (its rate cap), earlier outcomes."""

    def __init__(self, ctx) -> None:
        from bootagent.http import Http

        self.ctx = ctx
        self.http = Http(ctx.clock, ctx.sleep)
        parts = urlsplit(ctx.imds_url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.results: dict[str, Check] = {}
        self.offered: list | None = None          # newest-versions from a 400, if one came
        self.instance_version: str | None = None  # the api-version a document came back with

    def deadline(self) -> float:
        return self.ctx.clock() + CHECK_TIMEOUT

    def get(self, url: str, headers: dict):
        """One answer of any status; 429, 5xx and transport errors retried for a few seconds."""
        return self.http.retrying("GET", url, headers=headers, deadline=self.deadline(),
                                  accept=lambda answer: answer, what=f"GET {urlsplit(url).path}")

    def imds_down(self) -> bool:
        tcp = self.results.get("tcp")
        return tcp is not None and tcp.status == "FAIL"


NEEDS_TCP = "needs a TCP connection to IMDS (see the tcp line)"


def check_proxy(doc: Doctor) -> Check:
    present = [name for name in PROXY_VARIABLES if doc.ctx.env.get(name, "").strip()]
    if not present:
        return Check("proxy", "PASS", "no proxy variables in the environment")
    no_proxy = doc.ctx.env.get("no_proxy", "") + "," + doc.ctx.env.get("NO_PROXY", "")
    hint = "" if doc.host and doc.host in no_proxy else \
        f"; other tools (curl, the monitoring agent) need {doc.host or 'the IMDS host'} in no_proxy"
    return Check("proxy", "PASS", f"{', '.join(present)} set; bootagent bypasses proxies for IMDS, "
                                  f"identity and the wireserver{hint}")


def parse_routes(table: str) -> list[tuple[str, int, int, int, int]]:
    """(iface, destination, gateway, flags, mask) of each /proc/net/route line (pure)."""
    routes = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, flags, mask = (int(fields[i], 16) for i in (1, 2, 3, 7))
        except ValueError:
            continue
        routes.append((fields[0], _host_order(destination), _host_order(gateway), flags,
                       _host_order(mask)))
    return routes


def _host_order(value: int) -> int:
    """/proc/net/route prints addresses in the kernel's (little-endian) byte order."""
    return int.from_bytes(value.to_bytes(4, "little"), "big")


def route_to(table: str, address: str) -> tuple[str, str | None] | None:
    """(iface, gateway or None for on-link) of the most specific up route to `address`."""
    target = int(ipaddress.IPv4Address(address))
    best = None
    for iface, destination, gateway, flags, mask in parse_routes(table):
        if flags & RTF_UP and target & mask == destination & mask:
            if best is None or mask > best[0]:
                via = str(ipaddress.IPv4Address(gateway)) if flags & RTF_GATEWAY else None
                best = (mask, iface, via)
    return (best[1], best[2]) if best else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_route(doc: Doctor) -> Check:
    from bootagent import writer

    if doc.ctx.on_arc:
        return Check("route", "SKIP", "on Azure Arc: IMDS is the local Arc agent")
    if _is_loopback(doc.host):
        return Check("route", "SKIP", f"{doc.host} is a loopback address")
    try:
        ipaddress.IPv4Address(doc.host)
    except ValueError:
        return Check("route", "SKIP", f"{doc.host or 'the IMDS URL'} is not an IPv4 address")
    try:
        raw = writer.read_file(doc.ctx, ROUTE_TABLE, limit=1 << 20)
    except BootagentError as err:
        return Check("route", "SKIP", f"cannot read {ROUTE_TABLE}: {err}")
    if raw is None:
        return Check("route", "SKIP", f"no {ROUTE_TABLE} under the root to read")
    found = route_to(raw.decode("ascii", "replace"), doc.host)
    if found is None:
        return Check("route", "FAIL", f"no route to {doc.host} in {ROUTE_TABLE}; add one with "
                                      f"`ip route add {doc.host}/32 dev <primary interface>` "
                                      "(or via its gateway) and make it persistent in the network configuration")
    iface, gateway = found
    return Check("route", "PASS", f"{doc.host} via {iface}" + (f" (gateway {gateway})" if gateway else " (on-link)"))


def check_tcp(doc: Doctor) -> Check:
    if not doc.host:
        return Check("tcp", "FAIL",
                     f"the IMDS URL {quoted(doc.ctx.imds_url)} names no host; fix imds.url or --imds-url")
    started = doc.ctx.clock()
    try:
        with socket.create_connection((doc.host, doc.port), timeout=CHECK_TIMEOUT):
            pass
    except OSError as err:
        what = "timed out" if isinstance(err, socket.timeout) else (err.strerror or str(err))
        if doc.ctx.on_arc:
            hint = "check that the Arc agent runs (`systemctl status himdsd`) and IMDS_ENDPOINT is right"
        elif _is_loopback(doc.host):
            hint = "check that the local IMDS (e.g. `bootagent fake-imds`) runs on that port"
        else:
            hint = (f"check that no firewall (iptables/nftables, a security agent) blocks "
                    f"{doc.host}:{doc.port} and that the route above is right")
        return Check("tcp", "FAIL", f"cannot connect to {doc.host}:{doc.port}: {what}; {hint}")
    elapsed = (doc.ctx.clock() - started) * 1000
    return Check("tcp", "PASS", f"connected to {doc.host}:{doc.port} in {elapsed:.0f} ms")


def check_metadata(doc: Doctor) -> Check:
    from bootagent.imds.client import ImdsClient, _error_text
    from bootagent.imds.document import parse_body
    from bootagent.imds.versions import newest_supported

    if doc.imds_down():
        return Check("metadata", "SKIP", NEEDS_TCP)
    client = ImdsClient(doc.http, doc.ctx.imds_url, doc.ctx.config.imds.api_version)
    url = client.url("instance")
    try:
        answer = doc.get(url, {"Metadata": "true"})
        offered = _newest_versions(answer.body) if answer.status == 400 else None
        fallback = newest_supported(offered) if offered else None
        if fallback:
            doc.offered = offered
            client.api_version = fallback
            answer = doc.get(client.url("instance"), {"Metadata": "true"})
    except BootagentError as err:
        return Check("metadata", "FAIL", f"{err}; check the tcp line and any firewall in the way")
    if answer.status != 200:
        return Check("metadata", "FAIL", f"GET {url} with Metadata: true answered HTTP {answer.status}: "
                                         f"{_error_text(answer.body).strip()}; check the URL and that "
                                         "nothing rewrites the request on its way (a proxy)")
    try:
        instance = parse_body(answer.body, f"IMDS at {doc.ctx.imds_url}")
    except BootagentError as err:
        kind = one_line(answer.headers.get("Content-Type") or "no content type", 80)
        return Check("metadata", "FAIL", f"{err} ({kind}); a proxy or captive portal may answer in "
                                         "IMDS's place: bypass proxies for the IMDS address")
    doc.instance_version = client.api_version
    impostor = _answers_without_header(doc, client.url("instance"))
    if impostor:
        return Check("metadata", "FAIL", impostor)
    version = "" if client.api_version == doc.ctx.config.imds.api_version else \
        f" with api-version {client.api_version} (see api-version)"
    return Check("metadata", "PASS", f"a document came back for vmId {instance.vm_id}{version}")


def _answers_without_header(doc: Doctor, url: str) -> str | None:
    """Genuine IMDS refuses a request without `Metadata: true`; what to say when this one did not."""
    try:
        answer = doc.get(url, {})
    except BootagentError:
        return None
    if answer.status == 200:
        return (f"{doc.ctx.imds_url} answered a request without `Metadata: true` with HTTP 200: it is not "
                "a genuine IMDS (a proxy, a captive portal or an impostor); remove the proxy or "
                "redirect (iptables/nftables) in the way, and check imds.url")
    return None


def _newest_versions(body: bytes) -> list | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    offered = value.get("newest-versions") if isinstance(value, dict) else None
    return offered if isinstance(offered, list) else None


def check_api_version(doc: Doctor) -> Check:
    from bootagent.imds.versions import SUPPORTED_API_VERSIONS, newest_supported

    if doc.imds_down():
        return Check("api-version", "SKIP", NEEDS_TCP)
    configured = doc.ctx.config.imds.api_version
    offered = None
    try:
        answer = doc.get(f"{doc.ctx.imds_url.rstrip('/')}/metadata/versions", {"Metadata": "true"})
        value = json.loads(answer.body) if answer.status == 200 else None
        if isinstance(value, dict) and isinstance(value.get("apiVersions"), list):
            offered = value["apiVersions"]
    except (BootagentError, ValueError):
        pass
    offered = offered if offered is not None else doc.offered
    if offered is None:
        if doc.instance_version == configured:
            return Check("api-version", "PASS", f"{configured} accepted by /metadata/instance")
        return Check("api-version", "FAIL", f"cannot tell whether IMDS accepts {configured}: /metadata/versions "
                                            "did not answer a version list; fix the metadata check first")
    if configured in offered:
        return Check("api-version", "PASS", f"{configured} is offered by IMDS")
    usable = newest_supported(offered)
    hint = f"set imds.api_version to {usable}" if usable else \
        f"IMDS offers none of the versions bootagent supports ({SUPPORTED_API_VERSIONS[0]} on)"
    return Check("api-version", "FAIL", f"IMDS does not offer api-version {configured}; {hint}")


def check_token(doc: Doctor) -> Check:
    from bootagent.platform import identity

    if doc.imds_down() and not doc.ctx.env.get("IDENTITY_ENDPOINT", "").strip():
        return Check("token", "SKIP", NEEDS_TCP)
    try:
        lifetime = identity.request_token(doc.ctx, doc.http, doc.deadline())
    except identity.IdentityNotFound:
        return Check("token", "SKIP", "IMDS answered 'Identity not found': no managed identity is assigned")
    except StepError as err:  # the challenge was refused: its message says what to do
        return Check("token", "FAIL", str(err))
    except BootagentError as err:
        hint = "check that the Arc agent (himdsd) runs and that this user may read " \
               f"{identity.TOKENS_DIR}" if identity.is_arc(doc.ctx) else \
               "check the identity assigned to the VM and that nothing blocks the IMDS address"
        return Check("token", "FAIL", f"{err}; {hint}")
    via = " through the Arc challenge" if identity.is_arc(doc.ctx) else ""
    return Check("token", "PASS", f"issued{via}, expires in {lifetime} s")


def check_wireserver(doc: Doctor) -> Check:
    from bootagent.platform import on_azure, wireserver

    if doc.ctx.on_arc:
        return Check("wireserver", "SKIP", "on Azure Arc: no wireserver")
    if not on_azure(doc.ctx) and doc.ctx.config.azure.report_ready is not True:
        return Check("wireserver", "SKIP", "not on Azure (no Azure chassis asset tag)")
    url = doc.ctx.config.azure.wireserver
    try:
        goal_state = wireserver.fetch_goal_state(doc.http, url, doc.deadline())
    except BootagentError as err:
        where = urlsplit(url)
        return Check("wireserver", "FAIL", f"{err}; check that {where.hostname} port {where.port or 80} is "
                                           "not blocked by a firewall and is routed through the primary interface")
    return Check("wireserver", "PASS", f"goal state incarnation {goal_state.incarnation} answered")


CHECKS = (check_proxy, check_route, check_tcp, check_metadata, check_api_version, check_token,
          check_wireserver)


def run_checks(ctx) -> list[Check]:
    doc = Doctor(ctx)
    checks = []
    for check in CHECKS:
        try:
            outcome = check(doc)
        except Exception as err:  # a bug in one check must not hide the others
            name = check.__name__.removeprefix("check_").replace("_", "-")
            outcome = Check(name, "FAIL", f"internal error: {type(err).__name__}: {err}; please report it")
        doc.results[outcome.name] = outcome
        checks.append(outcome)
    return checks


def report(ctx, as_json: bool = False) -> tuple[int, str]:
    """(exit code, text): 0 when no check FAILs, else 1."""
    checks = run_checks(ctx)
    failed = any(check.status == "FAIL" for check in checks)
    if as_json:
        body = {"status": "error" if failed else "ok", "imds_url": ctx.imds_url,
                "checks": {check.name: {"status": check.status, "reason": check.reason} for check in checks}}
        return (1 if failed else 0), json.dumps(body, indent=2) + "\n"
    return (1 if failed else 0), "".join(check.line() + "\n" for check in checks)

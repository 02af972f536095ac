"""Which etcd peers to watch, and one poll of one peer."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from watchdog.config import EtcdConfig
from watchdog.etcd.backend import (
    ETCD,
    GRPC,
    JSON,
    KINE,
    LEADER,
    MEMBER_ID,
    MEMBER_LIST,
    METRICS,
    REVISION,
    UNKNOWN,
    Evidence,
    Identity,
    identify,
    is_etcd_page,
)
from watchdog.etcd.client import EtcdCallError, EtcdHttp, EtcdStatus, MemberList, VersionInfo
from watchdog.etcd.exposure import StreamLimitLearner, exposed, stream_limit
from watchdog.etcd.probes import GrpcProber
from watchdog.etcd.promtext import (
    MARKER_FAMILIES,
    MetricsParseError,
    PeerMetrics,
    families_present,
    parse_peer_metrics,
)
from watchdog.etcd.sockets import ConnectionCount, SocketTable, count_connections
from watchdog.results import ProbeResult, Reason

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PeerTarget:
    """A peer to poll: its member name (or endpoint) and client URL."""

    name: str
    url: str
    member_id: str = ""

    @property
    def tls(self) -> bool:
        return self.url.startswith("https://")

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)


@dataclass
class PeerPoll:
    """What one poll of one peer found.

    up: the peer answers its API (a JSON or gRPC read, or an etcd auth refusal: it is
    there and speaking etcd), whatever its /metrics page does. metrics_up: the page
    answered with etcd's metrics (False), or None when the backend has no such page.
    Signals named in `unavailable` are ones the backend cannot provide: their fields stay
    None, and no probe is made or counted for an unavailable transport ("json", "grpc").
    """

    target: PeerTarget
    up: bool
    reason: Reason | None
    duration: float
    metrics: PeerMetrics | None = None
    connections: ConnectionCount | None = None
    probes: list[ProbeResult] = field(default_factory=list)
    version: str = ""
    member_id: str = ""
    is_leader: bool | None = None
    revision: int | None = None
    exposed: bool | None = None
    backend: str = UNKNOWN
    metrics_up: bool | None = None
    metrics_reason: Reason | None = None
    unavailable: frozenset[str] = frozenset()
    stream_limit: int | None = None
    alarms: tuple[str, ...] = ()  # active etcd alarms (NOSPACE, CORRUPT), from Status
    reported_version: str = ""  # what the server claims (kine and etcd-adapter emulate)
    notes: tuple[str, ...] = ()  # short, secret-free findings for the status page
    cluster_id: str = ""  # from Status (hex), when the server reports one


@dataclass
class PeerFacts:
    """What earlier polls learned about one peer URL (kept in EtcdHttp.facts)."""

    identity: Identity | None = None
    verify: bool = False  # the last poll got no answer: ask everything next time
    learner: StreamLimitLearner = field(default_factory=StreamLimitLearner)


def peer_facts(http: EtcdHttp, url: str) -> PeerFacts:
    facts = http.facts.get(url)
    if not isinstance(facts, PeerFacts):
        facts = http.facts[url] = PeerFacts()
    return facts


async def discover(
    config: EtcdConfig, http: EtcdHttp, known: list[PeerTarget]
) -> tuple[list[PeerTarget], str, str]:
    """The peers to poll now, an error text when the member list could not be read, and
    the id of the cluster that answered it ("" when unknown).

    With discover_members, every member's first client URL is watched; otherwise only the
    configured endpoints, named after their member when the member list says who they are.
    When no endpoint answers, the last known set is kept.
    """
    if all(_no_member_list(http, url) for url in config.endpoints):
        # kine has no JSON gateway, antietcd no member list: nothing to discover.
        return list(known) or [PeerTarget(name=url, url=url) for url in config.endpoints], "", ""
    members, error = await _first_member_list(config, http)
    if members is None:
        if known:
            return known, error, ""
        return [PeerTarget(name=url, url=url) for url in config.endpoints], error, ""

    by_url: dict[str, PeerTarget] = {}
    for m in members:
        if m.is_learner or not m.client_urls:
            continue
        for url in m.client_urls:
            by_url[url.rstrip("/")] = PeerTarget(
                name=m.name or url, url=url.rstrip("/"), member_id=m.id_hex
            )
    if config.discover_members:
        seen: dict[str, PeerTarget] = {}
        for m in members:
            if m.is_learner or not m.client_urls:
                continue
            url = m.client_urls[0].rstrip("/")
            seen[url] = by_url[url]
        return sorted(seen.values(), key=lambda t: t.name), "", members.cluster_id
    return ([by_url.get(url, PeerTarget(name=url, url=url)) for url in config.endpoints], "",
            members.cluster_id)


def _no_member_list(http: EtcdHttp, url: str) -> bool:
    facts = http.facts.get(url.rstrip("/"))
    identity = facts.identity if isinstance(facts, PeerFacts) else None
    return identity is not None and bool({JSON, MEMBER_LIST} & identity.unavailable)


# How long discovery waits for the first endpoint before asking all the others too.
DISCOVERY_HEDGE = 0.25


async def _first_member_list(config: EtcdConfig, http: EtcdHttp
                             ) -> tuple[MemberList | None, str]:
    """Ask the first configured endpoint; when it fails, or has not answered within
    DISCOVERY_HEDGE (a quarter of the timeout at most), ask every other endpoint at once. The
    first answer wins. One request per cycle while the first endpoint is healthy (not one per
    endpoint), and a hung endpoint still costs at most one timeout, never one per endpoint."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.timeout
    hedge = min(DISCOVERY_HEDGE, config.timeout / 4)
    rest = list(config.endpoints[1:])
    tasks = [asyncio.ensure_future(http.member_list(config.endpoints[0],
                                                    timeout=config.timeout))]
    pending = set(tasks)
    errors: list[str] = []
    try:
        while pending:
            done, pending = await asyncio.wait(pending, timeout=hedge if rest else None,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                try:
                    return task.result(), ""
                except EtcdCallError as exc:
                    errors.append(f"{exc.result.reason}: {exc.result.detail}")
            if rest:
                left = max(deadline - loop.time(), 0.0)
                more = [asyncio.ensure_future(http.member_list(url, timeout=left))
                        for url in rest]
                tasks += more
                pending.update(more)
                rest = []
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return None, "member list from " + ", ".join(config.endpoints) + ": " + "; ".join(errors)


async def poll_peer(
    target: PeerTarget,
    config: EtcdConfig,
    http: EtcdHttp,
    grpc: GrpcProber | None,
    sockets: SocketTable | None,
    top_n: int,
) -> PeerPoll:
    """Probe the peer through its APIs and scrape its /metrics, all at once; recognise
    the backend and leave out what it cannot serve."""
    started = time.monotonic()
    timeout = config.timeout
    http.refresh_tls()
    if grpc is not None:
        grpc.refresh_tls()
    facts = peer_facts(http, target.url)
    known = facts.identity
    # After a poll without an answer, ask everything once more: it may be another server.
    verify = known is None or facts.verify
    skip = frozenset() if verify or known is None else known.unavailable
    # A page the config names (kine's own port) is read whatever the backend.
    page_url = config.metrics_url_for(target.name, target.url)

    async def scrape_page() -> tuple[PeerMetrics | None, ProbeResult | None, frozenset[str]]:
        # Parsed as soon as it arrives, so the page (~150 KB) is not held while the probes
        # finish: with hundreds of peers polled at once that is tens of MB of peak RSS.
        if METRICS in skip and page_url is None:
            return None, None, frozenset()
        scrape, page = await http.metrics_page(page_url or target.url, timeout=timeout,
                                               max_bytes=config.max_metrics_bytes)
        if not scrape.ok or page is None:
            return None, scrape, frozenset()
        families = families_present(page, MARKER_FAMILIES)
        try:
            return parse_peer_metrics(page), scrape, families
        except MetricsParseError:
            return None, _failed(scrape, "not Prometheus text"), families

    async def nothing() -> None:
        return None

    ask_json = JSON not in skip
    ask_grpc = grpc is not None and GRPC not in skip
    calls: list[Awaitable[ProbeResult | None]] = [
        http.version(target.url, timeout=timeout) if ask_json and verify else nothing(),
    ]
    if ask_json:
        calls += [http.range_count(target.url, config.probe_key, timeout=timeout),
                  http.status(target.url, timeout=timeout)]
    if ask_grpc:
        assert grpc is not None
        calls += [grpc.range_count(target.url, config.probe_key, timeout=timeout),
                  grpc.status(target.url, timeout=timeout)]
    (metrics, scrape, families), version_result, *results = await asyncio.gather(
        scrape_page(), *calls)
    probes = [r for r in results if r is not None]

    ev = _evidence(probes, version_result, scrape, families, ask_json, ask_grpc)
    identity = identify(ev)
    answered = any(_answered(r) for r in probes)
    if identity.backend == UNKNOWN and known is not None:
        # Too little to tell (what was skipped would have; or nothing answers): keep what
        # was known, so a down antietcd does not count gRPC failures it never could avoid.
        identity = known
    facts.verify = not answered
    if answered and identity.backend != UNKNOWN:
        if known is not None and known.backend != identity.backend:
            log.info("peer backend changed peer=%s from=%s to=%s", target.name,
                     known.backend, identity.backend)
        facts.identity = identity
    unavailable = identity.unavailable
    probes = [r for r in probes if r.api not in unavailable]

    kine_page = page_url is not None and identity.backend == KINE and any(
        f.startswith("kine_") for f in families)
    if metrics is not None and not is_etcd_page(families) and not kine_page:
        # Prometheus text, but not etcd's (another exporter on that port): not a peer page.
        metrics, scrape = None, _failed(scrape, "no etcd metric families on the page")
    metrics_up: bool | None = None
    metrics_reason: Reason | None = None
    if METRICS not in unavailable or page_url is not None:
        metrics_up = metrics is not None
        if not metrics_up:
            metrics_reason = scrape.reason if scrape is not None and scrape.reason else \
                Reason.PROTOCOL
    elif metrics is not None:
        metrics_up = True  # a backend that has a page after all

    up = any(_answered(r) for r in probes)
    poll = PeerPoll(
        target=target, up=up, reason=None if up else _down_reason(probes, scrape),
        duration=0.0, metrics=metrics, probes=probes, member_id=target.member_id,
        backend=identity.backend, metrics_up=metrics_up, metrics_reason=metrics_reason,
        unavailable=unavailable,
    )
    status = _status(probes)
    for result in probes:
        if result.ok and result.revision is not None and REVISION not in unavailable:
            poll.revision = max(poll.revision or 0, result.revision)
    if status is not None:
        poll.reported_version = status.version
        poll.alarms = alarms_of(status.errors)
        poll.cluster_id = status.cluster_id
        if status.has_leader and LEADER not in unavailable:
            poll.is_leader = status.is_leader
        if status.member_id and MEMBER_ID not in unavailable:
            poll.member_id = poll.member_id or _hex(status.member_id)
    if metrics is not None:
        poll.reported_version = poll.reported_version or metrics.version or ""
        if metrics.is_leader is not None:
            poll.is_leader = metrics.is_leader == 1
    if identity.backend == ETCD:
        poll.version = (identity.version or poll.reported_version
                        or (metrics.version if metrics is not None else None) or "")
    else:
        poll.version = identity.version or ""  # never a version the server only emulates
    poll.notes = tuple(r.detail for r in probes if r.reason is Reason.AUTH and r.detail)
    if sockets is not None:
        poll.connections = count_connections(sockets, target.port, top_n=top_n)

    configured = config.stream_limit_for(target.name, target.url)
    streams = metrics.watch_streams if metrics is not None else None
    json_timed_out = any(r.api == "json" and r.op == "range" and r.reason is Reason.TIMEOUT
                         for r in probes)
    grpc_ok = any(r.api == "grpc" and r.ok for r in probes)
    learned = facts.learner.observe(streams, json_timed_out, grpc_ok)
    version = poll.version or None
    poll.stream_limit = stream_limit(version, target.tls, configured, learned,
                                     identity.backend)
    poll.exposed = exposed(poll.stream_limit, version, target.tls, identity.backend)
    poll.duration = time.monotonic() - started
    return poll


def _answered(result: ProbeResult) -> bool:
    """The API answered: a result, or etcd refusing our credentials (it is there)."""
    return result.ok or result.reason is Reason.AUTH


def _failed(result: ProbeResult | None, detail: str) -> ProbeResult:
    base = result or ProbeResult("metrics", "metrics", False, 0.0, Reason.PROTOCOL)
    return dataclasses.replace(base, ok=False, reason=Reason.PROTOCOL, detail=detail,
                               body=None)


def _down_reason(probes: list[ProbeResult], scrape: ProbeResult | None) -> Reason:
    for api in ("json", "grpc"):
        for result in probes:
            if result.api == api and result.reason is not None:
                return result.reason
    if scrape is not None and scrape.reason is not None:
        return scrape.reason
    return Reason.PROTOCOL


_ALARM = re.compile(r"alarm:\s*([A-Z_]+)")


def alarms_of(errors: tuple[str, ...]) -> tuple[str, ...]:
    """Alarm names in Status's `errors` ("memberID:… alarm:NOSPACE "), sorted, once each."""
    return tuple(sorted({m.group(1) for e in errors for m in _ALARM.finditer(e)}))


def _status(probes: list[ProbeResult]) -> EtcdStatus | None:
    """The Status answer, JSON first (it carries more fields), else gRPC's."""
    for api in ("json", "grpc"):
        for result in probes:
            if result.ok and result.api == api and isinstance(result.body, EtcdStatus):
                return result.body
    return None


def _evidence(
    probes: list[ProbeResult],
    version_result: ProbeResult | None,
    scrape: ProbeResult | None,
    families: frozenset[str],
    asked_json: bool,
    asked_grpc: bool,
) -> Evidence:
    status = _status(probes)
    doc: dict[str, object] | None = None
    if version_result is not None:
        if version_result.ok and isinstance(version_result.body, VersionInfo):
            doc = dict(version_result.body.doc)
        elif isinstance(version_result.body, dict):
            doc = dict(version_result.body)
    json_results = [r for r in probes if r.api == "json"]
    grpc_results = [r for r in probes if r.api == "grpc"]
    return Evidence(
        version_doc=doc,
        status_version=status.version if status is not None else None,
        status_member_id=status.member_id if status is not None else None,
        status_raft_term=status.raft_term if status is not None else None,
        status_keys=status.keys if status is not None else frozenset(),
        metric_families=families if scrape is not None and scrape.ok else None,
        metrics_answered=None if scrape is None else scrape.ok,
        json_answered=any(_answered(r) for r in json_results) if asked_json else None,
        grpc_answered=any(_answered(r) for r in grpc_results) if asked_grpc else None,
    )


def _hex(member_id: str) -> str:
    try:
        return format(int(member_id), "x")
    except ValueError:
        return member_id

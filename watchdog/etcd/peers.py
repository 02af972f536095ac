"""Which etcd peers to watch, and one poll of one peer."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from watchdog.config import EtcdConfig
from watchdog.etcd.client import EtcdCallError, EtcdHttp, EtcdStatus, Member
from watchdog.etcd.exposure import stream_limit_exposed
from watchdog.etcd.probes import GrpcProber
from watchdog.etcd.promtext import MetricsParseError, PeerMetrics, parse_peer_metrics
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
    """What one poll of one peer found."""

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


async def discover(
    config: EtcdConfig, http: EtcdHttp, known: list[PeerTarget]
) -> tuple[list[PeerTarget], str]:
    """The peers to poll now, and an error text when the member list could not be read.

    With discover_members, every member's first client URL is watched; otherwise only the
    configured endpoints, named after their member when the member list says who they are.
    When no endpoint answers, the last known set is kept.
    """
    members, error = await _first_member_list(config, http)
    if members is None:
        if known:
            return known, error
        return [PeerTarget(name=url, url=url) for url in config.endpoints], error

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
        return sorted(seen.values(), key=lambda t: t.name), ""
    return [by_url.get(url, PeerTarget(name=url, url=url)) for url in config.endpoints], ""


async def _first_member_list(config: EtcdConfig, http: EtcdHttp) -> tuple[list[Member] | None, str]:
    """Ask every configured endpoint at once; the first answer wins. A hung endpoint costs
    at most one timeout, never one per endpoint."""
    tasks = [asyncio.ensure_future(http.member_list(url, timeout=config.timeout))
             for url in config.endpoints]
    errors: list[str] = []
    try:
        for done in asyncio.as_completed(tasks):
            try:
                return await done, ""
            except EtcdCallError as exc:
                errors.append(f"{exc.result.reason}: {exc.result.detail}")
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
    """Scrape the peer's /metrics and probe it through both APIs, all at once."""
    started = time.monotonic()
    timeout = config.timeout
    calls = [
        http.metrics_page(target.url, timeout=timeout, max_bytes=config.max_metrics_bytes),
        http.range_count(target.url, config.probe_key, timeout=timeout),
        http.status(target.url, timeout=timeout),
    ]
    if grpc is not None:
        calls += [
            grpc.range_count(target.url, config.probe_key, timeout=timeout),
            grpc.status(target.url, timeout=timeout),
        ]
    page_result, *probe_results = await asyncio.gather(*calls)
    scrape, page = page_result
    probes: list[ProbeResult] = list(probe_results)

    metrics: PeerMetrics | None = None
    reason = scrape.reason
    if scrape.ok and page is not None:
        try:
            metrics = parse_peer_metrics(page)
        except MetricsParseError:
            reason = Reason.PROTOCOL
    up = metrics is not None

    poll = PeerPoll(
        target=target, up=up, reason=None if up else (reason or Reason.PROTOCOL),
        duration=0.0, metrics=metrics, probes=probes, member_id=target.member_id,
    )
    for result in probes:
        if result.ok and result.revision is not None:
            poll.revision = max(poll.revision or 0, result.revision)
        if result.ok and result.api == "json" and isinstance(result.body, EtcdStatus):
            info = result.body
            poll.version = poll.version or info.version
            if info.has_leader:
                poll.is_leader = info.is_leader
            poll.member_id = poll.member_id or _hex(info.member_id)
    if metrics is not None:
        poll.version = metrics.version or poll.version
        if metrics.is_leader is not None:
            poll.is_leader = metrics.is_leader == 1
    if sockets is not None:
        poll.connections = count_connections(sockets, target.port, top_n=top_n)
    poll.exposed = stream_limit_exposed(poll.version or None, target.tls)
    poll.duration = time.monotonic() - started
    return poll


def _hex(member_id: str) -> str:
    try:
        return format(int(member_id), "x")
    except ValueError:
        return member_id

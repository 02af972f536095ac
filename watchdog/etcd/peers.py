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


# How long discovery waits for the first endpoint before asking all the others too.
DISCOVERY_HEDGE = 0.25


async def _first_member_list(config: EtcdConfig, http: EtcdHttp) -> tuple[list[Member] | None, str]:
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
    """Scrape the peer's /metrics and probe it through both APIs, all at once."""
    started = time.monotonic()
    timeout = config.timeout

    async def scrape_page() -> tuple[PeerMetrics | None, Reason | None]:
        # Parsed as soon as it arrives, so the page (~150 KB) is not held while the probes
        # finish: with hundreds of peers polled at once that is tens of MB of peak RSS.
        scrape, page = await http.metrics_page(target.url, timeout=timeout,
                                               max_bytes=config.max_metrics_bytes)
        if scrape.ok and page is not None:
            try:
                return parse_peer_metrics(page), None
            except MetricsParseError:
                return None, Reason.PROTOCOL
        return None, scrape.reason

    calls = [
        http.range_count(target.url, config.probe_key, timeout=timeout),
        http.status(target.url, timeout=timeout),
    ]
    if grpc is not None:
        calls += [
            grpc.range_count(target.url, config.probe_key, timeout=timeout),
            grpc.status(target.url, timeout=timeout),
        ]
    (metrics, reason), *probe_results = await asyncio.gather(scrape_page(), *calls)
    probes: list[ProbeResult] = list(probe_results)
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

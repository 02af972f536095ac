"""The etcd job: one poll cycle of every peer, beside member discovery. It observes and
returns an `EtcdCycle`; the reducer applies it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from watchdog.config import EtcdConfig
from watchdog.etcd.client import EtcdHttp
from watchdog.etcd.peers import PeerPoll, PeerTarget, discover, poll_peer
from watchdog.etcd.probes import GrpcProber
from watchdog.etcd.sockets import snapshot_connections
from watchdog.gateway.status import TRACKED_DIRS
from watchdog.shard import Shard


@dataclass(frozen=True, slots=True)
class Discovery:
    """The peers to watch, as one read of the member list says (or the known set kept)."""

    targets: tuple[PeerTarget, ...]
    error: str = ""
    cluster_id: str = ""  # of the cluster that answered the member list (hex); "" unknown
    members: int = 0  # in the whole cluster, before the shard's share was taken; 0 unknown


@dataclass(frozen=True, slots=True)
class EtcdCycle:
    """One poll cycle: discovery applied before the polls (first cycle) and/or after them
    (read beside the polls; a change applies from the next cycle)."""

    polls: tuple[PeerPoll, ...]
    before: Discovery | None = None
    after: Discovery | None = None

    @property
    def failed(self) -> bool:
        """No peer answered: the cycle ran but observed nothing."""
        return not any(p.up for p in self.polls)


def etcd_clients(etcd: EtcdConfig) -> tuple[EtcdHttp, GrpcProber | None]:
    """The JSON-gateway client and the gRPC prober for the configured TLS and auth."""
    tls = etcd.tls
    files = {
        "ca_file": str(tls.ca_file) if tls and tls.ca_file else None,
        "cert_file": str(tls.cert_file) if tls and tls.cert_file else None,
        "key_file": str(tls.key_file) if tls and tls.key_file else None,
    }
    auth = {
        "username": etcd.auth.username if etcd.auth else None,
        "password": etcd.auth.password.get_secret_value() if etcd.auth else None,
    }
    http = EtcdHttp(etcd.endpoints, insecure_skip_verify=bool(tls and tls.insecure_skip_verify),
                    **files, **auth)
    grpc = GrpcProber(**files, **auth) if etcd.grpc_probes else None
    return http, grpc


class EtcdJob:
    """Polls every known peer; `targets` reads the peers to poll from the latest snapshot."""

    def __init__(self, config: EtcdConfig, targets: Callable[[], list[PeerTarget]],
                 up: Callable[[], list[PeerTarget]], discover_first: bool = False,
                 shard: Shard | None = None) -> None:
        self.config = config
        self.shard = shard or Shard()
        self.discover_first = discover_first  # e.g. after a reload: the endpoints may differ
        self.targets = targets
        self.up = up
        self.http, self.grpc = etcd_clients(config)
        self._newest_cache: tuple[float, int | None] = (-1e9, None)

    async def close(self) -> None:
        await self.http.close()
        if self.grpc is not None:
            await asyncio.to_thread(self.grpc.close)

    async def run(self) -> EtcdCycle:
        """Poll every known peer concurrently, each within its deadline, while the member
        list is read beside them, so a stalled JSON gateway costs one timeout per cycle,
        not two."""
        targets = self.targets()
        before: Discovery | None = None
        discovery: asyncio.Task[Discovery] | None = None
        if not targets or self.discover_first:
            before = await self._discover(targets)
            targets = list(before.targets)
            self.discover_first = False
        elif self._needs_discovery(targets):
            discovery = asyncio.create_task(self._discover(targets))
        try:
            sockets = (None if self.config.connections == "off"
                       else await asyncio.to_thread(snapshot_connections, True))
            # A bounded number of peers at a time: a thousand polls started at once would
            # queue on the event loop, and that wait would show as JSON-probe latency.
            slots = asyncio.Semaphore(self.config.max_concurrent_polls)

            async def poll_one(target: PeerTarget) -> PeerPoll:
                async with slots:
                    return await poll_peer(target, self.config, self.http, self.grpc,
                                           sockets, self.config.connections_top_n)

            polls = await asyncio.gather(*(poll_one(t) for t in targets))
            after = None
            if discovery is not None:
                after = await discovery
        finally:
            if discovery is not None and not discovery.done():
                discovery.cancel()
        return EtcdCycle(polls=tuple(polls), before=before, after=after)

    async def _discover(self, known: list[PeerTarget]) -> Discovery:
        """Discovery, narrowed to this shard's peers (every shard reads the whole list)."""
        found, error, cluster = await discover(self.config, self.http, known)
        owned = tuple(t for t in found if self.shard.owns_peer(t.url))
        return Discovery(owned, error, cluster, members=len(found))

    def _needs_discovery(self, targets: list[PeerTarget]) -> bool:
        """Members are followed with discovery on; without it the list only names the
        configured endpoints, so it is read until every endpoint has a member name."""
        if self.config.discover_members:
            return True
        return any(t.name == t.url for t in targets)

    async def newest_config_revision(self) -> int | None:
        """The newest mod_revision of gateway config in etcd (cached for a second, since
        every gateway job asks for it), read through a peer whose JSON gateway answers."""
        now = time.monotonic()
        cached_at, value = self._newest_cache
        if now - cached_at < 1.0:
            return value
        up = self.up()
        url = up[0].url if up else self.config.endpoints[0]
        prefix = self.config.prefix.rstrip("/")
        results = await asyncio.gather(*(
            self.http.newest_mod_revision(url, f"{prefix}/{d}/", self.config.timeout)
            for d in TRACKED_DIRS
        ))
        newest = [r.body for r in results if r.ok and isinstance(r.body, int)]
        value = max(newest) if len(newest) == len(results) else None
        self._newest_cache = (now, value)
        return value

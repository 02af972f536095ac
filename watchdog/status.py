"""The daemon's latest view of every peer and gateway: what /metrics and / render."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from watchdog.results import ProbeResult

if TYPE_CHECKING:
    from watchdog.etcd.promtext import PeerMetrics
    from watchdog.etcd.sockets import ConnectionCount
    from watchdog.gateway.smoke import SmokeResult
    from watchdog.tripwire import WireState

HISTORY = 120  # points kept per peer for the status page chart


@dataclass
class PeerView:
    """Everything known about one etcd peer after its last poll."""

    name: str
    endpoint: str
    member_id: str = ""
    version: str = ""
    tls: bool = False
    polled: bool = False
    up: bool = False
    poll_reason: str = ""
    last_poll: float = 0.0
    poll_duration: float = 0.0
    metrics: PeerMetrics | None = None
    connections: ConnectionCount | None = None
    probes: dict[tuple[str, str], ProbeResult] = field(default_factory=dict)
    revision: int | None = None
    is_leader: bool | None = None
    exposed: bool | None = None
    expected_streams: float | None = None
    wires: dict[str, WireState] = field(default_factory=dict)
    history: deque[tuple[float, float | None, float | None]] = field(
        default_factory=lambda: deque(maxlen=HISTORY)
    )

    @property
    def watch_streams(self) -> float | None:
        return self.metrics.watch_streams if self.metrics else None


@dataclass
class GatewayView:
    """Everything known about one gateway after its last checks."""

    name: str
    admin_url: str
    polled: bool = False
    admin: dict[str, ProbeResult] = field(default_factory=dict)
    ready: bool | None = None
    etcd_reachable: float | None = None
    loaded_revision: float | None = None
    config_lag: float | None = None
    smoke: SmokeResult | None = None
    last_smoke: float = 0.0


@dataclass
class Status:
    """Shared state between the polling jobs (writers) and the web server (reader)."""

    peers: dict[str, PeerView] = field(default_factory=dict)
    gateways: dict[str, GatewayView] = field(default_factory=dict)
    started: float = 0.0
    discovery_error: str = ""

    def ready(self) -> bool:
        """True once every known peer and gateway has been polled at least once."""
        if not self.peers:
            return False
        return all(p.polled for p in self.peers.values()) and all(
            g.polled for g in self.gateways.values()
        )

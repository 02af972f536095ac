"""Settings of one simulated gateway and its fault modes."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

KNOWN_FAULTS: frozenset[str] = frozenset({"init-hang", "watch-leak", "slow-admin", "stale", "shim",
                                         "echo-key", "nan-index"})
SYNC_MODES = ("legacy", "modern")
METRICS_PATH = "/apisix/prometheus/metrics"
DEFAULT_ADMIN_KEY = "edd1c9f034335f136f87ad84b625c8f1"  # config.yaml default up to 3.9.x


@dataclass(kw_only=True)
class SimConfig:
    """Settings of one simulated gateway (APISIX config.yaml, reduced to what matters here)."""

    name: str = "gw-1"
    etcd_endpoints: list[str] = field(default_factory=list)
    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    etcd_user: str | None = None
    etcd_password: str | None = None
    prefix: str = "/apisix"
    admin_key: str = DEFAULT_ADMIN_KEY
    workers: int = 4
    sync_mode: Literal["legacy", "modern"] = "modern"
    faults: set[str] = field(default_factory=set)
    version: str = "3.9.1"
    admin_delay: float = 0.5
    host: str = "127.0.0.1"
    admin_port: int = 0
    data_port: int = 0
    status_port: int = 0
    metrics_port: int = 0
    hostname: str = field(default_factory=socket.gethostname)
    etcd_timeout: float = 30.0  # etcd.timeout
    watch_timeout: float = 50.0  # etcd.watch_timeout
    leak_interval: float = 2.0  # watch reconnect period under the watch-leak fault
    resync_delay: float = 5.0  # etcd.resync_delay (plus up to 50 % jitter)
    health_check_timeout: float = 10.0  # etcd.health_check_timeout: skip a failed endpoint
    upstream_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.etcd_endpoints:
            raise ValueError("etcd_endpoints: at least one etcd URL is required")
        for url in self.etcd_endpoints:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"etcd endpoint {url!r} must start with http:// or https://")
        if self.sync_mode not in SYNC_MODES:
            raise ValueError(f"sync_mode {self.sync_mode!r}: choose one of {', '.join(SYNC_MODES)}")
        self.faults = set(self.faults)
        check_faults(self.faults)
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.admin_delay < 0:
            raise ValueError("admin_delay must not be negative")
        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"host {self.host!r}: the simulator only listens on loopback")
        self.prefix = "/" + self.prefix.strip("/")


def check_faults(faults: Iterable[str]) -> None:
    unknown = sorted(set(faults) - KNOWN_FAULTS)
    if unknown:
        raise ValueError(
            f"unknown fault(s): {', '.join(unknown)}; choose from {', '.join(sorted(KNOWN_FAULTS))}"
        )

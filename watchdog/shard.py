"""Scale-out: which peers and gateways this replica polls, and what a per-host agent exports.

A shard owns a peer when hashmod(peer URL) == index, and a gateway when hashmod(gateway name)
== index, where hashmod is Prometheus's relabel `hashmod` (the last 8 bytes of the key's
MD5, big-endian, modulo the shard count). The peer's key is its client URL as polled: the
member's first client URL with `discover_members`, else the configured endpoint, trailing
"/" removed. Both are known before the first poll (a member name may not be), so ownership
never moves while the fleet stays the same. Replicas that agree on the count split the
fleet with no overlap and no gap; a new count re-deals every key at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client import Metric

    from watchdog.config import Config, GatewayConfig, ShardConfig

ORDINAL = re.compile(r"-(\d+)$")
# What a per-host agent (etcd.connections: local) exports beside its own process series:
# the connection count and what is derived from it. The central replica exports the rest.
CONNECTION_FAMILIES = frozenset({
    "watchdog_etcd_client_connections",
    "watchdog_etcd_client_connections_by_remote",
    "watchdog_etcd_client_connections_steady_state",
    "watchdog_etcd_client_connections_tripwire",
})
TARGET_PREFIXES = ("watchdog_etcd_", "watchdog_gateway_", "watchdog_finding")


def hashmod(key: str, modulus: int) -> int:
    """Prometheus's relabel hashmod of `key`."""
    digest = hashlib.md5(key.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % modulus


def peer_key(url: str) -> str:
    """The key a peer is sharded by: its client URL without a trailing slash."""
    return url.rstrip("/")


@dataclass(frozen=True, slots=True)
class Shard:
    """Replica `index` of `count`; the default (0 of 1) owns everything."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= index < count")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, key: str) -> bool:
        return self.count == 1 or hashmod(key, self.count) == self.index

    def owns_peer(self, url: str) -> bool:
        return self.owns(peer_key(url))

    def gateways(self, gateways: Iterable[GatewayConfig]) -> list[GatewayConfig]:
        """The configured gateways this shard polls and smoke-tests."""
        return [gw for gw in gateways if self.owns(gw.name)]

    @classmethod
    def of(cls, config: Config) -> Shard:
        """The shard a config asks for (index `auto` read from the host name)."""
        return cls.from_config(config.shard)

    @classmethod
    def from_config(cls, shard: ShardConfig | None) -> Shard:
        if shard is None:
            return cls()
        index = ordinal(hostname()) if shard.index == "auto" else int(shard.index)
        return cls(index, shard.count)


def hostname() -> str:
    """$HOSTNAME (a pod's name in Kubernetes), else the system's host name."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


def ordinal(name: str) -> int:
    """A StatefulSet pod's ordinal: the number after the last "-" of its name."""
    match = ORDINAL.search(name)
    if match is None:
        raise ValueError(f"host name {name!r} does not end in -<ordinal> (a StatefulSet "
                         "pod's name does): give the index as a number")
    return int(match.group(1))


def parse_shard(text: str) -> tuple[int | str, int]:
    """`i/n` or `auto/n` as (index, count); ValueError with the reason otherwise."""
    index, sep, count = text.strip().partition("/")
    if not sep or not count.strip().isdigit():
        raise ValueError(f"{text!r} is not INDEX/COUNT (e.g. 0/3 or auto/3)")
    n = int(count)
    if n < 1:
        raise ValueError("the count must be at least 1")
    index = index.strip()
    if index == "auto":
        return "auto", n
    if not index.isdigit():
        raise ValueError(f"index {index!r} is not a number or auto")
    if int(index) >= n:
        raise ValueError(f"index {index} is not below the count {n} (shards are 0..{n - 1})")
    return int(index), n


def apply_shard(config: Config, flag: str | None) -> Config:
    """`config` with `--shard` (when given) in place of its `shard:` section, and an index
    of `auto` resolved now, so a bad share is a config error (exit 2) before anything
    runs. Raises ConfigError naming `--shard` or `shard.index`."""
    from watchdog.config import ConfigError, ShardConfig

    key = "--shard" if flag is not None else "shard.index"
    try:
        shard = config.shard
        if flag is not None:
            index, count = parse_shard(flag)
            shard = ShardConfig(index=index, count=count)
        if shard is None:
            return config
        resolved = Shard.from_config(shard)
    except ValueError as err:
        raise ConfigError("invalid shard", [(key, str(err).splitlines()[0])]) from None
    concrete = ShardConfig(index=resolved.index, count=resolved.count)
    return config.model_copy(update={"shard": concrete})


def exported(name: str, connections: str) -> bool:
    """Whether a metric family is exported under `etcd.connections`: a per-host agent
    (local) exports only connection series of its peer and gateway families."""
    if connections != "local" or not name.startswith(TARGET_PREFIXES):
        return True
    return name in CONNECTION_FAMILIES


class ShardInfo(Collector):
    """`watchdog_shard_info{index,count,connections}` for the running config."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self.config = config

    def collect(self) -> Iterator[Metric]:
        config = self.config()
        shard = Shard.of(config)
        info = GaugeMetricFamily(
            "watchdog_shard_info",
            "Which share of the fleet this replica polls (index of count, by hashmod of the "
            "peer URL and gateway name) and its etcd.connections mode.",
            labels=["index", "count", "connections"])
        info.add_metric([str(shard.index), str(shard.count), config.etcd.connections], 1)
        yield info

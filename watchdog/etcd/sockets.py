"""Count client connections to a local etcd member from the host's TCP socket table.

etcd has no per-client connection metric; the host's sockets do. One psutil
`net_connections` call (it can be slow with many sockets) makes a SocketTable that serves
every peer of a poll cycle. Only sockets whose *local* end is the member's client port
count: those are the server side of client connections. Connections from this host to
that port (the client side) have an ephemeral local port and are not counted twice.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psutil

OTHER = "other"
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True, slots=True)
class ConnectionCount:
    """Established client connections on one listening port, by remote address."""

    total: int
    by_remote: tuple[tuple[str, int], ...]  # top N by count, then ("other", rest)
    listening: bool


@dataclass(frozen=True, slots=True)
class _Conn:
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int


@dataclass(frozen=True, slots=True)
class SocketTable:
    """One snapshot of the host's TCP sockets, indexed by local port."""

    listening: dict[int, frozenset[str]]  # port -> local IPs listening on it
    established: dict[int, tuple[_Conn, ...]]  # local port -> ESTABLISHED sockets

    @classmethod
    def from_connections(cls, conns: Iterable[Any]) -> SocketTable:
        """Build from psutil sconn tuples (or anything with laddr, raddr, status)."""
        listening: dict[int, set[str]] = {}
        established: dict[int, list[_Conn]] = {}
        for conn in conns:
            laddr, raddr = conn.laddr, conn.raddr
            if not laddr:
                continue
            if conn.status == psutil.CONN_LISTEN:
                listening.setdefault(laddr[1], set()).add(normalize_ip(laddr[0]))
            elif conn.status == psutil.CONN_ESTABLISHED and raddr:
                established.setdefault(laddr[1], []).append(
                    _Conn(normalize_ip(laddr[0]), laddr[1], normalize_ip(raddr[0]), raddr[1])
                )
        return cls(
            {port: frozenset(ips) for port, ips in listening.items()},
            {port: tuple(items) for port, items in established.items()},
        )


def normalize_ip(ip: str) -> str:
    """IPv4-mapped IPv6 (::ffff:1.2.3.4) as plain IPv4; other values unchanged."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def snapshot_connections() -> SocketTable:
    """The host's TCP sockets now (one psutil call; reuse it for every peer)."""
    return SocketTable.from_connections(psutil.net_connections(kind="tcp"))


def bucket_remotes(counts: Counter[str], top_n: int) -> tuple[tuple[str, int], ...]:
    """Top N remotes by count (ties by address), then ("other", the rest) if any."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    top = ordered[: max(top_n, 0)]
    rest = sum(n for _, n in ordered[len(top):])
    return (*top, (OTHER, rest)) if rest else tuple(top)


def count_connections(
    table: SocketTable | None,
    listen_port: int,
    listen_hosts: set[str] | None = None,
    top_n: int = 10,
    exclude_remote_ports: Iterable[int] = (),
) -> ConnectionCount | None:
    """Server-side ESTABLISHED connections on listen_port, or None if nothing local listens.

    listen_hosts limits the count to those local addresses (a wildcard listener accepts
    any). exclude_remote_ports drops connections coming from those ports, e.g. the etcd
    peer port. With table None a fresh snapshot is taken.
    """
    table = table if table is not None else snapshot_connections()
    listeners = table.listening.get(listen_port, frozenset())
    wanted = {normalize_ip(h) for h in listen_hosts} if listen_hosts else None
    if wanted is not None and not (listeners & _WILDCARDS):
        listeners = listeners & wanted
    if not listeners:
        return None
    excluded = frozenset(exclude_remote_ports)
    counts: Counter[str] = Counter()
    for conn in table.established.get(listen_port, ()):
        if wanted is not None and conn.local_ip not in wanted:
            continue
        if conn.remote_port in excluded:
            continue
        counts[conn.remote_ip] += 1
    return ConnectionCount(sum(counts.values()), bucket_remotes(counts, top_n), True)

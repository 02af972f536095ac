"""Count client connections to a local etcd member from the host's TCP socket table.

etcd has no per-client connection metric; the host's sockets do. One snapshot of the table
makes a SocketTable that serves every peer of a poll cycle. Only sockets whose *local* end is
the member's client port count: those are the server side of client connections. Connections
from this host to that port (the client side) have an ephemeral local port and are not
counted twice.

On Linux the snapshot is one netlink sock_diag dump asking the kernel for LISTEN and
ESTABLISHED TCP sockets only (what `ss -lt state established` does). psutil's
`net_connections` reads every process's fds to map sockets to pids (which watchdog does not
need) and parses every TIME_WAIT line of /proc/net/tcp: tens of milliseconds on a busy host.
psutil remains the fallback where netlink is not available.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import struct
import sys
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
    # (ip, port) of this process's own client sockets: the agent's own probes are not
    # clients of the peer worth counting.
    own_endpoints: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def from_connections(cls, conns: Iterable[Any], own_pid: int | None = None) -> SocketTable:
        """Build from psutil sconn tuples (or anything with laddr, raddr, status, pid)."""
        listening: dict[int, set[str]] = {}
        established: dict[int, list[_Conn]] = {}
        own: set[tuple[str, int]] = set()
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
                if own_pid is not None and getattr(conn, "pid", None) == own_pid:
                    own.add((normalize_ip(laddr[0]), laddr[1]))
        return cls(
            {port: frozenset(ips) for port, ips in listening.items()},
            {port: tuple(items) for port, items in established.items()},
            frozenset(own),
        )


@functools.lru_cache(maxsize=4096)
def normalize_ip(ip: str) -> str:
    """IPv4-mapped IPv6 (::ffff:1.2.3.4) as plain IPv4; other values unchanged."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def snapshot_connections(exclude_own: bool = False) -> SocketTable:
    """The host's TCP sockets now (one netlink dump, or one psutil call; reuse it for every
    peer). With exclude_own, connections this process opened are left out of the counts."""
    if sys.platform.startswith("linux"):
        try:
            return _netlink_table(_own_socket_inodes() if exclude_own else frozenset())
        except (OSError, ValueError, struct.error):
            pass  # no sock_diag here (old kernel, seccomp, module missing): use psutil
    return SocketTable.from_connections(psutil.net_connections(kind="tcp"),
                                        os.getpid() if exclude_own else None)


def _own_socket_inodes() -> frozenset[int]:
    """Inodes of this process's sockets, from /proc/self/fd."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return frozenset(inodes)


# -- netlink sock_diag (linux/inet_diag.h) ---------------------------------------------------

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_ESTABLISHED, _TCP_LISTEN = 1, 10
_NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_DIAG_REQ = struct.Struct("=BBBxI48x")  # inet_diag_req_v2: family, protocol, ext, states, id
_PORTS = struct.Struct(">HH")
_INODE = struct.Struct("=I")
# inet_diag_msg: family, state, timer, retrans (4), id (48), expires, rqueue, wqueue, uid (16)
_INODE_OFFSET = 4 + 48 + 16
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


@functools.lru_cache(maxsize=4096)
def _ip_text(family: int, raw: bytes) -> str:
    """The address as normalize_ip() would spell psutil's text for it."""
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    return str(ipaddress.IPv6Address(raw))


def _netlink_dump(family: int) -> list[tuple[int, str, int, str, int, int]]:
    """(state, local ip, local port, remote ip, remote port, inode) of every LISTEN or
    ESTABLISHED TCP socket of one address family, as the kernel reports them."""
    states = (1 << _TCP_ESTABLISHED) | (1 << _TCP_LISTEN)
    request = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, states)
    header = _NLMSG_HDR.pack(_NLMSG_HDR.size + len(request), _SOCK_DIAG_BY_FAMILY,
                             _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
    rows: list[tuple[int, str, int, str, int, int]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(5.0)
        sock.sendall(header + request)
        while True:
            data = sock.recv(1 << 18)
            if not data:
                raise OSError("netlink: empty answer")
            offset = 0
            while offset + _NLMSG_HDR.size <= len(data):
                length, kind = _NLMSG_HDR.unpack_from(data, offset)[:2]
                if length < _NLMSG_HDR.size:
                    raise ValueError("netlink: bad message length")
                if kind == _NLMSG_DONE:
                    return rows
                if kind == _NLMSG_ERROR:
                    code = struct.unpack_from("=i", data, offset + _NLMSG_HDR.size)[0]
                    raise OSError(-code, "netlink sock_diag dump refused")
                if kind == _SOCK_DIAG_BY_FAMILY:
                    msg = offset + _NLMSG_HDR.size  # inet_diag_msg
                    fam, state = data[msg], data[msg + 1]
                    lport, rport = _PORTS.unpack_from(data, msg + 4)
                    inode = _INODE.unpack_from(data, msg + _INODE_OFFSET)[0]
                    rows.append((state, _ip_text(fam, data[msg + 8:msg + 24]), lport,
                                 _ip_text(fam, data[msg + 24:msg + 40]), rport, inode))
                offset += (length + 3) & ~3


def _netlink_table(own_inodes: frozenset[int] = frozenset()) -> SocketTable:
    listening: dict[int, set[str]] = {}
    established: dict[int, list[_Conn]] = {}
    own: set[tuple[str, int]] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for state, lip, lport, rip, rport, inode in _netlink_dump(family):
            if not lport:
                continue
            if state == _TCP_LISTEN:
                listening.setdefault(lport, set()).add(lip)
            elif rport:
                established.setdefault(lport, []).append(_Conn(lip, lport, rip, rport))
                if inode in own_inodes:
                    own.add((lip, lport))
    return SocketTable(
        {port: frozenset(ips) for port, ips in listening.items()},
        {port: tuple(items) for port, items in established.items()},
        frozenset(own),
    )


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
        if conn.remote_port in excluded or (conn.remote_ip, conn.remote_port) in table.own_endpoints:
            continue
        counts[conn.remote_ip] += 1
    return ConnectionCount(sum(counts.values()), bucket_remotes(counts, top_n), True)

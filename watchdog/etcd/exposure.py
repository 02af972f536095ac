"""Where a member's JSON gateway stalls: the server's concurrent-stream limit.

etcd's JSON gateway sends all its traffic over one internal HTTP/2 connection to the
member's own gRPC server, so once watches hold as many streams as that connection
allows, gateway calls hang while gRPC still answers (etcd#14077, #13985, #13722).

- Over TLS before 3.4.20 / 3.5.5 the limit is Go's HTTP/2 default of 250 and cannot be
  changed (3.0 - 3.3 never got a flag).
- From 3.4.20, 3.5.5 and 3.6.0 `--max-concurrent-streams` sets it (default 2^32-1,
  out of reach), TLS or not: etcd's own e2e test expects the stall at N on plain HTTP
  too. The flag is invisible over the wire, so watchdog is told it
  (`etcd.max_concurrent_streams`, per-endpoint overrides) or learns it (StreamLimitLearner).
- kine has no JSON gateway and antietcd serves JSON itself: nothing to stall.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple, Protocol

STREAM_LIMIT = 250  # Go's default HTTP/2 stream limit, fixed on old TLS members
UNLIMITED = 2**32 - 1  # etcd's default --max-concurrent-streams (math.MaxUint32)
# A limit above this is no wall a fleet of gateways can reach.
WITHIN_REACH = 1 << 20

_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)\.(\d+)")
# The first patch release per minor line with --max-concurrent-streams; lines not listed
# and older than 3.6 never got it.
_FIXED_IN = {(3, 4): 20, (3, 5): 5}
# Backends whose JSON API does not go through an HTTP/2 gateway connection.
_NO_GATEWAY = frozenset({"kine", "antietcd"})


def parse_version(version: str | None) -> tuple[int, int, int] | None:
    """(major, minor, patch) from '3.5.1', 'v3.4.23' or '3.5.5-rc.0'; None otherwise.

    A pre-release counts as its release (3.5.5-rc.0 as 3.5.5).
    """
    if not version:
        return None
    match = _VERSION.match(version)
    if match is None:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def has_stream_flag(version: str | None) -> bool | None:
    """True when the release has --max-concurrent-streams; None when unknown."""
    parsed = parse_version(version)
    if parsed is None or parsed[0] < 3:
        return None
    major, minor, patch = parsed
    if major > 3 or minor >= 6:
        return True
    fixed_patch = _FIXED_IN.get((major, minor))
    return fixed_patch is not None and patch >= fixed_patch


def stream_limit_exposed(version: str | None, tls: bool) -> bool | None:
    """True when TLS meets a release without the flag (the fixed 250 wall).

    False for plain HTTP and for releases with the flag, None when the version cannot
    be read. The configured or learned limit is `stream_limit`'s business.
    """
    if not tls:
        return False
    flag = has_stream_flag(version)
    return None if flag is None else not flag


def stream_limit(
    version: str | None,
    tls: bool,
    configured: int | None = None,
    learned: int | None = None,
    backend: str = "etcd",
) -> int | None:
    """The stream count at which the member's JSON gateway stalls; None when there is no
    such limit within reach or nothing says where it is.

    A limit learned from a real stall wins; then the fixed 250 of an old TLS member; then
    what the operator configured for a release that has the flag (or an unknown one).
    """
    if backend in _NO_GATEWAY:
        return None
    if learned is not None:
        return learned
    flag = has_stream_flag(version)
    if tls and flag is False:
        return STREAM_LIMIT
    if flag is False:
        return None  # plain HTTP before the flag: no limit at all
    if configured is not None and configured < WITHIN_REACH:
        return configured
    return None


def exposed(limit: int | None, version: str | None, tls: bool,
            backend: str = "etcd") -> bool | None:
    """The contract's `stream_limit_exposed`: True when the JSON gateway can stall at a
    limit within reach; False when it cannot; None when that cannot be told (a TLS
    member of unknown version, an unknown backend)."""
    if limit is not None:
        return True
    if backend in _NO_GATEWAY:
        return False
    if backend not in ("etcd", "etcd-adapter"):
        return None
    if has_stream_flag(version) is None and tls:
        return None  # maybe an old TLS member with the fixed 250
    return False


class _Limited(Protocol):
    """What `limit_of` reads from a peer (a snapshot's PeerState)."""

    @property
    def stream_limit(self) -> int | None: ...

    @property
    def tls(self) -> bool: ...


class PeerLimit(NamedTuple):
    """The limit a peer's headroom is measured against."""

    value: int
    fixed: bool  # the fixed 250 of an old TLS member, not a configured or learned limit


def limit_of(peer: _Limited) -> PeerLimit:
    """The peer's stream limit as its poll reported it (configured or learned), else the
    fixed 250; the one place that falls back to 250 when a peer reports no limit."""
    limit = peer.stream_limit
    if limit and limit != STREAM_LIMIT:
        return PeerLimit(limit, False)
    return PeerLimit(STREAM_LIMIT, bool(peer.tls))


def headroom(streams: float | None, exposed: bool | None,
             limit: int | None = STREAM_LIMIT) -> float | None:
    """Streams left before the stall (<= 0: stalled), or None when no such limit applies.

    `streams` is etcd_debugging_mvcc_watch_stream_total, which also counts native gRPC
    watch streams that do not use the gateway, so the headroom is on the safe side.
    """
    if exposed is not True or streams is None or limit is None:
        return None
    return limit - streams


@dataclass
class StreamLimitLearner:
    """Learns a member's stream limit from a stall seen in the wild.

    A stall is a poll where JSON reads time out, gRPC answers and the watch-stream count
    has not grown since the previous poll: the gateway's connection is full, so the
    plateau is the limit. `confirm` stalls in a row make it the learned limit; a later
    count above it proves otherwise and forgets it. Pure: no I/O, no clock.
    """

    confirm: int = 2
    limit: int | None = None
    _plateau: float | None = None
    _seen: int = 0

    def observe(self, streams: float | None, json_timed_out: bool, grpc_ok: bool) -> int | None:
        """Feed one poll; return the learned limit (or None)."""
        if streams is None or streams != streams or streams <= 0:  # absent or NaN
            return self.limit
        if self.limit is not None and streams > self.limit:
            self.limit = None  # more streams than the "limit": it was not one
        stalled = json_timed_out and grpc_ok
        if not stalled:
            self._plateau, self._seen = None, 0
            return self.limit
        if self._plateau is not None and streams <= self._plateau:
            self._seen += 1
        else:
            self._plateau, self._seen = streams, 1
        if self._seen >= self.confirm:
            self.limit = int(self._plateau)
        return self.limit

"""Is a member exposed to the JSON-gateway stall at 250 concurrent streams?

etcd serving TLS on a shared client listener routes every JSON-gateway call through one
internal HTTP/2 connection whose stream limit is Go's default of 250 (etcd#14077,
#13985, #11826). Once watches hold 250 streams, gateway calls hang while gRPC answers.
`--max-concurrent-streams` (default unlimited) fixed it in 3.4.20 and 3.5.5; 3.6.0 and
later have it from the start. Plain HTTP advertises no such limit.
"""

from __future__ import annotations

import re

STREAM_LIMIT = 250

_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)\.(\d+)")
# The first fixed patch release per minor line; lines not listed are older (exposed).
_FIXED_IN = {(3, 4): 20, (3, 5): 5}


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


def stream_limit_exposed(version: str | None, tls: bool) -> bool | None:
    """True when TLS on a shared listener meets a version without the fix.

    False for plain HTTP (whatever the version) and for fixed versions; None when the
    version cannot be read or is not a 3.x+ server.
    """
    if not tls:
        return False
    parsed = parse_version(version)
    if parsed is None:
        return None
    major, minor, patch = parsed
    if major < 3:
        return None
    if major > 3 or minor >= 6:
        return False
    fixed_patch = _FIXED_IN.get((major, minor))
    if fixed_patch is None:
        return True  # 3.0 - 3.3 never got the flag
    return patch < fixed_patch


def headroom(streams: float | None, exposed: bool | None) -> float | None:
    """Streams left before the stall (<= 0: stalled), or None when no such limit applies.

    `streams` is etcd_debugging_mvcc_watch_stream_total, which also counts native gRPC
    watch streams that do not use the gateway, so the headroom is on the safe side.
    """
    if exposed is not True or streams is None:
        return None
    return STREAM_LIMIT - streams

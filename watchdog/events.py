"""State changes worth a log line, read from two consecutive snapshots (never from jobs)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from watchdog.etcd.exposure import headroom, limit_of
from watchdog.snapshot import GatewayState, PeerState, Snapshot

log = logging.getLogger("watchdog.events")

Event = tuple[int, str]  # (logging level, message)


def changes(prev: Snapshot, cur: Snapshot) -> Iterator[Event]:
    """What changed from `prev` to `cur`, one event per change that matters."""
    if cur.discovery_error and cur.discovery_error != prev.discovery_error:
        yield logging.WARNING, f"member discovery failed: {cur.discovery_error}"
    for name in sorted(prev.peers.keys() - cur.peers.keys()):
        yield logging.INFO, f"peer left peer={name}"
    for name, peer in sorted(cur.peers.items()):
        old = prev.peers.get(name)
        if old is None:
            yield logging.INFO, f"watching peer peer={name} url={peer.endpoint}"
            old = PeerState(name=name, endpoint=peer.endpoint)
        if peer.cycle != old.cycle:
            yield from _peer_changes(old, peer)
    for name, gw in sorted(cur.gateways.items()):
        old_gw = prev.gateways.get(name)
        if old_gw is not None and old_gw is not gw:
            yield from _gateway_changes(old_gw, gw)
    yield from _finding_changes(prev, cur)


def _finding_changes(prev: Snapshot, cur: Snapshot) -> Iterator[Event]:
    before = {f.id: f for f in prev.findings}
    after = {f.id: f for f in cur.findings}
    for key in sorted(after.keys() - before.keys()):
        f = after[key]
        level = logging.INFO if f.severity == "info" else logging.WARNING
        yield (level, f"finding opened finding={f.kind} {f.subject_kind}={f.subject} "
               f"severity={f.severity} summary={f.summary!r} fix={f.fix!r}")
    for key in sorted(before.keys() - after.keys()):
        f = before[key]
        yield (logging.INFO, f"finding cleared finding={f.kind} {f.subject_kind}={f.subject} "
               f"severity={f.severity} was={f.summary!r}")
    for key in sorted(before.keys() & after.keys()):
        old, new = before[key], after[key]
        if old.severity != new.severity:
            yield (logging.WARNING, f"finding changed finding={new.kind} "
                   f"{new.subject_kind}={new.subject} severity={old.severity}->{new.severity} "
                   f"summary={new.summary!r}")


def _peer_changes(old: PeerState, new: PeerState) -> Iterator[Event]:
    if not new.up and (old.up or not old.polled):
        first = "" if old.polled else " first_poll=true"
        yield logging.WARNING, f"peer down peer={new.name} reason={new.poll_reason}{first}"
    elif new.up and old.polled and not old.up:
        yield logging.INFO, f"peer up again peer={new.name}"
    low_before, low_now = _headroom_low(old), _headroom_low(new)
    if low_now is not None and (low_before is None or not low_before[0]) and low_now[0]:
        yield (logging.WARNING, f"stream headroom low peer={new.name} "
               f"headroom={low_now[1]:.0f} limit={low_now[2]}")
    elif low_before is not None and low_before[0] and low_now is not None and not low_now[0]:
        yield logging.INFO, f"stream headroom recovered peer={new.name} headroom={low_now[1]:.0f}"
    for signal, state in new.wires.items():
        before = old.wires.get(signal)
        was = before.tripped if before else False
        if state.tripped and not was:
            ratio = f"{state.ratio:.2f}" if state.ratio is not None else "?"
            yield (logging.WARNING,
                   f"trip wire tripped peer={new.name} signal={signal} "
                   f"steady={state.steady} ratio={ratio}")
        elif was and not state.tripped:
            yield logging.INFO, f"trip wire cleared peer={new.name} signal={signal}"


HEADROOM_LOW = 0.1  # of the stream limit: at 250, 25 streams left


def _headroom_low(p: PeerState) -> tuple[bool, float, int] | None:
    """(below the threshold, streams left, limit), or None when no limit is in reach."""
    limit = limit_of(p).value
    left = headroom(p.watch_streams, p.exposed, limit)
    return None if left is None else (left < HEADROOM_LOW * limit, left, limit)


def _gateway_changes(old: GatewayState, new: GatewayState) -> Iterator[Event]:
    for call, result in new.admin.items():
        before = old.admin.get(call)
        if result is before:
            continue
        if not result.ok and (before is None or before.ok):
            yield (logging.INFO, f"admin call failed gateway={new.name} "
                   f"reason={result.reason} detail={result.detail}")
        elif result.ok and before is not None and not before.ok:
            yield logging.INFO, f"admin call succeeds again gateway={new.name}"


def log_changes(prev: Snapshot, cur: Snapshot) -> None:
    for level, message in changes(prev, cur):
        log.log(level, message)

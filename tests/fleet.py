"""A large fleet's snapshot, made by the real reducer from the results real jobs return.

Used by the render tests and bench/s7_render.py. Each peer's /metrics page is a captured etcd
3.5.1 TLS page (an exposed peer: the most series a peer has), each poll carries the four
probes a real poll runs, each gateway an admin check, its status API and metrics page, and a
smoke run; a few calls fail, as they do in a real fleet. Nothing is rendered here.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from watchdog.config import config_from_dict
from watchdog.etcd.job import Discovery, EtcdCycle
from watchdog.etcd.peers import PeerPoll, PeerTarget
from watchdog.etcd.promtext import parse_peer_metrics
from watchdog.gateway.jobs import GatewayPoll, SmokeRun
from watchdog.gateway.smoke import SmokeResult
from watchdog.reducer import Reducer, reduce
from watchdog.results import ProbeResult, Reason
from watchdog.snapshot import Snapshot
from watchdog.tripwire import TripwireBank, TripwireSettings

PAGE = Path(__file__).resolve().parent / "fixtures" / "etcd" / "etcd-3.5.1-tls-idle.metrics"
PHASES = {"connect": 0.0004, "tls": 0.0021, "processing": 0.0035, "transfer": 0.0001}


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _probes(i: int, cycle: int) -> list[ProbeResult]:
    slow = (i + cycle) % 97 == 0  # now and then a JSON read times out
    return [
        ProbeResult("json", "range", not slow, 5.0 if slow else 0.004 + i % 7 * 0.003,
                    Reason.TIMEOUT if slow else None, phases=PHASES),
        ProbeResult("json", "status", True, 0.003, phases=PHASES),
        ProbeResult("grpc", "range", True, 0.002 + i % 5 * 0.001),
        ProbeResult("grpc", "status", True, 0.002),
    ]


def fleet_snapshot(peers: int, gateways: int, cycles: int = 3, warmup: float = 0.0,
                   names: list[str] | None = None) -> Snapshot:
    """The snapshot after `cycles` etcd cycles and gateway rounds of a fleet of this size
    (`names`: member names to use instead of etcd-<i>, e.g. ones that need escaping)."""
    page = parse_peer_metrics(PAGE.read_bytes())
    gw_names = [f"gw-{i}" for i in range(gateways)]
    config = config_from_dict({
        "etcd": {"endpoints": ["https://127.0.0.1:2379"]},
        "gateways": [{"name": n, "admin_url": f"http://127.0.0.1:{10000 + i}", "workers": 4}
                     for i, n in enumerate(gw_names)],
        "state_dir": "/nonexistent-never-written",
    })
    clock = _Clock()
    bank = TripwireBank(TripwireSettings(warmup=warmup, hold=0.0), clock=clock)
    reducer = Reducer(config, bank, clock)
    member = names or [f"etcd-{i}" for i in range(peers)]
    targets = tuple(PeerTarget(member[i], f"https://10.{i // 250}.{i % 250}.1:2379",
                               f"{0x8e9e05c52164694d + i:x}") for i in range(peers))
    for cycle in range(cycles):
        clock.now += 5.0
        polls = tuple(PeerPoll(
            target=t, up=True, reason=None, duration=0.012,
            metrics=dataclasses.replace(page, watch_streams=float(40 + i % 13)),
            probes=_probes(i, cycle), version="3.5.1", member_id=t.member_id,
            is_leader=i == 0, revision=1000 + cycle, exposed=True, stream_limit=250,
            backend="etcd", metrics_up=True,
        ) for i, t in enumerate(targets))
        reducer.apply(EtcdCycle(polls=polls, before=Discovery(targets) if cycle == 0 else None))
        for i, name in enumerate(gw_names):
            failed = (i + cycle) % 53 == 0
            admin = ProbeResult("admin", "get_missing_route", not failed,
                                1.0 if failed else 0.006, Reason.HTTP if failed else None,
                                phases=PHASES)
            # reduce(), not Reducer.apply: the same next snapshot without judging the findings
            # of the whole fleet after each of thousands of gateway results
            for result in (
                GatewayPoll(name, admin, ready=True, scraped=True, etcd_reachable=1.0,
                            loaded_revision=999.0 + cycle, config_lag=1.0),
                SmokeRun(name, SmokeResult(name, True, "served", "synced",
                                           sync_seconds=0.4 + i % 3 * 0.1)),
            ):
                reducer.snapshot = reduce(reducer.snapshot, result, clock.now, bank,
                                          reducer.settings)
    return reducer.snapshot


def series_per_target(text: str) -> tuple[Counter[str], Counter[str]]:
    """Series per `peer` and per `gateway` label value on a /metrics page (text format)."""
    peers: Counter[str] = Counter()
    gateways: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "peer" in sample.labels:
                peers[sample.labels["peer"]] += 1
            if "gateway" in sample.labels:
                gateways[sample.labels["gateway"]] += 1
    return peers, gateways

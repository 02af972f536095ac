"""The trip wire's clocks, hostile samples and identity, on injected clocks (issues #14.8,
#14.13, #14.14): wall-clock steps, absurd values, state of another cluster or member."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pytest

from watchdog.state import StateStore
from watchdog.tripwire import MAX_SAMPLE, TripwireBank, TripwireSettings, Wire

PEER = "etcd-1"
WATCH = "watch_streams"
INTERVAL = 15.0
S = TripwireSettings(warmup=600.0, hold=300.0)


@dataclass
class Clocks:
    """A wall clock and a monotonic clock the test moves by hand, apart when it says so."""

    wall: float = 1_700_000_000.0
    mono: float = 5_000.0

    def tick(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def bank(self, settings: TripwireSettings = S, boot: str | None = "boot-1") -> TripwireBank:
        return TripwireBank(settings, lambda: self.wall, monotonic=lambda: self.mono, boot=boot)


def feed(bank: TripwireBank, clocks: Clocks, seconds: float, value: float,
         peer: str = PEER) -> list[Any]:
    states = []
    for _ in range(round(seconds / INTERVAL)):
        states.append(bank.observe(peer, WATCH, value))
        clocks.tick(INTERVAL)
    return states


def armed(clocks: Clocks, level: float = 100.0, peers: tuple[str, ...] = (PEER,)
          ) -> TripwireBank:
    bank = clocks.bank()
    for _ in range(round((S.warmup + 60) / INTERVAL)):
        for peer in peers:
            bank.observe(peer, WATCH, level)
        clocks.tick(INTERVAL)
    state = bank.state(peers[0], WATCH)
    assert state is not None and state.armed and state.steady == level
    return bank


def round_trip(data: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(data, allow_nan=False))
    return loaded


# --- #14.14: durations on the monotonic clock -------------------------------------------


@pytest.mark.fault(
    "wall clock stepped back 1 h with a tripped wire (injected clock)",
    reports="the wire clears exactly `hold` after the value fell",
    within="`hold` (asserted)")
def test_a_wall_clock_step_back_of_an_hour_does_not_freeze_the_hold_timer() -> None:
    clocks = Clocks()
    bank = armed(clocks)
    assert bank.observe(PEER, WATCH, 300.0).tripped
    clocks.tick(INTERVAL)
    clocks.wall -= 3600  # NTP steps the wall clock back an hour
    states = feed(bank, clocks, S.hold + 2 * INTERVAL, 100.0)
    # Under clear_factor from the first of these samples: clear exactly `hold` later.
    cleared = [s.tripped for s in states].index(False)
    assert cleared * INTERVAL == S.hold
    assert states[cleared - 1].tripped_for == S.hold


@pytest.mark.fault(
    "wall clock stepped forward (injected clock)",
    reports="neither restarts the warm-up nor ages the trip",
    within="at once")
def test_a_wall_clock_step_forward_neither_restarts_warm_up_nor_ages_the_trip() -> None:
    clocks = Clocks()
    bank = clocks.bank()
    feed(bank, clocks, 300, 100.0)
    clocks.wall += 2 * 86400  # far beyond the window on the wall clock only
    states = feed(bank, clocks, S.warmup - 300 + 60, 100.0)
    assert states[-1].armed  # the warm-up went on; it did not start over
    tripped = bank.observe(PEER, WATCH, 300.0)
    clocks.wall += 86400
    clocks.mono += INTERVAL
    assert tripped.tripped and bank.observe(PEER, WATCH, 300.0).tripped_for == INTERVAL


def test_a_restart_on_the_same_boot_measures_the_downtime_on_the_monotonic_clock() -> None:
    clocks = Clocks()
    bank = armed(clocks)
    clocks.wall += 2 * 86400  # the clock ran two days ahead while the state was saved...
    data = round_trip(bank.to_dict())
    clocks.tick(120)
    clocks.wall -= 2 * 86400  # ...and was corrected before the restart
    restarted = clocks.bank()
    assert restarted.load_dict(data, max_age=3600) == []  # nothing dropped, nothing "future"
    assert restarted.wire_count() == 1
    assert restarted.state(PEER, WATCH) == bank.state(PEER, WATCH)


@pytest.mark.fault(
    "wall clock stepped forward while watchdog was down, same boot",
    reports="the saved state is kept (downtime measured on the monotonic clock)",
    within="at load")
def test_a_forward_step_while_down_does_not_drop_the_state_on_the_same_boot() -> None:
    clocks = Clocks()
    bank = armed(clocks)
    data = round_trip(bank.to_dict())
    clocks.tick(60)
    clocks.wall += 5 * 86400  # stepped forward beyond max_age while the watchdog was down
    restarted = clocks.bank()
    assert restarted.load_dict(data, max_age=86400) == []
    assert restarted.observe(PEER, WATCH, 100.0).armed


def test_after_a_reboot_the_downtime_is_measured_on_the_wall_clock() -> None:
    clocks = Clocks()
    bank = armed(clocks)
    data = round_trip(bank.to_dict())
    clocks.wall += 7200
    clocks.mono = 12.0  # a new boot: the monotonic clock started again
    rebooted = clocks.bank(boot="boot-2")
    assert rebooted.load_dict(data, max_age=3600) == [
        "etcd-1/watch_streams: last sample 7215 s ago (more than 3600 s), relearning"
    ]
    again = clocks.bank(boot="boot-2")
    assert again.load_dict(data, max_age=86400) == []
    state = again.state(PEER, WATCH)
    assert state is not None and state.steady == 100.0


def test_a_tripped_wire_restored_on_a_new_clock_keeps_its_trip_age() -> None:
    clocks = Clocks()
    bank = armed(clocks)
    bank.observe(PEER, WATCH, 300.0)
    clocks.tick(90)
    data = round_trip(bank.to_dict())
    clocks.tick(30)
    clocks.mono += 1_000_000  # another process start is no reason for a jump; still fine
    restarted = clocks.bank(boot="boot-2")
    assert restarted.load_dict(data, max_age=3600) == []
    state = restarted.state(PEER, WATCH)
    assert state is not None and state.tripped and state.tripped_for == 120.0


def test_version_1_state_with_wall_clock_times_still_loads() -> None:
    clocks = Clocks()
    bank = armed(clocks)
    v2 = bank.to_dict()
    shift = clocks.wall - clocks.mono  # v1 saved absolute wall times
    wire = v2["wires"][PEER][WATCH]

    def wall(t: float | None) -> float | None:
        return None if t is None else t + clocks.mono + shift

    v1_wire = {**wire, "first_seen": wall(wire["first_seen"]), "last_seen": wall(wire["last_seen"]),
               "tripped_since": None,
               "ring": [[wall(start), mean] for start, mean in wire["ring"]],
               "bucket": [wall(wire["bucket"][0]), *wire["bucket"][1:]] if wire["bucket"] else None}
    v1 = {"version": 1, "bucket": 60.0, "wires": {PEER: {WATCH: v1_wire}}}
    clocks.tick(60)
    restarted = clocks.bank()
    assert restarted.load_dict(v1, max_age=3600) == []
    state = restarted.state(PEER, WATCH)
    assert state is not None and state.steady == 100.0


# --- #14.8: absurd samples ----------------------------------------------------------------


def test_a_huge_finite_sample_is_clamped_and_the_state_stays_saveable(tmp_path: Any) -> None:
    clocks = Clocks()
    bank = armed(clocks)
    for _ in range(8):  # two buckets' worth: every sum would be inf without the clamp
        state = bank.observe(PEER, WATCH, 1e308)
        clocks.tick(INTERVAL)
    assert state.tripped and state.ratio == MAX_SAMPLE / 100.0
    assert bank.clamped_samples == 8
    fresh = clocks.bank()
    for _ in range(8):  # during warm-up the clamped values do enter the buckets
        fresh.observe("etcd-2", WATCH, 1e308)
        clocks.tick(INTERVAL)
    for source in (bank, fresh):
        data = source.to_dict()
        json.dumps(data, allow_nan=False)  # raises on inf or nan
        store = StateStore(tmp_path)
        store.save({"tripwire": data})
        loaded = store.load()
        assert loaded is not None
        restarted = clocks.bank()
        assert restarted.load_dict(loaded["tripwire"], max_age=3600) == []


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("steady", 1e308, "steady: 1e+308 is not a sample"),
        ("last_value", -5.0, "last_value: -5 is not a sample"),
        ("last_seen", 10**400, "last_seen: expected a finite number, got 1000000"),
        ("first_seen", "yesterday", "first_seen: expected a finite number, got 'yesterday'"),
        ("ring", [[0.0, 1e300]], "ring[0]: 1e+300 is not a sample"),
        ("bucket", [0.0, 1e308, 2], "bucket: sum 1e+308 out of range"),
        ("first_seen", -1e12, "first_seen: a time"),
        ("ring", [[0.0, 10**400]], "ring[0]: expected 2 finite numbers"),
    ],
)
def test_absurd_saved_numbers_are_refused_wire_by_wire(field: str, value: Any, problem: str
                                                       ) -> None:
    clocks = Clocks()
    bank = armed(clocks, peers=(PEER, "etcd-2"))
    data = round_trip(bank.to_dict())
    data["wires"][PEER][WATCH][field] = value
    restarted = clocks.bank()
    [warning] = restarted.load_dict(data, max_age=3600)
    assert warning.startswith(f"{PEER}/{WATCH}: unreadable state ({problem}")
    assert warning.endswith("relearning") and len(warning) < 300
    assert restarted.peers() == ["etcd-2"]


@pytest.mark.parametrize(
    "data",
    [
        {"version": True, "bucket": 60.0, "wires": {}},
        {"version": 2, "bucket": 60.0, "wires": {}, "saved_at": 10**400, "saved_monotonic": 1},
        {"version": 2, "bucket": 60.0, "wires": {}, "saved_at": 1.0, "saved_monotonic": "x"},
        {"version": 2, "bucket": 60.0, "wires": {}, "cluster_id": 7},
        {"version": 2, "bucket": 60.0, "wires": {}, "members": []},
        {"version": [2], "bucket": {}, "wires": {}},
    ],
)
def test_wrong_types_at_the_top_never_raise(data: dict[str, Any]) -> None:
    clocks = Clocks()
    bank = clocks.bank()
    [warning] = bank.load_dict(data, max_age=3600)
    assert warning.startswith("tripwire state ignored")
    assert bank.peers() == []


def test_to_dict_leaves_out_a_wire_that_is_not_finite() -> None:
    clocks = Clocks()
    bank = armed(clocks, peers=(PEER, "etcd-2"))
    wire = bank._wires["etcd-2"][WATCH]  # the damage of a bug, made on purpose
    wire._steady = math.inf
    data = bank.to_dict()
    assert list(data["wires"]) == [PEER]
    json.dumps(data, allow_nan=False)


def test_wire_from_dict_keeps_only_the_window_of_a_long_ring() -> None:
    clocks = Clocks()
    wire = Wire(S, lambda: clocks.mono)
    wire.observe(100.0)
    data = wire.to_dict(origin=clocks.mono)
    data["ring"] = [[-60.0 * (100_000 - i), 100.0] for i in range(100_000)]
    restored = Wire.from_dict(data, S, lambda: clocks.mono, origin=clocks.mono)
    assert len(restored.to_dict()["ring"]) == math.ceil(S.window / 60) + 1


# --- #14.13: identity ---------------------------------------------------------------------


def saved_under(cluster: str, members: dict[str, str]) -> tuple[Clocks, dict[str, Any]]:
    clocks = Clocks()
    bank = armed(clocks, peers=tuple(members))
    assert bank.identify(cluster, members) == []
    data = round_trip(bank.to_dict())
    assert data["cluster_id"] == cluster and data["members"] == members
    clocks.tick(60)
    return clocks, data


def test_state_of_another_cluster_is_set_aside_when_the_cluster_is_known_at_load() -> None:
    clocks, data = saved_under("aaaa", {PEER: "m1", "etcd-2": "m2"})
    bank = clocks.bank()
    assert bank.load_dict(data, max_age=3600, cluster_id="bbbb") == [
        "foreign state discarded: learned on cluster aaaa, this is cluster bbbb"
    ]
    assert bank.peers() == []
    same = clocks.bank()
    assert same.load_dict(data, max_age=3600, cluster_id="aaaa") == []
    assert same.peers() == [PEER, "etcd-2"]


def test_state_of_another_cluster_is_dropped_once_discovery_names_the_cluster() -> None:
    clocks, data = saved_under("aaaa", {PEER: "m1", "etcd-2": "m2"})
    bank = clocks.bank()
    assert bank.load_dict(data, max_age=3600) == []  # the daemon loads before discovery
    bank.observe("etcd-3", WATCH, 5.0)  # learned here, after the load: not theirs
    assert bank.identify("bbbb", {PEER: "x1", "etcd-2": "x2", "etcd-3": "x3"}) == [
        "foreign state discarded: learned on cluster aaaa, this is cluster bbbb"
    ]
    assert bank.peers() == ["etcd-3"]
    assert bank.to_dict()["cluster_id"] == "bbbb"


def test_the_same_cluster_keeps_its_state_and_a_replaced_member_relearns() -> None:
    clocks, data = saved_under("aaaa", {PEER: "m1", "etcd-2": "m2"})
    bank = clocks.bank()
    assert bank.load_dict(data, max_age=3600) == []
    assert bank.identify("aaaa", {PEER: "m1", "etcd-2": "m9"}) == [
        "etcd-2: member id m2 is now m9 (a replaced member?), relearning"
    ]
    assert bank.peers() == [PEER]
    assert bank.to_dict()["members"] == {PEER: "m1"}


def test_endpoints_that_start_answering_for_another_cluster_drop_every_wire() -> None:
    clocks = Clocks()
    bank = armed(clocks)
    assert bank.identify("aaaa", {PEER: "m1"}) == []
    assert bank.identify("aaaa", {PEER: "m1"}) == []
    assert bank.identify("cccc", {PEER: "m1"}) == [
        "the endpoints now answer for cluster cccc, not aaaa: every wire learns again"
    ]
    assert bank.peers() == []


def test_state_without_a_cluster_id_still_loads() -> None:
    clocks, data = saved_under("aaaa", {PEER: "m1"})
    del data["cluster_id"]
    bank = clocks.bank()
    assert bank.load_dict(data, max_age=3600, cluster_id="bbbb") == []
    assert bank.peers() == [PEER]


# --- #14.7: the daemon's state file judged whole -----------------------------------------


def test_saved_state_problem_sets_aside_a_file_with_a_wrong_type_anywhere(tmp_path: Any) -> None:
    from watchdog.tripwire import saved_state_problem

    clocks = Clocks()
    bank = armed(clocks, peers=(PEER, "etcd-2"))
    good = {"tripwire": round_trip(bank.to_dict())}
    assert saved_state_problem(good) is None
    assert saved_state_problem({}) is None  # nothing saved yet is no problem
    bad = json.loads(json.dumps(good))
    bad["tripwire"]["wires"]["etcd-2"][WATCH]["ring"] = {"not": "a list"}
    assert saved_state_problem(bad) == (
        "etcd-2/watch_streams: unreadable state (ring: expected a list of [start, mean] "
        "pairs), relearning")
    assert saved_state_problem({"tripwire": "x"}) == (
        "tripwire state ignored: expected an object, got str")

    StateStore(tmp_path).save(bad)
    store = StateStore(tmp_path, validate=saved_state_problem)
    assert store.load() is None
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == ["state.json.corrupt"]
    StateStore(tmp_path).save(good)
    assert store.load() == good

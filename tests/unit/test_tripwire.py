"""The watch tripwire, walked through its life under a frozen clock (freezegun).

Every bank here uses the default clock (time.time), so freezegun drives it. Samples come every
15 s (the default poll interval) unless a test says otherwise.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from watchdog.state import StateStore
from watchdog.tripwire import TripwireBank, TripwireSettings, Wire, WireState

PEER = "etcd-1"
WATCH = "watch_streams"
CONNS = "client_connections"
INTERVAL = 15.0
DEFAULTS = TripwireSettings()
NOT_ARMED = WireState(steady=None, tripped=False, ratio=None, tripped_for=0.0, armed=False)

Value = float | Callable[[float], float]


@pytest.fixture
def frozen() -> Iterator[FrozenDateTimeFactory]:
    # Minute-aligned, so one-minute buckets hold exactly four samples.
    with freeze_time("2024-03-01 00:00:00") as factory:
        yield factory


@pytest.fixture
def bank(frozen: FrozenDateTimeFactory) -> TripwireBank:
    return TripwireBank(DEFAULTS)


def feed(
    bank: TripwireBank,
    frozen: FrozenDateTimeFactory,
    seconds: float,
    value: Value,
    peer: str = PEER,
    signal: str = WATCH,
    interval: float = INTERVAL,
) -> list[WireState]:
    """Observe every interval for `seconds`: a sample now, then the clock moves on.

    `value` is a constant or a function of the seconds elapsed in this call.
    """
    states = []
    for step in range(round(seconds / interval)):
        sample = value(step * interval) if callable(value) else value
        states.append(bank.observe(peer, signal, sample))
        frozen.tick(interval)
    return states


def noisy(level: float, seed: int = 7, spread: float = 0.10) -> Callable[[float], float]:
    """level +/- spread, uniformly, reproducibly."""
    rng = random.Random(seed)
    return lambda _elapsed: level * rng.uniform(1 - spread, 1 + spread)


def transitions(states: list[WireState]) -> int:
    """How often `tripped` changed from one sample to the next."""
    return sum(a.tripped != b.tripped for a, b in pairwise(states))


def warming(left: float) -> WireState:
    """A wire in warm-up with `left` seconds of it to go."""
    return replace(NOT_ARMED, warmup_left=left)


def counting_down(states: list[WireState], warmup: float = DEFAULTS.warmup) -> list[WireState]:
    """What a wire says in each poll of a warm-up that started at the first of them."""
    return [warming(warmup - INTERVAL * step) for step in range(len(states))]


def warm(bank: TripwireBank, frozen: FrozenDateTimeFactory, value: Value = 100.0) -> None:
    """Run a whole warm-up; the next sample arms the wire."""
    states = feed(bank, frozen, DEFAULTS.warmup, value)
    assert states == counting_down(states)


# --- settings -------------------------------------------------------------------------------


def test_defaults_match_the_config_contract() -> None:
    s = TripwireSettings()
    assert (s.factor, s.warmup, s.clear_factor, s.hold, s.min_streams) == (
        2.0,
        3600.0,
        1.5,
        300.0,
        10.0,
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"factor": 1.0}, "factor must be > 1, got 1.0"),
        ({"clear_factor": 2.5}, "clear_factor must be > 0 and <= factor (2.0), got 2.5"),
        ({"clear_factor": 0.0}, "clear_factor must be > 0"),
        ({"warmup": -1.0}, "warmup must be >= 0 seconds"),
        ({"hold": -1.0}, "hold must be >= 0 seconds"),
        ({"min_streams": -1.0}, "min_streams must be >= 0"),
        ({"window": 30.0}, "window must be >= 60 seconds"),
        ({"adapt": 0.0}, "adapt must be > 0 seconds"),
        ({"factor": math.nan}, "factor must be a finite number, got nan"),
        ({"hold": "5m"}, "hold must be a finite number, got '5m'"),
    ],
)
def test_invalid_settings_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="invalid tripwire settings") as caught:
        TripwireSettings(**changes)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_clear_factor_equal_to_factor_is_allowed() -> None:
    assert TripwireSettings(factor=3.0, clear_factor=3.0).clear_factor == 3.0


def test_zero_warmup_arms_on_the_second_sample(frozen: FrozenDateTimeFactory) -> None:
    bank = TripwireBank(TripwireSettings(warmup=0.0))
    assert bank.observe(PEER, WATCH, 100.0) == warming(0.0)  # nothing learned yet to judge by
    frozen.tick(INTERVAL)
    assert bank.observe(PEER, WATCH, 210.0) == WireState(100.0, True, 2.1, 0.0, True)


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, True])
def test_a_sample_must_be_a_finite_count(bank: TripwireBank, value: float) -> None:
    with pytest.raises(ValueError, match="finite number >= 0"):
        bank.observe(PEER, WATCH, value)
    assert bank.state(PEER, WATCH) is None  # no wire was made for it


# --- warm-up --------------------------------------------------------------------------------


def test_warmup_has_no_steady_state_and_never_trips_even_on_a_spike(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    base = noisy(100.0)
    # A whole minute at 5x, half-way through the warm-up.
    states = feed(bank, frozen, 3600, lambda t: 500.0 if 1800 <= t < 1860 else base(t))

    assert len(states) == 240
    assert states == counting_down(states)  # the last one at 3585 s, 15 s left
    armed = bank.observe(PEER, WATCH, 100.0)  # 3600 s: warm-up over
    assert armed.armed and armed.warmup_left is None
    assert not armed.tripped
    assert armed.steady == pytest.approx(100.0, rel=0.02)  # the spike did not drag it up
    assert armed.ratio == pytest.approx(100.0 / armed.steady)


def test_warmup_starts_again_after_a_gap_longer_than_the_window(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    feed(bank, frozen, 600, 100.0)
    frozen.tick(2 * 3600)  # the peer was unreachable; ten minutes of data is too old to use
    states = feed(bank, frozen, 3600, 100.0)
    assert states == counting_down(states) and len(states) == 240  # from the full hour again
    assert bank.observe(PEER, WATCH, 100.0).steady == 100.0


# --- steady traffic, surges -----------------------------------------------------------------


def test_noisy_steady_traffic_never_trips(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    traffic = noisy(100.0)
    warm(bank, frozen, traffic)
    states = feed(bank, frozen, 2 * 3600, traffic)

    assert not any(state.tripped for state in states)
    assert all(state.armed for state in states)
    for state in states:
        assert state.steady == pytest.approx(100.0, rel=0.02)
        assert state.ratio is not None
        assert 0.85 < state.ratio < 1.15


def test_a_surge_to_2_1x_trips_on_its_first_sample(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    warm(bank, frozen)
    assert bank.observe(PEER, WATCH, 100.0) == WireState(100.0, False, 1.0, 0.0, True)
    frozen.tick(INTERVAL)

    assert bank.observe(PEER, WATCH, 210.0) == WireState(100.0, True, 2.1, 0.0, True)
    frozen.tick(INTERVAL)
    assert bank.observe(PEER, WATCH, 210.0) == WireState(100.0, True, 2.1, 15.0, True)
    frozen.tick(45)  # no sample: tripped_for still counts
    assert bank.state(PEER, WATCH) == WireState(100.0, True, 2.1, 60.0, True)


def test_1_9x_for_an_hour_does_not_trip(bank: TripwireBank, frozen: FrozenDateTimeFactory) -> None:
    warm(bank, frozen)
    states = feed(bank, frozen, 3600, 190.0)
    assert not any(state.tripped for state in states)
    assert states[0] == WireState(100.0, False, 1.9, 0.0, True)


def test_the_threshold_is_strictly_above_factor_times_steady(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    warm(bank, frozen)
    assert not bank.observe(PEER, WATCH, 200.0).tripped
    frozen.tick(INTERVAL)
    assert bank.observe(PEER, WATCH, 200.5).tripped


def test_signals_and_peers_have_separate_wires(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    for _ in range(241):
        bank.observe("etcd-1", WATCH, 100.0)
        bank.observe("etcd-1", CONNS, 40.0)
        bank.observe("etcd-2", WATCH, 300.0)
        frozen.tick(INTERVAL)
    assert bank.observe("etcd-1", CONNS, 90.0).tripped
    assert not bank.state("etcd-1", WATCH).tripped  # type: ignore[union-attr]
    assert bank.observe("etcd-2", WATCH, 300.0).steady == 300.0
    assert bank.state("etcd-3", WATCH) is None
    assert bank.peers() == ["etcd-1", "etcd-2"]


# --- hysteresis -----------------------------------------------------------------------------


def test_flapping_around_the_threshold_trips_once_and_clears_once(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    warm(bank, frozen)
    # 30 minutes alternating 1.9x / 2.1x, then back to normal.
    flapping = feed(bank, frozen, 1800, lambda t: 190.0 if (t // INTERVAL) % 2 == 0 else 210.0)
    assert not flapping[0].tripped
    assert all(state.tripped for state in flapping[1:])
    assert flapping[-1].tripped_for == 1800 - 2 * INTERVAL

    recovery = feed(bank, frozen, 600, 100.0)
    # Tripped for the whole hold (0..285 s under 1.5x), clear from 300 s on.
    assert [state.tripped for state in recovery] == [True] * 20 + [False] * 20
    assert transitions(flapping + recovery) == 2


def test_it_clears_only_after_hold_seconds_continuously_under_clear_factor(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    warm(bank, frozen)
    assert bank.observe(PEER, WATCH, 300.0).tripped  # trips at T
    frozen.tick(INTERVAL)

    # 140 < 1.5 x 100 from T+15; a bounce to 160 at T+150 restarts the hold.
    states = feed(bank, frozen, 900, lambda t: 160.0 if t == 135 else 140.0)
    assert [state.tripped for state in states[:30]] == [True] * 30  # T+15 .. T+450
    assert states[29].tripped_for == 450.0
    assert states[30] == WireState(100.0, False, 1.4, 0.0, True)  # T+465 = bounce + 15 + 300
    assert not any(state.tripped for state in states[30:])


def test_values_between_clear_factor_and_factor_keep_it_tripped(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    warm(bank, frozen)
    bank.observe(PEER, WATCH, 250.0)
    frozen.tick(INTERVAL)
    states = feed(bank, frozen, 3600, 170.0)  # recovered a bit, still above 1.5x
    assert all(state.tripped for state in states)
    assert states[-1].tripped_for == 3600.0


def test_hold_zero_clears_on_the_first_sample_under_clear_factor(
    frozen: FrozenDateTimeFactory,
) -> None:
    bank = TripwireBank(TripwireSettings(hold=0.0))
    warm(bank, frozen)
    assert bank.observe(PEER, WATCH, 210.0).tripped
    frozen.tick(INTERVAL)
    assert not bank.observe(PEER, WATCH, 149.0).tripped


# --- the steady state -----------------------------------------------------------------------


def test_the_steady_state_is_frozen_while_tripped(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    warm(bank, frozen)
    states = feed(bank, frozen, 3 * 3600, 300.0)  # three hours at 3x
    assert all(state.tripped and state.steady == 100.0 for state in states)

    recovery = feed(bank, frozen, 2 * 3600, 100.0)
    assert not recovery[-1].tripped
    assert all(state.steady == 100.0 for state in recovery)
    frozen.tick(INTERVAL)
    assert bank.observe(PEER, WATCH, 210.0).tripped  # the anomaly did not become normal


def test_a_trip_in_mid_minute_freezes_the_steady_state_too(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    traffic = noisy(100.0)
    warm(bank, frozen, traffic)
    # Two normal samples open a minute, then the surge: that minute closes while tripped.
    before = feed(bank, frozen, 30, traffic)[-1].steady
    states = feed(bank, frozen, 600, 300.0)
    assert all(state.tripped for state in states)
    assert {state.steady for state in states} == {before}


@pytest.mark.parametrize("restart_at", [1200.0, 5400.0], ids=["during-warmup", "after-warmup"])
def test_a_fleet_restart_neither_trips_nor_moves_the_baseline(
    bank: TripwireBank, frozen: FrozenDateTimeFactory, restart_at: float
) -> None:
    traffic = noisy(100.0)

    def fleet(t: float) -> float:
        if restart_at <= t < restart_at + 150:
            return 0.0  # every gateway restarting: all streams gone for 2.5 minutes
        if restart_at + 150 <= t < restart_at + 210:
            return 100.0 * (t - restart_at - 135) / 75  # workers reconnecting
        return traffic(t)

    states = feed(bank, frozen, 4 * 3600, fleet)
    assert not any(state.tripped for state in states)
    dip = states[int(restart_at // INTERVAL)]
    assert dip.ratio == (0.0 if dip.armed else None)
    armed_at = states[240].steady  # the first sample after warm-up
    assert armed_at == pytest.approx(100.0, rel=0.02)
    for state in states[240:]:
        assert state.steady == pytest.approx(armed_at, rel=0.002)


def test_min_streams_keeps_a_tiny_peer_from_tripping(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    warm(bank, frozen, 3.0)
    states = feed(bank, frozen, 3600, 9.0)  # 3x, but under min_streams
    assert not any(state.tripped for state in states)
    assert states[0] == WireState(3.0, False, 3.0, 0.0, True)
    assert bank.observe(PEER, WATCH, 10.0).tripped  # the floor is inclusive


def test_a_peer_with_no_streams_has_no_ratio_and_trips_at_min_streams(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    warm(bank, frozen, 0.0)
    assert bank.observe(PEER, WATCH, 9.0) == WireState(0.0, False, None, 0.0, True)
    frozen.tick(INTERVAL)
    assert bank.observe(PEER, WATCH, 10.0).tripped


def test_a_new_normal_below_the_threshold_is_absorbed_at_the_documented_rate(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    """A step to 1.5x: after half a window the median moves, then the steady state closes
    1 - e^-(t / adapt) of the gap (adapt = 1 day)."""
    warm(bank, frozen)
    states = feed(bank, frozen, 86400, 150.0, interval=60.0)
    assert not any(state.tripped for state in states)
    assert states[29].steady == 100.0  # the median has not moved yet (29 of 60 minutes)
    assert states[31].steady is not None
    assert states[31].steady > 100.0
    expected = 150.0 - 50.0 * math.exp(-(86400 - 1800) / DEFAULTS.adapt)
    final = bank.observe(PEER, WATCH, 150.0).steady
    assert final == pytest.approx(expected, abs=0.3)  # ~131.2: 63 % of the gap in a day
    feed(bank, frozen, 4 * 86400, 150.0, interval=60.0)
    assert bank.observe(PEER, WATCH, 150.0).steady == pytest.approx(150.0, rel=0.01)


def test_gradual_growth_to_a_genuine_new_normal_is_followed_without_tripping(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    """Growth from 100 to 220 over two days (+2.5 %/h): more than 2x the old steady state in
    the end, but slow enough that the steady state follows."""
    warm(bank, frozen, noisy(100.0, seed=1))
    grow = noisy(1.0, seed=2)
    ramp = 2 * 86400

    states = feed(
        bank, frozen, ramp + 3 * 86400, lambda t: (100 + 120 * min(t, ramp) / ramp) * grow(t), 60
    )
    assert not any(state.tripped for state in states)
    assert max(state.ratio or 0 for state in states) < 1.8
    assert states[-1].steady == pytest.approx(220.0, rel=0.03)


def test_a_leak_that_doubles_within_hours_still_trips(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    """The other side of the rate: 100 -> 300 streams over six hours is not learned away."""
    warm(bank, frozen)
    states = feed(bank, frozen, 6 * 3600, lambda t: 100 + 200 * t / (6 * 3600))
    first = next(i for i, state in enumerate(states) if state.tripped)
    assert 3 * 3600 < first * INTERVAL < 4 * 3600
    assert states[first].steady is not None
    assert states[first].steady < 110.0
    assert all(state.tripped for state in states[first:])


def test_a_clock_stepping_back_does_not_make_durations_negative(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    warm(bank, frozen)
    assert bank.observe(PEER, WATCH, 300.0).tripped
    frozen.tick(-120)
    assert bank.observe(PEER, WATCH, 300.0).tripped_for == 0.0
    frozen.tick(150)
    assert bank.observe(PEER, WATCH, 300.0).tripped_for == 30.0


# --- persistence ----------------------------------------------------------------------------


def test_a_watchdog_restart_keeps_the_baseline_and_the_armed_wire(
    bank: TripwireBank, frozen: FrozenDateTimeFactory, tmp_path: Path
) -> None:
    warm(bank, frozen, noisy(100.0))
    feed(bank, frozen, 600, noisy(100.0, seed=3))
    feed(bank, frozen, 600, 40.0, signal=CONNS)
    learned = bank.state(PEER, WATCH)
    assert learned is not None
    assert learned.armed

    StateStore(tmp_path / "state").save(bank.to_dict())
    frozen.tick(120)  # watchdog down for two minutes

    restarted = TripwireBank(DEFAULTS)
    assert restarted.load_dict(StateStore(tmp_path / "state").load() or {}, max_age=3600) == []
    assert restarted.state(PEER, WATCH) == learned
    # Still warming up, not restarted: first seen 720 s before this state, two minutes down.
    assert restarted.state(PEER, CONNS) == warming(DEFAULTS.warmup - 720)
    state = restarted.observe(PEER, WATCH, 100.0)
    assert state.armed
    assert state.steady == pytest.approx(learned.steady, rel=1e-3)
    frozen.tick(INTERVAL)
    assert restarted.observe(PEER, WATCH, 2.1 * (learned.steady or 0)).tripped


def test_a_tripped_wire_stays_tripped_across_a_restart_and_its_hold_starts_over(
    bank: TripwireBank, frozen: FrozenDateTimeFactory, tmp_path: Path
) -> None:
    warm(bank, frozen)
    bank.observe(PEER, WATCH, 300.0)  # trips at T
    frozen.tick(INTERVAL)
    feed(bank, frozen, 210, 100.0)  # 210 s of the 300 s hold
    store = StateStore(tmp_path)
    store.save(bank.to_dict())
    frozen.tick(60)

    restarted = TripwireBank(DEFAULTS)
    assert restarted.load_dict(store.load() or {}, max_age=3600) == []
    assert restarted.state(PEER, WATCH) == WireState(100.0, True, 1.0, 285.0, True)
    states = feed(restarted, frozen, 600, 100.0)
    assert [state.tripped for state in states] == [True] * 20 + [False] * 20


def test_stale_state_is_relearned(
    bank: TripwireBank, frozen: FrozenDateTimeFactory, tmp_path: Path
) -> None:
    bank.observe("etcd-old", WATCH, 50.0)  # seen once, long ago
    warm(bank, frozen)
    store = StateStore(tmp_path)
    store.save(bank.to_dict())
    frozen.tick(600)

    restarted = TripwireBank(DEFAULTS)
    warnings = restarted.load_dict(store.load() or {}, max_age=3600)
    assert warnings == [
        "etcd-old/watch_streams: last sample 4200 s ago (more than 3600 s), relearning"
    ]
    assert restarted.state("etcd-old", WATCH) is None
    assert restarted.state(PEER, WATCH) is not None

    frozen.tick(3600)  # now everything is older than max_age
    again = TripwireBank(DEFAULTS)
    assert len(again.load_dict(store.load() or {}, max_age=3600)) == 2
    assert again.observe(PEER, WATCH, 100.0) == warming(DEFAULTS.warmup)


def test_unreadable_state_is_reported_wire_by_wire(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    feed(bank, frozen, 60, 100.0)
    feed(bank, frozen, 60, 100.0, peer="etcd-2")
    data = json.loads(json.dumps(bank.to_dict()))
    data["wires"]["etcd-2"][WATCH]["ring"] = "garbage"

    restarted = TripwireBank(DEFAULTS)
    warnings = restarted.load_dict(data, max_age=3600)
    assert warnings == [
        "etcd-2/watch_streams: unreadable state (ring: expected a list of [start, mean] pairs), "
        "relearning"
    ]
    assert restarted.peers() == [PEER]


@pytest.mark.parametrize(
    ("data", "warning"),
    [
        ([], "tripwire state ignored: expected an object, got list"),
        ({"version": 3, "bucket": 60.0, "wires": {}}, "version 3 with 60.0 s buckets"),
        ({"version": 1, "bucket": 30.0, "wires": {}}, "version 1 with 30.0 s buckets"),
        ({"version": 1, "bucket": 60.0, "wires": []}, "'wires' is not an object"),
        ({"version": 1, "bucket": 60.0, "wires": {"p": 1}}, "p: ignored"),
    ],
)
def test_foreign_state_is_ignored_with_a_warning(data: object, warning: str) -> None:
    bank = TripwireBank(DEFAULTS)
    warnings = bank.load_dict(data, max_age=60)  # type: ignore[arg-type]
    assert len(warnings) == 1
    assert warning in warnings[0]
    assert bank.peers() == []


def test_state_saved_by_a_clock_that_ran_ahead_is_kept_as_just_saved(
    frozen: FrozenDateTimeFactory,
) -> None:
    bank = TripwireBank(DEFAULTS, boot="boot-1")
    feed(bank, frozen, 60, 100.0)
    data = bank.to_dict()
    frozen.tick(-3600)  # the clock ran ahead when it was saved, and was corrected by now
    restarted = TripwireBank(DEFAULTS, boot="boot-2")  # after a reboot: only wall time spans it
    assert restarted.load_dict(data, max_age=3600) == [
        "tripwire state saved 3600 s in the future by the wall clock (a clock that ran ahead "
        "and was corrected?): taken as just saved"
    ]
    assert restarted.peers() == [PEER]


def test_forget_drops_every_wire_of_a_peer(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    feed(bank, frozen, 60, 100.0)
    feed(bank, frozen, 60, 10.0, signal=CONNS)
    feed(bank, frozen, 60, 100.0, peer="etcd-2")
    bank.forget(PEER)
    bank.forget("never-seen")
    assert bank.state(PEER, WATCH) is None
    assert bank.state(PEER, CONNS) is None
    assert list(bank.to_dict()["wires"]) == ["etcd-2"]


def test_to_dict_is_json_and_survives_a_round_trip(
    bank: TripwireBank, frozen: FrozenDateTimeFactory
) -> None:
    warm(bank, frozen, noisy(100.0))
    feed(bank, frozen, 90, 400.0)
    data = bank.to_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data

    restarted = TripwireBank(DEFAULTS)
    assert restarted.load_dict(data, max_age=60) == []
    assert restarted.to_dict() == data


# --- properties -----------------------------------------------------------------------------

samples = st.lists(
    st.tuples(st.sampled_from([15.0, 15.0, 15.0, 60.0, 400.0]), st.floats(0, 400)),
    min_size=1,
    max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(history=samples)
def test_the_wire_obeys_its_rules_for_any_history(history: list[tuple[float, float]]) -> None:
    s = TripwireSettings(warmup=600.0, hold=60.0)
    now = [1_700_000_000.0]
    wire = Wire(s, clock=lambda: now[0])
    seen: list[tuple[float, float]] = []
    previous = NOT_ARMED
    for gap, value in history:
        now[0] += gap
        state = wire.observe(value)
        seen.append((now[0], value))
        assert state.armed == (state.steady is not None) == (state.warmup_left is None)
        assert state.armed or 0 <= (state.warmup_left or 0) <= s.warmup
        assert state.tripped_for >= 0
        assert state.tripped or state.tripped_for == 0
        if state.tripped and not previous.tripped:  # a trip
            assert state.steady is not None
            assert value > s.factor * state.steady
            assert value >= s.min_streams
            assert state.tripped_for == 0
        if previous.tripped:
            assert state.steady == previous.steady  # frozen while tripped
        if previous.tripped and not state.tripped:  # a clear: hold seconds under clear_factor
            assert state.steady is not None
            run_start = now[0]
            for t, v in reversed(seen):
                if v >= s.clear_factor * state.steady:
                    break
                run_start = t
            assert now[0] - run_start >= s.hold
        previous = state
    copy = Wire.from_dict(json.loads(json.dumps(wire.to_dict())), s, lambda: now[0])
    assert copy.to_dict() == wire.to_dict()

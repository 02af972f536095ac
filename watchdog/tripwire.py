"""Steady-state learning and the watch tripwire: pure logic, clocks injected, no I/O.

One wire per peer and signal. Samples are averaged into one-minute buckets and the last
``window`` seconds of buckets are kept. When ``warmup`` is over, the steady state is the median
of those buckets, so a burst or a dip that lasts less than half the window does not move it.
After that, the steady state follows the window median through a first-order lag with time
constant ``adapt`` (counted in minutes of data seen): it closes 1 - e^-1 = 63 % of the gap to a
lasting new level in ``adapt`` seconds (default one day, about 4 % per hour). A fleet restart,
with a few minutes near zero, moves it by less than 0.1 %.
The wire trips when value > factor x steady and value >= min_streams. It clears only after the
value has stayed below clear_factor x steady for ``hold`` seconds. While it is tripped the wire
learns nothing, so an anomaly never becomes the new normal.

Clocks: every duration (warm-up, window, hold) is measured on a monotonic clock, so a wall
clock stepped by NTP or by hand neither freezes the hold timer nor restarts a warm-up. The
saved state holds times relative to the moment of saving plus both clocks at that moment
(and the boot id): a restart on the same boot measures the downtime on the monotonic clock,
a restart after a reboot on the wall clock.

Identity: the saved state names the etcd cluster and each peer's member id. State of another
cluster, or of a peer whose member id changed (a replaced member), is never applied.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "BUCKET",
    "MAX_SAMPLE",
    "SIGNALS",
    "TripwireBank",
    "TripwireSettings",
    "Wire",
    "WireState",
    "boot_id",
    "saved_state_problem",
]

SIGNALS = ("watch_streams", "client_connections")
BUCKET = 60.0  # seconds of samples averaged into one point of the window
STATE_VERSION = 2  # version of TripwireBank.to_dict(); 1 (absolute wall times) still loads
# Larger samples are clamped: no etcd holds 2^53 streams, and bounded samples keep every sum,
# mean and saved number finite (a page saying 1e308 must not end persistence).
MAX_SAMPLE = float(2**53)
MAX_BUCKET_COUNT = 1_000_000  # samples in one bucket, far above any poll rate
MAX_SPAN = 10 * 365 * 86400.0  # how far back a saved time may lie, in seconds
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _wall_clock() -> float:
    """Return time.time(), looked up at each call."""
    # A default argument of `time.time` would bind the real function and escape freezegun.
    return time.time()


def _monotonic_clock() -> float:
    """Return time.monotonic(), looked up at each call (freezegun moves it too)."""
    return time.monotonic()


def boot_id() -> str | None:
    """This boot's id (Linux), or None: monotonic times are comparable only within a boot."""
    try:
        return BOOT_ID.read_text(encoding="ascii").strip()[:64] or None
    except (OSError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class TripwireSettings:
    """Tunables of every wire; the defaults match the config contract."""

    factor: float = 2.0  # trip above factor x steady state
    warmup: float = 3600.0  # seconds a wire observes before it arms (0: at its second sample)
    clear_factor: float = 1.5  # clear below clear_factor x steady state...
    hold: float = 300.0  # ...held for this many seconds
    min_streams: float = 10.0  # never trip below this value
    window: float = 3600.0  # seconds of buckets the median is taken over
    adapt: float = 86400.0  # time constant of the steady state after warm-up

    def __post_init__(self) -> None:
        problems = [
            f"{f.name} must be a finite number, got {getattr(self, f.name)!r}"
            for f in fields(self)
            if not _is_number(getattr(self, f.name))
        ]
        if not problems:
            problems = self._range_problems()
        if problems:
            raise ValueError("invalid tripwire settings: " + "; ".join(problems))

    def _range_problems(self) -> list[str]:
        checks = [
            (self.factor > 1, f"factor must be > 1, got {self.factor}"),
            (
                0 < self.clear_factor <= self.factor,
                f"clear_factor must be > 0 and <= factor ({self.factor}), got {self.clear_factor}",
            ),
            (self.warmup >= 0, f"warmup must be >= 0 seconds, got {self.warmup}"),
            (self.hold >= 0, f"hold must be >= 0 seconds, got {self.hold}"),
            (self.min_streams >= 0, f"min_streams must be >= 0, got {self.min_streams}"),
            (self.window >= BUCKET, f"window must be >= {BUCKET:g} seconds, got {self.window}"),
            (self.adapt > 0, f"adapt must be > 0 seconds, got {self.adapt}"),
        ]
        return [message for ok, message in checks if not ok]


@dataclass(frozen=True, slots=True)
class WireState:
    """What one wire says after its latest sample."""

    steady: float | None  # None until warm-up ends
    tripped: bool
    ratio: float | None  # value / steady; None without a steady state or when it is 0
    tripped_for: float  # seconds the wire has been tripped (0 when clear)
    armed: bool  # warm-up over
    # Seconds of warm-up left as of the sample (0: arms at the next one); None once armed.
    warmup_left: float | None = None


class Wire:
    """The steady state and the wire of one peer for one signal.

    `clock` measures durations: a monotonic clock (any clock that never steps back).
    """

    def __init__(
        self, settings: TripwireSettings, clock: Callable[[], float] = _monotonic_clock
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._alpha = -math.expm1(-BUCKET / settings.adapt)  # weight of one bucket of data
        self._first_seen: float | None = None  # start of the current warm-up
        self._last_seen: float | None = None
        self._last_value: float | None = None
        self._steady: float | None = None
        self._tripped_since: float | None = None
        self._below_since: float | None = None  # tripped, and under clear_factor since
        # Closed buckets, oldest first: their starts and their means (apart, so that the
        # median is one C-level sort).
        self._starts: deque[float] = deque()
        self._means: deque[float] = deque()
        self._bucket: tuple[float, float, int] | None = None  # (start, sum, count) of this one
        self.clamped = 0  # samples above MAX_SAMPLE, counted and clamped

    @property
    def last_seen(self) -> float | None:
        """When the last sample arrived (on the wire's clock)."""
        return self._last_seen

    def observe(self, value: float) -> WireState:
        """Feed one sample taken now; return the wire's state after it."""
        if not _is_number(value) or value < 0:
            raise ValueError(f"a tripwire sample must be a finite number >= 0, got {value!r}")
        value = float(value)
        if value > MAX_SAMPLE:
            value = MAX_SAMPLE
            self.clamped += 1
        now = self._clock()
        if self._last_seen is not None:
            # Belt and braces: an injected clock that steps back must not reorder buckets.
            now = max(now, self._last_seen)
            if self._steady is None and now - self._last_seen > self.settings.window:
                self._restart_warmup()  # what it learned has left the window
        if self._first_seen is None:
            self._first_seen = now
        self._roll(now)
        if self._steady is None and now - self._first_seen >= self.settings.warmup:
            self._steady = self._median(include_current=True)
        if self._steady is not None:
            self._judge(value, now)
        if self._tripped_since is None:
            self._learn(value, now)
        self._last_seen, self._last_value = now, value
        return self._state(now)

    def state(self) -> WireState:
        """The state as of now, for the last sample."""
        now = self._clock()
        if self._last_seen is not None:
            now = max(now, self._last_seen)
        return self._state(now)

    def _state(self, now: float) -> WireState:
        steady, value = self._steady, self._last_value
        ratio = value / steady if steady and value is not None else None
        since, first = self._tripped_since, self._first_seen
        return WireState(
            steady=steady,
            tripped=since is not None,
            ratio=ratio,
            tripped_for=0.0 if since is None else now - since,
            armed=steady is not None,
            warmup_left=(None if steady is not None or first is None
                         else max(0.0, self.settings.warmup - (now - first))),
        )

    def _judge(self, value: float, now: float) -> None:
        settings, steady = self.settings, self._steady
        assert steady is not None
        if self._tripped_since is None:
            if value > settings.factor * steady and value >= settings.min_streams:
                self._tripped_since, self._below_since = now, None
        elif value < settings.clear_factor * steady:
            if self._below_since is None:
                self._below_since = now
            if now - self._below_since >= settings.hold:
                self._tripped_since = self._below_since = None
        else:
            self._below_since = None

    def _learn(self, value: float, now: float) -> None:
        if self._bucket is None:
            self._bucket = (now, value, 1)
        else:
            start, total, count = self._bucket
            self._bucket = (start, total + value, count + 1)

    def _roll(self, now: float) -> None:
        """Close the current bucket once BUCKET seconds have passed since it opened; adapt."""
        # Buckets open at their first sample rather than on a clock-aligned minute: after a
        # restart the saved times are shifted onto a new monotonic clock, with no grid to keep.
        if self._bucket is not None and now - self._bucket[0] >= BUCKET:
            start, total, count = self._bucket
            self._starts.append(start)
            self._means.append(total / count)
            self._bucket = None
            if self._steady is not None and self._tripped_since is None:
                target = self._median(include_current=False)
                assert target is not None
                self._steady += self._alpha * (target - self._steady)
        horizon = now - self.settings.window
        while self._starts and self._starts[0] + BUCKET <= horizon:
            self._starts.popleft()
            self._means.popleft()

    def _median(self, include_current: bool) -> float | None:
        values = list(self._means)
        if include_current and self._bucket is not None:
            _, total, count = self._bucket
            values.append(total / count)
        return statistics.median(values) if values else None

    def _restart_warmup(self) -> None:
        self._first_seen = None
        self._starts.clear()
        self._means.clear()
        self._bucket = None

    def to_dict(self, origin: float = 0.0) -> dict[str, Any]:
        """JSON-serialisable state, every time given relative to `origin` (on the wire's
        clock); the clear-hold timer is not kept (it must be seen)."""

        def rel(t: float | None) -> float | None:
            return None if t is None else t - origin

        return {
            "first_seen": rel(self._first_seen),
            "last_seen": rel(self._last_seen),
            "last_value": self._last_value,
            "steady": self._steady,
            "tripped_since": rel(self._tripped_since),
            "ring": [
                [start - origin, mean]
                for start, mean in zip(self._starts, self._means, strict=True)
            ],
            "bucket": (
                [self._bucket[0] - origin, self._bucket[1], self._bucket[2]]
                if self._bucket is not None
                else None
            ),
        }

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        settings: TripwireSettings,
        clock: Callable[[], float] = _monotonic_clock,
        origin: float = 0.0,
    ) -> Wire:
        """Rebuild a wire from to_dict(origin); ValueError names the first bad field.

        Every number is checked: finite, and within what a real wire can hold."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a wire must be an object, got {type(data).__name__}")
        wire = cls(settings, clock)
        now = clock()
        first_seen = _time(data, "first_seen", origin, now)
        last_seen = _time(data, "last_seen", origin, now)
        assert first_seen is not None and last_seen is not None
        if first_seen > last_seen:
            raise ValueError("first_seen: after last_seen")
        wire._first_seen, wire._last_seen = first_seen, last_seen
        wire._last_value = _sample(data, "last_value")
        wire._steady = _sample(data, "steady")
        wire._tripped_since = _time(data, "tripped_since", origin, now, optional=True)
        if wire._tripped_since is not None:
            if wire._steady is None:
                raise ValueError("tripped_since: a wire without a steady state cannot be tripped")
            if wire._tripped_since > last_seen:
                raise ValueError("tripped_since: after last_seen")
        ring = data.get("ring")
        if not isinstance(ring, list):
            raise ValueError("ring: expected a list of [start, mean] pairs")
        keep = math.ceil(settings.window / BUCKET) + 1  # more has left the window anyway
        for index, pair in enumerate(ring[-keep:], start=max(0, len(ring) - keep)):
            start, mean = _pair(pair, f"ring[{index}]", 2)
            _check_time(start + origin, now, f"ring[{index}]")
            _check_sample(mean, f"ring[{index}]")
            if wire._starts and start + origin <= wire._starts[-1]:
                raise ValueError(f"ring[{index}]: buckets must be in increasing time order")
            wire._starts.append(start + origin)
            wire._means.append(mean)
        if data.get("bucket") is not None:
            start, total, count = _pair(data["bucket"], "bucket", 3)
            _check_time(start + origin, now, "bucket")
            if not 1 <= count <= MAX_BUCKET_COUNT or count != int(count):
                raise ValueError(f"bucket: count must be a positive integer, got {count}")
            if not 0 <= total <= MAX_SAMPLE * count:
                raise ValueError(f"bucket: sum {total} out of range")
            wire._bucket = (start + origin, total, int(count))
        return wire


class TripwireBank:
    """Every wire of the daemon, keyed by peer and signal.

    `clock` is the wall clock (only to date saved state), `monotonic` measures every duration.
    Not thread-safe: call to_dict() and load_dict() on the thread that calls observe(), and hand
    the plain dict to another thread for saving.
    """

    def __init__(
        self,
        settings: TripwireSettings,
        clock: Callable[[], float] = _wall_clock,
        *,
        monotonic: Callable[[], float] = _monotonic_clock,
        boot: str | Callable[[], str | None] | None = boot_id,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._monotonic = monotonic
        self._boot = boot() if callable(boot) else boot
        self._wires: dict[str, dict[str, Wire]] = {}
        self.cluster_id: str | None = None  # the etcd cluster the wires belong to, once known
        self._member_ids: dict[str, str] = {}  # peer -> member id, once known
        self._unconfirmed_cluster: str | None = None  # of loaded state, until identify()
        self._unconfirmed: set[str] = set()  # peers loaded under _unconfirmed_cluster
        self._clamped_gone = 0  # clamped samples of wires since forgotten
        self._warnings: list[str] = []  # identify()'s, until drain_warnings()

    @property
    def clamped_samples(self) -> int:
        """Samples above MAX_SAMPLE seen so far (clamped, never learned as they were)."""
        return self._clamped_gone + sum(
            wire.clamped for wires in self._wires.values() for wire in wires.values()
        )

    def observe(self, peer: str, signal: str, value: float) -> WireState:
        """Feed one sample of one signal of one peer."""
        wire = self._wires.get(peer, {}).get(signal)
        if wire is not None:
            return wire.observe(value)
        wire = Wire(self.settings, self._monotonic)
        state = wire.observe(value)  # a bad first sample raises before the wire is kept
        self._wires.setdefault(peer, {})[signal] = wire
        return state

    def state(self, peer: str, signal: str) -> WireState | None:
        """The wire's current state, or None if it has never seen a sample."""
        wire = self._wires.get(peer, {}).get(signal)
        return wire.state() if wire is not None else None

    def peers(self) -> list[str]:
        """Peers with at least one wire, sorted."""
        return sorted(self._wires)

    def wire_count(self) -> int:
        """How many wires the bank holds (e.g. to log how many were restored)."""
        return sum(len(wires) for wires in self._wires.values())

    def forget(self, peer: str) -> None:
        """Drop every wire of a peer (it left the cluster)."""
        for wire in self._wires.pop(peer, {}).values():
            self._clamped_gone += wire.clamped
        self._member_ids.pop(peer, None)
        self._unconfirmed.discard(peer)

    def identify(self, cluster_id: str | None, members: Mapping[str, str]) -> list[str]:
        """Say which cluster the peers belong to and each peer's member id (call it after
        each member discovery, before the poll's observe()). Wires of another cluster, or of
        a peer whose member id changed, are dropped; returns one warning for each drop."""
        warnings: list[str] = []
        cluster_id = cluster_id or None
        if cluster_id is not None:
            theirs = self._unconfirmed_cluster
            if theirs is not None and theirs != cluster_id:
                for peer in sorted(self._unconfirmed):
                    self.forget(peer)
                warnings.append(f"foreign state discarded: learned on cluster {theirs}, "
                                f"this is cluster {cluster_id}")
            if self.cluster_id is not None and self.cluster_id != cluster_id:
                warnings.append(f"the endpoints now answer for cluster {cluster_id}, not "
                                f"{self.cluster_id}: every wire learns again")
                for peer in list(self._wires):
                    self.forget(peer)
            self.cluster_id = cluster_id
            self._unconfirmed_cluster = None
            self._unconfirmed.clear()
        for peer, member_id in members.items():
            if not member_id:
                continue
            known = self._member_ids.get(peer)
            if known is not None and known != member_id and peer in self._wires:
                self.forget(peer)
                warnings.append(f"{peer}: member id {known} is now {member_id} (a replaced "
                                "member?), relearning")
            self._member_ids[peer] = member_id
        self._warnings += warnings
        return warnings

    def drain_warnings(self) -> list[str]:
        """identify()'s warnings since the last call (for whoever logs: the bank does no I/O)."""
        warnings, self._warnings = self._warnings, []
        return warnings

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state of every wire, with finite numbers only."""
        mono = self._monotonic()
        wires: dict[str, dict[str, Any]] = {}
        for peer, signals in list(self._wires.items()):
            for signal, wire in list(signals.items()):
                data = wire.to_dict(origin=mono)
                if _all_finite(data):  # always, with clamped samples; a bug must not block saves
                    wires.setdefault(peer, {})[signal] = data
        return {
            "version": STATE_VERSION,
            "bucket": BUCKET,
            "saved_at": self._clock(),
            "saved_monotonic": mono,
            "boot_id": self._boot,
            "cluster_id": self.cluster_id or self._unconfirmed_cluster,
            "members": {p: m for p, m in self._member_ids.items() if p in wires},
            "wires": wires,
        }

    def load_dict(
        self, data: Mapping[str, Any], max_age: float, *, cluster_id: str | None = None
    ) -> list[str]:
        """Restore wires from to_dict(), replacing wires of the same peer and signal.

        Wires whose last sample is older than max_age seconds, or that cannot be read, are
        left out (they learn again from scratch). State of a cluster other than `cluster_id`
        is left out whole; with `cluster_id` None the check waits for identify(). Returns one
        warning per thing left out; never raises on bad data.
        """
        if not _is_number(max_age) or max_age < 0:
            raise ValueError(f"max_age must be a finite number >= 0, got {max_age!r}")
        try:
            return self._load(data, max_age, cluster_id)
        except (ValueError, TypeError, OverflowError, RecursionError) as error:
            return [f"tripwire state ignored: unreadable ({type(error).__name__})"]

    def _load(
        self, data: Mapping[str, Any], max_age: float, cluster_id: str | None
    ) -> list[str]:
        if not isinstance(data, Mapping):
            return [f"tripwire state ignored: expected an object, got {type(data).__name__}"]
        version = data.get("version")
        if isinstance(version, bool) or version not in (1, STATE_VERSION) or \
                data.get("bucket") != BUCKET:
            return [
                f"tripwire state ignored: version {version!r} with "
                f"{data.get('bucket')!r} s buckets, expected {STATE_VERSION} with {BUCKET:g} s"
            ]
        peers = data.get("wires")
        if not isinstance(peers, Mapping):
            return ["tripwire state ignored: 'wires' is not an object"]
        theirs = data.get("cluster_id")
        if theirs is not None and not isinstance(theirs, str):
            return ["tripwire state ignored: 'cluster_id' is not a string"]
        if theirs and cluster_id and theirs != cluster_id:
            return [f"foreign state discarded: learned on cluster {theirs}, this is cluster "
                    f"{cluster_id}"]
        members = data.get("members") or {}
        if not isinstance(members, Mapping):
            return ["tripwire state ignored: 'members' is not an object"]
        warnings: list[str] = []
        origin = self._origin(data, version, warnings)
        if origin is None:
            return warnings
        now = self._monotonic()
        loaded: set[str] = set()
        for peer, signals in peers.items():
            if not isinstance(signals, Mapping):
                warnings.append(f"{peer}: ignored, expected an object of signals")
                continue
            for signal, raw in signals.items():
                try:
                    wire = Wire.from_dict(raw, self.settings, self._monotonic, origin)
                except (ValueError, TypeError, OverflowError) as error:
                    warnings.append(f"{peer}/{signal}: unreadable state ({error}), relearning")
                    continue
                age = now - (wire.last_seen or 0.0)
                if age > max_age:
                    warnings.append(
                        f"{peer}/{signal}: last sample {age:.0f} s ago "
                        f"(more than {max_age:.0f} s), relearning"
                    )
                elif age < -BUCKET:
                    warnings.append(
                        f"{peer}/{signal}: last sample {-age:.0f} s in the future, relearning"
                    )
                else:
                    self._wires.setdefault(str(peer), {})[str(signal)] = wire
                    loaded.add(str(peer))
        for peer in loaded:
            member_id = members.get(peer)
            if isinstance(member_id, str) and member_id:
                self._member_ids[peer] = member_id
        if theirs and not cluster_id and loaded:
            self._unconfirmed_cluster = theirs
            self._unconfirmed |= loaded
        elif cluster_id:
            self.cluster_id = cluster_id
        return warnings

    def _origin(self, data: Mapping[str, Any], version: int, warnings: list[str]
                ) -> float | None:
        """Where the saved times' zero lies on this process's monotonic clock."""
        mono, wall = self._monotonic(), self._clock()
        if version == 1:  # absolute wall-clock times
            return mono - wall
        saved_at, saved_mono = data.get("saved_at"), data.get("saved_monotonic")
        if not _is_number(saved_at) or not _is_number(saved_mono):
            warnings.append("tripwire state ignored: 'saved_at' or 'saved_monotonic' is not "
                            "a finite number")
            return None
        elapsed = mono - float(saved_mono)
        if data.get("boot_id") is None or data.get("boot_id") != self._boot or elapsed < 0:
            elapsed = wall - float(saved_at)  # another boot: only the wall clock spans it
            if elapsed < -BUCKET:
                warnings.append(
                    f"tripwire state saved {-elapsed:.0f} s in the future by the wall clock "
                    "(a clock that ran ahead and was corrected?): taken as just saved"
                )
            elapsed = max(elapsed, 0.0)
        return mono - elapsed


def saved_state_problem(data: Mapping[str, Any]) -> str | None:
    """For StateStore(validate=...): what makes the daemon's saved data unusable, or None.

    Judges the "tripwire" section as load_dict() would read it (every wire, every type); a
    wire that is only too old is no problem here. Never raises."""
    section = data.get("tripwire") if isinstance(data, Mapping) else data
    if section is None:
        return None
    bank = TripwireBank(TripwireSettings(), boot=None)
    for warning in bank.load_dict(section, max_age=MAX_SPAN):
        if "unreadable" in warning or "ignored" in warning:
            return warning
    return None


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _all_finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return all(_all_finite(item) for item in value)
    return True


def _number(data: Mapping[str, Any], key: str, optional: bool = False) -> float | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not _is_number(value):
        raise ValueError(f"{key}: expected a finite number, got {_short(value)}")
    return float(value)


def _check_time(value: float, now: float, where: str) -> None:
    if not math.isfinite(value) or abs(value - now) > MAX_SPAN:
        raise ValueError(f"{where}: a time {value - now:g} s away from now")


def _time(data: Mapping[str, Any], key: str, origin: float, now: float,
          optional: bool = False) -> float | None:
    value = _number(data, key, optional=optional)
    if value is None:
        return None
    _check_time(value + origin, now, key)
    return value + origin


def _check_sample(value: float, where: str) -> None:
    if not 0 <= value <= MAX_SAMPLE:
        raise ValueError(f"{where}: {value:g} is not a sample in [0, {MAX_SAMPLE:g}]")


def _sample(data: Mapping[str, Any], key: str) -> float | None:
    value = _number(data, key, optional=True)
    if value is not None:
        _check_sample(value, key)
    return value


def _pair(raw: object, where: str, size: int) -> tuple[float, ...]:
    if not isinstance(raw, list) or len(raw) != size or not all(map(_is_number, raw)):
        raise ValueError(f"{where}: expected {size} finite numbers, got {_short(raw)}")
    return tuple(float(item) for item in raw)


def _short(value: object) -> str:
    """A repr that stays short, whatever a hostile file holds."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints beyond the str() digit limit, deep nesting
        return f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."

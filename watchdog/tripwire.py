"""Steady-state learning and the watch tripwire: pure logic, clock injected, no I/O.

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
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "BUCKET",
    "SIGNALS",
    "TripwireBank",
    "TripwireSettings",
    "Wire",
    "WireState",
]

SIGNALS = ("watch_streams", "client_connections")
BUCKET = 60.0  # seconds of samples averaged into one point of the window
STATE_VERSION = 1  # version of TripwireBank.to_dict()


def _wall_clock() -> float:
    """Return time.time(), looked up at each call."""
    # A default argument of `time.time` would bind the real function and escape freezegun.
    return time.time()


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


class Wire:
    """The steady state and the wire of one peer for one signal."""

    def __init__(
        self, settings: TripwireSettings, clock: Callable[[], float] = _wall_clock
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

    @property
    def last_seen(self) -> float | None:
        """When the last sample arrived."""
        return self._last_seen

    def observe(self, value: float) -> WireState:
        """Feed one sample taken now; return the wire's state after it."""
        if not _is_number(value) or value < 0:
            raise ValueError(f"a tripwire sample must be a finite number >= 0, got {value!r}")
        value = float(value)
        now = self._clock()
        if self._last_seen is not None:
            # A wall clock stepped back (NTP) must not reorder buckets or shorten durations.
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
        since = self._tripped_since
        return WireState(
            steady=steady,
            tripped=since is not None,
            ratio=ratio,
            tripped_for=0.0 if since is None else now - since,
            armed=steady is not None,
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
            self._bucket = (now - now % BUCKET, value, 1)
        else:
            start, total, count = self._bucket
            self._bucket = (start, total + value, count + 1)

    def _roll(self, now: float) -> None:
        """Close the current bucket once a sample falls in a later minute; adapt on it."""
        if self._bucket is not None and self._bucket[0] != now - now % BUCKET:
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; the clear-hold timer is not kept (it must be seen)."""
        return {
            "first_seen": self._first_seen,
            "last_seen": self._last_seen,
            "last_value": self._last_value,
            "steady": self._steady,
            "tripped_since": self._tripped_since,
            "ring": [[start, mean] for start, mean in zip(self._starts, self._means, strict=True)],
            "bucket": list(self._bucket) if self._bucket is not None else None,
        }

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        settings: TripwireSettings,
        clock: Callable[[], float] = _wall_clock,
    ) -> Wire:
        """Rebuild a wire from to_dict(); ValueError names the first bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a wire must be an object, got {type(data).__name__}")
        wire = cls(settings, clock)
        wire._first_seen = _number(data, "first_seen")
        wire._last_seen = _number(data, "last_seen")
        wire._last_value = _number(data, "last_value", optional=True)
        wire._steady = _number(data, "steady", optional=True)
        wire._tripped_since = _number(data, "tripped_since", optional=True)
        if wire._steady is not None and wire._steady < 0:
            raise ValueError(f"steady: must be >= 0, got {wire._steady}")
        if wire._tripped_since is not None and wire._steady is None:
            raise ValueError("tripped_since: a wire without a steady state cannot be tripped")
        ring = data.get("ring")
        if not isinstance(ring, list):
            raise ValueError("ring: expected a list of [start, mean] pairs")
        for index, pair in enumerate(ring):
            point = _pair(pair, f"ring[{index}]", 2)
            if wire._starts and point[0] <= wire._starts[-1]:
                raise ValueError(f"ring[{index}]: buckets must be in increasing time order")
            wire._starts.append(point[0])
            wire._means.append(point[1])
        if data.get("bucket") is not None:
            start, total, count = _pair(data["bucket"], "bucket", 3)
            if count < 1 or count != int(count):
                raise ValueError(f"bucket: count must be a positive integer, got {count}")
            wire._bucket = (start, total, int(count))
        return wire


class TripwireBank:
    """Every wire of the daemon, keyed by peer and signal.

    Not thread-safe: call to_dict() and load_dict() on the thread that calls observe(), and hand
    the plain dict to another thread for saving.
    """

    def __init__(
        self, settings: TripwireSettings, clock: Callable[[], float] = _wall_clock
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._wires: dict[str, dict[str, Wire]] = {}

    def observe(self, peer: str, signal: str, value: float) -> WireState:
        """Feed one sample of one signal of one peer."""
        wire = self._wires.get(peer, {}).get(signal)
        if wire is not None:
            return wire.observe(value)
        wire = Wire(self.settings, self._clock)
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

    def forget(self, peer: str) -> None:
        """Drop every wire of a peer (it left the cluster)."""
        self._wires.pop(peer, None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state of every wire."""
        return {
            "version": STATE_VERSION,
            "bucket": BUCKET,
            "wires": {
                peer: {signal: wire.to_dict() for signal, wire in list(wires.items())}
                for peer, wires in list(self._wires.items())
            },
        }

    def load_dict(self, data: Mapping[str, Any], max_age: float) -> list[str]:
        """Restore wires from to_dict(), replacing wires of the same peer and signal.

        Wires whose last sample is older than max_age seconds, or that cannot be read, are
        left out (they learn again from scratch). Returns one warning per wire left out.
        """
        if not _is_number(max_age) or max_age < 0:
            raise ValueError(f"max_age must be a finite number >= 0, got {max_age!r}")
        if not isinstance(data, Mapping):
            return [f"tripwire state ignored: expected an object, got {type(data).__name__}"]
        if data.get("version") != STATE_VERSION or data.get("bucket") != BUCKET:
            return [
                f"tripwire state ignored: version {data.get('version')!r} with "
                f"{data.get('bucket')!r} s buckets, expected {STATE_VERSION} with {BUCKET:g} s"
            ]
        peers = data.get("wires")
        if not isinstance(peers, Mapping):
            return ["tripwire state ignored: 'wires' is not an object"]
        now, warnings = self._clock(), []
        for peer, signals in peers.items():
            if not isinstance(signals, Mapping):
                warnings.append(f"{peer}: ignored, expected an object of signals")
                continue
            for signal, raw in signals.items():
                try:
                    wire = Wire.from_dict(raw, self.settings, self._clock)
                except ValueError as error:
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
        return warnings


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(data: Mapping[str, Any], key: str, optional: bool = False) -> float | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not _is_number(value):
        raise ValueError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _pair(raw: object, where: str, size: int) -> tuple[float, ...]:
    if not isinstance(raw, list) or len(raw) != size or not all(map(_is_number, raw)):
        raise ValueError(f"{where}: expected {size} finite numbers, got {raw!r}")
    return tuple(float(item) for item in raw)

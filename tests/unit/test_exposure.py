"""Where a member's JSON gateway stalls: the fixed 250, the configured or learned limit."""

from __future__ import annotations

from dataclasses import replace

import pytest

from watchdog import events, web
from watchdog.etcd.exposure import (
    STREAM_LIMIT,
    UNLIMITED,
    PeerLimit,
    StreamLimitLearner,
    exposed,
    has_stream_flag,
    headroom,
    limit_of,
    parse_version,
    stream_limit,
    stream_limit_exposed,
)
from watchdog.etcd.promtext import PeerMetrics
from watchdog.snapshot import PeerState


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("3.4.19", True),
        ("3.4.20", False),
        ("3.4.23", False),
        ("3.4.0", True),
        ("3.5.1", True),
        ("3.5.4", True),
        ("3.5.5", False),
        ("3.5.33", False),
        ("3.6.0", False),
        ("3.7.1", False),
        ("4.0.0", False),
        ("3.3.27", True),
        ("3.2.0", True),
        ("3.0.17", True),
        ("v3.5.4", True),
        ("v3.5.5", False),
        ("3.5.5-rc.0", False),
        ("3.5.4-rc.1", True),
        ("3.5.1+build", True),
    ],
)
def test_tls_versions(version: str, expected: bool) -> None:
    assert stream_limit_exposed(version, tls=True) is expected


@pytest.mark.parametrize("version", [None, "", "unknown", "3.5", "three.five.one", "x3.5.1",
                                     "2.3.8"])
def test_unknown_versions(version: str | None) -> None:
    assert stream_limit_exposed(version, tls=True) is None


@pytest.mark.parametrize("version", ["3.4.19", "3.5.1", "3.6.0", None, "garbage"])
def test_plain_http_is_never_exposed(version: str | None) -> None:
    assert stream_limit_exposed(version, tls=False) is False


def test_parse_version() -> None:
    assert parse_version(" v3.5.12 ") == (3, 5, 12)
    assert parse_version("3.10.2") == (3, 10, 2)
    assert parse_version("3.5") is None


def test_headroom() -> None:
    assert STREAM_LIMIT == 250
    assert headroom(200, True) == 50
    assert headroom(250, True) == 0
    assert headroom(263.0, True) == -13
    assert headroom(0, True) == 250
    assert headroom(200, False) is None
    assert headroom(200, None) is None
    assert headroom(None, True) is None


# -- where the JSON gateway stalls: the server's --max-concurrent-streams ------------

@pytest.mark.parametrize(
    ("version", "flag"),
    [("3.4.19", False), ("3.4.20", True), ("3.5.4", False), ("3.5.5", True),
     ("3.6.0", True), ("3.7.1", True), ("3.3.27", False), ("garbage", None), (None, None)],
)
def test_which_releases_have_the_flag(version: str | None, flag: bool | None) -> None:
    assert has_stream_flag(version) is flag


@pytest.mark.parametrize(
    ("version", "tls", "configured", "limit"),
    [
        # Old TLS members: the fixed 250, whatever is configured (the flag does not exist).
        ("3.5.1", True, None, 250),
        ("3.5.1", True, 20, 250),
        ("3.4.19", True, None, 250),
        # Old plain members: no limit at all.
        ("3.5.1", False, None, None),
        ("3.5.1", False, 20, None),
        # Releases with the flag: the configured value, TLS or not.
        ("3.5.5", True, None, None),
        ("3.5.5", True, 20, 20),
        ("3.5.5", False, 20, 20),
        ("3.4.23", False, 100, 100),
        ("3.6.14", True, 500, 500),
        ("3.7.1", False, None, None),
        # The default (2^32-1) or anything that large is out of reach.
        ("3.6.14", False, UNLIMITED, None),
        ("3.6.14", True, 1 << 20, None),
        # Unknown version: trust what the operator configured.
        (None, True, 20, 20),
        (None, True, None, None),
    ],
)
def test_stream_limit(version: str | None, tls: bool, configured: int | None,
                      limit: int | None) -> None:
    assert stream_limit(version, tls, configured) == limit


def test_learned_limit_wins_and_gatewayless_backends_have_none() -> None:
    assert stream_limit("3.6.14", False, None, learned=37) == 37
    assert stream_limit("3.5.1", True, None, learned=240) == 240
    for backend in ("kine", "antietcd"):
        assert stream_limit("3.6.11", True, 20, learned=20, backend=backend) is None
        assert exposed(None, "3.6.11", True, backend) is False


@pytest.mark.parametrize(
    ("limit", "version", "tls", "backend", "expected"),
    [
        (250, "3.5.1", True, "etcd", True),
        (20, "3.6.14", False, "etcd", True),
        (None, "3.6.14", True, "etcd", False),
        (None, "3.5.1", False, "etcd", False),
        (None, None, True, "etcd", None),  # maybe an old TLS member
        (None, None, False, "etcd", False),
        (None, None, True, "unknown", None),
        (None, None, False, "etcd-adapter", False),
    ],
)
def test_exposed(limit: int | None, version: str | None, tls: bool, backend: str,
                 expected: bool | None) -> None:
    assert exposed(limit, version, tls, backend) is expected


def test_headroom_against_another_limit() -> None:
    assert headroom(15, True, limit=20) == 5
    assert headroom(15, True, limit=None) is None


@pytest.mark.parametrize(
    ("reported", "tls", "expected"),
    [
        (None, True, PeerLimit(250, True)),  # nothing reported: the fixed 250 of old TLS
        (None, False, PeerLimit(250, False)),
        (250, True, PeerLimit(250, True)),
        (250, False, PeerLimit(250, False)),  # configured to 250 on plain HTTP
        (1000, True, PeerLimit(1000, False)),  # configured or learned
        (120, False, PeerLimit(120, False)),
        (0, True, PeerLimit(250, True)),
    ],
)
def test_limit_of(reported: int | None, tls: bool, expected: PeerLimit) -> None:
    assert limit_of(PeerState(name="p", endpoint="e", tls=tls, stream_limit=reported)) == expected


@pytest.mark.parametrize("reported", [None, 250, 20, 1000])
def test_page_and_log_measure_headroom_against_limit_of(reported: int | None) -> None:
    metrics = replace(PeerMetrics(*([None] * 16), samples_read=0), watch_streams=19.0)
    peer = PeerState(name="p", endpoint="e", tls=True, up=True, cycle=1, exposed=True,
                     stream_limit=reported, metrics=metrics)
    limit = limit_of(peer).value
    assert f"{limit - 19} of {limit}</td>" in web._headroom_cell(peer)
    low = events._headroom_low(peer)
    assert low is not None and low[1:] == (limit - 19, limit)


def test_learner_needs_a_plateau_confirmed() -> None:
    learner = StreamLimitLearner(confirm=2)
    # Growing load, everything answers: nothing learned.
    for streams in (5, 10, 20):
        assert learner.observe(streams, json_timed_out=False, grpc_ok=True) is None
    # JSON times out while gRPC answers: the first poll at 20 is only a suspicion...
    assert learner.observe(20, json_timed_out=True, grpc_ok=True) is None
    # ...the second, with the count not grown, confirms the plateau as the limit.
    assert learner.observe(20, json_timed_out=True, grpc_ok=True) == 20
    # Recovery keeps what was learned; more streams than the "limit" disproves it.
    assert learner.observe(12, json_timed_out=False, grpc_ok=True) == 20
    assert learner.observe(21, json_timed_out=False, grpc_ok=True) is None


def test_learner_ignores_what_is_not_a_gateway_stall() -> None:
    learner = StreamLimitLearner(confirm=2)
    # Both APIs failing is an outage, not a full gateway connection.
    for _ in range(3):
        assert learner.observe(30, json_timed_out=True, grpc_ok=False) is None
    # A count still growing is not a plateau.
    assert learner.observe(31, json_timed_out=True, grpc_ok=True) is None
    assert learner.observe(32, json_timed_out=True, grpc_ok=True) is None
    # No count (no metrics page), NaN or 0 teach nothing.
    for streams in (None, float("nan"), 0):
        assert learner.observe(streams, json_timed_out=True, grpc_ok=True) is None
    # A stall interrupted by a healthy poll starts over.
    learner = StreamLimitLearner(confirm=2)
    learner.observe(40, json_timed_out=True, grpc_ok=True)
    learner.observe(40, json_timed_out=False, grpc_ok=True)
    assert learner.observe(40, json_timed_out=True, grpc_ok=True) is None
    assert learner.observe(39, json_timed_out=True, grpc_ok=True) == 40

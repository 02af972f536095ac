"""Which etcd versions are exposed to the 250-stream JSON-gateway stall."""

from __future__ import annotations

import pytest

from watchdog.etcd.exposure import STREAM_LIMIT, headroom, parse_version, stream_limit_exposed


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

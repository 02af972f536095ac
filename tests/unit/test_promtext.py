"""Tests for the filtered Prometheus text parser, checked against prometheus_client's parser."""

from __future__ import annotations

import math
import operator
import string
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from watchdog.etcd.promtext import (
    Histogram,
    MetricsParseError,
    PeerMetrics,
    _parse_labels,
    _parse_plain_labels,
    _parse_value,
    parse_families,
    parse_peer_metrics,
)

Sample = tuple[str, dict[str, str], float]

GIB = 2 * 1024**3
WATCH = {"grpc_service": "etcdserverpb.Watch", "grpc_type": "bidi_stream"}
SCALARS = {
    "watch_streams": "etcd_debugging_mvcc_watch_stream_total",
    "watchers": "etcd_debugging_mvcc_watcher_total",
    "slow_watchers": "etcd_debugging_mvcc_slow_watcher_total",
    "pending_events": "etcd_debugging_mvcc_pending_events_total",
    "has_leader": "etcd_server_has_leader",
    "is_leader": "etcd_server_is_leader",
    "leader_changes": "etcd_server_leader_changes_seen_total",
    "db_size": "etcd_mvcc_db_total_size_in_bytes",
    "db_size_in_use": "etcd_mvcc_db_total_size_in_use_in_bytes",
    "quota_bytes": "etcd_server_quota_backend_bytes",
    "open_fds": "process_open_fds",
    "max_fds": "process_max_fds",
}
HISTOGRAMS = {
    "wal_fsync": "etcd_disk_wal_fsync_duration_seconds",
    "backend_commit": "etcd_disk_backend_commit_duration_seconds",
}


# --- reference: prometheus_client's full parser -------------------------------------------


def reference_samples(text: str) -> dict[str, list[Any]]:
    """Sample name -> prometheus_client samples, in page order."""
    by_name: dict[str, list[Any]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            by_name[sample.name].append(sample)
    return by_name


def reference_peer(text: str) -> PeerMetrics:
    """PeerMetrics computed independently from prometheus_client's parse of the page."""
    ref = reference_samples(text)

    def last(name: str) -> float | None:
        return ref[name][-1].value if ref.get(name) else None

    def watch_values(name: str) -> list[float]:
        return [s.value for s in ref.get(name, []) if WATCH.items() <= s.labels.items()]

    def histogram(family: str) -> Histogram | None:
        buckets = sorted((float(s.labels["le"]), s.value) for s in ref.get(family + "_bucket", []))
        total, count = last(family + "_sum"), last(family + "_count")
        if not buckets or total is None or count is None:
            return None
        return Histogram(buckets=tuple(buckets), sum=total, count=count)

    started = watch_values("grpc_server_started_total")
    handled = watch_values("grpc_server_handled_total")
    versions = ref.get("etcd_server_version", [])
    watch_lines = sum(
        s.labels.get("grpc_service") == "etcdserverpb.Watch"
        for name in ("grpc_server_started_total", "grpc_server_handled_total")
        for s in ref.get(name, [])
    )
    read = (
        sum(len(ref.get(name, [])) for name in SCALARS.values())
        + len(versions)
        + watch_lines
        + sum(
            len(ref.get(family + suffix, []))
            for family in HISTOGRAMS.values()
            for suffix in ("_bucket", "_sum", "_count")
        )
    )
    return PeerMetrics(
        **{field: last(name) for field, name in SCALARS.items()},
        grpc_watch_streams_open=sum(started) - sum(handled) if started else None,
        version=versions[-1].labels["server_version"] if versions else None,
        **{field: histogram(family) for field, family in HISTOGRAMS.items()},
        samples_read=read,
    )


def comparable(samples: list[Sample]) -> list[tuple[str, dict[str, str], Any]]:
    """Samples with NaN replaced by a marker, so that lists compare equal."""
    return [(n, labels, "NaN" if math.isnan(v) else v) for n, labels, v in samples]


def raw_sample_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split()[0])
    return names


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd_pages(fixtures_dir: Path) -> dict[str, str]:
    pages = {p.name: p.read_text() for p in sorted((fixtures_dir / "etcd").glob("*.metrics"))}
    assert pages, f"no *.metrics fixtures under {fixtures_dir / 'etcd'}"
    return pages


@pytest.fixture(scope="module")
def etcd_metrics(etcd_pages: dict[str, str]) -> dict[str, PeerMetrics]:
    return {name: parse_peer_metrics(text) for name, text in etcd_pages.items()}


@pytest.fixture(scope="module")
def apisix_page(fixtures_dir: Path) -> str:
    path = fixtures_dir / "apisix" / "prometheus-metrics-3.9.1-docs.txt"
    # The docs excerpt elides series with literal "..." lines, which no parser accepts.
    return "\n".join(line for line in path.read_text().splitlines() if line.strip() != "...")


# --- real etcd pages -----------------------------------------------------------------------


def test_every_field_matches_prometheus_client(
    etcd_pages: dict[str, str], etcd_metrics: dict[str, PeerMetrics]
) -> None:
    for name, text in etcd_pages.items():
        assert etcd_metrics[name] == reference_peer(text), name
        assert parse_peer_metrics(text.encode()) == etcd_metrics[name], name
        crlf = text.replace("\n", "\r\n")
        assert parse_peer_metrics(crlf) == etcd_metrics[name], name


def test_real_pages_are_fully_populated(
    etcd_pages: dict[str, str], etcd_metrics: dict[str, PeerMetrics]
) -> None:
    for name, metrics in etcd_metrics.items():
        assert None not in (getattr(metrics, f) for f in PeerMetrics.__slots__), name
        assert metrics.samples_skipped == 0, name
        # Filtering is the point: a few dozen of the ~1,500 lines are parsed.
        assert 30 < metrics.samples_read < 100 < len(etcd_pages[name].splitlines()), name
        assert metrics.quota_bytes == GIB
        assert metrics.db_size is not None and metrics.db_size_in_use is not None
        assert metrics.db_size >= metrics.db_size_in_use > 0
        assert metrics.max_fds == 20000
        assert metrics.version == name.split("-")[1]
        for hist in (metrics.wal_fsync, metrics.backend_commit):
            assert hist is not None
            bounds = [le for le, _ in hist.buckets]
            counts = [c for _, c in hist.buckets]
            assert bounds == sorted(bounds) and bounds[-1] == math.inf and len(bounds) == 15
            assert counts == sorted(counts) and counts[-1] == hist.count > 0 < hist.sum


def test_watch_load_shows_on_the_loaded_pages(etcd_metrics: dict[str, PeerMetrics]) -> None:
    idle_34 = etcd_metrics["etcd-3.4.23-idle.metrics"]
    loaded_34 = etcd_metrics["etcd-3.4.23-300watch.metrics"]
    idle_35 = etcd_metrics["etcd-3.5.1-tls-idle.metrics"]
    loaded_35 = etcd_metrics["etcd-3.5.1-tls-263watch.metrics"]
    for idle in (idle_34, idle_35):
        assert idle.watch_streams == idle.watchers == idle.grpc_watch_streams_open == 0
    # 300 HTTP watches on 3.4.23: one stream and one watcher each, seen by mvcc and by gRPC.
    assert loaded_34.watch_streams == loaded_34.watchers == 300
    assert loaded_34.grpc_watch_streams_open == 300
    assert loaded_34.open_fds is not None and idle_34.open_fds is not None
    assert loaded_34.open_fds - idle_34.open_fds >= 280
    # 263 attempted over TLS on 3.5.1, but the shared HTTP/2 connection caps streams at 250.
    assert loaded_35.watch_streams == loaded_35.watchers == 250
    assert loaded_35.grpc_watch_streams_open == 250
    assert loaded_35.slow_watchers == loaded_35.pending_events == 0


def test_leadership_facts(etcd_metrics: dict[str, PeerMetrics]) -> None:
    follower = etcd_metrics["etcd-3.5.1-3member-one-down.metrics"]
    assert (follower.has_leader, follower.is_leader) == (1, 0)
    for name in ("etcd-3.4.23-idle.metrics", "etcd-3.5.1-tls-idle.metrics"):
        assert (etcd_metrics[name].has_leader, etcd_metrics[name].is_leader) == (1, 1)


def test_absent_families_are_none(etcd_pages: dict[str, str]) -> None:
    text = etcd_pages["etcd-3.5.1-tls-idle.metrics"]
    full = parse_peer_metrics(text)
    without = "\n".join(
        line
        for line in text.splitlines()
        if not line.startswith(("etcd_debugging_", "grpc_server_", "etcd_disk_wal_"))
    )
    got = parse_peer_metrics(without)
    assert got.watch_streams is got.watchers is got.slow_watchers is got.pending_events is None
    assert got.grpc_watch_streams_open is None and got.wal_fsync is None
    assert got.backend_commit == full.backend_commit and got.version == "3.5.1"
    assert got.has_leader == full.has_leader and got.open_fds == full.open_fds


def test_generic_parse_matches_prometheus_client(
    etcd_pages: dict[str, str], apisix_page: str
) -> None:
    for name, text in {**etcd_pages, "apisix": apisix_page}.items():
        names = raw_sample_names(text)
        expected: dict[str, list[Sample]] = defaultdict(list)
        for sample_name, samples in reference_samples(text).items():
            # prometheus_client appends _total to counter samples that lack it.
            if sample_name not in names and sample_name.removesuffix("_total") in names:
                sample_name = sample_name.removesuffix("_total")
            expected[sample_name] += [(sample_name, s.labels, float(s.value)) for s in samples]
        got = parse_families(text, names)
        assert got.keys() == expected.keys(), name
        for key, samples in got.items():
            assert comparable(samples) == comparable(expected[key]), (name, key)


# --- the APISIX page -----------------------------------------------------------------------


def test_apisix_modify_indexes(apisix_page: str) -> None:
    wanted = ["apisix_etcd_modify_indexes", "apisix_etcd_reachable", "apisix_not_there"]
    got = parse_families(apisix_page, wanted)
    assert set(got) == {"apisix_etcd_modify_indexes", "apisix_etcd_reachable"}
    assert got["apisix_etcd_reachable"] == [("apisix_etcd_reachable", {}, 1.0)]
    indexes = got["apisix_etcd_modify_indexes"]
    assert {name for name, _, _ in indexes} == {"apisix_etcd_modify_indexes"}
    assert {labels["key"]: value for _, labels, value in indexes} == {
        "consumers": 0,
        "global_rules": 0,
        "max_modify_index": 222,
        "prev_index": 35,
        "protos": 0,
        "routes": 222,
        "services": 0,
        "ssls": 0,
        "stream_routes": 0,
        "upstreams": 0,
        "x_etcd_index": 223,
    }


def test_apisix_histogram_family_groups_its_buckets(apisix_page: str) -> None:
    got = parse_families(apisix_page, ["apisix_http_latency"])
    samples = got["apisix_http_latency"]
    assert len(samples) == 6 and {name for name, _, _ in samples} == {"apisix_http_latency_bucket"}
    assert {labels["type"] for _, labels, _ in samples} == {"apisix", "request", "upstream"}


# --- inline pages: syntax ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("etcd_server_has_leader 1", 1.0),
        ("etcd_server_has_leader 1 1700000000000", 1.0),
        ("etcd_server_has_leader 1 -5", 1.0),
        ("etcd_server_has_leader\t1\t1700000000000  ", 1.0),
        ("   \tetcd_server_has_leader 1", 1.0),
        ("etcd_server_has_leader 1\r", 1.0),
        ("etcd_server_has_leader NaN", math.nan),
        ("etcd_server_has_leader +Inf", math.inf),
        ("etcd_server_has_leader -Inf", -math.inf),
        ("etcd_server_has_leader 1.5e+3", 1500.0),
        ("etcd_server_has_leader -2E-3", -0.002),
        ("etcd_server_has_leader{} 1", 1.0),
        ('etcd_server_has_leader {a="b"} 1', 1.0),
        ('etcd_server_has_leader{a="b",} 1', 1.0),
        ('etcd_server_has_leader{ a = "b" ,\tc="d" , } 1', 1.0),
        ('etcd_server_has_leader{a="x\\"y\\\\z\\n"} 1', 1.0),
    ],
)
def test_valid_sample_syntax(line: str, value: float) -> None:
    got = parse_peer_metrics(f"# TYPE etcd_server_has_leader gauge\n{line}\nprocess_open_fds 7\n")
    assert got.has_leader is not None
    assert got.has_leader == value or (math.isnan(value) and math.isnan(got.has_leader))
    assert (got.samples_read, got.samples_skipped, got.open_fds) == (2, 0, 7)


@pytest.mark.parametrize(
    "line",
    [
        "etcd_server_has_leader",
        "etcd_server_has_leader ",
        "etcd_server_has_leader one",
        "etcd_server_has_leader 1_0",
        "etcd_server_has_leader 1 2 3",
        "etcd_server_has_leader 1 12.5",
        "etcd_server_has_leader-x 1",
        "etcd_server_has_leader{ 1",
        'etcd_server_has_leader{a="b" 1',
        'etcd_server_has_leader{a="b} 1',
        'etcd_server_has_leader{a="b\\"} 1',
        'etcd_server_has_leader{a="b",a="c"} 1',
        'etcd_server_has_leader{a="b" c="d"} 1',
        'etcd_server_has_leader{a="\\t"} 1',
        'etcd_server_has_leader{1a="b"} 1',
        "etcd_server_has_leader{a=b} 1",
        'etcd_server_has_leader{a="b"}',
        "etcd_server_has_leader{,} 1",
    ],
)
def test_malformed_lines_are_skipped_and_counted(line: str) -> None:
    got = parse_peer_metrics(f"{line}\nprocess_open_fds 7\netcd_server_is_leader 0\n")
    assert got.has_leader is None
    assert (got.samples_read, got.samples_skipped) == (2, 1)
    assert (got.open_fds, got.is_leader) == (7, 0)
    skipped: list[int] = []
    families = parse_families(f"{line}\nfoo 1\n", ["etcd_server_has_leader"], skipped=skipped)
    assert families == {} and skipped == [1]


def test_longer_names_sharing_a_prefix_are_not_confused() -> None:
    page = "etcd_server_has_leader_total 5\nprocess_open_fds_extra 3\nprocess_open_fds 4\n"
    got = parse_peer_metrics(page)
    assert got.has_leader is None and got.open_fds == 4
    assert (got.samples_read, got.samples_skipped) == (1, 0)


def test_duplicate_samples_last_wins() -> None:
    page = (
        "etcd_server_has_leader 0\nprocess_open_fds 1\netcd_server_has_leader 1\n"
        'm{k="a"} 1\nm{k="b"} 2\nm{ k = "a" } 3\n'
    )
    assert parse_peer_metrics(page).has_leader == 1
    assert parse_families(page, ["m"]) == {"m": [("m", {"k": "a"}, 3.0), ("m", {"k": "b"}, 2.0)]}


def test_escaped_label_values_through_parse_families() -> None:
    page = (
        "# HELP apisix_etcd_modify_indexes Etcd modify index\n"
        "# TYPE apisix_etcd_modify_indexes gauge\n"
        'apisix_etcd_modify_indexes{key="a\\"b\\\\c\\nd,e}=f",x="{}"} 5 1700000000000\r\n'
        'apisix_etcd_modify_indexes{key="\\\\"} 6\r\n'
        "\r\n"
        "apisix_etcd_reachable 1\r\n"
    )
    got = parse_families(page.encode(), "apisix_etcd_modify_indexes")
    assert got == {
        "apisix_etcd_modify_indexes": [
            ("apisix_etcd_modify_indexes", {"key": 'a"b\\c\nd,e}=f', "x": "{}"}, 5.0),
            ("apisix_etcd_modify_indexes", {"key": "\\"}, 6.0),
        ]
    }


def test_bytes_with_invalid_utf8_outside_wanted_lines() -> None:
    page = b'\xef\xbb\xbfprocess_open_fds 3\nother{x="\xff\xfe"} 1\nprocess_max_fds 9\n'
    got = parse_peer_metrics(page)
    assert (got.open_fds, got.max_fds, got.samples_skipped) == (3, 9, 0)


def test_family_suffixes_and_exact_names() -> None:
    page = 'h_bucket{le="1"} 1\nh_sum 2\nh_count 1\nh 7\nh_total 9\nh_sum_x 1\n'
    got = parse_families(page, ["h"])
    assert [name for name, _, _ in got["h"]] == ["h_bucket", "h_sum", "h_count", "h"]
    got = parse_families(page, ["h", "h_sum"])
    assert [name for name, _, _ in got["h"]] == ["h_bucket", "h_count", "h"]
    assert got["h_sum"] == [("h_sum", {}, 2.0)]
    with pytest.raises(ValueError, match="not a metric name"):
        parse_families(page, ["h", ""])


# --- inline pages: derived values ----------------------------------------------------------


def test_grpc_watch_streams_open() -> None:
    page = (
        'grpc_server_started_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",'
        'grpc_type="bidi_stream"} 10\n'
        'grpc_server_started_total{grpc_type="bidi_stream",grpc_service="etcdserverpb.Watch",'
        'grpc_method="Other",note="a \\"quoted\\" word"} 5\n'
        'grpc_server_started_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",'
        'grpc_type="server_stream"} 100\n'
        'grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",'
        'grpc_type="unary"} 1000\n'
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Watch",'
        'grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 3\n'
        'grpc_server_handled_total{grpc_code="Canceled",grpc_method="Watch",'
        'grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 4\n'
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Range",'
        'grpc_service="etcdserverpb.KV",grpc_type="unary"} 999\n'
        'grpc_server_msg_sent_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",'
        'grpc_type="bidi_stream"} 77\n'
        'grpc_server_handled_total{grpc_service="etcdserverpb.Watch" broken\n'
    )
    got = parse_peer_metrics(page)
    assert got.grpc_watch_streams_open == 10 + 5 - 3 - 4
    assert (got.samples_read, got.samples_skipped) == (5, 1)
    started_only = "\n".join(line for line in page.splitlines() if "handled" not in line)
    assert parse_peer_metrics(started_only).grpc_watch_streams_open == 15
    handled_only = "\n".join(line for line in page.splitlines() if "started" not in line)
    assert parse_peer_metrics(handled_only).grpc_watch_streams_open is None


def test_histogram_assembly() -> None:
    fam = "etcd_disk_wal_fsync_duration_seconds"
    page = (
        f'{fam}_bucket{{le="0.002"}} 3\n{fam}_bucket{{le="0.001"}} 1\n'
        f'{fam}_bucket{{le="bogus"}} 2\n{fam}_bucket{{le="0.001",x="y"}} 50\n'
        f"{fam}_sum 0.004\n{fam}_count 4\n"
    )
    got = parse_peer_metrics(page)
    assert got.wal_fsync == Histogram(
        buckets=((0.001, 1), (0.002, 3), (math.inf, 4)), sum=0.004, count=4
    )
    assert got.samples_skipped == 1
    no_count = "\n".join(line for line in page.splitlines() if "_count" not in line)
    assert parse_peer_metrics(no_count).wal_fsync is None


# --- pages that are not exposition text ----------------------------------------------------


NOT_EXPOSITION: list[str | bytes] = [
    "",
    "\n \r\n\t\n",
    "<html><body>404 page not found</body></html>",
    "<!DOCTYPE html>\n<html>\n<p>\netcd_server_has_leader 1\n</p>\n</html>\n",
    '{"health":"true","reason":""}',
    '{\n  "health": "true"\n}\n',
    "[1, 2, 3]",
    b"\x00\x01\x02\xff\xfe\xfd\x80" * 40,
    "# just a comment\n# another one\n",
    "404 page not found\n",
    "Client sent an HTTP request to an HTTPS server.\n",
    "etcd_server_has_leader one\n",
]


@pytest.mark.parametrize("page", NOT_EXPOSITION)
def test_not_exposition_raises(page: str | bytes) -> None:
    with pytest.raises(MetricsParseError):
        parse_peer_metrics(page)
    with pytest.raises(MetricsParseError):
        parse_families(page, ["apisix_etcd_reachable"])


@pytest.mark.parametrize(
    "page", ["# TYPE foo gauge\n", "# HELP foo Some help.\n", "foo 1\n", 'foo{a="b"} 2 123\n']
)
def test_exposition_without_wanted_families(page: str) -> None:
    got = parse_peer_metrics(page)
    assert got == PeerMetrics(*([None] * 16), samples_read=0)
    assert parse_families(page, ["apisix_etcd_reachable"]) == {}


# --- properties ----------------------------------------------------------------------------

FRAGMENTS = [
    "etcd_server_has_leader", "etcd_server_version", "process_open_fds",
    "etcd_disk_wal_fsync_duration_seconds", "_bucket", "_sum", "_count",
    "grpc_server_started_total", "grpc_server_handled_total", '"etcdserverpb.Watch"',
    'grpc_service="etcdserverpb.Watch"', 'grpc_type="bidi_stream"', 'le="+Inf"',
    'server_version="3.5.1"', "{", "}", '"', "\\", "=", ",", " ", "\t", "\n", "\r\n", "#",
    "# TYPE ", "# HELP ", "1", "0.5", "NaN", "+Inf", "-Inf", "e", "-", "_", "<", "\x85", "\u2028",
]  # fmt: skip
fragment_pages = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.one_of(st.text(), st.binary(), fragment_pages))
def test_arbitrary_input_raises_only_metrics_parse_error(page: str | bytes) -> None:
    try:
        got = parse_peer_metrics(page)
    except MetricsParseError:
        pass
    else:
        assert isinstance(got, PeerMetrics)
    try:
        parse_families(page, ["etcd_server_has_leader", "etcd_server_version", "a"])
    except MetricsParseError:
        pass


@PROPERTY
@given(st.text(alphabet='{}",= \tab1_', max_size=30), st.sampled_from(["", " 1", "1 2"]))
def test_plain_label_fast_path_agrees_with_general_parser(body: str, tail: str) -> None:
    rest = "{" + body + tail
    try:
        labels, rest_tail = _parse_plain_labels(rest)
        fast: Any = (labels, _parse_value(rest_tail))
    except ValueError:
        fast = "error"
    try:
        labels, end = _parse_labels(rest, 0)
        slow: Any = (labels, _parse_value(rest[end:]))
    except ValueError:
        slow = "error"
    assert fast == slow


def identifiers(first: str, rest: str, max_rest: int) -> st.SearchStrategy[str]:
    # Cheaper to generate than st.from_regex, which dominated the run time.
    return st.builds(operator.add, st.sampled_from(first), st.text(rest, max_size=max_rest))


LETTERS = string.ascii_letters + "_"
metric_names = identifiers(LETTERS + ":", LETTERS + string.digits + ":", 12)
label_names = identifiers(LETTERS, LETTERS + string.digits, 8)
label_values = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda v: "NaN" if math.isnan(v) else {math.inf: "+Inf", -math.inf: "-Inf"}.get(v, repr(v))
    ),
    st.integers(-(10**20), 10**20).map(str),
)
series = st.tuples(
    st.dictionaries(label_names, label_values, max_size=3),
    numbers,
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
)
families = st.lists(
    st.tuples(metric_names, st.lists(series, min_size=1, max_size=4)),
    min_size=1,
    max_size=5,
    unique_by=lambda family: family[0],
)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(fams: list[tuple[str, list[Any]]], newline: str, indent: str) -> Iterator[str]:
    for name, rows in fams:
        yield f"# HELP {name} Help with \\\\ and \\n escapes."
        yield f"# TYPE {name} untyped"
        # A longer name sharing the prefix, and longer than any generated name: must be ignored.
        yield f"{name}_noise_sample_total 1"
        for labels, value, stamp, spaced in rows:
            pairs = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
            label_set = f"{' ' if spaced else ''}{{{pairs}}}" if labels or spaced else ""
            tail = "" if stamp is None else f"\t{stamp}"
            yield f"{indent}{name}{label_set} {value}{tail}"
        yield ""


@settings(PROPERTY, max_examples=100)
@given(families, st.sampled_from(["\n", "\r\n"]), st.sampled_from(["", "  "]))
def test_generated_pages_round_trip(
    fams: list[tuple[str, list[Any]]], newline: str, indent: str
) -> None:
    page = newline.join(render(fams, newline, indent))
    expected: dict[str, dict[tuple[Any, ...], Sample]] = defaultdict(dict)
    for name, rows in fams:
        for labels, value, _, _ in rows:
            expected[name][tuple(sorted(labels.items()))] = (name, labels, float(value))
    wanted = [name for name, _ in fams]
    got = parse_families(page, wanted)
    got_bytes = parse_families(page.encode(), wanted)
    assert got.keys() == expected.keys()
    for name in got:
        want = list(expected[name].values())
        assert comparable(got[name]) == comparable(want)
        assert comparable(got_bytes[name]) == comparable(want)

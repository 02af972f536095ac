"""Fuzz every parser and loader that reads outside input, 10^5 examples each (not in the suite).

    python bench/fuzz.py                      # 100,000 examples per target (~10 min on 2 cores)
    python bench/fuzz.py --examples 2000      # a quick look
    python bench/fuzz.py --only promtext_page

The property of each target is the contract its callers rely on: only the error type the
caller catches may escape (the caller turns it into a classified reason or a config error),
and nothing hangs. Inputs mix random data with mutations of real captured answers
(tests/fixtures), so most examples get deep into the parsers rather than failing on byte 1.
Results go to bench/results/fuzz.json; docs/reliability.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from watchdog.config import ConfigError, load_config  # noqa: E402
from watchdog.etcd.client import EtcdStatus, Member, VersionInfo  # noqa: E402
from watchdog.etcd.promtext import MetricsParseError, parse_families, parse_peer_metrics  # noqa: E402
from watchdog.gateway.status import config_lag, revision_problem  # noqa: E402
from watchdog.state import StateError, StateStore  # noqa: E402
from watchdog.webconfig import web_config_from_dict  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"
RESULTS = REPO / "bench" / "results" / "fuzz.json"


def fixture_json(pattern: str) -> list[Any]:
    out = []
    for path in sorted((FIXTURES / "etcd").glob(pattern)):
        try:
            out.append(json.loads(path.read_text()))
        except ValueError:
            continue
    return out


def fixture_pages() -> list[bytes]:
    pages = [p.read_bytes() for p in sorted((FIXTURES / "etcd").glob("*.metrics"))]
    pages += [p.read_bytes() for p in sorted((FIXTURES / "apisix").glob("prometheus-*.txt"))]
    return pages


# -- strategies ----------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.text(max_size=30) | st.sampled_from(["", "0", "-1", "NaN", "1e400", "true"]))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=20,
)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Any]) -> Any:
    """A real answer with some leaves replaced, keys dropped or renamed."""
    value = draw(st.sampled_from(seeds)) if seeds else {}

    def walk(node: Any, depth: int) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, child in node.items():
                roll = draw(st.integers(0, 9))
                if roll == 0:
                    continue  # drop the key
                if roll == 1:
                    out[draw(st.text(max_size=8))] = walk(child, depth + 1)
                    continue
                out[key] = draw(json_values) if roll == 2 else walk(child, depth + 1)
            return out
        if isinstance(node, list):
            return [walk(c, depth + 1) for c in node][: draw(st.integers(0, len(node) + 1))]
        return draw(json_values) if draw(st.integers(0, 4)) == 0 else node

    return walk(value, 0)


@st.composite
def mutated_page(draw: st.DrawFn, pages: list[bytes]) -> bytes:
    """A real metrics page, cut to a window, with bytes flipped and lines spliced in."""
    page = draw(st.sampled_from(pages))
    start = draw(st.integers(0, max(0, len(page) - 1)))
    window = bytearray(page[start:start + draw(st.integers(0, 6000))])
    for _ in range(draw(st.integers(0, 6))):
        if window:
            window[draw(st.integers(0, len(window) - 1))] = draw(st.integers(0, 255))
    lines = window.split(b"\n")
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([
            b"etcd_debugging_mvcc_watch_stream_total", b"etcd_server_has_leader",
            b"apisix_etcd_modify_indexes", b"etcd_disk_wal_fsync_duration_seconds_bucket",
            b"process_open_fds"]))
        labels = draw(st.binary(max_size=30))
        value = draw(st.sampled_from([b"1", b"NaN", b"+Inf", b"1e308", b"-0", b"x", b""]))
        lines.insert(draw(st.integers(0, len(lines))), name + b"{" + labels + b"} " + value)
    return b"\n".join(lines)


# -- targets -------------------------------------------------------------------------------

Target = tuple[st.SearchStrategy[Any], Callable[[Any], object], tuple[type[BaseException], ...]]


def _state_load(raw: bytes) -> object:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "state.json").write_bytes(raw)
        return StateStore(Path(tmp)).load()


def _config_load(text: str) -> object:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "watchdog.yml"
        # Lone surrogates become bytes that are not UTF-8: also outside input to survive.
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        return load_config(path, log_warnings=False)


def as_client(parse: Callable[[Any], object]) -> Callable[[Any], object]:
    """What EtcdHttp does with a decoded body: a mapping check, then the parser."""
    def call(body: Any) -> object:
        assert isinstance(body, Mapping)
        return parse(body)
    return call


def targets() -> dict[str, Target]:
    pages = fixture_pages()
    status = fixture_json("*maintenance_status.json")
    members = [m for d in fixture_json("*member_list.json") for m in d.get("members", [])]
    versions = fixture_json("*_version.json")
    state_seed = {"version": 1, "saved_at": 1.7e9, "data": {"tripwire": {
        "version": 1, "wires": {"etcd-0": {"watch_streams": {
            "buckets": [[1.7e9, 10.0, 3]], "steady": 10.0, "tripped": False}}}}}}
    return {
        # etcd's /metrics page: only MetricsParseError (a protocol failure) escapes
        "promtext_page": (
            st.one_of(mutated_page(pages), st.binary(max_size=2000)),
            parse_peer_metrics, (MetricsParseError,)),
        # a gateway's Prometheus page, the two families watchdog reads
        "gateway_page": (
            st.one_of(mutated_page(pages), st.binary(max_size=2000)),
            lambda raw: parse_families(raw, ["apisix_etcd_reachable",
                                             "apisix_etcd_modify_indexes"]),
            (MetricsParseError,)),
        # JSON answers: exactly the exceptions EtcdHttp catches and turns into `protocol`
        "etcd_status_json": (
            st.one_of(mutated(status), json_values), as_client(EtcdStatus.from_json),
            (AssertionError, AttributeError, TypeError, ValueError)),
        "etcd_member_json": (
            st.one_of(mutated(members), json_values), as_client(Member.from_json),
            (AssertionError, AttributeError, KeyError, TypeError, ValueError)),
        "etcd_version_json": (
            st.one_of(mutated(versions), json_values), as_client(VersionInfo.from_json),
            (AssertionError, TypeError, ValueError)),
        # the state file: set aside (None) or loaded; only StateError (an OS error) escapes
        "state_file": (
            st.one_of(st.binary(max_size=400),
                      mutated([state_seed]).map(lambda v: json.dumps(v).encode()),
                      json_values.map(lambda v: json.dumps(v).encode())),
            _state_load, (StateError,)),
        # the config file: only ConfigError (exit 2, key path named) escapes
        "config_file": (
            st.one_of(st.text(max_size=300),
                      mutated([{"etcd": {"endpoints": ["http://127.0.0.1:2379"],
                                         "interval": "15s"},
                                "gateways": [{"name": "gw", "admin_url":
                                              "http://127.0.0.1:9180"}]}])
                      .map(json.dumps)),
            _config_load, (ConfigError,)),
        "web_config": (
            st.one_of(json_values, mutated([{"basic_auth_users": {"u": "$2b$10$" + "a" * 53},
                                              "tls_server_config": {"cert_file": "c"}}])),
            lambda data: web_config_from_dict(data, Path("web.yml")), (ConfigError,)),
        # a gateway's reported revision against etcd's: never an exception
        "gateway_revision": (
            st.tuples(st.none() | st.integers(), st.none() | st.floats() | st.integers()),
            lambda pair: (config_lag(*pair), revision_problem(pair[1])), ()),
    }


def run_target(name: str, target: Target, examples: int) -> dict[str, Any]:
    strategy, call, allowed = target
    seen = {"examples": 0, "rejected": 0}

    @settings(max_examples=examples, deadline=None, database=None,
              phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def check(value: Any) -> None:
        seen["examples"] += 1
        try:
            call(value)
        except allowed:
            seen["rejected"] += 1

    started = time.monotonic()
    error = ""
    try:
        check()
    except Exception as exc:  # a property failure: report it, with Hypothesis' minimal case
        error = f"{type(exc).__name__}: {str(exc)[:500]}"
    return {"target": name, "examples": seen["examples"], "rejected_as_documented":
            seen["rejected"], "seconds": round(time.monotonic() - started, 1),
            "result": "failed: " + error if error else "passed"}


def record(out: Path, row: dict[str, Any]) -> None:
    """Merge one target's row into the results file as soon as it is done (a long run that
    is stopped keeps what it finished; `--only` runs update their rows)."""
    try:
        data = json.loads(out.read_text())
    except (OSError, ValueError):
        data = {"results": []}
    rows = [r for r in data.get("results", []) if r.get("target") != row["target"]]
    rows.append({**row, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"results": rows}, indent=2) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # set-aside state files and config warnings are expected
    results = []
    for name, target in targets().items():
        if args.only and name not in args.only:
            continue
        row = run_target(name, target, args.examples)
        results.append(row)
        print(f"{name:20} {row['examples']:>8} examples  {row['rejected_as_documented']:>8} "
              f"rejected as documented  {row['seconds']:>7}s  {row['result']}", flush=True)
        record(args.out, row)
    return 0 if all(r["result"] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

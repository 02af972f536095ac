"""Which server answers at a peer URL: etcd, kine, etcd-adapter, antietcd or unknown.

Version strings lie (kine reports the etcd version it emulates, etcd-adapter a hard-coded
3.5.0), so the server is recognised by what it serves: the /version document, the fields
of its Status answer, the metric families on its /metrics page and which transports
answer at all. `identify` is a pure function of that evidence; the poll gathers it.

What each server serves (from their sources and real answers, see docs/backends.md):

- etcd: /version `{"etcdserver","etcdcluster"[,"storage"]}`, gRPC and the JSON gateway,
  /metrics with `etcd_server_*` families, a raft term and a member id in every header.
- kine: gRPC only (HTTP/1 gets nothing), Status with an empty header (no member id, no
  raft term) and its emulated version; its metrics live on another port.
- etcd-adapter: gRPC and grpc-gateway on one port, /version hard-coded to 3.5.0, no
  /metrics, a Status without a version.
- antietcd: HTTP/1.1 JSON only, `version: "antietcd X.Y.Z"`, string member ids, no
  /version, no /metrics, no member list, no gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

ETCD = "etcd"
KINE = "kine"
ETCD_ADAPTER = "etcd-adapter"
ANTIETCD = "antietcd"
UNKNOWN = "unknown"
BACKENDS = (ETCD, KINE, ETCD_ADAPTER, ANTIETCD, UNKNOWN)

# Signal names for PeerPoll.unavailable: what a backend cannot tell, so it is not asked
# (transports) or shown as absent rather than as 0, failing or warming up.
JSON = "json"
GRPC = "grpc"
METRICS = "metrics"
VERSION = "version"
MEMBER_LIST = "member_list"
WATCH_STREAMS = "watch_streams"
WATCHERS = "watchers"
LEADER = "leader"
MEMBER_ID = "member_id"
REVISION = "revision"
DB_SIZE = "db_size"

# Everything a /metrics page on the client port gives watchdog.
_METRICS_SIGNALS = frozenset({METRICS, WATCH_STREAMS, WATCHERS})
UNAVAILABLE: dict[str, frozenset[str]] = {
    ETCD: frozenset(),
    KINE: frozenset({JSON, VERSION, LEADER, MEMBER_ID}) | _METRICS_SIGNALS,
    ETCD_ADAPTER: frozenset({VERSION, DB_SIZE, LEADER}) | _METRICS_SIGNALS,
    ANTIETCD: frozenset({GRPC, VERSION, MEMBER_LIST}) | _METRICS_SIGNALS,
    UNKNOWN: frozenset(),
}

# etcd-adapter's /version, byte for byte the same whatever its release.
_ADAPTER_VERSION_DOC = {"etcdserver": "3.5.0", "etcdcluster": "3.5.0"}
# Families only etcd itself exports (kine's page has kine_*, process_* and go_*).
_ETCD_FAMILY_PREFIXES = ("etcd_server_", "etcd_mvcc_", "etcd_debugging_mvcc_", "etcd_disk_")
_KINE_FAMILY_PREFIX = "kine_"


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one poll saw of a peer; None everywhere means "not asked or no answer".

    version_doc: the decoded JSON of `GET /version` when it answered 200 with an object.
    status: the JSON (or, failing that, gRPC) Status answer as raw fields: `version`,
    `member_id`, `leader`, `raft_term`, `db_size` and the top-level keys seen.
    metric_families: family names on the /metrics page, when it was Prometheus text.
    json_answered / grpc_answered: the API answered at all (an etcd error counts, a
    refused connection or an HTTP/1 server without the API does not).
    """

    version_doc: Mapping[str, object] | None = None
    status_version: str | None = None
    status_member_id: str | None = None
    status_raft_term: int | None = None
    status_keys: frozenset[str] = frozenset()
    metric_families: frozenset[str] | None = None
    metrics_answered: bool | None = None
    json_answered: bool | None = None
    grpc_answered: bool | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """The backend, the version worth reporting (None when it would be a lie) and what
    the backend cannot provide."""

    backend: str
    version: str | None = None
    unavailable: frozenset[str] = field(default_factory=frozenset)


def is_etcd_page(families: frozenset[str] | None) -> bool:
    """The metric families of a page include etcd's own."""
    return _has_family(families, _ETCD_FAMILY_PREFIXES)


def _has_family(families: frozenset[str] | None, prefixes: tuple[str, ...] | str) -> bool:
    return families is not None and any(f.startswith(prefixes) for f in families)


def identify(ev: Evidence) -> Identity:
    """Fingerprint a peer from what it served; UNKNOWN when the evidence says nothing."""
    version = (ev.status_version or "").strip()
    if version.lower().startswith("antietcd") or "raftState" in ev.status_keys:
        parts = version.split()
        return Identity(ANTIETCD, parts[1] if len(parts) > 1 else None,
                        UNAVAILABLE[ANTIETCD])
    if _has_family(ev.metric_families, _KINE_FAMILY_PREFIX):
        return Identity(KINE, None, UNAVAILABLE[KINE])
    doc = ev.version_doc
    if doc is not None and dict(doc) == _ADAPTER_VERSION_DOC and not version and (
            not is_etcd_page(ev.metric_families)):
        return Identity(ETCD_ADAPTER, None, UNAVAILABLE[ETCD_ADAPTER])
    empty_header = not ev.status_member_id and not ev.status_raft_term
    if ev.grpc_answered and not ev.json_answered and ev.status_version is not None and (
            empty_header):
        # gRPC only, and a Status with an empty header: no etcd member answers like that.
        return Identity(KINE, None, UNAVAILABLE[KINE])
    etcd_doc = doc is not None and isinstance(doc.get("etcdserver"), str)
    raft = bool(ev.status_raft_term) and bool(ev.status_member_id)
    if is_etcd_page(ev.metric_families) or (etcd_doc and (raft or doc != _ADAPTER_VERSION_DOC)) or (
            raft and ev.status_version):
        server = version
        if not server and etcd_doc and doc is not None:
            server = str(doc.get("etcdserver"))
        if server in ("not_decided", "unknown"):
            server = ""
        return Identity(ETCD, server or None, UNAVAILABLE[ETCD])
    return Identity(UNKNOWN, None, UNAVAILABLE[UNKNOWN])

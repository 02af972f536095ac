"""Per-worker configuration of the simulated gateway: tables, event application, routing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from watchdog.lab.sim_etcd import KV

# apisix/constants.lua HTTP_ETCD_DIRECTORY: the prefixes a 3.0-3.3 worker watched one by one.
HTTP_DIRS: tuple[str, ...] = (
    "upstreams", "plugins", "ssls", "stream_routes", "plugin_metadata", "routes", "services",
    "consumers", "global_rules", "protos", "plugin_configs", "consumer_groups", "secrets",
)
# Keys of apisix_etcd_modify_indexes that hold a per-resource max modifiedIndex.
INDEXED_DIRS: tuple[str, ...] = (
    "routes", "services", "ssls", "consumers", "global_rules", "upstreams", "stream_routes",
    "protos",
)


@dataclass(frozen=True)
class Item:
    """One config object as a worker holds it (APISIX's v2-style `node`)."""

    key: str
    id: str
    value: Any
    created_index: int
    modified_index: int


def split_key(prefix: str, key: str) -> tuple[str, str] | None:
    """`/apisix/routes/1` -> ("routes", "1"); None for placeholders and top-level keys."""
    base = prefix.rstrip("/") + "/"
    if not key.startswith(base):
        return None
    directory, sep, rest = key[len(base):].partition("/")
    if not sep or not rest:
        return None
    return directory, rest


def decode_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass
class Worker:
    """One nginx worker's copy of the configuration."""

    id: int
    prefix: str
    loaded: bool = False
    applied_index: int = 0  # highest modifiedIndex this worker applied
    revision: int = 0  # highest etcd revision this worker has seen
    tables: dict[str, dict[str, Item]] = field(default_factory=dict)
    base_revision: dict[str, int] = field(default_factory=dict)
    watches_created: int = 0
    _routes_cache: list[Item] | None = None

    def load(self, kvs: Iterable[KV], revision: int, dirs: Iterable[str] | None = None) -> None:
        """Replace the given directories (all when None) with a full read at `revision`."""
        wanted = set(dirs) if dirs is not None else None
        fresh: dict[str, dict[str, Item]] = {}
        for kv in kvs:
            where = split_key(self.prefix, kv.key)
            if where is None or (wanted is not None and where[0] not in wanted):
                continue
            fresh.setdefault(where[0], {})[where[1]] = self._item(kv, where[1])
            self.applied_index = max(self.applied_index, kv.mod_revision)
        if wanted is None:
            self.tables = fresh
            for directory in HTTP_DIRS:
                self.base_revision[directory] = revision
        else:
            for directory in wanted:
                self.tables[directory] = fresh.get(directory, {})
                self.base_revision[directory] = revision
        self.revision = max(self.revision, revision)
        self._routes_cache = None

    @staticmethod
    def _item(kv: KV, item_id: str) -> Item:
        return Item(kv.key, item_id, decode_value(kv.value), kv.create_revision, kv.mod_revision)

    def apply(self, event: Mapping[str, Any]) -> bool:
        """Apply one watch event; False when it is not ours or already covered by a reload."""
        kv = KV.parse(event.get("kv") or {})
        where = split_key(self.prefix, kv.key)
        if where is None:
            return False
        directory, item_id = where
        if kv.mod_revision <= self.base_revision.get(directory, 0):
            return False
        table = self.tables.setdefault(directory, {})
        if event.get("type") == "DELETE":
            table.pop(item_id, None)
        else:
            table[item_id] = self._item(kv, item_id)
        self.applied_index = max(self.applied_index, kv.mod_revision)
        if directory == "routes":
            self._routes_cache = None
        return True

    def get(self, directory: str, item_id: str) -> Item | None:
        return self.tables.get(directory, {}).get(str(item_id))

    def max_modify_index(self, directory: str) -> int:
        return max((i.modified_index for i in self.tables.get(directory, {}).values()), default=0)

    def routes(self) -> list[Item]:
        """Enabled routes in match order: exact paths, then longer prefixes, then priority."""
        if self._routes_cache is None:
            items = [
                i for i in self.tables.get("routes", {}).values()
                if isinstance(i.value, dict) and i.value.get("status", 1) != 0
            ]
            self._routes_cache = sorted(items, key=_route_rank)
        return self._routes_cache


def route_uris(conf: Mapping[str, Any]) -> list[str]:
    uris = conf.get("uris") or ([conf["uri"]] if conf.get("uri") else [])
    return [u for u in uris if isinstance(u, str)]


def _route_rank(item: Item) -> tuple[int, int, int]:
    uris = route_uris(item.value)
    exact = any(not u.endswith("*") for u in uris)
    longest = max((len(u.rstrip("*")) for u in uris), default=0)
    priority = item.value.get("priority", 0)
    return (0 if exact else 1, -longest, -priority if isinstance(priority, int) else 0)


@dataclass
class RequestView:
    """What route matching needs from a request."""

    method: str
    host: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    scheme: str = "http"
    request_uri: str = ""


def match_uri(patterns: list[str], path: str) -> str | None:
    """The matching pattern: exact, or a prefix ending in `*` (radixtree's rule)."""
    for pattern in patterns:
        if pattern.endswith("*"):
            if path.startswith(pattern[:-1]):
                return pattern
        elif path == pattern:
            return pattern
    return None


def match_host(conf: Mapping[str, Any], host: str) -> bool:
    hosts = conf.get("hosts") or ([conf["host"]] if conf.get("host") else [])
    if not hosts:
        return True
    host = host.lower()
    for want in hosts:
        want = str(want).lower()
        if want.startswith("*.") and host.endswith(want[1:]):
            return True
        if host == want:
            return True
    return False


def _var(req: RequestView, name: str) -> Any:
    if name.startswith("arg_"):
        return req.query.get(name[4:])
    if name.startswith("http_"):
        return req.headers.get(name[5:].replace("_", "-"))
    return {
        "uri": req.path,
        "request_uri": req.request_uri or req.path,
        "host": req.host,
        "request_method": req.method,
        "scheme": req.scheme,
    }.get(name)


def _compare(op: str, left: Any, right: Any) -> bool:
    if op in ("==", "~="):
        equal = left is not None and str(left) == str(right)
        return equal if op == "==" else not equal
    if op in (">", "<", ">=", "<="):
        try:
            a, b = float(left), float(right)
        except (TypeError, ValueError):
            return False
        return {">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]
    if op in ("~~", "~*"):
        flags = re.IGNORECASE if op == "~*" else 0
        return left is not None and re.search(str(right), str(left), flags) is not None
    if op == "in":
        return isinstance(right, list) and left in [str(r) for r in right]
    if op == "has":
        return isinstance(left, str) and str(right) in left
    return False


def match_vars(exprs: Any, req: RequestView) -> bool:
    """lua-resty-expr's simple form: every [var, op, value] (or [var, "!", op, value]) holds."""
    if not exprs:
        return True
    if not isinstance(exprs, list):
        return False
    for expr in exprs:
        if not isinstance(expr, list) or len(expr) < 3:
            return False
        negate = expr[1] == "!"
        op, value = (expr[2], expr[3] if len(expr) > 3 else None) if negate else expr[1:3]
        if _compare(str(op), _var(req, str(expr[0])), value) == negate:
            return False
    return True


def find_route(worker: Worker, req: RequestView) -> tuple[Item, str] | None:
    """The first route of this worker matching the request, with the matched uri pattern."""
    for item in worker.routes():
        conf = item.value
        pattern = match_uri(route_uris(conf), req.path)
        if pattern is None:
            continue
        methods = conf.get("methods")
        if methods and req.method not in methods:
            continue
        if not match_host(conf, req.host) or not match_vars(conf.get("vars"), req):
            continue
        return item, pattern
    return None


def upstream_nodes(upstream: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """(host, port, weight) from the dict form {"host:port": w} or the list form."""
    default_port = 443 if upstream.get("scheme") in ("https", "grpcs") else 80
    nodes = upstream.get("nodes") or {}
    out: list[tuple[str, int, int]] = []
    if isinstance(nodes, dict):
        for address, weight in nodes.items():
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit():
                host, port = str(address), str(default_port)
            out.append((host, int(port), int(weight)))
    elif isinstance(nodes, list):
        for node in nodes:
            if isinstance(node, dict) and node.get("host"):
                out.append((
                    str(node["host"]), int(node.get("port") or default_port),
                    int(node.get("weight", 1)),
                ))
    return [n for n in out if n[2] > 0]


def pick_node(nodes: list[tuple[str, int, int]], turn: int) -> tuple[str, int] | None:
    """Weighted round robin: the `turn`-th pick over the weights."""
    total = sum(w for _, _, w in nodes)
    if total <= 0:
        return None
    n = turn % total
    for host, port, weight in nodes:
        if n < weight:
            return host, port
        n -= weight
    return None


def version_at_least(version: str, *want: int) -> bool:
    """'3.10.0' >= (3, 10)? Non-numeric parts count as 0."""
    parts: list[int] = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) >= want

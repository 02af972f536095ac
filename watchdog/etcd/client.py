"""EtcdHttp: etcd's v3 JSON gateway (grpc-gateway) for one deployment, every call timed.

The gateway speaks proto JSON: keys are base64, int64 fields are strings, fields at their
default value are left out, and errors come back as `{"error","code","message"}` (3.5)
or `{"code","message","details"}` (3.6+). With auth on, the token from
`/v3/auth/authenticate` goes in a raw `Authorization: <token>` header: etcd before
3.5.32/3.6.13 rejects `Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from watchdog.httpprobe import make_session, make_ssl_context, timed_request
from watchdog.results import ProbeResult, Reason

log = logging.getLogger(__name__)

DEFAULT_METRICS_MAX_BYTES = 4 << 20

# gRPC codes etcd puts in gateway error bodies.
_CODE_INVALID_ARGUMENT = 3
_CODE_PERMISSION_DENIED = 7
_CODE_UNAUTHENTICATED = 16
# etcd's wording for rejected credentials, the same through the gateway and gRPC.
AUTH_MESSAGES = (
    "authentication failed",
    "user name is empty",
    "user name not found",
    "invalid auth token",
    "permission denied",
    "invalid auth management",
    "auth token is not found",
)


@dataclass(frozen=True, slots=True)
class Member:
    """One cluster member as /v3/cluster/member/list describes it."""

    id: str  # decimal, as etcd's JSON gives the uint64
    id_hex: str  # as etcdctl prints it
    name: str
    client_urls: tuple[str, ...]
    peer_urls: tuple[str, ...]
    is_learner: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Member:
        member_id = str(int(data["ID"]))
        return cls(
            id=member_id,
            id_hex=format(int(member_id), "x"),
            name=str(data.get("name", "")),
            client_urls=tuple(str(u) for u in data.get("clientURLs") or ()),
            peer_urls=tuple(str(u) for u in data.get("peerURLs") or ()),
            is_learner=bool(data.get("isLearner", False)),
        )


@dataclass(frozen=True, slots=True)
class EtcdStatus:
    """The useful part of a maintenance Status answer (member ids as decimal strings)."""

    version: str
    member_id: str
    leader: str
    db_size: int
    raft_term: int
    raft_index: int
    revision: int | None
    db_size_in_use: int | None = None
    raft_applied_index: int | None = None
    is_learner: bool = False
    errors: tuple[str, ...] = ()

    @property
    def has_leader(self) -> bool:
        return self.leader not in ("", "0")

    @property
    def is_leader(self) -> bool:
        return self.has_leader and self.leader == self.member_id

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EtcdStatus:
        header = data.get("header") or {}
        return cls(
            version=str(data.get("version", "")),
            member_id=str(int(header.get("member_id", 0))),
            leader=str(int(data.get("leader", 0))),
            db_size=int(data.get("dbSize", 0)),
            raft_term=int(data.get("raftTerm", 0)),
            raft_index=int(data.get("raftIndex", 0)),
            revision=_opt_int(header.get("revision")),
            db_size_in_use=_opt_int(data.get("dbSizeInUse")),
            raft_applied_index=_opt_int(data.get("raftAppliedIndex")),
            is_learner=bool(data.get("isLearner", False)),
            errors=tuple(str(e) for e in data.get("errors") or ()),
        )


@dataclass(frozen=True, slots=True)
class RangeCount:
    """A count_only range: how many keys matched, and which member answered."""

    count: int
    member_id: str


class EtcdCallError(Exception):
    """A call that had to return data failed; `result` says how."""

    def __init__(self, result: ProbeResult) -> None:
        super().__init__(f"etcd {result.api} {result.op} failed: {result.reason} {result.detail}")
        self.result = result


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


def prefix_end(prefix: str | bytes) -> bytes:
    """etcd's range_end for a prefix: the prefix with its last byte below 0xff raised."""
    raw = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1])
    return b"\0"


def _opt_int(value: object) -> int | None:
    if value is None:
        return None
    return int(value)  # type: ignore[call-overload]


def _etcd_error(body: object) -> tuple[int | None, str]:
    """(gRPC code, message) from a gateway error body, whichever shape it has."""
    if not isinstance(body, Mapping):
        return None, ""
    code = body.get("code")
    message = body.get("message") or body.get("error") or ""
    return (code if isinstance(code, int) else None), str(message)


def _is_invalid_token(result: ProbeResult) -> bool:
    code, message = _etcd_error(result.body)
    return not result.ok and (
        code == _CODE_UNAUTHENTICATED or "invalid auth token" in message.lower()
    )


def _refine(result: ProbeResult) -> ProbeResult:
    """Turn etcd's auth errors (often HTTP 400) into Reason.AUTH; add the gRPC code."""
    if result.ok or result.status is None:
        return result
    code, message = _etcd_error(result.body)
    if code is None:
        return result
    lowered = message.lower()
    reason = result.reason
    if code in (_CODE_UNAUTHENTICATED, _CODE_PERMISSION_DENIED) or (
        code == _CODE_INVALID_ARGUMENT and any(m in lowered for m in AUTH_MESSAGES)
    ):
        reason = Reason.AUTH
    return dataclasses.replace(
        result, reason=reason, detail=f"HTTP {result.status}, etcd code {code}"
    )


def _unexpected(result: ProbeResult) -> ProbeResult:
    return dataclasses.replace(
        result, ok=False, reason=Reason.PROTOCOL, detail="unexpected answer", body=None
    )


class EtcdHttp:
    """JSON-gateway client for one etcd deployment: TLS and auth settings, one session.

    The SSL context is built once here; the aiohttp session is made lazily inside the
    running loop (call `close()` when done). Tokens are cached per base URL and renewed
    when etcd says a token is invalid, at most once per call. The password is kept only
    to authenticate: it is never logged, repr'd or put in a result.
    """

    def __init__(
        self,
        urls: Sequence[str] = (),
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        insecure_skip_verify: bool = False,
        username: str | None = None,
        password: str | None = None,
        keepalive: bool = False,
    ) -> None:
        self.urls = tuple(u.rstrip("/") for u in urls)
        self.username = username
        self._password = password
        self._ssl = make_ssl_context(ca_file, cert_file, key_file, insecure_skip_verify)
        # Blackbox-style by default: every call opens its own connection, so connect and
        # tls are measured each time and a dead listener cannot hide behind a pooled one.
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[str, str] = {}
        self._auth_locks: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        auth = f", username={self.username!r}, password=<hidden>" if self.username else ""
        return f"EtcdHttp(urls={self.urls!r}{auth})"

    @property
    def auth_enabled(self) -> bool:
        return self.username is not None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(force_close=not self._keepalive, ssl=self._ssl)
            self._session = make_session(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> EtcdHttp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def invalidate_token(self, url: str | None = None, token: str | None = None) -> None:
        """Forget the cached token for one URL (or all): the next call authenticates."""
        if url is None:
            self._tokens.clear()
        elif token is None or self._tokens.get(url.rstrip("/")) == token:
            self._tokens.pop(url.rstrip("/"), None)

    # -- calls -------------------------------------------------------------

    async def _post(
        self, url: str, path: str, body: Mapping[str, Any], op: str, timeout: float,
        token: str | None,
    ) -> ProbeResult:
        headers = {"Authorization": token} if token else None
        return await timed_request(
            self._get_session(), "POST", url + path, api="json", op=op,
            timeout=max(timeout, 0.0), json_body=body, headers=headers, ssl=self._ssl,
        )

    async def _authenticate(
        self, url: str, op: str, deadline: float, stale: str | None
    ) -> tuple[str | None, ProbeResult | None]:
        """A fresh token for url, or the failed result to return instead."""
        loop = asyncio.get_running_loop()
        lock = self._auth_locks.setdefault(url, asyncio.Lock())
        started = loop.time()
        try:
            async with asyncio.timeout(max(deadline - started, 0.0)):
                await lock.acquire()
        except TimeoutError:
            return None, ProbeResult("json", op, False, loop.time() - started, Reason.TIMEOUT,
                                     "timeout waiting for authentication")
        try:
            current = self._tokens.get(url)
            if current is not None and current != stale:
                return current, None  # another call renewed it meanwhile
            answer = await self._post(
                url, "/v3/auth/authenticate",
                {"name": self.username, "password": self._password or ""},
                op, deadline - loop.time(), None,
            )
        finally:
            lock.release()
        if not answer.ok:
            refined = _refine(answer)
            detail = refined.detail
            if refined.reason is Reason.AUTH:
                detail = "authentication failed"
            return None, dataclasses.replace(refined, detail=f"authenticate: {detail}",
                                             body=None)
        token = answer.body.get("token") if isinstance(answer.body, Mapping) else None
        if not isinstance(token, str) or not token:
            return None, dataclasses.replace(_unexpected(answer),
                                             detail="authenticate: no token")
        self._tokens[url] = token
        log.debug("etcd token obtained", extra={"etcd_url": str(URL(url).with_user(None))})
        return token, None

    async def _call(
        self, url: str, path: str, body: Mapping[str, Any], op: str, timeout: float
    ) -> ProbeResult:
        """One gateway call within timeout, authenticating first when configured."""
        url = url.rstrip("/")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        token: str | None = None
        fresh = False
        if self.auth_enabled:
            token = self._tokens.get(url)
            if token is None:
                token, failure = await self._authenticate(url, op, deadline, None)
                if failure is not None:
                    return failure
                fresh = True
        result = await self._post(url, path, body, op, deadline - loop.time(), token)
        if token is not None and not fresh and _is_invalid_token(result):
            log.info("etcd token rejected, authenticating again",
                     extra={"etcd_url": str(URL(url).with_user(None))})
            token, failure = await self._authenticate(url, op, deadline, token)
            if failure is not None:
                return failure
            result = await self._post(url, path, body, op, deadline - loop.time(), token)
        return _refine(result)

    async def range_count(
        self, url: str, key: str | bytes, timeout: float, *, prefix: bool = False
    ) -> ProbeResult:
        """`POST /v3/kv/range` with count_only on key (or the prefix key): op "range"."""
        request: dict[str, Any] = {"key": b64(key), "count_only": True}
        if prefix:
            request["range_end"] = b64(prefix_end(key))
        result = await self._call(url, "/v3/kv/range", request, "range", timeout)
        if not result.ok:
            return result
        try:
            assert isinstance(result.body, Mapping)
            header = result.body.get("header") or {}
            info = RangeCount(int(result.body.get("count", 0)),
                              str(int(header.get("member_id", 0))))
            revision = _opt_int(header.get("revision"))
        except (AssertionError, AttributeError, TypeError, ValueError):
            return _unexpected(result)
        return dataclasses.replace(result, body=info, revision=revision)

    async def newest_mod_revision(self, url: str, prefix: str, timeout: float) -> ProbeResult:
        """The highest mod_revision of the keys under prefix (0 when there are none), the
        key equal to prefix itself (APISIX's init_dir placeholder) left out: op "newest",
        body an int."""
        start = prefix.encode() + b"\0"
        request = {"key": b64(start), "range_end": b64(prefix_end(prefix)), "limit": 1,
                   "sort_order": "DESCEND", "sort_target": "MOD", "keys_only": True}
        result = await self._call(url, "/v3/kv/range", request, "newest", timeout)
        if not result.ok:
            return result
        try:
            assert isinstance(result.body, Mapping)
            kvs = result.body.get("kvs") or []
            newest = int(kvs[0].get("mod_revision", 0)) if kvs else 0
            header = result.body.get("header") or {}
            revision = _opt_int(header.get("revision"))
        except (AssertionError, AttributeError, IndexError, TypeError, ValueError):
            return _unexpected(result)
        return dataclasses.replace(result, body=newest, revision=revision)

    async def status(self, url: str, timeout: float) -> ProbeResult:
        """`POST /v3/maintenance/status`: op "status", body an EtcdStatus."""
        result = await self._call(url, "/v3/maintenance/status", {}, "status", timeout)
        if not result.ok:
            return result
        try:
            assert isinstance(result.body, Mapping)
            info = EtcdStatus.from_json(result.body)
        except (AssertionError, AttributeError, TypeError, ValueError):
            return _unexpected(result)
        return dataclasses.replace(result, body=info, revision=info.revision)

    async def member_list_probe(self, url: str, timeout: float) -> ProbeResult:
        """`POST /v3/cluster/member/list`: op "member_list", body a list of Member."""
        result = await self._call(url, "/v3/cluster/member/list", {}, "member_list", timeout)
        if not result.ok:
            return result
        try:
            assert isinstance(result.body, Mapping)
            members = [Member.from_json(m) for m in result.body.get("members") or ()]
        except (AssertionError, AttributeError, KeyError, TypeError, ValueError):
            return _unexpected(result)
        return dataclasses.replace(result, body=members)

    async def member_list(self, url: str, timeout: float) -> list[Member]:
        """The cluster's members as url's member sees them; EtcdCallError on failure."""
        result = await self.member_list_probe(url, timeout)
        if not result.ok:
            raise EtcdCallError(result)
        assert isinstance(result.body, list)
        return result.body

    async def metrics_page(
        self, url: str, timeout: float, max_bytes: int = DEFAULT_METRICS_MAX_BYTES
    ) -> tuple[ProbeResult, bytes | None]:
        """`GET /metrics`, reading at most max_bytes (+1); the page is returned apart."""
        result = await timed_request(
            self._get_session(), "GET", url.rstrip("/") + "/metrics", api="metrics",
            op="metrics", timeout=timeout, ssl=self._ssl, max_body=max_bytes,
            expect_json=False,
        )
        if result.ok:
            page = result.body if isinstance(result.body, bytes) else b""
            return dataclasses.replace(result, body=None), page
        if result.reason is Reason.PROTOCOL and result.detail.startswith("body over"):
            result = dataclasses.replace(result, detail=f"page over {max_bytes} bytes")
        return dataclasses.replace(result, body=None), None

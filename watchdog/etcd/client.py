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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from watchdog.etcd import sniff
from watchdog.etcd.tlsfiles import TlsFiles
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
        member_id = _id(data.get("ID"))
        if not member_id:
            raise ValueError("member without an ID")
        return cls(
            id=member_id,
            id_hex=_hex_id(member_id),
            name=str(data.get("name", "")),
            client_urls=tuple(str(u) for u in data.get("clientURLs") or ()),
            peer_urls=tuple(str(u) for u in data.get("peerURLs") or ()),
            is_learner=bool(data.get("isLearner", False)),
        )


@dataclass(frozen=True, slots=True)
class MemberList:
    """A MemberList answer: the members and the id of the cluster that answered ("" when
    the server reports none)."""

    members: tuple[Member, ...]
    cluster_id: str = ""

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)


@dataclass(frozen=True, slots=True)
class EtcdStatus:
    """The useful part of a maintenance Status answer.

    Member ids are decimal strings as etcd's JSON gives them, or the server's own string
    (antietcd names its members); "" when the server reports none (kine, antietcd
    standalone), never an invented "0". Fields a server leaves out are None.
    """

    version: str
    member_id: str
    leader: str
    db_size: int | None
    raft_term: int | None
    raft_index: int | None
    revision: int | None
    db_size_in_use: int | None = None
    raft_applied_index: int | None = None
    is_learner: bool = False
    errors: tuple[str, ...] = ()
    storage_version: str | None = None
    keys: frozenset[str] = frozenset()  # top-level fields of the answer, for identify()
    cluster_id: str = ""  # hex, as etcdctl and MemberList give it; "" when not reported

    @property
    def has_leader(self) -> bool:
        return self.leader not in ("", "0")

    @property
    def is_leader(self) -> bool:
        return self.has_leader and self.leader == self.member_id

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EtcdStatus:
        header = data.get("header") or {}
        if not isinstance(header, Mapping):
            raise ValueError("header is not an object")
        storage = data.get("storageVersion")
        return cls(
            version=str(data.get("version") or ""),
            member_id=_id(header.get("member_id")),
            leader=_id(data.get("leader")),
            db_size=_opt_int(data.get("dbSize")),
            raft_term=_opt_int(data.get("raftTerm", header.get("raft_term"))),
            raft_index=_opt_int(data.get("raftIndex")),
            revision=_opt_int(header.get("revision")),
            db_size_in_use=_opt_int(data.get("dbSizeInUse")),
            raft_applied_index=_opt_int(data.get("raftAppliedIndex")),
            is_learner=bool(data.get("isLearner", False)),
            errors=tuple(str(e) for e in data.get("errors") or ()),
            storage_version=None if storage is None else str(storage),
            keys=frozenset(str(k) for k in data),
            cluster_id=_hex_id(_id(header.get("cluster_id"))),
        )


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """`GET /version`: etcd's {"etcdserver","etcdcluster"[,"storage"]} (3.6+ adds storage)."""

    server: str
    cluster: str
    storage: str | None
    doc: Mapping[str, object]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VersionInfo:
        server = data.get("etcdserver")
        if not isinstance(server, str):
            raise ValueError("no etcdserver field")
        storage = data.get("storage")
        return cls(server, str(data.get("etcdcluster") or ""),
                   None if storage is None else str(storage), dict(data))


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
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"not an integer: {type(value).__name__}")
    return int(value)


def _id(value: object) -> str:
    """A member id as text: decimal for etcd's uint64 (a JSON string or number), the
    server's own name otherwise (antietcd), "" when absent or 0 (proto3's "not set")."""
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        number = int(value)
        return "" if number == 0 else str(number)
    if isinstance(value, str):
        return value.strip()
    raise ValueError(f"member id is a {type(value).__name__}")


def _hex_id(member_id: str) -> str:
    """etcdctl's hex form of a decimal id; a named id stays as it is."""
    return format(int(member_id), "x") if member_id.isdigit() else member_id


def _etcd_error(body: object) -> tuple[int | None, str]:
    """(gRPC code, message) from a gateway error body, whichever shape it has:
    <= 3.5 `{"error","code","message"}`, >= 3.6 `{"code","message","details"}`."""
    if not isinstance(body, Mapping):
        return None, ""
    code = body.get("code")
    message = body.get("message") or body.get("error") or ""
    if not isinstance(message, str):
        message = ""
    return (code if isinstance(code, int) and not isinstance(code, bool) else None), message


def _is_invalid_token(result: ProbeResult) -> bool:
    code, message = _etcd_error(result.body)
    return not result.ok and (
        code == _CODE_UNAUTHENTICATED or "invalid auth token" in message.lower()
    )


def is_auth_not_enabled(message: str) -> bool:
    """etcd's answer to Authenticate when auth is switched off (ErrAuthNotEnabled)."""
    return AUTH_NOT_ENABLED in message.lower()


def permission_detail(op: str) -> str | None:
    """Which etcd releases let only root call op (see docs/backends.md), or None."""
    return _NEEDS_ROOT.get(op)


# Ops that some etcd releases reserve for the root role.
_NEEDS_ROOT = {
    "status": "permission denied: Status needs the root role on etcd 3.4.42+, "
              "3.5.28-3.5.31 and 3.6.0-3.6.11 (3.5.32+, 3.6.12+, 3.7 allow any user)",
    "member_list": "permission denied: MemberList needs the root role on etcd 3.4.42, "
                   "3.5.28 and 3.6 before 3.6.10 (3.4.43+, 3.5.29+, 3.6.10+ allow any user)",
}
AUTH_NOT_ENABLED = "authentication is not enabled"
SPEAKS_TLS = "the server speaks TLS: use https://"
SPEAKS_PLAIN = "the server speaks plain HTTP: use http://"
SET_CA = "set etcd.tls.ca_file"
SILENT = "timeout: the listener accepted but never answered"
# What Go's TLS listener answers to a plain HTTP request.
_GO_TLS_ANSWER = "client sent an http request to an https server"
# OpenSSL's reasons for a TLS handshake that met a plain-text answer.
_PLAIN_ANSWER_MARKERS = ("wrong_version_number", "wrong version number",
                         "packet_length_too_long", "record_layer_failure", "http_request")
# OpenSSL's wording for a server certificate from a CA we were not given.
_UNKNOWN_CA_MARKERS = ("unable to get local issuer", "self-signed certificate",
                       "self signed certificate", "unable to get issuer certificate")


def wire_hint(result: ProbeResult) -> ProbeResult:
    """Name the cause of a transport mismatch the operator can fix in the config:
    http:// to a TLS server, https:// to a plain one, a CA we were not given."""
    if result.ok:
        return result
    body = result.body
    if result.status == 400 and isinstance(body, str) and _GO_TLS_ANSWER in body.lower():
        return dataclasses.replace(result, reason=Reason.TLS, detail=SPEAKS_TLS, body=None)
    if result.reason is Reason.TLS:
        low = result.detail.lower()
        if any(m in low for m in _PLAIN_ANSWER_MARKERS):
            return dataclasses.replace(result, detail=SPEAKS_PLAIN)
        if any(m in low for m in _UNKNOWN_CA_MARKERS) and SET_CA not in low:
            return dataclasses.replace(result, detail=f"{result.detail}; {SET_CA}")
    return result


# Failures after which the listener is asked what it speaks (see sniff.py).
SNIFF_DETAILS = ("server disconnected", "connection reset", "UNAVAILABLE: connection reset",
                 "UNAVAILABLE: tls handshake failed", "tls handshake failed")
SNIFF_TTL = 30.0


def mismatch(url: str, speaks: str | None) -> str | None:
    """The detail for a URL scheme that does not match what the listener speaks."""
    https = url.startswith("https://")
    if https and speaks == sniff.PLAIN:
        return SPEAKS_PLAIN
    if not https and speaks == sniff.TLS:
        return SPEAKS_TLS
    return None


def _refine(result: ProbeResult) -> ProbeResult:
    """Turn etcd's auth errors (often HTTP 400) into Reason.AUTH; add the gRPC code; name
    transport mismatches. A text body never leaves here (it is only for recognising)."""
    result = wire_hint(result)
    if result.ok or result.status is None:
        return result
    code, message = _etcd_error(result.body)
    if code is None:
        return result if not isinstance(result.body, str) else \
            dataclasses.replace(result, body=None)
    lowered = message.lower()
    reason = result.reason
    detail = f"HTTP {result.status}, etcd code {code}"
    if code in (_CODE_UNAUTHENTICATED, _CODE_PERMISSION_DENIED) or (
        code == _CODE_INVALID_ARGUMENT and any(m in lowered for m in AUTH_MESSAGES)
    ):
        reason = Reason.AUTH
        needs_root = _NEEDS_ROOT.get(result.op)
        if needs_root and "permission denied" in lowered:
            detail = needs_root
    return dataclasses.replace(result, reason=reason, detail=detail)


def _unexpected(result: ProbeResult, what: str = "unexpected answer") -> ProbeResult:
    return dataclasses.replace(result, ok=False, reason=Reason.PROTOCOL, detail=what,
                               body=None)


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
        self._tls_args = (ca_file, cert_file, key_file, insecure_skip_verify)
        self._ssl = make_ssl_context(ca_file, cert_file, key_file, insecure_skip_verify)
        self._tls_files = TlsFiles(ca_file, cert_file, key_file)
        # URLs whose etcd said auth is off although credentials are configured: called
        # without a token until etcd asks for one again.
        self._auth_off: set[str] = set()
        # What earlier polls learned per peer URL (backend, stream limit); peers.py owns it.
        self.facts: dict[str, Any] = {}
        self._sniffed: dict[str, tuple[float, str | None]] = {}
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

    def refresh_tls(self) -> bool:
        """Rebuild the SSL context when the CA, certificate or key changed on disk (a
        cheap stat, at most once per CHECK_INTERVAL); True when new material is in use. Material
        that does not load (a file half written) is ignored until it changes again."""
        if not self._tls_files.changed():
            return False
        try:
            ctx = make_ssl_context(*self._tls_args)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.warning("etcd TLS files changed but do not load, keeping the old ones: %s",
                        type(exc).__name__)
            return False
        self._ssl = ctx
        if self._session is not None and self._keepalive:
            # Pooled connections were made with the old material.
            old, self._session = self._session, None
            asyncio.get_running_loop().create_task(old.close())
        log.info("etcd TLS files changed on disk: new connections use them")
        return True

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
            error_text=True,
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
            if is_auth_not_enabled(_etcd_error(answer.body)[1]):
                if url not in self._auth_off:
                    log.warning("etcd auth is not enabled although credentials are "
                                "configured; calling without them",
                                extra={"etcd_url": str(URL(url).with_user(None))})
                self._auth_off.add(url)
                return None, None
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
        if self.auth_enabled and url in self._auth_off:
            result = _refine(await self._post(url, path, body, op, deadline - loop.time(),
                                              None))
            if result.reason is not Reason.AUTH:
                return result
            log.info("etcd asks for credentials again: authenticating",
                     extra={"etcd_url": str(URL(url).with_user(None))})
            self._auth_off.discard(url)
        if self.auth_enabled and url not in self._auth_off:
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
        return await self.explain(url, _refine(result), deadline)

    async def explain(self, url: str, result: ProbeResult, deadline: float) -> ProbeResult:
        """A connection dropped without an answer: ask the listener (once per SNIFF_TTL)
        whether the URL's scheme is the wrong one, and say so."""
        if result.ok or result.detail not in SNIFF_DETAILS:
            return result
        loop = asyncio.get_running_loop()
        cached = self._sniffed.get(url)
        if cached is not None and loop.time() - cached[0] < SNIFF_TTL:
            speaks = cached[1]
        else:
            parts = URL(url)
            left = deadline - loop.time()
            if left <= 0 or parts.host is None or parts.port is None:
                return result
            try:
                async with asyncio.timeout(left + 0.5):
                    speaks = await asyncio.to_thread(sniff.sniff, parts.host, parts.port, left)
            except TimeoutError:
                return result
            self._sniffed[url] = (loop.time(), speaks)
        if speaks == sniff.SILENT:
            return dataclasses.replace(result, reason=Reason.TIMEOUT, detail=SILENT)
        hint = mismatch(url, speaks)
        if hint is None:
            return result
        return dataclasses.replace(result, reason=Reason.TLS, detail=hint)

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
            header = result.body.get("header")
            if not isinstance(header, Mapping):
                return _unexpected(result, "not an etcd answer (no header)")
            count = _opt_int(result.body.get("count"))
            if count is None:
                # etcd leaves out a count of 0; antietcd ignores count_only and sends the
                # keys instead, so those are counted.
                count = len(result.body.get("kvs") or ())
            info = RangeCount(count, _id(header.get("member_id")))
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
            if "header" not in result.body and "version" not in result.body:
                return _unexpected(result, "not an etcd answer (no header)")
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
            members = tuple(Member.from_json(m) for m in result.body.get("members") or ())
            header = result.body.get("header") or {}
            assert isinstance(header, Mapping)
            found = MemberList(members, _hex_id(_id(header.get("cluster_id"))))
        except (AssertionError, AttributeError, KeyError, TypeError, ValueError):
            return _unexpected(result)
        return dataclasses.replace(result, body=found)

    async def member_list(self, url: str, timeout: float) -> MemberList:
        """The cluster's members as url's member sees them, with the cluster id (hex, as
        etcdctl prints it); EtcdCallError on failure."""
        result = await self.member_list_probe(url, timeout)
        if not result.ok:
            raise EtcdCallError(result)
        assert isinstance(result.body, MemberList)
        return result.body

    async def version(self, url: str, timeout: float) -> ProbeResult:
        """`GET /version`: op "version", body a VersionInfo (etcd and etcd-adapter serve
        it; kine and antietcd do not). Failures keep the JSON or text body for identify."""
        result = wire_hint(await timed_request(
            self._get_session(), "GET", url.rstrip("/") + "/version", api="json",
            op="version", timeout=timeout, ssl=self._ssl, error_text=True,
        ))
        if not result.ok:
            return result
        try:
            assert isinstance(result.body, Mapping)
            info = VersionInfo.from_json(result.body)
        except (AssertionError, TypeError, ValueError):
            return dataclasses.replace(_unexpected(result, "not an etcd /version"),
                                       body=result.body)
        return dataclasses.replace(result, body=info)

    async def metrics_page(
        self, url: str, timeout: float, max_bytes: int = DEFAULT_METRICS_MAX_BYTES
    ) -> tuple[ProbeResult, bytes | None]:
        """`GET /metrics`, reading at most max_bytes (+1); the page is returned apart."""
        result = wire_hint(await timed_request(
            self._get_session(), "GET", url.rstrip("/") + "/metrics", api="metrics",
            op="metrics", timeout=timeout, ssl=self._ssl, max_body=max_bytes,
            expect_json=False, error_text=True,
        ))
        if result.ok:
            page = result.body if isinstance(result.body, bytes) else b""
            return dataclasses.replace(result, body=None), page
        if result.reason is Reason.PROTOCOL and result.detail.startswith("body over"):
            result = dataclasses.replace(result, detail=f"page over {max_bytes} bytes")
        loop = asyncio.get_running_loop()
        result = await self.explain(url.rstrip("/"), result, loop.time() + min(timeout, 1.0))
        return dataclasses.replace(result, body=None), None

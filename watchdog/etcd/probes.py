"""gRPC probes through python3-etcd3, run off the event loop with bounded workers.

python3-etcd3 is synchronous, so each call runs in a worker thread. Two bounds keep a
hung member (SIGSTOPped: TCP connects, nothing answers) from hurting anything else:

- every RPC carries the probe's deadline (`timeout=` on the gRPC call, and on the
  Authenticate call etcd3 makes when a client is created), so gRPC itself ends the call;
  the awaiting side also gives up at timeout + a small margin (`asyncio.wait_for`);
- each endpoint has its own executor of `max_in_flight` threads. A hung endpoint can only
  fill its own executor; a call that waits in its queue past its deadline is dropped
  without being made. Other endpoints never wait for it.

RPCs are made on etcd3's stubs directly, not through its helpers: the helpers mark an
endpoint failed for minutes after one error and fold gRPC codes and messages into a few
exception types, and the classification below needs both.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import etcd3
import grpc
from etcd3 import etcdrpc

from watchdog.etcd import sniff
from watchdog.etcd.client import (
    AUTH_MESSAGES,
    SET_CA,
    SILENT,
    SNIFF_DETAILS,
    SNIFF_TTL,
    SPEAKS_PLAIN,
    EtcdStatus,
    RangeCount,
    is_auth_not_enabled,
    mismatch,
    permission_detail,
    prefix_end,
)
from watchdog.etcd.tlsfiles import TlsFiles
from watchdog.results import ProbeResult, Reason

log = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 2
# How long past its deadline the awaiting side waits for a worker to report back.
_AWAIT_MARGIN = 0.25
_CHANNEL_OPTIONS = [
    # A member that comes back should be probed again soon, not after gRPC's 2 min backoff.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.enable_http_proxy", 0),
]
# "verification check failed": gRPC's wording for a certificate whose name does not match.
_TLS_MARKERS = ("ssl", "tls", "handshake", "certificate", "tsi_", "verification check failed")
# The peer answered, but not with HTTP/2 gRPC: an HTTP/1-only server (antietcd, a plain
# web server), or TLS without h2 in ALPN.
_NOT_GRPC_MARKERS = ("http1.x", "http/1", "alpn", "bad magic", "not http/2",
                     "protocol error", "frame of size", "failed parsing http/2",
                     "expected settings frame")
# The listener accepted and then said nothing (a hung or SIGSTOPped server).
_SILENT_MARKERS = ("timed out before receiving settings", "connection attempt timed out",
                   "handshake timed out")
_NOT_GRPC = "the server does not speak gRPC (HTTP/1 only, or TLS without h2)"
_PLAIN_MARKERS = ("wrong_version_number", "wrong version number", "packet_length_too_long",
                  "record_layer_failure", "http_request")
_UNKNOWN_CA_MARKERS = ("certificate_verify_failed", "unable to get local issuer",
                       "self signed certificate", "self-signed certificate",
                       "unable to get issuer certificate")


def classify_rpc_error(exc: grpc.RpcError, timeout: float, op: str = "") -> tuple[Reason, str]:
    """A Reason and a short, secret-free detail for a failed gRPC call."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    low = details.lower()
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    log.debug("gRPC call failed: %s %s", name, details[:300])
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return Reason.TIMEOUT, f"timeout after {timeout:g}s (DEADLINE_EXCEEDED)"
    if code is grpc.StatusCode.PERMISSION_DENIED or (
        code is grpc.StatusCode.UNAUTHENTICATED and "permission denied" in low
    ):
        return Reason.AUTH, permission_detail(op) or name
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return Reason.AUTH, name
    if any(m in low for m in AUTH_MESSAGES):
        if "permission denied" in low and permission_detail(op):
            return Reason.AUTH, permission_detail(op) or name
        return Reason.AUTH, f"{name}: authentication failed"
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return Reason.PROTOCOL, "UNIMPLEMENTED: the server has no such gRPC method"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                grpc.StatusCode.UNKNOWN) and "etcdserver:" not in low:
        if any(m in low for m in _SILENT_MARKERS):
            return Reason.TIMEOUT, SILENT
        if any(m in low for m in _NOT_GRPC_MARKERS):
            return Reason.PROTOCOL, _NOT_GRPC
        if any(m in low for m in _PLAIN_MARKERS):
            return Reason.TLS, SPEAKS_PLAIN
        if any(m in low for m in _UNKNOWN_CA_MARKERS):
            return Reason.TLS, f"certificate verify failed; {SET_CA}"
        if code is not grpc.StatusCode.UNAVAILABLE:
            return Reason.PROTOCOL, name
        if any(m in low for m in _TLS_MARKERS):
            return Reason.TLS, "UNAVAILABLE: tls handshake failed"
        if "refused" in low:
            return Reason.REFUSED, "UNAVAILABLE: connection refused"
        if "reset" in low or "closed" in low:
            return Reason.REFUSED, "UNAVAILABLE: connection reset"
        return Reason.REFUSED, "UNAVAILABLE: cannot connect"
    return Reason.PROTOCOL, name


@dataclass
class _Peer:
    """One endpoint: where it is, its etcd3 client and its own workers."""

    host: str
    port: int
    secure: bool
    executor: concurrent.futures.ThreadPoolExecutor
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: etcd3.MultiEndpointEtcd3Client | None = None
    # The TLS generation the client was made with; an older one is replaced before use.
    generation: int = 0
    sniffed: tuple[float, str | None] | None = None  # (when, what the listener speaks)

    @contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        """Hold the lock; TimeoutError if it is not free within timeout."""
        if not self.lock.acquire(timeout=max(timeout, 0.0)):
            raise TimeoutError
        try:
            yield
        finally:
            self.lock.release()


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    duration: float
    reason: Reason | None = None
    detail: str = ""
    revision: int | None = None
    body: object = None


class GrpcProber:
    """Range and status probes over etcd's gRPC API, one etcd3 client per endpoint.

    Endpoints are client URLs (`https://host:port` selects TLS) or `host:port` (TLS when
    a CA file is set). gRPC here cannot skip certificate verification. Use one prober from
    one event loop; call `close()` at the end. The password is only handed to etcd3 to
    authenticate and is never logged, repr'd or put in a result.
    """

    def __init__(
        self,
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self.ca_file = ca_file
        self.cert_file = cert_file
        self.key_file = key_file
        self.username = username
        self._password = password
        self.max_in_flight = max_in_flight
        self._peers: dict[str, _Peer] = {}
        self._creds: grpc.ChannelCredentials | None = None
        self._closed = False
        self._tls_files = TlsFiles(ca_file, cert_file, key_file)
        self._generation = 0
        # Clients made with old TLS material: closed at the next refresh, when calls that
        # were running on them have met their deadline.
        self._retired: list[etcd3.MultiEndpointEtcd3Client] = []
        self._retired_lock = threading.Lock()
        self._auth_off_noticed = False

    def __repr__(self) -> str:
        auth = f", username={self.username!r}, password=<hidden>" if self.username else ""
        return f"GrpcProber(endpoints={list(self._peers)!r}{auth})"

    # -- plumbing ------------------------------------------------------------

    def _peer(self, endpoint: str) -> _Peer:
        peer = self._peers.get(endpoint)
        if peer is None:
            parts = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
            if parts.hostname is None or parts.port is None:
                raise ValueError(f"endpoint needs host and port: {endpoint!r}")
            secure = parts.scheme == "https" or (not parts.scheme and self.ca_file is not None)
            executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.max_in_flight,
                thread_name_prefix=f"grpc-probe-{parts.hostname}:{parts.port}",
            )
            peer = self._peers[endpoint] = _Peer(parts.hostname, parts.port, secure, executor)
        return peer

    def refresh_tls(self) -> bool:
        """Use new TLS material for new channels when the files changed on disk (a cheap
        stat, at most once per CHECK_INTERVAL); True when they did. Event-loop side, never blocks."""
        with self._retired_lock:
            retired, self._retired = self._retired, []
        for client in retired:
            client.close()
        if not self._tls_files.changed():
            return False
        self._creds = None
        self._generation += 1
        log.info("etcd TLS files changed on disk: new gRPC channels use them")
        return True

    def _credentials(self) -> grpc.ChannelCredentials:
        if self._creds is None:
            def read(path: str | None) -> bytes | None:
                if path is None:
                    return None
                with open(path, "rb") as f:
                    return f.read()

            self._creds = grpc.ssl_channel_credentials(
                read(self.ca_file), read(self.key_file), read(self.cert_file)
            )
        return self._creds

    def _client(self, peer: _Peer, timeout: float) -> etcd3.MultiEndpointEtcd3Client:
        """The peer's client, created (and authenticated) within timeout. Worker thread."""
        with peer.locked(timeout):
            if peer.client is not None and peer.secure and peer.generation != self._generation:
                with self._retired_lock:
                    self._retired.append(peer.client)
                peer.client = None
            if peer.client is None:
                generation = self._generation
                try:
                    peer.client = self._new_client(peer, timeout, self.username)
                except grpc.RpcError as exc:
                    if self.username is None or not is_auth_not_enabled(exc.details() or ""):
                        raise
                    if not self._auth_off_noticed:
                        self._auth_off_noticed = True
                        log.warning("etcd auth is not enabled although credentials are "
                                    "configured; gRPC probes call without them")
                    peer.client = self._new_client(peer, timeout, None)
                peer.generation = generation
            return peer.client

    def _new_client(
        self, peer: _Peer, timeout: float, user: str | None
    ) -> etcd3.MultiEndpointEtcd3Client:
        endpoint = etcd3.Endpoint(
            peer.host, peer.port, secure=peer.secure,
            creds=self._credentials() if peer.secure else None,
            time_retry=0, opts=_CHANNEL_OPTIONS,  # type: ignore[arg-type]
        )
        try:
            return etcd3.MultiEndpointEtcd3Client(
                endpoints=[endpoint], timeout=max(timeout, 0.001),
                user=user, password=self._password if user else None,
            )
        except BaseException:
            endpoint.close()
            raise

    def _renew_token(
        self, peer: _Peer, client: etcd3.MultiEndpointEtcd3Client, rejected: object, timeout: float
    ) -> None:
        """Give client a fresh token unless another worker already did. Worker thread.

        The channel is kept: closing it would cancel the other worker's call in flight,
        which was the cause of a spurious failure when both calls met an expired token.
        """
        with peer.locked(timeout):
            if client.metadata is not rejected:
                return
            request = etcdrpc.AuthenticateRequest(name=self.username, password=self._password)
            resp = client.authstub.Authenticate(request, max(timeout, 0.001))
            # Our calls send only metadata, so etcd3's call_credentials is left as it was.
            client.metadata = (("token", resp.token),)

    def _work(
        self,
        peer: _Peer,
        rpc: Callable[[etcd3.MultiEndpointEtcd3Client, float], tuple[int | None, object]],
        deadline: float,
        timeout: float,
        op: str = "",
    ) -> _Outcome:
        """Run one RPC in a worker thread, renewing the auth token at most once."""
        if deadline - time.monotonic() <= 0:
            return _Outcome(False, 0.0, Reason.TIMEOUT,
                            f"timeout after {timeout:g}s waiting for a worker")
        renewed = False
        while True:
            started = time.monotonic()
            client: etcd3.MultiEndpointEtcd3Client | None = None
            used: object = None
            try:
                client = self._client(peer, deadline - started)
                started = time.monotonic()
                used = client.metadata
                revision, body = rpc(client, max(deadline - started, 0.001))
                return _Outcome(True, time.monotonic() - started, revision=revision, body=body)
            except TimeoutError:
                return _Outcome(False, time.monotonic() - started, Reason.TIMEOUT,
                                f"timeout after {timeout:g}s waiting for the client")
            except grpc.RpcError as exc:
                token_rejected = exc.code() is grpc.StatusCode.UNAUTHENTICATED
                if token_rejected and client is not None and self.username is not None and not renewed:
                    renewed = True
                    log.info("etcd token rejected over gRPC, authenticating again")
                    try:
                        self._renew_token(peer, client, used, deadline - time.monotonic())
                        continue
                    except TimeoutError:
                        return _Outcome(False, time.monotonic() - started, Reason.TIMEOUT,
                                        f"timeout after {timeout:g}s renewing the token")
                    except grpc.RpcError as renew_exc:
                        exc = renew_exc
                reason, detail = classify_rpc_error(exc, timeout, op)
                if reason in (Reason.REFUSED, Reason.TLS) and \
                        time.monotonic() >= deadline - 0.1 * timeout:
                    # A connection that used up the whole deadline was not refused: the
                    # listener accepted and kept silent (gRPC says "Endpoint closing").
                    reason, detail = Reason.TIMEOUT, f"timeout after {timeout:g}s ({detail})"
                elif detail in SNIFF_DETAILS:
                    hint = self._mismatch(peer, deadline)
                    if hint == SILENT:
                        reason, detail = Reason.TIMEOUT, hint
                    elif hint is not None:
                        reason, detail = Reason.TLS, hint
                return _Outcome(False, time.monotonic() - started, reason, detail)

    def _mismatch(self, peer: _Peer, deadline: float) -> str | None:
        """The listener dropped us: is the channel's TLS setting the wrong one? Asked at
        most once per SNIFF_TTL per peer. Worker thread."""
        now = time.monotonic()
        if peer.sniffed is None or now - peer.sniffed[0] >= SNIFF_TTL:
            left = deadline - now
            if left <= 0:
                return None
            peer.sniffed = (now, sniff.sniff(peer.host, peer.port, left))
        if peer.sniffed[1] == sniff.SILENT:
            return SILENT
        scheme = "https://" if peer.secure else "http://"
        return mismatch(scheme, peer.sniffed[1])

    async def _run(
        self,
        endpoint: str,
        op: str,
        rpc: Callable[[etcd3.MultiEndpointEtcd3Client, float], tuple[int | None, object]],
        timeout: float,
    ) -> ProbeResult:
        if self._closed:
            raise RuntimeError("GrpcProber is closed")
        started = time.monotonic()
        peer = self._peer(endpoint)
        future = peer.executor.submit(self._work, peer, rpc, started + timeout, timeout, op)
        try:
            outcome = await asyncio.wait_for(asyncio.wrap_future(future),
                                             timeout + _AWAIT_MARGIN)
        except TimeoutError:
            return ProbeResult("grpc", op, False, time.monotonic() - started, Reason.TIMEOUT,
                               f"timeout after {timeout:g}s (worker did not return)")
        if outcome.ok:
            return ProbeResult("grpc", op, True, outcome.duration, revision=outcome.revision,
                               body=outcome.body)
        return ProbeResult("grpc", op, False, time.monotonic() - started, outcome.reason,
                           outcome.detail)

    # -- probes --------------------------------------------------------------

    async def range_count(
        self, endpoint: str, key: str | bytes, timeout: float, *, prefix: bool = False
    ) -> ProbeResult:
        """A count_only Range on key (or the prefix key): op "range", body a RangeCount."""
        raw = key.encode() if isinstance(key, str) else key
        request = etcdrpc.RangeRequest(key=raw, count_only=True)
        if prefix:
            request.range_end = prefix_end(raw)

        def rpc(client: etcd3.MultiEndpointEtcd3Client, left: float) -> tuple[int | None, Any]:
            # Only metadata: etcd3's call credentials are refused on plain channels.
            resp = client.kvstub.Range(request, left, metadata=client.metadata)
            return (resp.header.revision or None,
                    RangeCount(resp.count, str(resp.header.member_id or "")))

        return await self._run(endpoint, "range", rpc, timeout)

    async def status(self, endpoint: str, timeout: float) -> ProbeResult:
        """Maintenance Status: op "status", body an EtcdStatus (fields etcd3's proto has)."""

        def rpc(client: etcd3.MultiEndpointEtcd3Client, left: float) -> tuple[int | None, Any]:
            resp = client.maintenancestub.Status(
                etcdrpc.StatusRequest(), left, metadata=client.metadata
            )
            # proto3 cannot tell 0 from "not set": a 0 id or term is "not reported".
            info = EtcdStatus(
                version=resp.version,
                member_id=str(resp.header.member_id or ""),
                leader=str(resp.leader or ""),
                db_size=resp.dbSize,
                raft_term=resp.raftTerm or None,
                raft_index=resp.raftIndex or None,
                revision=resp.header.revision or None,
                errors=tuple(str(e) for e in getattr(resp, "errors", ()) or ()),
                cluster_id=format(resp.header.cluster_id, "x") if resp.header.cluster_id else "",
            )
            return resp.header.revision, info

        return await self._run(endpoint, "status", rpc, timeout)

    def close(self) -> None:
        """Close every client and stop the workers (a running RPC ends at its deadline)."""
        self._closed = True
        for peer in self._peers.values():
            peer.executor.shutdown(wait=False, cancel_futures=True)
            # No lock: a worker creating a client may hold it until its deadline.
            client, peer.client = peer.client, None
            if client is not None:
                client.close()
        self._peers.clear()
        with self._retired_lock:
            retired, self._retired = self._retired, []
        for client in retired:
            client.close()

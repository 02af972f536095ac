"""etcd v3 JSON gateway client for the simulated gateway, shaped like lua-resty-etcd's calls."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from watchdog.etcd.client import b64, prefix_end, unb64

log = logging.getLogger("watchdog.lab.gateway_sim")


class EtcdError(Exception):
    """An etcd call failed; str() is what APISIX would put into `error_msg`."""


class _Unreachable(EtcdError):
    """The endpoint did not answer (connect error or timeout)."""


range_end = prefix_end


@dataclass(frozen=True)
class KV:
    """One decoded mvccpb.KeyValue (int64 fields arrive as JSON strings)."""

    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> KV:
        return cls(
            key=unb64(raw.get("key", "")),
            value=unb64(raw.get("value", "")),
            create_revision=int(raw.get("create_revision", 0)),
            mod_revision=int(raw.get("mod_revision", 0)),
            version=int(raw.get("version", 0)),
        )


def header_revision(body: Mapping[str, Any]) -> int:
    header = body.get("header") or {}
    return int(header.get("revision", 0))


def make_ssl_context(
    ca_file: str | Path | None, cert_file: str | Path | None, key_file: str | Path | None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


class EtcdGateway:
    """Unary calls through etcd's JSON gateway, on the first healthy endpoint.

    A failed endpoint is skipped for `health_check_timeout` seconds, like
    lua-resty-etcd's passive health check.
    """

    def __init__(
        self,
        endpoints: list[str],
        *,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        health_check_timeout: float = 10.0,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.health_check_timeout = health_check_timeout
        self._user = user
        self._password = password
        self._token: str | None = None
        self._token_lock = asyncio.Lock()
        self._unhealthy_until: dict[str, float] = {}
        needs_tls = any(e.startswith("https://") for e in self.endpoints)
        self.ssl: ssl.SSLContext | bool = (
            make_ssl_context(ca_file, cert_file, key_file) if needs_tls else False
        )
        self._session: aiohttp.ClientSession | None = None

    # -- sessions ----------------------------------------------------------

    def _connector(self) -> aiohttp.TCPConnector:
        return aiohttp.TCPConnector(ssl=self.ssl, limit=0)

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=self._connector())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def new_watch_session(self) -> aiohttp.ClientSession:
        """A session with its own connector, so each watch holds its own connections."""
        return aiohttp.ClientSession(connector=self._connector())

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("EtcdGateway.open() was not called")
        return self._session

    # -- endpoint health ---------------------------------------------------

    def healthy_endpoints(self) -> list[str]:
        now = time.monotonic()
        return [e for e in self.endpoints if self._unhealthy_until.get(e, 0.0) <= now]

    def first_healthy(self) -> str:
        healthy = self.healthy_endpoints()
        if not healthy:
            raise EtcdError("has no healthy etcd endpoint available")
        return healthy[0]

    def report_failure(self, endpoint: str) -> None:
        self._unhealthy_until[endpoint] = time.monotonic() + self.health_check_timeout

    async def find_healthy(self, timeout: float = 3.0, retries: int = 2) -> str:
        """Like `apisix init_etcd`: GET /version on each endpoint; the first answer wins."""
        last = "no endpoint answered"
        for _ in range(retries):
            for endpoint in self.endpoints:
                try:
                    await self._version_on(endpoint, timeout)
                    self._unhealthy_until.pop(endpoint, None)
                    return endpoint
                except EtcdError as err:
                    last = str(err)
        raise EtcdError(f"request etcd endpoint '/version' error, {last}")

    # -- auth --------------------------------------------------------------

    async def auth_headers(self, refresh: bool = False) -> dict[str, str]:
        """`Authorization: <token>` (raw token, as lua-resty-etcd sends it) when auth is set."""
        if not self._user:
            return {}
        async with self._token_lock:
            if self._token is None or refresh:
                self._token = await self._authenticate()
        return {"Authorization": self._token}

    async def _authenticate(self) -> str:
        body = {"name": self._user, "password": self._password or ""}
        answer = await self._call("/v3/auth/authenticate", body, with_auth=False)
        token = answer.get("token")
        if not token:
            raise EtcdError("authenticate refused: no token in the answer")
        return str(token)

    # -- calls -------------------------------------------------------------

    async def _version_on(self, endpoint: str, timeout: float) -> dict[str, Any]:
        try:
            async with self.session.get(
                endpoint + "/version", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise EtcdError(f"{endpoint}: /version answered {resp.status}")
                data = json.loads(text)
                return data if isinstance(data, dict) else {}
        except TimeoutError as exc:
            raise _Unreachable(f"{endpoint}: timeout") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _Unreachable(f"{endpoint}: {describe(exc)}") from exc
        except ValueError as exc:
            raise EtcdError(f"{endpoint}: /version answered invalid JSON") from exc

    async def version(self) -> dict[str, Any]:
        """GET /version on the first healthy endpoint (the Prometheus reachability check)."""
        return await self._with_failover(lambda ep: self._version_on(ep, self.timeout))

    async def _call(
        self, path: str, body: Mapping[str, Any], with_auth: bool = True
    ) -> dict[str, Any]:
        async def attempt(endpoint: str) -> dict[str, Any]:
            for refresh in (False, True):
                headers = await self.auth_headers(refresh) if with_auth else {}
                status, data = await self._post(endpoint, path, body, headers)
                if status == 200:
                    return data
                message = str(data.get("message") or data.get("error") or f"HTTP {status}")
                if with_auth and self._user and not refresh and "auth token" in message:
                    continue  # token expired: authenticate again once
                raise EtcdError(message)
            raise AssertionError("unreachable")

        return await self._with_failover(attempt)

    async def _post(
        self, endpoint: str, path: str, body: Mapping[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        try:
            async with self.session.post(
                endpoint + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                text = await resp.text()
                try:
                    data = json.loads(text) if text else {}
                except ValueError:
                    data = {"message": text.strip()}
                return resp.status, data if isinstance(data, dict) else {}
        except TimeoutError as exc:
            raise _Unreachable(f"{endpoint}: timeout") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _Unreachable(f"{endpoint}: {describe(exc)}") from exc

    async def _with_failover(
        self, attempt: Callable[[str], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        healthy = self.healthy_endpoints()
        if not healthy:
            raise EtcdError("has no healthy etcd endpoint available")
        last: EtcdError | None = None
        for endpoint in healthy:
            try:
                result: dict[str, Any] = await attempt(endpoint)
                return result
            except _Unreachable as err:
                log.warning("etcd %s, retrying on the next endpoint", err)
                self.report_failure(endpoint)
                last = EtcdError(str(err))
        assert last is not None
        raise last

    async def range(
        self, key: str, end: bytes | None = None, *, limit: int = 0
    ) -> tuple[list[KV], int]:
        """POST /v3/kv/range; returns the kvs and header.revision."""
        body: dict[str, Any] = {"key": b64(key)}
        if end is not None:
            body["range_end"] = b64(end)
        if limit:
            body["limit"] = limit
        answer = await self._call("/v3/kv/range", body)
        return [KV.parse(kv) for kv in answer.get("kvs") or []], header_revision(answer)

    async def put(self, key: str, value: str, prev_kv: bool = False) -> tuple[KV | None, int]:
        """POST /v3/kv/put; returns the previous kv (when asked and present) and the revision."""
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if prev_kv:
            body["prev_kv"] = True
        answer = await self._call("/v3/kv/put", body)
        prev = answer.get("prev_kv")
        return (KV.parse(prev) if prev else None), header_revision(answer)

    async def delete(self, key: str) -> tuple[int, int]:
        """POST /v3/kv/deleterange on one key; returns (deleted count, revision)."""
        answer = await self._call("/v3/kv/deleterange", {"key": b64(key)})
        return int(answer.get("deleted", 0)), header_revision(answer)

    async def put_if_absent(self, key: str, value: str) -> bool:
        """A txn that puts `key` only when it was never created; True if it wrote."""
        body = {
            "compare": [
                {"result": "EQUAL", "target": "CREATE", "key": b64(key), "create_revision": "0"}
            ],
            "success": [{"request_put": {"key": b64(key), "value": b64(value)}}],
        }
        answer = await self._call("/v3/kv/txn", body)
        return bool(answer.get("succeeded"))


def describe(exc: BaseException) -> str:
    """A short, lua-resty-etcd-like reason for a client-side failure."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"connect failed: {exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "closed"
    return str(exc) or type(exc).__name__

"""The APISIX admin API, every call timed and classified."""

from __future__ import annotations

from typing import Any

import aiohttp

from watchdog.config import GatewayConfig
from watchdog.httpprobe import timed_request
from watchdog.redact import Redactor
from watchdog.results import ProbeResult, Reason

ADMIN_PREFIX = "/apisix/admin"
PROBE_ROUTE_ID = "watchdog-probe-absent"
# A client is made per poll; its redactor (a regex over the key's forms) is made once per
# gateway config. More than the re module's own cache holds with a thousand distinct keys.
_REDACTORS: dict[int, tuple[GatewayConfig, Redactor]] = {}
_REDACTORS_MAX = 4096


def _redactor(gateway: GatewayConfig) -> Redactor:
    cached = _REDACTORS.get(id(gateway))
    if cached is not None and cached[0] is gateway:
        return cached[1]
    if len(_REDACTORS) >= _REDACTORS_MAX:
        _REDACTORS.clear()  # configs were reloaded many times: start over
    redactor = Redactor.for_gateway(gateway)
    _REDACTORS[id(gateway)] = (gateway, redactor)
    return redactor


class AdminClient:
    """Admin API calls for one gateway. The key is sent as X-API-KEY and never logged; an
    answer that echoes it (or a URL's password) comes back with it scrubbed."""

    def __init__(self, gateway: GatewayConfig, session: aiohttp.ClientSession) -> None:
        self.gateway = gateway
        self.session = session
        key = gateway.admin_key
        self._headers = {"X-API-KEY": key.get_secret_value()} if key is not None else {}
        self.redactor = _redactor(gateway)

    def _url(self, path: str) -> str:
        return f"{self.gateway.admin_url}{ADMIN_PREFIX}{path}"

    async def _call(
        self, method: str, path: str, op: str, timeout: float, ok: tuple[int, ...],
        body: Any = None,
    ) -> ProbeResult:
        result = await timed_request(
            self.session, method, self._url(path), api="admin", op=op, timeout=timeout,
            json_body=body, headers=self._headers, ok_status=ok,
        )
        if not self.redactor:
            return result
        return ProbeResult(
            result.api, result.op, result.ok, result.duration, result.reason,
            self.redactor.scrub(result.detail), result.phases, result.status, result.revision,
            self.redactor.scrub_value(result.body),
        )

    async def get_missing_route(self, timeout: float) -> ProbeResult:
        """GET a route id that does not exist: a 404 'Key not found' proves etcd answered."""
        result = await self._call(
            "GET", f"/routes/{PROBE_ROUTE_ID}", "get_missing_route", timeout, ok=(404, 200)
        )
        if result.ok and result.status == 404:
            body = result.body if isinstance(result.body, dict) else {}
            if body.get("message") != "Key not found":
                return _fail(result, Reason.PROTOCOL, "404 without 'Key not found'")
        return result

    async def list_routes(self, timeout: float) -> ProbeResult:
        return await self._call("GET", "/routes", "list_routes", timeout, ok=(200,))

    async def put_route(self, route_id: str, route: dict[str, Any], timeout: float) -> ProbeResult:
        return await self._call("PUT", f"/routes/{route_id}", "put_route", timeout,
                                ok=(200, 201), body=route)

    async def get_route(self, route_id: str, timeout: float) -> ProbeResult:
        return await self._call("GET", f"/routes/{route_id}", "get_route", timeout, ok=(200,))

    async def delete_route(self, route_id: str, timeout: float) -> ProbeResult:
        """DELETE a route; 404 counts as done (already gone)."""
        return await self._call("DELETE", f"/routes/{route_id}", "delete_route", timeout,
                                ok=(200, 404))


def _fail(result: ProbeResult, reason: Reason, detail: str) -> ProbeResult:
    return ProbeResult(
        result.api, result.op, False, result.duration, reason, detail, result.phases,
        result.status, result.revision, result.body,
    )

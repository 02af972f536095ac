"""The simulated gateway's Admin API (`/apisix/admin`) and its fault-control endpoints."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from watchdog.lab.sim_etcd import KV, EtcdError, range_end
from watchdog.lab.sim_state import version_at_least

if TYPE_CHECKING:
    from watchdog.lab.sim_core import SimCore

# Resource types the simulated Admin API stores; anything else is "Unsupported resource type".
RESOURCES: dict[str, str] = {
    "routes": "route",
    "services": "service",
    "upstreams": "upstream",
    "consumers": "consumer",
    "ssls": "ssl",
    "global_rules": "global rule",
    "plugin_configs": "plugin config",
    "consumer_groups": "consumer group",
    "protos": "proto",
    "stream_routes": "stream route",
    "plugin_metadata": "plugin metadata",
}
UPSTREAM_DEFAULTS = {"hash_on": "vars", "pass_host": "pass", "scheme": "http"}
ROUTE_DEFAULTS = {"priority": 0, "status": 1}
NOT_FOUND = {"message": "Key not found"}


def encode(body: Any) -> str:
    """cjson-like compact JSON plus the newline core.response.exit appends."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n"


class AdminError(Exception):
    """An Admin API answer other than success."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


class AdminApi:
    """Handlers for one simulated gateway's admin port."""

    def __init__(self, sim: SimCore) -> None:
        self.sim = sim
        self.config = sim.config

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/__sim/faults", self.handle_faults)
        app.router.add_route("GET", "/__sim/state", self.handle_state)
        app.router.add_route("*", "/apisix/admin{tail:(/.*)?}", self.handle)
        return app

    # -- plumbing ----------------------------------------------------------

    def response(self, status: int, body: Any, api_version: bool = True) -> web.Response:
        resp = web.Response(
            status=status, body=encode(body).encode(), content_type="application/json"
        )
        if api_version:
            resp.headers["X-API-VERSION"] = "v3"
        resp.headers["Access-Control-Allow-Origin"] = "*"
        return resp

    def check_token(self, request: web.Request) -> web.Response | None:
        """None when the key is right, else APISIX's 401."""
        given = (
            request.headers.get("X-API-KEY")
            or request.query.get("api_key")
            or request.cookies.get("X-API-KEY")
        )
        if given == self.config.admin_key:
            return None
        body: dict[str, str] = {"error_msg": "failed to check token"}
        if "echo-key" in self.sim.faults:  # a careless server quoting the key it was sent
            body["error_msg"] = f"failed to check token: wrong apikey {given!r}"
        if version_at_least(self.config.version, 3, 10):
            body["description"] = "missing apikey" if not given else "wrong apikey"
        return self.response(401, body, api_version=False)

    def key(self, resource: str, item_id: str) -> str:
        return f"{self.config.prefix}/{resource}/{item_id}"

    # -- fault control -----------------------------------------------------

    async def handle_faults(self, request: web.Request) -> web.Response:
        denied = self.check_token(request)
        if denied is not None:
            return denied
        if request.method == "PUT":
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                faults = body.get("faults")
                delay = body.get("admin_delay")
                self.sim.set_faults(
                    self.sim.faults if faults is None else faults,
                    admin_delay=None if delay is None else float(delay),
                )
            except (ValueError, TypeError) as err:
                return self.response(400, {"error_msg": str(err)}, api_version=False)
        elif request.method != "GET":
            return self.response(405, {"error_msg": "use GET or PUT"}, api_version=False)
        return self.response(200, self.sim.fault_state(), api_version=False)

    async def handle_state(self, request: web.Request) -> web.Response:
        denied = self.check_token(request)
        if denied is not None:
            return denied
        return self.response(200, self.sim.state(), api_version=False)

    # -- admin API ---------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        if self.sim.admin_delay_now > 0:
            await asyncio.sleep(self.sim.admin_delay_now)
        tail = request.match_info.get("tail", "").strip("/")
        if request.method == "HEAD" and not tail:
            return web.Response(status=200)
        denied = self.check_token(request)
        if denied is not None:
            return denied
        resource, _, item_id = tail.partition("/")
        if resource not in RESOURCES:
            return self.response(
                404, {"error_msg": f"Unsupported resource type: {resource}"}, api_version=False
            )
        try:
            status, body = await self.dispatch(request, resource, item_id or None)
        except AdminError as err:
            status, body = err.status, err.body
        except EtcdError as err:
            status, body = 503, {"error_msg": str(err)}
        if isinstance(body, str):  # APISIX answers a few errors as plain strings
            resp = web.Response(status=status, body=body.encode(), content_type="text/plain")
            resp.headers["X-API-VERSION"] = "v3"
            return resp
        return self.response(status, body)

    async def dispatch(
        self, request: web.Request, resource: str, item_id: str | None
    ) -> tuple[int, Any]:
        method = request.method
        if method == "GET":
            if item_id is None:
                return await self.list(request, resource)
            return await self.get(resource, item_id)
        if method == "PUT":
            return await self.put(resource, item_id, await self.read_body(request))
        if method == "POST":
            if item_id is not None:
                name = RESOURCES[resource]
                raise AdminError(400, {"error_msg": f"wrong {name} id, do not need it"})
            return await self.post(resource, await self.read_body(request))
        if method == "DELETE" and item_id is not None:
            return await self.delete(request, resource, item_id)
        if method == "PATCH" and item_id is not None:
            return await self.patch(resource, item_id, await self.read_body(request))
        raise AdminError(404, {"error_msg": "not found"})

    async def read_body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.text()
        try:
            body = json.loads(raw)
        except ValueError as err:
            raise AdminError(400, {"error_msg": f"invalid request body: {err}"}) from err
        if not isinstance(body, dict):
            raise AdminError(400, {"error_msg": "invalid request body: not a JSON object"})
        return body

    # -- storage (etcd, or the shim's private dict) --------------------------

    @property
    def shim(self) -> bool:
        return "shim" in self.sim.faults

    async def fetch(self, key: str) -> dict[str, Any] | None:
        """{"key","value","createdIndex","modifiedIndex"} of one key, like APISIX's GET."""
        if self.shim:
            found = self.sim.shim_store.get(key)
            return copy.deepcopy(found) if found else None
        # APISIX reads a prefix and checks the first kv is the key itself.
        kvs, _ = await self.sim.etcd.range(key, range_end(key))
        for kv in kvs:
            if kv.key == key:
                return node(kv)
        return None

    async def store(self, key: str, value: dict[str, Any]) -> bool:
        """Write a value; True when the key was new."""
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if self.shim:
            revision = self.sim.next_shim_revision()
            prev = self.sim.shim_store.get(key)
            created = prev["createdIndex"] if prev else revision
            self.sim.shim_store[key] = {
                "key": key, "value": json.loads(text), "createdIndex": created,
                "modifiedIndex": revision,
            }
            return prev is None
        prev_kv, _ = await self.sim.etcd.put(key, text, prev_kv=True)
        return prev_kv is None

    async def generate_id(self) -> str:
        if self.shim:
            return f"{self.sim.next_shim_revision():020d}"
        _, revision = await self.sim.etcd.put(f"{self.config.prefix}/gen_id", "1")
        return f"{revision:020d}"

    # -- operations --------------------------------------------------------

    async def get(self, resource: str, item_id: str) -> tuple[int, Any]:
        found = await self.fetch(self.key(resource, item_id))
        if found is None:
            return 404, NOT_FOUND
        return 200, found

    async def list(self, request: web.Request, resource: str) -> tuple[int, Any]:
        page_size = request.query.get("page_size")
        page = request.query.get("page")
        if page_size is not None and not (page_size.isdigit() and 10 <= int(page_size) <= 500):
            return 400, "page_size must be between 10 and 500"
        if self.shim:
            # An etcd-adapter shim answers the directory range with nothing at all.
            body = {"header": {"revision": str(self.sim.shim_revision)}, **NOT_FOUND}
            return 404, body
        directory = f"{self.config.prefix}/{resource}"
        kvs, _ = await self.sim.etcd.range(directory, range_end(directory))
        if not kvs:
            return 404, NOT_FOUND
        items = [node(kv) for kv in kvs if kv.key.startswith(directory + "/")
                 and kv.key != directory + "/"]
        total = len(items)
        if page_size is not None:
            size = int(page_size)
            number = int(page) if page and page.isdigit() and int(page) > 0 else 1
            items = items[(number - 1) * size: number * size]
        return 200, {"list": items, "total": total}

    async def put(
        self, resource: str, url_id: str | None, body: dict[str, Any]
    ) -> tuple[int, Any]:
        item_id, value = await self.prepare(resource, url_id, body)
        key = self.key(resource, item_id)
        previous = await self.fetch(key)
        now = int(time.time())
        if resource != "plugin_metadata":
            prev_value = previous["value"] if previous else None
            created = prev_value.get("create_time") if isinstance(prev_value, dict) else None
            value["create_time"] = created if isinstance(created, int) else now
            value["update_time"] = now
        is_new = await self.store(key, value)
        return (201 if is_new else 200), {"key": key, "value": value}

    async def post(self, resource: str, body: dict[str, Any]) -> tuple[int, Any]:
        if resource in ("consumers", "plugin_metadata"):
            raise AdminError(404, {"error_msg": "not found"})
        item_id = await self.generate_id()
        _, value = await self.prepare(resource, item_id, body)
        now = int(time.time())
        value["create_time"] = now
        value["update_time"] = now
        key = self.key(resource, item_id)
        await self.store(key, value)
        return 201, {"key": key, "value": value}

    async def patch(
        self, resource: str, item_id: str, body: dict[str, Any]
    ) -> tuple[int, Any]:
        key = self.key(resource, item_id)
        previous = await self.fetch(key)
        if previous is None or not isinstance(previous["value"], dict):
            return 404, NOT_FOUND
        merged = merge_patch(previous["value"], body)
        if "update_time" not in body:
            merged["update_time"] = int(time.time())
        await self.store(key, merged)
        return 200, {"key": key, "value": merged}

    async def delete(
        self, request: web.Request, resource: str, item_id: str
    ) -> tuple[int, Any]:
        key = self.key(resource, item_id)
        if resource in ("upstreams", "services") and request.query.get("force") != "true":
            await self.check_unreferenced(resource, item_id)
        if self.shim:
            if self.sim.shim_store.pop(key, None) is None:
                return 404, NOT_FOUND
            self.sim.next_shim_revision()
            return 200, {"deleted": "1", "key": key}
        deleted, _ = await self.sim.etcd.delete(key)
        if deleted == 0:
            return 404, NOT_FOUND
        return 200, {"deleted": str(deleted), "key": key}

    async def check_unreferenced(self, resource: str, item_id: str) -> None:
        field = "upstream_id" if resource == "upstreams" else "service_id"
        users = ("routes", "services") if resource == "upstreams" else ("routes",)
        for user in users:
            for item in await self.values(user):
                if str(item.get(field, "")) == item_id:
                    what = "this upstream" if resource == "upstreams" else "this service directly"
                    name = RESOURCES[user]
                    raise AdminError(400, {"error_msg": (
                        f"can not delete {what}, {name} [{item.get('id')}] is still using it now"
                    )})

    async def values(self, resource: str) -> list[dict[str, Any]]:
        directory = f"{self.config.prefix}/{resource}/"
        if self.shim:
            items = [v["value"] for k, v in self.sim.shim_store.items() if k.startswith(directory)]
        else:
            kvs, _ = await self.sim.etcd.range(directory, range_end(directory))
            items = [node(kv)["value"] for kv in kvs if kv.key != directory]
        return [v for v in items if isinstance(v, dict)]

    # -- validation --------------------------------------------------------

    async def prepare(
        self, resource: str, url_id: str | None, body: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """Check the body like the schema does and build the value to store."""
        name = RESOURCES[resource]
        if resource == "consumers":
            username = body.get("username")
            if not isinstance(username, str) or not username:
                raise AdminError(400, {"error_msg": "invalid configuration: "
                                       "property \"username\" is required"})
            return username, dict(body)
        body_id = body.get("id")
        if url_id is not None and body_id is not None and str(body_id) != url_id:
            raise AdminError(400, {"error_msg": f"wrong {name} id"})
        item_id = url_id if url_id is not None else body_id
        if item_id is None or str(item_id) == "":
            raise AdminError(400, {"error_msg": f"missing {name} id"})
        if version_at_least(self.config.version, 3, 7):
            for forbidden in ("create_time", "update_time"):
                if forbidden in body:
                    raise AdminError(400, {
                        "error_msg": f"the property is forbidden:  {forbidden}"})
        if resource == "routes" and not (body.get("uri") or body.get("uris")):
            raise AdminError(400, {"error_msg": "invalid configuration: value should match "
                                   "only one schema, but matches none"})
        if resource in ("routes", "services", "stream_routes"):
            await self.check_reference(body, "upstream_id", "upstreams")
        if resource in ("routes", "stream_routes"):
            await self.check_reference(body, "service_id", "services")
        value = copy.deepcopy(body)
        # Before 3.14.0 the Admin API stored the schema defaults too (PR #12603 stopped that).
        if not version_at_least(self.config.version, 3, 14):
            if resource == "routes":
                value = {**ROUTE_DEFAULTS, **value}
            if resource == "upstreams":
                value = {**UPSTREAM_DEFAULTS, **value}
            elif isinstance(value.get("upstream"), dict):
                value["upstream"] = {**UPSTREAM_DEFAULTS, **value["upstream"]}
        value["id"] = body_id if body_id is not None else item_id
        if resource == "plugin_metadata":
            value["id"] = item_id
        return str(item_id), value

    async def check_reference(self, body: dict[str, Any], field: str, resource: str) -> None:
        ref = body.get(field)
        if ref is None:
            return
        if await self.fetch(self.key(resource, str(ref))) is None:
            name = RESOURCES[resource]
            raise AdminError(400, {"error_msg": (
                f"failed to fetch {name} info by {name} id [{ref}], response code: 404"
            )})


def node(kv: KV) -> dict[str, Any]:
    """kvs_to_node: the v2-style node APISIX returns from the Admin API."""
    try:
        value: Any = json.loads(kv.value)
    except ValueError:
        value = kv.value
    return {
        "key": kv.key, "value": value, "createdIndex": kv.create_revision,
        "modifiedIndex": kv.mod_revision,
    }


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7396), as APISIX's PATCH applies it."""
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out

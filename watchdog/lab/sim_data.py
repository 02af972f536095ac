"""The simulated gateway's data plane: route matching on a worker's tables, redirects and
proxying, and the apisix_http_status bookkeeping."""

from __future__ import annotations

import itertools
import logging
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from watchdog.lab.sim_admin import encode
from watchdog.lab.sim_core import SimCore
from watchdog.lab.sim_etcd import describe
from watchdog.lab.sim_state import Item, RequestView, Worker, find_route, pick_node, upstream_nodes

log = logging.getLogger("watchdog.lab.gateway_sim")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})
REASONS = {
    301: "Moved Permanently", 302: "Moved Temporarily", 307: "Temporary Redirect",
    308: "Permanent Redirect", 502: "Bad Gateway", 503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


class DataPlane:
    """Answers client requests the way a worker with the current tables would."""

    def __init__(self, core: SimCore) -> None:
        self.core = core
        self.config = core.config
        self._worker_turn = itertools.count()
        self._upstream_turns: Counter[str] = Counter()
        self._upstream_session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        self._upstream_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False, limit=0), auto_decompress=False
        )

    async def close(self) -> None:
        if self._upstream_session is not None:
            await self._upstream_session.close()

    def _pick_worker(self) -> Worker:
        return self.core.workers[next(self._worker_turn) % len(self.core.workers)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.core.requests_total += 1
        worker = self._pick_worker()
        host = request.host.rsplit(":", 1)[0] if not request.host.startswith("[") else (
            request.host.split("]")[0] + "]")
        view = RequestView(
            method=request.method, host=host, path=request.path, query=request.query,
            headers=request.headers, scheme=request.scheme, request_uri=request.path_qs,
        )
        found = find_route(worker, view) if worker.loaded else None
        if found is None:
            return self._count(self._json(404, {"error_msg": "404 Route Not Found"}))
        route, pattern = found
        conf = route.value
        service = worker.get("services", conf["service_id"]) if "service_id" in conf else None
        if "service_id" in conf and service is None:
            return self._count(self._json(404, {"error_msg": "404 Route Not Found"}))
        service_conf = service.value if service and isinstance(service.value, dict) else {}
        plugins = {**(service_conf.get("plugins") or {}), **(conf.get("plugins") or {})}
        labels = (route.id, pattern, host if conf.get("host") or conf.get("hosts") else "",
                  service.id if service else "")
        redirect = plugins.get("redirect")
        if isinstance(redirect, dict):
            return self._count(self._redirect(redirect, view), labels)
        upstream = self._upstream_of(worker, route, conf, service, service_conf)
        if upstream is None:
            return self._count(self._error_page(502), labels)
        return await self._proxy(request, view, route, upstream, plugins, labels)

    def _upstream_of(
        self, worker: Worker, route: Item, conf: Mapping[str, Any], service: Item | None,
        service_conf: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """The route's upstream wins over upstream_id, then the service's."""
        owners = (route.key, service.key if service else "")
        for owner, source in zip(owners, (conf, service_conf), strict=True):
            if isinstance(source.get("upstream"), dict):
                return dict(source["upstream"], _key=f"{owner}#upstream")
            if source.get("upstream_id") is not None:
                item = worker.get("upstreams", str(source["upstream_id"]))
                if item is None or not isinstance(item.value, dict):
                    return None
                return dict(item.value, _key=item.key)
        return None

    def _redirect(self, conf: Mapping[str, Any], view: RequestView) -> web.Response:
        if conf.get("http_to_https") and view.scheme == "http":
            status = 301
            location = f"https://{view.host}{view.request_uri}"
        else:
            status = int(conf.get("ret_code", 302))
            target = str(conf.get("uri") or "")
            if conf.get("regex_uri") and isinstance(conf["regex_uri"], list):
                target = _regex_rewrite(conf["regex_uri"], view.path) or view.path
            location = _expand_vars(target, view)
            if conf.get("append_query_string") and view.query:
                joiner = "&" if "?" in location else "?"
                location += joiner + view.request_uri.partition("?")[2]
        resp = self._error_page(status)
        resp.headers["Location"] = location
        return resp

    async def _proxy(
        self, request: web.Request, view: RequestView, route: Item, upstream: dict[str, Any],
        plugins: Mapping[str, Any], labels: tuple[str, ...],
    ) -> web.StreamResponse:
        nodes = upstream_nodes(upstream)
        self._upstream_turns[upstream["_key"]] += 1
        target = pick_node(nodes, self._upstream_turns[upstream["_key"]])
        if target is None:
            return self._count(self._error_page(502), labels)
        host, port = target
        scheme = "https" if upstream.get("scheme") == "https" else "http"
        path, query = request.raw_path.partition("?")[::2]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        pass_host = upstream.get("pass_host", "pass")
        headers["Host"] = (
            f"{host}:{port}" if pass_host == "node"
            else str(upstream.get("upstream_host") or request.host) if pass_host == "rewrite"
            else request.host
        )
        rewrite = plugins.get("proxy-rewrite")
        if isinstance(rewrite, dict):
            if rewrite.get("uri"):
                path = _expand_vars(str(rewrite["uri"]), view)
            elif isinstance(rewrite.get("regex_uri"), list):
                path = _regex_rewrite(rewrite["regex_uri"], view.path) or path
            if rewrite.get("host"):
                headers["Host"] = str(rewrite["host"])
        peer = request.remote or ""
        forwarded = request.headers.get("X-Forwarded-For")
        headers.update({
            "X-Real-IP": peer,
            "X-Forwarded-For": f"{forwarded}, {peer}" if forwarded else peer,
            "X-Forwarded-Proto": request.scheme,
            "X-Forwarded-Host": view.host,
            "X-Forwarded-Port": str(self.core.ports["data"]),
        })
        url = URL(f"{scheme}://{host}:{port}{path}" + (f"?{query}" if query else ""),
                  encoded=True)
        limits = upstream.get("timeout") if isinstance(upstream.get("timeout"), dict) else {}
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=float(limits.get("connect", self.config.upstream_timeout)),
            sock_read=float(limits.get("read", self.config.upstream_timeout)),
        )
        body = await request.read()
        labels = (*labels, host)
        assert self._upstream_session is not None
        try:
            async with self._upstream_session.request(
                request.method, url, headers=headers, data=body or None, timeout=timeout,
                allow_redirects=False,
            ) as upstream_resp:
                payload = await upstream_resp.read()
                out = web.Response(status=upstream_resp.status, body=payload)
                for name, value in upstream_resp.headers.items():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "server":
                        out.headers.add(name, value)
        except TimeoutError:
            return self._count(self._error_page(504), labels)
        except (aiohttp.ClientError, OSError) as err:
            log.info("%s: upstream %s:%d failed: %s", self.config.name, host, port, describe(err))
            return self._count(self._error_page(502), labels)
        return self._count(out, labels)

    def _count(self, resp: web.Response, labels: tuple[str, ...] = ()) -> web.Response:
        """apisix_http_status bookkeeping (code, route, matched_uri, host, service, node)."""
        route, uri, host, service, node = (*labels, "", "", "", "", "")[:5]
        self.core.http_status[(str(resp.status), route, uri, host, service, "", node)] += 1
        return resp

    def _json(self, status: int, body: Any) -> web.Response:
        return web.Response(
            status=status, body=encode(body).encode(), content_type="application/json"
        )

    def _error_page(self, status: int) -> web.Response:
        """nginx's error page, as APISIX answers a bare status."""
        title = f"{status} {REASONS.get(status, '')}".strip()
        text = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n<hr><center>openresty</center>\r\n"
            "<p><em>Powered by <a href=\"https://apisix.apache.org/\">APISIX</a>.</em></p>"
            "</body>\r\n</html>\r\n"
        )
        return web.Response(status=status, body=text.encode(), content_type="text/html")


def _expand_vars(template: str, view: RequestView) -> str:
    """nginx-style $uri/$request_uri/$host/$scheme/$arg_x in a redirect or rewrite target."""
    def var(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("arg_"):
            return view.query.get(name[4:], "")
        return {
            "uri": view.path, "request_uri": view.request_uri, "host": view.host,
            "scheme": view.scheme,
        }.get(name, "")

    return re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", var, template)


def _regex_rewrite(rule: list[Any], path: str) -> str | None:
    """regex_uri = [pattern, template] with $1-style groups."""
    if len(rule) < 2:
        return None
    match = re.search(str(rule[0]), path)
    if match is None:
        return None
    return re.sub(r"\$(\d+)", lambda g: match.group(int(g.group(1))) or "", str(rule[1]))

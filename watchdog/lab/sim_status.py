"""The simulated gateway's status API (/status, /status/ready) and Prometheus page."""

from __future__ import annotations

import itertools
import json
import logging
from contextlib import suppress

from aiohttp import web

from watchdog.lab.sim_core import SimCore
from watchdog.lab.sim_etcd import EtcdError
from watchdog.lab.sim_state import INDEXED_DIRS, version_at_least

log = logging.getLogger("watchdog.lab.gateway_sim")


class StatusApi:
    """What APISIX says about itself: readiness and its etcd-related metrics."""

    def __init__(self, core: SimCore) -> None:
        self.core = core
        self.config = core.config
        self._metrics_turn = itertools.count()

    async def handle_status(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="text/plain")

    async def handle_ready(self, request: web.Request) -> web.Response:
        for worker in self.core.workers:
            if not worker.loaded:
                error = f"worker id: {worker.id} has not received configuration"
                body = json.dumps({"status": "error", "error": error}, separators=(",", ":"))
                return web.Response(status=503, body=body.encode(), content_type="text/plain")
        return web.Response(body=b'{"status":"ok"}', content_type="text/plain")

    async def handle_metrics(self, request: web.Request) -> web.Response:
        """Computed at scrape time, as APISIX 3.9 does (etcd is asked on every scrape)."""
        reachable = 1
        x_etcd_index: int | None = None
        try:
            await self.core.etcd.version()
        except EtcdError as err:
            log.info("%s: etcd unreachable during scrape: %s", self.config.name, err)
            reachable = 0
        if reachable:
            with suppress(EtcdError):
                _, x_etcd_index = await self.core.etcd.range(f"{self.config.prefix}/phantomkey")
        worker = self.core.workers[next(self._metrics_turn) % len(self.core.workers)]
        indexes = {d: worker.max_modify_index(d) for d in INDEXED_DIRS}
        indexes["max_modify_index"] = max(indexes.values())
        if worker.tables.get("global_rules"):
            indexes["prev_index"] = worker.revision
        if x_etcd_index is not None:
            indexes["x_etcd_index"] = x_etcd_index
        shown: dict[str, object] = dict(indexes)
        if "nan-index" in self.core.faults:  # a broken exporter: not a revision at all
            shown = {k: ("NaN" if k != "x_etcd_index" else v) for k, v in indexes.items()}
        out = [
            "# HELP apisix_etcd_modify_indexes Etcd modify index for APISIX keys",
            "# TYPE apisix_etcd_modify_indexes gauge",
            *(f'apisix_etcd_modify_indexes{{key="{k}"}} {v}' for k, v in sorted(shown.items())),
            "# HELP apisix_etcd_reachable Config server etcd reachable from APISIX, "
            "0 is unreachable",
            "# TYPE apisix_etcd_reachable gauge",
            f"apisix_etcd_reachable {reachable}",
            "# HELP apisix_http_requests_total The total number of client requests",
            "# TYPE apisix_http_requests_total gauge",
            f"apisix_http_requests_total {self.core.requests_total}",
        ]
        if self.core.http_status:
            out += [
                "# HELP apisix_http_status HTTP status codes per service in APISIX",
                "# TYPE apisix_http_status counter",
            ]
            names = ("code", "route", "matched_uri", "matched_host", "service", "consumer",
                     "node")
            for values, count in sorted(self.core.http_status.items()):
                labels = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
                out.append(f"apisix_http_status{{{labels}}} {count}")
        node_labels = f'hostname="{_escape(self.config.hostname)}"'
        if version_at_least(self.config.version, 3, 13):
            node_labels += f',version="{_escape(self.config.version)}"'
        out += [
            "# HELP apisix_node_info Info of APISIX node",
            "# TYPE apisix_node_info gauge",
            f"apisix_node_info{{{node_labels}}} 1",
        ]
        return web.Response(
            body=("\n".join(out) + "\n").encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

"""The web server: /metrics, /healthz, /readyz and a status page at /.

Nothing here waits on etcd or a gateway: every handler renders the latest snapshot.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from watchdog import __version__
from watchdog.etcd.exposure import headroom, limit_of
from watchdog.findings import (
    Finding,
    Severity,
    failing,
    human_duration,
    index,
    with_evidence_ages,
    worst,
)
from watchdog.render import Renderer
from watchdog.snapshot import GatewayState, PeerState, Snapshot

RUNBOOK_URL = "https://github.com/watchdog-project/watchdog/blob/main/docs/runbook.md#"
STALE_AFTER = 3.0  # intervals: a value older than this many poll intervals is greyed


class Source(Protocol):
    """What the web server reads: the /metrics renderer and the latest snapshot."""

    renderer: Renderer

    def snapshot(self) -> Snapshot: ...


SOURCE_KEY: web.AppKey[Source] = web.AppKey("source")
RELOAD_KEY: web.AppKey[Callable[[], Awaitable[tuple[bool, str]]] | None] = web.AppKey("reload")


def make_app(source: Source, middlewares: Iterable[Middleware] = (),
             telemetry_path: str = "/metrics",
             reload: Callable[[], Awaitable[tuple[bool, str]]] | None = None,
             ) -> web.Application:
    """The routes; `reload` (see watchdog.reload) backs POST /-/reload."""
    app = web.Application(middlewares=list(middlewares))
    app[SOURCE_KEY] = source
    app[RELOAD_KEY] = reload
    app.router.add_get(telemetry_path, handle_metrics)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/-/healthy", handle_healthz)  # Prometheus' own names for the same
    app.router.add_get("/-/ready", handle_readyz)
    app.router.add_post("/-/reload", handle_reload)
    app.router.add_get("/", handle_index)
    app.router.add_get("/api/v1/findings", handle_findings)
    return app


async def handle_reload(request: web.Request) -> web.Response:
    """Re-read the config file: 200 when applied; 500 naming the problem when the file is
    bad (the running config is kept); 503 while the daemon is still starting."""
    from watchdog.reload import NotReady

    reload = request.app[RELOAD_KEY]
    if reload is None:
        return web.Response(status=500, text="reload is not available\n")
    try:
        ok, why = await reload()
    except NotReady:
        return web.Response(status=503, text="starting, try again\n",
                            headers={"Retry-After": "1"})
    if ok:
        return web.Response(text="config reloaded\n")
    return web.Response(status=500, text=f"config not reloaded, the running one is kept:\n"
                                         f"{why}\n")


def findings_document(snap: Snapshot, now: float) -> dict[str, object]:
    """The body of GET /api/v1/findings (schema in docs/findings.md)."""
    found = [with_evidence_ages(f, now, snap.taken) for f in snap.findings]
    top = worst(failing(found))
    return {
        "status": top.severity.value if top else "ok",
        "snapshot_cycle": snap.cycle,
        "snapshot_time": snap.taken,
        "findings": [f.to_dict(now) for f in found],
    }


async def handle_findings(request: web.Request) -> web.Response:
    snap = request.app[SOURCE_KEY].snapshot()
    body = json.dumps(findings_document(snap, time.time()), indent=2) + "\n"
    return web.Response(text=body, content_type="application/json")


async def handle_metrics(request: web.Request) -> web.Response:
    """The page of the latest poll cycle, rendered once for every scrape of it."""
    renderer = request.app[SOURCE_KEY].renderer
    gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
    body, content_type = await renderer.scrape(
        "application/openmetrics-text" in request.headers.get("Accept", ""), gzipped)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    resp.headers["Vary"] = "Accept-Encoding"
    if gzipped:
        resp.headers["Content-Encoding"] = "gzip"
    return resp


async def handle_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def handle_readyz(request: web.Request) -> web.Response:
    snap = request.app[SOURCE_KEY].snapshot()
    if snap.ready():
        return web.Response(text="ok\n")
    waiting = snap.waiting_for()
    text = "not ready: waiting for the first poll of " + (", ".join(waiting) or "etcd members")
    return web.Response(status=503, text=text + "\n")


async def handle_index(request: web.Request) -> web.Response:
    snap = request.app[SOURCE_KEY].snapshot()
    return web.Response(text=render_status_page(snap), content_type="text/html")


# -- the status page ---------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.1f} ms"


def sparkline(points: list[tuple[float, float | None, float | None]], factor: float) -> str:
    """An inline SVG of streams (line), steady state (dashed) and the trip line."""
    width, height = 240, 48
    values = [v for _, v, _ in points if v is not None]
    steadies = [s for _, _, s in points if s is not None]
    if len(values) < 2:
        return '<svg class="spark" width="240" height="48" role="img" aria-label="no data yet">' \
               '<text x="4" y="28">collecting…</text></svg>'
    top = max(values + [s * factor for s in steadies] + [1.0]) * 1.1

    def xy(i: int, v: float) -> str:
        x = i * (width - 2) / max(1, len(points) - 1) + 1
        y = height - 1 - (v / top) * (height - 2)
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(i, v) for i, (_, v, _) in enumerate(points) if v is not None)
    parts = [f'<svg class="spark" width="{width}" height="{height}" role="img" '
             f'aria-label="watch streams, last {len(points)} polls">']
    if steadies:
        steady_pts = " ".join(xy(i, s) for i, (_, _, s) in enumerate(points) if s is not None)
        trip_pts = " ".join(
            xy(i, s * factor) for i, (_, _, s) in enumerate(points) if s is not None
        )
        parts.append(f'<polyline points="{steady_pts}" class="steady"/>')
        parts.append(f'<polyline points="{trip_pts}" class="trip"/>')
    parts.append(f'<polyline points="{line}" class="streams"/></svg>')
    return "".join(parts)


def _age_note(now: float, at: float, interval: float) -> str:
    """' · 12s ago', greyed as stale when older than a few poll intervals."""
    if not at:
        return ""
    age = max(0.0, now - at)
    cls = "age stale" if age > STALE_AFTER * interval else "age"
    return f'<div class="{cls}">{human_duration(age)} ago</div>'


def _probe_cell(peer: PeerState, api: str, op: str) -> str:
    result = peer.probes.get((api, op))
    if result is None:
        return f"<td class='muted'>not available on {html.escape(peer.backend)}</td>" \
            if api in peer.unavailable else "<td>–</td>"
    if result.ok:
        return f'<td class="ok">{_ms(result.duration)}</td>'
    return f'<td class="bad">{html.escape(result.reason or "")}</td>'


def _identity(peer: PeerState) -> str:
    """"3.5.1", or "kine (claims 3.6.11)": what the peer is, then what it says it is."""
    if peer.backend in ("", "etcd"):
        return peer.version
    claims = f" (claims {peer.reported_version})" if peer.reported_version else ""
    return f"{peer.backend}{claims}"


def _finding_list(found: list[Finding]) -> str:
    if not found:
        return ""
    items = "".join(
        f'<li class="{_sev_class(f.severity)}">{html.escape(f.summary)} '
        f'<a href="{RUNBOOK_URL}{html.escape(f.anchor)}">runbook</a></li>' for f in found)
    return f'<ul class="findings">{items}</ul>'


def _sev_class(severity: Severity) -> str:
    return {"critical": "bad", "warning": "warn"}.get(severity.value, "muted")


def _headroom_cell(peer: PeerState) -> str:
    """Streams left before the peer's own limit (250, or its configured or learned one)."""
    limit = limit_of(peer).value
    left = headroom(peer.watch_streams, peer.exposed, limit)
    if left is None:
        return '<td class="muted">not exposed</td>' if peer.exposed is False else "<td>–</td>"
    cls = "bad" if left <= 0.1 * limit else ("warn" if left <= 0.2 * limit else "ok")
    return f'<td class="{cls}">{left:.0f} of {limit}</td>'


def _peer_row(peer: PeerState, factor: float, now: float = 0.0, interval: float = 15.0,
              found: list[Finding] | None = None) -> str:
    e = html.escape
    ws = peer.wires.get("watch_streams")
    if not peer.polled:
        state = '<span class="muted">not polled yet</span>'
    elif not peer.up:
        state = f'<span class="bad">DOWN ({e(peer.poll_reason)})</span>'
    else:
        state = '<span class="ok">up</span>' + (" · leader" if peer.is_leader else "")
    if "watch_streams" in peer.unavailable:
        wire = f'<span class="muted">not available on {e(peer.backend)}</span>'
    elif ws is None or not ws.armed:
        wire = '<span class="muted">warming up</span>'
        if ws is not None and ws.warmup_left is not None:
            wire += f'<div class="muted">arms in about {human_duration(ws.warmup_left)}</div>'
    elif ws.tripped:
        wire = f'<span class="bad">TRIPPED {human_duration(ws.tripped_for)}</span>'
    else:
        wire = '<span class="ok">ok</span>'
    steady = ws.steady if ws else None
    ratio = f" ({ws.ratio:.2f}×)" if ws and ws.ratio is not None else ""
    conns = peer.connections.total if peer.connections else None
    exposed = "yes" if peer.exposed else ("no" if peer.exposed is False else "?")
    streams, expected = peer.watch_streams, peer.expected_streams
    differ = (streams is not None and expected is not None
              and abs(streams - expected) > max(2.0, 0.5 * expected))
    expected_cell = (f'<td class="warn" title="observed and expected streams disagree">'
                     f'{_fmt(expected)} ≠ {_fmt(streams)}</td>' if differ
                     else f"<td>{_fmt(expected)}</td>")
    problems = _finding_list([f for f in found or () if f.severity is not Severity.INFO])
    return (
        f"<tr><th>{e(peer.name)}<div class='muted'>{e(peer.endpoint)}</div>{problems}</th>"
        f"<td>{state}<div class='muted'>{e(_identity(peer))}</div>"
        f"{_age_note(now, peer.last_poll, interval)}</td>"
        f"<td>{_fmt(streams)}{ratio}</td><td>{_fmt(steady, 1)}</td>"
        f"<td class='wire'>{wire}</td>"
        f"<td>{sparkline(list(peer.history), factor)}</td>"
        f"<td>{_fmt(conns)}</td>{expected_cell}<td>{exposed}</td>{_headroom_cell(peer)}"
        + _probe_cell(peer, "json", "range") + _probe_cell(peer, "grpc", "range")
        + "</tr>"
    )


def _gateway_row(gw: GatewayState, now: float = 0.0, interval: float = 15.0,
                 found: list[Finding] | None = None) -> str:
    e = html.escape
    admin = gw.admin.get("get_missing_route")
    if admin is None:
        admin_cell = "<td>–</td>"
    elif admin.ok:
        admin_cell = f'<td class="ok">{_ms(admin.duration)}'
    else:
        admin_cell = f'<td class="bad">{e(admin.reason or "")}'
    if admin is not None:
        admin_cell += _age_note(now, gw.last_poll, interval) + "</td>"
    smoke = gw.smoke
    if smoke is None:
        smoke_cell = '<td class="muted">not run yet</td>'
    else:
        when = (f'<div class="age">at {time.strftime("%H:%M:%S", time.gmtime(gw.last_smoke))}'
                f' UTC, {human_duration(max(0.0, now - gw.last_smoke))} ago</div>')
        if smoke.ok:
            smoke_cell = (f'<td class="ok">passed, synced in {_ms(smoke.sync_seconds)}'
                          f'{when}</td>')
        else:
            smoke_cell = f'<td class="bad">FAILED: {e(smoke.message)}{when}</td>'
    ready = {None: "–", True: "ready", False: "NOT READY"}[gw.ready]
    problems = _finding_list([f for f in found or () if f.severity is not Severity.INFO])
    return (
        f"<tr><th>{e(gw.name)}<div class='muted'>{e(gw.admin_url)}</div>{problems}</th>"
        f"{admin_cell}{smoke_cell}<td>{_fmt(gw.config_lag)}</td><td>{ready}</td></tr>"
    )


def _banner(status: Snapshot, found: list[Finding]) -> str:
    e = html.escape
    top = worst(failing(found))
    if top is None:
        if not status.peers:
            return '<p class="banner muted">waiting for the first poll</p>'
        info = [f for f in found if f.kind == "warmup"]
        note = f" · {e(info[0].summary)}" if info else ""
        return f'<p class="banner ok-bg">OK: no warning or critical finding{note}</p>'
    others = len(failing(found)) - 1
    more = f" (+{others} more below)" if others else ""
    cls = "bad-bg" if top.severity is Severity.CRITICAL else "warn-bg"
    return (f'<div class="banner {cls}" role="alert"><strong>{e(top.severity.value.upper())}:'
            f' {e(top.summary)}</strong>{e(more)}<div>Fix: {e(top.fix)} · '
            f'<a href="{RUNBOOK_URL}{e(top.anchor)}">runbook</a></div></div>')


def _all_findings(found: list[Finding], now: float) -> str:
    if not found:
        return ""
    e = html.escape
    rows = []
    for f in found:
        evidence = "; ".join(f"{x.what}: {x.value} ({human_duration(x.age)} ago)"
                             for x in f.evidence)
        rows.append(
            f'<tr><td class="{_sev_class(f.severity)}">{e(f.severity.value)}</td>'
            f"<td>{e(f.subject)}</td><td>{e(f.summary)}<div class='muted'>{e(evidence)}</div>"
            f"<div class='muted'>cause: {e(f.cause)}</div></td><td>{e(f.fix)}</td>"
            f"<td>{human_duration(now - f.opened_at)}</td>"
            f'<td><a href="{RUNBOOK_URL}{e(f.anchor)}">runbook</a></td></tr>')
    return ("<h2>Findings</h2><table><tr><th>severity</th><th>subject</th><th>what</th>"
            "<th>fix</th><th>open for</th><th></th></tr>" + "".join(rows) + "</table>")


def render_status_page(status: Snapshot, now: float | None = None) -> str:
    now = time.time() if now is None else now
    factor = status.factor
    found = [with_evidence_ages(f, now, status.taken) for f in status.findings]
    by_subject = index(found)
    peers = sorted(status.peers.values(), key=lambda p: p.name)
    tripped = [p.name for p in peers if p.wires.get("watch_streams") and
               p.wires["watch_streams"].tripped]
    down = [p.name for p in peers if p.polled and not p.up]
    banner = _banner(status, found)
    if tripped or down:
        banner += '<p class="bad">' + html.escape(
            "; ".join(filter(None, [
                f"trip wire: {', '.join(tripped)}" if tripped else "",
                f"down: {', '.join(down)}" if down else "",
            ]))) + "</p>"
    interval = status.interval
    peer_rows = "".join(_peer_row(p, factor, now, interval, by_subject.get(p.name))
                        for p in peers) or \
        '<tr><td colspan="12">no peers yet (first poll pending)</td></tr>'
    gateway_rows = "".join(_gateway_row(g, now, interval, by_subject.get(g.name))
                           for g in status.gateways.values())
    uptime = human_duration(now - status.started)
    taken_age = max(0.0, now - status.taken)
    age = (f'<span class="{"stale" if taken_age > STALE_AFTER * interval else "age"}">'
           f"({human_duration(taken_age)} ago)</span>")
    discovery = (f'<p class="bad">member discovery: {html.escape(status.discovery_error)}</p>'
                 if status.discovery_error else "")
    gateways = (
        "<h2>Gateways</h2><table><tr><th>gateway</th><th>admin call</th><th>last smoke</th>"
        f"<th>config lag (revisions)</th><th>status API</th></tr>{gateway_rows}</table>"
        if status.gateways else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>watchdog</title><style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse;margin-bottom:1.5em}}
th,td{{border-bottom:1px solid #ddd;padding:.35em .6em;text-align:left;vertical-align:top}}
.muted{{color:#777;font-size:12px}} .ok{{color:#176b24}} .bad{{color:#b00020;font-weight:600}}
.warn{{color:#8a5300;font-weight:600}} .age{{color:#777;font-size:11px}}
.stale{{color:#aaa;font-style:italic}}
.banner{{padding:.6em .9em;border-radius:4px;background:#f4f4f4;margin:.8em 0}}
.ok-bg{{background:#e3f4e6;color:#176b24}} .warn-bg{{background:#fff1d6;color:#6b4100}}
.bad-bg{{background:#fbe0e4;color:#8a0018}}
ul.findings{{margin:.3em 0 0 1em;padding:0;font-size:12px;font-weight:normal}}
.spark polyline{{fill:none;stroke-width:1.5}} .spark .streams{{stroke:#1f5fbf}}
.spark .steady{{stroke:#777;stroke-dasharray:3 2}} .spark .trip{{stroke:#b00020;stroke-dasharray:2 3}}
div.scroll{{overflow-x:auto}}
</style></head><body>
<h1>watchdog</h1>
{banner}{discovery}
<p class="muted">version {__version__} · up {uptime} · snapshot {status.cycle} {age} · trip wire
at {factor:g}× steady state · <a href="/metrics">/metrics</a> · <a href="/readyz">/readyz</a> ·
<a href="/api/v1/findings">/api/v1/findings</a></p>
{_all_findings(found, now)}
<h2>etcd peers</h2>
<div class="scroll"><table><tr><th>peer</th><th>state</th><th>watch streams</th>
<th>steady state</th><th>trip wire</th><th>streams (blue), steady (grey), {factor:g}× (red)</th>
<th>client conns</th><th>expected streams</th><th>250-stream limit exposed</th>
<th>headroom to the limit</th><th>JSON range</th><th>gRPC range</th></tr>
{peer_rows}</table></div>
<div class="scroll">{gateways}</div>
</body></html>
"""

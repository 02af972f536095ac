"""timed_request against small real aiohttp servers on loopback.

Tests taking the `session` fixture run twice: on a pooled aiohttp session and on a
fresh-connection one, whose calls go through the lean HTTP/1.1 client (watchdog.http1).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
import trustme
from aiohttp import web

from watchdog.httpprobe import make_session, make_ssl_context, timed_request
from watchdog.lab.cluster import free_port
from watchdog.results import Reason

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(
    handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Run one handler for every path on a loopback port; yield the base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture(params=["aiohttp", "lean"])
async def session(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    connector = aiohttp.TCPConnector(force_close=True) if request.param == "lean" else None
    async with make_session(connector=connector) as s:
        yield s


async def ok_handler(request: web.Request) -> web.Response:
    return web.json_response({"hello": "world", "n": "1"})


async def test_ok(session) -> None:
    async with serve(ok_handler) as base:
        result = await timed_request(session, "POST", base + "/v3/kv/range", api="json",
                                     op="range", timeout=2, json_body={"key": "Zm9v"})
    assert result.ok, result
    assert result.status == 200
    assert result.body == {"hello": "world", "n": "1"}
    assert result.reason is None and result.detail == ""
    assert {"connect", "processing", "transfer"} <= set(result.phases)
    assert "tls" not in result.phases


async def test_slow_handler_times_out_within_deadline(session) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    async with serve(slow) as base:
        started = time.monotonic()
        result = await timed_request(session, "GET", base + "/", api="json", op="status",
                                     timeout=0.3)
        elapsed = time.monotonic() - started
    assert not result.ok
    assert result.reason is Reason.TIMEOUT
    assert "processing" in result.detail
    assert 0.3 <= elapsed < 0.5
    assert "processing" not in result.phases  # never reached the end of that phase
    assert "connect" in result.phases


async def test_refused_on_closed_port(session) -> None:
    port = free_port()
    result = await timed_request(session, "GET", f"http://127.0.0.1:{port}/", api="json",
                                 op="status", timeout=2)
    assert result.reason is Reason.REFUSED
    assert result.detail == "connection refused"
    assert result.duration < 1


@pytest.mark.parametrize(
    ("status", "reason"),
    [(401, Reason.AUTH), (403, Reason.AUTH), (500, Reason.HTTP), (503, Reason.HTTP)],
)
async def test_error_status(session, status: int, reason: Reason) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": "secret-ish server text", "code": 16},
                                 status=status)

    async with serve(handler) as base:
        result = await timed_request(session, "GET", base + "/", api="json", op="range",
                                     timeout=2)
    assert result.reason is reason
    assert result.status == status
    assert result.detail == f"HTTP {status}"
    assert result.body == {"error": "secret-ish server text", "code": 16}


async def test_error_status_with_text_body_has_no_body(session) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="oops", status=500)

    async with serve(handler) as base:
        result = await timed_request(session, "GET", base + "/", api="json", op="range",
                                     timeout=2)
    assert result.reason is Reason.HTTP and result.body is None


async def test_ok_status_set_is_honoured(session) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({}, status=201)

    async with serve(handler) as base:
        default = await timed_request(session, "GET", base + "/", api="admin", op="x",
                                      timeout=2)
        allowed = await timed_request(session, "GET", base + "/", api="admin", op="x",
                                      timeout=2, ok_status=(200, 201))
    assert default.reason is Reason.HTTP
    assert allowed.ok


async def test_garbage_json_is_protocol(session) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="<html>not json</html>", content_type="application/json")

    async with serve(handler) as base:
        result = await timed_request(session, "GET", base + "/", api="json", op="range",
                                     timeout=2)
        raw = await timed_request(session, "GET", base + "/", api="metrics", op="metrics",
                                  timeout=2, expect_json=False)
    assert result.reason is Reason.PROTOCOL and result.detail == "invalid JSON"
    assert "not json" not in repr(result)
    assert raw.ok and raw.body == b"<html>not json</html>"


async def test_non_http_answer_is_protocol(session) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"\x00\x01 this is not HTTP at all\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await timed_request(session, "GET", f"http://127.0.0.1:{port}/", api="json",
                                     op="range", timeout=2)
    assert result.reason is Reason.PROTOCOL, result


async def test_huge_body_is_capped(session) -> None:
    written = 0
    total = 256 * 1024 * 1024

    async def huge(request: web.Request) -> web.StreamResponse:
        nonlocal written
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b"x" * (256 * 1024)
        try:
            while written < total:
                await resp.write(chunk)
                written += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async with serve(huge) as base:
        started = time.monotonic()
        result = await timed_request(session, "GET", base + "/", api="json", op="range",
                                     timeout=10, max_body=100_000)
        elapsed = time.monotonic() - started
    assert result.reason is Reason.PROTOCOL
    assert result.detail == "body over 100000 bytes"
    assert elapsed < 2
    # The client stopped reading; what the server got out is bounded by socket buffers.
    assert written < 32 * 1024 * 1024


async def test_declared_huge_body_is_refused_without_reading(session) -> None:
    async def declared(request: web.Request) -> web.Response:
        return web.Response(body=b"y" * 300_000)

    async with serve(declared) as base:
        result = await timed_request(session, "GET", base + "/", api="metrics", op="metrics",
                                     timeout=2, max_body=1000, expect_json=False)
    assert result.reason is Reason.PROTOCOL and result.body is None


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


async def test_untrusted_certificate_is_tls(session, server_ca: trustme.CA) -> None:
    async with serve(ok_handler, server_context(server_ca)) as base:
        default = await timed_request(session, "GET", base + "/", api="json", op="range",
                                      timeout=2)
        other_ca = trustme.CA()
        with other_ca.cert_pem.tempfile() as ca_path:
            pinned = make_ssl_context(ca_file=ca_path)
        wrong = await timed_request(session, "GET", base + "/", api="json", op="range",
                                    timeout=2, ssl=pinned)
    for result in (default, wrong):
        assert result.reason is Reason.TLS, result
        assert result.detail.startswith("certificate verify failed")


async def test_trusted_certificate_times_tls_separately(session, server_ca: trustme.CA) -> None:
    with server_ca.cert_pem.tempfile() as ca_path:
        client_ctx = make_ssl_context(ca_file=ca_path)
        plain_ctx = ssl.create_default_context(cafile=ca_path)
    async with serve(ok_handler, server_context(server_ca)) as base:
        timed = await timed_request(session, "GET", base + "/", api="json", op="range",
                                    timeout=2, ssl=client_ctx)
        untimed = await timed_request(session, "GET", base + "/", api="json", op="range",
                                      timeout=2, ssl=plain_ctx)
    assert timed.ok, timed
    assert timed.phases["tls"] > 0 and timed.phases["connect"] >= 0
    # A context not made by make_ssl_context: connect covers TCP and TLS, no tls phase.
    assert untimed.ok and "tls" not in untimed.phases


async def test_concurrent_requests_keep_their_own_phases(server_ca: trustme.CA) -> None:
    async def delayed(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query["d"]))
        return web.json_response({})

    with server_ca.cert_pem.tempfile() as ca_path:
        client_ctx = make_ssl_context(ca_file=ca_path)
    async with serve(delayed, server_context(server_ca)) as base, make_session() as s:
        results = await asyncio.gather(*(
            timed_request(s, "GET", f"{base}/?d={d}", api="json", op="range", timeout=3,
                          ssl=client_ctx)
            for d in (0.0, 0.3, 0.6)
        ))
    for delay, result in zip((0.0, 0.3, 0.6), results, strict=True):
        assert result.ok, result
        assert "tls" in result.phases
        assert abs(result.phases["processing"] - delay) < 0.1


async def test_phases_show_server_delay_and_sum_to_duration() -> None:
    async def delayed(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        return web.json_response({"ok": True})

    async with serve(delayed) as base, make_session() as s:
        result = await timed_request(s, "GET", base + "/", api="json", op="range", timeout=2)
    assert result.ok
    assert 0.2 <= result.phases["processing"] < 0.22
    assert abs(sum(result.phases.values()) - result.duration) < 0.01


async def test_reused_connection_has_no_connect_phase() -> None:
    async with serve(ok_handler) as base, make_session() as s:
        first = await timed_request(s, "GET", base + "/", api="json", op="range", timeout=2)
        second = await timed_request(s, "GET", base + "/", api="json", op="range", timeout=2)
    assert "connect" in first.phases
    assert "connect" not in second.phases and "processing" in second.phases


async def test_connection_reset_is_refused(session) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    async def accept_and_reset() -> None:
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        conn, _ = await loop.sock_accept(listener)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()

    task = asyncio.create_task(accept_and_reset())
    try:
        result = await timed_request(session, "GET", f"http://127.0.0.1:{port}/", api="json",
                                     op="range", timeout=2)
    finally:
        await task
        listener.close()
    assert result.reason is Reason.REFUSED, result


async def test_chunked_gzip_and_deflate_bodies_decode(session) -> None:
    page = b"etcd_server_has_leader 1\n" * 4000

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        coding = request.query.get("c")
        if coding:
            resp.enable_compression(web.ContentCoding(coding))
        await resp.prepare(request)
        for i in range(0, len(page), 7000):
            await resp.write(page[i : i + 7000])
        await resp.write_eof()
        return resp

    async with serve(handler) as base:
        for coding in ("", "gzip", "deflate"):
            result = await timed_request(session, "GET", f"{base}/?c={coding}", api="metrics",
                                         op="metrics", timeout=2, expect_json=False)
            assert result.ok, (coding, result)
            assert result.body == page
        capped = await timed_request(session, "GET", f"{base}/?c=gzip", api="metrics",
                                     op="metrics", timeout=2, expect_json=False,
                                     max_body=len(page) - 1)
    assert capped.reason is Reason.PROTOCOL and capped.detail.startswith("body over")


async def test_truncated_body_is_protocol(session) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"a\": 1")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(short, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await timed_request(session, "GET", f"http://127.0.0.1:{port}/", api="json",
                                     op="range", timeout=2)
    assert result.reason is Reason.PROTOCOL, result


async def test_fresh_connection_sessions_use_the_lean_client() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("User-Agent", ""))
        return web.json_response({"got": await request.json(), "key": request.headers["K"]})

    async with serve(handler) as base, \
            make_session(connector=aiohttp.TCPConnector(force_close=True)) as s:
        result = await timed_request(s, "PUT", base + "/x", api="admin", op="put", timeout=2,
                                     json_body={"a": [1]}, headers={"K": "v"})
    assert result.ok and result.body == {"got": {"a": [1]}, "key": "v"}
    assert seen == ["watchdog"]
    assert {"connect", "processing", "transfer"} <= set(result.phases)


async def test_credentials_in_the_url_are_sent_as_basic_auth(session) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"auth": request.headers.get("Authorization", "")})

    async with serve(handler) as base:
        url = base.replace("http://", "http://us%40er:p%3Ass@") + "/"
        result = await timed_request(session, "GET", url, api="metrics", op="m", timeout=2)
    assert result.ok and result.body == {"auth": "Basic dXNAZXI6cDpzcw=="}

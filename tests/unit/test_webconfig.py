"""The web-config file (exporter-toolkit format): validation, basic auth, TLS contexts."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import bcrypt
import pytest
import trustme
import yaml
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from watchdog import webconfig
from watchdog.config import ConfigError
from watchdog.webconfig import BasicAuth, WebServerConfig, load_web_config

PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(tmp_path: Path, ca: trustme.CA) -> Path:
    """cert.pem, key.pem, ca.pem (client CA) in tmp_path/tls."""
    tls = tmp_path / "tls"
    tls.mkdir()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(tls / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tls / "key.pem"))
    ca.cert_pem.write_to_path(str(tls / "ca.pem"))
    return tls


def write(tmp_path: Path, data: object, name: str = "web.yml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def problems(tmp_path: Path, data: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_web_config(write(tmp_path, data))
    return str(info.value)


# -- validation ---------------------------------------------------------------------------


def test_full_config_with_relative_paths(tmp_path: Path, certs: Path) -> None:
    config = load_web_config(write(tmp_path, {
        "tls_server_config": {"cert_file": "tls/cert.pem", "key_file": "tls/key.pem",
                              "client_auth_type": "RequireAndVerifyClientCert",
                              "client_ca_file": "tls/ca.pem", "min_version": "TLS13"},
        "http_server_config": {"http2": False,
                               "headers": {"Strict-Transport-Security": "max-age=3600"}},
        "basic_auth_users": {"prometheus": HASH},
    }))
    assert config.tls is not None
    assert config.tls.cert_file == certs / "cert.pem"  # relative to the web config file
    assert config.tls.client_ca_file == certs / "ca.pem"
    assert config.users == {"prometheus": HASH.encode()}
    ctx = config.ssl_context()
    assert ctx is not None
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
    assert len(config.middlewares()) == 2
    assert "RequireAndVerifyClientCert" in config.describe()


def test_empty_file_means_plain_http(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path, ""))
    assert config.tls is None and config.users == {} and config.middlewares() == []
    assert config.ssl_context() is None


@pytest.mark.parametrize(("data", "expected"), [
    ({"tls_config": {}}, "tls_config: unknown key"),
    ({"tls_server_config": {"cert_file": "a", "key_file": "b", "certfile": "c"}},
     "tls_server_config.certfile: unknown key"),
    ({"basic_auth": {"u": HASH}}, "basic_auth: unknown key"),
    ({"http_server_config": {"header": {}}}, "http_server_config.header: unknown key"),
    ({"tls_server_config": {"key_file": "b"}},
     "tls_server_config.cert_file: required key is missing"),
    ({"tls_server_config": {"cert_file": "a", "key_file": "b",
                            "cipher_suites": ["TLS_AES_128_GCM_SHA256"]}},
     "cipher_suites is not supported by watchdog"),
    ({"tls_server_config": {"cert_file": "a", "key_file": "b",
                            "client_allowed_sans": ["x"]}},
     "client_allowed_sans is not supported"),
    ({"rate_limit": {"interval": "1s"}}, "rate_limit is not supported"),
    ({"tls_server_config": {"cert_file": "a", "key_file": "b", "client_auth_type": "Nope"}},
     "invalid client_auth_type 'Nope'"),
    ({"tls_server_config": {"cert_file": "a", "key_file": "b",
                            "client_auth_type": "RequireAnyClientCert"}},
     "never verified"),
    ({"tls_server_config": {"cert_file": "a", "key_file": "b", "client_ca_file": "c"}},
     "client_auth_type is NoClientCert"),
    ({"tls_server_config": {"cert_file": "a", "key_file": "b",
                            "client_auth_type": "VerifyClientCertIfGiven"}},
     "needs client_ca_file"),
    ({"tls_server_config": {"cert_file": "a", "key_file": "b", "min_version": "TLS13",
                            "max_version": "TLS12"}}, "above max_version"),
    ({"tls_server_config": {"cert_file": "a", "key_file": "b", "min_version": "SSL3"}},
     "tls_server_config.min_version"),
    ({"basic_auth_users": {"prometheus": "plaintext"}}, "not a bcrypt hash"),
    ({"basic_auth_users": {"prometheus": HASH.replace("$04$", "$03$")}}, "cost 03"),
    ({"basic_auth_users": {"a:b": HASH}}, "without ':'"),
    ({"basic_auth_users": ["prometheus"]}, "basic_auth_users"),
    ({"http_server_config": {"headers": {"Server": "x"}}}, "'Server' cannot be set"),
    ([1, 2], "the top level must be a mapping"),
    ("tls_server_config: [\n", "YAML syntax error at line"),
])
def test_rejections_name_the_key(tmp_path: Path, data: object, expected: str) -> None:
    assert expected in problems(tmp_path, data)


def test_bad_files_name_the_key(tmp_path: Path, certs: Path, ca: trustme.CA) -> None:
    base = {"cert_file": str(certs / "cert.pem"), "key_file": str(certs / "key.pem")}
    text = problems(tmp_path, {"tls_server_config": {**base, "cert_file": "missing.pem"}})
    assert "tls_server_config.cert_file" in text and "not a readable file" in text
    other = ca.issue_cert("other")
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    text = problems(tmp_path, {"tls_server_config": {**base,
                                                     "key_file": str(tmp_path / "other-key.pem")}})
    assert "tls_server_config.cert_file: cannot load" in text
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    text = problems(tmp_path, {"tls_server_config": {
        **base, "client_auth_type": "RequireAndVerifyClientCert",
        "client_ca_file": str(tmp_path / "junk.pem")}})
    assert "tls_server_config.client_ca_file: cannot load" in text
    with pytest.raises(ConfigError, match="cannot read web config file"):
        load_web_config(tmp_path / "absent.yml")


# -- basic auth ---------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    config = WebServerConfig(path=tmp_path / "web.yml", users={"prometheus": HASH.encode()},
                             headers={"X-Frame-Options": "DENY"})

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(middlewares=config.middlewares())
    for path in ("/metrics", "/healthz", "/readyz", "/"):
        app.router.add_get(path, ok)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_basic_auth_on_every_path_but_healthz(client: TestClient) -> None:
    for path in ("/metrics", "/readyz", "/"):
        resp = await client.get(path)
        assert resp.status == 401, path
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
        assert resp.headers["X-Frame-Options"] == "DENY"
        resp = await client.get(path, headers=basic("prometheus", PASSWORD))
        assert resp.status == 200, path
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.text() == "ok\n"
    assert (await client.get("/nope", headers=basic("prometheus", PASSWORD))).status == 404


@pytest.mark.parametrize("live", [False, True])
async def test_headers_reach_answers_and_http_errors(tmp_path: Path, live: bool) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"http_server_config": {"headers": {"X-Frame-Options": "DENY"}}}))
    config = load_web_config(path)

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(middlewares=[webconfig.LiveWebConfig(config).middleware] if live
                          else config.middlewares())
    app.router.add_get("/", ok)
    async with TestClient(TestServer(app)) as client:
        for where, status in (("/", 200), ("/nope", 404)):
            resp = await client.get(where)
            assert (resp.status, resp.headers.get("X-Frame-Options")) == (status, "DENY"), where


@pytest.mark.parametrize("header", [
    basic("prometheus", "wrong"),
    basic("nobody", PASSWORD),
    basic("prometheus", PASSWORD + " "),
    {"Authorization": "Bearer abc"},
    {"Authorization": "Basic !!!notbase64"},
    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()},
    {"Authorization": "Basic"},
])
async def test_basic_auth_rejects(client: TestClient, header: dict[str, str]) -> None:
    assert (await client.get("/metrics", headers=header)).status == 401


async def test_bcrypt_runs_once_per_credential_and_unknown_users_cost_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    auth = BasicAuth({"prometheus": HASH.encode()})
    assert await auth.check("prometheus", PASSWORD)
    assert await auth.check("prometheus", PASSWORD)
    assert not await auth.check("prometheus", "wrong")
    assert not await auth.check("prometheus", "wrong")
    assert len(calls) == 2  # cached
    assert not await auth.check("mallory", PASSWORD)
    assert calls[-1] == auth.dummy  # an unknown user still pays for one bcrypt
    assert webconfig.hash_cost(auth.dummy) == webconfig.hash_cost(HASH.encode())
    # The caches never hold a password, only digests.
    assert all(PASSWORD.encode() not in key for key in [*auth._good, *auth._bad])
    assert auth.outcomes == {"cached_ok": 1, "cached_fail": 1, "verified_ok": 1,
                             "verified_fail": 2, "busy": 0}


# A cost-12 hash of KNOWN_PASSWORD, made once (making it here would cost a second of CPU).
COST12 = b"$2b$12$zzC7LVSHTxcUN80RqgxeJOFMMD2ED95uNQE.s5goPjdmPAk/yfwH6"
KNOWN_PASSWORD = "timing-known-password"


async def test_unknown_users_take_as_long_as_known_ones() -> None:
    auth = BasicAuth({"prometheus": COST12})
    assert webconfig.hash_cost(auth.dummy) == 12
    known, unknown = [], []
    loop = asyncio.get_running_loop()
    for i in range(3):  # interleaved, so that a busy machine slows both alike
        for user, times in (("prometheus", known), (f"nobody-{i}", unknown)):
            started = loop.time()
            assert not await auth.check(user, f"guess-{i}")
            times.append(loop.time() - started)
    ratio = sorted(unknown)[1] / sorted(known)[1]
    # A cost-10 dummy against cost-12 users would make this about 0.25.
    assert 0.5 < ratio < 2.0, (known, unknown)


async def test_a_flood_cannot_push_the_good_credential_out(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    auth = BasicAuth({"prometheus": HASH.encode()})
    assert await auth.check("prometheus", PASSWORD)
    monkeypatch.setattr(webconfig, "AUTH_QUEUE_LIMIT", 10_000)
    monkeypatch.setattr(bcrypt, "checkpw", lambda p, h: False)  # guesses, quickly
    await asyncio.gather(*(auth.check("prometheus", f"guess-{i}") for i in range(1000)))
    monkeypatch.setattr(bcrypt, "checkpw", lambda p, h: pytest.fail("bcrypt called"))
    assert await auth.check("prometheus", PASSWORD)  # from the cache, no bcrypt
    assert len(auth._bad) == webconfig.AUTH_CACHE_SIZE


async def test_the_verification_queue_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = BasicAuth({"prometheus": HASH.encode()})
    results = await asyncio.gather(
        *(auth.check("prometheus", f"guess-{i}") for i in range(40)), return_exceptions=True)
    busy = [r for r in results if isinstance(r, webconfig.AuthBusy)]
    assert len(busy) == 40 - webconfig.AUTH_QUEUE_LIMIT
    assert auth.outcomes["busy"] == len(busy)


async def test_auth_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webconfig, "AUTH_CACHE_SIZE", 4)
    monkeypatch.setattr(bcrypt, "checkpw", lambda p, h: False)
    auth = BasicAuth({"prometheus": HASH.encode()})
    for i in range(10):
        await auth.check("prometheus", f"guess-{i}")
    assert len(auth._bad) == 4


# -- TLS and certificate rotation --------------------------------------------------------


async def serve_tls(ctx: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock, ssl_context=ctx).start()
    return runner, sock.getsockname()[1]


async def served_cert(port: int, ca_file: Path) -> dict[str, object]:
    client = ssl.create_default_context(cafile=str(ca_file))
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    cert = writer.get_extra_info("peercert")
    writer.close()
    await writer.wait_closed()
    return cert  # type: ignore[no-any-return]


async def test_rotated_certificate_is_served_without_restart(
    tmp_path: Path, certs: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webconfig, "RELOAD_CHECK_INTERVAL", 0.0)
    config = load_web_config(write(tmp_path, {"tls_server_config": {
        "cert_file": "tls/cert.pem", "key_file": "tls/key.pem"}}))
    ctx = config.ssl_context()
    assert ctx is not None
    runner, port = await serve_tls(ctx)
    try:
        first = await served_cert(port, certs / "ca.pem")
        rotated = ca.issue_cert("127.0.0.1", "localhost", common_name="rotated")
        rotated.private_key_pem.write_to_path(str(certs / "key.pem"))
        rotated.cert_chain_pems[0].write_to_path(str(certs / "cert.pem"))
        second = await served_cert(port, certs / "ca.pem")
        assert second["serialNumber"] != first["serialNumber"]
        assert ((("commonName", "rotated"),)) in second["subject"]  # type: ignore[operator]
        # A broken rotation (half-written file) keeps the last good certificate.
        (certs / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\ntruncated")
        third = await served_cert(port, certs / "ca.pem")
        assert third["serialNumber"] == second["serialNumber"]
    finally:
        await runner.cleanup()


async def test_client_certificate_required(tmp_path: Path, certs: Path, ca: trustme.CA) -> None:
    config = load_web_config(write(tmp_path, {"tls_server_config": {
        "cert_file": "tls/cert.pem", "key_file": "tls/key.pem",
        "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "tls/ca.pem"}}))
    ctx = config.ssl_context()
    assert ctx is not None
    runner, port = await serve_tls(ctx)
    url = f"https://127.0.0.1:{port}/healthz"
    try:
        anonymous = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        async with ClientSession() as session:
            with pytest.raises(Exception):  # noqa: B017 - alert or reset, by TLS version
                async with session.get(url, ssl=anonymous) as resp:
                    await resp.read()
            client_ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
            ca.issue_cert("prometheus@example").configure_cert(client_ctx)
            async with session.get(url, ssl=client_ctx) as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()

#!/usr/bin/env python3
"""Capture real answers of every matrix server into tests/fixtures/etcd/.

Starts each backend of tests/backends.py (built by scripts/servers/build.sh) as a single
node on loopback, with etcd auth (root plus the read-only user `watchdog`) where the
server has it, and stores the raw bodies it answers as
`<server>-<version>-<what>.<ext>`, each beside a `.source.txt` that says how it was
captured. Parsers are written against these files; nothing in them is edited by hand.

    scripts/servers/capture_fixtures.py [--out DIR] [NAME...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.backends import (  # noqa: E402
    APISIX_PREFIX,
    READER,
    READER_PASSWORD,
    RUNNABLE,
    Backend,
    Server,
    start_server,
)
from watchdog.etcd.client import b64, prefix_end  # noqa: E402

TIMEOUT = 5.0


class Capture:
    """Writes one fixture and its source note."""

    def __init__(self, out: Path, backend: Backend, setup: str) -> None:
        self.out = out
        self.backend = backend
        self.setup = setup
        self.written: list[str] = []

    def save(self, what: str, ext: str, body: bytes, request: str, answer: str) -> None:
        name = f"{self.backend.name}-{what}.{ext}"
        (self.out / name).write_bytes(body)
        note = (
            f"server: {self.backend.name} ({self.backend.origin})\n"
            f"setup: {self.setup}\n"
            f"request: {request}\n"
            f"answer: {answer}\n"
            f"captured: {time.strftime('%Y-%m-%d', time.gmtime())} by "
            f"scripts/servers/capture_fixtures.py; the body is stored byte for byte\n"
        )
        (self.out / f"{name}.source.txt").write_text(note)
        self.written.append(name)

    def http(self, server: Server, method: str, path: str, body: Any, what: str, ext: str,
             token: str | None = None, base: str | None = None, note: str = "") -> None:
        headers = {"Authorization": token} if token else None
        shown = ("" if body is None else f" body {body.decode()}" if isinstance(body, bytes)
                 else f" body {json.dumps(body)}")
        who = " with a token" if token else ""
        request = f"{method} {path or '/metrics'}{shown}{who}{note}"
        try:
            status, raw = server.http(method, path, body, timeout=TIMEOUT, headers=headers,
                                      base=base)
        except OSError as exc:
            self.save(what, "txt", b"", request,
                      f"no HTTP answer: {type(exc).__name__}: {exc}"[:300])
            return
        self.save(what, ext, raw, request, f"HTTP {status}")


def watch_first_chunk(cap: Capture, server: Server, token: str | None) -> None:
    """The first line a JSON watch long-poll streams (the `created` answer)."""
    import urllib.request

    body = {"create_request": {"key": b64("/apisix/"), "range_end": b64(prefix_end("/apisix/"))}}
    req = urllib.request.Request(server.client_url + "/v3/watch", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json",
                                                         **({"Authorization": token} if token else {})})
    request = f"POST /v3/watch body {json.dumps(body)} with a token (root); first line read"
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT, context=server.ssl_context()) as resp:
            cap.save("watch-created", "json", resp.readline().rstrip(b"\r\n"), request,
                     f"HTTP {resp.status}, a stream of JSON objects one per line")
    except OSError as exc:
        cap.save("watch-created", "txt", b"", request, f"no answer: {type(exc).__name__}")


def reader_token(server: Server) -> str:
    status, raw = server.http("POST", "/v3/auth/authenticate",
                              {"name": READER, "password": READER_PASSWORD}, timeout=TIMEOUT)
    if status != 200:
        raise RuntimeError(f"reader could not authenticate: HTTP {status} {raw[:200]!r}")
    return str(json.loads(raw)["token"])


def capture_etcd(cap: Capture, server: Server) -> None:
    root = server.root_token()
    assert server.cluster is not None
    server.cluster.put("/apisix/routes/1", "{}")
    server.cluster.put("/other/1", "x")
    reader = reader_token(server)
    cap.http(server, "GET", "/version", None, "version", "json")
    cap.http(server, "POST", "/v3/maintenance/status", {}, "maintenance_status", "json", root,
             note=" (root)")
    cap.http(server, "POST", "/v3/maintenance/status", {}, "maintenance_status-reader", "json",
             reader, note=f" (non-root user {READER}, read on {APISIX_PREFIX} only)")
    cap.http(server, "POST", "/v3/cluster/member/list", {}, "member_list", "json", root,
             note=" (root)")
    cap.http(server, "POST", "/v3/cluster/member/list", {}, "member_list-reader", "json", reader,
             note=f" (non-root user {READER})")
    cap.http(server, "POST", "/v3/kv/range", {"key": "not base64!"}, "error-bad_request", "json",
             root, note=" (the key is not base64)")
    cap.http(server, "POST", "/v3/kv/range", {"key": b64("/other/"),
                                              "range_end": b64(prefix_end("/other/"))},
             "error-auth_denied", "json", reader,
             note=f" (non-root user {READER} reading outside {APISIX_PREFIX})")
    cap.http(server, "POST", "/v3/kv/range", {"key": b64("/apisix/")}, "error-no_token", "json",
             note=" (auth is on, no token sent)")
    watch_first_chunk(cap, server, root)
    cap.http(server, "POST", "/v3/watch", b'{"create_request": {"key": 5}}',
             "watch-error-bad_request", "json", root,
             note=f" (key of the wrong type; read for {TIMEOUT:g} s)")
    cap.http(server, "GET", "", None, "metrics", "txt", base=server.metrics_url)


def capture_kine(cap: Capture, server: Server) -> None:
    import etcd3
    from etcd3 import etcdrpc
    from google.protobuf import json_format

    url = urllib.parse.urlsplit(server.grpc_endpoint)
    client = etcd3.client(url.hostname, url.port, timeout=TIMEOUT)
    try:
        calls = {
            "grpc-maintenance_status": lambda: client.maintenancestub.Status(
                etcdrpc.StatusRequest(), TIMEOUT),
            "grpc-member_list": lambda: client.clusterstub.MemberList(
                etcdrpc.MemberListRequest(), TIMEOUT),
        }
        for what, call in calls.items():
            resp = call()
            body = json_format.MessageToJson(resp, preserving_proto_field_name=True).encode()
            cap.save(what, "json", body, f"gRPC {type(resp).__name__} (python3-etcd3 stub)",
                     "OK; the message rendered by protobuf's json_format with proto field "
                     "names (not the gateway's JSON)")
    finally:
        client.close()
    cap.http(server, "GET", "/version", None, "version", "txt",
             note=" (on the gRPC client port)")
    cap.http(server, "POST", "/v3/maintenance/status", {}, "maintenance_status", "txt",
             note=" (on the gRPC client port)")
    cap.http(server, "GET", "", None, "metrics", "txt", base=server.metrics_url,
             note=" (kine's --metrics-bind-address port)")


def capture_antietcd(cap: Capture, server: Server) -> None:
    put = {"key": b64("/apisix/routes/1"), "value": b64("{}")}
    status, raw = server.http("POST", "/v3/kv/put", put, timeout=TIMEOUT)
    if status != 200:
        raise RuntimeError(f"antietcd put: HTTP {status} {raw[:200]!r}")
    cap.http(server, "GET", "/version", None, "version", "txt")
    cap.http(server, "POST", "/v3/maintenance/status", {}, "maintenance_status", "json")
    cap.http(server, "POST", "/v3/cluster/member/list", {}, "member_list", "txt")
    cap.http(server, "POST", "/v3/kv/range", b'{"key": ', "error-bad_request", "txt",
             note=" (a truncated JSON body; a key that is not base64 is answered 200)")
    cap.http(server, "POST", "/v3/kv/range", {"key": b64("/apisix/routes/1")}, "kv_range",
             "json")
    cap.http(server, "POST", "/v3/kv/range", {"key": b64("/apisix/"), "count_only": True,
                                              "range_end": b64(prefix_end("/apisix/"))},
             "kv_range-count_only", "txt", note=" (a count_only prefix range, as watchdog sends)")
    cap.http(server, "POST", "/v3/watch", {"create_request": {"key": b64("/apisix/")}}, "watch",
             "txt", note=" (etcd's HTTP long-poll watch)")
    cap.http(server, "GET", "/metrics", None, "metrics", "txt")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "etcd")
    parser.add_argument("names", nargs="*", help="backend names (default: all that are built)")
    args = parser.parse_args()
    chosen = [b for b in RUNNABLE if not args.names or b.name in args.names]
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for backend in chosen:
        if backend.missing:
            print(f"skip {backend.name}: {backend.missing}", file=sys.stderr)
            failed += 1
            continue
        auth = backend.etcd_auth
        with tempfile.TemporaryDirectory(prefix="watchdog-capture-") as tmp:
            server = start_server(backend, Path(tmp) / "server", auth=auth)
            try:
                shape = ("a single node" if server.members == 1
                         else f"a {server.members}-member cluster (read from the first)")
                setup = (f"{shape} on 127.0.0.1, plain HTTP"
                         + (f", auth on (root, and user {READER} with read on {APISIX_PREFIX})"
                            if auth else "") + ", a key under /apisix/routes/")
                cap = Capture(args.out, backend, setup)
                {"etcd": capture_etcd, "kine": capture_kine,
                 "antietcd": capture_antietcd}[backend.kind](cap, server)
            finally:
                server.stop()
        print(f"{backend.name}: {len(cap.written)} fixtures", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The independent witness of the smoke-gate benchmark, in its own process.

    python bench/smoke_watcher.py --etcd URL --prefix /apisix/routes/watchdog-canary- \
        --interval 0.003

It holds one etcd watch (`POST /v3/watch` on the JSON gateway) on the canary prefix and
timestamps every PUT and DELETE event, and polls data planes at a fixed short interval,
timestamping the first 302 of a canary path (and the last answer before it, which bounds the
moment from below) and the first non-302 after it (the canary gone). Every timestamp is
CLOCK_MONOTONIC (`time.monotonic()`, comparable across processes on Linux) with the
matching `time.time()`.

Commands, one JSON object per line on stdin; answers, one per line on stdout:
  {"cmd": "poll", "targets": [{"name": ..., "url": ...}]}  start polling these URLs now
  {"cmd": "auto", "data_urls": {"gw": "http://..."}}       poll each canary path the watch
                                                            reveals, on every data plane
  {"cmd": "report"}                                         stop polling, print and forget
  {"cmd": "quit"}
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from typing import Any

import aiohttp


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def prefix_end(prefix: str) -> bytes:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw)


def now() -> dict[str, float]:
    return {"mono": time.monotonic(), "wall": time.time()}


class Watcher:
    def __init__(self, etcd: str, prefix: str, interval: float) -> None:
        self.etcd, self.prefix, self.interval = etcd.rstrip("/"), prefix, interval
        self.events: list[dict[str, Any]] = []
        self.polls: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.auto: dict[str, str] = {}
        self.session: aiohttp.ClientSession | None = None
        self.watching = asyncio.Event()

    async def watch(self) -> None:
        body = {"create_request": {"key": b64(self.prefix), "range_end": b64(prefix_end(self.prefix))}}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as s:
            async with s.post(self.etcd + "/v3/watch", json=body) as resp:
                buf = b""
                async for chunk in resp.content.iter_any():
                    stamp = now()
                    buf += chunk
                    while True:
                        try:
                            text = buf.decode()
                            obj, end = json.JSONDecoder().raw_decode(text.lstrip())
                        except ValueError:
                            break
                        buf = text.lstrip()[end:].encode()
                        result = obj.get("result") or {}
                        if result.get("created"):
                            self.watching.set()
                        for ev in result.get("events") or ():
                            kv = ev.get("kv") or {}
                            key = base64.b64decode(kv.get("key", "")).decode()
                            kind = ev.get("type", "PUT")
                            uri = None
                            if kind == "PUT" and kv.get("value"):
                                try:
                                    uri = json.loads(base64.b64decode(kv["value"])).get("uri")
                                except ValueError:
                                    uri = None
                            self.events.append({"type": kind, "key": key, "uri": uri,
                                                "mod_revision": kv.get("mod_revision"), **stamp})
                            if kind == "PUT" and uri and self.auto:
                                for gw, base in self.auto.items():
                                    self.start(f"{gw} {uri}", base + uri)

    def start(self, name: str, url: str) -> None:
        if name not in self.tasks:
            self.polls[name] = {"url": url, "n": 0}
            self.tasks[name] = asyncio.create_task(self.poll(name, url))

    async def poll(self, name: str, url: str) -> None:
        assert self.session is not None
        rec = self.polls[name]
        rec["started"] = now()
        while True:
            sent = now()
            try:
                async with self.session.get(url, allow_redirects=False) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, OSError):
                status = None
            got = now()
            rec["n"] += 1
            if status == 302:
                if "first_302" not in rec:
                    rec["first_302"] = got
                    rec["first_302_sent"] = sent
            elif "first_302" in rec:
                if "gone" not in rec:
                    rec["gone"] = got
            else:
                rec["last_before"] = sent
            await asyncio.sleep(self.interval)

    async def report(self) -> dict[str, Any]:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        out = {"events": self.events, "polls": self.polls}
        self.events, self.polls, self.tasks, self.auto = [], {}, {}, {}
        return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--prefix", default="/apisix/routes/watchdog-canary-")
    parser.add_argument("--interval", type=float, default=0.003)
    args = parser.parse_args()
    watcher = Watcher(args.etcd, args.prefix, args.interval)
    watcher.session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=2))
    watch = asyncio.create_task(watcher.watch())
    await asyncio.wait_for(watcher.watching.wait(), 10)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    answer({"ready": True})
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            if cmd["cmd"] == "poll":
                for t in cmd["targets"]:
                    watcher.start(t["name"], t["url"])
                answer({"ok": True, **now()})
            elif cmd["cmd"] == "auto":
                watcher.auto = dict(cmd["data_urls"])
                answer({"ok": True})
            elif cmd["cmd"] == "report":
                answer(await watcher.report())
            elif cmd["cmd"] == "quit":
                break
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await watcher.session.close()


if __name__ == "__main__":
    asyncio.run(main())

"""The simulated gateway's config sync: one full read, then per-worker watch long-polls
through etcd's JSON gateway (as lua-resty-etcd does), with compaction reloads and the
watch-leak and stale faults."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from watchdog.lab.sim_core import SimCore
from watchdog.lab.sim_etcd import EtcdError, b64, describe, header_revision, range_end
from watchdog.lab.sim_state import HTTP_DIRS, Worker

log = logging.getLogger("watchdog.lab.gateway_sim")


@dataclass
class _WatchState:
    """One watch loop's position and the streams it leaked."""

    next_rev: int
    created: bool = False
    leaked: list[aiohttp.ClientResponse] = field(default_factory=list)


class ConfigSync:
    """Loads the whole prefix once, then keeps every worker's tables current."""

    def __init__(self, core: SimCore) -> None:
        self.core = core
        self.config = core.config

    async def initial_load(self) -> None:
        while True:
            while "init-hang" in self.core.faults:
                assert self.core.fault_signal is not None
                await asyncio.shield(self.core.fault_signal)
            try:
                await self.load_all()
                return
            except EtcdError as err:
                log.warning("%s: loading config failed: %s", self.config.name, err)
                await self._backoff()

    async def load_all(self) -> None:
        """One range over the whole prefix, shared by every worker, then the watches."""
        prefix = self.config.prefix
        kvs, revision = await self.core.etcd.range(prefix, range_end(prefix))
        for worker in self.core.workers:
            worker.load(kvs, revision)
            worker.loaded = True
        for worker in self.core.workers:
            if self.config.sync_mode == "modern":
                key = prefix + "/"
                self.core.spawn(self._watch_loop(worker, key, None, revision))
            else:
                for directory in HTTP_DIRS:
                    key = f"{prefix}/{directory}"
                    self.core.spawn(self._watch_loop(worker, key, (directory,), revision))

    async def _backoff(self) -> None:
        delay = self.config.resync_delay
        await asyncio.sleep(delay + random.uniform(0, delay / 2))

    async def resync(self, worker: Worker) -> None:
        """Catch up after the stale fault: a full read replaces the worker's tables."""
        while True:
            try:
                prefix = self.config.prefix
                kvs, revision = await self.core.etcd.range(prefix, range_end(prefix))
                if "stale" not in self.core.faults:
                    worker.load(kvs, revision)
                return
            except EtcdError as err:
                log.warning("%s: resync of worker %d failed: %s", self.config.name, worker.id, err)
                await self._backoff()

    async def _watch_loop(
        self, worker: Worker, key: str, dirs: tuple[str, ...] | None, revision: int
    ) -> None:
        """One long-poll watch on `key`, re-opened after watch_timeout or an error."""
        state = _WatchState(next_rev=revision + 1)
        session = self.core.etcd.new_watch_session()
        try:
            while True:
                try:
                    await self._watch_once(worker, session, key, dirs, state)
                except (EtcdError, aiohttp.ClientError, OSError, ValueError) as err:
                    log.warning(
                        "%s: worker %d watch %s: %s", self.config.name, worker.id, key,
                        describe(err),
                    )
                    await self._backoff()
        finally:
            for resp in state.leaked:
                _drop(resp)
            self.core.leaked_watches -= len(state.leaked)
            await session.close()

    async def _watch_once(
        self, worker: Worker, session: aiohttp.ClientSession, key: str,
        dirs: tuple[str, ...] | None, state: _WatchState,
    ) -> None:
        endpoint = self.core.etcd.first_healthy()
        end = range_end(key)
        body = {"create_request": {
            "key": b64(key), "range_end": b64(end), "start_revision": state.next_rev,
        }}
        headers = await self.core.etcd.auth_headers()
        timeout = aiohttp.ClientTimeout(sock_connect=self.config.etcd_timeout)
        try:
            # A member that accepts TCP but never answers (SIGSTOP) must not hold us forever.
            async with asyncio.timeout(self.config.watch_timeout):
                resp = await session.post(
                    endpoint + "/v3/watch", json=body, headers=headers, timeout=timeout
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            self.core.etcd.report_failure(endpoint)
            raise EtcdError(f"{endpoint}: {describe(err)}") from err
        if resp.status != 200:
            text = await resp.text()
            _drop(resp)
            raise EtcdError(f"watch answered {resp.status}: {text.strip()[:200]}")
        state.created = False
        reader = asyncio.create_task(self._read_watch(worker, resp, key, dirs, state))
        loop = asyncio.get_running_loop()
        started = loop.time()
        leak = False
        try:
            while not reader.done():
                leaking = "watch-leak" in self.core.faults
                interval = self.config.leak_interval if leaking else self.config.watch_timeout
                remaining = started + interval - loop.time()
                if remaining <= 0:
                    leak = leaking
                    break
                assert self.core.fault_signal is not None
                await asyncio.wait(
                    {reader, self.core.fault_signal}, timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            if reader.done():
                reader.result()
        finally:
            if not reader.done():
                reader.cancel()
                with suppress(asyncio.CancelledError):
                    await reader
            if state.created:
                self.core.live_watches -= 1
            if leak:
                # The fault: the old long poll is never cancelled, etcd keeps its stream.
                state.leaked.append(resp)
                self.core.leaked_watches += 1
            else:
                _drop(resp)

    async def _read_watch(
        self, worker: Worker, resp: aiohttp.ClientResponse, key: str,
        dirs: tuple[str, ...] | None, state: _WatchState,
    ) -> None:
        """Consume the newline-delimited watch stream until EOF or a reload."""
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                if line.strip() and await self._on_watch_message(
                    worker, json.loads(line), key, dirs, state
                ):
                    return

    async def _on_watch_message(
        self, worker: Worker, message: Mapping[str, Any], key: str,
        dirs: tuple[str, ...] | None, state: _WatchState,
    ) -> bool:
        """Handle one watch response; True when this long poll should end."""
        if "error" in message:
            error = message["error"]
            text = error.get("message") if isinstance(error, dict) else str(error)
            raise EtcdError(str(text))
        result = message.get("result") or {}
        compacted = int(result.get("compact_revision") or 0)
        if compacted:
            log.info("%s: worker %d: compacted at %d, reloading", self.config.name, worker.id,
                     compacted)
            await self._reload(worker, key, dirs, state)
            return True
        if result.get("canceled"):
            reason = str(result.get("cancel_reason") or "watch canceled")
            if "auth" in reason or "permission" in reason:
                await self.core.etcd.auth_headers(refresh=True)
            raise EtcdError(reason)
        revision = header_revision(result)
        if result.get("created"):
            if not state.created:
                state.created = True
                self.core.live_watches += 1
            if 0 < revision < worker.revision:
                log.info("%s: worker %d: etcd went back to revision %d, reloading",
                         self.config.name, worker.id, revision)
                await self._reload(worker, key, dirs, state)
                return True
        worker.revision = max(worker.revision, revision)
        stale = "stale" in self.core.faults
        for event in result.get("events") or []:
            mod_revision = int((event.get("kv") or {}).get("mod_revision", 0))
            state.next_rev = max(state.next_rev, mod_revision + 1)
            if not stale:
                worker.apply(event)
        return False

    async def _reload(
        self, worker: Worker, key: str, dirs: tuple[str, ...] | None, state: _WatchState
    ) -> None:
        """Full read of this watch's prefix (compaction, or etcd restarted)."""
        kvs, revision = await self.core.etcd.range(key, range_end(key))
        if "stale" not in self.core.faults:
            worker.load(kvs, revision, dirs)
        state.next_rev = revision + 1
        self.core.reloads += 1


def _drop(resp: aiohttp.ClientResponse) -> None:
    """Close a long poll's connection at once (no TLS close_notify wait), as a cancel does."""
    connection = resp.connection
    if connection is not None and connection.transport is not None:
        connection.transport.abort()
    resp.close()

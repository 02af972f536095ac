"""Config reload: SIGHUP and `POST /-/reload` re-read the config file. A config that does not
validate is kept out (the running one stays) and counted, with the gauges Prometheus itself
exports for the same purpose."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from watchdog.config import Config, ConfigError


class Reloadable(Protocol):
    """What a reload needs of the daemon."""

    config: Config

    async def reload(self, config: Config) -> None: ...

log = logging.getLogger(__name__)


class NotReady(Exception):
    """A reload asked for before the daemon has started."""


class Reloader(Collector):
    """Serialises reloads of one daemon and exports how the last one went."""

    def __init__(self, daemon: Reloadable, load: Callable[[], Config] | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.daemon, self.load, self.clock = daemon, load, clock
        self.successful = True
        self.success_time = clock()
        self.started = False  # set once the daemon runs: a reload before would flush nothing
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[tuple[bool, str]]] = set()

    async def reload(self) -> tuple[bool, str]:
        """Re-read and apply the config; (True, "") or (False, why). Never raises for a bad
        config: the running one stays."""
        if self.load is None:
            return False, "watchdog was started without a config file to re-read"
        if not self.started:
            raise NotReady
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            log.info("reloading the config")
            try:
                config = await asyncio.to_thread(self.load)
            except ConfigError as err:
                self.successful = False
                why = str(err).replace("\n", ";")
                log.error("config reload failed, the running config is kept: %s", why)
                return False, str(err)
            old = self.daemon.config
            try:
                await self.daemon.reload(config)
            except Exception as err:  # validated but could not start: put the old one back
                log.error("config reload could not be applied, restoring the running config "
                          "error=%r", str(err)[:300])
                await self.daemon.reload(old)
                self.successful = False
                return False, f"could not apply the new config: {err}"
            self.successful, self.success_time = True, self.clock()
            log.info("config reloaded endpoints=%d gateways=%d", len(config.etcd.endpoints),
                     len(config.gateways))
            return True, ""

    def on_sighup(self) -> None:
        """Signal handler: start a reload (a reload already running is waited for)."""
        if not self.started:
            log.warning("SIGHUP before the daemon started: ignored")
            return
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "watchdog_config_last_reload_successful",
            "1 if the last config reload (SIGHUP or POST /-/reload) succeeded; 0 while a bad "
            "config is kept out and the previous one runs.", value=1.0 if self.successful else 0.0)
        yield GaugeMetricFamily(
            "watchdog_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load (start or reload).",
            value=self.success_time)

    def describe(self) -> Iterator[Metric]:
        return self.collect()

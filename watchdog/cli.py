"""Command line: a thin shell over the daemon, the smoke gate and the lab."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import click

from watchdog import __version__
from watchdog.config import Config, ConfigError, describe, load_config

EXIT_CONFIG = 2
LOG_LEVELS = ("debug", "info", "warning", "error")


class LogfmtFormatter(logging.Formatter):
    """`ts=... level=info logger=watchdog.daemon msg="..."`, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts += f".{int(record.msecs):03d}Z"
        msg = record.getMessage().replace("\n", " ")
        line = f'ts={ts} level={record.levelname.lower()} logger={record.name} msg="{msg}"'
        if record.exc_info:
            exc = self.formatException(record.exc_info).replace("\n", " | ")
            line += f' exc="{exc}"'
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": record.created, "level": record.levelname.lower(), "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc and aiohttp are chatty at info; their warnings still show.
    for noisy in ("aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail_config(err: ConfigError) -> None:
    click.echo(f"watchdog: invalid config: {err}", err=True)
    sys.exit(EXIT_CONFIG)


def load_or_exit(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        fail_config(err)
        raise AssertionError("unreachable") from None


log_options = [
    click.option("--log.level", "log_level", type=click.Choice(LOG_LEVELS), default="info",
                 show_default=True, envvar="WATCHDOG_LOG_LEVEL", show_envvar=True,
                 help="Only log messages with this severity or above."),
    click.option("--log.format", "log_format", type=click.Choice(("logfmt", "json")),
                 default="logfmt", show_default=True, envvar="WATCHDOG_LOG_FORMAT",
                 show_envvar=True, help="Output format of log messages."),
]


def with_logging(func):  # type: ignore[no-untyped-def]
    for option in reversed(log_options):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="watchdog")
def main() -> None:
    """watchdog: an operations agent and Prometheus exporter for API gateways whose
    configuration lives in etcd (Apache APISIX first).

    It polls every etcd peer, counts watch streams and client connections per peer,
    learns each peer's steady state and trips at 2x it, times admin calls through etcd's
    JSON gateway, gRPC and the gateway's admin API, and gates deploys on a canary route
    actually being served.

    \b
    Start here:
      watchdog demo                       a local lab (etcd + simulated gateways) watched live
      watchdog check-config FILE          validate a config, print what would be watched
      watchdog run --config FILE          the daemon: /metrics, /healthz, /readyz, status page
      watchdog smoke --config FILE        the deploy gate: exit 0 only when canaries are served
    """


@main.command("check-config")
@click.argument("file", type=click.Path(path_type=Path))
def check_config(file: Path) -> None:
    """Validate FILE and print what it would watch.

    Exit 0 when valid; 2 with every problem and its key path when not.
    """
    config = load_or_exit(file)
    click.echo(f"{file}: valid")
    for line in describe(config):
        click.echo(line)


@main.command("run")
@click.option("--config", "config_file", required=True, type=click.Path(path_type=Path),
              envvar="WATCHDOG_CONFIG", show_envvar=True, help="YAML config file.")
@click.option("--web.listen-address", "listen", default=None, envvar="WATCHDOG_LISTEN_ADDRESS",
              show_envvar=True,
              help="HOST:PORT for /metrics, /healthz, /readyz and the status page "
                   "(overrides web.listen_address; default 0.0.0.0:9817).")
@with_logging
def run(config_file: Path, listen: str | None, log_level: str, log_format: str) -> None:
    """Run the daemon until SIGTERM or SIGINT (then exit 0 after a clean shutdown).

    Polls every etcd peer every etcd.interval, probes gateways, learns steady states
    (kept in state_dir across restarts) and serves Prometheus metrics.
    """
    from watchdog.config import _check_listen
    from watchdog.daemon import serve

    setup_logging(log_level, log_format)
    config = load_or_exit(config_file)
    if listen is not None:
        try:
            _check_listen(listen)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--web.listen-address") from None
    address = listen or config.web.listen_address
    try:
        asyncio.run(serve(config, address))
    except OSError as err:
        logging.getLogger("watchdog").error("cannot serve on %s: %s", address, err)
        sys.exit(1)


@main.command("smoke")
@click.option("--config", "config_file", required=True, type=click.Path(path_type=Path),
              envvar="WATCHDOG_CONFIG", show_envvar=True, help="YAML config file.")
@click.option("--gateway", "names", multiple=True, metavar="NAME",
              help="Only this gateway (repeatable). Default: every configured gateway.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
              help="Seconds to wait for every gateway (default: smoke.timeout from the config).")
@click.option("--output", type=click.Choice(("text", "json")), default="text", show_default=True,
              help="text: live progress on a terminal and one verdict line per gateway; "
                   "json: a machine report on stdout.")
@click.option("--read-only", is_flag=True,
              help="Write nothing: judge by the status API and the config lag instead.")
@with_logging
def smoke(config_file: Path, names: tuple[str, ...], timeout: float | None, output: str,
          read_only: bool, log_level: str, log_format: str) -> None:
    """The init-sync gate for deploys: block until every selected gateway serves a freshly
    written canary route, or the timeout passes.

    \b
    Per gateway, in parallel: wait for the data plane to answer and for /status/ready
    (when status_url is set), PUT the canary route through the admin API, poll the data
    plane until it answers 302 with the canary's Location, then delete the canary. The
    canary is deleted whatever happens: timeout, error, SIGINT or SIGTERM.

    \b
    Exit codes: 0 every gateway synced; 1 any gateway not synced by the deadline (the
    reason is printed per gateway); 2 bad config or usage.
    """
    from watchdog.gateway.gate import run_smoke_command

    setup_logging(log_level if log_level != "info" else "warning", log_format)
    config = load_or_exit(config_file)
    known = [gw.name for gw in config.gateways]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.BadParameter(
            f"no gateway named {', '.join(unknown)} in {config_file} "
            f"(configured: {', '.join(known) or 'none'})", param_hint="--gateway")
    selected = [config.gateway(n) for n in names] if names else list(config.gateways)
    if not selected:
        raise click.UsageError(f"{config_file} configures no gateways to check")
    if read_only:
        missing = [gw.name for gw in selected if not (gw.status_url or gw.metrics_url)]
        if missing:
            raise click.UsageError(
                f"--read-only needs status_url or metrics_url; missing for {', '.join(missing)}")
    elif missing := [gw.name for gw in selected if not gw.data_url]:
        raise click.UsageError(f"no data_url configured for {', '.join(missing)}: the canary "
                               "cannot be checked (set data_url, or use --read-only)")
    code = run_smoke_command(config, selected, timeout or config.smoke.timeout, output,
                             read_only)
    sys.exit(code)

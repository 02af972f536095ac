"""The config file: strict typed models, one loader, one error type."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "0.0.0.0:9817"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(Exception):
    """A config that cannot be used. `details` holds (key path, problem) pairs."""

    def __init__(self, message: str, details: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)

    def __str__(self) -> str:
        if not self.details:
            return self.message
        lines = [self.message] + [f"  {loc}: {problem}" for loc, problem in self.details]
        return "\n".join(lines)


def parse_duration(value: object) -> float:
    """'500ms', '15s', '5m', '1h', '1h30m', or plain seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f"invalid duration {value!r}: use e.g. 500ms, 15s, 5m, 1h or plain seconds"
                ) from None
    else:
        raise ValueError(f"invalid duration {value!r}: use e.g. 500ms, 15s, 5m, 1h")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError(f"invalid duration {value!r}: must be a finite number >= 0")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


# Floors below which a value is a slip (5ms for 5m), not a tuning choice. Short intervals
# stay legal: the lab and the integration tests poll every few hundred milliseconds.
MIN_INTERVAL = 0.1          # etcd.interval, gateways[].interval
MIN_TIMEOUT = 0.05          # etcd.timeout, gateways[].timeout
MIN_SMOKE_INTERVAL = 1.0    # smoke.interval (0 disables)
MIN_SMOKE_TIMEOUT = 1.0     # smoke.timeout
MIN_POLL_INTERVAL = 0.01    # smoke.poll_interval
# The largest fleet one process was measured polling (docs/benchmarks.md, fleet scale):
# 1,000 peers + 1,000 gateways kept one core 80 % busy. Bigger fleets are sharded.
MAX_ENDPOINTS = 1000
MAX_GATEWAYS = 1000
# With no timeout given, the default is clamped to this share of the interval, so a
# poll ends before the next one is due. Prometheus clamps a default scrape_timeout to the
# scrape_interval itself; here an explicit timeout must be strictly shorter, so the
# default is too.
TIMEOUT_SHARE = 0.8
DEFAULT_ETCD_INTERVAL = 15.0
DEFAULT_ETCD_TIMEOUT = 5.0
ETCD_DEFAULT_PORT = 2379
MAX_SECRET_BYTES = 64 * 1024
MAX_NAMED_WARNINGS = 10     # gateways named one by one in a warning, then a count


class KeyedError(ValueError):
    """Problems under the model being validated, each with its key relative to it."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in problems))
        self.problems = list(problems)


def format_duration(seconds: float) -> str:
    """15.0 -> '15s', 0.1 -> '100ms', 300 -> '5m', 5400 -> '1h30m'."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 60 and seconds == int(seconds):
        whole, out = int(seconds), ""
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if whole >= size:
                out += f"{whole // size}{unit}"
                whole %= size
        return out
    return f"{seconds:g}s"


def _hints(value: object, floor: float) -> list[str]:
    """Guesses at what a value below its floor meant."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)ms\s*", value)
        # 5ms for 5m is a slip of one letter; 500ms is meant.
        if match and int(match.group(1)) <= 60 and int(match.group(1)) * 60 >= floor:
            return [f"did you mean {match.group(1)}m?"]
        if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", value):
            return ["a plain number is seconds"]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return ["a plain number is seconds"]
    return []


def _at_least(floor: float, zero_disables: bool = False) -> Callable[[object], object]:
    """A duration validator with a floor; `None` passes through for optional keys."""

    def check(value: object) -> object:
        if value is None:
            return None
        seconds = parse_duration(value)
        if seconds == 0 and zero_disables:
            return 0.0
        if seconds < floor:
            shown = value.strip() if isinstance(value, str) else f"{value}"
            notes = _hints(value, floor) + (["0 disables"] if zero_disables else [])
            raise ValueError(f"{shown} is below the {format_duration(floor)} minimum"
                             + (f" ({'; '.join(notes)})" if notes else ""))
        return seconds

    return check


Interval = Annotated[float, BeforeValidator(_at_least(MIN_INTERVAL))]
Timeout = Annotated[float, BeforeValidator(_at_least(MIN_TIMEOUT))]


def _redacted(value: str) -> str:
    """The URL with everything up to its last '@' replaced: a password may hold '/', ':'
    or '#', so no parse of it is trusted to find where the userinfo ends."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "", value
    if "@" in rest:
        rest = "<credentials>@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def _check_url(value: object, *, etcd: bool = False, query_ok: bool = False) -> str:
    text = str(value).strip()
    shown = _redacted(text)
    if shown != text:
        where = ("etcd.auth (username, password_file or password_env)" if etcd
                 else "admin_key_file or admin_key_env")
        raise ValueError(f"{shown}: credentials in a URL are not accepted (they would end up "
                         f"in logs and on the status page); use {where}")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise ValueError(f"{shown}: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown} is not an http:// or https:// URL with a host")
    if parts.fragment or (parts.query and not query_ok):
        raise ValueError(f"{shown}: a query or #fragment is not accepted here")
    if etcd:
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"{shown}: an etcd endpoint is scheme://host:port, "
                             "without a path or query")
        if port is None:
            raise ValueError(f"{shown} has no port: etcd serves clients on "
                             f"{ETCD_DEFAULT_PORT} by default, so write "
                             f"{parts.scheme}://{parts.netloc}:{ETCD_DEFAULT_PORT} "
                             "(or the port your etcd listens on)")
    return text.rstrip("/")


def _url_type(**kind: bool) -> Any:
    return Annotated[str, BeforeValidator(
        lambda v: _check_url(v, **kind) if v is not None else v)]


Url = _url_type()
EtcdUrl = _url_type(etcd=True)
MetricsUrl = _url_type(query_ok=True)


def _check_peer_metrics_url(value: object) -> str:
    text = _check_url(value)
    if not urlsplit(text).path.endswith("/metrics"):
        raise ValueError(f"{_redacted(text)}: a peer's metrics URL ends in /metrics, e.g. "
                         "http://127.0.0.1:8080/metrics for kine --metrics-bind-address "
                         "127.0.0.1:8080")
    return text


PeerMetricsUrl = Annotated[str, BeforeValidator(_check_peer_metrics_url)]


def _resolve(path: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the config file's folder, not the working directory."""
    base = (info.context or {}).get("base_dir")
    try:
        path = path.expanduser()
    except RuntimeError as err:  # ~user unknown, or no home directory
        raise ValueError(f"{path}: {err}") from None
    return path if path.is_absolute() or base is None else Path(base) / path


def _open_regular(path: Path, what: str = "") -> int:
    """An fd on a regular file; never blocks on a FIFO; ValueError naming the file.
    `what` ("config file ") goes before the path in messages."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise ValueError(f"cannot read {what}{path}: {err.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device" if
                stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise ValueError(f"{what}{path} is {kind}: give the path of a regular file")
    return fd


def _readable_file(path: Path, info: ValidationInfo) -> Path:
    path = _resolve(path, info)
    os.close(_open_regular(path))
    return path


def _writable_dir(path: Path, info: ValidationInfo) -> Path:
    """state_dir: at preflight (check-config), writable or creatable under its nearest
    existing parent. The daemon itself only counts failed saves and learns in memory."""
    path = _resolve(path, info)
    if (info.context or {}).get("preflight") and (problem := _dir_problem(path)):
        raise ValueError(problem)
    return path


def _dir_problem(path: Path) -> str | None:
    """Why this user could not keep files in `path`, or None."""
    probe = path
    while True:
        try:
            mode = probe.stat().st_mode
            break
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                return f"{path} cannot be created: no existing parent"
            probe = probe.parent
        except OSError as err:
            return f"{path} cannot be reached: {probe}: {err.strerror}"
    if not stat.S_ISDIR(mode):
        return f"{path} cannot be created: {probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == path else f"cannot be created in {probe}"
        return f"{path} {what} by this user (uid {os.getuid()})"
    return None


FilePath = Annotated[Path, AfterValidator(_resolve)]
ReadableFile = Annotated[Path, AfterValidator(_readable_file)]
StateDir = Annotated[Path, AfterValidator(_writable_dir)]


def read_secret_file(path: Path) -> tuple[SecretStr, list[str]]:
    """The first non-empty line of a secret file, stripped, and notes worth a warning.
    Errors name the file but never show a byte of its content."""
    fd = _open_regular(path)
    try:
        mode = os.fstat(fd).st_mode
        with os.fdopen(fd, "rb", closefd=False) as stream:
            raw = stream.read(MAX_SECRET_BYTES + 1)
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_SECRET_BYTES:
        raise ValueError(f"{path} is over {MAX_SECRET_BYTES // 1024} KiB: is it the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    notes = []
    if mode & stat.S_IROTH:
        notes.append(f"secret file {path} is world-readable (fix: chmod o-r {path})")
    secret, extra = _first_line(text)
    if not secret:
        raise ValueError(f"{path} is empty")
    if extra:
        notes.append(f"only the first line of {path} is used; its {extra} other "
                     "non-empty line(s) are ignored")
    return SecretStr(secret), notes


def _first_line(text: str) -> tuple[str, int]:
    """(first non-empty line stripped, how many more non-empty lines follow)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0], len(lines) - 1) if lines else ("", 0)


def read_secret(path: Path | None, env: str | None, what: str) -> SecretStr:
    """A secret from a file or an environment variable: its first non-empty line, stripped."""
    if path is not None:
        return read_secret_file(path)[0]
    if env is not None:
        return read_secret_env(env, what)[0]
    raise ValueError(f"give the {what} as a _file or an _env")


def read_secret_env(env: str, what: str) -> tuple[SecretStr, list[str]]:
    """The first non-empty line of an environment variable, and notes worth a warning."""
    if env not in os.environ:
        raise ValueError(f"environment variable {env} for the {what} is not set")
    secret, extra = _first_line(os.environ[env])
    if not secret:
        raise ValueError(f"environment variable {env} for the {what} is empty")
    notes = [f"only the first line of ${env} is used; its {extra} other non-empty "
             "line(s) are ignored"] if extra else []
    return SecretStr(secret), notes


def _load_secret(file: Path | None, env: str | None, keys: tuple[str, str],
                 what: str) -> tuple[SecretStr, list[tuple[str, str]]]:
    """read_secret for a model: errors and notes carry the key they are about."""
    key = keys[0] if file is not None else keys[1]
    try:
        if file is not None:
            secret, notes = read_secret_file(file)
        elif env is not None:
            secret, notes = read_secret_env(env, what)
        else:
            raise ValueError(f"give the {what} as a _file or an _env")
    except ValueError as err:
        raise KeyedError([(key, str(err))]) from None
    return secret, [(key, note) for note in notes]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSConfig(Model):
    ca_file: ReadableFile | None = None
    cert_file: ReadableFile | None = None
    key_file: ReadableFile | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if self.cert_file is not None and self.key_file is None:
            raise KeyedError([("key_file", "required with cert_file (the client key)")])
        if self.key_file is not None and self.cert_file is None:
            raise KeyedError([("cert_file", "required with key_file (the client certificate)")])
        return self


class AuthConfig(Model):
    username: str = Field(min_length=1)
    password_file: FilePath | None = None
    password_env: str | None = None
    _password: SecretStr = PrivateAttr()
    _notes: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _load(self) -> Self:
        if (self.password_file is None) == (self.password_env is None):
            raise ValueError("give exactly one of password_file or password_env")
        self._password, self._notes = _load_secret(
            self.password_file, self.password_env, ("password_file", "password_env"),
            "etcd password")
        return self

    @property
    def password(self) -> SecretStr:
        return self._password


_Item = TypeVar("_Item")


def _capped(items: list[_Item], cap: int, what: str) -> list[_Item]:
    """`items`, unless there are more than one watchdog process takes on."""
    if len(items) > cap:
        raise ValueError(
            f"{len(items)} {what} are more than one watchdog process takes on (at "
            f"most {cap}, the largest fleet measured in docs/benchmarks.md): "
            "shard them over several watchdog processes, each with its own config file "
            "and state_dir")
    return items


LABEL_NAME = r"^[A-Za-z0-9_.:-]+$"  # a name that is also a metric label value


class NamedEndpoint(Model):
    """`{url: ..., name: ...}`: an etcd endpoint with the peer label to use for it."""

    url: EtcdUrl
    name: str = Field(min_length=1, max_length=128, pattern=LABEL_NAME)


class EtcdConfig(Model):
    endpoints: list[EtcdUrl] = Field(min_length=1)  # URLs; named entries are unwrapped
    discover_members: bool = True
    tls: TLSConfig | None = None
    auth: AuthConfig | None = None
    probe_key: str = "/apisix/watchdog/probe"
    prefix: str = Field(default="/apisix", pattern=r"^/")
    interval: Interval = DEFAULT_ETCD_INTERVAL
    timeout: Timeout = DEFAULT_ETCD_TIMEOUT
    grpc_probes: bool = True
    max_metrics_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    connections_top_n: int = Field(default=10, ge=1, le=100)
    # Copy etcd's own fsync and commit histograms into watchdog's output (Prometheus
    # usually scrapes them from etcd itself: off by default).
    mirror_histograms: bool = False
    max_concurrent_polls: int = Field(default=16, ge=1, le=1024)
    # etcd's --max-concurrent-streams where it was set (invisible over the wire); the
    # overrides are keyed by member name or client URL.
    max_concurrent_streams: int | None = Field(default=None, ge=1)
    max_concurrent_streams_overrides: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict)
    # A peer whose Prometheus page is not at <client URL>/metrics (kine's
    # --metrics-bind-address); keyed by member name or client URL like the overrides.
    metrics_urls: dict[str, PeerMetricsUrl] = Field(default_factory=dict)
    # Client connections: auto counts them for every peer listening on this host; off never
    # (a central replica); local is a per-host agent that exports only them (docs/scaling.md).
    connections: Literal["auto", "off", "local"] = "auto"

    _names: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _named_endpoints(cls, data: Any, handler: Any, info: ValidationInfo) -> EtcdConfig:
        """Unwrap `{url, name}` entries of `endpoints` into URLs and keep their names; the
        problems of named entries and of the rest are reported together."""
        entries = data.get("endpoints") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not any(isinstance(e, dict) for e in entries):
            return handler(data)  # type: ignore[no-any-return]
        problems: list[tuple[str, str]] = []
        names: dict[str, str] = {}
        named_at: dict[str, int] = {}
        urls: list[Any] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                urls.append(entry)
                continue
            try:
                named = NamedEndpoint.model_validate(entry, context=info.context)
            except ValidationError as err:
                problems += [(f"endpoints[{i}].{key}", msg) for e in err.errors()
                             for key, msg in _details(e)]
                urls.append(entry.get("url") if isinstance(entry.get("url"), str) else "")
                continue
            if named.name in named_at:
                problems.append((f"endpoints[{i}].name", (
                    f"{named.name!r} is already the name of endpoints[{named_at[named.name]}]: "
                    "peer labels must be unique")))
            elif names.get(named.url, named.name) != named.name:
                problems.append((f"endpoints[{i}].name", (
                    f"{named.url} is already named {names[named.url]!r}: one name per endpoint")))
            named_at.setdefault(named.name, i)
            names[named.url] = named.name
            urls.append(named.url)
        try:
            model = handler({**data, "endpoints": urls})
        except ValidationError as err:
            problems += [p for e in err.errors() for p in _details(e)
                         if not any(p[0].startswith(q[0].split(".")[0]) for q in problems)]
            raise KeyedError(problems) from None
        if problems:
            raise KeyedError(problems)
        model._names = names
        return model  # type: ignore[no-any-return]

    @property
    def endpoint_names(self) -> dict[str, str]:
        """Configured peer labels by endpoint URL (entries given as `{url, name}`)."""
        return dict(self._names)

    @field_validator("endpoints")
    @classmethod
    def _cap(cls, endpoints: list[str]) -> list[str]:
        return _capped(endpoints, MAX_ENDPOINTS, "endpoints")

    def metrics_url_for(self, name: str, url: str) -> str | None:
        """The configured metrics page of one peer, without its `/metrics`, or None."""
        wanted = {name: 0, url.rstrip("/"): 1}  # a member name wins over a URL
        found = sorted((wanted[k.rstrip("/")], page) for k, page in self.metrics_urls.items()
                       if k.rstrip("/") in wanted)
        return found[0][1].removesuffix("/metrics") if found else None

    def stream_limit_for(self, name: str, url: str) -> int | None:
        """The configured --max-concurrent-streams of one peer (override, then default)."""
        overrides = self.max_concurrent_streams_overrides
        for key in (name, url.rstrip("/")):
            if key in overrides:
                return overrides[key]
        return self.max_concurrent_streams


class GatewayConfig(Model):
    name: str = Field(min_length=1, pattern=LABEL_NAME)
    admin_url: Url
    admin_key_file: FilePath | None = None
    admin_key_env: str | None = None
    data_url: Url | None = None
    status_url: Url | None = None
    metrics_url: MetricsUrl | None = None
    workers: int | None = Field(default=None, ge=1, le=1024)
    sync_mode: Literal["legacy", "modern"] = "modern"
    watched_prefixes: int = Field(default=13, ge=1, le=64)
    etcd_endpoint: EtcdUrl | None = None
    interval: Interval | None = None
    timeout: Timeout | None = None
    _admin_key: SecretStr | None = PrivateAttr(default=None)
    _notes: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _load(self) -> Self:
        if self.admin_key_file is not None and self.admin_key_env is not None:
            raise ValueError("give only one of admin_key_file or admin_key_env")
        if self.admin_key_file is not None or self.admin_key_env is not None:
            self._admin_key, self._notes = _load_secret(
                self.admin_key_file, self.admin_key_env, ("admin_key_file", "admin_key_env"),
                "admin key")
        return self

    @property
    def admin_key(self) -> SecretStr | None:
        """None when the admin API needs no key (admin_key_required: false), or for a
        gateway that is only judged read-only."""
        return self._admin_key

    def expected_streams(self) -> int | None:
        """Watch streams this gateway should hold on etcd, when its workers are known: one
        per config-syncing Lua VM (every worker and the privileged agent), times the watched
        prefixes before APISIX 3.4 (docs/configuration.md, "Expected fan-out")."""
        if self.workers is None:
            return None
        per_process = self.watched_prefixes if self.sync_mode == "legacy" else 1
        return (self.workers + 1) * per_process


class TripwireConfig(Model):
    factor: float = Field(default=2.0, gt=1.0)
    warmup: Duration = 3600.0
    clear_factor: float = Field(default=1.5, gt=0.0)
    hold: Duration = 300.0
    min_streams: float = Field(default=10.0, ge=0.0)
    state_max_age: Duration = 86400.0

    @model_validator(mode="after")
    def _clear_below_trip(self) -> Self:
        if self.clear_factor > self.factor:
            raise KeyedError([("clear_factor", "must not exceed factor")])
        return self


class SmokeConfig(Model):
    interval: Annotated[float, BeforeValidator(_at_least(MIN_SMOKE_INTERVAL, True))] = 300.0
    timeout: Annotated[float, BeforeValidator(_at_least(MIN_SMOKE_TIMEOUT))] = 60.0
    poll_interval: Annotated[float, BeforeValidator(_at_least(MIN_POLL_INTERVAL))] = 0.05


def _check_listen(value: str) -> str:
    _, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return str(value)


ListenAddress = Annotated[str, BeforeValidator(_check_listen)]


class ShardConfig(Model):
    """This replica's share of the fleet (docs/scaling.md); `--shard` overrides it."""

    index: int | Literal["auto"] = 0
    count: int = Field(default=1, ge=1, le=1024)

    @model_validator(mode="after")
    def _index_below_count(self) -> Self:
        if self.index != "auto" and not 0 <= int(self.index) < self.count:
            raise KeyedError([("index", f"must be 0 <= index < count ({self.count}), "
                                        f"not {self.index}")])
        return self


class WebConfig(Model):
    listen_address: ListenAddress = DEFAULT_LISTEN


class Config(Model):
    etcd: EtcdConfig
    gateways: list[GatewayConfig] = Field(default_factory=list)
    tripwire: TripwireConfig = TripwireConfig()
    smoke: SmokeConfig = SmokeConfig()
    state_dir: StateDir = Field(default=Path("/var/lib/watchdog"), validate_default=True)
    web: WebConfig = WebConfig()
    shard: ShardConfig | None = None
    _warnings: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _default_timings(cls, data: object) -> object:
        return _with_default_timings(data)

    @field_validator("gateways")
    @classmethod
    def _cap(cls, gateways: list[GatewayConfig]) -> list[GatewayConfig]:
        return _capped(gateways, MAX_GATEWAYS, "gateways")

    @model_validator(mode="after")
    def _local_agent(self) -> Self:
        if self.etcd.connections == "local":
            problems = []
            if self.etcd.discover_members:
                problems.append(("etcd.discover_members", "must be false with "
                                 "etcd.connections: local (the agent polls its own member)"))
            if self.gateways:
                problems.append(("gateways", "must be empty with etcd.connections: local "
                                 "(the central replica probes gateways)"))
            if problems:
                raise KeyedError(problems)
        return self

    @property
    def warnings(self) -> list[tuple[str, str]]:
        """(key path, text) for what is valid but probably not meant; never secrets."""
        return list(self._warnings)

    def gateway(self, name: str) -> GatewayConfig:
        for gw in self.gateways:
            if gw.name == name:
                return gw
        raise KeyError(name)


def _seconds(value: object) -> float | None:
    try:
        return parse_duration(value)
    except ValueError:
        return None


def _with_default_timings(data: object) -> object:
    """Fill in the timings a key inherits: etcd.timeout clamped below etcd.interval, and
    each gateway's interval and timeout from etcd's (the timeout clamped below the
    gateway's interval). Only valid values are passed on; bad ones are named where they
    were written, not again on every gateway that would inherit them."""
    if not isinstance(data, dict) or not isinstance(data.get("etcd"), dict):
        return data
    etcd = dict(data["etcd"])
    interval = _usable(etcd.get("interval", DEFAULT_ETCD_INTERVAL), MIN_INTERVAL)
    if etcd.get("timeout") is None and interval:
        etcd["timeout"] = min(DEFAULT_ETCD_TIMEOUT, interval * TIMEOUT_SHARE)
    timeout = _usable(etcd.get("timeout"), MIN_TIMEOUT)
    if timeout and interval and timeout >= interval:
        timeout = None
    out = {**data, "etcd": etcd}
    if isinstance(data.get("gateways"), list):
        gateways: list[object] = []
        for gw in data["gateways"]:
            if isinstance(gw, dict):
                gw = dict(gw)
                if gw.get("interval") is None and interval:
                    gw["interval"] = interval
                gw_interval = _usable(gw.get("interval"), MIN_INTERVAL)
                if gw.get("timeout") is None and timeout and gw_interval:
                    gw["timeout"] = min(timeout, gw_interval * TIMEOUT_SHARE)
            gateways.append(gw)
        out["gateways"] = gateways
    return out


def _usable(value: object, floor: float) -> float | None:
    """The value in seconds when it parses and is at or above its floor, else None."""
    seconds = _seconds(value) if value is not None else None
    return seconds if seconds is not None and seconds >= floor else None


def _cross_checks(data: dict[Any, Any]) -> list[tuple[str, str]]:
    """Checks across keys, on the raw data so they run even when other keys are bad: every
    problem of a file is reported in one pass."""
    problems: list[tuple[str, str]] = []
    etcd = data.get("etcd") if isinstance(data.get("etcd"), dict) else {}
    interval = _usable(etcd.get("interval", DEFAULT_ETCD_INTERVAL), MIN_INTERVAL)
    timeout = _usable(etcd.get("timeout"), MIN_TIMEOUT)
    if interval and timeout and timeout >= interval:
        problems.append(("etcd.timeout", _timeout_problem(timeout, interval, "etcd.interval")))
    tls = etcd.get("tls")
    if isinstance(tls, dict) and _flag(tls.get("insecure_skip_verify"), False) \
            and _flag(etcd.get("grpc_probes"), True):
        problems.append(("etcd.tls.insecure_skip_verify",
                         "applies to the JSON gateway only, and the gRPC probes always verify "
                         "the certificate: give the etcd CA as etcd.tls.ca_file, or set "
                         "etcd.grpc_probes: false"))
    gateways = data.get("gateways") if isinstance(data.get("gateways"), list) else []
    names: dict[str, int] = {}
    for i, gw in enumerate(gateways):
        if not isinstance(gw, dict):
            continue
        own = gw.get("interval") is not None
        gw_interval = _usable(gw["interval"], MIN_INTERVAL) if own else interval
        gw_timeout = _usable(gw.get("timeout"), MIN_TIMEOUT)
        if gw_interval and gw_timeout and gw_timeout >= gw_interval:
            source = f"gateways[{i}].interval" if own else "etcd.interval, inherited"
            problems.append((f"gateways[{i}].timeout",
                             _timeout_problem(gw_timeout, gw_interval, source)))
        name = gw.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append((f"gateways[{i}].name",
                                 f"{name!r} is already the name of gateways[{names[name]}]: "
                                 "names must be unique (they are the gateway label)"))
            else:
                names[name] = i
    return problems


_BOOL = TypeAdapter(bool)


def _flag(value: object, default: bool) -> bool:
    """A raw boolean as pydantic reads it (true, yes, on, 1, ...); unreadable: False, and
    the validators name the key."""
    if value is None:
        return default
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        return False


def _timeout_problem(timeout: float, interval: float, source: str) -> str:
    return (f"{format_duration(timeout)} is not shorter than the interval "
            f"{format_duration(interval)} ({source}): a poll must end before the next one is "
            f"due; leave the timeout out to get {format_duration(TIMEOUT_SHARE * interval)} "
            f"or less")


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _details(error: Any) -> list[tuple[str, str]]:
    """One pydantic error as (key path, problem) pairs."""
    loc = _location(error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, KeyedError):
        prefix = "" if loc == "(top level)" else loc + "."
        return [(prefix + key, msg) for key, msg in cause.problems]
    if error["type"] == "extra_forbidden":
        return [(loc, "unknown key (check the spelling; see docs/configuration.md)")]
    if error["type"] == "missing":
        return [(loc, "required key is missing")]
    return [(loc, str(error["msg"]).removeprefix("Value error, "))]


def _collect_warnings(config: Config) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if config.etcd.auth is not None:
        found += [(f"etcd.auth.{key}", note) for key, note in config.etcd.auth._notes]
    blind: list[int] = []
    for i, gw in enumerate(config.gateways):
        found += [(f"gateways[{i}].{key}", note) for key, note in gw._notes]
        if config.smoke.interval > 0 and gw.data_url is None:
            blind.append(i)
    for i in blind[:MAX_NAMED_WARNINGS]:
        found.append((f"gateways[{i}]", (
            f"gateway {config.gateways[i].name} has no data_url: the periodic smoke probe "
            f"(smoke.interval {format_duration(config.smoke.interval)}) skips it and "
            "`watchdog smoke` cannot check it without --read-only; set data_url")))
    if len(blind) > MAX_NAMED_WARNINGS:  # a fleet config must not flood the log
        found.append(("gateways", f"{len(blind) - MAX_NAMED_WARNINGS} more gateways have no "
                      "data_url (the periodic smoke probe skips them)"))
    return found


def config_from_dict(data: object, source: str = "config", *, base_dir: Path | None = None,
                     preflight: bool = False) -> Config:
    """Validate already-parsed YAML; raises ConfigError naming every bad key path.

    Relative paths resolve against `base_dir` (the config file's folder). `preflight` also
    fails on what the daemon survives at run time (an unwritable state_dir, which it only
    warns about)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    context = {"base_dir": base_dir, "preflight": preflight}
    # Escaped lone surrogates ("\ud800") parse into text no file system or URL parser can
    # encode: refuse them by key path before validation trips over them.
    details: list[tuple[str, str]] = list(_not_unicode(data, ""))
    if details:
        noun = "problem" if len(details) == 1 else "problems"
        raise ConfigError(f"{source}: {len(details)} {noun}", details)
    config = None
    try:
        config = Config.model_validate(data, context=context)
    except ValidationError as err:
        for error in err.errors():
            details += _details(error)
    details += _cross_checks(data)
    if details or config is None:
        noun = "problem" if len(details) == 1 else "problems"
        raise ConfigError(f"{source}: {len(details)} {noun}", details)
    config._warnings = _collect_warnings(config)
    return config


def _not_unicode(value: object, where: str) -> Iterator[tuple[str, str]]:
    """(key path, problem) for every key or string that is not valid Unicode text."""
    def bad(text: str) -> bool:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    if isinstance(value, dict):
        for key, child in value.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and bad(key):
                yield (where or "(top level)",
                       "a key is not valid Unicode text (a lone surrogate escape like \\ud800)")
                continue
            yield from _not_unicode(child, path)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _not_unicode(child, f"{where}[{i}]")
    elif isinstance(value, str) and bad(value):
        yield where, "not valid Unicode text (a lone surrogate escape like \\ud800)"


def read_yaml(path: Path | str, what: str = "config file") -> object:
    """Parse a YAML file; every way it can fail is a one-line ConfigError."""
    path = Path(path)
    try:
        fd = _open_regular(path, f"{what} ")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    try:
        with os.fdopen(fd, "rb") as stream:
            text = stream.read().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise ConfigError(f"{path}: YAML nested too deeply") from None


def load_config(path: Path | str, *, preflight: bool = False,
                log_warnings: bool = True) -> Config:
    """Read and validate a YAML config file; paths in it are relative to its folder."""
    path = Path(path)
    config = config_from_dict(read_yaml(path), str(path), base_dir=path.absolute().parent,
                              preflight=preflight)
    if log_warnings:
        for key, text in config.warnings:
            log.warning("config warning key=%s: %s", key, text)
    return config


def describe(config: Config) -> list[str]:
    """What the config would watch, for `check-config` (never prints secrets)."""
    etcd = config.etcd
    fmt = format_duration
    lines = [
        f"etcd: {len(etcd.endpoints)} endpoint(s), "
        f"{'members discovered from them' if etcd.discover_members else 'no member discovery'}, "
        f"every {fmt(etcd.interval)} (timeout {fmt(etcd.timeout)}), "
        f"gRPC probes {'on' if etcd.grpc_probes else 'off'}",
    ]
    lines += [f"  endpoint {url}" + (f" (peer {etcd.endpoint_names[url]})"
                                     if url in etcd.endpoint_names else "")
              for url in etcd.endpoints]
    if etcd.tls:
        items = [f"{k}={v}" for k, v in etcd.tls.model_dump().items() if v not in (None, False)]
        lines.append("  tls: " + (", ".join(items) or "system CAs"))
    if etcd.auth:
        lines.append(f"  auth: user {etcd.auth.username} (password loaded)")
    lines.append(f"  probe key: {etcd.probe_key}")
    lines.append(f"gateways: {len(config.gateways)}")
    for gw in config.gateways:
        extra = [f"data {gw.data_url}"] if gw.data_url else []
        extra += [f"status {gw.status_url}"] if gw.status_url else []
        extra += [f"metrics {gw.metrics_url}"] if gw.metrics_url else []
        expected = gw.expected_streams()
        if expected is not None:
            extra.append(f"expects {expected} watch streams ({gw.sync_mode} sync)")
        if gw.interval is not None and gw.timeout is not None:
            extra.append(f"every {fmt(gw.interval)} (timeout {fmt(gw.timeout)})")
        key = "admin key loaded" if gw.admin_key is not None else "no admin key"
        lines.append(f"  {gw.name}: admin {gw.admin_url} ({key})"
                     + "".join(f"; {item}" for item in extra))
    tw = config.tripwire
    lines.append(
        f"tripwire: trips at {tw.factor:g}x steady state (>= {tw.min_streams:g} streams) "
        f"after {fmt(tw.warmup)} warm-up; clears under {tw.clear_factor:g}x for {fmt(tw.hold)}"
    )
    smoke = config.smoke
    lines.append(
        "smoke: disabled" if smoke.interval == 0
        else f"smoke: every {fmt(smoke.interval)}, timeout {fmt(smoke.timeout)}"
    )
    lines.append(f"state_dir: {config.state_dir}")
    lines.append(f"web: {config.web.listen_address}")
    return lines

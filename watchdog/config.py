"""The config file: strict typed models, one loader, one error type."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
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


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as err:
        raise ValueError(f"{value!r}: {err}") from None
    return value.rstrip("/")


Url = Annotated[str, BeforeValidator(lambda v: _check_url(str(v)) if v is not None else v)]


def read_secret(path: Path | None, env: str | None, what: str) -> SecretStr:
    """A secret from a file (first line, stripped) or an environment variable."""
    if path is not None:
        try:
            mode = path.stat().st_mode
            text = path.read_text()
        except OSError as err:
            raise ValueError(f"cannot read {what} file {path}: {err.strerror}") from None
        if mode & stat.S_IROTH:
            log.warning("secret file is world-readable file=%s fix='chmod o-r %s'", path, path)
        secret = text.strip()
    elif env is not None:
        if env not in os.environ:
            raise ValueError(f"environment variable {env} for the {what} is not set")
        secret = os.environ[env].strip()
    else:
        raise ValueError(f"give the {what} as a _file or an _env")
    if not secret:
        raise ValueError(f"the {what} is empty")
    return SecretStr(secret)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSConfig(Model):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _files(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        return self


class AuthConfig(Model):
    username: str = Field(min_length=1)
    password_file: Path | None = None
    password_env: str | None = None
    _password: SecretStr = PrivateAttr()

    @model_validator(mode="after")
    def _load(self) -> Self:
        if (self.password_file is None) == (self.password_env is None):
            raise ValueError("give exactly one of password_file or password_env")
        self._password = read_secret(self.password_file, self.password_env, "etcd password")
        return self

    @property
    def password(self) -> SecretStr:
        return self._password


class EtcdConfig(Model):
    endpoints: list[Url] = Field(min_length=1)
    discover_members: bool = True
    tls: TLSConfig | None = None
    auth: AuthConfig | None = None
    probe_key: str = "/apisix/watchdog/probe"
    prefix: str = Field(default="/apisix", pattern=r"^/")
    interval: Duration = 15.0
    timeout: Duration = 5.0
    grpc_probes: bool = True
    max_metrics_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    connections_top_n: int = Field(default=10, ge=1, le=100)
    max_concurrent_polls: int = Field(default=16, ge=1, le=1024)
    # etcd's --max-concurrent-streams where it was set (invisible over the wire); the
    # overrides are keyed by member name or client URL.
    max_concurrent_streams: int | None = Field(default=None, ge=1)
    max_concurrent_streams_overrides: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict)

    @model_validator(mode="after")
    def _times(self) -> Self:
        if self.interval <= 0:
            raise ValueError("interval must be > 0")
        if not 0 < self.timeout < self.interval:
            raise ValueError("timeout must be > 0 and shorter than interval")
        return self

    def stream_limit_for(self, name: str, url: str) -> int | None:
        """The configured --max-concurrent-streams of one peer (override, then default)."""
        overrides = self.max_concurrent_streams_overrides
        for key in (name, url.rstrip("/")):
            if key in overrides:
                return overrides[key]
        return self.max_concurrent_streams


class GatewayConfig(Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    admin_url: Url
    admin_key_file: Path | None = None
    admin_key_env: str | None = None
    data_url: Url | None = None
    status_url: Url | None = None
    metrics_url: Url | None = None
    workers: int | None = Field(default=None, ge=1, le=1024)
    sync_mode: Literal["legacy", "modern"] = "modern"
    watched_prefixes: int = Field(default=13, ge=1, le=64)
    etcd_endpoint: Url | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    _admin_key: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load(self) -> Self:
        if self.admin_key_file is not None and self.admin_key_env is not None:
            raise ValueError("give only one of admin_key_file or admin_key_env")
        if self.admin_key_file is not None or self.admin_key_env is not None:
            self._admin_key = read_secret(self.admin_key_file, self.admin_key_env, "admin key")
        return self

    @property
    def admin_key(self) -> SecretStr | None:
        """None when the admin API needs no key (admin_key_required: false), or for a
        gateway that is only judged read-only."""
        return self._admin_key

    def expected_streams(self) -> int | None:
        """Watch streams this gateway should hold on etcd, when its workers are known."""
        if self.workers is None:
            return None
        per_worker = self.watched_prefixes if self.sync_mode == "legacy" else 1
        return self.workers * per_worker


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
            raise ValueError("clear_factor must not exceed factor")
        return self


class SmokeConfig(Model):
    interval: Duration = 300.0
    timeout: Duration = 60.0
    poll_interval: Duration = 0.05

    @field_validator("timeout", "poll_interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be > 0")
        return value


def _check_listen(value: str) -> str:
    _, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return str(value)


ListenAddress = Annotated[str, BeforeValidator(_check_listen)]


class WebConfig(Model):
    listen_address: ListenAddress = DEFAULT_LISTEN


class Config(Model):
    etcd: EtcdConfig
    gateways: list[GatewayConfig] = Field(default_factory=list)
    tripwire: TripwireConfig = TripwireConfig()
    smoke: SmokeConfig = SmokeConfig()
    state_dir: Path = Path("/var/lib/watchdog")
    web: WebConfig = WebConfig()

    @model_validator(mode="after")
    def _unique_gateways(self) -> Self:
        seen: set[str] = set()
        for gw in self.gateways:
            if gw.name in seen:
                raise ValueError(f"gateway name {gw.name!r} is used twice")
            seen.add(gw.name)
        return self

    def gateway(self, name: str) -> GatewayConfig:
        for gw in self.gateways:
            if gw.name == name:
                return gw
        raise KeyError(name)


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


def _problem(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (check the spelling; see docs/configuration.md)"
    if error["type"] == "missing":
        return "required key is missing"
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def config_from_dict(data: object, source: str = "config") -> Config:
    """Validate already-parsed YAML; raises ConfigError naming every bad key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        details = [(_location(e["loc"]), _problem(e)) for e in err.errors()]  # type: ignore[arg-type]
        noun = "problem" if len(details) == 1 else "problems"
        raise ConfigError(f"{source}: {len(details)} {noun}", details) from None


def read_yaml(path: Path | str, what: str = "config file") -> object:
    """Parse a YAML file; every way it can fail is a one-line ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
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


def load_config(path: Path | str) -> Config:
    """Read and validate a YAML config file."""
    return config_from_dict(read_yaml(path), str(path))


def describe(config: Config) -> list[str]:
    """What the config would watch, for `check-config` (never prints secrets)."""
    etcd = config.etcd
    lines = [
        f"etcd: {len(etcd.endpoints)} endpoint(s), "
        f"{'members discovered from them' if etcd.discover_members else 'no member discovery'}, "
        f"every {etcd.interval:g}s (timeout {etcd.timeout:g}s)",
    ]
    lines += [f"  endpoint {url}" for url in etcd.endpoints]
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
        lines.append(f"  {gw.name}: admin {gw.admin_url}" + ("; " + "; ".join(extra)))
    tw = config.tripwire
    lines.append(
        f"tripwire: trips at {tw.factor:g}x steady state (>= {tw.min_streams:g} streams) "
        f"after {tw.warmup:g}s warm-up; clears under {tw.clear_factor:g}x for {tw.hold:g}s"
    )
    smoke = config.smoke
    lines.append(
        "smoke: disabled" if smoke.interval == 0
        else f"smoke: every {smoke.interval:g}s, timeout {smoke.timeout:g}s"
    )
    lines.append(f"state_dir: {config.state_dir}")
    lines.append(f"web: {config.web.listen_address}")
    return lines

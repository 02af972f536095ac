"""Sharding and the per-host mode: the hash, the share, the flag and the config keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from watchdog.config import ConfigError, config_from_dict
from watchdog.shard import (
    Shard,
    apply_shard,
    exported,
    hashmod,
    ordinal,
    parse_shard,
)


def test_hashmod_is_prometheus_relabel_hashmod() -> None:
    # The vector of Prometheus's own relabel test: hashmod("baz", 1000) == 976.
    assert hashmod("baz", 1000) == 976
    assert hashmod("foo", 1000) == 696


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_every_key_has_exactly_one_owner(count: int) -> None:
    keys = [f"https://10.0.{i // 250}.{i % 250}:2379" for i in range(1000)]
    shards = [Shard(i, count) for i in range(count)]
    owners = [[s.index for s in shards if s.owns_peer(k)] for k in keys]
    assert all(len(o) == 1 for o in owners)
    if count > 1:  # no shard is left idle by a skewed hash
        per_shard = [sum(1 for o in owners if o == [i]) for i in range(count)]
        assert min(per_shard) > 1000 / count * 0.8, per_shard


def test_peer_key_ignores_a_trailing_slash() -> None:
    assert [Shard(i, 7).owns_peer("http://a:2379/") for i in range(7)] == [
        Shard(i, 7).owns_peer("http://a:2379") for i in range(7)]


def test_parse_shard() -> None:
    assert parse_shard("1/3") == (1, 3)
    assert parse_shard("auto/4") == ("auto", 4)
    for bad, why in (("3/3", "not below"), ("1", "INDEX/COUNT"), ("x/3", "not a number"),
                     ("0/0", "at least 1"), ("-1/3", "not a number")):
        with pytest.raises(ValueError, match=why):
            parse_shard(bad)


def test_ordinal_from_a_statefulset_pod_name() -> None:
    assert ordinal("watchdog-shard-2") == 2
    with pytest.raises(ValueError, match="-<ordinal>"):
        ordinal("watchdog")


def base(**extra: object) -> dict[str, object]:
    return {"etcd": {"endpoints": ["http://127.0.0.1:2379"]}, **extra}


def test_config_shard_index_must_be_below_count() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(base(shard={"index": 3, "count": 3}))
    assert any(key == "shard.index" for key, _ in err.value.details), err.value.details
    with pytest.raises(ConfigError) as err:
        config_from_dict(base(shard={"index": 0, "count": 0}))
    assert any(key == "shard.count" for key, _ in err.value.details), err.value.details


def test_flag_overrides_config_and_auto_reads_the_host_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_from_dict(base(shard={"index": 0, "count": 2}))
    assert Shard.of(apply_shard(config, None)) == Shard(0, 2)
    assert Shard.of(apply_shard(config, "2/3")) == Shard(2, 3)
    monkeypatch.setenv("HOSTNAME", "watchdog-1")
    assert Shard.of(apply_shard(config, "auto/3")) == Shard(1, 3)
    monkeypatch.setenv("HOSTNAME", "watchdog-5")
    with pytest.raises(ConfigError) as err:
        apply_shard(config, "auto/3")
    assert err.value.details[0][0] == "--shard"
    auto = config_from_dict(base(shard={"index": "auto", "count": 3}))
    with pytest.raises(ConfigError) as err:
        apply_shard(auto, None)
    assert err.value.details[0][0] == "shard.index"


def test_local_connections_mode_is_a_per_host_agent() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"etcd": {"endpoints": ["http://127.0.0.1:2379"],
                                   "connections": "local"},
                          "gateways": [{"name": "gw", "admin_url": "http://127.0.0.1:9180"}]})
    keys = {key for key, _ in err.value.details}
    assert {"etcd.discover_members", "gateways"} <= keys, err.value.details
    config_from_dict({"etcd": {"endpoints": ["http://127.0.0.1:2379"],
                               "discover_members": False, "connections": "local"}})
    assert exported("watchdog_etcd_client_connections", "local")
    assert not exported("watchdog_etcd_peer_up", "local")
    assert not exported("watchdog_finding", "local")
    assert exported("watchdog_job_runs", "local")
    assert exported("watchdog_etcd_peer_up", "auto")


def test_run_with_a_bad_shard_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "ok.yml"
    path.write_text(yaml.safe_dump(base()))
    done = subprocess.run([sys.executable, "-m", "watchdog", "run", "--config", str(path),
                           "--shard", "3/3"], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert "--shard" in done.stderr and "Traceback" not in done.stderr


def test_doctor_looks_at_the_whole_fleet_whatever_the_shard(tmp_path: Path) -> None:
    # An `auto` index this host name cannot resolve would stop `run` (exit 2); doctor ignores
    # the shard, so it gets as far as polling (and finds the endpoint down: exit 1).
    path = tmp_path / "sharded.yml"
    path.write_text(yaml.safe_dump(base(shard={"index": "auto", "count": 3},
                                        state_dir=str(tmp_path / "state"))))
    env = {**os.environ, "HOSTNAME": "no-ordinal-here"}
    done = subprocess.run([sys.executable, "-m", "watchdog", "doctor", "--config", str(path),
                           "--duration", "1s", "--output", "json"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 1), done.stderr

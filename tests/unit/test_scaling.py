"""The scale-out layouts in deploy/layouts (overlays on deploy/kubernetes): sharded, HA pair,
per-host."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_shipping import DEPLOY, K8S_VERSIONS, find
from watchdog.config import config_from_dict
from watchdog.shard import parse_shard

LAYOUTS = DEPLOY.parent / "layouts"


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomization(layout: str) -> dict[str, Any]:
    return yaml.safe_load((LAYOUTS / layout / "kustomization.yaml").read_text())


def validate(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} on Kubernetes "
                                 f"{version}: {err.message} at {list(err.path)}") from None


@pytest.mark.parametrize("layout", ["sharded", "ha", "per-host"])
def test_layout_builds_on_the_base_and_its_files_validate(layout: str) -> None:
    spec = kustomization(layout)
    assert spec["resources"][0] == "../../kubernetes"  # the base, never a copy of it
    for resource in spec["resources"][1:]:
        path = LAYOUTS / layout / resource
        assert path.is_file(), resource
        for doc in docs(path):
            assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "watchdog"
            validate(doc)


def test_sharded_statefulset_is_the_deployment_with_a_shard_per_ordinal() -> None:
    [sts] = docs(LAYOUTS / "sharded" / "statefulset.yaml")
    [deployment] = find("Deployment", "watchdog")
    assert sts["kind"] == "StatefulSet"
    # The base Service governs it (and is the one scraped): no second Service to scrape twice.
    [service] = find("Service", sts["spec"]["serviceName"])
    assert service["spec"]["selector"].items() <= \
        sts["spec"]["template"]["metadata"]["labels"].items()
    [container] = sts["spec"]["template"]["spec"]["containers"]
    [shard] = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--shard=")]
    index, count = parse_shard(shard)
    assert index == "auto" and count == sts["spec"]["replicas"]
    # Everything else is the base agent's pod: same config, mounts, limits and lock-down.
    [base] = deployment["spec"]["template"]["spec"]["containers"]
    assert [a for a in container["args"] if not a.startswith("--shard")] == base["args"]
    pod, base_pod = sts["spec"]["template"]["spec"], deployment["spec"]["template"]["spec"]
    assert {k: v for k, v in container.items() if k != "args"} == \
        {k: v for k, v in base.items() if k != "args"}
    assert pod["volumes"] == base_pod["volumes"]
    assert sts["spec"]["template"]["metadata"]["labels"] == \
        deployment["spec"]["template"]["metadata"]["labels"]
    # The kustomization removes the Deployment the StatefulSet replaces.
    [patch] = kustomization("sharded")["patches"]
    removed = yaml.safe_load(patch["patch"])
    assert removed["$patch"] == "delete" and removed["kind"] == "Deployment"
    assert removed["metadata"]["name"] == deployment["metadata"]["name"]


def test_ha_pair_runs_two_replicas_on_two_nodes() -> None:
    [patch] = kustomization("ha")["patches"]
    merged = yaml.safe_load(patch["patch"])
    [deployment] = find("Deployment", "watchdog")
    assert merged["metadata"]["name"] == deployment["metadata"]["name"]
    assert merged["spec"]["replicas"] == 2
    anti = merged["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    [term] = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    patched = {**deployment, "spec": {**deployment["spec"], "replicas": 2}}
    patched["spec"]["template"]["spec"]["affinity"] = merged["spec"]["template"]["spec"]["affinity"]
    validate(patched)
    [pdb] = docs(LAYOUTS / "ha" / "poddisruptionbudget.yaml")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_per_host_agent_is_the_base_daemonset_exporting_only_connections() -> None:
    copy = (LAYOUTS / "per-host" / "node-agent.yaml").read_text()
    assert copy.split("\n", 3)[3] == (DEPLOY / "daemonset.yaml").read_text()
    [node] = find("ConfigMap", "watchdog-node-config")
    data = yaml.safe_load(node["data"]["watchdog.yml"])
    assert data["etcd"]["connections"] == "local"
    # The central config exports no connection series in a pod of its own (nothing listens
    # there); its mode is left at auto so that it also works outside Kubernetes.
    [central] = find("ConfigMap", "watchdog-config")
    assert yaml.safe_load(central["data"]["watchdog.yml"])["etcd"].get(
        "connections", "auto") in ("auto", "off")
    data["etcd"].pop("tls")
    data["etcd"].pop("auth")
    assert config_from_dict(data).etcd.connections == "local"

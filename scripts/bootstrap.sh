# Sourced by scripts/demo and scripts/test: a project virtualenv with everything installed.
# Works on a fresh Debian machine with Python 3.11: installs python3-venv (and, for the
# tests, promtool, amtool and Alertmanager, Chromium, and podman, buildah and debootstrap
# for the image) with apt when they are missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${WATCHDOG_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root for: $*" >&2; return 1; fi
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null || { echo "no apt-get: install $* by hand" >&2; return 1; }
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@"
}

ensure_venv() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "watchdog needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
    exit 2
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      echo "installing python3-venv (Debian ships venv separately)" >&2
      apt_install python3-venv python3-pip
      "$PYTHON" -m venv "$VENV"
    fi
  fi
  local stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e "$ROOT[lab,test]"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
}

ensure_test_tools() {
  local want=()
  command -v promtool >/dev/null && command -v prometheus >/dev/null || want+=(prometheus)
  command -v chromium >/dev/null || want+=(chromium)
  # Debian names the binary prometheus-alertmanager; amtool comes with it
  { command -v prometheus-alertmanager || command -v alertmanager; } >/dev/null && command -v amtool >/dev/null \
    || want+=(prometheus-alertmanager)
  command -v faketime >/dev/null || want+=(faketime)
  [ ${#want[@]} -eq 0 ] && return 0
  echo "installing ${want[*]} with apt (real Prometheus/promtool, Alertmanager/amtool, headless Chromium and faketime for the tests)" >&2
  apt_install "${want[@]}" || echo "warning: could not install ${want[*]}; tests needing them are skipped" >&2
}

ensure_image_tools() {
  # The image test builds the Dockerfile with podman and runs it with buildah; the base image
  # is made from Debian packages with debootstrap (see scripts/image).
  local want=()
  command -v debootstrap >/dev/null || want+=(debootstrap)
  command -v podman >/dev/null || want+=(podman)
  command -v buildah >/dev/null || want+=(buildah)
  command -v pgrep >/dev/null || want+=(procps)
  # go fetches prometheus-operator's CRDs (a Go module) for the manifest schema tests.
  command -v go >/dev/null || want+=(golang-go)
  [ ${#want[@]} -eq 0 ] && return 0
  echo "installing ${want[*]} with apt (to build and run the container image in the tests)" >&2
  apt_install "${want[@]}" || echo "warning: could not install ${want[*]}; the tests needing them are skipped" >&2
}

# The real servers of the backend matrix (tests/backends.py): etcd 3.5/3.6/3.7 and kine
# built with Go from the module proxy, antietcd from npm, Debian's etcd 3.4 and MariaDB
# (kine's SQL server) with apt. Each
# is built once per pin into ${WATCHDOG_CACHE:-~/.cache/watchdog}/servers (outside the
# checkout); a warm run only compares stamps and prints nothing.
ensure_servers() {
  local missing=()
  command -v go >/dev/null || missing+=(go)
  command -v npm >/dev/null || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "warning: no ${missing[*]}: the backend matrix's servers are not built" \
      "(their tests skip, and fail under CI)" >&2
  fi
  local names=(etcd-3.4-debian mariadb-debian)
  command -v go >/dev/null && names+=(etcd-3.5 etcd-3.6 etcd-3.7 kine)
  command -v npm >/dev/null && names+=(antietcd)
  "$ROOT/scripts/servers/build.sh" "${names[@]}" ||
    echo "warning: some servers did not build (see above): their tests fail under CI" >&2
}

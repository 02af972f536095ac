# Sourced by scripts/demo and scripts/test: a project virtualenv with everything installed.
# Works on a fresh Debian machine with Python 3.11: installs python3-venv (and, for the
# tests, promtool) with apt when they are missing.
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
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
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
  command -v faketime >/dev/null || want+=(faketime)
  [ ${#want[@]} -eq 0 ] && return 0
  echo "installing ${want[*]} with apt (real Prometheus/promtool, headless Chromium and faketime for the tests)" >&2
  apt_install "${want[@]}" || echo "warning: could not install ${want[*]}; tests needing them are skipped" >&2
}

#!/usr/bin/env bash
# Builds or installs the servers of the backend test matrix, each pinned by the files in
# its folder beside this script, into a cache outside the checkout:
#   ${WATCHDOG_CACHE:-$HOME/.cache/watchdog}/servers/<name>-<version>/
# A server is rebuilt only when its pin (its folder's files, this script, the toolchain) changes,
# so a warm run only compares stamps. Go's module and build caches live in the same cache.
#
#   scripts/servers/build.sh [--quiet] [--list] [NAME...]
#
# NAME is a folder here (etcd-3.5, etcd-3.6, etcd-3.7, kine, antietcd), etcd-3.4-debian
# (Debian's etcd-server/etcd-client with apt) or mariadb-debian (mariadb-server, kine's
# SQL server, with apt). No NAME: all of them. --list prints "name version path" per
# server and builds nothing. Exit 1 when a build failed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${WATCHDOG_CACHE:-$HOME/.cache/watchdog}/servers"
QUIET=""
LIST=""
NAMES=()
for arg in "$@"; do
  case "$arg" in
    --quiet) QUIET=1 ;;
    --list) LIST=1 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build.sh: unknown option $arg" >&2; exit 2 ;;
    *) NAMES+=("$arg") ;;
  esac
done
[ ${#NAMES[@]} -gt 0 ] || NAMES=(etcd-3.4-debian mariadb-debian etcd-3.5 etcd-3.6 etcd-3.7 kine antietcd)

say() { [ -n "$QUIET" ] || echo "servers: $*" >&2; }

export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build"
# A local toolchain only (no toolchain download); -trimpath keeps paths of this machine out.
export GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false" GOPROXY="${GOPROXY:-https://proxy.golang.org}"

# The version a folder pins: the main module's require line, or package.json's dependency.
version_of() {
  local name="$1" dir="$HERE/$1"
  case "$name" in
    etcd-3.4-debian) dpkg-query -W -f '${Version}' etcd-server 2>/dev/null | sed 's/-.*//' ;;
    mariadb-debian) dpkg-query -W -f '${Version}' mariadb-server 2>/dev/null | sed 's/^[0-9]*://; s/-.*//' ;;
    etcd-3.*) sed -n 's#^[[:space:]]*go.etcd.io/etcd/server/v3 v\([^ ]*\).*#\1#p' "$dir/go.mod" | head -1 ;;
    kine) sed -n 's#^[[:space:]]*github.com/k3s-io/kine v\([^ ]*\).*#\1#p' "$dir/go.mod" | head -1 ;;
    antietcd) sed -n 's#.*"antietcd": *"\([^"]*\)".*#\1#p' "$dir/package.json" | head -1 ;;
  esac
}

# What the build depends on: the folder's files, this script (its flags) and the toolchain.
pin_of() {
  local dir="$HERE/$1" tool
  case "$1" in
    antietcd) tool="node $(node --version 2>/dev/null)" ;;
    *) tool="$(go env GOVERSION 2>/dev/null)" ;;
  esac
  { echo "$tool"; sha256sum <"$HERE/build.sh";
    (cd "$dir" && find . -type f ! -name '*.md' | LC_ALL=C sort | xargs sha256sum); } |
    sha256sum | cut -c1-16
}

build_go() {
  local name="$1" out="$2" dir="$HERE/$1"
  case "$name" in
    etcd-3.*) (cd "$dir" && go build -ldflags='-s -w' -o "$out/" ./etcd ./etcdctl) ;;
    # kine's own main package, with its release build's SQLite tags (cgo driver).
    kine) (cd "$dir" && CGO_ENABLED=1 go build \
      -ldflags="-s -w -X github.com/k3s-io/kine/pkg/version.Version=v$(version_of kine)" \
      -tags sqlite_unlock_notify,sqlite_vtable,sqlite_stat4,sqlite_preupdate_hook,sqlite_math_functions,sqlite_dbstat,sqlite_column_metadata \
      -o "$out/kine" github.com/k3s-io/kine) ;;
  esac
}

build_npm() {
  local name="$1" out="$2"
  cp "$HERE/$name/package.json" "$HERE/$name/package-lock.json" "$out/" || return 1
  # etcd3 is antietcd's optional dependency for its own tests: not needed to serve.
  (cd "$out" && npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
}

# Debian's packages, installed with apt when their binaries are missing.
ensure_apt() {
  local what="$1"; shift
  local binaries=() packages=()
  case "$what" in
    etcd-3.4-debian) binaries=(/usr/bin/etcd /usr/bin/etcdctl); packages=(etcd-server etcd-client) ;;
    mariadb-debian) binaries=(/usr/sbin/mariadbd /usr/bin/mariadb-install-db); packages=(mariadb-server) ;;
  esac
  local b missing=""
  for b in "${binaries[@]}"; do [ -x "$b" ] || missing=1; done
  [ -n "$missing" ] || return 0
  command -v apt-get >/dev/null || { echo "servers: no apt-get: install ${packages[*]} by hand" >&2; return 1; }
  say "installing Debian's ${packages[*]} with apt"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq || return 1
  # No service is started: the tests run their own servers on loopback.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${packages[@]}" >/dev/null
}

ensure_one() {
  local name="$1"
  case "$name" in
    *-debian)
      [ -n "$LIST" ] && { echo "$name $(version_of "$name") /usr"; return 0; }
      ensure_apt "$name"
      return $? ;;
  esac
  [ -d "$HERE/$name" ] || { echo "servers: no such server: $name" >&2; return 2; }
  local version pin dest base
  version="$(version_of "$name")"
  base="${name%%-*}"
  dest="$CACHE/$base-$version"
  [ -n "$LIST" ] && { echo "$name $version $dest"; return 0; }
  pin="$(pin_of "$name")"
  if [ "$(cat "$dest/.pin" 2>/dev/null)" = "$pin" ]; then return 0; fi
  say "building $base $version into $dest (once per pin)"
  local tmp="$dest.tmp.$$" started=$SECONDS
  rm -rf "$tmp"; mkdir -p "$tmp" || return 1
  # Explicit checks: `set -e` does not apply inside a function called from `if`.
  # The toolchains' own chatter (module downloads) goes to a log, shown when a build fails.
  local log="$CACHE/build-$base-$version.log"
  case "$name" in
    antietcd) build_npm "$name" "$tmp" >"$log" 2>&1 ;;
    *) build_go "$name" "$tmp" >"$log" 2>&1 ;;
  esac || { tail -n 40 "$log" >&2; return 1; }
  echo "$pin" >"$tmp/.pin" || return 1
  # Swap in whole: a half-built folder never carries a matching stamp.
  rm -rf "$dest" && mv "$tmp" "$dest" || return 1
  say "built $base $version in $((SECONDS - started))s"
}

mkdir -p "$CACHE"
status=0
for name in "${NAMES[@]}"; do
  if ! ensure_one "$name"; then
    echo "servers: FAILED to build $name (see above)" >&2
    rm -rf "$CACHE/${name%%-*}-"*.tmp.$$
    status=1
  fi
done
exit $status

#!/usr/bin/env bash
# Make a Debian 12 machine (root, no systemd as PID 1) ready for the test suite:
# PostgreSQL 15, Redis, dockerd and the local base image. Idempotent: every
# step checks first and skips what is already done.
#
#   scripts/services.sh install      apt-get install what is missing
#   scripts/services.sh start        start postgresql, redis-server, dockerd
#   scripts/services.sh db           create role/database "portal"; prints DATABASE_URL
#   scripts/services.sh base-image   build portal-base:bookworm if missing
#   scripts/services.sh all          all of the above, in that order
#
# Progress goes to stderr; stdout only carries the DATABASE_URL (db/all), so
#   export DATABASE_URL="$(scripts/services.sh all)"
# works. It can also be sourced: `source scripts/services.sh [SUBCOMMAND]`
# runs the subcommand in a subshell (a failure does not kill your shell) and
# exports DATABASE_URL and REDIS_URL.
#
# Environment: PG_VERSION (15), PG_CLUSTER (main), PORTAL_BASE_IMAGE
# (portal-base:bookworm), DOCKERD_LOG (/var/log/dockerd.log).

_PORTAL_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_PORTAL_DATABASE_URL="postgres://portal:portal@127.0.0.1:5432/portal"
_PORTAL_REDIS_URL="redis://127.0.0.1:6379/0"

_say()  { printf '==> %s\n' "$*" >&2; }
_info() { printf '    %s\n' "$*" >&2; }
_die()  { printf 'error: %s\n' "$*" >&2; exit 1; }

_pg_version() { printf '%s' "${PG_VERSION:-15}"; }
_pg_cluster() { printf '%s' "${PG_CLUSTER:-main}"; }

# ---------------------------------------------------------------- install ---
_pkg_installed() {
  dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^ii'
}

portal_install() {
  _say "installing packages"
  [[ $(id -u) -eq 0 ]] || _die "must run as root"
  # package:command that proves it is usable
  local spec pkg cmd missing=()
  for spec in postgresql:pg_ctlcluster redis-server:redis-server \
              docker.io:dockerd debootstrap:debootstrap chromium:chromium; do
    pkg=${spec%%:*} cmd=${spec#*:}
    if _pkg_installed "$pkg" || command -v "$cmd" >/dev/null 2>&1; then
      _info "$pkg: already installed"
    else
      missing+=("$pkg")
    fi
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0

  _info "missing: ${missing[*]}"
  # Don't let maintainer scripts start daemons (no systemd here); `start`
  # does that. Only add a policy-rc.d if there is none, and remove only ours.
  local policy=/usr/sbin/policy-rc.d ours=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=1
  fi
  local rc=0
  {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq &&
      apt-get install -y -q -o Dpkg::Options::=--force-confold "${missing[@]}"
  } >&2 || rc=$?
  [[ $ours -eq 1 ]] && rm -f "$policy"
  [[ $rc -eq 0 ]] || _die "apt-get install failed ($rc)"
  _info "installed: ${missing[*]}"
}

# ------------------------------------------------------------------ start ---
_start_postgres() {
  local ver clu
  ver=$(_pg_version) clu=$(_pg_cluster)
  _say "starting postgresql $ver/$clu"
  command -v pg_ctlcluster >/dev/null || _die "postgresql not installed (run: scripts/services.sh install)"
  if [[ ! -d /etc/postgresql/$ver/$clu ]]; then
    _info "cluster missing: pg_createcluster $ver $clu"
    pg_createcluster "$ver" "$clu" >&2
  fi
  # status: 0 running, 3 not running, 4 no cluster/inaccessible
  if pg_ctlcluster "$ver" "$clu" status >/dev/null 2>&1; then
    _info "already running"
  else
    pg_ctlcluster "$ver" "$clu" start >&2
    _info "started"
  fi
  local i
  for ((i = 0; i < 30; i++)); do
    pg_isready -q -h 127.0.0.1 -p 5432 && return 0
    sleep 1
  done
  _die "postgresql not accepting connections on 127.0.0.1:5432 (see /var/log/postgresql/postgresql-$ver-$clu.log)"
}

_redis_ping() { [[ $(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null) == PONG ]]; }

_start_redis() {
  _say "starting redis"
  command -v redis-server >/dev/null || _die "redis-server not installed (run: scripts/services.sh install)"
  if _redis_ping; then
    _info "already running"
    return 0
  fi
  # Throw-away instance for tests: loopback only, no persistence, run as the
  # redis user when it exists (like the packaged init script).
  local logdir=/var/log/redis rundir=/run/redis
  mkdir -p "$logdir" "$rundir"
  local -a as_user=()
  if id redis >/dev/null 2>&1; then
    chown redis: "$logdir" "$rundir"
    as_user=(runuser -u redis --)
  fi
  "${as_user[@]}" redis-server --bind 127.0.0.1 --port 6379 --daemonize yes \
    --pidfile "$rundir/redis-portal.pid" --logfile "$logdir/redis-portal.log" \
    --dir /tmp --save '' --appendonly no >&2
  local i
  for ((i = 0; i < 20; i++)); do
    _redis_ping && { _info "started"; return 0; }
    sleep 0.5
  done
  _die "redis did not answer PING (see $logdir/redis-portal.log)"
}

_docker_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

_start_docker() {
  _say "starting dockerd"
  command -v dockerd >/dev/null || _die "dockerd not installed (run: scripts/services.sh install)"
  if _docker_up; then
    _info "already running"
    return 0
  fi
  local log="${DOCKERD_LOG:-/var/log/dockerd.log}" pid
  if pid=$(pgrep -x dockerd | head -n1) && [[ -n $pid ]]; then
    _info "dockerd (pid $pid) running but not answering yet; waiting"
  else
    # A stale pid file from a dead daemon makes dockerd refuse to start.
    if [[ -f /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
      rm -f /var/run/docker.pid
    fi
    mkdir -p "$(dirname "$log")"
    # setsid: own session, so it survives this script and its process group.
    setsid dockerd >>"$log" 2>&1 </dev/null &
    _info "launched (log: $log)"
  fi
  local i
  for ((i = 0; i < 60; i++)); do
    if [[ -S /var/run/docker.sock ]] && _docker_up; then
      _info "ready after ${i}s"
      return 0
    fi
    sleep 1
  done
  tail -n 20 "$log" >&2 || true
  _die "dockerd not ready after 60s (see $log)"
}

portal_start() {
  [[ $(id -u) -eq 0 ]] || _die "must run as root"
  _start_postgres
  _start_redis
  _start_docker
}

# --------------------------------------------------------------------- db ---
_psql_admin() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -tA "$@"; }

portal_db() {
  _say "database portal"
  [[ $(id -u) -eq 0 ]] || _die "must run as root"
  pg_isready -q -h 127.0.0.1 -p 5432 || _die "postgresql is not running (run: scripts/services.sh start)"
  local attrs
  attrs=$(cd / && _psql_admin -c "SELECT rolcanlogin AND rolcreatedb FROM pg_roles WHERE rolname = 'portal'")
  if [[ -z $attrs ]]; then
    (cd / && _psql_admin -c "CREATE ROLE portal LOGIN CREATEDB PASSWORD 'portal'")
    _info "role portal created"
  elif [[ $attrs != t ]]; then
    (cd / && _psql_admin -c "ALTER ROLE portal LOGIN CREATEDB")
    _info "role portal: granted LOGIN CREATEDB"
  else
    _info "role portal: exists"
  fi
  if [[ -z $(cd / && _psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'portal'") ]]; then
    (cd / && runuser -u postgres -- createdb -O portal portal)
    _info "database portal created"
  else
    _info "database portal: exists"
  fi
  # Password auth over TCP (scram-sha-256 in Debian's pg_hba.conf).
  if ! PGCONNECT_TIMEOUT=5 psql -X -q -tA "$_PORTAL_DATABASE_URL" -c 'SELECT 1' >/dev/null 2>&1; then
    (cd / && _psql_admin -c "ALTER ROLE portal PASSWORD 'portal'")
    _info "role portal: password reset"
    PGCONNECT_TIMEOUT=5 psql -X -q -tA "$_PORTAL_DATABASE_URL" -c 'SELECT 1' >/dev/null \
      || _die "cannot connect to $_PORTAL_DATABASE_URL"
  fi
  printf '%s\n' "$_PORTAL_DATABASE_URL"
}

# ------------------------------------------------------------- base-image ---
portal_base_image() {
  bash "$_PORTAL_SCRIPTS_DIR/build-base-image.sh" "$@" >&2
}

# ------------------------------------------------------------------- main ---
_portal_usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; }

_portal_main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    install) portal_install ;;
    start) portal_start ;;
    db) portal_db ;;
    base-image) portal_base_image "$@" ;;
    all)
      local t0=$SECONDS url
      portal_install
      portal_start
      url=$(portal_db)
      portal_base_image
      _say "ready in $((SECONDS - t0))s"
      printf '%s\n' "$url"
      ;;
    -h|--help|help) _portal_usage ;;
    *) _portal_usage; return 2 ;;
  esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  shopt -s inherit_errexit  # keep set -e inside $(...)
  _portal_main "$@"
else
  # Sourced: never leak `set -e` into the caller's shell.
  if [[ $# -gt 0 ]]; then
    (set -euo pipefail; shopt -s inherit_errexit; _portal_main "$@") >/dev/null || return
  fi
  export DATABASE_URL="$_PORTAL_DATABASE_URL" REDIS_URL="$_PORTAL_REDIS_URL"
fi

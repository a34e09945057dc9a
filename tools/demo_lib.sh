# shellcheck shell=bash
# Shared by the demos: paths, preflight checks and stopping a daemon.
# Source it after setting DEMO (the name used in messages).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=$ROOT/.venv/bin/python
CTL=$ROOT/.venv/bin/vswitchctl
# shellcheck disable=SC2034  # used by the scripts that source this file
START_DEADLINE_S=30
STOP_DEADLINE_S=10

die() { echo "$DEMO: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it creates network namespaces and TAP devices)"
command -v ping >/dev/null || die "ping not found; run 'make deps'"
{ [ -x "$PY" ] && [ -x "$CTL" ]; } || die "$ROOT/.venv is not built; run 'make build'"

# stop_daemon PID: SIGTERM, then SIGKILL if it is still there after the
# deadline; returns 1 if it had to be killed.
stop_daemon() {
    local pid=$1 deadline=$((SECONDS + STOP_DEADLINE_S))
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$DEMO: vswitchd (pid $pid) ignored SIGTERM for ${STOP_DEADLINE_S}s; killing it" >&2
        kill -KILL "$pid"
        wait "$pid" 2>/dev/null
        return 1
    fi
    wait "$pid" 2>/dev/null
    return 0
}

# shellcheck shell=bash
# Shared by the demos: paths, preflight checks, a scratch directory, namespaces
# and daemons that are removed on exit (passed, failed or interrupted), and
# starting vswitchd. Source it after setting DEMO (the name used in messages)
# and TMP_PREFIX (the scratch directory's name under /tmp); it sets `work`.

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

# on_exit COMMAND [ARGS...]: run it when the demo exits, last registered
# first (a daemon stops before the namespaces it holds TAPs in are deleted,
# and those before the scratch directory goes). A command that fails makes
# the demo fail, unless it ends in `|| true`.
_on_exit=()
on_exit() { _on_exit+=("$(printf '%q ' "$@")"); }

_demo_exit() {
    local rc=$? i
    set +e
    for ((i = ${#_on_exit[@]} - 1; i >= 0; i--)); do
        eval "${_on_exit[i]}" || rc=1
    done
    exit "$rc"
}
trap _demo_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

work=$(mktemp -d "/tmp/$TMP_PREFIX.XXXXXX")
on_exit rm -rf "$work"

# mkns NAME: a namespace with its loopback up, deleted on exit (with the TAP
# interfaces inside it, once the daemon holding them has stopped).
mkns() {
    ip netns add "$1"
    on_exit ip netns del "$1"
    ip -n "$1" link set lo up
}

# mkctr NAME: a container's namespace (IPv6 off, so no router solicitation or
# DAD traffic runs through the demo).
mkctr() {
    mkns "$1"
    ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
}

# port_toml NAME NETNS NETWORK CIDR: a [[port]] table for a config.
port_toml() {
    printf '\n[[port]]\nname = "%s"\nnetns = "%s"\nnetwork = "%s"\nip = "%s"\n' "$1" "$2" "$3" "$4"
}

# start_vswitchd NAME CONFIG [NETNS]: run vswitchd with CONFIG (inside NETNS
# if given), its API socket at $work/NAME.sock, its log at $work/NAME.log and
# its state below $work; stopped on exit. Returns once its API answers (every
# configured port is attached by then), with its pid in daemon_pid.
start_vswitchd() {
    local name=$1 cfg=$2 ns=${3:-} deadline=$((SECONDS + START_DEADLINE_S))
    local sock=$work/$name.sock log=$work/$name.log
    local -a run=()
    [ -z "$ns" ] || run=(ip netns exec "$ns")
    (cd "$ROOT" && exec "${run[@]}" "$PY" -m vswitch --config "$cfg" --api-socket "$sock" \
        --state-dir "$work/$name-state" --metrics 127.0.0.1:0 >"$log" 2>&1) &
    daemon_pid=$!
    on_exit stop_daemon "$daemon_pid"
    until "$CTL" --socket "$sock" network list >/dev/null 2>&1; do
        if ! kill -0 "$daemon_pid" 2>/dev/null; then
            tail -n 30 "$log" >&2
            die "vswitchd $name exited before its API answered"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$log" >&2
            die "vswitchd $name did not answer on $sock within ${START_DEADLINE_S}s"
        fi
        sleep 0.1
    done
}

# start_overlay_host I EXTRA_TOML: host I of an overlay demo, whose namespace
# is `host I` (a function of the demo's): vswitchd with VTEP 192.0.2.I,
# network "blue" as VNI 100, EXTRA_TOML, and a port for each entry
# "HOST NAME CIDR" of the demo's `containers` on host I (its namespace `ctr NAME`).
start_overlay_host() {
    local i=$1 extra=$2 cfg=$work/h$1.toml c h name addr
    printf '[switch]\nvtep_ip = "192.0.2.%s"\n\n[[network]]\nname = "blue"\nvni = 100\n\n%s\n' "$i" "$extra" >"$cfg"
    for c in "${containers[@]}"; do
        read -r h name addr <<<"$c"
        [ "$h" = "$i" ] || continue
        port_toml "$name" "$(ctr "$name")" blue "$addr" >>"$cfg"
    done
    start_vswitchd "h$i" "$cfg" "$(host "$i")"
}

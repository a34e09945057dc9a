#!/usr/bin/env bash
# Demo: three containers on network "blue" reach each other through vswitchd;
# a fourth on network "red", with an address in the same subnet, cannot reach
# them because frames never cross networks.
#
# Containers are plain network namespaces. Everything the demo creates
# (namespaces, the TAP interfaces inside them, the daemon, a temp dir) is
# removed on exit, whether the demo passed or not. Exits non-zero when a ping
# did not do what it should.
set -euo pipefail

DEMO=demo
TMP_PREFIX=vsdemo
# shellcheck source=tools/demo_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/demo_lib.sh"

log=$work/vswitchd.log

show_log() {
    echo "---- last lines of the vswitchd log ----" >&2
    tail -n 40 "$log" >&2 || true
}

# Four containers: name, network, MAC, address. r1 shares blue's subnet on
# purpose: only the switch keeps it apart.
containers=(
    "c1 blue 02:00:00:00:00:01 10.10.0.1/24"
    "c2 blue 02:00:00:00:00:02 10.10.0.2/24"
    "c3 blue 02:00:00:00:00:03 10.10.0.3/24"
    "r1 red  02:00:00:00:00:04 10.10.0.4/24"
)
netns_of() { echo "vsdemo-$1-$$"; }

cfg=$work/vswitchd.toml
cat >"$cfg" <<EOF
[switch]
mac_aging_s = 300

[[network]]
name = "blue"

[[network]]
name = "red"
EOF

for entry in "${containers[@]}"; do
    read -r name network mac cidr <<<"$entry"
    ns=$(netns_of "$name")
    mkns "$ns"
    cat >>"$cfg" <<EOF

[[port]]
name = "$name"
netns = "$ns"
network = "$network"
ifname = "eth0"
mac = "$mac"
ip = "$cidr"
EOF
done

echo "== config ($cfg)"
cat "$cfg"
echo

start_vswitchd vswitchd "$cfg"
sock=$work/vswitchd.sock
echo "== vswitchd started (pid $daemon_pid)"

ctl() { "$CTL" --socket "$sock" "$@"; }

deadline=$((SECONDS + START_DEADLINE_S))
# A port is ready when its interface has its address and a carrier (the
# daemon holds the TAP's fd).
for entry in "${containers[@]}"; do
    read -r name _ _ cidr <<<"$entry"
    ns=$(netns_of "$name")
    until ip -n "$ns" -o addr show dev eth0 2>/dev/null | grep -qF " $cidr " \
        && ip -n "$ns" -o link show dev eth0 2>/dev/null | grep -q LOWER_UP; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_log
            die "port $name: eth0 in $ns did not come up with $cidr within ${START_DEADLINE_S}s"
        fi
        sleep 0.1
    done
done

echo "== vswitchctl show"
ctl show
echo

failures=0

# expect_ping FROM TO_ADDR replies|isolated
expect_ping() {
    local from=$1 addr=$2 expect=$3 got=isolated
    echo "== ping from $from to $addr (expect: $expect)"
    if ip netns exec "$(netns_of "$from")" ping -c 3 -W 1 "$addr"; then got=replies; fi
    if [ "$got" = "$expect" ]; then
        echo "ok: $got, as expected"
    else
        echo "FAIL: $from -> $addr: expected $expect, got $got" >&2
        failures=$((failures + 1))
    fi
    echo
}

expect_ping c1 10.10.0.2 replies
expect_ping c1 10.10.0.3 replies
expect_ping c1 10.10.0.4 isolated

for cmd in "fdb show" "port list" "stats"; do
    echo "== vswitchctl $cmd"
    # shellcheck disable=SC2086  # split the verb and its subcommand
    ctl $cmd || { echo "FAIL: vswitchctl $cmd" >&2; failures=$((failures + 1)); }
    echo
done

if [ "$failures" -ne 0 ]; then
    show_log
    die "$failures check(s) failed"
fi
echo "demo: all checks passed"

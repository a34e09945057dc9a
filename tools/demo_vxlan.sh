#!/usr/bin/env bash
# Demo: one network spread over two hosts with VXLAN. Each "host" is a network
# namespace running its own vswitchd, with its underlay interface on a veth
# pair (192.0.2.1 <-> 192.0.2.2, MTU 1500); each has two containers on network
# "blue" (VNI 100). Containers ping across hosts; each switch's FDB shows the
# remote MACs learned behind the other VTEP.
#
# Everything the demo creates is removed on exit, whether it passed or not.
# Exits non-zero when a ping across the tunnel fails.
set -euo pipefail

DEMO=demo-vxlan
TMP_PREFIX=vsvxdemo
# shellcheck source=tools/demo_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/demo_lib.sh"

tag=$$
host() { echo "vsvx-h$1-$tag"; }
ctr() { echo "vsvx-$1-$tag"; }

# The underlay: two host namespaces joined by a veth pair.
mkns "$(host 1)"; mkns "$(host 2)"
ip link add "ul1-$tag" type veth peer name "ul2-$tag"
for i in 1 2; do
    ip link set "ul$i-$tag" netns "$(host $i)"
    ip -n "$(host $i)" addr add "192.0.2.$i/24" dev "ul$i-$tag"
    ip -n "$(host $i)" link set "ul$i-$tag" up
done

# Containers: host, name, address.
containers=("1 a1 10.20.0.1/24" "1 a2 10.20.0.2/24" "2 b1 10.20.0.3/24" "2 b2 10.20.0.4/24")
for c in "${containers[@]}"; do
    read -r _ name _ <<<"$c"
    mkctr "$(ctr "$name")"
done

for i in 1 2; do
    start_overlay_host "$i" "[[peer]]
network = \"blue\"
remote = \"192.0.2.$((3 - i))\""
done
echo "== two hosts up: vswitchd on 192.0.2.1 and 192.0.2.2, network blue = VNI 100"

failed=0
for pair in "a1 10.20.0.3" "a2 10.20.0.4" "b1 10.20.0.2" "a1 10.20.0.2"; do
    read -r from to <<<"$pair"
    if ip netns exec "$(ctr "$from")" ping -c 3 -i 0.2 -W 1 -q "$to" >/dev/null; then
        echo "ping $from -> $to: ok"
    else
        echo "ping $from -> $to: FAILED"; failed=1
    fi
done

for i in 1 2; do
    echo
    echo "== host $i (192.0.2.$i): vswitchctl show"
    "$CTL" --socket "$work/h$i.sock" show
    echo
    echo "== host $i: vswitchctl fdb show (remote MACs sit behind the peer)"
    "$CTL" --socket "$work/h$i.sock" fdb show
done

[ "$failed" -eq 0 ] || { tail -n 30 "$work/h1.log" >&2; die "a ping across the tunnel failed"; }
echo
echo "demo-vxlan: containers on two hosts talk over VXLAN"

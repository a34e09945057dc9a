#!/usr/bin/env bash
# Demo: three hosts on one overlay kept in a 3-member etcd cluster. Each
# "host" is a network namespace running its own vswitchd joined to etcd, with
# its underlay interface on a bridge (192.0.2.1-3/24); etcd's three members
# listen on the bridge's address (192.0.2.254) in the underlay namespace. No
# host is told about another: peers and remote MACs come from etcd, so every
# FDB holds the other hosts' containers before the first ping. Then the etcd
# leader is killed mid-demo: pings go on, and a container added afterwards
# still reaches every host.
#
# Everything the demo creates is removed on exit, whether it passed or not.
# Exits non-zero when a ping fails or the cluster does not converge.
set -euo pipefail

DEMO=demo-cluster
TMP_PREFIX=vsclusterdemo
# shellcheck source=tools/demo_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/demo_lib.sh"
command -v etcd >/dev/null && command -v etcdctl >/dev/null || die "etcd not found; run 'make deps'"

tag=$$
etcd_pids=()
# kill_etcd PID: a member is killed outright, once the daemons have stopped
# (on_exit runs backwards) and revoked their leases.
kill_etcd() { kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null; return 0; }
host() { echo "vscl-h$1-$tag"; }
ctr() { echo "vscl-$1-$tag"; }
UNDERLAY=vscl-ul-$tag
ETCD_IP=192.0.2.254

# The underlay: a bridge in its own namespace, one veth to each host.
mkns "$UNDERLAY"
ip -n "$UNDERLAY" link add br0 type bridge stp_state 0
ip -n "$UNDERLAY" addr add "$ETCD_IP/24" dev br0
ip -n "$UNDERLAY" link set br0 up
for i in 1 2 3; do
    mkns "$(host $i)"
    ip link add "vsclu$i-$tag" type veth peer name ul0 netns "$(host $i)"
    ip link set "vsclu$i-$tag" netns "$UNDERLAY"
    ip -n "$UNDERLAY" link set "vsclu$i-$tag" master br0 up
    ip -n "$(host $i)" addr add "192.0.2.$i/24" dev ul0
    ip -n "$(host $i)" link set ul0 up
done

# etcd: three members on the underlay bridge's address.
members=(1 2 3)
initial=""
for m in "${members[@]}"; do initial+="${initial:+,}m$m=http://$ETCD_IP:$((23781 + 10 * m))"; done
endpoints=""
for m in "${members[@]}"; do endpoints+="${endpoints:+,}http://$ETCD_IP:$((23780 + 10 * m))"; done
for m in "${members[@]}"; do
    c=$((23780 + 10 * m)) p=$((23781 + 10 * m))
    ip netns exec "$UNDERLAY" etcd --name "m$m" --data-dir "$work/etcd-m$m" \
        --listen-client-urls "http://$ETCD_IP:$c" --advertise-client-urls "http://$ETCD_IP:$c" \
        --listen-peer-urls "http://$ETCD_IP:$p" --initial-advertise-peer-urls "http://$ETCD_IP:$p" \
        --initial-cluster "$initial" --initial-cluster-token "vscl-$tag" --initial-cluster-state new \
        --heartbeat-interval 50 --election-timeout 500 --logger zap --log-outputs "$work/etcd-m$m.log" &
    etcd_pids+=($!)
    on_exit kill_etcd "$!"
done
etcdctl_() { ip netns exec "$UNDERLAY" env ETCDCTL_API=3 etcdctl --command-timeout=1s "$@"; }
deadline=$((SECONDS + START_DEADLINE_S))
until etcdctl_ --endpoints="$endpoints" endpoint health >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "etcd did not become healthy"
    sleep 0.2
done
echo "== etcd: 3 members on $ETCD_IP, healthy"

# Containers: host, name, address.
containers=("1 a1 10.30.0.1/24" "2 b1 10.30.0.2/24" "3 c1 10.30.0.3/24")
for c in "${containers[@]}"; do
    read -r _ name _ <<<"$c"
    mkctr "$(ctr "$name")"
done
# b2 joins host 2 later, through the API. Its namespace is made now, so that on
# exit it goes after the daemons, as every namespace holding a TAP must.
mkctr "$(ctr b2)"

for i in 1 2 3; do
    start_overlay_host "$i" "[cluster]
etcd = [\"${endpoints//,/\", \"}\"]
node = \"h$i\"
lease_ttl_s = 5"
done

ctl() { local i=$1; shift; "$CTL" --socket "$work/h$i.sock" "$@"; }
# wait_remote_macs N: every host holds N remote MACs from etcd.
wait_remote_macs() {
    local want=$1 i deadline=$((SECONDS + START_DEADLINE_S))
    for i in 1 2 3; do
        until [ "$(ctl "$i" --json cluster 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["derived"]["remote_macs"])' 2>/dev/null)" = "$want" ]; do
            [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$work/h$i.log" >&2; die "host $i never held $want remote MACs"; }
            sleep 0.1
        done
    done
}
wait_remote_macs 2
echo "== three hosts joined; no [[peer]] anywhere, and no frame sent yet"
echo
echo "== host 1: vswitchctl cluster"
ctl 1 cluster
echo
echo "== host 1: vswitchctl fdb show (filled from etcd ahead of any traffic)"
ctl 1 fdb show

failed=0
ping_() {
    local from=$1 to=$2
    if ip netns exec "$(ctr "$from")" ping -c 3 -i 0.2 -W 1 -q "$to" >/dev/null; then
        echo "ping $from -> $to: ok"
    else
        echo "ping $from -> $to: FAILED"; failed=1
    fi
}
echo
for pair in "a1 10.30.0.2" "b1 10.30.0.3" "c1 10.30.0.1"; do ping_ $pair; done
echo
echo "== host 1: ARP for cluster IPs answered by the local switch (never flooded to the underlay)"
ctl 1 trace --in-port a1 --resolve 10.30.0.3
ctl 1 --json stats | "$PY" -c '
import json, sys
ports = json.load(sys.stdin)["ports"]
for name, c in ports.items():
    print("port " + name + ": arp_suppressed " + str(c["arp_suppressed"]) + ", flooded " + str(c["flooded"]))'

leader=$(etcdctl_ --endpoints="$endpoints" endpoint status -w json | "$PY" -c '
import json, sys
for e in json.load(sys.stdin):
    if e["Status"]["leader"] == e["Status"]["header"]["member_id"]:
        print(e["Endpoint"])')
m=$(( (${leader##*:} - 23780) / 10 ))
echo
echo "== killing the etcd leader (member m$m, $leader)"
kill -KILL "${etcd_pids[$((m - 1))]}"; wait "${etcd_pids[$((m - 1))]}" 2>/dev/null || true

for pair in "a1 10.30.0.3" "c1 10.30.0.2"; do ping_ $pair; done
ctl 2 port add b2 --network blue --netns "$(ctr b2)" --ip 10.30.0.4/24 >/dev/null
echo "container b2 added on host 2 with one etcd member down"
# Hosts 1 and 3 now hold 3 remote MACs; host 2 still 2 (b2 is local there).
deadline=$((SECONDS + START_DEADLINE_S))
for i in 1 3; do
    until [ "$(ctl "$i" --json cluster | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["derived"]["remote_macs"])')" = 3 ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "host $i never learned b2 from etcd"
        sleep 0.1
    done
done
for pair in "a1 10.30.0.4" "c1 10.30.0.4"; do ping_ $pair; done
echo
echo "== host 3: vswitchctl cluster (two members of three answer)"
ctl 3 cluster

[ "$failed" -eq 0 ] || { tail -n 30 "$work/h1.log" >&2; die "a ping failed"; }
echo
echo "demo-cluster: three hosts on one overlay from etcd, and an etcd member lost without a stop"

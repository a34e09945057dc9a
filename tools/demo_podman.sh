#!/usr/bin/env bash
# Demo: podman attaches two busybox containers to a vswitch network through the
# vswitch CNI plugin. They ping each other and the network's gateway (a host
# port of vswitchd's), `vswitchctl port list` shows the ports the plugin made,
# and `podman rm` takes them away again.
#
# Nothing global is used or left: vswitchd and podman run inside a namespace
# of the demo's ("the host"), podman has a private store and config under a
# temp dir, and the image is made from the machine's busybox (no registry).
# Exits non-zero when a ping fails or a port outlives its container.
set -euo pipefail

DEMO=demo-podman
TMP_PREFIX=vspod   # short: conmon's socket paths live below it
# shellcheck source=tools/demo_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/demo_lib.sh"
for tool in podman crun conmon busybox nsenter unshare; do
    command -v "$tool" >/dev/null || [ -x "/usr/libexec/podman/$tool" ] || die "$tool not found; run 'make deps'"
done

host=vspod-host-$$
sock=$work/vswitchd.sock
net=vsdemo
image=localhost/vswitch-busybox:demo

pm() {
    nsenter --net="/run/netns/$host" podman --root "$work/root" --runroot "$work/runroot" --tmpdir "$work/tmp" "$@"
}

# What podman mounted below the scratch directory goes before it does.
unmount_work() { grep -o " $work[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null; return 0; }
remove_containers() { if [ -d "$work/root" ]; then pm rm -a -f -t 0 >/dev/null 2>&1; fi; return 0; }
on_exit unmount_work

vswitchctl() { "$CTL" --socket "$sock" "$@"; }
# Shows a command as one would type it (pm is podman with the demo's private store), then runs it.
run() { local shown="$*"; echo "\$ ${shown/#pm /podman }"; "$@"; }

# ---- the host namespace and vswitchd in it (the gateway's TAP and the
# masquerade table live in that namespace: they go with it)
mkns "$host"
: >"$work/vswitchd.toml"
start_vswitchd vswitchd "$work/vswitchd.toml" "$host"
on_exit remove_containers

# ---- a private podman (this machine's needs: see the README's Containers (CNI) section)
mkdir -p "$work"/{cni,cniplug,tmp,xdg,bin,rootfs/{bin,etc,tmp,proc,sys,dev}}
cat >"$work/bin/crun" <<'WRAP'
#!/bin/sh
exec unshare -m --propagation private sh -c 'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec /usr/bin/crun "$@"' crun "$@"
WRAP
chmod +x "$work/bin/crun"
cat >"$work/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
cgroups = "disabled"
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$work/tmp/events.log"
lock_type = "file"
tmp_dir = "$work/tmp"
runtime = "crun"
[engine.runtimes]
crun = ["$work/bin/crun"]
[network]
network_backend = "cni"
network_config_dir = "$work/cni"
cni_plugin_dirs = ["$work/cniplug", "/usr/lib/cni"]
default_network = "$net"
CONF
printf '[storage]\ndriver = "vfs"\ngraphroot = "%s/root"\nrunroot = "%s/runroot"\n' "$work" "$work" >"$work/storage.conf"
export CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage.conf XDG_RUNTIME_DIR=$work/xdg

# ---- the plugin, as make install-cni installs it, and the network's config
sh "$ROOT/tools/install-cni.sh" "$work/cniplug" >/dev/null
cat >"$work/cni/$net.conflist" <<CONF
{
  "cniVersion": "1.0.0",
  "name": "$net",
  "plugins": [
    {"type": "vswitch", "socket": "$sock", "mtu": 1400, "gateway": true, "ipMasq": true,
     "ipam": {"type": "host-local", "subnet": "10.88.5.0/24", "dataDir": "$work/ipam"}}
  ]
}
CONF
echo "network config ($work/cni/$net.conflist):"
cat "$work/cni/$net.conflist"

# ---- an image from the machine's busybox (and the libraries it is linked with)
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
for lib in $(ldd "$(command -v busybox)" | grep -o '/[^ ]*'); do
    mkdir -p "$work/rootfs$(dirname "$lib")"; cp "$lib" "$work/rootfs$lib"
done
for applet in $(busybox --list); do [ "$applet" = busybox ] || ln -s busybox "$work/rootfs/bin/$applet"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$work/rootfs/etc/passwd"
tar -C "$work/rootfs" -c . | pm import -q - "$image" >/dev/null

failed=0
echo
run pm run -d --name c1 "$image" sleep 600
run pm run -d --name c2 "$image" sleep 600
run pm exec c2 ip -4 -o addr show eth0
ip2=$(pm exec c2 ip -4 -o addr show eth0 | grep -o '10\.88\.5\.[0-9]*')
run vswitchctl port list
echo
run pm exec c1 ping -c 3 -W 5 "$ip2" || failed=1
run pm exec c1 ping -c 3 -W 5 10.88.5.1 || failed=1
echo
run pm rm -f -t 0 c1 c2
run vswitchctl port list
left=$(vswitchctl --json port list | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)))')
if [ "$left" != 0 ]; then echo "$DEMO: $left ports outlived their containers" >&2; failed=1; fi
if [ "$failed" -ne 0 ]; then
    echo "---- last lines of the vswitchd log ----" >&2; tail -n 40 "$work/vswitchd.log" >&2
    exit 1
fi
echo
echo "$DEMO: containers attached through the CNI plugin, pinged each other and the gateway, and were detached"

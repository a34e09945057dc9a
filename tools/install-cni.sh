#!/bin/sh
# Installs the vswitch CNI plugin into a CNI bin dir as an executable named
# `vswitch` (the plugin type runtimes look for) that runs this checkout's
# vswitch-cni. Usage: tools/install-cni.sh [DIR]   (default /opt/cni/bin)
set -eu
dir=${1:-/opt/cni/bin}
root=$(cd "$(dirname "$0")/.." && pwd)
exe=$root/.venv/bin/vswitch-cni
[ -x "$exe" ] || { echo "install-cni: $exe is missing; run 'make build' first" >&2; exit 1; }
case $exe in *\'*) echo "install-cni: the checkout's path holds a quote: $exe" >&2; exit 1 ;; esac
mkdir -p "$dir"
# Written beside the target and renamed over it: a runtime never runs half a file.
tmp=$(mktemp "$dir/.vswitch.XXXXXX")
trap 'rm -f "$tmp"' EXIT
printf "#!/bin/sh\n# vswitch CNI plugin (installed by make install-cni)\nexec '%s' \"\$@\"\n" "$exe" >"$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$dir/vswitch"
trap - EXIT
echo "installed $dir/vswitch (runs $exe)"

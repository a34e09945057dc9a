"""How long a CNI ADD and DEL take through vswitch, beside Linux's bridge plugin.

    .venv/bin/python bench/cni.py [--attachments N] [--json OUT]     (as root)

Both plugins attach the same kind of container (an empty network namespace)
the way a runtime does: one exec of the plugin with CNI_* variables and the
network config on stdin, in the runtime's ("host") namespace, with Debian's
host-local for addresses and a gateway on the network (vswitch: a host port
of vswitchd's; bridge: isGateway). vswitch is run as `make install-cni`
installs it. The two alternate attachment by attachment, so the machine's
slow spells fall on both; every attachment is timed from exec to exit, and
the medians (and 90th percentiles) over N attachments are reported. Each
exec goes through `nsenter --net=HOST`: its own cost is measured alone
(nsenter running /bin/true) and shown beside, not subtracted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab import ROOT, BenchError, Lab, interrupt_on_signals, run
from topologies import start_vswitchd

ATTACHMENTS = 50
CNI_VERSION = "1.0.0"


def timed(argv: list[str], stdin: bytes, env: dict[str, str]) -> tuple[float, bytes]:
    """Wall-clock ms of one exec, and its stdout; BenchError when it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=60)
    ms = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} ({env.get('CNI_COMMAND')}): exit {proc.returncode}: "
                         f"{proc.stdout.decode(errors='replace')[:300]} {proc.stderr.decode(errors='replace')[:300]}")
    return ms, proc.stdout


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": round(statistics.median(ordered), 2),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], 2),
            "min_ms": round(ordered[0], 2), "n": len(ordered)}


def measure(attachments: int) -> dict[str, Any]:
    with Lab("cni") as lab:
        host = lab.netns("host")
        _proc, sock = start_vswitchd(lab, "vswitchd", "", host=host)
        bindir = lab.dir / "cnibin"
        run(["sh", str(ROOT / "tools" / "install-cni.sh"), str(bindir)])
        cni_path = f"{bindir}:/usr/lib/cni"
        confs = {
            "vswitch": {"cniVersion": CNI_VERSION, "name": "vsbench", "type": "vswitch", "socket": str(sock),
                        "gateway": True,
                        "ipam": {"type": "host-local", "subnet": "10.91.0.0/16", "dataDir": str(lab.dir / "ipam")}},
            "bridge": {"cniVersion": CNI_VERSION, "name": "brbench", "type": "bridge", "bridge": "vsbbr0",
                       "isGateway": True,
                       "ipam": {"type": "host-local", "subnet": "10.92.0.0/16", "dataDir": str(lab.dir / "ipam")}},
        }
        plugins = {"vswitch": str(bindir / "vswitch"), "bridge": "/usr/lib/cni/bridge"}
        enter = ["nsenter", f"--net=/run/netns/{host.name}"]
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        containers = [lab.netns(f"c{i}") for i in range(attachments)]
        times: dict[str, dict[str, list[float]]] = {p: {"ADD": [], "DEL": []} for p in plugins}
        nsenter_ms = [timed([*enter, "/bin/true"], b"", base_env)[0] for _ in range(attachments)]
        for command in ("ADD", "DEL"):
            for i, ns in enumerate(containers):
                for plugin in plugins:
                    env = {**base_env, "CNI_COMMAND": command, "CNI_CONTAINERID": f"bench{i:04d}{plugin}",
                           "CNI_NETNS": f"/run/netns/{ns.name}", "CNI_IFNAME": "eth0" if plugin == "vswitch" else "eth1",
                           "CNI_PATH": cni_path}
                    ms, out = timed([*enter, plugins[plugin]], json.dumps(confs[plugin]).encode(), env)
                    if command == "ADD" and not json.loads(out).get("ips"):
                        raise BenchError(f"{plugin} ADD gave no address: {out[:300]!r}")
                    times[plugin][command].append(ms)
    result: dict[str, Any] = {
        "what": "CNI ADD and DEL wall time per attachment (exec to exit), host-local IPAM, gateway on",
        "attachments": attachments,
        "cni_version": CNI_VERSION,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "nsenter_true": summary(nsenter_ms),
    }
    for plugin, by_command in times.items():
        result[plugin] = {command.lower(): summary(values) for command, values in by_command.items()}
    for command in ("add", "del"):
        result[f"{command}_ratio_vswitch_to_bridge"] = round(
            result["vswitch"][command]["median_ms"] / result["bridge"][command]["median_ms"], 2)
    return result


def render(r: dict[str, Any]) -> str:
    lines = [f"CNI {r['cni_version']}, {r['attachments']} attachments each, host-local IPAM, gateway on",
             f"{'plugin':8} {'ADD median':>11} {'ADD p90':>9} {'DEL median':>11} {'DEL p90':>9}"]
    for plugin in ("vswitch", "bridge"):
        a, d = r[plugin]["add"], r[plugin]["del"]
        lines.append(f"{plugin:8} {a['median_ms']:>9.1f}ms {a['p90_ms']:>7.1f}ms {d['median_ms']:>9.1f}ms {d['p90_ms']:>7.1f}ms")
    lines.append(f"vswitch/bridge: ADD {r['add_ratio_vswitch_to_bridge']}x, DEL {r['del_ratio_vswitch_to_bridge']}x; "
                 f"of each, nsenter alone takes {r['nsenter_true']['median_ms']:.1f}ms (median)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attachments", type=int, default=ATTACHMENTS)
    parser.add_argument("--json", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/cni.py must run as root", file=sys.stderr)
        return 1
    interrupt_on_signals()
    try:
        result = measure(args.attachments)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    print(render(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

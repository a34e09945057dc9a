"""vswitchctl: drive a running vswitchd through its control API.

Commands are declared once in COMMANDS (words, arguments, help, API call and
human rendering); the argument parser and the ``--help`` listing are built from
that table, so a new command is one entry.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import sys
import tomllib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence
from urllib.parse import quote, urlencode

import tomli_w

from vswitch import __version__
from vswitch.client import DEFAULT_SOCKET, ApiError, Client

PROG = "vswitchctl"
TOP_COUNTERS = 10


# --- output ---------------------------------------------------------------


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        # Pairs such as histogram buckets read as "bound:count".
        return " ".join(":".join(cell(v) for v in item) if isinstance(item, (list, tuple)) else cell(item) for item in value) or "-"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "") -> str:
    """Left-aligned columns, two spaces apart; None shows as '-'."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join(indent + "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: {"loop": {"rx": 1}} -> {"loop.rx": 1}."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def render_networks(networks: list[dict[str, Any]], indent: str = "") -> str:
    rows = [(n["name"], n.get("vni"), n.get("ports"), n.get("peers")) for n in networks]
    return table(("NAME", "VNI", "PORTS", "PEERS"), rows, indent)


def trunk_text(port: dict[str, Any]) -> str | None:
    """A trunk port's networks as 'blue:10,red:20' (tagged), with '+green' for its native one."""
    if port.get("trunk") is None:
        return None
    text = ",".join(f"{net}:{vid}" for net, vid in sorted(port["trunk"].items(), key=lambda item: item[1]))
    return text + (f"+{port['native']}" if port.get("native") else "")


def render_ports(ports: list[dict[str, Any]], indent: str = "") -> str:
    def netns(p: dict[str, Any]) -> Any:
        return "(host)" if p.get("host") else p.get("netns")

    def network(p: dict[str, Any]) -> Any:
        return p.get("network") if p.get("trunk") is None else f"trunk {trunk_text(p)}"

    rows = [[p["name"], network(p), netns(p), p.get("ifname"), p.get("mac"), p.get("ips") or p.get("ip"), p.get("mtu"),
             p.get("state")] for p in ports]
    for row, p in zip(rows, ports):
        row.append("on" if (p.get("policy") or {}).get("port_security") else "off")
    headers = ["NAME", "NETWORK", "NETNS", "IFNAME", "MAC", "IP", "MTU", "STATE", "SECURITY"]
    # Labels get a column only when a port has some: most ports made by hand have none.
    if any(p.get("labels") for p in ports):
        headers.append("LABELS")
        for row, p in zip(rows, ports):
            row.append([f"{k}={v}" for k, v in sorted((p.get("labels") or {}).items())])
    return table(headers, rows, indent)


def render_port(port: dict[str, Any]) -> str:
    """One port, one field a line (counters summed by group as in stats)."""
    routes = [f"{r['dst']} via {r['gw']}" if r.get("gw") else f"{r['dst']} on-link" for r in port.get("routes") or []]
    lines = [(k, port.get(k)) for k in ("name", "network", "netns", "ifname", "mac", "mtu", "state", "host", "masquerade")]
    if port.get("trunk") is not None:
        lines[1:2] = [("trunk", ", ".join(f"{n} (VLAN {v})" for n, v in sorted(port["trunk"].items(), key=lambda i: i[1]))),
                      ("native", port.get("native") or "none (untagged frames are dropped)")]
    lines += [("ips", port.get("ips") or port.get("ip")), ("routes", ", ".join(routes) or None)]
    lines += [(f"label {k}", v) for k, v in sorted((port.get("labels") or {}).items())]
    pol = port.get("policy") or {}
    if pol:
        lines += [("port_security", "on" if pol.get("port_security") else "off"), ("allowed", pol.get("allowed") or None),
                  ("router", pol.get("router")), ("dhcp_server", pol.get("dhcp_server"))]
    lines += [(f"limit {k}", pol[k] or "none") for k in LIMIT_FIELDS if k in pol]
    if "macs" in port:
        lines.append(("macs learned", port["macs"]))
    usage = port.get("usage") or {}
    if usage:
        for way, what in (("rx", "from the port"), ("tx", "to the port")):
            lines.append((f"{way} now / peak", f"{_rate(usage.get(f'{way}_bps'), 'bit/s')}, {_rate(usage.get(f'{way}_fps'), 'frames/s')}"
                          f" / {_rate(usage.get(f'peak_{way}_bps'), 'bit/s')}, {_rate(usage.get(f'peak_{way}_fps'), 'frames/s')}"
                          f" ({what}, peak over {usage.get('window_s', 0):.0f} s)"))
    counters = port.get("counters") or {}
    for name in ("mac_limited", "paused"):
        if counters.get(name):
            lines.append((name, counters[name]))
    drops = {r: n for r, n in (counters.get("drops") or {}).items() if n}
    lines += [(f"drops {r}", n) for r, n in sorted(drops.items())]
    return table(("FIELD", "VALUE"), lines)


LIMIT_FIELDS = ("max_macs", "storm_broadcast", "storm_multicast", "storm_unknown_unicast", "rate_mbit", "burst_kb",
                "rate_fps")


def _rate(value: Any, unit: str) -> str:
    """1234567 -> '1.23 M' + unit: rates read at a glance."""
    v = float(value or 0)
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.2f} {prefix}{unit}"
    return f"{v:.0f} {unit}"


def render_peers(peers: list[dict[str, Any]], indent: str = "") -> str:
    if not peers:
        return table(("NETWORK", "REMOTE"), [], indent)
    return records_table([{"network": p["network"], "remote": p["remote"], **(p.get("counters") or {})} for p in peers], indent)


def render_fdb(entries: list[dict[str, Any]]) -> str:
    def where(e: dict[str, Any]) -> str:
        return f"port {e['port']}" if e.get("port") else f"peer {e.get('peer')}"

    def age(e: dict[str, Any]) -> str:
        return "-" if e.get("static") or e.get("pinned") or e.get("age_s") is None else f"{e['age_s']:.0f}s"

    rows = [(e["network"], e["mac"], where(e), "static" if e.get("static") else "pinned" if e.get("pinned") else "learned", age(e)) for e in entries]
    return table(("NETWORK", "MAC", "TO", "TYPE", "AGE"), rows)


def _total(value: Any) -> Any:
    """A counter, or the sum of a group of counters (e.g. drops by reason)."""
    return sum(_total(v) for v in value.values()) if isinstance(value, dict) else value


def records_table(records: list[dict[str, Any]], indent: str = "") -> str:
    """One row per record, one column per key (first-seen order); grouped counters show their sum."""
    names = list(dict.fromkeys(key for record in records for key in record))
    if not names:
        return ""
    return table([n.upper() for n in names], ([_total(r.get(n)) for n in names] for r in records), indent)


def render_stats(stats: dict[str, Any]) -> str:
    ports = [{"port": name, **counters} for name, counters in sorted((stats.get("ports") or {}).items())]
    parts = ["ports:", records_table(ports, "  ") or "  (none)"]
    for section in sorted(set(stats) - {"ports"}):
        if not isinstance(stats[section], dict):  # a setting such as io_mode: one line
            parts.append(f"{section}: {cell(stats[section])}")
            continue
        values = flatten(stats[section])
        # Lists of records (e.g. vxlan peers) get a table of their own.
        lists = {k: v for k, v in values.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)}
        scalars = sorted((k, v) for k, v in values.items() if k not in lists and not (isinstance(v, list) and not v))
        parts += [f"{section}:", table(("COUNTER", "VALUE"), scalars, "  ")]
        for key, records in lists.items():
            parts += [f"{section} {key}:", records_table(records, "  ")]
    return "\n".join(parts)


# Settings and gauges in the stats document, not counters: `show` reports
# the FDB's gauges on its own line.
NOT_COUNTERS = {"fdb.entries", "fdb.capacity", "vxlan.port"}


def top_counters(stats: dict[str, Any], n: int = TOP_COUNTERS) -> list[tuple[str, float]]:
    values = flatten(stats)
    for peer in (stats.get("vxlan") or {}).get("peers") or []:
        values.update(flatten({k: v for k, v in peer.items() if k not in ("network", "remote")}, f"peers.{peer.get('network')}/{peer.get('remote')}"))
    numbers = [
        (k, v) for k, v in values.items()
        if k not in NOT_COUNTERS and isinstance(v, (int, float)) and not isinstance(v, bool) and v
    ]
    return sorted(numbers, key=lambda kv: (-kv[1], kv[0]))[:n]


def cluster_line(doc: dict[str, Any]) -> str:
    etcd = doc["etcd"]
    state = "etcd reachable" if etcd["reachable"] else (
        f"etcd UNREACHABLE for {etcd['unreachable_for_s']} s, forwarding on the last known state")
    derived = doc.get("derived") or {}
    return (f"cluster: node {doc['node']}, {state}, {len(doc['nodes'])} nodes, "
            f"{derived.get('peers', 0)} peers, {derived.get('remote_macs', 0)} remote MACs and "
            f"{derived.get('neighbours', 0)} ARP/ND-answered addresses from etcd")


def render_cluster(doc: dict[str, Any]) -> str:
    rows = [(n["name"] + (" (self)" if n.get("self") else ""), n.get("vtep"), "alive" if n.get("alive") else "gone",
             n.get("lease_ttl_s"), n.get("lease_age_s"), ",".join(n.get("networks") or []), n.get("ports"))
            for n in doc["nodes"]]
    parts = [cluster_line(doc), f"etcd: {', '.join(doc['etcd']['endpoints'])} (using {doc['etcd'].get('using')})"]
    if doc["etcd"].get("last_error"):
        parts.append(f"last error: {doc['etcd']['last_error']}")
    parts += ["nodes" + (" (last known: etcd is unreachable)" if doc.get("stale") else "") + ":",
              table(("NODE", "VTEP", "STATE", "LEASE_TTL_S", "LEASE_AGE_S", "NETWORKS", "PORTS"), rows, "  ")]
    parts += ["networks:", table(("NETWORK", "VNI", "NODES"),
                                 [(n["name"], n.get("vni"), ",".join(n.get("nodes") or [])) for n in doc["networks"]], "  ")]
    for name, why in sorted((doc.get("conflicts") or {}).items()):
        parts.append(f"conflict: network {name}: {why}")
    return "\n".join(parts)


def render_show(doc: dict[str, Any]) -> str:
    fdb = doc["fdb"]
    return "\n".join(
        [
            f"io_mode: {doc['io_mode']}",
            *([cluster_line(doc["cluster"])] if doc.get("cluster") else []),
            f"networks ({len(doc['networks'])}):",
            render_networks(doc["networks"], "  "),
            f"ports ({len(doc['ports'])}):",
            render_ports(doc["ports"], "  "),
            f"peers ({len(doc['peers'])}):",
            render_peers(doc["peers"], "  "),
            f"fdb: {fdb['entries']} entries ({fdb['static']} static, {fdb['entries'] - fdb['static']} learned)"
            + (f", capacity {fdb['capacity']}" if fdb.get("capacity") is not None else ""),
            "top counters:",
            table(("COUNTER", "VALUE"), top_counters(doc["stats"]), "  "),
        ]
    )


def render_trace(doc: dict[str, Any]) -> str:
    out = doc["outputs"]
    if doc["action"] == "answer":
        return "\n".join([*doc["steps"], f"verdict: answered locally ({doc['resolve']} is {doc['answer']['mac']})"])
    if doc["action"] == "drop":
        verdict = f"drop ({doc['reason']})"
    else:
        where = [f"ports {', '.join(out['ports'])}"] if out["ports"] else []
        where += [f"peers {', '.join(out['peers'])}"] if out["peers"] else []
        verdict = f"{doc['action']} to {' and '.join(where)}" if where else f"{doc['action']} to nowhere (no other port is up)"
    return "\n".join([*doc["steps"], f"verdict: {verdict}"])


# --- apply and export -------------------------------------------------------

APPLY_TIMEOUT_S = 600.0  # a config of many ports takes a while to build


def read_config_file(path: str) -> dict[str, Any]:
    """A TOML config file as the document the API takes; one-line errors naming the file."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ApiError(0, "file", f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ApiError(0, "file", f"{path}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    except tomllib.TOMLDecodeError as e:
        raise ApiError(0, "file", f"{path}: invalid TOML: {e}") from None
    try:
        json.dumps(doc)
    except (TypeError, ValueError):
        raise ApiError(0, "file", f"{path}: dates and times are not config values") from None
    return doc


def _apply(c: Client, ns: argparse.Namespace) -> Any:
    doc = read_config_file(ns.file)
    client = Client(c.socket_path, timeout=max(c.timeout, APPLY_TIMEOUT_S))
    try:
        return client.request("POST", "/v1/config", {"config": doc, "dry_run": bool(ns.dry_run)})
    except ApiError as e:
        if e.status == 0:
            raise
        raise ApiError(e.status, e.error, f"{ns.file}: {e.detail}") from None


def render_apply(result: dict[str, Any]) -> str:
    changes, restart = result["changes"], result["restart_needed"]
    if result["dry_run"]:
        head = f"dry run: {len(changes)} change{'s' if len(changes) != 1 else ''} planned, nothing was changed"
    else:
        head = f"{len(changes)} change{'s' if len(changes) != 1 else ''} applied" if changes else "no changes: the switch matches the file"
    lines = [head, *(f"  {c['description']}" for c in changes)]
    if restart:
        lines.append("needs a restart ([switch] settings stay as they are while vswitchd runs):")
        lines += [f"  switch.{r['key']}: running {cell(r['running'])}, file {cell(r['file'])}" for r in restart]
    return "\n".join(lines)


def render_toml(doc: dict[str, Any]) -> str:
    return tomli_w.dumps(doc).rstrip("\n")


# --- capture ----------------------------------------------------------------

PCAP_HEADER_LEN = 24
PCAP_RECORD = struct.Struct("<IIII")  # seconds, fraction, captured length, original length


def whole_records(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Re-cut a pcap byte stream at record boundaries, so that whatever was
    written when the capture stops is a complete, readable file."""
    buf = b""
    end = PCAP_HEADER_LEN  # where the next record starts once buf holds that much
    for chunk in chunks:
        buf += chunk
        cut = 0
        while len(buf) >= end:
            cut = end
            if len(buf) < end + PCAP_RECORD.size:
                break
            end += PCAP_RECORD.size + PCAP_RECORD.unpack_from(buf, end)[2]
        if cut:
            yield buf[:cut]
            buf, end = buf[cut:], end - cut


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _write_whole(out: BinaryIO, data: bytes) -> None:
    # A stop waits until the write is done: it must not cut a record in half.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        out.write(data)
        out.flush()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _capture(c: Client, ns: argparse.Namespace) -> None:
    if ns.write is None and sys.stdout.isatty():
        raise ApiError(0, "usage", "refusing to write pcap to a terminal: use -w FILE or a pipe")
    path = _with_query(f"/v1/ports/{_seg(ns.name)}/capture", direction=ns.direction,
                       count=None if ns.count is None else str(ns.count))
    out: BinaryIO | None = None
    # SIGTERM ends a capture as cleanly as Ctrl-C (a background job ignores SIGINT).
    signal.signal(signal.SIGTERM, _stop)
    to_file = ns.write not in (None, "-")
    try:
        for data in whole_records(c.stream(path)):
            try:
                if out is None:  # opened only once the capture runs: a refused one leaves no file
                    out = open(ns.write, "wb") if to_file else sys.stdout.buffer
                _write_whole(out, data)
            except OSError as e:
                if not to_file:
                    raise  # main() tells a reader that has what it wanted (`| tshark -c 3 -r -`) from a full disk
                raise ApiError(0, "file", f"cannot write {ns.write}: {e.strerror}") from None
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM: how an open-ended capture ends
    finally:
        if out is not None and out is not sys.stdout.buffer:
            out.close()


def _positive(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return int(value)


# --- commands ---------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    name: str  # "network" is positional, "--network" an option
    metavar: str
    help: str
    required: bool = True
    type: Callable[[str], Any] = str
    aliases: tuple[str, ...] = ()  # e.g. "--write" beside "-w"; the first long one names the attribute
    choices: tuple[str, ...] | None = None
    action: str | None = None  # "store_true" for a flag, "append" for an option given once per value
    one_of: str | None = None  # options sharing this name: exactly one of them must be given

    def usage(self) -> str:
        if not self.name.startswith("-"):
            return self.metavar
        text = self.name if self.action == "store_true" else f"{self.name} {self.metavar}"
        text = text if self.required or self.one_of else f"[{text}]"
        return f"{text}..." if self.action == "append" else text


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    help: str
    run: Callable[[Client, argparse.Namespace], Any]  # returns what --json prints
    render: Callable[[Any], str] | None = None  # human output; None prints nothing
    args: tuple[Arg, ...] = field(default_factory=tuple)
    # What the parser cannot say about the arguments together: a usage error's text, or None.
    check: Callable[[argparse.Namespace], str | None] | None = None

    def usage(self) -> str:
        parts: list[str] = [*self.words]
        for i, a in enumerate(self.args):
            # Alternatives read "--port P | --peer REMOTE".
            joined = i > 0 and a.one_of is not None and self.args[i - 1].one_of == a.one_of
            parts.append(f"| {a.usage()}" if joined else a.usage())
        return " ".join(parts)


def _seg(value: str) -> str:
    return quote(value, safe="")


def _with_query(path: str, **params: str | None) -> str:
    given = {k: v for k, v in params.items() if v is not None}
    return f"{path}?{urlencode(given)}" if given else path


def _body(ns: argparse.Namespace, *keys: str) -> dict[str, Any]:
    return {k: getattr(ns, k) for k in keys if getattr(ns, k) is not None}


def _route(value: str) -> dict[str, str]:
    dst, sep, gw = value.partition(",")
    if not dst or (sep and not gw):
        raise argparse.ArgumentTypeError(f"{value!r} is not DST or DST,GW (e.g. 0.0.0.0/0,10.1.0.254)")
    return {"dst": dst, "gw": gw} if gw else {"dst": dst}


def _label(value: str) -> tuple[str, str]:
    key, sep, text = value.partition("=")
    if not key or not sep:
        raise argparse.ArgumentTypeError(f"{value!r} is not KEY=VALUE")
    return key, text


def _number(value: str) -> int | float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    return int(number) if number.is_integer() else number


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{value!r} is not on or off")
    return value == "on"


POLICY_ARGS = (
    Arg("--port-security", "on|off", "anti-spoofing: frames must come from the port's MAC and addresses "
        "(default on, off for a host port)", required=False, type=_on_off),
    Arg("--allow", "ADDR", "a MAC or IP address the port may also send from; repeat for more", required=False,
        action="append"),
    Arg("--router", "on|off", "may send IPv6 router advertisements (RA guard off)", required=False, type=_on_off),
    Arg("--dhcp-server", "on|off", "may send DHCP server replies (DHCP guard off)", required=False, type=_on_off),
    Arg("--max-macs", "N", "most MACs the port may have learned (0: no limit, the default)", required=False,
        type=int),
    Arg("--storm-broadcast", "FPS", "broadcast frames/s the port may flood (0: no limit; default 1000, host ports 0)",
        required=False, type=int),
    Arg("--storm-multicast", "FPS", "multicast frames/s the port may flood (0: no limit; default 1000, host ports 0)",
        required=False, type=int),
    Arg("--storm-unknown-unicast", "FPS", "frames/s to unknown unicast destinations the port may flood "
        "(0: no limit, the default)", required=False, type=int),
    Arg("--rate-mbit", "MBIT", "rate limit on each direction, Mbit/s (0: none, the default)", required=False,
        type=_number),
    Arg("--burst-kb", "KIB", "the rate limit's burst (0: a quarter second at the rate, at least 2048 KiB)", required=False,
        type=int),
    Arg("--rate-fps", "FPS", "rate limit on each direction, frames/s (0: none, the default)", required=False,
        type=int),
)
POLICY_BODY = ("port_security", "allow", "router", "dhcp_server", "max_macs", "storm_broadcast", "storm_multicast",
               "storm_unknown_unicast", "rate_mbit", "burst_kb", "rate_fps")


def _trunk(value: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in value.split(","):
        net, sep, vid = item.partition(":")
        if not net or not sep or not vid.isdigit():
            raise argparse.ArgumentTypeError(f"{value!r} is not NET:VID[,NET:VID...] (e.g. blue:10,red:20)")
        if net in out:
            raise argparse.ArgumentTypeError(f"{value!r} names network {net!r} twice")
        out[net] = int(vid)
    return out


TRUNK_HELP = "a trunk port carrying these networks 802.1Q-tagged, each with its VLAN ID (1-4094)"
NATIVE_HELP = "trunk port: the network of its untagged frames (default: none, untagged frames are dropped)"


def _port_body(ns: argparse.Namespace, *keys: str) -> dict[str, Any]:
    """The port fields given on the command line: one --ip is 'ip', several are 'ips'."""
    body = _body(ns, *keys)
    if body.get("allow") is not None:
        body["allowed"] = body.pop("allow")
    ips = getattr(ns, "ip", None)
    if ips is not None:
        del body["ip"]
        body.update({"ip": ips[0]} if len(ips) == 1 else {"ips": ips})
    if getattr(ns, "route", None) is not None:
        body["routes"] = body.pop("route")
    if getattr(ns, "label", None) is not None:
        body["labels"] = dict(body.pop("label"))
    return body


def _port_add(c: Client, ns: argparse.Namespace) -> Any:
    body = _port_body(ns, "name", "network", "trunk", "native", "netns", "ifname", "mac", "ip", "mtu", "route", "label",
                      "host", "masquerade", *POLICY_BODY)
    return c.request("POST", "/v1/ports", body)


def _port_set(c: Client, ns: argparse.Namespace) -> Any:
    body = _port_body(ns, "ip", "route", "mtu", "trunk", "native", *POLICY_BODY)
    if body.get("native") == "none":
        body["native"] = ""  # no native network from now on
    return c.request("PATCH", f"/v1/ports/{_seg(ns.name)}", body)


def _port_add_check(ns: argparse.Namespace) -> str | None:
    if not ns.host and ns.netns is None:
        return "the following arguments are required: --netns (or --host)"
    if (ns.network is None) == (ns.trunk is None):
        return "give --network NET (an access port) or --trunk NET:VID,... (a trunk port)"
    if ns.native is not None and ns.trunk is None:
        return "--native: only a trunk port has a native network (give --trunk too)"
    return None


def _port_list(c: Client, ns: argparse.Namespace) -> Any:
    return c.request("GET", _with_query("/v1/ports", network=ns.network, label=ns.label))


def _show(c: Client, ns: argparse.Namespace) -> dict[str, Any]:
    fdb = c.request("GET", "/v1/fdb")
    stats = c.request("GET", "/v1/stats")
    try:
        cluster = c.request("GET", "/v1/cluster")
    except ApiError as e:
        if e.status != 404:
            raise
        cluster = None  # not a cluster node (or a vswitchd without clusters)
    return {
        **({"cluster": cluster} if cluster is not None else {}),
        "io_mode": stats["io_mode"],
        "networks": c.request("GET", "/v1/networks"),
        "ports": c.request("GET", "/v1/ports"),
        "peers": c.request("GET", "/v1/peers"),
        "fdb": {"entries": len(fdb), "static": sum(1 for e in fdb if e.get("static")), "capacity": stats.get("fdb", {}).get("capacity")},
        "stats": stats,
    }


NET = Arg("--network", "NET", "network name")
NET_FILTER = Arg("--network", "NET", "only this network", required=False)
PORT_FILTER = Arg("--port", "P", "only this port", required=False)

COMMANDS: tuple[Command, ...] = (
    Command(("show",), "I/O mode, networks, ports, peers, FDB size and top counters on one screen", _show, render_show),
    Command(
        ("network", "add"),
        "add a network (an isolated L2 segment)",
        lambda c, ns: c.request("POST", "/v1/networks", _body(ns, "name", "vni")),
        args=(Arg("name", "NAME", "network name"), Arg("--vni", "N", "VXLAN network identifier", required=False, type=int)),
    ),
    Command(
        ("network", "del"),
        "delete a network that has no ports",
        lambda c, ns: c.request("DELETE", f"/v1/networks/{_seg(ns.name)}"),
        args=(Arg("name", "NAME", "network name"),),
    ),
    Command(("network", "list"), "list networks", lambda c, ns: c.request("GET", "/v1/networks"), render_networks),
    Command(
        ("port", "add"),
        "add a port: a TAP device whose interface sits in namespace NS (with --host: in vswitchd's own)",
        _port_add,
        check=_port_add_check,
        args=(
            Arg("name", "NAME", "unique port name"),
            Arg("--network", "NET", "network name (an access port)", required=False, one_of="network"),
            Arg("--trunk", "NET:VID,...", TRUNK_HELP, required=False, type=_trunk, one_of="network"),
            Arg("--native", "NET", NATIVE_HELP, required=False),
            Arg("--netns", "NS", "namespace name under /run/netns, or a path (not with --host)", required=False),
            Arg("--host", "", "a host port: the interface stays in vswitchd's namespace, e.g. the network's gateway",
                required=False, action="store_true"),
            Arg("--ifname", "IF", "interface name (default eth0; a host port's: the port's name)", required=False),
            Arg("--mac", "MAC", "fixed MAC of the interface", required=False),
            Arg("--ip", "CIDR", "address to configure on the interface, e.g. 10.1.0.1/24; repeat for more",
                required=False, action="append"),
            Arg("--route", "DST[,GW]", "route to configure beside the addresses; repeat for more", required=False,
                type=_route, action="append"),
            Arg("--mtu", "N", "interface MTU", required=False, type=int),
            Arg("--label", "K=V", "a label (e.g. who made the port); repeat for more", required=False, type=_label,
                action="append"),
            Arg("--masquerade", "", "host port: masquerade its IPv4 subnets' traffic out of vswitchd's namespace",
                required=False, action="store_true"),
            *POLICY_ARGS,
        ),
    ),
    Command(
        ("port", "set"),
        "change a port's addresses, routes, MTU, policy or a trunk port's networks in place (given ones replace the old)",
        _port_set,
        render_port,
        args=(
            Arg("name", "NAME", "port name"),
            Arg("--ip", "CIDR", "the port's addresses; repeat for more", required=False, action="append"),
            Arg("--route", "DST[,GW]", "the port's routes; repeat for more", required=False, type=_route, action="append"),
            Arg("--mtu", "N", "interface MTU", required=False, type=int),
            Arg("--trunk", "NET:VID,...", "trunk port: " + TRUNK_HELP + ", all of them", required=False, type=_trunk),
            Arg("--native", "NET|none", "trunk port: the network of its untagged frames (none: no native network)",
                required=False),
            *POLICY_ARGS,
        ),
    ),
    Command(
        ("port", "show"),
        "one port: addresses, routes, labels, state, limits, rates (now and the last minute's peak) and drops",
        lambda c, ns: c.request("GET", f"/v1/ports/{_seg(ns.name)}"),
        render_port,
        args=(Arg("name", "NAME", "port name"),),
    ),
    Command(
        ("port", "del"),
        "delete a port and its interface",
        lambda c, ns: c.request("DELETE", f"/v1/ports/{_seg(ns.name)}"),
        args=(Arg("name", "NAME", "port name"),),
    ),
    Command(
        ("port", "list"),
        "list ports with their state",
        _port_list,
        render_ports,
        args=(NET_FILTER, Arg("--label", "K[=V]", "only ports with this label (any value without =V)", required=False)),
    ),
    Command(
        ("peer", "add"),
        "add a remote VTEP to a network",
        lambda c, ns: c.request("POST", "/v1/peers", _body(ns, "network", "remote")),
        args=(Arg("remote", "REMOTE", "remote VTEP underlay IP"), NET),
    ),
    Command(
        ("peer", "del"),
        "remove a remote VTEP from a network",
        lambda c, ns: c.request("DELETE", f"/v1/peers/{_seg(ns.network)}/{_seg(ns.remote)}"),
        args=(Arg("remote", "REMOTE", "remote VTEP underlay IP"), NET),
    ),
    Command(
        ("peer", "list"),
        "list tunnel peers",
        lambda c, ns: c.request("GET", _with_query("/v1/peers", network=ns.network)),
        render_peers,
        args=(NET_FILTER,),
    ),
    Command(
        ("fdb", "show"),
        "list FDB entries (learned and static)",
        lambda c, ns: c.request("GET", _with_query("/v1/fdb", network=ns.network, port=ns.port)),
        render_fdb,
        args=(NET_FILTER, PORT_FILTER),
    ),
    Command(
        ("fdb", "flush"),
        "remove learned FDB entries (static ones stay)",
        lambda c, ns: c.request("POST", "/v1/fdb/flush", _body(ns, "network", "port")),
        lambda doc: f"flushed {doc['flushed']} learned entries",
        args=(NET_FILTER, PORT_FILTER),
    ),
    Command(
        ("fdb", "add"),
        "add a static FDB entry: MAC in NET is on port P, or behind peer REMOTE",
        lambda c, ns: c.request("POST", "/v1/fdb", _body(ns, "network", "mac", "port", "peer")),
        args=(Arg("mac", "MAC", "unicast MAC address"), NET, Arg("--port", "P", "port name", one_of="to"),
              Arg("--peer", "REMOTE", "a tunnel peer (remote VTEP) of NET", one_of="to")),
    ),
    Command(
        ("fdb", "del"),
        "delete an FDB entry",
        lambda c, ns: c.request("DELETE", f"/v1/fdb/{_seg(ns.network)}/{_seg(ns.mac)}"),
        args=(Arg("mac", "MAC", "MAC address"), NET),
    ),
    Command(("cluster",), "cluster nodes, their VTEPs, liveness and lease age, and etcd's reachability",
            lambda c, ns: c.request("GET", "/v1/cluster"), lambda doc: render_cluster(doc)),
    Command(("stats",), "counters of ports, tunnel peers, the MAC table and the forwarding loop", lambda c, ns: c.request("GET", "/v1/stats"), render_stats),
    Command(
        ("trace",),
        "what the switch would do now with a frame from port P (or VXLAN peer REMOTE) to MAC, step by step",
        lambda c, ns: c.request("POST", "/v1/trace",
                                _body(ns, "in_port", "from_peer", "network", "dst", "src", "vlan", "resolve")),
        render_trace,
        args=(
            Arg("--in-port", "P", "port the frame enters by", required=False),
            Arg("--from-peer", "REMOTE", "VXLAN peer the frame arrives from, with its network's VNI", required=False),
            Arg("--network", "NET", "the peer's network, if it is a peer of several", required=False),
            Arg("--dst", "MAC", "destination MAC (implied by --resolve)", required=False),
            Arg("--resolve", "IP", "trace the port's ARP request (IPv4) or neighbour solicitation (IPv6) for IP",
                required=False),
            Arg("--src", "MAC", "source MAC (default: the port's own; required with --from-peer)", required=False),
            Arg("--vlan", "N", "802.1Q tag the frame carries", required=False, type=int),
        ),
    ),
    Command(
        ("apply",),
        "make the running switch match a TOML config file: networks, ports, peers and static entries",
        _apply,
        render_apply,
        args=(
            Arg("file", "FILE", "TOML config file, as vswitchd --config takes"),
            Arg("--dry-run", "", "print the plan and change nothing", required=False, action="store_true"),
        ),
    ),
    Command(("export",), "print the running configuration as a TOML file that apply takes back unchanged",
            lambda c, ns: c.request("GET", "/v1/config"), render_toml),
    Command(
        ("capture",),
        "write a port's frames as pcap until COUNT frames, Ctrl-C or SIGTERM",
        _capture,
        args=(
            Arg("name", "PORT", "port name"),
            Arg("-w", "FILE", "pcap file to write (default: standard output)", required=False, aliases=("--write",)),
            Arg("-c", "COUNT", "stop after this many frames", required=False, type=_positive, aliases=("--count",)),
            Arg("--direction", "in|out|both", "frames the port received, sent, or both (default both)",
                required=False, choices=("in", "out", "both")),
        ),
    ),
)


# --- parser -----------------------------------------------------------------


def _listing(commands: Iterable[Command], width: int = 36) -> str:
    lines = ["commands:"]
    for c in commands:
        usage = c.usage()
        if len(usage) > width:  # keep the help column narrow: long usages get a line of their own
            lines += [f"  {usage}", f"  {'':{width}}  {c.help}"]
        else:
            lines.append(f"  {usage:{width}}  {c.help}")
    return "\n".join(lines)


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    # Declared on every level so `vswitchctl port list --json` works as well as `vswitchctl --json port list`.
    parser.add_argument("--socket", metavar="PATH", default=default, help=f"API socket (default $VSWITCH_SOCKET or {DEFAULT_SOCKET})")
    parser.add_argument("--json", action="store_true", default=default, help="print the API's JSON instead of tables")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=PROG, description="Control a running vswitchd.", epilog=_listing(COMMANDS), formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _global_options(parser, None)
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True, help="one of the commands below")
    nested: dict[str, argparse._SubParsersAction] = {}
    for cmd in COMMANDS:
        group = cmd.words[0]
        if len(cmd.words) == 1:
            leaf = groups.add_parser(group, description=cmd.help, formatter_class=fmt)
        else:
            if group not in nested:
                members = [c for c in COMMANDS if c.words[0] == group]
                gp = groups.add_parser(group, epilog=_listing(members), formatter_class=fmt)
                nested[group] = gp.add_subparsers(dest="verb", metavar="VERB", required=True, help="one of the commands below")
            leaf = nested[group].add_parser(cmd.words[1], description=cmd.help, formatter_class=fmt)
        _global_options(leaf, argparse.SUPPRESS)
        alternatives: dict[str, Any] = {}
        for arg in cmd.args:
            if arg.action == "store_true":
                leaf.add_argument(arg.name, *arg.aliases, help=arg.help, action="store_true", default=None)
            elif arg.one_of is not None:
                if arg.one_of not in alternatives:
                    alternatives[arg.one_of] = leaf.add_mutually_exclusive_group(required=True)
                alternatives[arg.one_of].add_argument(arg.name, *arg.aliases, metavar=arg.metavar, help=arg.help,
                                                      type=arg.type, default=None, choices=arg.choices)
            elif arg.name.startswith("-"):
                leaf.add_argument(arg.name, *arg.aliases, metavar=arg.metavar, help=arg.help, required=arg.required,
                                  type=arg.type, default=None, choices=arg.choices, action=arg.action or "store")
            else:
                leaf.add_argument(arg.name, metavar=arg.metavar, help=arg.help, type=arg.type)
        leaf.set_defaults(command=cmd)
    return parser


def _error(as_json: bool, kind: str, detail: str, status: int | None = None) -> None:
    """One line on stderr: text, or with --json an object with the error's kind (as the API's error bodies)."""
    if as_json:
        doc: dict[str, Any] = {"error": kind, "detail": detail}
        if status:
            doc["status"] = status
        print(json.dumps(doc), file=sys.stderr)
    else:
        print(f"{PROG}: {detail}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    problem = ns.command.check(ns) if ns.command.check is not None else None
    if problem is not None:
        parser.error(f"{' '.join(ns.command.words)}: {problem}")
    for key, value in vars(ns).items():
        # Python keeps an argument's undecodable bytes as lone surrogates, which no request can carry.
        if isinstance(value, str) and not _is_utf8(value):
            _error(ns.json, "invalid_argument", f"{key}: {os.fsencode(value)!r} is not UTF-8 text")
            return 2
    cmd: Command = ns.command
    socket_path = ns.socket or os.environ.get("VSWITCH_SOCKET") or str(DEFAULT_SOCKET)
    try:
        result = cmd.run(Client(socket_path), ns)
        if ns.json:
            text = None if result is None else json.dumps(result, indent=2)
        else:
            text = None if cmd.render is None else cmd.render(result)
        if text is not None:
            print(text, flush=True)
    except ApiError as e:
        _error(ns.json, e.error, e.detail, e.status)
        return 1
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error worth a traceback.
        _drop_stdout()
    except OSError as e:  # the API's own failures arrive as ApiError: this is our output (a full disk)
        _drop_stdout()
        _error(ns.json, "output_failed", f"cannot write the output: {e.strerror or e}")
        return 1
    except (KeyError, TypeError, AttributeError) as e:
        _error(ns.json, "bad_response",
               f"vswitchd's answer lacks what {' '.join(cmd.words)} shows ({type(e).__name__}: {e})")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _drop_stdout() -> None:
    # What is still buffered would fail again when Python flushes it at exit.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _is_utf8(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())

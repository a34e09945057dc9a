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
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence
from urllib.parse import quote, urlencode

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


def render_ports(ports: list[dict[str, Any]], indent: str = "") -> str:
    rows = [(p["name"], p.get("network"), p.get("netns"), p.get("ifname"), p.get("mac"), p.get("ip"), p.get("mtu"), p.get("state")) for p in ports]
    return table(("NAME", "NETWORK", "NETNS", "IFNAME", "MAC", "IP", "MTU", "STATE"), rows, indent)


def render_peers(peers: list[dict[str, Any]], indent: str = "") -> str:
    if not peers:
        return table(("NETWORK", "REMOTE"), [], indent)
    return records_table([{"network": p["network"], "remote": p["remote"], **(p.get("counters") or {})} for p in peers], indent)


def render_fdb(entries: list[dict[str, Any]]) -> str:
    def where(e: dict[str, Any]) -> str:
        return f"port {e['port']}" if e.get("port") else f"peer {e.get('peer')}"

    def age(e: dict[str, Any]) -> str:
        return "-" if e.get("static") or e.get("age_s") is None else f"{e['age_s']:.0f}s"

    rows = [(e["network"], e["mac"], where(e), "static" if e.get("static") else "learned", age(e)) for e in entries]
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


def render_show(doc: dict[str, Any]) -> str:
    fdb = doc["fdb"]
    return "\n".join(
        [
            f"io_mode: {doc['io_mode']}",
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
    if doc["action"] == "drop":
        verdict = f"drop ({doc['reason']})"
    else:
        where = [f"ports {', '.join(out['ports'])}"] if out["ports"] else []
        where += [f"peers {', '.join(out['peers'])}"] if out["peers"] else []
        verdict = f"{doc['action']} to {' and '.join(where)}" if where else f"{doc['action']} to nowhere (no other port is up)"
    return "\n".join([*doc["steps"], f"verdict: {verdict}"])


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

    def usage(self) -> str:
        if not self.name.startswith("-"):
            return self.metavar
        text = f"{self.name} {self.metavar}"
        return text if self.required else f"[{text}]"


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    help: str
    run: Callable[[Client, argparse.Namespace], Any]  # returns what --json prints
    render: Callable[[Any], str] | None = None  # human output; None prints nothing
    args: tuple[Arg, ...] = field(default_factory=tuple)

    def usage(self) -> str:
        return " ".join([*self.words, *(a.usage() for a in self.args)])


def _seg(value: str) -> str:
    return quote(value, safe="")


def _with_query(path: str, **params: str | None) -> str:
    given = {k: v for k, v in params.items() if v is not None}
    return f"{path}?{urlencode(given)}" if given else path


def _body(ns: argparse.Namespace, *keys: str) -> dict[str, Any]:
    return {k: getattr(ns, k) for k in keys if getattr(ns, k) is not None}


def _show(c: Client, ns: argparse.Namespace) -> dict[str, Any]:
    fdb = c.request("GET", "/v1/fdb")
    stats = c.request("GET", "/v1/stats")
    return {
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
        "add a port: a TAP device whose interface sits in namespace NS",
        lambda c, ns: c.request("POST", "/v1/ports", _body(ns, "name", "network", "netns", "ifname", "mac", "ip", "mtu")),
        args=(
            Arg("name", "NAME", "unique port name"),
            NET,
            Arg("--netns", "NS", "namespace name under /run/netns, or a path"),
            Arg("--ifname", "IF", "interface name inside the namespace (default eth0)", required=False),
            Arg("--mac", "MAC", "fixed MAC of the interface", required=False),
            Arg("--ip", "CIDR", "address to configure inside the namespace, e.g. 10.1.0.1/24", required=False),
            Arg("--mtu", "N", "interface MTU", required=False, type=int),
        ),
    ),
    Command(
        ("port", "del"),
        "delete a port and its interface",
        lambda c, ns: c.request("DELETE", f"/v1/ports/{_seg(ns.name)}"),
        args=(Arg("name", "NAME", "port name"),),
    ),
    Command(("port", "list"), "list ports with their state", lambda c, ns: c.request("GET", "/v1/ports"), render_ports),
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
        "add a static FDB entry: MAC in NET is on port P",
        lambda c, ns: c.request("POST", "/v1/fdb", _body(ns, "network", "mac", "port")),
        args=(Arg("mac", "MAC", "unicast MAC address"), NET, Arg("--port", "P", "port name")),
    ),
    Command(
        ("fdb", "del"),
        "delete an FDB entry",
        lambda c, ns: c.request("DELETE", f"/v1/fdb/{_seg(ns.network)}/{_seg(ns.mac)}"),
        args=(Arg("mac", "MAC", "MAC address"), NET),
    ),
    Command(("stats",), "counters of ports, tunnel peers, the MAC table and the forwarding loop", lambda c, ns: c.request("GET", "/v1/stats"), render_stats),
    Command(
        ("trace",),
        "what the switch would do now with a frame from port P (or VXLAN peer REMOTE) to MAC, step by step",
        lambda c, ns: c.request("POST", "/v1/trace", _body(ns, "in_port", "from_peer", "network", "dst", "src", "vlan")),
        render_trace,
        args=(
            Arg("--in-port", "P", "port the frame enters by", required=False),
            Arg("--from-peer", "REMOTE", "VXLAN peer the frame arrives from, with its network's VNI", required=False),
            Arg("--network", "NET", "the peer's network, if it is a peer of several", required=False),
            Arg("--dst", "MAC", "destination MAC"),
            Arg("--src", "MAC", "source MAC (default: the port's own; required with --from-peer)", required=False),
            Arg("--vlan", "N", "802.1Q tag the frame carries", required=False, type=int),
        ),
    ),
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
        for arg in cmd.args:
            if arg.name.startswith("-"):
                leaf.add_argument(arg.name, *arg.aliases, metavar=arg.metavar, help=arg.help, required=arg.required,
                                  type=arg.type, default=None, choices=arg.choices)
            else:
                leaf.add_argument(arg.name, metavar=arg.metavar, help=arg.help, type=arg.type)
        leaf.set_defaults(command=cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    for key, value in vars(ns).items():
        # Python keeps an argument's undecodable bytes as lone surrogates, which no request can carry.
        if isinstance(value, str) and not _is_utf8(value):
            print(f"{PROG}: {key}: {os.fsencode(value)!r} is not UTF-8 text", file=sys.stderr)
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
        print(f"{PROG}: {e.detail}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error worth a traceback.
        _drop_stdout()
    except OSError as e:  # the API's own failures arrive as ApiError: this is our output (a full disk)
        _drop_stdout()
        print(f"{PROG}: cannot write the output: {e.strerror or e}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, AttributeError) as e:
        print(f"{PROG}: vswitchd's answer lacks what {' '.join(cmd.words)} shows ({type(e).__name__}: {e})",
              file=sys.stderr)
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

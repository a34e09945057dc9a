"""The control API: HTTP/1.1 + JSON on a Unix socket (``curl --unix-socket`` works).

Each request is checked in full (route, method, length, JSON, values parsed into
the model's specs) before the switch is called, so a bad request changes nothing.
Every error body is ``{"error": <kind>, "detail": <one line>}``.

One route streams instead of answering JSON: a port capture is sent as pcap,
frame by frame, for as long as the client reads (the connection then closes).

Connections are held by connections.ConnectionLoop, which reads each request
whole before a worker of its fixed pool serves it here: no thread waits on an
idle or slow client.
"""
from __future__ import annotations

import errno
import http.server
import json
import logging
import os
import select
import socket
import io
import stat
import threading
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, Callable
from urllib.parse import parse_qs, unquote

from . import reconcile
from .capture import Capture, pcap_header, pcap_record
from .config import config_document, parse_config
from .connections import CLOSE, DETACHED, KEEP, Conn, ConnectionLoop, Limits, RequestBuffer
from .errors import Conflict, ConfigError, InvalidArgument, NotFound, VswitchError
from .model import (NetworkSpec, PeerSpec, PortSpec, PortUpdate, StaticFdbSpec, check_keys, check_label_filter, check_mac,
                    check_name)
from .switch import Switch

log = logging.getLogger("vswitch.api")

MAX_BODY = 64 * 1024
BODY_METHODS = ("POST", "PATCH")  # the methods whose request body is JSON the handler reads
# A whole config document is applied in one request: room for thousands of ports.
MAX_CONFIG_BODY = 4 * 1024 * 1024
BODY_LIMITS = {"/v1/config": MAX_CONFIG_BODY}
# Requests that change nothing an operator configured, whatever their method.
READ_ONLY_POSTS = {"/v1/trace", "/v1/fdb/flush"}
PCAP_TYPE = "application/vnd.tcpdump.pcap"
# How often an idle capture stream checks that its port still exists.
PORT_CHECK_S = 0.5
UNMATCHED = "unmatched"  # metrics label for paths that match no route (raw paths would explode cardinality)

MetricsHook = Callable[[str, int], None]

_STATUS_OF: dict[type[VswitchError], int] = {InvalidArgument: 400, NotFound: 404, Conflict: 409}


class HttpError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.headers = headers or {}


@dataclass
class Request:
    switch: Switch
    params: dict[str, str]  # path parameters, already URL-decoded
    query: dict[str, str]
    body: Any  # decoded JSON of a POST or PATCH body
    has_body: bool  # a POST/PATCH body was sent (`null` is a body, an empty one is not)


class PcapStream:
    """A capture sent as pcap until `count` frames, the client leaving or the port going away."""

    content_type = PCAP_TYPE

    def __init__(self, switch: Switch, port: str, capture: Capture, count: int | None) -> None:
        self.switch, self.port, self.capture, self.count = switch, port, capture, count

    def pump(self, out: BinaryIO, client: socket.socket) -> None:
        out.write(pcap_header())
        out.flush()
        sent = 0
        while self.count is None or sent < self.count:
            # The capture's end says its port was removed, even if one of the same name came back since.
            if self.capture.ended or not self.switch.has_port(self.port):
                return
            ready = select.select([self.capture, client], [], [], PORT_CHECK_S)[0]
            if client in ready and _client_gone(client):
                return
            if self.capture not in ready:
                continue
            for ns, _direction, frame in self.capture.records(0):
                out.write(pcap_record(ns, frame))
                out.flush()
                sent += 1
                if sent == self.count:
                    return

    def close(self) -> None:
        self.capture.close()


def _client_gone(client: socket.socket) -> bool:
    """A readable client socket: EOF or an error means the client left; other bytes are ignored."""
    try:
        return not client.recv(4096)
    except OSError:
        return True


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no detail)"


def _object(req: Request) -> dict[str, Any]:
    if not req.has_body:
        raise InvalidArgument("request body is empty; expected a JSON object")
    if not isinstance(req.body, dict):
        raise InvalidArgument(f"request body must be a JSON object, got {_json_type(req.body)}")
    return req.body


def _parse_length(value: str) -> int | None:
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _query(req: Request, allowed: tuple[str, ...]) -> dict[str, str | None]:
    return {key: (None if req.query.get(key) is None else check_name(key, req.query[key])) for key in allowed}


# Handlers: each returns (status, JSON payload or None for 204).


def _health(req: Request) -> tuple[int, Any]:
    """200 while the forwarding loop turns; 503, with the error body's kind and detail, once it
    has ended or made no progress for its stall threshold (a supervisor's cue to restart)."""
    loop = req.switch.loop.health()
    if loop["state"] == "running":
        return 200, {"status": "ok", "loop": loop}
    if loop["state"] == "stalled":
        detail = f"the forwarding loop has not turned for {loop['last_turn_age_s']:.1f} s"
    elif loop["state"] == "starting":
        detail = "the forwarding loop has not turned yet"
    else:
        detail = f"the forwarding loop has {loop['state']}" + (f": {loop['error']}" if "error" in loop else "")
    return 503, {"status": "unhealthy", "error": "unhealthy", "detail": detail, "loop": loop}


def _networks_list(req: Request) -> tuple[int, Any]:
    return 200, req.switch.list_networks()


def _network_add(req: Request) -> tuple[int, Any]:
    return 201, req.switch.add_network(NetworkSpec.parse(_object(req)))


def _network_get(req: Request) -> tuple[int, Any]:
    return 200, req.switch.get_network(check_name("network", req.params["name"]))


def _network_del(req: Request) -> tuple[int, Any]:
    req.switch.del_network(check_name("network", req.params["name"]))
    return 204, None


def _ports_list(req: Request) -> tuple[int, Any]:
    network = _query(req, ("network",))["network"]
    label = None if req.query.get("label") is None else check_label_filter("label", req.query["label"])
    return 200, req.switch.list_ports(network=network, label=label)


def _port_add(req: Request) -> tuple[int, Any]:
    return 201, req.switch.add_port(PortSpec.parse(_object(req)))


def _port_get(req: Request) -> tuple[int, Any]:
    return 200, req.switch.get_port(check_name("port", req.params["name"]))


def _port_patch(req: Request) -> tuple[int, Any]:
    return 200, req.switch.set_port(check_name("port", req.params["name"]), PortUpdate.parse(_object(req)))


def _port_del(req: Request) -> tuple[int, Any]:
    req.switch.del_port(check_name("port", req.params["name"]))
    return 204, None


def _peers_list(req: Request) -> tuple[int, Any]:
    return 200, req.switch.list_peers(**_query(req, ("network",)))


def _peer_add(req: Request) -> tuple[int, Any]:
    return 201, req.switch.add_peer(PeerSpec.parse(_object(req)))


def _peer_del(req: Request) -> tuple[int, Any]:
    req.switch.del_peer(PeerSpec.parse(dict(req.params)))
    return 204, None


def _fdb_list(req: Request) -> tuple[int, Any]:
    return 200, req.switch.fdb_list(**_query(req, ("network", "port")))


def _fdb_add(req: Request) -> tuple[int, Any]:
    return 201, req.switch.fdb_add(StaticFdbSpec.parse(_object(req)))


def _fdb_del(req: Request) -> tuple[int, Any]:
    network = check_name("network", req.params["network"])
    req.switch.fdb_del(network, check_mac("mac", req.params["mac"]))
    return 204, None


def _fdb_flush(req: Request) -> tuple[int, Any]:
    body = _object(req) if req.has_body else {}
    check_keys("flush", body, {"network", "port"}, set())
    filters = {key: None if body.get(key) is None else check_name(f"flush.{key}", body[key]) for key in ("network", "port")}
    return 200, {"flushed": req.switch.fdb_flush(**filters)}


def _stats(req: Request) -> tuple[int, Any]:
    return 200, req.switch.stats()


def _cluster(req: Request) -> tuple[int, Any]:
    agent = req.switch.cluster
    if agent is None:
        raise NotFound("this switch is not a cluster node (start vswitchd with --etcd or a [cluster] table)")
    return 200, agent.status()


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would keep the last of two equal keys: {"name": "a", "name": "b"} is not a request to guess at.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _trace(req: Request) -> tuple[int, Any]:
    body = _object(req)
    check_keys("trace", body, {"in_port", "from_peer", "network", "dst", "src", "vlan", "resolve"}, set())
    in_port = None if body.get("in_port") is None else check_name("in_port", body["in_port"])
    return 200, req.switch.trace(in_port, body.get("dst"), body.get("src"), body.get("vlan"),
                                 from_peer=body.get("from_peer"), network=body.get("network"),
                                 resolve=body.get("resolve"))


def _capture(req: Request) -> tuple[int, Any]:
    name = check_name("port", req.params["name"])
    count = req.query.get("count")
    if count is not None:
        # Length first: int() refuses numbers of over 4300 digits with a ValueError of its own.
        if not (count.isascii() and count.isdigit()) or len(count) > 20 or int(count) < 1:
            raise InvalidArgument(f"count: {count!r} is not a positive integer")
    # Refusals (unknown port, a capture already running) happen here, before any byte of the stream.
    capture = req.switch.start_capture(name, req.query.get("direction", "both"))
    return 200, PcapStream(req.switch, name, capture, None if count is None else int(count))


def _config_export(req: Request) -> tuple[int, Any]:
    return 200, config_document(req.switch.settings, req.switch.desired_state())


def _config_apply(req: Request) -> tuple[int, Any]:
    body = _object(req)
    check_keys("apply", body, {"config", "dry_run"}, {"config"})
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidArgument(f"dry_run: {dry_run!r} is not true or false")
    settings, state = parse_config(body["config"], check_netns=True)
    return 200, reconcile.apply(req.switch, settings, state, dry_run=dry_run)


def _openapi(req: Request) -> tuple[int, Any]:
    return 200, openapi_document()


Handler = Callable[[Request], tuple[int, Any]]

# Route template -> method -> (handler, allowed query parameters). Literal
# templates come before templated ones of the same shape so they win.
ROUTES: dict[str, dict[str, tuple[Handler, tuple[str, ...]]]] = {
    "/v1/health": {"GET": (_health, ())},
    "/v1/networks": {"GET": (_networks_list, ()), "POST": (_network_add, ())},
    "/v1/networks/{name}": {"GET": (_network_get, ()), "DELETE": (_network_del, ())},
    "/v1/ports": {"GET": (_ports_list, ("network", "label")), "POST": (_port_add, ())},
    "/v1/ports/{name}": {"GET": (_port_get, ()), "DELETE": (_port_del, ()), "PATCH": (_port_patch, ())},
    "/v1/ports/{name}/capture": {"GET": (_capture, ("direction", "count"))},
    "/v1/peers": {"GET": (_peers_list, ("network",)), "POST": (_peer_add, ())},
    "/v1/peers/{network}/{remote}": {"DELETE": (_peer_del, ())},
    "/v1/fdb": {"GET": (_fdb_list, ("network", "port")), "POST": (_fdb_add, ())},
    "/v1/fdb/flush": {"POST": (_fdb_flush, ())},
    "/v1/fdb/{network}/{mac}": {"DELETE": (_fdb_del, ())},
    "/v1/stats": {"GET": (_stats, ())},
    "/v1/cluster": {"GET": (_cluster, ())},
    "/v1/trace": {"POST": (_trace, ())},
    "/v1/config": {"GET": (_config_export, ()), "POST": (_config_apply, ())},
    "/v1/openapi.json": {"GET": (_openapi, ())},
}


def body_limit(raw_path: bytes) -> int:
    """The largest body a request to this raw path (no query) may carry; the connection
    loop reads no more than this before the handler decides."""
    return BODY_LIMITS.get(raw_path.decode("latin-1"), MAX_BODY)


def changes_state(template: str, method: str, req: Request) -> bool:
    """Whether a request may change the desired state (and so must be able to save it)."""
    if method in ("GET", "HEAD", "OPTIONS") or template in READ_ONLY_POSTS:
        return False
    return not (template == "/v1/config" and isinstance(req.body, dict) and req.body.get("dry_run") is True)


def match_route(path: str) -> tuple[str, dict[str, str]] | None:
    """(template, decoded path parameters) for a raw path without its query, or None."""
    # Split before decoding so an encoded '/' stays inside its segment.
    segments = path.split("/")
    for template in ROUTES:
        parts = template.split("/")
        if len(parts) != len(segments):
            continue
        params: dict[str, str] = {}
        for part, seg in zip(parts, segments):
            if part.startswith("{"):
                if not seg:
                    break
                params[part[1:-1]] = unquote(seg, errors="strict")
            elif part != seg:
                break
        else:
            return template, params
    return None


@cache
def openapi_document() -> Any:
    return json.loads(resources.files("vswitch").joinpath("openapi.json").read_bytes())


class _SocketWriter(io.BufferedIOBase):
    """The handler's wfile: every write goes out whole (sendall), bounded by the socket's timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        return len(b)

    def fileno(self) -> int:
        return self._sock.fileno()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves one request that the connection loop read whole (rfile is that buffer)."""

    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    # Nobody speaks HTTP/0.9: a malformed request line still gets a status line and headers.
    default_request_version = "HTTP/1.0"
    server: _Server
    _template = UNMATCHED

    def __init__(self, conn: Conn, server: _Server, rfile: RequestBuffer) -> None:
        # Not BaseRequestHandler's __init__: that would loop over requests on a blocking socket.
        self.conn = conn
        self.request = self.connection = conn.sock
        self.client_address = ""
        self.server = server
        self.rfile = rfile
        self.wfile = _SocketWriter(conn.sock)
        self.timeout = server.limits.request_timeout_s
        self._detached = False

    def serve_one(self) -> str:
        self.close_connection = True  # unless the request line says keep-alive
        self.handle_one_request()
        if self._detached:
            return DETACHED
        return CLOSE if self.close_connection else KEEP

    def do_GET(self) -> None:
        self._dispatch()

    # Every method reaches the router so a known path answers 405 with Allow.
    do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        started = time.monotonic()
        self._template = UNMATCHED
        headers: dict[str, str] = {}
        try:
            req, handler = self._parse()
            if self.server.state_check is not None and changes_state(self._template, self.command, req):
                self.server.state_check()  # a state dir that cannot save refuses the change first
            status, payload = handler(req)
        except HttpError as e:
            status, payload, headers = e.status, {"error": e.error, "detail": e.detail}, e.headers
        except VswitchError as e:
            status = next((code for cls, code in _STATUS_OF.items() if isinstance(e, cls)), 500)
            payload = {"error": e.kind, "detail": _one_line(str(e))}
        except Exception as e:
            log.exception("%s %s failed", self.command, self.path)
            status, headers = 500, {}
            payload = {"error": "internal", "detail": f"internal error ({type(e).__name__}); see the vswitchd log"}
        if isinstance(payload, PcapStream):
            self._stream(status, payload)
        else:
            self._respond(status, payload, headers)
        log.debug("%s %s -> %d (%.1f ms)", self.command, self.path, status, (time.monotonic() - started) * 1000)
        self.server.report(self._template, status)

    def _parse(self) -> tuple[Request, Handler]:
        raw_path, _, raw_query = self.path.partition("?")
        try:
            matched = match_route(raw_path)
        except UnicodeDecodeError:
            matched = None
        if matched is None:
            self._refuse_body()
            raise HttpError(404, "not_found", f"no such resource: {_one_line(raw_path)[:200]}")
        template, params = matched
        self._template = template  # reported under its template from here on, whatever goes wrong next
        methods = ROUTES[template]
        if self.command not in methods:
            self._refuse_body()
            allow = ", ".join(methods)
            raise HttpError(405, "method_not_allowed", f"{self.command} is not allowed on {template} (allowed: {allow})", {"Allow": allow})
        handler, allowed_query = methods[self.command]
        has_body, body = self._read_body()
        query = self._parse_query(raw_query, allowed_query)
        return Request(self.server.switch, params, query, body, has_body), handler

    def _parse_query(self, raw: str, allowed: tuple[str, ...]) -> dict[str, str]:
        try:
            pairs = parse_qs(raw, keep_blank_values=True, strict_parsing=bool(raw), errors="strict")
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "invalid_argument", f"malformed query string {raw[:200]!r}") from None
        for key, values in pairs.items():
            if key not in allowed:
                expected = ", ".join(allowed) if allowed else "none"
                raise HttpError(400, "invalid_argument", f"unknown query parameter {key!r} (allowed: {expected})")
            if len(values) > 1:
                raise HttpError(400, "invalid_argument", f"query parameter {key!r} given {len(values)} times")
        return {key: values[0] for key, values in pairs.items()}

    def _content_length(self) -> int | None:
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise HttpError(411, "length_required", "chunked request bodies are not supported; send Content-Length")
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        length = _parse_length(value)
        if length is None:
            self.close_connection = True
            raise HttpError(400, "bad_request", f"Content-Length {value[:40]!r} is not a non-negative integer")
        return length

    def _read_body(self) -> tuple[bool, Any]:
        """(whether a POST/PATCH body was sent, its decoded JSON); other methods' bodies are read and ignored."""
        length = self._content_length()
        if length is None:
            if self.command in BODY_METHODS:
                raise HttpError(411, "length_required", f"{self.command} needs a Content-Length header")
            return False, None
        limit = BODY_LIMITS.get(self._template, MAX_BODY)
        if length > limit:
            # The body is never read, so the connection cannot carry another request.
            self.close_connection = True
            raise HttpError(413, "payload_too_large", f"request body of {length} bytes exceeds the {limit}-byte limit")
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise HttpError(408, "request_timeout", f"request body not received within {self.timeout} s") from None
        if len(data) < length:
            self.close_connection = True
            raise HttpError(400, "bad_request", f"request body ended after {len(data)} of {length} bytes")
        if self.command not in BODY_METHODS or not data:
            return False, None
        try:
            return True, json.loads(data, object_pairs_hook=_refuse_duplicate_keys)
        except (ValueError, RecursionError) as e:
            raise HttpError(400, "bad_request", f"request body is not valid JSON: {_one_line(str(e))}") from None

    def _refuse_body(self) -> None:
        """An error answered without looking at the body: a body of a declared,
        acceptable length is still read (and dropped), so a client that sends
        it after the headers is not cut off mid-send (EPIPE) and the
        connection stays in step; any other body closes the connection."""
        length = None if "Transfer-Encoding" in self.headers else _parse_length(self.headers.get("Content-Length") or "0")
        if length is None or length > MAX_BODY:
            self.close_connection = True
            return
        try:
            if len(self.rfile.read(length)) < length:
                self.close_connection = True
        except TimeoutError:
            self.close_connection = True

    def _respond(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        body = b"" if status == 204 else json.dumps(payload, indent=None).encode() + b"\n"
        self.send_response(status)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, status: int, stream: PcapStream) -> None:
        """Headers, then the body as it is produced; its end is the connection's end.

        The body is pumped by a thread of its own, not a pool worker, for as long as the
        client reads: at most one capture runs per port, so these threads are bounded."""
        self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", stream.content_type)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
        except OSError as e:
            log.debug("%s %s: stream ended: %s", self.command, self.path, e)
            stream.close()
            return
        sock, wfile, what, server = self.connection, self.wfile, f"{self.command} {self.path}", self.server

        def pump() -> None:
            try:
                stream.pump(wfile, sock)
            except OSError as e:  # the client went away or stopped reading: the normal end of a stream
                log.debug("%s: stream ended: %s", what, e)
            finally:
                stream.close()
                sock.close()
                with server.streams_lock:
                    server.streams.pop(threading.current_thread(), None)

        thread = threading.Thread(target=pump, name=f"capture:{stream.port}", daemon=True)
        with server.streams_lock:
            server.streams[thread] = sock
        self._detached = True
        thread.start()

    def handle_expect_100(self) -> bool:
        # Do not invite a body that will be refused anyway, nor twice: the connection
        # loop sent 100 Continue itself if it waited for the body.
        length = _parse_length(self.headers.get("Content-Length", ""))
        if self.conn.continue_sent or (length is not None and length > body_limit(self.path.encode(errors="replace"))):
            return True
        return super().handle_expect_100()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Reached for requests the stdlib rejects before dispatch (bad request
        # line, oversized headers, unknown method): answer in the API's format.
        self.close_connection = True
        reason = message or self.responses.get(code, ("error",))[0]
        body = json.dumps({"error": "bad_request" if code == 400 else "http_error", "detail": _one_line(reason)}).encode() + b"\n"
        self.send_response(code, message)
        self.send_header("Connection", "close")
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.end_headers()
        self.server.report(UNMATCHED, code)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _dispatch logs one line per request with its duration

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api: " + format, *args)

    def version_string(self) -> str:
        return "vswitchd"

    def address_string(self) -> str:
        return "unix"  # peers on a Unix socket have no address


class _Server:
    """What handlers reach through self.server: the switch, the metrics hook, the state check."""

    def __init__(self, switch: Switch, metrics_hook: MetricsHook | None,
                 state_check: Callable[[], None] | None, limits: Limits) -> None:
        self.switch = switch
        self.metrics_hook = metrics_hook
        self.state_check = state_check
        self.limits = limits
        self.streams: dict[threading.Thread, socket.socket] = {}  # capture streams and their clients
        self.streams_lock = threading.Lock()

    def report(self, template: str, status: int) -> None:
        if self.metrics_hook is None:
            return
        try:
            self.metrics_hook(template, status)
        except Exception:
            log.exception("metrics hook failed for %s %d", template, status)

    def serve(self, conn: Conn, request: bytes, timed_out: bool) -> str:
        """Serve one whole request read by the connection loop; KEEP, CLOSE or DETACHED."""
        handler = _Handler(conn, self, RequestBuffer(request, timed_out))
        return handler.serve_one()


class ApiServer:
    """Serves the control API for ``switch`` on ``socket_path`` (mode 0600).

    ``bind()`` claims the socket and fails with ConfigError if another vswitchd
    answers on it; call it before touching any state so a second daemon stops
    before disturbing the first one. ``start()`` binds if needed and serves
    (connections parked in one event loop, requests served by a fixed pool of
    workers); ``close()`` stops serving and removes the socket.

    ``state_check`` is called before a request that changes the desired state;
    its StateNotSaved refuses the request before anything changes.
    """

    def __init__(self, switch: Switch, socket_path: Path, metrics_hook: MetricsHook | None = None,
                 state_check: Callable[[], None] | None = None, limits: Limits | None = None) -> None:
        self.switch = switch
        self.socket_path = Path(socket_path)
        self.metrics_hook = metrics_hook
        self.limits = limits or Limits()
        self._server = _Server(switch, metrics_hook, state_check, self.limits)
        self._listener: socket.socket | None = None
        self._loop: ConnectionLoop | None = None
        self._inode: int | None = None

    def bind(self) -> None:
        if self._listener is not None:
            return
        openapi_document()  # a broken package fails here, not on the first request
        path = self.socket_path
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(path.parent, 0o755)
        _remove_stale_socket(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The umask makes the socket 0600 from its creation: there is no window
        # in which another user could connect.
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(path))
        except OSError as e:
            listener.close()
            raise ConfigError(f"cannot bind the API socket {path}: {e.strerror}") from None
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._inode = os.stat(path).st_ino
        # A Unix socket refuses connect() with EAGAIN once the backlog is full
        # (clients with a timeout never queue), so bursts of clients need room.
        listener.listen(socket.SOMAXCONN)
        self._listener = listener

    def start(self) -> None:
        self.bind()
        assert self._listener is not None
        self._loop = ConnectionLoop(self._listener, self._server.serve, body_limit, self.limits)
        self._loop.start()
        log.info("control API listening on %s", self.socket_path)

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
        listener.close()
        with self._server.streams_lock:
            streams = list(self._server.streams.items())
        for thread, sock in streams:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the pump sees its client gone and ends
            except OSError:
                pass
        for thread, _ in streams:
            thread.join(timeout=5)
        # Remove the socket only if it is still ours (not one a successor bound).
        try:
            if os.stat(self.socket_path).st_ino == self._inode:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass


def _remove_stale_socket(path: Path) -> None:
    """Removes a socket nobody listens on; refuses if one answers or the path is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"API socket path {path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ConfigError(f"cannot probe the API socket {path}: {e.strerror or e}") from None
        log.info("removing stale API socket %s", path)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return
    finally:
        probe.close()
    raise ConfigError(f"another vswitchd is serving {path}")

"""The control API against a real vswitchd: every resource, every kind of bad request,
concurrency, the socket's guarantees, and conformance to the served OpenAPI document."""
from __future__ import annotations

import http.client
import json
import os
import re
import socket
import stat
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.harness.daemon import Vswitchd, loopback_vtep_config
from tests.harness.netns import Netns, NetnsFactory
from tests.harness.wait import wait_until
from vswitch.client import UnixHTTPConnection

pytestmark = pytest.mark.root

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "vswitch" / "openapi.json"
MAX_BODY = 64 * 1024


# --- a validator for the JSON Schema subset openapi.json uses ---------------------------

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}
_KEYWORDS = {"type", "properties", "required", "items", "enum", "nullable", "$ref", "additionalProperties",
             "minimum", "maximum", "pattern", "description"}


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        assert node["$ref"].startswith("#/"), node["$ref"]
        target: Any = doc
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def validate(doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "$") -> None:
    """Raises AssertionError naming the JSON path of the first mismatch."""
    schema = resolve(doc, schema)
    unknown = set(schema) - _KEYWORDS
    assert not unknown, f"{where}: schema uses keywords this validator does not know: {unknown}"
    if value is None:
        assert schema.get("nullable", False), f"{where}: null where the schema does not allow it"
        return
    kind = schema.get("type")
    if kind is not None:
        assert _TYPES[kind](value), f"{where}: {value!r} is not of type {kind}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "minimum" in schema:
        assert value >= schema["minimum"], f"{where}: {value!r} < {schema['minimum']}"
    if "maximum" in schema:
        assert value <= schema["maximum"], f"{where}: {value!r} > {schema['maximum']}"
    if "pattern" in schema:
        assert re.search(schema["pattern"], value), f"{where}: {value!r} does not match {schema['pattern']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing required property {key!r}"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                validate(doc, props[key], item, f"{where}.{key}")
            elif extra is False:
                raise AssertionError(f"{where}: unexpected property {key!r}")
            elif isinstance(extra, dict):
                validate(doc, extra, item, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(doc, schema["items"], item, f"{where}[{i}]")


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return json.loads(OPENAPI_FILE.read_text())


def doc_template(doc: dict[str, Any], path: str) -> str | None:
    """The documented path template matching a concrete path (literal segments win)."""
    segments = path.split("?")[0].split("/")
    best = None
    for template in doc["paths"]:
        parts = template.split("/")
        if len(parts) == len(segments) and all(p == s or (p.startswith("{") and s) for p, s in zip(parts, segments)):
            literal = sum(not p.startswith("{") for p in parts)
            if best is None or literal > best[0]:
                best = (literal, template)
    return None if best is None else best[1]


def check_against_openapi(doc: dict[str, Any], method: str, path: str, status: int, body: Any) -> None:
    """The status is documented for the operation and the body matches its schema."""
    template = doc_template(doc, path)
    operation = None if template is None else doc["paths"][template].get(method.lower())
    if operation is None:
        # Unknown path or method: only the generic error shape applies.
        assert status in (404, 405), f"{method} {path}: undocumented operation answered {status}"
        validate(doc, doc["components"]["schemas"]["Error"], body)
        return
    responses = operation["responses"]
    assert str(status) in responses, f"{method} {template}: status {status} is not documented ({sorted(responses)})"
    response = resolve(doc, responses[str(status)])
    content = response.get("content")
    if content is None:
        assert body is None, f"{method} {template} {status}: body {body!r} where none is documented"
        return
    validate(doc, content["application/json"]["schema"], body, f"{method} {template} {status}")


# --- clients ----------------------------------------------------------------------------


class Api:
    """Requests through the real socket; every answer is checked against openapi.json."""

    def __init__(self, daemon: Vswitchd, doc: dict[str, Any]) -> None:
        self.daemon, self.doc = daemon, doc

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, answer = self.daemon.api(method, path, body)
        check_against_openapi(self.doc, method, path, status, answer)
        if status >= 400:
            assert_error_body(answer)
        return status, answer

    def ok(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, answer = self(method, path, body)
        assert status == expect, f"{method} {path} -> {status} {answer}"
        return answer

    def snapshot(self) -> dict[str, Any]:
        """What an operator configured; counters, port state, learned entries (and their count)
        and measured usage move on their own."""
        moving = ("counters", "state", "macs", "usage")
        ports = [{k: v for k, v in p.items() if k not in moving} for p in self.ok("GET", "/v1/ports")]
        return {
            "networks": self.ok("GET", "/v1/networks"),
            "ports": ports,
            "peers": [(p["network"], p["remote"]) for p in self.ok("GET", "/v1/peers")],
            "static_fdb": [e for e in self.ok("GET", "/v1/fdb") if e["static"]],
        }


def assert_error_body(body: Any) -> None:
    assert isinstance(body, dict) and set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["detail"], str) and body["detail"] and "\n" not in body["detail"]


def raw_request(sock: Path, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], Any]:
    """Sends bytes as they are (for requests http.client will not produce) and parses the answer.
    A server that answers and closes before the whole request is sent (a body
    it refuses unread) cuts the send short; its answer is read all the same."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = http.client.HTTPResponse(s)
        resp.begin()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(body) if body else None


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def daemon(vswitchd_factory: Callable[..., Vswitchd]) -> Vswitchd:
    return vswitchd_factory(loopback_vtep_config())


@pytest.fixture
def api(daemon: Vswitchd, openapi: dict[str, Any]) -> Api:
    return Api(daemon, openapi)


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory, openapi: dict[str, Any], _stale_netns_swept: None) -> Iterator[tuple[Api, Netns]]:
    """One daemon shared by the bad-request cases (each checks it left the state unchanged):
    networks blue (VNI 100) and red, port c1 in blue, a peer and a static entry."""
    # Named apart from netns_factory's vst-<pid>-<n>, which other tests use meanwhile.
    ns = Netns(f"vst-{os.getpid()}-api")
    subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
    d = Vswitchd(tmp_path_factory.mktemp("populated"), config=loopback_vtep_config())
    try:
        ns.exec("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        d.start()
        a = Api(d, openapi)
        a.ok("POST", "/v1/networks", {"name": "blue", "vni": 100}, expect=201)
        a.ok("POST", "/v1/networks", {"name": "red"}, expect=201)
        a.ok("POST", "/v1/ports", {"name": "c1", "network": "blue", "netns": ns.name}, expect=201)
        a.ok("POST", "/v1/peers", {"network": "blue", "remote": "127.0.0.2"}, expect=201)
        a.ok("POST", "/v1/fdb", {"network": "blue", "mac": "02:00:00:00:00:09", "port": "c1"}, expect=201)
        yield a, ns
    finally:
        try:
            if d.running():
                d.stop()
        finally:
            d.kill()
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)


# --- resources --------------------------------------------------------------------------


def test_health(api: Api) -> None:
    doc = api.ok("GET", "/v1/health")
    assert doc["status"] == "ok"
    assert doc["loop"]["state"] == "running"
    assert doc["loop"]["io_mode"] in ("poll", "uring")
    # An idle loop still turns every 100 ms: it cannot be anywhere near its stall threshold.
    assert 0 <= doc["loop"]["last_turn_age_s"] < doc["loop"]["stall_after_s"]


def test_openapi_document_is_served_and_covers_every_route(api: Api, openapi: dict[str, Any]) -> None:
    served = api.ok("GET", "/v1/openapi.json")
    assert served == openapi
    assert served["openapi"].startswith("3.0.")
    for name in ("Network", "Port", "Peer", "FdbEntry", "Stats", "Error"):
        assert name in served["components"]["schemas"]
    expected = {
        ("get", "/v1/health"), ("get", "/v1/networks"), ("post", "/v1/networks"), ("get", "/v1/networks/{name}"),
        ("delete", "/v1/networks/{name}"), ("get", "/v1/ports"), ("post", "/v1/ports"), ("get", "/v1/ports/{name}"),
        ("delete", "/v1/ports/{name}"), ("get", "/v1/peers"), ("post", "/v1/peers"),
        ("delete", "/v1/peers/{network}/{remote}"), ("get", "/v1/fdb"), ("post", "/v1/fdb"),
        ("delete", "/v1/fdb/{network}/{mac}"), ("post", "/v1/fdb/flush"), ("get", "/v1/stats"), ("get", "/v1/openapi.json"),
        ("get", "/v1/ports/{name}/capture"), ("post", "/v1/trace"), ("patch", "/v1/ports/{name}"),
        ("get", "/v1/cluster"),
        ("get", "/v1/config"), ("post", "/v1/config"),
    }
    documented = {(m, p) for p, item in served["paths"].items() for m in item if m != "parameters"}
    assert documented == expected


def test_networks(api: Api) -> None:
    assert api.ok("GET", "/v1/networks") == []
    blue = api.ok("POST", "/v1/networks", {"name": "blue", "vni": 100}, expect=201)
    assert blue == {"name": "blue", "vni": 100, "ports": [], "peers": []}
    assert api.ok("POST", "/v1/networks", {"name": "red"}, expect=201)["vni"] is None
    assert sorted(n["name"] for n in api.ok("GET", "/v1/networks")) == ["blue", "red"]
    assert api.ok("GET", "/v1/networks/blue") == blue
    assert api("DELETE", "/v1/networks/blue") == (204, None)
    assert api("GET", "/v1/networks/blue")[0] == 404
    assert api("DELETE", "/v1/networks/blue")[0] == 404
    assert [n["name"] for n in api.ok("GET", "/v1/networks")] == ["red"]


def _addresses(ns: Netns, ifname: str) -> list[str]:
    out = ns.exec("ip", "-j", "addr", "show", "dev", ifname).stdout
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out) for a in link.get("addr_info", [])]


def test_ports(api: Api, netns_factory: NetnsFactory) -> None:
    ns = netns_factory()
    api.ok("POST", "/v1/networks", {"name": "blue"}, expect=201)
    spec = {"name": "c1", "network": "blue", "netns": ns.name, "ifname": "eth7",
            "mac": "02:00:00:00:00:01", "ip": "10.1.0.1/24", "mtu": 1400}
    port = api.ok("POST", "/v1/ports", spec, expect=201)
    assert {k: port[k] for k in spec} == spec
    link = ns.link("eth7")
    assert link is not None and link["address"] == "02:00:00:00:00:01" and link["mtu"] == 1400
    assert _addresses(ns, "eth7") == ["10.1.0.1/24"]

    second = api.ok("POST", "/v1/ports", {"name": "c2", "network": "blue", "netns": ns.name}, expect=201)
    assert second["ifname"] == "eth0" and second["ip"] is None
    assert re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", second["mac"])
    assert second["index"] != port["index"]

    got = api.ok("GET", "/v1/ports/c1")
    assert {k: got[k] for k in spec} == spec
    assert sorted(p["name"] for p in api.ok("GET", "/v1/ports")) == ["c1", "c2"]
    assert api.ok("GET", "/v1/networks/blue")["ports"] == ["c1", "c2"]

    assert api("DELETE", "/v1/ports/c1") == (204, None)
    wait_until(lambda: ns.link("eth7") is None, message="eth7 still in the namespace after DELETE")
    assert api("GET", "/v1/ports/c1")[0] == 404
    assert api.ok("GET", "/v1/networks/blue")["ports"] == ["c2"]


def test_peers(api: Api) -> None:
    api.ok("POST", "/v1/networks", {"name": "blue", "vni": 100}, expect=201)
    api.ok("POST", "/v1/networks", {"name": "green", "vni": 200}, expect=201)
    assert api.ok("POST", "/v1/peers", {"network": "blue", "remote": "127.0.0.2"}, expect=201) == {"network": "blue", "remote": "127.0.0.2"}
    api.ok("POST", "/v1/peers", {"network": "blue", "remote": "127.0.0.4"}, expect=201)
    api.ok("POST", "/v1/peers", {"network": "green", "remote": "127.0.0.3"}, expect=201)
    assert len(api.ok("GET", "/v1/peers")) == 3
    assert [(p["network"], p["remote"]) for p in api.ok("GET", "/v1/peers?network=green")] == [("green", "127.0.0.3")]
    assert api.ok("GET", "/v1/networks/blue")["peers"] == ["127.0.0.2", "127.0.0.4"]
    # Path parameters are percent-decoded.
    assert api("DELETE", "/v1/peers/blue/127%2E0%2E0%2E4") == (204, None)
    assert api("DELETE", "/v1/peers/blue/127.0.0.2") == (204, None)
    assert api("DELETE", "/v1/peers/blue/127.0.0.2")[0] == 404
    assert api.ok("GET", "/v1/peers?network=blue") == []


def test_fdb_static_entries_and_flush(api: Api, netns_factory: NetnsFactory) -> None:
    ns = netns_factory()
    api.ok("POST", "/v1/networks", {"name": "blue"}, expect=201)
    api.ok("POST", "/v1/ports", {"name": "c1", "network": "blue", "netns": ns.name}, expect=201)
    entry = {"network": "blue", "mac": "02:00:00:00:00:09", "port": "c1"}
    assert api.ok("POST", "/v1/fdb", {**entry, "mac": "02:00:00:00:00:09"}, expect=201) == entry
    listed = api.ok("GET", "/v1/fdb?network=blue&port=c1")
    assert [e for e in listed if e["static"]] == [{**entry, "peer": None, "static": True, "pinned": False, "age_s": None}]
    flushed = api.ok("POST", "/v1/fdb/flush", {})
    assert isinstance(flushed["flushed"], int)
    assert api.ok("POST", "/v1/fdb/flush", {"network": "blue", "port": "c1"}) == {"flushed": 0}
    # Flushing forgets learned entries only.
    assert [e["mac"] for e in api.ok("GET", "/v1/fdb") if e["static"]] == ["02:00:00:00:00:09"]
    assert api("DELETE", "/v1/fdb/blue/02:00:00:00:00:09") == (204, None)
    assert [e for e in api.ok("GET", "/v1/fdb") if e["static"]] == []
    assert api("DELETE", "/v1/fdb/blue/02:00:00:00:00:09")[0] == 404


def test_stats(api: Api, netns_factory: NetnsFactory) -> None:
    ns = netns_factory()
    api.ok("POST", "/v1/networks", {"name": "blue"}, expect=201)
    api.ok("POST", "/v1/ports", {"name": "c1", "network": "blue", "netns": ns.name}, expect=201)
    stats = api.ok("GET", "/v1/stats")
    assert list(stats["ports"]) == ["c1"]


def test_flush_accepts_an_empty_body(daemon: Vswitchd) -> None:
    status, _, body = raw_request(daemon.socket_path, b"POST /v1/fdb/flush HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert (status, body) == (200, {"flushed": 0})


def test_body_of_exactly_the_limit_is_accepted(api: Api) -> None:
    doc = b'{"name": "big"}'
    assert api("POST", "/v1/networks", doc + b" " * (MAX_BODY - len(doc)))[0] == 201
    big = b'{"name": "big2"}' + b" " * MAX_BODY
    status, _, body = raw_request(api.daemon.socket_path, b"POST /v1/networks HTTP/1.1\r\nHost: x\r\n"
                                  + f"Content-Length: {len(big)}\r\n\r\n".encode() + big)
    assert status == 413 and body["error"] == "payload_too_large"
    assert api("GET", "/v1/networks/big2")[0] == 404


# --- bad requests -----------------------------------------------------------------------

NS = "{ns}"  # replaced by the populated daemon's namespace
PORT_OK = {"name": "c9", "network": "blue", "netns": NS}

BAD_REQUESTS = [
    # (id, method, path, body, status, error kind)
    ("unknown-network", "POST", "/v1/ports", {**PORT_OK, "network": "nope"}, 404, "not_found"),
    ("duplicate-port", "POST", "/v1/ports", {**PORT_OK, "name": "c1"}, 409, "conflict"),
    ("duplicate-network", "POST", "/v1/networks", {"name": "blue"}, 409, "conflict"),
    ("duplicate-vni", "POST", "/v1/networks", {"name": "teal", "vni": 100}, 409, "conflict"),
    ("duplicate-peer", "POST", "/v1/peers", {"network": "blue", "remote": "127.0.0.2"}, 409, "conflict"),
    ("network-in-use", "DELETE", "/v1/networks/blue", None, 409, "conflict"),
    ("invalid-mac-port", "POST", "/v1/ports", {**PORT_OK, "mac": "02:00:00:00:00:zz"}, 400, "invalid_argument"),
    ("multicast-mac-port", "POST", "/v1/ports", {**PORT_OK, "mac": "01:00:5e:00:00:01"}, 400, "invalid_argument"),
    ("invalid-mac-fdb", "POST", "/v1/fdb", {"network": "blue", "mac": "nope", "port": "c1"}, 400, "invalid_argument"),
    ("invalid-mac-fdb-del", "DELETE", "/v1/fdb/blue/not-a-mac", None, 400, "invalid_argument"),
    ("cidr-without-prefix", "POST", "/v1/ports", {**PORT_OK, "ip": "10.1.0.1"}, 400, "invalid_argument"),
    ("invalid-cidr", "POST", "/v1/ports", {**PORT_OK, "ip": "10.1.0.300/24"}, 400, "invalid_argument"),
    ("missing-namespace", "POST", "/v1/ports", {**PORT_OK, "netns": "vst-no-such-ns"}, 400, "invalid_argument"),
    ("vni-as-string", "POST", "/v1/networks", {"name": "teal", "vni": "100"}, 400, "invalid_argument"),
    ("vni-out-of-range", "POST", "/v1/networks", {"name": "teal", "vni": 1 << 24}, 400, "invalid_argument"),
    ("name-as-number", "POST", "/v1/networks", {"name": 5}, 400, "invalid_argument"),
    ("mtu-as-bool", "POST", "/v1/ports", {**PORT_OK, "mtu": True}, 400, "invalid_argument"),
    ("invalid-remote", "POST", "/v1/peers", {"network": "blue", "remote": "300.1.1.1"}, 400, "invalid_argument"),
    ("ipv6-remote", "POST", "/v1/peers", {"network": "blue", "remote": "2001:db8::1"}, 400, "invalid_argument"),
    ("broadcast-remote", "POST", "/v1/peers", {"network": "blue", "remote": "255.255.255.255"}, 400, "invalid_argument"),
    ("unspecified-remote", "POST", "/v1/peers", {"network": "blue", "remote": "0.0.0.0"}, 400, "invalid_argument"),
    ("name-ending-in-newline", "POST", "/v1/networks", {"name": "teal\n"}, 400, "invalid_argument"),
    ("mac-ending-in-newline", "POST", "/v1/fdb", {"network": "blue", "mac": "02:00:00:00:00:77\n", "port": "c1"},
     400, "invalid_argument"),
    ("netns-with-nul", "POST", "/v1/ports", {**PORT_OK, "netns": "c1\u0000"}, 400, "invalid_argument"),
    ("netns-lone-surrogate", "POST", "/v1/ports", b'{"name": "c9", "network": "blue", "netns": "\\ud800"}', 400,
     "invalid_argument"),
    ("ifname-of-16-bytes", "POST", "/v1/ports", {**PORT_OK, "ifname": "\u00e9" * 8}, 400, "invalid_argument"),
    ("ifname-with-vertical-tab", "POST", "/v1/ports", {**PORT_OK, "ifname": "eth\u000b1"}, 400, "invalid_argument"),
    ("ifname-with-no-break-space", "POST", "/v1/ports", {**PORT_OK, "ifname": "eth\u00e01"}, 400, "invalid_argument"),
    ("duplicate-json-key", "POST", "/v1/networks", b'{"name": "teal", "name": "teal2"}', 400, "bad_request"),
    ("capture-count-of-5000-digits", "GET", "/v1/ports/c1/capture?count=" + "1" * 5000, None, 400, "invalid_argument"),
    ("missing-key", "POST", "/v1/ports", {"name": "c9", "network": "blue"}, 400, "invalid_argument"),
    ("unknown-key", "POST", "/v1/networks", {"name": "teal", "colour": "teal"}, 400, "invalid_argument"),
    ("body-is-array", "POST", "/v1/networks", [{"name": "teal"}], 400, "invalid_argument"),
    ("body-is-string", "POST", "/v1/networks", b'"teal"', 400, "invalid_argument"),
    ("body-is-null", "POST", "/v1/networks", b"null", 400, "invalid_argument"),
    ("empty-body", "POST", "/v1/networks", b"", 400, "invalid_argument"),
    ("malformed-json", "POST", "/v1/networks", b'{"name": "teal",', 400, "bad_request"),
    ("not-utf8", "POST", "/v1/networks", b'{"name": "\xff"}', 400, "bad_request"),
    ("deep-nesting", "POST", "/v1/networks", b"[" * 60000, 400, "bad_request"),
    ("flush-wrong-type", "POST", "/v1/fdb/flush", {"network": 3}, 400, "invalid_argument"),
    ("flush-unknown-key", "POST", "/v1/fdb/flush", {"vlan": 3}, 400, "invalid_argument"),
    ("flush-unknown-network", "POST", "/v1/fdb/flush", {"network": "nope"}, 404, "not_found"),
    ("unknown-query-parameter", "GET", "/v1/fdb?vlan=3", None, 400, "invalid_argument"),
    ("repeated-query-parameter", "GET", "/v1/fdb?network=blue&network=red", None, 400, "invalid_argument"),
    ("query-on-plain-route", "GET", "/v1/networks?name=blue", None, 400, "invalid_argument"),
    ("invalid-name-in-query", "GET", "/v1/peers?network=a%20b", None, 400, "invalid_argument"),
    ("unknown-network-in-query", "GET", "/v1/peers?network=nope", None, 404, "not_found"),
    ("unknown-port", "GET", "/v1/ports/nope", None, 404, "not_found"),
    ("delete-unknown-port", "DELETE", "/v1/ports/nope", None, 404, "not_found"),
    ("delete-unknown-peer", "DELETE", "/v1/peers/blue/127.0.0.99", None, 404, "not_found"),
    ("delete-peer-invalid-ip", "DELETE", "/v1/peers/blue/not-an-ip", None, 400, "invalid_argument"),
    ("unknown-path", "GET", "/v1/nope", None, 404, "not_found"),
    ("unknown-version", "GET", "/v2/networks", None, 404, "not_found"),
    ("path-too-deep", "GET", "/v1/networks/blue/ports", None, 404, "not_found"),
    ("trailing-slash", "GET", "/v1/networks/", None, 404, "not_found"),
    ("put-on-collection", "PUT", "/v1/networks", {"name": "teal"}, 405, "method_not_allowed"),
    ("post-on-item", "POST", "/v1/ports/c1", {"name": "c1"}, 405, "method_not_allowed"),
    ("delete-on-stats", "DELETE", "/v1/stats", None, 405, "method_not_allowed"),
    ("get-on-flush", "GET", "/v1/fdb/flush", None, 405, "method_not_allowed"),
    ("patch-on-network", "PATCH", "/v1/networks/blue", {"vni": 5}, 405, "method_not_allowed"),
]


def _fill(value: Any, ns: str) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, ns) for k, v in value.items()}
    return ns if value == NS else value


@pytest.mark.parametrize(("method", "path", "body", "status", "error"), [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS])
def test_bad_request_is_refused_and_changes_nothing(
    populated: tuple[Api, Netns], method: str, path: str, body: Any, status: int, error: str
) -> None:
    api, ns = populated
    before = api.snapshot()
    got_status, answer = api(method, path, _fill(body, ns.name))
    assert (got_status, answer["error"]) == (status, error), answer
    assert api.snapshot() == before
    assert ns.link("eth0") is not None  # c1's interface is untouched


def test_a_peer_past_the_datapaths_table_is_refused(vswitchd_factory: Callable[..., Vswitchd]) -> None:
    # Remotes on loopback: the floods of head-end replication stay on this machine.
    peers = "".join(f'[[peer]]\nnetwork = "blue"\nremote = "127.1.{i >> 8}.{i & 255}"\n' for i in range(1024))
    d = vswitchd_factory(loopback_vtep_config() + '[[network]]\nname = "blue"\nvni = 100\n' + peers)
    status, answer = d.api("POST", "/v1/peers", {"network": "blue", "remote": "127.2.0.1"})
    assert (status, answer["error"]) == (409, "conflict") and "1024" in answer["detail"], answer
    assert len(d.api("GET", "/v1/peers")[1]) == 1024
    assert d.api("POST", "/v1/networks", {"name": "red"})[0] == 201  # and the switch goes on


def test_error_details_name_the_field_and_value(populated: tuple[Api, Netns]) -> None:
    api, ns = populated
    _, answer = api("POST", "/v1/ports", {"name": "c9", "network": "blue", "netns": ns.name, "mac": "02:00:00:00:00:zz"})
    assert "mac" in answer["detail"] and "02:00:00:00:00:zz" in answer["detail"]
    _, answer = api("POST", "/v1/networks", {"name": "teal", "vni": "100"})
    assert "vni" in answer["detail"] and "'100'" in answer["detail"]
    _, answer = api("POST", "/v1/ports", {"name": "c9", "network": "blue", "netns": "vst-no-such-ns"})
    assert "vst-no-such-ns" in answer["detail"]


def test_wrong_method_lists_the_allowed_ones(populated: tuple[Api, Netns]) -> None:
    api, _ = populated
    for method, path, allow in [("PUT", "/v1/networks", "GET, POST"), ("GET", "/v1/fdb/flush", "POST"),
                                ("POST", "/v1/peers/blue/127.0.0.2", "DELETE")]:
        status, headers, body = raw_request(
            api.daemon.socket_path, f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
        )
        assert (status, headers.get("allow"), body["error"]) == (405, allow, "method_not_allowed")


def test_post_without_length_is_refused(populated: tuple[Api, Netns]) -> None:
    api, _ = populated
    before = api.snapshot()
    status, _, body = raw_request(api.daemon.socket_path, b"POST /v1/networks HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body["error"]) == (411, "length_required")
    status, _, body = raw_request(
        api.daemon.socket_path,
        b'POST /v1/networks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{"name": "teal"}\r\n0\r\n\r\n',
    )
    assert (status, body["error"]) == (411, "length_required")
    assert api.snapshot() == before


def test_oversized_body_is_refused_without_reading_it(populated: tuple[Api, Netns]) -> None:
    api, _ = populated
    before = api.snapshot()
    # Only the headers are sent: an answer proves the server did not wait for the body.
    head = f"POST /v1/networks HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode()
    status, headers, body = raw_request(api.daemon.socket_path, head)
    assert (status, body["error"]) == (413, "payload_too_large")
    assert headers.get("connection") == "close"
    assert str(MAX_BODY) in body["detail"]
    # Also when the client waits for 100 Continue first.
    status, _, body = raw_request(api.daemon.socket_path, head[:-2] + b"Expect: 100-continue\r\n\r\n")
    assert status == 413
    assert api.snapshot() == before


def test_garbage_request_line_gets_a_json_error(populated: tuple[Api, Netns]) -> None:
    api, _ = populated
    status, _, body = raw_request(api.daemon.socket_path, b"HELLO\r\n\r\n")
    assert status == 400
    assert_error_body(body)
    assert api.ok("GET", "/v1/health")["status"] == "ok"


def test_keep_alive_connection_serves_many_requests(populated: tuple[Api, Netns]) -> None:
    api, _ = populated
    conn = UnixHTTPConnection(api.daemon.socket_path, timeout=10)
    try:
        sock = None
        for path, status in [("/v1/health", 200), ("/v1/nope", 404), ("/v1/networks", 200), ("/v1/ports/nope", 404),
                             ("/v1/stats", 200)]:
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == status, path
            check_against_openapi(api.doc, "GET", path, resp.status, json.loads(resp.read()))
            # http.client reconnects quietly after a close: the socket must stay the same one.
            assert sock is None or conn.sock is sock, f"the connection was closed after the request before {path}"
            sock = conn.sock
    finally:
        conn.close()


def test_a_refused_request_body_is_read_so_the_connection_goes_on(populated: tuple[Api, Netns]) -> None:
    """A 404 or 405 is decided from the request line, but the body that came
    with it is still read: the client is not cut off while sending it, and
    the next request on the connection is served."""
    api, _ = populated
    conn = UnixHTTPConnection(api.daemon.socket_path, timeout=10)
    try:
        for method, path, status in [("POST", "/v1/ports/c1", 405), ("POST", "/v1/no-such-route", 404)]:
            conn.request(method, path, body=json.dumps({"name": "x" * 30000}).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == status and resp.getheader("Connection") != "close"
            resp.read()
            conn.request("GET", "/v1/health")
            resp = conn.getresponse()
            assert (resp.status, json.loads(resp.read())["status"]) == (200, "ok")
    finally:
        conn.close()


def test_requests_are_counted_by_route_template(populated: tuple[Api, Netns]) -> None:
    api, _ = populated
    for path in ["/v1/ports/nope-a", "/v1/ports/nope-b", "/v1/no-such-route"]:
        api("GET", path)
    with urllib.request.urlopen(f"http://127.0.0.1:{api.daemon.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("vswitch_api_requests")]
    assert any('path="/v1/ports/{name}"' in line and 'status="404"' in line for line in lines), lines
    assert not any("nope-a" in line or "no-such-route" in line for line in lines), lines


# --- concurrency ------------------------------------------------------------------------


def _client_session(api: Api, i: int, barrier: threading.Barrier) -> None:
    """One client: its own network, created, read back and deleted, mixed with shared reads."""
    name, vni = f"t{i}", 1000 + i
    barrier.wait(timeout=30)
    assert api.ok("GET", "/v1/health")["status"] == "ok"
    assert api.ok("POST", "/v1/networks", {"name": name, "vni": vni}, expect=201) == {"name": name, "vni": vni, "ports": [], "peers": []}
    assert api.ok("GET", f"/v1/networks/{name}")["vni"] == vni
    assert name in [n["name"] for n in api.ok("GET", "/v1/networks")]
    api.ok("GET", "/v1/stats")
    assert api("POST", "/v1/networks", {"name": name})[0] == 409
    assert api("DELETE", f"/v1/networks/{name}") == (204, None)
    assert api("GET", f"/v1/networks/{name}")[0] == 404


def test_fifty_concurrent_clients(api: Api) -> None:
    n = 50
    barrier = threading.Barrier(n)
    failures: list[str] = []

    def run(i: int) -> None:
        try:
            _client_session(api, i, barrier)
        except BaseException as e:  # reported below with the client's number
            failures.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not [t for t in threads if t.is_alive()], "clients still running after 120 s"
    assert failures == []
    assert api.ok("GET", "/v1/networks") == []


# --- the socket -------------------------------------------------------------------------


def test_socket_is_private(daemon: Vswitchd) -> None:
    st = os.lstat(daemon.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == 0


def test_socket_dir_is_created(vswitchd_factory: Callable[..., Vswitchd], tmp_path: Path) -> None:
    path = tmp_path / "run" / "vswitch" / "vs.sock"
    d = vswitchd_factory("", socket_path=path)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert d.api("GET", "/v1/health")[0] == 200


def test_second_daemon_on_the_same_socket_refuses(vswitchd_factory: Callable[..., Vswitchd], netns_factory: NetnsFactory) -> None:
    ns = netns_factory()
    first = vswitchd_factory('[[network]]\nname = "blue"\n')
    first.api("POST", "/v1/ports", {"name": "c1", "network": "blue", "netns": ns.name})
    second = vswitchd_factory("", start=False, socket_path=first.socket_path)
    second.start(wait=False)
    assert second.wait(timeout=30) != 0
    assert f"another vswitchd is serving {first.socket_path}" in second.stderr_text
    # The first one is unharmed: still serving, its port still there.
    assert first.api("GET", "/v1/ports/c1")[0] == 200
    assert ns.link("eth0") is not None
    assert stat.S_ISSOCK(os.lstat(first.socket_path).st_mode)


def test_stale_socket_is_replaced(vswitchd_factory: Callable[..., Vswitchd], tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))  # closed without unlink: a socket file nobody listens on
    d = vswitchd_factory("", socket_path=path)
    status, doc = d.api("GET", "/v1/health")
    assert (status, doc["status"]) == (200, "ok")
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert "removing stale API socket" in d.stderr_text


def test_a_file_in_the_sockets_place_is_not_replaced(vswitchd_factory: Callable[..., Vswitchd], tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    d = vswitchd_factory("", start=False, socket_path=path)
    d.start(wait=False)
    assert d.wait(timeout=30) != 0
    assert "is not a socket" in d.stderr_text
    assert path.read_text() == "precious"


def test_socket_is_removed_on_stop(vswitchd_factory: Callable[..., Vswitchd]) -> None:
    d = vswitchd_factory("")
    assert d.stop() == 0
    assert not d.socket_path.exists()


# --- restart ----------------------------------------------------------------------------


def _configure(api: Api, ns: Netns) -> None:
    api.ok("POST", "/v1/networks", {"name": "blue", "vni": 100}, expect=201)
    api.ok("POST", "/v1/networks", {"name": "red"}, expect=201)
    api.ok("POST", "/v1/ports", {"name": "c1", "network": "blue", "netns": ns.name, "mac": "02:00:00:00:00:01",
                                  "ip": "10.1.0.1/24"}, expect=201)
    api.ok("POST", "/v1/peers", {"network": "blue", "remote": "127.0.0.2"}, expect=201)
    api.ok("POST", "/v1/fdb", {"network": "blue", "mac": "02:00:00:00:00:09", "port": "c1"}, expect=201)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_state_survives_a_restart(api: Api, netns_factory: NetnsFactory, how: str) -> None:
    ns = netns_factory()
    _configure(api, ns)
    before = api.snapshot()
    if how == "sigterm":
        assert api.daemon.stop() == 0
    else:
        api.daemon.kill()
    api.daemon.start()
    assert api.snapshot() == before
    link = ns.link("eth0")
    assert link is not None and link["address"] == "02:00:00:00:00:01"


def test_a_restart_with_its_config_drops_a_port_whose_namespace_went_away(
        vswitchd_factory: Callable[..., Vswitchd], netns_factory: NetnsFactory) -> None:
    # A service unit passes --config on every start; the config only seeded the first.
    gone, kept = netns_factory(), netns_factory()
    config = '[[network]]\nname = "blue"\n' + "".join(
        f'[[port]]\nname = "{name}"\nnetwork = "blue"\nnetns = "{ns.name}"\n' for name, ns in (("c1", gone), ("c2", kept)))
    d = vswitchd_factory(config)
    assert sorted(p["name"] for p in d.ctl("port", "list")) == ["c1", "c2"]
    assert d.stop() == 0
    subprocess.run(["ip", "netns", "del", gone.name], check=True, capture_output=True, timeout=30)
    d.start()
    assert [p["name"] for p in d.ctl("port", "list")] == ["c2"]
    assert f"port c1 not restored: netns {gone.name} is gone" in d.run_stderr
    assert kept.link("eth0") is not None


def test_a_change_that_cannot_be_saved_is_in_effect_and_says_so(api: Api) -> None:
    state_file = api.daemon.state_dir / "state.json"
    api.ok("POST", "/v1/networks", {"name": "blue"}, expect=201)
    saved = state_file.read_text()
    state_file.unlink()
    (state_file / "in-the-way").mkdir(parents=True)  # a rename onto it fails, even for root
    try:
        status, answer = api("POST", "/v1/networks", {"name": "red"})
        assert (status, answer["error"]) == (500, "state_not_saved"), answer
        assert f"could not be saved to {state_file}" in answer["detail"]
        assert sorted(n["name"] for n in api.ok("GET", "/v1/networks")) == ["blue", "red"]
    finally:
        (state_file / "in-the-way").rmdir()
        state_file.rmdir()
    api.ok("POST", "/v1/networks", {"name": "green"}, expect=201)  # the next change saves them all
    assert [n["name"] for n in json.loads(state_file.read_text())["networks"]] == ["blue", "red", "green"]
    assert saved != state_file.read_text()


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{not json", "not valid JSON"), ('{"version": 99}', "version: 99 is not supported")],
    ids=["corrupt", "future-version"],
)
def test_unreadable_state_file_stops_the_daemon_and_is_kept(api: Api, content: str, expected: str) -> None:
    api.ok("POST", "/v1/networks", {"name": "blue"}, expect=201)
    d = api.daemon
    assert d.stop() == 0
    state_file = d.state_dir / "state.json"
    state_file.write_text(content)
    d.start(wait=False)
    assert d.wait(timeout=30) != 0
    assert f"state file {state_file}" in d.run_stderr and expected in d.run_stderr
    assert state_file.read_text() == content
    with pytest.raises(OSError):  # it never served
        d.api("GET", "/v1/health")

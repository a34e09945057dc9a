"""A small etcd v3 client over the JSON gateway (etcd3gw), spread over several endpoints.

etcd3gw gives one connection to one member. A cluster agent needs to go on
when a member dies, so every call here tries the member that last answered,
then the others. Watching is read from the gateway's stream directly: the
library's watcher runs callbacks in a pool and hides the end of the stream,
and the agent must know at once when its watch is gone in order to resync.
"""
from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception

from .clusterconfig import Endpoint

log = logging.getLogger("vswitch.etcd")

REQUEST_TIMEOUT_S = 2.0
WATCH_CONNECT_TIMEOUT_S = 2.0
API_PATH = "/v3/"  # etcd >= 3.4 serves the gateway under /v3/ (3.4 also keeps /v3beta/)


class EtcdUnavailable(Exception):
    """No endpoint answered (or the one that did failed mid-request)."""


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(data: str) -> str:
    return base64.b64decode(data).decode()


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (prefix ends in '/')."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass
class KeyValue:
    key: str
    value: str
    mod_revision: int
    lease: int


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(unb64(raw["key"]), unb64(raw.get("value", "")), int(raw.get("mod_revision", 0)),
                    int(raw.get("lease", 0)))


class EtcdPool:
    """Calls to whichever endpoint answers; thread-safe (one call at a time)."""

    def __init__(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.endpoints = endpoints
        self._clients = [Etcd3Client(e.host, e.port, e.scheme, timeout=REQUEST_TIMEOUT_S, api_path=API_PATH)
                         for e in endpoints]
        self._current = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> Endpoint:
        return self.endpoints[self._current]

    def in_order(self) -> list[Endpoint]:
        """Every endpoint, the last one that answered first."""
        n = len(self.endpoints)
        return [self.endpoints[(self._current + i) % n] for i in range(n)]

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST to the gateway, trying each endpoint once, starting with the last good one."""
        with self._lock:
            errors = []
            for step in range(len(self._clients)):
                i = (self._current + step) % len(self._clients)
                client = self._clients[i]
                try:
                    result = client.post(client.get_url(path), json=body)
                except (Etcd3Exception, requests.RequestException) as e:
                    # A member without quorum answers with an error, not silence: try the next one.
                    errors.append(f"{self.endpoints[i].url}: {type(e).__name__} {getattr(e, 'detail_text', '') or e}")
                    continue
                if i != self._current:
                    log.info("etcd: now using %s", self.endpoints[i].url)
                self._current = i
                return result
            raise EtcdUnavailable("; ".join(e.strip()[:200] for e in errors))

    # ---- KV ------------------------------------------------------------------------------

    def range_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """(store revision, every key under `prefix`), read at one revision."""
        r = self.post("kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        return int(r["header"]["revision"]), [_kv(kv) for kv in r.get("kvs", [])]

    def get(self, key: str) -> KeyValue | None:
        r = self.post("kv/range", {"key": b64(key)})
        kvs = r.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    def put(self, key: str, value: str, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = lease
        self.post("kv/put", body)

    def delete(self, key: str) -> None:
        self.post("kv/deleterange", {"key": b64(key)})

    def create_all(self, items: dict[str, str]) -> bool:
        """Put every key in one transaction if none of them exists yet; False if any does."""
        compare = [{"key": b64(k), "result": "EQUAL", "target": "CREATE", "create_revision": 0} for k in items]
        success = [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in items.items()]
        r = self.post("kv/txn", {"compare": compare, "success": success, "failure": []})
        return bool(r.get("succeeded", False))

    # ---- leases --------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self.post("lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """The lease's renewed TTL, or -1 if it has expired."""
        return int(self.post("lease/keepalive", {"ID": lease}).get("result", {}).get("TTL", -1))

    def time_to_live(self, lease: int) -> tuple[int, int]:
        """(seconds left, granted TTL); seconds left is -1 for an expired lease."""
        r = self.post("kv/lease/timetolive", {"ID": lease})
        return int(r.get("TTL", -1)), int(r.get("grantedTTL", 0))

    def revoke(self, lease: int) -> None:
        self.post("kv/lease/revoke", {"ID": lease})


class WatchCompacted(Exception):
    """The revision to watch from is gone: read everything again."""


class Watch:
    """A watch on every key under a prefix from a revision, on the first endpoint that takes it.

    Iterating yields (revision, events) per response, each event ("PUT" or
    "DELETE", KeyValue); it ends by raising EtcdUnavailable when the stream
    breaks, or WatchCompacted. close() from another thread ends it.
    """

    def __init__(self, pool: EtcdPool, prefix: str, start_revision: int) -> None:
        self._closed = threading.Event()
        self._resp: requests.Response | None = None
        self._session = requests.Session()
        body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                   "start_revision": start_revision}}
        errors = []
        for ep in pool.in_order():
            try:
                resp = self._session.post(ep.url + API_PATH + "watch", json=body, stream=True,
                                          timeout=(WATCH_CONNECT_TIMEOUT_S, None))
            except requests.RequestException as e:
                errors.append(f"{ep.url}: {e}")
                continue
            if resp.status_code != 200:
                errors.append(f"{ep.url}: HTTP {resp.status_code}")
                resp.close()
                continue
            self._resp = resp
            self.endpoint = ep
            return
        self._session.close()
        raise EtcdUnavailable("watch: " + "; ".join(errors))

    def __iter__(self) -> Iterator[tuple[int, list[tuple[str, KeyValue]]]]:
        assert self._resp is not None
        buf = b""
        try:
            for chunk in self._resp.iter_content(chunk_size=None):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield self._parse(json.loads(line))
        except (requests.RequestException, OSError, ValueError) as e:
            if not self._closed.is_set():
                raise EtcdUnavailable(f"watch on {self.endpoint.url} broke: {e}") from None
        raise EtcdUnavailable(f"watch on {self.endpoint.url} ended")

    def _parse(self, msg: dict[str, Any]) -> tuple[int, list[tuple[str, KeyValue]]]:
        if "error" in msg:
            raise EtcdUnavailable(f"watch on {self.endpoint.url}: {msg['error']}")
        result = msg.get("result", {})
        if int(result.get("compact_revision", 0)):
            raise WatchCompacted(f"compacted at revision {result['compact_revision']}")
        if result.get("canceled"):
            raise EtcdUnavailable(f"watch on {self.endpoint.url} was cancelled: {result.get('cancel_reason', '')}")
        revision = int(result.get("header", {}).get("revision", 0))
        events = [(e.get("type", "PUT"), _kv(e["kv"])) for e in result.get("events", [])]
        return revision, events

    def close(self) -> None:
        """End the stream now, from any thread: shutting the socket down wakes the reader."""
        self._closed.set()
        resp = self._resp
        if resp is not None:
            try:
                sock = socket.socket(fileno=resp.raw._fp.fp.raw._sock.fileno())  # type: ignore[union-attr]
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                finally:
                    sock.detach()
            except (AttributeError, OSError, ValueError):
                pass
            resp.close()
        self._session.close()

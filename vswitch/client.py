"""A small client for the control API on vswitchd's Unix socket."""
from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any, Iterator

DEFAULT_SOCKET = Path("/run/vswitch/vswitch.sock")


class ApiError(Exception):
    """The API answered with an error, or could not be reached (status 0)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix stream socket; the Host header says localhost."""

    def __init__(self, socket_path: str | Path, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(socket_path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    """One short-lived connection per request, so a Client is safe to share between threads."""

    def __init__(self, socket_path: str | Path = DEFAULT_SOCKET, timeout: float = 30.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded JSON answer (None for 204); ApiError for any status >= 400 or transport failure."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            try:
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                status, data = resp.status, resp.read()
            except TimeoutError:
                raise ApiError(0, "unreachable", f"vswitchd at {self.socket_path} did not answer within {self.timeout:g} s") from None
            except (OSError, http.client.HTTPException) as e:
                reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
                raise ApiError(0, "unreachable", f"cannot reach vswitchd at {self.socket_path}: {reason}") from None
        finally:
            conn.close()
        return _decode(status, data)

    def stream(self, path: str, idle_timeout: float | None = None, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        """GET a streamed resource (a capture): its body in chunks, as they arrive, until the server ends it.

        Errors as for request(). Connecting and the response's headers are
        bounded by the client's timeout; the body by idle_timeout between
        chunks (None: a stream may stay quiet for as long as nothing happens).
        """
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        resp = None
        limit = self.timeout
        try:
            try:
                conn.request("GET", path, headers={"Accept": "*/*"})
                sock = conn.sock  # getresponse() hands the socket over to the response
                resp = conn.getresponse()
                if resp.status >= 400:
                    _decode(resp.status, resp.read())
                limit = idle_timeout
                sock.settimeout(limit)
                # read1 returns what has arrived instead of waiting to fill the chunk.
                while chunk := resp.read1(chunk_size):
                    yield chunk
            except TimeoutError:
                raise ApiError(0, "unreachable", f"vswitchd at {self.socket_path} sent nothing for {limit:g} s") from None
            except (OSError, http.client.HTTPException) as e:
                reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
                raise ApiError(0, "unreachable", f"stream from vswitchd at {self.socket_path} failed: {reason}") from None
        finally:
            if resp is not None:
                resp.close()
            conn.close()


def _decode(status: int, data: bytes) -> Any:
    try:
        doc = json.loads(data) if data else None
    except ValueError:
        doc = None
        if status < 400:
            raise ApiError(status, "bad_response", f"vswitchd answered {status} with a body that is not JSON") from None
    if status < 400:
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("error"), str) and isinstance(doc.get("detail"), str):
        raise ApiError(status, doc["error"], doc["detail"])
    text = data.decode(errors="replace").strip().splitlines()
    raise ApiError(status, f"http_{status}", text[0] if text else f"HTTP status {status}")

"""The cluster settings: which etcd to join, under which prefix, as which node.

Kept apart from the etcd client so that parsing a config never imports it.
"""
from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError, InvalidArgument
from .model import check_int, check_keys, check_name

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "/vswitch"
DEFAULT_LEASE_TTL_S = 10
LEASE_TTL_RANGE = (2, 3600)  # keep-alives go every third of it: under 2 s that is below a second


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_endpoint(value: Any, where: str = "etcd") -> Endpoint:
    """An etcd client URL: http(s)://HOST[:PORT] (port 2379 by default), nothing after the port."""
    why = "is not an etcd client URL (http://HOST:PORT or https://HOST:PORT)"
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{where}: {value!r} {why}")
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError as e:
        raise InvalidArgument(f"{where}: {value!r} {why}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(f"{where}: {value!r} {why}")
    if parts.username or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidArgument(f"{where}: {value!r} {why}: no user, path or query is allowed")
    return Endpoint(parts.scheme, parts.hostname, port or DEFAULT_PORT)


def parse_endpoints(values: Any, where: str = "etcd") -> tuple[Endpoint, ...]:
    """A comma-separated string or a list of URLs; at least one, none twice."""
    if isinstance(values, str):
        values = values.split(",")
    if not isinstance(values, list) or not values:
        raise InvalidArgument(f"{where}: {values!r} is not a list of etcd URLs")
    endpoints: list[Endpoint] = []
    for i, v in enumerate(values):
        ep = parse_endpoint(v, f"{where}[{i}]")
        if ep in endpoints:
            raise InvalidArgument(f"{where}[{i}]: {v!r} is listed twice")
        endpoints.append(ep)
    return tuple(endpoints)


def check_prefix(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or value.endswith("/") or "//" in value \
            or not value.isprintable() or len(value) > 200:
        raise InvalidArgument(f"{where}: {value!r} is not a key prefix (starts with '/', no trailing '/', e.g. /vswitch)")
    return value


@dataclass(frozen=True)
class ClusterSettings:
    etcd: tuple[Endpoint, ...]
    prefix: str = DEFAULT_PREFIX
    node: str = ""
    lease_ttl_s: int = DEFAULT_LEASE_TTL_S

    @classmethod
    def parse(cls, data: dict[str, Any], where: str = "cluster") -> ClusterSettings:
        check_keys(where, data, {"etcd", "prefix", "node", "lease_ttl_s"}, {"etcd"})
        return cls(
            etcd=parse_endpoints(data["etcd"], f"{where}.etcd"),
            prefix=check_prefix(f"{where}.prefix", data.get("prefix", DEFAULT_PREFIX)),
            node=check_name(f"{where}.node", data.get("node", default_node())),
            lease_ttl_s=check_int(f"{where}.lease_ttl_s", data.get("lease_ttl_s", DEFAULT_LEASE_TTL_S), *LEASE_TTL_RANGE),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"etcd": [e.url for e in self.etcd], "prefix": self.prefix, "node": self.node,
                "lease_ttl_s": self.lease_ttl_s}


def default_node() -> str:
    """The hostname's first label: a node name must be a valid name."""
    return socket.gethostname().split(".")[0] or "localhost"


def load_cluster(config_path: str | Path | None, etcd_flag: str | None) -> ClusterSettings | None:
    """The [cluster] table of the config, with `--etcd` (if given) in place of its etcd list;
    None when neither asks for a cluster. Problems raise ConfigError naming the file or flag."""
    table: dict[str, Any] | None = None
    if config_path is not None:
        try:
            with open(config_path, "rb") as f:
                table = tomllib.load(f).get("cluster")
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{config_path}: cannot read config: {e}") from None
        if table is not None and not isinstance(table, dict):
            raise ConfigError(f"{config_path}: cluster: {table!r} is not a table (write [cluster])")
    if etcd_flag is not None:
        try:
            endpoints = parse_endpoints(etcd_flag, "--etcd")
        except InvalidArgument as e:
            raise ConfigError(str(e)) from None
        table = {**(table or {}), "etcd": [e.url for e in endpoints]}
    if table is None:
        return None
    try:
        return ClusterSettings.parse(table)
    except InvalidArgument as e:
        raise ConfigError(f"{config_path}: {e}") from None

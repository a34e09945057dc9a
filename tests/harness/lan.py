"""A port's namespace seen from inside, shared by the single-host traffic tests."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tests.harness.agent import Agent
from tests.harness.frames import has_token, marked_frame, new_token
from tests.harness.netns import Netns

IFNAME = "eth0"
BROADCAST = "ff:ff:ff:ff:ff:ff"


def port_mac(port: str) -> str:
    """The MAC the tests give port pN: 02:00:00:00:00:0N."""
    return f"02:00:00:00:00:{int(port[1:]):02x}"


@dataclass
class Host:
    """A port's namespace seen from inside: its interface, MAC and frame agent."""

    port: str
    network: str
    ns: Netns
    agent: Agent

    @property
    def mac(self) -> str:
        return port_mac(self.port)

    def frame(self, dst: str, token: str, **kw: Any) -> bytes:
        return marked_frame(kw.pop("src", self.mac), dst, token, **kw)

    def send(self, *frames: bytes) -> None:
        self.agent.send(IFNAME, list(frames))

    def wait(self, token: str, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        return self.agent.wait_frames(IFNAME, has_token(token), count=count, timeout=timeout)

    def seen(self, token: str) -> list[bytes]:
        return [f for f in self.agent.frames(IFNAME) if has_token(token)(f)]


class Lan:
    """Hosts on ports of one running vswitchd, by port name."""

    def __init__(self, daemon: Any, hosts: dict[str, Host]) -> None:
        self.daemon = daemon
        self.hosts = hosts

    def __getitem__(self, port: str) -> Host:
        return self.hosts[port]

    def fence(self, sender: Host) -> None:
        """Wait until a broadcast from sender has reached every other host of
        its network: any frame sender sent before it has then arrived there,
        or never will."""
        token = new_token("fence")
        sender.send(sender.frame(BROADCAST, token))
        for host in self.hosts.values():
            if host is not sender and host.network == sender.network:
                assert host.wait(token) != [], f"fence from {sender.port} never reached {host.port}"


def attached_host(port: str, network: str, ns: Netns, agent_factory: Callable[[Netns], Agent]) -> Host:
    """The host on a port of a ready daemon, sniffing its interface; a ready
    daemon has attached every TAP, so the interface is up with carrier."""
    assert ns.link_is_up(IFNAME), f"{IFNAME} of {port} is not up: {ns.link(IFNAME)}"
    agent = agent_factory(ns)
    agent.sniff_start(IFNAME)
    return Host(port, network, ns, agent)

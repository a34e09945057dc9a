"""Shared fixtures: namespaces, frame agents and vswitchd instances, all cleaned up."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

# `tests.harness` must import the same way here and in the agents, whichever
# way pytest was started.
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tests.harness.agent import Agent  # noqa: E402
from tests.harness.netns import Netns, NetnsFactory, remove_stale_netns  # noqa: E402

ROOT_SKIP_REASON = "needs root: network namespaces and /dev/net/tun"
DAEMON_STOP_TIMEOUT = 10.0
# The datapath's I/O modes. Modules marked io_modes run each test in both, so
# that the two cannot drift apart.
IO_MODES = ("poll", "uring")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "io_modes: run the test once per datapath I/O mode (poll, uring), through the io_mode fixture"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Only tests that run a datapath (through vswitchd_factory, lab or a
    # LoopRig fixture) depend on io_mode; the rest run once.
    if metafunc.definition.get_closest_marker("io_modes") and "io_mode" in metafunc.fixturenames:
        metafunc.parametrize("io_mode", IO_MODES, indirect=True)


@pytest.fixture
def io_mode(request: pytest.FixtureRequest) -> str | None:
    """The I/O mode of an io_modes test ("poll" or "uring"); None elsewhere: the daemon's default (auto)."""
    mode = getattr(request, "param", None)
    if mode == "uring":
        from fastpath import uring_unavailable

        why = uring_unavailable()
        if why is not None:
            pytest.skip(f"io_uring datapath unavailable: {why}")
    return mode


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason=ROOT_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _stale_netns_swept() -> None:
    # Namespaces of earlier runs that were killed before their teardown.
    remove_stale_netns()


@pytest.fixture
def netns_factory(_stale_netns_swept: None) -> Iterator[NetnsFactory]:
    """`netns_factory()` -> a new Netns (lo up, IPv6 off); all are deleted at teardown."""
    factory = NetnsFactory()
    yield factory
    factory.close()


@pytest.fixture
def agent_factory(netns_factory: NetnsFactory) -> Iterator[Callable[[Netns | str], Agent]]:
    """`agent_factory(ns)` -> a frame Agent running inside `ns`; closed at teardown.

    Depends on netns_factory so agents stop before their namespaces are deleted.
    """
    agents: list[Agent] = []

    def make(ns: Netns | str) -> Agent:
        agent = Agent(ns if isinstance(ns, str) else ns.name)
        agents.append(agent)
        return agent

    yield make
    for agent in reversed(agents):
        agent.close()


@pytest.fixture
def vswitchd_factory(netns_factory: NetnsFactory, tmp_path: Path, io_mode: str | None) -> Iterator[Callable[..., Any]]:
    """`vswitchd_factory(config_text, start=True, **kw)` -> a started Vswitchd; stopped at teardown.

    Daemons run in the test's io_mode unless kw names one. Depends on
    netns_factory so daemons release their TAPs before namespaces go.
    """
    from tests.harness.daemon import Vswitchd

    daemons: list[Vswitchd] = []

    def make(config_text: str, start: bool = True, **kw: Any) -> Vswitchd:
        # tmp_path stays short (pytest truncates test names), so the API
        # socket path below it fits in sun_path.
        workdir = tmp_path / f"vswitchd{len(daemons)}"
        workdir.mkdir()
        daemon = Vswitchd(workdir, config=config_text, **{"io_mode": io_mode, **kw})
        daemons.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    errors = []
    for daemon in reversed(daemons):
        try:
            if daemon.running():
                daemon.stop(signal.SIGTERM, timeout=DAEMON_STOP_TIMEOUT)
        except Exception as e:  # report a daemon that ignored SIGTERM, after stopping the rest
            errors.append(str(e))
        finally:
            daemon.kill()
    if errors:
        raise RuntimeError("; ".join(errors))

"""vswitchd: runs the switch in the foreground until SIGTERM or SIGINT.

Start-up order matters for containers: the API socket is claimed first (a
second vswitchd stops there, before touching anything), then the forwarding
loop starts, ports are attached (re-attached after a restart), and only then
are requests served, so anything that gets an answer sees a switch that
forwards.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import select
import signal
import sys
import threading
from pathlib import Path

from . import reconcile
from .api import ApiServer
from .config import load_config
from .errors import ConfigError, VswitchError
from .metrics import ApiRequestCounter, serve_metrics
from .model import IO_MODES, DesiredState, SwitchSettings
from .orphans import TapJournal, candidate_netns, remove_orphans, tap_mark
from .state import StateStore
from .switch import Switch

log = logging.getLogger("vswitch.daemon")

DEFAULT_SOCKET = "/run/vswitch/vswitch.sock"
DEFAULT_STATE_DIR = "/var/lib/vswitch"
DEFAULT_METRICS = "127.0.0.1:9477"


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vswitchd", description="Userspace virtual switch for containers.")
    p.add_argument("--config", type=Path, help="TOML config; seeds the state when the state dir has none, "
                   "gives the [switch] settings, and SIGHUP re-applies it")
    p.add_argument("--api-socket", type=Path, default=Path(DEFAULT_SOCKET), help=f"control API socket ({DEFAULT_SOCKET})")
    p.add_argument("--metrics", type=parse_hostport, default=parse_hostport(DEFAULT_METRICS),
                   help=f"Prometheus listen address HOST:PORT ({DEFAULT_METRICS}); port 0 picks a free one")
    p.add_argument("--state-dir", type=Path, default=Path(DEFAULT_STATE_DIR), help=f"where desired state is kept ({DEFAULT_STATE_DIR})")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--io-mode", choices=IO_MODES,
                   help="forwarding loop I/O: io_uring, epoll + read/write, or auto (io_uring where it works); "
                        "overrides [switch] io_mode (default: the config's, else auto)")
    return p


def preflight() -> str | None:
    """Why this process cannot run a switch, or None."""
    if os.geteuid() != 0:
        return "vswitchd must run as root: it creates TAP devices and enters network namespaces"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing: load the tun module (modprobe tun)"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    problem = preflight()
    if problem:
        log.error("%s", problem)
        return 1
    try:
        return run(args)
    except VswitchError as e:
        log.error("%s", e)
        return 1


class _Signals:
    """SIGTERM, SIGINT and SIGHUP for the main thread to wait on.

    The kernel may hand a process's signal to any of its threads, and a main
    thread blocked on a lock is then never woken to run the Python handler. So
    the main thread waits in select() on the wakeup fd, which the C-level
    handler writes to whichever thread took the signal; the handlers only
    record the signal (no locks: they run between the main thread's bytecodes).
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._stop = False
        self._hups = 0
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._record)

    def _record(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._hups += 1
        else:
            self._stop = True

    def wait(self) -> int:
        """SIGHUP once for any number that came since the last call, else SIGTERM when asked to stop."""
        while True:
            if self._stop:
                return signal.SIGTERM
            if self._hups:
                self._hups = 0
                return signal.SIGHUP
            select.select([self._r], [], [], 1.0)  # the timeout only as a backstop
            try:
                os.read(self._r, 4096)
            except BlockingIOError:
                pass

    def close(self) -> None:
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._r)
        os.close(self._w)


def reapply_config(path: Path | None, switch: Switch, store: StateStore, io_mode: str | None = None) -> None:
    """SIGHUP: make the switch match the config file again, as `vswitchctl apply` does.
    A file that cannot be read or checked changes nothing and is logged."""
    if path is None:
        log.warning("SIGHUP: vswitchd runs without --config; nothing to re-apply")
        return
    log.info("SIGHUP: re-applying %s", path)
    try:
        settings, state = load_config(path, check_netns=True)
        if io_mode is not None:  # --io-mode overrides the file, as it did at start
            settings = dataclasses.replace(settings, io_mode=io_mode)
        store.check_writable()
        result = reconcile.apply(switch, settings, state)
    except VswitchError as e:
        log.error("SIGHUP: %s", e)
        return
    for item in result["restart_needed"]:
        log.warning("SIGHUP: switch.%s = %r in %s needs a restart (running with %r)",
                    item["key"], item["file"], path, item["running"])
    log.info("SIGHUP: %s applied: %d changes", path, len(result["changes"]))


def run(args: argparse.Namespace) -> int:
    store = StateStore(args.state_dir)
    saved = store.load()
    # The config's networks and ports only seed an empty state dir, so only then must their
    # namespaces exist; on a restart the saved state rules, and a container that went away
    # while vswitchd was down loses its port with a warning instead of stopping the switch.
    settings, seed = (load_config(args.config, check_netns=saved is None) if args.config
                      else (SwitchSettings(), DesiredState()))
    if args.io_mode is not None:
        settings = dataclasses.replace(settings, io_mode=args.io_mode)
    api_requests = ApiRequestCounter()
    mark, journal = tap_mark(args.state_dir), TapJournal(store)
    earlier_namespaces = journal.load()
    switch = Switch(settings, on_change=store.save, tap_mark=mark, before_tap=journal.record)
    api = ApiServer(switch, args.api_socket, metrics_hook=api_requests, state_check=store.check_writable)
    api.bind()  # refuses to go on while another vswitchd answers on the socket

    signals = _Signals()
    metrics_server = None
    try:
        switch.start()
        if saved is not None:
            log.info("restoring state from %s", args.state_dir)
            switch.apply(saved, strict=False)
        else:
            switch.apply(seed, strict=True)
        # TAPs of changes a crash cut short, before the state held their ports.
        named = [*(p.netns for p in (saved or seed).ports), *earlier_namespaces]
        remove_orphans(mark, switch.port_interfaces(), candidate_netns(named))
        journal.reset()
        host, port = args.metrics
        try:
            metrics_server, bound = serve_metrics(switch, api_requests, host, port)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
        log.info("metrics on http://%s:%d/metrics", host, bound)
        api.start()
        log.info("vswitchd ready: %d networks, %d ports; API on %s",
                 len(switch.list_networks()), len(switch.list_ports()), args.api_socket)
        while signals.wait() == signal.SIGHUP:
            reapply_config(args.config, switch, store, args.io_mode)
        log.info("stopping")
    finally:
        # Each server's shutdown waits out its poll interval: wait for both at once.
        metrics_stop = threading.Thread(target=metrics_server.shutdown) if metrics_server else None
        if metrics_stop is not None:
            metrics_stop.start()
        api.close()
        switch.stop()
        if metrics_stop is not None:
            metrics_stop.join()
        signals.close()
    log.info("stopped")
    return 0

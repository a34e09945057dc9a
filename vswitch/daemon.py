"""vswitchd: runs the switch in the foreground until SIGTERM or SIGINT.

Start-up order matters for containers: the API socket is claimed first (a
second vswitchd stops there, before touching anything), then the forwarding
loop starts, ports are attached (re-attached after a restart), and only then
are requests served, so anything that gets an answer sees a switch that
forwards.

Under systemd (``Type=notify``) READY=1 is sent once the saved state is
restored and the loop turns, and WATCHDOG=1 only while the loop makes
progress. If the loop ends without being asked to, vswitchd logs why and
exits with status 70 so that the supervisor restarts it; the persistent TAPs
keep the containers' interfaces in place meanwhile.

Test hook: with ``VSWITCH_TEST_LOOP_FAILURE=ERRNO`` in the environment (a
number or a name such as EIO), SIGUSR2 makes the loop fail with that errno,
as if its wait had failed. Without the variable SIGUSR2 keeps its default.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import select
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, reconcile
from .allocator import keep_large_blocks_mapped
from .api import ApiServer
from .clusterconfig import load_cluster
from .config import load_config
from .errors import ConfigError, VswitchError
from .metrics import ApiRequestCounter, serve_metrics
from .model import IO_MODES, DesiredState, SwitchSettings
from .orphans import TapJournal, candidate_netns, remove_orphans, tap_mark
from .state import StateStore
from .switch import Switch
from .systemd import JournalFormatter, Notifier, Watchdog, stderr_is_journal

if TYPE_CHECKING:
    from .cluster import ClusterAgent

log = logging.getLogger("vswitch.daemon")

DEFAULT_SOCKET = "/run/vswitch/vswitch.sock"
DEFAULT_STATE_DIR = "/var/lib/vswitch"
DEFAULT_METRICS = "127.0.0.1:9477"
EXIT_LOOP_FAILED = 70  # EX_SOFTWARE: the forwarding loop died
FIRST_TURN_TIMEOUT_S = 10.0
TEST_LOOP_FAILURE_ENV = "VSWITCH_TEST_LOOP_FAILURE"
MEMDEBUG_ENV = "VSWITCH_MEMDEBUG"  # a directory: see memdebug.py


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vswitchd", description="Userspace virtual switch for containers.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    p.add_argument("--etcd", metavar="URL[,URL...]",
                   help="join the cluster kept in this etcd (client URLs); overrides [cluster] etcd")
    return p


def preflight() -> str | None:
    """Why this process cannot run a switch, or None."""
    if os.geteuid() != 0:
        return "vswitchd must run as root: it creates TAP devices and enters network namespaces"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing: load the tun module (modprobe tun)"
    return None


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter())  # journald adds the time and keeps the priority
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def loop_failure_hook_errno() -> int | None:
    """The errno of the test hook (see the module docstring), None when it is off."""
    value = os.environ.get(TEST_LOOP_FAILURE_ENV)
    if not value:
        return None
    err = int(value) if value.isdigit() else getattr(errno, value, None)
    if not isinstance(err, int) or err <= 0:
        raise ConfigError(f"{TEST_LOOP_FAILURE_ENV}={value!r} is not a positive errno number or name")
    return err


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
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

    def stop(self) -> None:
        """Make wait() return SIGTERM, as a signal would: from any thread (the forwarding loop's end)."""
        self._stop = True
        try:
            os.write(self._w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: wait() is awake already

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
    keep_large_blocks_mapped()  # first thing: see allocator.py
    failure_errno = loop_failure_hook_errno()
    cluster_settings = load_cluster(args.config, getattr(args, "etcd", None))
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
    agents: list[ClusterAgent] = []  # the cluster agent, once there is one: told of every saved change

    def on_change(state: DesiredState) -> None:
        store.save(state)
        for agent in agents:
            agent.local_changed()

    mark, journal = tap_mark(args.state_dir), TapJournal(store)
    earlier_namespaces = journal.load()
    switch = Switch(settings, on_change=on_change if cluster_settings is not None else store.save,
                    tap_mark=mark, before_tap=journal.record)
    api = ApiServer(switch, args.api_socket, metrics_hook=api_requests, state_check=store.check_writable)
    api.bind()  # refuses to go on while another vswitchd answers on the socket

    signals = _Signals()
    memdebug_dir = os.environ.get(MEMDEBUG_ENV)
    if memdebug_dir:
        from .memdebug import install  # a debugging aid: never imported unless asked for

        install(memdebug_dir)
    if failure_errno is not None:
        log.warning("test hook on: SIGUSR2 makes the forwarding loop fail with %s", errno.errorcode.get(failure_errno, failure_errno))
        signal.signal(signal.SIGUSR2, lambda *_: switch.inject_loop_failure(failure_errno))

    loop_failure: list[str] = []

    def loop_ended(error: str | None) -> None:
        if error is not None:
            loop_failure.append(error)
            signals.stop()

    notifier = Notifier()
    watchdog = Watchdog(notifier, lambda: switch.loop.healthy())
    metrics_server = None
    try:
        switch.start(on_loop_exit=loop_ended)
        if saved is not None:
            log.info("restoring state from %s", args.state_dir)
            switch.apply(saved, strict=False)
        else:
            switch.apply(seed, strict=True)
        # TAPs of changes a crash cut short, before the state held their ports.
        named = [*(p.netns for p in (saved or seed).ports if p.netns is not None), *earlier_namespaces]
        remove_orphans(mark, switch.port_interfaces(), candidate_netns(named))
        journal.reset()
        if cluster_settings is not None:
            from .cluster import ClusterAgent  # the etcd client is imported only by cluster nodes

            agent = ClusterAgent(switch, cluster_settings)
            switch.cluster = agent
            agents.append(agent)
            agent.start()
        host, port = args.metrics
        try:
            metrics_server, bound = serve_metrics(switch, api_requests, host, port)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
        log.info("metrics on http://%s:%d/metrics", host, bound)
        if not switch.loop.wait_turning(FIRST_TURN_TIMEOUT_S) and not switch.loop.ended:
            raise VswitchError(f"the forwarding loop did not start turning within {FIRST_TURN_TIMEOUT_S:g} s")
        api.start()
        summary = f"{len(switch.list_networks())} networks, {len(switch.list_ports())} ports"
        if not loop_failure:
            log.info("vswitchd ready: %s; API on %s", summary, args.api_socket)
            notifier.ready(f"forwarding: {summary}")
            if watchdog.start():
                log.info("systemd watchdog: a ping every %.3g s while the forwarding loop turns", notifier.watchdog_s / 2)
        while signals.wait() == signal.SIGHUP:
            reapply_config(args.config, switch, store, args.io_mode)
        watchdog.stop()  # no ping may follow STOPPING=1
        notifier.stopping()
        if loop_failure:
            log.error("exiting with status %d so that the service manager restarts vswitchd (ports stay in their "
                      "namespaces): %s", EXIT_LOOP_FAILED, loop_failure[0])
        else:
            log.info("stopping")
    finally:
        watchdog.stop()
        # Each server's shutdown waits out its poll interval: wait for both at once.
        metrics_stop = threading.Thread(target=metrics_server.shutdown) if metrics_server else None
        if metrics_stop is not None:
            metrics_stop.start()
        api.close()
        for agent in agents:
            agent.stop()
        switch.stop()
        if metrics_stop is not None:
            metrics_stop.join()
        notifier.close()
        signals.close()
    if loop_failure:
        return EXIT_LOOP_FAILED
    log.info("stopped")
    return 0

"""vswitchd as a process: refusals at start, clean stops on signals, its I/O mode."""
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.daemon import Vswitchd

ROOT = Path(__file__).resolve().parent.parent
URING_EVENTS = {"submits", "read_rearms", "buffer_ring_empty", "stale_completions", "write_errors",
                "batch_waits"}

# Runs sys.argv[1:] with io_uring_setup(2) failing with EPERM, as it does under
# the default seccomp profiles of Docker and containerd.
WITHOUT_IO_URING = textwrap.dedent("""
    import ctypes, os, struct, sys
    IO_URING_SETUP = 425  # the same number on every architecture
    # BPF_LD|BPF_W|BPF_ABS (offset 0: the syscall number), BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    LD_NR, JEQ, RET = 0x20, 0x15, 0x06
    ERRNO_EPERM, ALLOW = 0x00050001, 0x7FFF0000  # SECCOMP_RET_ERRNO | EPERM, SECCOMP_RET_ALLOW
    prog = [(LD_NR, 0, 0, 0), (JEQ, 0, 1, IO_URING_SETUP), (RET, 0, 0, ERRNO_EPERM), (RET, 0, 0, ALLOW)]
    insns = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
    fprog = ctypes.create_string_buffer(struct.pack("HP", len(prog), ctypes.addressof(insns)))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    if (libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            or libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0)):
        sys.exit(f"seccomp: {os.strerror(ctypes.get_errno())}")
    os.execv(sys.argv[1], sys.argv[1:])
""")


def run_daemon(tmp_path: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [*prefix, sys.executable, "-m", "vswitch", "--api-socket", str(tmp_path / "vs.sock"),
           "--state-dir", str(tmp_path / "state"), "--metrics", "127.0.0.1:0", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)


@pytest.mark.root
def test_refuses_to_run_without_root(tmp_path):
    tmp_path.chmod(0o777)
    r = run_daemon(tmp_path, prefix=("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"))
    assert r.returncode == 1
    assert "must run as root" in r.stderr


@pytest.mark.root
def test_refuses_to_run_without_dev_net_tun(tmp_path):
    # A private mount namespace where /dev/net is an empty tmpfs.
    script = f"mount -t tmpfs none /dev/net && exec {sys.executable} -m vswitch --state-dir {tmp_path}/s " \
             f"--api-socket {tmp_path}/vs.sock --metrics 127.0.0.1:0"
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "/dev/net/tun is missing" in r.stderr


@pytest.mark.root
@pytest.mark.parametrize(
    "config, message",
    [
        ('[switch]\nmac_aging = 5\n', "switch: unknown key 'mac_aging'"),
        ('[[network]]\nname = "b"\n[[port]]\nname = "p"\nnetwork = "b"\nnetns = "x"\nmac = "zz"\n', "port[0].mac: 'zz'"),
        ('[[network]]\nname = "b"\n[[port]]\nname = "p"\nnetwork = "b"\nnetns = "x"\nip = "10.0.0.1"\n', "port[0].ip: '10.0.0.1'"),
        ('[[port]]\nname = "p"\nnetwork = "red"\nnetns = "x"\n', "port[0].network: 'red'"),
        ('[[network]]\nname = "b"\n[[port]]\nname = "p"\nnetwork = "b"\nnetns = "vst-no-such-ns"\n', "vst-no-such-ns"),
        ("[switch\n", "line 1"),
    ],
)
def test_bad_config_is_refused_with_the_key_and_value(tmp_path, config, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(config)
    r = run_daemon(tmp_path, "--config", str(cfg))
    assert r.returncode == 1, r.stderr
    assert message in r.stderr
    assert not (tmp_path / "state" / "state.json").exists()


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_signal(tmp_path, sig):
    from tests.harness.daemon import Vswitchd

    d = Vswitchd(tmp_path, '[[network]]\nname = "blue"\n')
    d.start()
    assert d.stop(sig) == 0
    assert "stopped" in d.stderr_text
    assert not (tmp_path / "vs.sock").exists()


def test_bogus_io_mode_is_refused_by_the_argument_parser(tmp_path):
    r = run_daemon(tmp_path, "--io-mode", "bogus")
    assert r.returncode == 2
    assert "--io-mode: invalid choice: 'bogus'" in r.stderr


@pytest.mark.root
@pytest.mark.io_modes
def test_io_mode_flag_overrides_the_config_and_shows_in_show_and_the_metric(vswitchd_factory, io_mode):
    other = "uring" if io_mode == "poll" else "poll"
    d = vswitchd_factory(f'[switch]\nio_mode = "{other}"\n')
    assert d.ctl("show")["io_mode"] == io_mode
    assert f"datapath I/O mode: {io_mode}" in d.run_stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=10) as resp:
        families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    modes = {s.labels["mode"]: s.value for s in families["vswitch_datapath_io_mode"].samples}
    assert modes == {"poll": float(io_mode == "poll"), "uring": float(io_mode == "uring")}
    events = {s.labels["event"]: s.value for s in families["vswitch_uring_events"].samples}
    assert set(events) == URING_EVENTS
    if io_mode == "poll":
        assert set(events.values()) == {0}


class VswitchdWithoutIoUring(Vswitchd):
    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-c", WITHOUT_IO_URING, *super().argv]


FEW_FILES = 4096


class VswitchdWithFewFiles(Vswitchd):
    """A daemon whose RLIMIT_NOFILE is FEW_FILES, hard limit too (liburing raises the
    soft one as far as the hard one before it gives up), whatever this machine's is."""

    @property
    def argv(self) -> list[str]:
        return ["prlimit", f"--nofile={FEW_FILES}:{FEW_FILES}", "--", *super().argv]


def reason_without_io_uring() -> str:
    probe = "from fastpath import uring_unavailable; print(uring_unavailable())"
    r = subprocess.run([sys.executable, "-c", WITHOUT_IO_URING, sys.executable, "-c", probe],
                       cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    return r.stdout.strip()


@pytest.mark.root
def test_forced_uring_where_io_uring_is_blocked_is_refused_with_the_reason(tmp_path):
    reason = reason_without_io_uring()
    assert reason != "None"
    with VswitchdWithoutIoUring(tmp_path, "", io_mode="uring") as d:
        d.start(wait=False)
        assert d.wait() == 1
    errors = [line for line in d.stderr_text.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "io_mode 'uring'" in errors[0] and reason in errors[0], d.stderr_text
    assert "Traceback" not in d.stderr_text
    assert not d.socket_path.exists()


@pytest.mark.root
def test_auto_falls_back_to_poll_where_io_uring_is_blocked_and_says_why(tmp_path):
    reason = reason_without_io_uring()
    with VswitchdWithoutIoUring(tmp_path, '[switch]\nio_mode = "auto"\n') as d:
        d.start()
        assert d.ctl("show")["io_mode"] == "poll"
        log = d.run_stderr
    assert log.count(f"io_uring datapath unavailable ({reason}); using poll") == 1
    assert log.count("datapath I/O mode: poll") == 1


@pytest.mark.root
def test_a_ring_that_cannot_be_set_up_falls_back_in_auto_and_is_refused_when_forced(tmp_path):
    """io_uring works here, but a fixed-file table of max_ports beyond
    RLIMIT_NOFILE cannot be registered: auto says so and uses poll, a forced
    uring refuses to start with the reason."""
    config = f"[switch]\nmax_ports = {FEW_FILES + 1}\n"
    (tmp_path / "auto").mkdir()
    (tmp_path / "forced").mkdir()
    with VswitchdWithFewFiles(tmp_path / "auto", config, io_mode="auto") as d:
        d.start()
        assert d.ctl("show")["io_mode"] == "poll"
        assert "io_uring datapath unavailable (" in d.run_stderr and "Too many open files" in d.run_stderr
    with VswitchdWithFewFiles(tmp_path / "forced", config, io_mode="uring") as d:
        d.start(wait=False)
        assert d.wait() == 1
    errors = [line for line in d.stderr_text.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "io_mode 'uring'" in errors[0] and "Too many open files" in errors[0], d.stderr_text

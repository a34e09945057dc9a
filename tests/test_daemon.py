"""vswitchd as a process: refusals at start, clean stops on signals."""
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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

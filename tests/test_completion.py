"""Bash completion for vswitchctl: the generated script, run by a real bash."""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from vswitch.cli import COMMANDS
from vswitch.completion import bash_script

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "vswitchctl"
    path.write_text(bash_script())
    return path


def complete(script: Path, *words: str) -> list[str]:
    """What bash offers for the command line `vswitchctl WORDS...` (the last word is the one being completed)."""
    line = " ".join(shlex.quote(w) for w in ("vswitchctl", *words))
    program = (f"source {shlex.quote(str(script))}\n"
               f"COMP_WORDS=({line}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n"
               '_vswitchctl; printf "%s\\n" "${COMPREPLY[@]}"\n')
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [w for w in proc.stdout.splitlines() if w]


def test_script_is_valid_bash_and_registers_the_function(script: Path) -> None:
    proc = subprocess.run(["bash", "--norc", "-c", f"source {shlex.quote(str(script))}; complete -p vswitchctl"],
                          capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stdout.strip()) == (0, "complete -F _vswitchctl vswitchctl")


def test_first_word_offers_every_command(script: Path) -> None:
    offered = complete(script, "")
    assert offered[:11] == ["show", "network", "port", "peer", "fdb", "cluster", "stats", "trace", "apply", "export",
                           "capture"]
    assert {c.words[0] for c in COMMANDS} <= set(offered)
    assert {"--socket", "--json", "--version"} <= set(offered)
    assert complete(script, "p") == ["port", "peer"]


def test_each_group_offers_its_verbs(script: Path) -> None:
    assert complete(script, "port", "") == ["add", "set", "show", "del", "list", "--socket", "--json", "--help"]
    for group in {c.words[0] for c in COMMANDS if len(c.words) > 1}:
        verbs = [c.words[1] for c in COMMANDS if c.words[0] == group]
        assert complete(script, group, "")[: len(verbs)] == verbs
    # Global options before the command do not count as words.
    assert complete(script, "--json", "--socket", "/tmp/x.sock", "fdb", "f") == ["flush"]


def test_each_command_offers_its_options(script: Path) -> None:
    assert complete(script, "port", "add", "c1", "--n") == ["--network", "--native", "--netns"]
    for cmd in COMMANDS:
        wanted = {n for a in cmd.args if a.name.startswith("-") for n in (a.name, *a.aliases)}
        assert wanted | {"--json", "--socket"} <= set(complete(script, *cmd.words, "-")), cmd.words


def test_option_values(script: Path, tmp_path: Path) -> None:
    assert complete(script, "capture", "c1", "--direction", "") == ["in", "out", "both"]
    assert complete(script, "port", "add", "c1", "--network", "") == []  # the user's own name
    sock = tmp_path / "vswitch.sock"
    sock.touch()
    assert complete(script, "--socket", str(tmp_path / "vsw")) == [str(sock)]

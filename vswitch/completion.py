"""Bash completion for vswitchctl, generated from its command table.

``python -m vswitch.completion`` prints the script; ``make install`` writes it
where bash-completion finds it. Because it comes from COMMANDS, a new verb or
option completes without touching this file.
"""
from __future__ import annotations

import sys
from typing import Iterable

from vswitch.cli import COMMANDS, PROG, Command

GLOBAL_OPTIONS = ("--socket", "--json", "--help")
TOP_OPTIONS = (*GLOBAL_OPTIONS, "--version")
# Options whose value is a file name.
FILE_OPTIONS = ("--socket", "-w", "--write")


def _options(cmd: Command) -> list[str]:
    names: list[str] = []
    for arg in cmd.args:
        if arg.name.startswith("-"):
            names += [arg.name, *arg.aliases]
    return [*names, *GLOBAL_OPTIONS]


def _words(items: Iterable[str]) -> str:
    return " ".join(dict.fromkeys(items))


def bash_script(commands: tuple[Command, ...] = COMMANDS) -> str:
    groups = list(dict.fromkeys(c.words[0] for c in commands))
    nested = [g for g in groups if any(len(c.words) > 1 and c.words[0] == g for c in commands)]
    value_options = ["--socket"]
    choices: dict[str, tuple[str, ...]] = {}
    for cmd in commands:
        for arg in cmd.args:
            if arg.name.startswith("-"):
                value_options += [arg.name, *arg.aliases]
                if arg.choices:
                    for name in (arg.name, *arg.aliases):
                        choices[name] = arg.choices
    plain_values = [o for o in dict.fromkeys(value_options) if o not in FILE_OPTIONS and o not in choices]

    lines = [
        f"# bash completion for {PROG}, generated from its command table (python -m vswitch.completion)",
        f"_{PROG}() {{",
        '    local cur=${COMP_WORDS[COMP_CWORD]} prev=""',
        "    (( COMP_CWORD > 0 )) && prev=${COMP_WORDS[COMP_CWORD-1]}",
        "    local i w group='' verb=''",
        "    for (( i = 1; i < COMP_CWORD; i++ )); do",
        "        w=${COMP_WORDS[i]}",
        "        case $w in",
        f"            {'|'.join(dict.fromkeys(value_options))}) (( i++ )) ;;",
        "            -*) ;;",
        "            *)",
        "                if [[ -z $group ]]; then group=$w",
        f"                elif [[ -z $verb ]] && [[ \" {' '.join(nested)} \" == *\" $group \"* ]]; then verb=$w",
        "                fi ;;",
        "        esac",
        "    done",
        "    case $prev in",
        f"        {'|'.join(FILE_OPTIONS)}) COMPREPLY=( $(compgen -f -- \"$cur\") ); return 0 ;;",
    ]
    for name, values in choices.items():
        lines.append(f"        {name}) COMPREPLY=( $(compgen -W \"{_words(values)}\" -- \"$cur\") ); return 0 ;;")
    if plain_values:
        lines.append(f"        {'|'.join(plain_values)}) COMPREPLY=(); return 0 ;;  # a value of the user's own")
    lines += [
        "    esac",
        "    local words",
        '    case "$group $verb" in',
        f'        " ") words="{_words([*groups, *TOP_OPTIONS])}" ;;',
    ]
    for group in nested:
        verbs = [c.words[1] for c in commands if c.words[0] == group and len(c.words) > 1]
        lines.append(f'        "{group} ") words="{_words([*verbs, *GLOBAL_OPTIONS])}" ;;')
    for cmd in commands:
        key = f"{cmd.words[0]} {cmd.words[1] if len(cmd.words) > 1 else ''}"
        lines.append(f'        "{key}") words="{_words(_options(cmd))}" ;;')
    lines += [
        '        *) words="" ;;',
        "    esac",
        '    COMPREPLY=( $(compgen -W "$words" -- "$cur") )',
        "}",
        f"complete -F _{PROG} {PROG}",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    sys.stdout.write(bash_script())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run one fuzz target under atheris (libFuzzer):

    run.py TARGET [libFuzzer options] [CORPUS_DIR ...]

`make fuzz` runs every target this way on the fuzzing build of fastpath,
with atheris's ASan+libFuzzer runtime preloaded (tests/fuzz/fuzz.sh).
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The targets' own Python is not instrumented: the C inside the extensions
# is (make fuzz-build), and its branches are what the fuzzer should chase.
import targets  # noqa: E402


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: run.py {{{','.join(targets.TARGETS)}}} [libFuzzer options] [corpus dirs]")
    target = targets.TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0]] + sys.argv[2:], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

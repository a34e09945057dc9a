"""Builds fastpath's Cython extensions.

Set VSWITCH_DEBUG=1 for a debug build: bounds checks on, asserts on, -O0 -g
and AddressSanitizer/UBSan, so the parser can be exercised under sanitizers.
Set VSWITCH_FUZZ=1 (with CC=clang) for the fuzzing build: the same checks,
plus libFuzzer's coverage instrumentation (-fsanitize=fuzzer-no-link), so a
coverage-guided fuzzer sees the branches taken inside the extensions.
Set VSWITCH_COVERAGE=1 (with CC=clang) for source-based coverage
(llvm-cov) of what the fuzz corpora reach; no sanitizers.
"""
import os
import sys

from setuptools import Extension, setup

CYTHON_VERSION = "3.3.1"

try:
    import Cython
    from Cython.Build import cythonize
except ImportError:  # fail loud: there is no pure-Python fallback
    sys.exit(f"vswitch needs Cython=={CYTHON_VERSION} to build fastpath")
if Cython.__version__ != CYTHON_VERSION:
    sys.exit(f"vswitch pins Cython=={CYTHON_VERSION}, found {Cython.__version__}")

FUZZ = os.environ.get("VSWITCH_FUZZ") == "1"
COVERAGE = os.environ.get("VSWITCH_COVERAGE") == "1"
DEBUG = os.environ.get("VSWITCH_DEBUG") == "1" or FUZZ or COVERAGE

# Cython-generated code trips -Wsign-compare in its own loops; the rest of -Wall stays on.
compile_args = ["-Wall", "-Wno-unused-function", "-Wno-unreachable-code", "-Wno-sign-compare"]
link_args: list[str] = []
directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
# The sanitizers of the debug build, which the fuzzing build also has: one list,
# so that fuzzing runs on the checks `make debug` names.
SANITIZERS = "address,undefined"
if FUZZ:
    # The debug build's directives and sanitizers, compiled by clang (atheris's
    # runtime is clang's ASan with libFuzzer; gcc's instrumentation cannot
    # load beside it) with libFuzzer's coverage, so the fuzzer sees the C
    # branches. -O1, not -O0, as libFuzzer and AddressSanitizer advise "to get
    # a reasonable performance" (a load whose value goes unused may go, and
    # its check with it). Any UBSan report aborts,
    # so the fuzzer keeps the input that caused it.
    sanitizers = f"-fsanitize=fuzzer-no-link,{SANITIZERS}"
    compile_args += ["-fno-sanitize-recover=undefined"]
    compile_args += ["-O1", "-g", sanitizers, "-fno-omit-frame-pointer", "-Wno-unknown-warning-option"]
    link_args += [sanitizers]
elif COVERAGE:
    compile_args += ["-O0", "-g", "-fprofile-instr-generate", "-fcoverage-mapping"]
    link_args += ["-fprofile-instr-generate"]
elif DEBUG:
    compile_args += ["-O0", "-g", f"-fsanitize={SANITIZERS}", "-fno-omit-frame-pointer"]
    link_args += [f"-fsanitize={SANITIZERS}"]
else:
    compile_args += ["-O2"]

MODULES = ["mactable", "csum", "frame", "vxlan", "gso", "gro", "datapath"]

# The loop's io_uring mode uses liburing (Debian: liburing-dev). It is linked
# statically: the built extension then runs wherever the kernel has io_uring,
# and falls back to poll mode where it has not, with no library to install.
LINK_EXTRA = {"datapath": ["-l:liburing.a"]}

extensions = [
    Extension(
        f"fastpath.{name}",
        [f"fastpath/{name}.pyx"],
        extra_compile_args=compile_args,
        extra_link_args=link_args + LINK_EXTRA.get(name, []),
        define_macros=[("VSWITCH_DEBUG", "1" if DEBUG else "0")],
    )
    for name in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=False,
        force=DEBUG,
    ),
)

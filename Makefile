# Build, test and demo entry points. Every target works as root on a fresh
# Debian 12 machine: it installs what it needs and skips what is already done.

PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
PIP := $(VENV_PY) -m pip
BUILD := build

# The one test command: README and .ci/run go through `make test` to reach it.
PYTEST := $(VENV_PY) -m pytest -q -ra -p no:cacheprovider

# Debian packages the build, the tests and the demo use: liburing for the
# loop's io_uring mode (linked statically), ping, captures, and the reference
# switches and Prometheus that later tests compare against.
DEB_PACKAGES := liburing-dev iproute2 iputils-ping ethtool tcpdump tshark prometheus openvswitch-switch

EXT_SOURCES := $(wildcard fastpath/*.pyx fastpath/*.pxd fastpath/*.pxi fastpath/*.h)
# C files that cythonize writes beside each .pyx; their directives differ
# between release and debug builds, so a mode switch must regenerate them.
GENERATED_C := $(patsubst %.pyx,%.c,$(wildcard fastpath/*.pyx))

APT_STAMP := $(BUILD)/apt-updated.stamp
VENV_CFG := $(VENV)/pyvenv.cfg
REQ_STAMP := $(VENV)/requirements.stamp
EDITABLE_STAMP := $(VENV)/editable.stamp
EXT_STAMP := $(BUILD)/ext-release.stamp
MODE_FILE := $(BUILD)/ext-mode

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: deps build debug test demo demo-vxlan clean distclean

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -qx 'install ok installed' || echo $$p; \
	done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then echo "make deps: root is needed to install:" $$missing >&2; exit 1; fi; \
	mkdir -p $(BUILD); \
	export DEBIAN_FRONTEND=noninteractive; \
	echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections; \
	apt_get() { apt-get -o DPkg::Lock::Timeout=600 -q "$$@"; }; \
	if [ ! -f $(APT_STAMP) ]; then apt_get update && touch $(APT_STAMP); fi; \
	echo "make deps: installing" $$missing; \
	apt_get install -y --no-install-recommends $$missing \
		|| { echo "make deps: retrying after refreshing the package lists"; \
		     apt_get update && touch $(APT_STAMP) && apt_get install -y --no-install-recommends $$missing; }

$(VENV_CFG):
	$(PYTHON) -m venv $(VENV)

$(REQ_STAMP): requirements.txt | $(VENV_CFG)
	$(PIP) install -q -r requirements.txt
	touch $@

# The editable install compiles the extensions (release) and copies them into
# fastpath/; it is redone only when the packaging files change.
$(EDITABLE_STAMP): $(REQ_STAMP) pyproject.toml setup.py
	mkdir -p $(BUILD)
	rm -f $(GENERATED_C)
	$(PIP) install -q --no-build-isolation -e .
	echo release > $(MODE_FILE)
	touch $@

# After a .pyx/.pxd/.pxi edit, build_ext recompiles only the modules whose C
# changed. It cannot see a hand-written header or a debug build in place, so
# those force a full rebuild.
$(EXT_STAMP): $(EDITABLE_STAMP) $(EXT_SOURCES)
	@mkdir -p $(BUILD); force=; \
	if [ "$$(cat $(MODE_FILE) 2>/dev/null)" != release ]; then rm -f $(GENERATED_C); force=--force; fi; \
	if [ -n "$(filter %.h,$?)" ]; then force=--force; fi; \
	echo "$(VENV_PY) setup.py -q build_ext --inplace $$force"; \
	$(VENV_PY) setup.py -q build_ext --inplace $$force
	echo release > $(MODE_FILE)
	touch $@

build: deps $(EXT_STAMP)
	cd / && $(abspath $(VENV_PY)) -c 'import fastpath.datapath, vswitch'

# AddressSanitizer must be the first library loaded, so importing a debug
# build needs its runtime preloaded (leak checks off: CPython itself "leaks").
ASAN_RUNTIME = $(shell gcc -print-file-name=libasan.so)

debug: $(EDITABLE_STAMP)
	mkdir -p $(BUILD)
	VSWITCH_DEBUG=1 $(VENV_PY) setup.py -q build_ext --inplace --force
	echo debug > $(MODE_FILE)
	rm -f $(EXT_STAMP)
	cd / && LD_PRELOAD=$(ASAN_RUNTIME) ASAN_OPTIONS=detect_leaks=0 \
		$(abspath $(VENV_PY)) -c 'import fastpath.datapath, vswitch'

test: deps build
	$(PYTEST) tests

demo: deps build
	bash tools/demo.sh

demo-vxlan: deps build
	bash tools/demo_vxlan.sh

clean:
	rm -rf $(BUILD) *.egg-info fastpath/*.so $(GENERATED_C) fastpath/*.html
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .hypothesis

# Benchmarks side by side with the Linux bridge and Open vSwitch (bench/run.py,
# ~10 minutes, as root): it apt-get installs iperf3, iputils-ping and
# openvswitch-switch itself; the plotting libraries go into the venv.
BENCH_REQ_STAMP := $(VENV)/bench-requirements.stamp

$(BENCH_REQ_STAMP): bench/requirements.txt | $(VENV_CFG)
	$(PIP) install -q -r bench/requirements.txt
	touch $@

.PHONY: bench
bench: build $(BENCH_REQ_STAMP)
	$(VENV_PY) bench/run.py

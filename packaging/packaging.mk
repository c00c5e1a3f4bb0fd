# Packaging: `make deb` (Debian 12 bookworm and 13 trixie; `make deb SUITE=trixie` builds one) and `make rpm`
# (Amazon Linux 2023 / RHEL 9, Python 3.9).
# Included by the main Makefile; paths are relative to the repository root.
#
# Both packages build offline from wheels that `pip download --require-hashes` fetched beforehand from the
# committed lock files (packaging/debian/requirements.lock, packaging/rpm/requirements.lock); `make
# packaging-lock` re-resolves those. Every tool runs in a clean environment (`env -i`), so neither pyenv shims
# nor the host's pip configuration leak into a build. Outputs: dist/*.deb, dist/*.rpm; scratch: build/packaging.

PKG := etcd-aws-cluster
PKG_BUILD := build/packaging
PKG_DIST := dist
PKG_VERSION := $(shell sed -n '/^\[project\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml)
PKG_DEB_REVISION ?= 1
PKG_RPM_RELEASE ?= 1
PKG_MAINTAINER ?= etcd-aws-cluster maintainers <etcd-aws-cluster@example.org>
# Build dates come from the last commit, so rebuilding the same commit gives the same changelog and timestamps.
PKG_EPOCH := $(shell git log -1 --format=%ct 2>/dev/null || date +%s)

PKG_DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
PKG_RPM_ARCH ?= $(shell uname -m)
pkg_machine = $(if $(filter amd64,$(1)),x86_64,$(if $(filter arm64,$(1)),aarch64,$(1)))
PKG_DEB_MACHINE := $(call pkg_machine,$(PKG_DEB_ARCH))
# One .deb per Debian suite, from the same packaging/debian: bookworm's bundles the pydantic-2 stack (cp311,
# Architecture: any), trixie's uses Debian's packages only (Architecture: all). The version carries Debian's
# usual ~debNN suffix, so a Debian 12 -> 13 upgrade replaces the bookworm build with the trixie one.
PKG_DEB_SUITES := bookworm trixie
SUITE ?= $(PKG_DEB_SUITES)
pkg_deb_release = $(if $(filter bookworm,$(1)),12,$(if $(filter trixie,$(1)),13,$(error unknown Debian suite $(1))))
pkg_deb_arch = $(if $(filter bookworm,$(1)),$(PKG_DEB_ARCH),all)
pkg_deb_version = $(PKG_VERSION)-$(PKG_DEB_REVISION)~deb$(call pkg_deb_release,$(1))
pkg_deb_file = $(PKG_DIST)/$(PKG)_$(call pkg_deb_version,$(1))_$(call pkg_deb_arch,$(1)).deb
PKG_DEB_FILES := $(foreach s,$(SUITE),$(call pkg_deb_file,$(s)))
# the build host's suite, for the tests and boot-test that need "the" .deb of this machine
PKG_DEB_FILE := $(call pkg_deb_file,bookworm)
PKG_DEB_FILE_BOOKWORM := $(call pkg_deb_file,bookworm)
PKG_DEB_FILE_TRIXIE := $(call pkg_deb_file,trixie)
PKG_RPM_FILE := $(PKG_DIST)/$(PKG)-$(PKG_VERSION)-$(PKG_RPM_RELEASE).$(PKG_RPM_ARCH).rpm

# Python 3.9 for the .rpm's bundle (lock resolution, byte-compilation, the smoke test): pyenv's if present.
PKG_PY39 ?= $(firstword $(wildcard /root/.pyenv/versions/3.9.*/bin/python3.9) $(shell command -v python3.9 2>/dev/null))
PKG_PY311 ?= $(firstword $(wildcard /root/.pyenv/versions/3.11.*/bin/python3.11) /usr/bin/python3)

PKG_CA := $(or $(PIP_CERT),$(wildcard /etc/ssl/certs/ca-certificates.crt))
PKG_ENV := env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=$(HOME) LANG=C.UTF-8 SOURCE_DATE_EPOCH=$(PKG_EPOCH) \
	PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 $(if $(PKG_CA),PIP_CERT=$(PKG_CA)) \
	$(foreach v,http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY,$(if $($(v)),$(v)=$($(v))))

# Debian packages the builds and the packaging tests use; installed when missing (root only).
PKG_APT := debhelper dh-python python3-pip python3-setuptools python3-wheel lintian rpm rpmlint help2man man-db unzip \
	python3-boto3 python3-requests python3-systemd systemd-container mmdebstrap

PKG_WHEEL_PLATFORMS = $(foreach t,manylinux_2_28 manylinux_2_17 manylinux2014,--platform $(t)_$(1))

.PHONY: deb rpm packages packaging-deps packaging-app-wheel packaging-lock packaging-config packaging-clean boot-test \
	compat

packages: deb rpm

packaging-deps:
	@missing=$$(for p in $(PKG_APT); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "packaging needs these Debian packages: $$missing" >&2; exit 1; fi; \
		echo "installing $$missing (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# --- wheels: downloaded once per lock file, then every build is offline ------------------------------------------
# $(1): machine for the platform tags, $(2): target Python version, $(3): its ABI tag
define PKG_DOWNLOAD_WHEELS
	rm -rf $(@D) && mkdir -p $(@D)
	$(PKG_ENV) /usr/bin/python3 -m pip download -q --no-deps --require-hashes --only-binary=:all: \
		$(call PKG_WHEEL_PLATFORMS,$(1)) --implementation cp --python-version $(2) --abi $(3) -d $(@D) -r $<
	touch $@
endef

$(PKG_BUILD)/wheels/deb-$(PKG_DEB_ARCH)/.done: packaging/debian/requirements.lock | packaging-deps
	$(call PKG_DOWNLOAD_WHEELS,$(PKG_DEB_MACHINE),3.11,cp311)

$(PKG_BUILD)/wheels/rpm-$(PKG_RPM_ARCH)/.done: packaging/rpm/requirements.lock | packaging-deps
	$(call PKG_DOWNLOAD_WHEELS,$(PKG_RPM_ARCH),3.9,cp39)

# --- the agent itself: one wheel, built offline with Debian's setuptools, installed by both packages -----------
PKG_APP_SOURCES = pyproject.toml $(wildcard README.md LICENSE) \
	$(shell find etcd_aws_cluster \( -name '*.py' -o -name py.typed \) -not -path '*/__pycache__/*' 2>/dev/null)
PKG_APP := $(PKG_BUILD)/app

packaging-app-wheel: $(PKG_APP)/.done

$(PKG_APP)/.done: $(PKG_APP_SOURCES) | packaging-deps
	rm -rf $(@D) && mkdir -p $(@D)/src
	cp --parents $(PKG_APP_SOURCES) $(@D)/src/
	cd $(@D)/src && $(PKG_ENV) /usr/bin/python3 -m pip wheel -q --no-deps --no-build-isolation --no-index -w .. .
	touch $@

# --- man page: docs/etcd-aws-cluster.8 when the project has one, else generated from --help ----------------------
$(PKG_BUILD)/man/$(PKG).8: $(wildcard docs/$(PKG).8) $(PKG_APP_SOURCES) | packaging-deps
	mkdir -p $(@D)
	if [ -f docs/$(PKG).8 ]; then cp docs/$(PKG).8 $@; else \
		printf '#!/bin/sh\nexec /usr/bin/python3 -I -c "import sys; sys.path.insert(0, \\"%s\\"); from etcd_aws_cluster.cli import main; sys.exit(main())" "$$@"\n' \
			"$(CURDIR)" >$(@D)/$(PKG) && chmod 755 $(@D)/$(PKG) && \
		$(PKG_ENV) help2man --section=8 --no-info --no-discard-stderr \
			--name="bootstrap or join an etcd cluster on an AWS Auto Scaling group" \
			--output=$@ $(@D)/$(PKG); fi

# --- what else both package builds start from: packaging/, the README and the license -----------------------------
PKG_SOURCES = $(wildcard README.md LICENSE) $(filter-out %.mk,$(shell find packaging -type f 2>/dev/null))

# --- .deb ---------------------------------------------------------------------------------------------------------
# packaging/debian/*.<suite> (control, copyright, lintian overrides) become debian/* for that suite; debian/rules
# reads the suite from the changelog.
PKG_DEB_TOP := $(PKG_BUILD)/deb

deb: $(PKG_DEB_FILES)

# $(1): suite. The bundle's wheels are a prerequisite of the bookworm .deb only.
define PKG_DEB_RULE
$(call pkg_deb_file,$(1)): $(PKG_SOURCES) $(PKG_APP)/.done $(PKG_BUILD)/man/$(PKG).8 \
		$(if $(filter bookworm,$(1)),$(PKG_BUILD)/wheels/deb-$(PKG_DEB_ARCH)/.done) | packaging-deps
	@$$(call PKG_BUILD_DEB,$(1),$(if $(filter bookworm,$(1)),$(PKG_BUILD)/wheels/deb-$(PKG_DEB_ARCH)))
endef
$(foreach s,$(PKG_DEB_SUITES),$(eval $(call PKG_DEB_RULE,$(s))))

# $(1): suite, $(2): the directory of wheels to bundle (empty: none). Builds in $(PKG_DEB_TOP)/$(1).
define PKG_BUILD_DEB
	start=$$(date +%s); top=$(PKG_DEB_TOP)/$(1); tree=$$top/$(PKG)-$(PKG_VERSION); \
	rm -rf $$top && mkdir -p $$tree/build/app $(PKG_DIST) && \
	cp --parents $(filter-out packaging/debian/%,$(PKG_SOURCES)) $$tree/ && \
	cp -r packaging/debian $$tree/debian && \
	for f in $$tree/debian/*.$(1); do mv $$f $${f%.$(1)}; done && \
	rm -f $(foreach s,$(PKG_DEB_SUITES),$$tree/debian/*.$(s)) \
		$(if $(2),,$$tree/debian/requirements.in $$tree/debian/requirements.lock) && \
	$(if $(2),cp -r $(2) $$tree/build/wheels &&) \
	cp $(PKG_APP)/*.whl $$tree/build/app/ && \
	cp $(PKG_BUILD)/man/$(PKG).8 $$tree/build/ && \
	{ printf '%s (%s) %s; urgency=medium\n\n  * Release %s for Debian %s (%s).\n\n -- %s  %s\n' \
		$(PKG) $(call pkg_deb_version,$(1)) $(1) $(PKG_VERSION) $(call pkg_deb_release,$(1)) $(1) '$(PKG_MAINTAINER)' \
		"$$(LC_ALL=C date -u -R -d @$(PKG_EPOCH))"; } >$$tree/debian/changelog && \
	sed -i 's|@MAINTAINER@|$(PKG_MAINTAINER)|' $$tree/debian/control && \
	cd $$tree && $(PKG_ENV) dpkg-buildpackage -us -uc -b >../build.log 2>&1 \
		|| { tail -40 ../build.log >&2; exit 1; }; \
	cd $(CURDIR) && ! grep -n '^E: ' $$top/build.log >&2 && \
	deb=$$top/$(notdir $(call pkg_deb_file,$(1))) && \
	{ $(PKG_ENV) lintian --fail-on error,warning $$deb >$$top/lintian.log 2>&1; \
		rc=$$?; grep -v 'root privileges' $$top/lintian.log >&2; \
		[ $$rc = 0 ] || { echo "lintian found errors or warnings (above)" >&2; exit 1; }; } && \
	cp $$deb $(call pkg_deb_file,$(1)) && \
	echo "built $(call pkg_deb_file,$(1)) ($$(du -k $$deb | cut -f1) KiB, installed $$(dpkg-deb -f $$deb Installed-Size) KiB) in $$(( $$(date +%s) - start )) s, lintian clean"
endef

# --- .rpm ---------------------------------------------------------------------------------------------------------
PKG_RPM_TOP := $(CURDIR)/$(PKG_BUILD)/rpm

rpm: $(PKG_RPM_FILE)

$(PKG_RPM_FILE): $(PKG_SOURCES) $(PKG_APP)/.done $(PKG_BUILD)/wheels/rpm-$(PKG_RPM_ARCH)/.done $(PKG_BUILD)/man/$(PKG).8 \
		| packaging-deps
	@start=$$(date +%s); \
	rm -rf $(PKG_RPM_TOP) && mkdir -p $(PKG_RPM_TOP)/SOURCES $(PKG_RPM_TOP)/src/$(PKG)-$(PKG_VERSION) $(PKG_DIST) && \
	cp --parents $(PKG_SOURCES) $(PKG_RPM_TOP)/src/$(PKG)-$(PKG_VERSION)/ && \
	cp $(PKG_BUILD)/man/$(PKG).8 $(PKG_RPM_TOP)/src/$(PKG)-$(PKG_VERSION)/packaging/ && \
	tar -C $(PKG_RPM_TOP)/src --sort=name --mtime=@$(PKG_EPOCH) --owner=0 --group=0 --numeric-owner \
		-czf $(PKG_RPM_TOP)/SOURCES/$(PKG)-$(PKG_VERSION).tar.gz $(PKG)-$(PKG_VERSION) && \
	tar -C $(PKG_BUILD)/wheels/rpm-$(PKG_RPM_ARCH) --sort=name --mtime=@$(PKG_EPOCH) --owner=0 --group=0 \
		--numeric-owner --exclude=.done -cf $(PKG_RPM_TOP)/SOURCES/$(PKG)-$(PKG_VERSION)-wheels-$(PKG_RPM_ARCH).tar . && \
	cp $(PKG_APP)/*.whl $(PKG_RPM_TOP)/SOURCES/ && \
	$(PKG_ENV) rpmbuild -bb --nodeps --target $(PKG_RPM_ARCH) \
		--define "_topdir $(PKG_RPM_TOP)" --define "version $(PKG_VERSION)" --define "release $(PKG_RPM_RELEASE)" \
		$(if $(PKG_PY39),--define "bundle_python $(PKG_PY39)") \
		packaging/rpm/$(PKG).spec >$(PKG_RPM_TOP)/build.log 2>&1 || { tail -40 $(PKG_RPM_TOP)/build.log >&2; exit 1; }; \
	cp $(PKG_RPM_TOP)/RPMS/$(PKG_RPM_ARCH)/$(notdir $@) $@ && \
	echo "built $@ ($$(du -k $@ | cut -f1) KiB, installed $$(( $$(rpm -qp --qf '%{SIZE}' $@ 2>/dev/null) / 1024 )) KiB) in $$(( $$(date +%s) - start )) s"
	$(PKG_ENV) rpmlint -c packaging/rpm/rpmlint.toml $@

# --- boot test: each suite's .deb under a real systemd (systemd-nspawn) in a root of that suite, one node and a
# 3-node group, against the harness's moto and fake IMDS. Roots are cached in /var/cache/etcd-aws-cluster-tests.
# Needs root and the project's venv (`make setup`) for the harness; `make test` runs it as root.
PKG_VENV_PY ?= .venv/bin/python

boot-test: $(PKG_DEB_FILES) $(if $(STAMP),$(STAMP)) | packaging-deps
	@test -x $(PKG_VENV_PY) || { echo "boot-test needs the project's venv: make setup" >&2; exit 1; }
	$(PKG_VENV_PY) packaging/boot_test.py $(foreach s,$(SUITE),$(s)=$(call pkg_deb_file,$(s)))

# --- compat: the unit tests under each Python and library version the packages pull in (packaging/compat.py) ------
compat:
	@test -x $(PKG_VENV_PY) || { echo "compat needs the project's venv: make setup" >&2; exit 1; }
	$(PKG_VENV_PY) packaging/compat.py

# --- packaging/config.toml, generated from the agent's settings model (commit the result) ---------------------------
packaging-config:
	@test -x $(PKG_VENV_PY) || { echo "packaging-config needs the project's venv: make setup" >&2; exit 1; }
	$(PKG_VENV_PY) packaging/gen_config.py >packaging/config.toml.new && mv packaging/config.toml.new packaging/config.toml

# --- lock files: re-resolve (needs PyPI); commit the result --------------------------------------------------------
PKG_LOCK_TOOLS := $(PKG_BUILD)/lock-tools

packaging-lock:
	@test -n "$(PKG_PY39)" || { echo "packaging-lock needs a Python 3.9 (pyenv install 3.9) for the .rpm's lock" >&2; exit 1; }
	for py in $(PKG_PY311) $(PKG_PY39); do \
		venv=$(PKG_LOCK_TOOLS)/$$(basename $$py); \
		[ -x $$venv/bin/pip-compile ] || { $(PKG_ENV) $$py -m venv $$venv && $(PKG_ENV) $$venv/bin/pip install -q pip-tools; } || exit 1; \
	done
	rm -f packaging/debian/requirements.lock packaging/rpm/requirements.lock
	$(PKG_ENV) CUSTOM_COMPILE_COMMAND="make packaging-lock" $(PKG_LOCK_TOOLS)/$(notdir $(PKG_PY311))/bin/pip-compile -q \
		--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
		--output-file packaging/debian/requirements.lock packaging/debian/requirements.in
	$(PKG_ENV) CUSTOM_COMPILE_COMMAND="make packaging-lock" $(PKG_LOCK_TOOLS)/$(notdir $(PKG_PY39))/bin/pip-compile -q \
		--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
		--output-file packaging/rpm/requirements.lock packaging/rpm/requirements.in

packaging-clean:
	rm -rf $(PKG_BUILD) $(foreach s,$(PKG_DEB_SUITES),$(call pkg_deb_file,$(s))) $(PKG_RPM_FILE)

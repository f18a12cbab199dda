# steno-exportd: `make demo` runs the daemon on a demo library, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DEMO   := demo

ARCH   ?= $(shell dpkg --print-architecture)

.PHONY: all venv deps test demo bench clean deb lock

all: venv

$(VENV)/.installed: pyproject.toml setup.py debian/changelog
	$(PYTHON) -m venv $(VENV) || (apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV))
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# System packages the tests need (udev, udisks2, samba, filesystems, chromium, ...).
deps:
	packaging/install-test-deps.sh

test: deps venv
	CI=$${CI:-} $(VENV)/bin/pytest -q tests

$(DEMO)/library/silent_steno.db: | venv
	$(VENV)/bin/steno-exportd demo-data --out $(DEMO)/library --sessions 12 --seed 1

$(DEMO)/config.toml: packaging/demo-config.sh | venv
	mkdir -p $(DEMO)
	packaging/demo-config.sh $(CURDIR)/$(DEMO) > $@

demo: venv $(DEMO)/library/silent_steno.db $(DEMO)/config.toml
	$(VENV)/bin/steno-exportd --config $(DEMO)/config.toml run --demo

# The Debian package: steno-exportd_<version>_<arch>.deb here (ARCH=arm64 for the Pi). debian/changelog
# holds the version. Needs debhelper, lintian and python3-pip (packaging/install-test-deps.sh installs them).
deb:
	packaging/build-deb.sh $(ARCH)

# Pin the package's bundled Python libraries (packaging/requirements.lock) after pyproject.toml changes:
# what is pinned stays; UPGRADE=1 re-resolves everything to the newest releases.
lock:
	packaging/privenv.py lock $(if $(filter 1 yes,$(UPGRADE)),--upgrade)

bench: venv
	bench/run

clean:
	rm -rf $(VENV) $(DEMO) *.egg-info build steno-exportd_*.deb

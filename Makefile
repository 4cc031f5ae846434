# netconf.callhome: every target sets up what it needs, idempotently.
#   make demo   the main job: listener, devices calling home, enrollment, registry
#   make test   unit tests, integration tests against real peers, ansible-test sanity, on this
#               machine's Python/ansible-core and (on Debian 12) again on Python 3.13 with the
#               newest ansible-core in a Debian 13 root (tests/stack2), then the demo (demo-check)
#   make dist   the collection tarball and the listener wheel, in dist/

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT        := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
# The interpreter present (python3 first; 3.11 or later): ansible-core up to 2.19 runs on 3.11, 2.20+ on 3.12+.
PYTHON      ?= $(shell command -v python3 || command -v python3.13 || command -v python3.12 || command -v python3.11)
DIST        := $(ROOT)/dist
VENV        := $(ROOT)/.venv
PY          := $(VENV)/bin/python
PIP         := $(VENV)/bin/pip
# ansible.netcommon/ansible.utils come from the `ansible` wheel that matches the ansible-core pip
# picks for this Python (2.19 on 3.11: ansible 12; 2.21 on 3.12+: ansible 14).
PY_MINOR    := $(shell $(PYTHON) -c 'import sys; print(sys.version_info[1])' 2>/dev/null)
ANSIBLE_NEWEST := ansible>=14,<15
ANSIBLE_PKG := $(if $(filter 11,$(PY_MINOR)),ansible==12.3.0,$(ANSIBLE_NEWEST))
DEBIAN_VERSION := $(shell . /etc/os-release 2>/dev/null && echo $$VERSION_ID)
COLL_LINK   := $(ROOT)/.collections/ansible_collections/netconf/callhome
DEPS_DIR    := $(ROOT)/.deps/ansible_collections
SUDO        := $(if $(filter 0,$(shell id -u)),,sudo)
# Debian packages: libnetconf2 peer (C build), OpenSSH peer, socat for the reversed TCP link,
# PostgreSQL for the shared-state tests (tests/peers/postgres_peer.py runs its own server), HAProxy
# for the load-balancer tests (tests/peers/haproxy_peer.py, its own instance).
DEB_PKGS    := python3-venv gcc make pkg-config libnetconf2-dev $(if $(filter 12,$(DEBIAN_VERSION)),libyang2-dev,libyang-dev) libssh-dev libssl-dev \
               openssh-server openssh-client socat shellcheck git nginx libnginx-mod-http-js postgresql haproxy

# The tests import the collection's plugin code (ansible_collections.netconf.callhome...) from the
# clone's collections path: pytest's own pythonpath option puts it on sys.path of the test process
# only. Nothing gets PYTHONPATH: what the tests start finds what it needs as installed (the venv's
# netconf-callhome; ansible-playbook the collections of ansible.cfg's collections_path).
PYTEST      := $(PY) -m pytest -o pythonpath=$(ROOT)/.collections

export ANSIBLE_CONFIG := $(ROOT)/ansible.cfg
export PATH := $(VENV)/bin:$(PATH)

.PHONY: help setup system-deps venv collections peers unit typecheck integration attacks sanity stack2 test-stack2 test demo demo-check bench dist clean

help:
	@echo "make demo   run the main job (listener, simulated + libnetconf2 devices calling home)"
	@echo "make test   unit + integration (real peers) + ansible-test sanity + the demo"
	@echo "make bench  benchmarks (see docs/performance.md)"

setup: system-deps venv collections

system-deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.stamp

# The listener distribution goes in editable, so tests run what is in listener/src; pip then finds
# requirements.txt's netconf-callhome already satisfied. callhome-listener is its entry point.
$(VENV)/.stamp: requirements.txt requirements-test.txt listener/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e $(ROOT)/listener
	$(PIP) install -q -r requirements.txt -r requirements-test.txt
	touch $@

# ansible.netcommon and ansible.utils come from the 'ansible' wheel on PyPI (Galaxy is not reachable).
collections: venv $(DEPS_DIR)/ansible/netcommon/.stamp $(COLL_LINK)

$(DEPS_DIR)/ansible/netcommon/.stamp:
	rm -rf $(ROOT)/.cache/ansible-wheel && mkdir -p $(ROOT)/.cache/ansible-wheel $(DEPS_DIR)/ansible
	$(PIP) download -q --no-deps '$(ANSIBLE_PKG)' -d $(ROOT)/.cache/ansible-wheel
	cd $(ROOT)/.cache/ansible-wheel && $(PY) -c "import zipfile,glob; \
	  z=zipfile.ZipFile(glob.glob('ansible-*.whl')[0]); \
	  [z.extract(n, 'x') for n in z.namelist() if n.startswith(('ansible_collections/ansible/netcommon/','ansible_collections/ansible/utils/'))]"
	rm -rf $(DEPS_DIR)/ansible/netcommon $(DEPS_DIR)/ansible/utils
	mv $(ROOT)/.cache/ansible-wheel/x/ansible_collections/ansible/netcommon $(DEPS_DIR)/ansible/
	mv $(ROOT)/.cache/ansible-wheel/x/ansible_collections/ansible/utils $(DEPS_DIR)/ansible/
	touch $@

$(COLL_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../.. $@

peers: setup
	$(MAKE) -C tests/peers

unit: setup
	cd $(COLL_LINK) && CALLHOME_REQUIRE_PEERS=1 $(PYTEST) -q -rs --import-mode=importlib tests/unit

# Every peer is installed (system-deps) and built (peers) first, so a missing one is a failure
# here, not a skip (CALLHOME_REQUIRE_PEERS: tests/peers/peer_availability.py).
integration: setup peers
	cd $(COLL_LINK) && CALLHOME_REQUIRE_PEERS=1 $(PYTEST) -q -rs --import-mode=importlib tests/integration

# The attack suite (issue 10): each attack against a real listener process while enrolled devices
# are leased in a loop; asserts no session for a foreign key, no canary failure, CPU/RSS bounds.
attacks: setup
	cd $(COLL_LINK) && CALLHOME_REQUIRE_PEERS=1 $(PYTEST) -q -rs --import-mode=importlib tests/attacks

sanity: setup
	$(PY) tests/sanity/run_sanity.py

# The listener is typed library code: every function annotated, checked strictly.
typecheck: setup
	cd $(ROOT)/listener && $(PY) -m mypy --config-file pyproject.toml -p netconf_callhome

test: unit typecheck integration attacks sanity stack2 demo-check

# The second stack runs where the machine's own is older than the newest (Debian 12: Python 3.11,
# ansible-core 2.19). On Debian 13 the machine's stack is already Python 3.13 / ansible-core 2.21.
# Elsewhere the newest stack must be the machine's own (Python 3.12 or later picks ansible-core
# 2.21); a machine with neither cannot run both stacks, and says so instead of passing.
stack2:
	@if [ "$(DEBIAN_VERSION)" = 12 ]; then $(MAKE) test-stack2; \
	elif [ "$(PY_MINOR)" -ge 12 ] 2>/dev/null; then \
	  echo "stack 2 not needed: this machine (Debian $(DEBIAN_VERSION), Python 3.$(PY_MINOR)) runs the newest stack natively"; \
	else echo "stack 2 cannot run here: it needs Debian 12 (a Debian 13 root made with debootstrap) or Python 3.12 or later natively (found Python 3.$(PY_MINOR))" >&2; exit 1; fi

# The demo script uses the collection's embedded-listener helper, which it loads through Ansible's
# collection finder from the clone's collections path. It exits 1 on a wrong result (a device not
# connected, a key left pending, the playbook failed).
demo: setup peers
	cd $(ROOT) && $(PY) demo/run_demo.py

# The same demo as the last step of `make test` (a fresh clone passes both), with the libnetconf2
# devices required, not skipped. Prints "demo: 6 connected, 0 pending, playbook ok" or exits 1.
demo-check: setup peers
	cd $(ROOT) && $(PY) demo/run_demo.py --check

bench: setup
	$(PY) bench/run_all.py

# Offline install from these two files: pip install dist/netconf_callhome-*.whl, then
# ansible-galaxy collection install --offline dist/netconf-callhome-*.tar.gz (docs/quickstart.md).
dist: venv
	rm -rf $(DIST) && mkdir -p $(DIST)
	$(PIP) wheel -q --no-deps -w $(DIST) $(ROOT)/listener
	$(VENV)/bin/ansible-galaxy collection build -f --output-path $(DIST) $(ROOT)
	@ls -1 $(DIST)

clean:
	rm -rf $(VENV) $(ROOT)/.deps $(ROOT)/.collections $(ROOT)/.cache $(DIST) tests/peers/bin

# The second stack (issue 8): Python 3.13, ansible-core 2.21, libnetconf2 3.x in a Debian 13 root.
# run.sh needs root (debootstrap, chroot, a private mount namespace).
test-stack2:
	$(SUDO) tests/stack2/run.sh

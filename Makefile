# pynode: `make up` brings up the local cluster, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := containerd runc containernetworking-plugins etcd-server busybox-static \
	iptables nftables conntrack iproute2 util-linux gcc libc6-dev make bzip2 curl netcat-openbsd bind9-dnsutils libseccomp-dev \
	systemd systemd-container debootstrap libsystemd-dev pkg-config openssh-client dpkg-dev \
	vagrant vagrant-libvirt shellcheck
# What the VMs of vagrant/ need beyond that (make vagrant-deps): QEMU, libvirt and its dnsmasq, and the box
# script's disk tools.
VAGRANT_APT_PACKAGES := qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients dnsmasq-base fdisk

.PHONY: up down status test conformance node-test node-conformance kubeadm-control-plane deps venv upstream proto wheels clean \
	vagrant-deps vagrant-box vagrant-up vagrant-destroy vagrant-test

up: deps venv
	$(PY) -m localcluster up

down:
	@$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m localcluster down

status: venv
	$(PY) -m localcluster status

test: deps venv upstream
	$(PY) -m pytest

# The upstream [Conformance] specs against the local cluster (builds the suite; brings the cluster up if down).
# CONFORMANCE_FOCUS / CONFORMANCE_SKIP are ginkgo regexes, e.g. CONFORMANCE_FOCUS='\[sig-node\].*\[Conformance\]'.
conformance: deps venv upstream
	$(PY) -m localcluster conformance $(if $(NODE_AGENTS),--agents=$(NODE_AGENTS))

# pynode installed on a booted Debian 12 machine (systemd-nspawn) by the ansible playbook, joined with kubeadm,
# then checked from outside (tests/integration/test_node_install.py; the README's "make node-test"); then the same
# playbook installing the upstream kubelet and kube-proxy on a second machine, for its figure side by side.
node-test: deps venv upstream
	$(PY) -m pytest -s --timeout=1200 tests/integration/test_node_install.py tests/integration/test_node_install_upstream.py

# upstream's Node Conformance test ([NodeConformance] specs of test/e2e_node) in a systemd-nspawn machine whose kubelet
# is pykubelet, or the upstream kubelet with NODE_AGENTS=upstream; needs the cluster's bridge (make up). README's
# "make node-conformance". NODE_CONFORMANCE_FOCUS / NODE_CONFORMANCE_SKIP narrow it.
node-conformance: deps venv
	$(PY) -m localcluster node-conformance $(if $(NODE_AGENTS),--agents=$(NODE_AGENTS))

# `kubeadm init` in a systemd-nspawn machine whose kubelet runs the control plane's static pods (pykubelet, or the
# upstream kubelet with NODE_AGENTS=upstream), checked from outside; needs the cluster's bridge (make up). README's
# "A kubeadm control plane on pykubelet". KUBEADM_JOIN_WORKER=1 also joins a second machine to it.
kubeadm-control-plane: deps venv upstream
	$(PY) -m localcluster kubeadm-control-plane $(if $(NODE_AGENTS),--agents=$(NODE_AGENTS)) \
		$(if $(KUBEADM_JOIN_WORKER),--join-worker)

# pynode workers as VMs joined to the local cluster (vagrant/; the README's "Vagrant VMs"). VAGRANT_WORKERS,
# VAGRANT_PROXY_MODE (iptables) and VAGRANT_AGENTS (pynode | upstream) choose.
VAGRANT_WORKERS ?= 2
VAGRANT_PROXY_MODE ?= iptables
VAGRANT_AGENTS ?= pynode

vagrant-deps: deps
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(VAGRANT_APT_PACKAGES)"

vagrant-box: vagrant-deps
	vagrant/box/build.sh

vagrant-up: vagrant-deps venv upstream
	$(PY) -m localcluster vagrant up --workers=$(VAGRANT_WORKERS) --proxy-mode=$(VAGRANT_PROXY_MODE) \
		--agents=$(VAGRANT_AGENTS)

vagrant-destroy: venv
	$(PY) -m localcluster vagrant destroy

# The VM tests: two workers in the IPVS mode, real traffic, a reboot, a failing worker; then destroyed.
vagrant-test: vagrant-deps venv upstream
	PYNODE_VAGRANT_TEST=1 $(PY) -m pytest -s -v --timeout=5400 tests/vagrant

# Debian packages, installed only when one is missing.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@command -v go >/dev/null || { echo "deps: Go is not installed; the upstream build needs it" >&2; exit 1; }

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# The upstream control plane and kubectl, into the cache (seconds when cached).
upstream: venv
	$(PY) -m localcluster build

# The pynode wheel and a wheelhouse of it with every dependency (systemd-python built here, once), for
# installing on hosts with no compiler and no index: dist/pynode-*.whl, dist/wheelhouse/ and dist/wheelhouse.tar.
wheels: venv
	$(PY) -m localcluster wheels

# Regenerate the committed CRI stubs from src/cri/api.proto.
proto: venv
	$(PY) -m cri.generate

clean: down
	rm -rf $(VENV) src/*.egg-info dist

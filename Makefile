# Roundhouse developer entry points. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
PYTEST := $(PY) -m pytest -p no:cacheprovider
EXAMPLES := $(filter-out examples/sample-app.yaml examples/offline-cluster.yaml,$(wildcard examples/*.yaml))

.PHONY: help venv system-deps node-deps binaries haproxy-lts images test-images test test-unit test-harness test-property-large test-integration test-e2e test-e2e-lts test-e2e-pods conformance demo bench lint render manifests manifests-check \
        cluster-up cluster-down clean

help:  ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python >= 3.11 is required)"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)  ## create .venv with the package and test tools

system-deps:  ## Debian's haproxy (the tests' `haproxy -c`) and iproute2, if missing
	@command -v haproxy >/dev/null && command -v ip >/dev/null || { \
	  echo "installing Debian packages: haproxy iproute2"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy iproute2 >/dev/null; }

node-deps:  ## Debian packages of the real node (containerd, runc, CNI plugins, conntrack, iptables, buildah, socat), if missing
	@e2e/cluster/node-deps.sh

binaries:  ## build (or reuse) kube-apiserver, etcd, controllers, kwok, helm from Go modules
	@e2e/cluster/build-binaries.sh >/dev/null

haproxy-lts:  ## fetch (or reuse) HAProxy 3.4, the LTS branch the manifests run, for the tests
	@[ -n "$${ROUNDHOUSE_HAPROXY_LTS:-}" ] || e2e/cluster/fetch-haproxy-lts.sh >/dev/null

images:  ## build (or reuse) the real-Pods tier's images offline; prints one docker-archive per line
	@python3 e2e/images/build.py $(if $(IMAGES_TAG),--tag $(IMAGES_TAG))

test-images: $(STAMP)  ## the images' own tests (root, buildah, debootstrap; a cold build takes minutes)
	$(PYTEST) tests/images -q -o testpaths=tests/images

render: $(STAMP) system-deps  ## render every example offline and validate it with the real haproxy -c
	@for f in $(EXAMPLES); do \
	  echo "== roundhouse render -f $$f --services examples/offline-cluster.yaml --check"; \
	  $(VENV)/bin/roundhouse render -f $$f --services examples/offline-cluster.yaml --check > /dev/null; \
	done
	@echo; echo "== haproxy.cfg of examples/https-issued-cookie.yaml:"; \
	$(VENV)/bin/roundhouse render -f examples/https-issued-cookie.yaml --services examples/offline-cluster.yaml --haproxy-cfg

test-unit: $(STAMP) system-deps haproxy-lts  ## unit tier: model, graph, render, tls, schema, agent (no cluster); haproxy -c and the agent on 2.6 and 3.4
	$(PYTEST) tests/unit -q

test-harness: $(STAMP) system-deps binaries haproxy-lts  ## offline checks of the test harness (conntrack in a throwaway netns included), kind, manifests, Dockerfile and CI files
	@e2e/cluster/node-deps.sh || echo "test-harness: real-node packages missing (not root?): the tests needing conntrack are skipped" >&2
	$(PYTEST) tests/harness -q -o testpaths=tests/harness

test-property-large: $(STAMP) system-deps haproxy-lts  ## issue 11's property test at scale: 3000 objects from the CRDs' schema and CEL rules (about 15 min)
	ROUNDHOUSE_PROPERTY_EXAMPLES=$${ROUNDHOUSE_PROPERTY_EXAMPLES:-3000} $(PYTEST) tests/unit/test_schema_property.py -q -s

test-integration: $(STAMP) binaries node-deps  ## integration tier: real kube-apiserver, etcd, controllers, kwok (and, in test_real_node.py, a real kubelet node)
	$(PYTEST) tests/integration -q -o testpaths=tests/integration

test-e2e: $(STAMP) system-deps binaries  ## end to end: operator + agent + HAProxy + netns backends (root)
	$(PYTEST) tests/e2e -q -o testpaths=tests/e2e

test-e2e-lts: $(STAMP) system-deps binaries haproxy-lts  ## the end-to-end tier again, with HAProxy 3.4 (the manifests' LTS) as the data plane
	@lts="$${ROUNDHOUSE_HAPROXY_LTS:-$$(e2e/cluster/fetch-haproxy-lts.sh 2>/dev/null)}"; \
	if [ "$$lts" = none ]; then echo "test-e2e-lts: skipped (ROUNDHOUSE_HAPROXY_LTS=none)"; exit 0; fi; \
	echo "end to end with $$("$$lts" -v | sed -n 1p)"; \
	E2E_HAPROXY="$$lts" $(PYTEST) tests/e2e -q -o testpaths=tests/e2e

test-e2e-pods: $(STAMP) system-deps binaries  ## the e2e suite on real Pods: a kubelet node, images built offline, the chart installed with helm (root)
	$(PY) e2e/pods/run.py $(E2E_PODS_ARGS)

conformance: $(STAMP) system-deps binaries  ## Gateway API conformance v1.6.3 (GATEWAY-HTTP) on the real-Pods tier, report in conformance/reports/ (root; CONFORMANCE_ARGS: suite flags)
	$(PY) e2e/conformance/run.py $(CONFORMANCE_ARGS)

test: test-unit test-harness test-integration test-e2e test-e2e-lts test-e2e-pods conformance  ## every tier that runs on this machine (Gateway API conformance last)

demo: $(STAMP) system-deps binaries  ## local control plane + operator + 3 backends + a LoadBalancer, real traffic (root)
	$(PY) e2e/demo.py $(DEMO_ARGS)

bench: $(STAMP) system-deps binaries  ## benchmarks (JSON): readiness propagation, proxy overhead, pipeline cost, API client, operator at scale
	$(PY) bench/propagation.py
	$(PY) bench/overhead.py
	$(PY) bench/pipeline.py
	$(PY) bench/client.py
	$(PY) bench/scale.py

lint: $(STAMP)  ## ruff, mypy (strict) and the import layers of docs/architecture.md (import-linter)
	$(VENV)/bin/ruff check operator tests e2e bench
	$(VENV)/bin/mypy
	cd operator && ../$(VENV)/bin/lint-imports --no-cache --config ../pyproject.toml

manifests: binaries  ## sync CRDs into the chart (ours, and the vendored Gateway API ones) and render manifests/install.yaml
	manifests/gateway-api-crds.sh
	manifests/render.sh

manifests-check: binaries  ## fail if manifests/install.yaml or the vendored Gateway API CRDs are stale
	manifests/render.sh --check
	manifests/gateway-api-crds.sh --check

cluster-up: $(STAMP) binaries  ## start a local control plane (loopback only) and print its kubeconfig
	$(PY) e2e/cluster/cli.py up

cluster-down: $(STAMP)  ## stop the local control plane and remove its files
	$(PY) e2e/cluster/cli.py down

clean:  ## remove the venv and caches (not the cached Kubernetes binaries)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis operator/*.egg-info

.PHONY: e2e-kind
e2e-kind:  ## the e2e suite on a kind cluster (needs docker, kind, internet)
	e2e/kind/run.sh

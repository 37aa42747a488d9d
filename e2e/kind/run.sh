#!/usr/bin/env bash
# The e2e suite on a real kind cluster (`make e2e-kind`; see e2e/kind/README.md).
#
#   1. check the prerequisites; exit 3 with the reason when this machine cannot
#      run it (no docker CLI or daemon, no kind, kubectl, helm or python3.11,
#      the kind node image cannot be pulled)
#   2. build the operator image (./Dockerfile) and the echo backend image
#      (e2e/kind/echo), create the cluster (e2e/kind/kind-config.yaml) and
#      `kind load` the images (and HAProxy's) into it
#   3. `helm install` manifests/roundhouse with the image set to the loaded tag,
#      wait for the operator rollout
#   4. E2E_CLUSTER=kubeconfig KUBECONFIG=<kind's> pytest tests/e2e: the same suite
#      as `make test-e2e`, against this cluster (e2e/harness/modes.py)
#   5. on failure, collect logs, events and LoadBalancers into $ARTIFACTS;
#      always delete the cluster (unless KEEP_CLUSTER=1)
#
# Knobs (environment): CLUSTER_NAME (roundhouse-e2e), KEEP_CLUSTER (0),
# ARTIFACTS (_artifacts/kind), COLLECT_LOGS (on-failure | always),
# KIND_NODE_IMAGE, KIND_CONFIG, IMAGE_TAG (e2e-kind), HAPROXY_IMAGE (the chart's),
# PULL_TIMEOUT (600 s), E2E_KIND_PYTEST_ARGS (tests/e2e -q ...), KUBECTL, HELM.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/e2e/kind"
cd "$ROOT"

CLUSTER_NAME="${CLUSTER_NAME:-roundhouse-e2e}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
COLLECT_LOGS="${COLLECT_LOGS:-on-failure}"
ARTIFACTS="${ARTIFACTS:-$ROOT/_artifacts/kind}"
# The node images of a kind release are only guaranteed with that release; pin the
# default that release builds in (kind v0.33.0's pkg/apis/config/defaults/image.go:
# Kubernetes v1.37.0, one minor above the local control plane of
# e2e/cluster/build-binaries.sh, within kubectl's version skew).
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.37.0@sha256:a1ed56cfb0e7b93589bdf97c8cd566405a265939e3620fc4f5de89adff580ae5}"
KIND_CONFIG="${KIND_CONFIG:-$HERE/kind-config.yaml}"
IMAGE_TAG="${IMAGE_TAG:-e2e-kind}"
OPERATOR_REPOSITORY="${OPERATOR_REPOSITORY:-roundhouse}"
OPERATOR_IMAGE="$OPERATOR_REPOSITORY:$IMAGE_TAG"
ECHO_IMAGE="${ECHO_IMAGE:-roundhouse-echo:$IMAGE_TAG}"
CHART="$ROOT/manifests/roundhouse"
HAPROXY_IMAGE="${HAPROXY_IMAGE:-$(sed -n 's/^  haproxyImage: *//p' "$CHART/values.yaml" | tr -d '"')}"
RELEASE="${RELEASE:-roundhouse}"
OPERATOR_NAMESPACE="${OPERATOR_NAMESPACE:-roundhouse-system}"
PULL_TIMEOUT="${PULL_TIMEOUT:-600}"
PYTHON="${PYTHON:-python3.11}"
PY="$ROOT/.venv/bin/python"

log() { printf '[e2e-kind %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

node_tag="${KIND_NODE_IMAGE%%@*}"
NEEDS="needs docker, kind $KIND_VERSION, kubectl, helm, $PYTHON and internet to pull $node_tag"
cannot_run() {
  printf 'make e2e-kind: cannot run here: %s (%s)\n' "$1" "$NEEDS" >&2
  exit 3
}

# Last non-empty line of a command's output: the error, without the noise before it.
last_line() { printf '%s\n' "$1" | sed '/^[[:space:]]*$/d' | tail -n 1; }

# The directory e2e/cluster/build-binaries.sh caches its binaries in (the same
# defaults and overrides it uses), without building anything.
cached_bin_dir() {
  local script="$ROOT/e2e/cluster/build-binaries.sh" k e w h
  default_of() { sed -n "s/^$1=\"\\\${$1:-\\(.*\\)}\"\$/\\1/p" "$script"; }
  k="${K8S_VERSION:-$(default_of K8S_VERSION)}"
  e="${ETCD_VERSION:-$(default_of ETCD_VERSION)}"
  w="${KWOK_VERSION:-$(default_of KWOK_VERSION)}"
  h="${HELM_VERSION:-$(default_of HELM_VERSION)}"
  local cache="${ROUNDHOUSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/roundhouse}"
  printf '%s\n' "$cache/bin/k8s-$k-etcd-$e-kwok-$w-helm-$h"
}

# find_tool NAME OVERRIDE: $OVERRIDE if set, else NAME on PATH, else the cached build.
find_tool() {
  local name="$1" override="$2" cached
  if [ -n "$override" ]; then
    [ -x "$override" ] && printf '%s\n' "$override"
    return 0
  fi
  if command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
    return 0
  fi
  cached="$(cached_bin_dir)/$name"
  [ -x "$cached" ] && printf '%s\n' "$cached"
  return 0
}

# ------------------------------------------------------------------ 1. prerequisites

check_prerequisites() {
  local problems=() out
  if ! command -v docker >/dev/null 2>&1; then
    problems+=("docker is not installed")
  elif ! out="$(timeout 20 docker info --format '{{.ServerVersion}}' 2>&1)"; then
    if [ -z "$(last_line "$out")" ]; then out="docker info failed or timed out"; fi
    problems+=("the docker daemon is not reachable: $(last_line "$out")")
  fi
  if ! command -v kind >/dev/null 2>&1; then
    problems+=("kind is not installed: go install sigs.k8s.io/kind@$KIND_VERSION")
  fi
  KUBECTL="$(find_tool kubectl "${KUBECTL:-}")"
  [ -n "$KUBECTL" ] || problems+=("kubectl is not installed (nor built by make binaries)")
  HELM="$(find_tool helm "${HELM:-}")"
  [ -n "$HELM" ] || problems+=("helm is not installed (nor built by make binaries)")
  if [ ! -x "$PY" ] && ! command -v "$PYTHON" >/dev/null 2>&1; then
    problems+=("$PYTHON is not installed (make venv needs it)")
  fi
  if [ ${#problems[@]} -gt 0 ]; then
    local joined
    joined="$(printf '%s; ' "${problems[@]}")"
    cannot_run "${joined%; }"
  fi
  # Only now, with a working daemon: can the node image be had? (Cached: no network.)
  if ! docker image inspect "$KIND_NODE_IMAGE" >/dev/null 2>&1; then
    log "pulling $KIND_NODE_IMAGE"
    if ! out="$(timeout "$PULL_TIMEOUT" docker pull "$KIND_NODE_IMAGE" 2>&1)"; then
      cannot_run "cannot pull $node_tag (no network access to Docker Hub?): $(last_line "$out")"
    fi
  fi
  local have
  have="$(kind version 2>/dev/null | awk '{print $2}')"
  if [ "$have" != "$KIND_VERSION" ]; then
    log "warning: kind $have, but $KIND_NODE_IMAGE is built for kind $KIND_VERSION"
  fi
  export KUBECTL HELM
}

# ------------------------------------------------------------------ failure artifacts

collect_logs() {  # called from finish(), with errexit off
  log "collecting logs into ${ARTIFACTS#"$ROOT"/}"
  mkdir -p "$ARTIFACTS/pods"
  local k=("$KUBECTL" --kubeconfig "$KUBECONFIG_FILE")
  "${k[@]}" get nodes -o wide --show-labels > "$ARTIFACTS/nodes.txt" 2>&1
  "${k[@]}" get pods -A -o wide > "$ARTIFACTS/pods.txt" 2>&1
  "${k[@]}" get events -A --sort-by=.lastTimestamp > "$ARTIFACTS/events.txt" 2>&1
  "${k[@]}" describe loadbalancers.roundhouse.dev -A > "$ARTIFACTS/loadbalancers.txt" 2>&1
  "${k[@]}" get loadbalancers.roundhouse.dev,reverseproxies.roundhouse.dev -A -o yaml \
    > "$ARTIFACTS/roundhouse-objects.yaml" 2>&1
  "${k[@]}" get deployments,services,endpointslices,poddisruptionbudgets,configmaps -A -o wide \
    > "$ARTIFACTS/workloads.txt" 2>&1
  "${k[@]}" -n "$OPERATOR_NAMESPACE" describe pods > "$ARTIFACTS/operator-describe.txt" 2>&1
  # Operator, proxy (haproxy + agent + agent-init) and echo backend Pods.
  local selector ns pod
  for selector in "app.kubernetes.io/instance=$RELEASE" \
                  "app.kubernetes.io/name=roundhouse-proxy" \
                  "app.kubernetes.io/name=roundhouse-echo"; do
    "${k[@]}" get pods -A -l "$selector" \
      -o jsonpath='{range .items[*]}{.metadata.namespace}{" "}{.metadata.name}{"\n"}{end}' \
      2>/dev/null | while read -r ns pod; do
        [ -n "$pod" ] || continue
        "${k[@]}" -n "$ns" logs "$pod" --all-containers --prefix --timestamps \
          > "$ARTIFACTS/pods/$ns.$pod.log" 2>&1
        "${k[@]}" -n "$ns" logs "$pod" --all-containers --prefix --timestamps --previous \
          > "$ARTIFACTS/pods/$ns.$pod.previous.log" 2>/dev/null \
          || rm -f "$ARTIFACTS/pods/$ns.$pod.previous.log"
      done
  done
  kind export logs "$ARTIFACTS/kind-export" --name "$CLUSTER_NAME" >/dev/null 2>&1
}

# ------------------------------------------------------------------ cluster lifecycle

CREATED=0
WORK=""
KUBECONFIG_FILE=""

finish() {
  local rc=$?
  set +e
  if [ "$CREATED" = 1 ]; then
    if [ "$rc" -ne 0 ] || [ "$COLLECT_LOGS" = always ]; then
      collect_logs
    fi
    if [ "$KEEP_CLUSTER" = 1 ]; then
      log "KEEP_CLUSTER=1: cluster $CLUSTER_NAME kept;" \
          "kind export kubeconfig --name $CLUSTER_NAME, then kind delete cluster --name $CLUSTER_NAME"
    else
      log "deleting cluster $CLUSTER_NAME"
      kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 \
        || log "warning: kind delete cluster --name $CLUSTER_NAME failed"
    fi
  fi
  [ -z "$WORK" ] || rm -rf "$WORK"
  if [ "$rc" -ne 0 ]; then
    log "FAILED (exit $rc)"
  fi
  exit "$rc"
}

main() {
  check_prerequisites

  if kind get clusters 2>/dev/null | grep -qxF "$CLUSTER_NAME"; then
    echo "make e2e-kind: a kind cluster named $CLUSTER_NAME exists already;" \
         "delete it (kind delete cluster --name $CLUSTER_NAME) or set CLUSTER_NAME" >&2
    exit 1
  fi

  WORK="$(mktemp -d)"
  KUBECONFIG_FILE="$WORK/kubeconfig"
  trap finish EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  rm -rf "$ARTIFACTS"
  mkdir -p "$ARTIFACTS"

  log "venv"
  make --no-print-directory -s venv PYTHON="$PYTHON"

  log "building $OPERATOR_IMAGE (Dockerfile) and $ECHO_IMAGE (e2e/kind/echo)"
  docker build -q -t "$OPERATOR_IMAGE" -f "$ROOT/Dockerfile" "$ROOT" >/dev/null
  docker build -q -t "$ECHO_IMAGE" "$HERE/echo" >/dev/null
  if ! docker image inspect "$HAPROXY_IMAGE" >/dev/null 2>&1; then
    log "pulling $HAPROXY_IMAGE"
    timeout "$PULL_TIMEOUT" docker pull -q "$HAPROXY_IMAGE" >/dev/null
  fi

  log "creating kind cluster $CLUSTER_NAME ($node_tag, $(basename "$KIND_CONFIG"))"
  CREATED=1  # from here on, a half-created cluster is deleted too
  kind create cluster --name "$CLUSTER_NAME" --config "$KIND_CONFIG" \
    --image "$KIND_NODE_IMAGE" --kubeconfig "$KUBECONFIG_FILE" --wait 180s
  export KUBECONFIG="$KUBECONFIG_FILE"

  local image
  for image in "$OPERATOR_IMAGE" "$ECHO_IMAGE" "$HAPROXY_IMAGE"; do
    log "kind load docker-image $image"
    kind load docker-image "$image" --name "$CLUSTER_NAME" >/dev/null
  done

  log "helm install $RELEASE manifests/roundhouse (image $OPERATOR_IMAGE)"
  # The namespace install.yaml creates: the chart must meet the restricted standard.
  "$KUBECTL" create namespace "$OPERATOR_NAMESPACE" >/dev/null
  "$KUBECTL" label namespace "$OPERATOR_NAMESPACE" >/dev/null \
    pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/warn=restricted
  "$HELM" install "$RELEASE" "$CHART" --namespace "$OPERATOR_NAMESPACE" \
    --kubeconfig "$KUBECONFIG_FILE" \
    --set image.repository="$OPERATOR_REPOSITORY" \
    --set image.tag="$IMAGE_TAG" \
    --set image.pullPolicy=IfNotPresent \
    --set proxy.haproxyImage="$HAPROXY_IMAGE" >/dev/null
  "$KUBECTL" wait --for=condition=Established --timeout=60s \
    crd/loadbalancers.roundhouse.dev crd/reverseproxies.roundhouse.dev >/dev/null
  local deployment
  deployment="$("$KUBECTL" -n "$OPERATOR_NAMESPACE" get deployments \
    -l "app.kubernetes.io/instance=$RELEASE" -o jsonpath='{.items[0].metadata.name}')"
  log "waiting for the operator rollout (deployment/$deployment)"
  "$KUBECTL" -n "$OPERATOR_NAMESPACE" rollout status "deployment/$deployment" --timeout=300s

  local args=(tests/e2e -q -p no:cacheprovider -o testpaths=tests/e2e)
  if [ -n "${E2E_KIND_PYTEST_ARGS:-}" ]; then
    read -r -a args <<< "$E2E_KIND_PYTEST_ARGS"
  fi
  log "pytest ${args[*]}"
  # The same tests as `make test-e2e`, on this cluster (tests/e2e/conftest.py: the
  # operator is the Helm release's, backends are echo Pods, the proxies real Pods).
  E2E_CLUSTER=kubeconfig KUBECONFIG="$KUBECONFIG_FILE" \
    E2E_ECHO_IMAGE="$ECHO_IMAGE" E2E_OPERATOR_NAMESPACE="$OPERATOR_NAMESPACE" \
    E2E_OPERATOR_RELEASE="$RELEASE" E2E_ARTIFACTS="$ARTIFACTS" \
    "$PY" -m pytest "${args[@]}" --junitxml="$ARTIFACTS/junit.xml"
  log "passed"
}

main "$@"

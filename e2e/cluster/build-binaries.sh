#!/usr/bin/env bash
# Build the test control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok, helm) from the Go module proxy and cache
# the binaries by version. No release download site is reachable here, so this
# is the only way to get real Kubernetes parts. A warm cache returns in seconds.
#
# Usage: e2e/cluster/build-binaries.sh            -> prints the bin directory
#        ROUNDHOUSE_CACHE=/some/dir e2e/cluster/build-binaries.sh
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"

CACHE="${ROUNDHOUSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/roundhouse}"
BIN="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION"
mkdir -p "$BIN"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"
export GOPATH="${GOPATH:-$CACHE/gopath}"
export GOCACHE="${GOCACHE:-$CACHE/gobuild}"
# Two cores: keep the link steps from running out of memory-bandwidth together.
PAR="${GO_BUILD_PARALLEL:-$(nproc)}"

log() { printf '[build-binaries %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Heartbeat so a cold build (tens of minutes) visibly progresses.
with_progress() {
  local what="$1"; shift
  local start=$SECONDS
  ( while sleep 30; do log "  ... still building $what ($((SECONDS - start))s)"; done ) &
  local hb=$!
  if "$@"; then kill "$hb" 2>/dev/null; wait "$hb" 2>/dev/null || true
    log "built $what in $((SECONDS - start))s"
  else local rc=$?; kill "$hb" 2>/dev/null; wait "$hb" 2>/dev/null || true
    log "FAILED building $what (exit $rc)"; return $rc
  fi
}

build_kubernetes() {
  # kubelet and kube-proxy run the real node of the real-Pods tier (make test-e2e-pods).
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
  local missing=() b
  for b in "${want[@]}"; do [ -x "$BIN/$b" ] || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local mod="$CACHE/src/kubernetes-$K8S_VERSION"
  mkdir -p "$mod"
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local staging="v0.$minor.${K8S_VERSION##*.}"
  # The stamp names the commands tools.go imports: a cache made for fewer of them is re-tidied.
  if [ ! -f "$mod/go.sum" ] || [ ! -f "$mod/.tools-node" ]; then
    log "resolving k8s.io/kubernetes $K8S_VERSION (staging modules at $staging)"
    # Derive the staging list from k8s.io/kubernetes' own go.mod replace block.
    local gomod
    gomod="$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    {
      echo "module roundhouse.dev/k8s-build"
      echo
      echo "go 1.26"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$gomod" \
        | awk -v v="$staging" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } > "$mod/go.mod"
    cat > "$mod/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
    (cd "$mod" && with_progress "module graph for kubernetes" go mod tidy -e >/dev/null)
    touch "$mod/.tools-node"
  fi
  local pkg="k8s.io/component-base/version" cpkg="k8s.io/client-go/pkg/version"
  local date; date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local ld="-s -w"
  for p in "$pkg" "$cpkg"; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  for b in "${missing[@]}"; do
    (cd "$mod" && with_progress "$b $K8S_VERSION" go build -p "$PAR" -trimpath -ldflags "$ld" -o "$BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b")
    mv "$BIN/$b.tmp" "$BIN/$b"
  done
}

build_etcd() {
  [ -x "$BIN/etcd" ] && return 0
  local mod="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$mod"
  if [ ! -f "$mod/go.sum" ]; then
    cat > "$mod/go.mod" <<MOD
module roundhouse.dev/etcd-build

go 1.26

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
    cat > "$mod/main.go" <<'GO'
// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    (cd "$mod" && with_progress "module graph for etcd" go mod tidy >/dev/null)
  fi
  (cd "$mod" && with_progress "etcd $ETCD_VERSION" go build -p "$PAR" -trimpath \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" -o "$BIN/etcd.tmp" .)
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

build_tool() {  # name module-path package version ldflags
  local name="$1" module="$2" pkg="$3" version="$4" ld="$5"
  [ -x "$BIN/$name" ] && return 0
  local tmp="$CACHE/src/$name-$version-bin"; mkdir -p "$tmp"
  with_progress "$name $version" env GOBIN="$tmp" go install -trimpath -ldflags "-s -w $ld" "$pkg@$version"
  mv "$tmp/$(basename "$pkg")" "$BIN/$name"
}

log "binaries: $BIN"
# One build at a time per cache: a second caller (another test tier, another checkout)
# waits here and then finds the binaries built, instead of racing the same go build.
exec 9>"$CACHE/bin/.build.lock"
if ! flock -n 9; then
  log "another build holds $CACHE/bin/.build.lock; waiting for it"
  flock 9
fi
build_etcd
build_kubernetes
build_tool kwok sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
build_tool helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
log "all binaries ready"
echo "$BIN"

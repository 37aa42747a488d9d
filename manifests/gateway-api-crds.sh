#!/usr/bin/env bash
# Vendor the standard-channel Gateway API CRDs into the chart.
#
#   manifests/gateway-api-crds.sh           write manifests/roundhouse/crds-gateway-api/
#   manifests/gateway-api-crds.sh --check   change nothing; exit 1 when that directory is
#                                           not exactly upstream's files
#
# The files are what upstream's release standard-install.yaml is made of
# (hack/build-install-yaml.sh: config/crd/standard/gateway*.yaml): one file per CRD
# plus the ValidatingAdmissionPolicy (and its binding) "safe-upgrades", byte for byte.
# They come from the Go module sigs.k8s.io/gateway-api at GATEWAY_API_VERSION,
# fetched with `go mod download` (the module proxy, checked against the checksum
# database; a module already in the cache needs no network). The chart renders them
# only with gatewayAPI.enabled and gatewayAPI.installCRDs.
set -euo pipefail

GATEWAY_API_VERSION=v1.6.3
MODULE=sigs.k8s.io/gateway-api

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/manifests/roundhouse/crds-gateway-api"

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

die() { echo "gateway-api-crds.sh: $*" >&2; exit 2; }
command -v go >/dev/null || die "go not found (needed to fetch $MODULE from the module proxy)"

# The same module cache as e2e/cluster/build-binaries.sh.
CACHE="${ROUNDHOUSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/roundhouse}"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"
export GOPATH="${GOPATH:-$CACHE/gopath}"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
# Outside any module, so no go.mod of ours is read or written.
(cd "$scratch" && go mod download -json "$MODULE@$GATEWAY_API_VERSION") >"$scratch/mod.json" \
  || die "go mod download $MODULE@$GATEWAY_API_VERSION failed: $(cat "$scratch/mod.json")"
dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' "$scratch/mod.json")"
[ -n "$dir" ] && [ -d "$dir/config/crd/standard" ] \
  || die "no config/crd/standard in the module ($(cat "$scratch/mod.json"))"

mapfile -t sources < <(LC_ALL=C ls "$dir"/config/crd/standard/gateway*.yaml)
[ "${#sources[@]}" -gt 0 ] || die "no config/crd/standard/gateway*.yaml in $dir"

# expected DIR: DIR holds exactly upstream's files.
mkdir -p "$scratch/expected"
for f in "${sources[@]}"; do
  cp "$f" "$scratch/expected/"
  chmod 0644 "$scratch/expected/$(basename "$f")"  # the module cache is read-only
done

if [ "$check" -eq 1 ]; then
  if [ ! -d "$DEST" ]; then
    echo "gateway-api-crds.sh --check: ${DEST#"$ROOT"/} does not exist" >&2
    echo "gateway-api-crds.sh --check: run manifests/gateway-api-crds.sh" >&2
    exit 1
  fi
  if ! diff -rq "$scratch/expected" "$DEST" >"$scratch/diff" 2>&1; then
    sed -e "s|$scratch/expected|$MODULE@$GATEWAY_API_VERSION/config/crd/standard|g" \
        -e "s|$ROOT/||g" "$scratch/diff" >&2
    echo "gateway-api-crds.sh --check: ${DEST#"$ROOT"/} is not $MODULE@$GATEWAY_API_VERSION's" \
         "standard channel; run manifests/gateway-api-crds.sh" >&2
    exit 1
  fi
  echo "gateway-api-crds.sh --check: ${DEST#"$ROOT"/} is $MODULE@$GATEWAY_API_VERSION's" \
       "standard channel (${#sources[@]} files)" >&2
  exit 0
fi

mkdir -p "$DEST"
for f in "$DEST"/*; do
  [ -e "$f" ] || continue
  [ -e "$scratch/expected/$(basename "$f")" ] || rm -f "$f"
done
for f in "$scratch"/expected/*; do
  cmp -s "$f" "$DEST/$(basename "$f")" || cp "$f" "$DEST/$(basename "$f")"
done
echo "gateway-api-crds.sh: ${DEST#"$ROOT"/} holds $MODULE@$GATEWAY_API_VERSION's standard" \
     "channel (${#sources[@]} files)" >&2

#!/usr/bin/env bash
# Install the Debian packages the real node (node.py) needs, when any is missing:
# containerd (+ctr), runc, CNI plugins (/usr/lib/cni), conntrack, iptables, buildah, socat.
# A no-op on a prepared machine; prints what it installs on stderr.
set -euo pipefail

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need containerd containerd
need ctr containerd
need runc runc
need conntrack conntrack
need iptables iptables
need iptables-save iptables
need buildah buildah
need socat socat
for plugin in bridge host-local loopback; do
  [ -x "/usr/lib/cni/$plugin" ] || { missing+=(containernetworking-plugins); break; }
done
[ ${#missing[@]} -eq 0 ] && exit 0

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" != 0 ]; then
  echo "node-deps: missing packages ${missing[*]} (run as root to install them)" >&2
  exit 1
fi
echo "node-deps: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2

#!/usr/bin/env bash
# HAProxy of the LTS branch the manifests run (haproxy:3.4), for tests on a Debian 12
# machine whose own haproxy is 2.6. Prints the path of a runnable haproxy last.
#
# Debian 12 has no 3.4 package, and the image registries are out of reach, so this takes
# Debian's binary package of that branch (unstable, else experimental) and the shared
# libraries it needs (resolved from the package metadata, not a fixed list), unpacks them
# into a private root and points the binary's ELF interpreter and RPATH at that root
# (patchelf). The binary then runs natively, so HAProxy's master process can re-execute
# it on reload.
# Nothing is installed system-wide except patchelf; apt runs on private lists, reusing
# the mirror this machine's own sources name.
#
# Cached by version in ${ROUNDHOUSE_CACHE:-~/.cache/roundhouse}/haproxy/<version>/; the
# newest cached build of the series is used without asking the network, until
# HAPROXY_LTS_REFRESH=1. Knobs: HAPROXY_LTS_SERIES (3.4), HAPROXY_LTS_SUITES.
set -euo pipefail

SERIES="${HAPROXY_LTS_SERIES:-3.4}"
# experimental carries the series today (3.4.7), unstable once it moves there; the later
# ones keep it within reach once unstable moves on to a newer branch.
SUITES="${HAPROXY_LTS_SUITES:-sid experimental forky trixie-backports}"
CACHE="${ROUNDHOUSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/roundhouse}/haproxy"
ARCH="$(dpkg --print-architecture)"
TRIPLET="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"

log() { printf '[fetch-haproxy %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

version_of() {  # version_of BIN: "3.2.26-1" (no pipe into head: pipefail and SIGPIPE)
  local out
  out="$("$1" -v 2>/dev/null)" || return 1
  out="${out%%$'\n'*}"
  out="${out#*version }"
  printf '%s\n' "${out%% *}"
}

works() {  # works BIN: it runs and is of the series
  local v
  [ -x "$1" ] && v="$(version_of "$1")" && [[ "$v" == "$SERIES".* ]]
}

newest_cached() {
  local dir
  for dir in $(ls -1d "$CACHE/$SERIES".* 2>/dev/null | sort -V -r); do
    if works "$dir/bin/haproxy"; then printf '%s\n' "$dir/bin/haproxy"; return 0; fi
  done
  return 1
}

# The mirror this machine already uses for Debian (deb822 or one-line format).
mirror() {
  local uri
  uri="$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
         | tr ' ' '\n' | grep -m1 '/debian/\?$' || true)"
  if [ -z "$uri" ]; then
    uri="$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\/debian\/\?\)[[:space:]].*/\2/p' \
           /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1)"
  fi
  printf '%s\n' "$uri"
}

command -v dpkg-deb >/dev/null || die "dpkg-deb is needed (a Debian machine)"
if ! command -v patchelf >/dev/null; then
  log "installing patchelf (Debian package)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patchelf; } \
    >/dev/null || die "cannot install patchelf"
fi

# A build of the series is kept until HAPROXY_LTS_REFRESH=1: the same binary every run.
if [ "${HAPROXY_LTS_REFRESH:-0}" != 1 ] && cached="$(newest_cached)"; then
  log "haproxy $(version_of "$cached"): cached"
  printf '%s\n' "$cached"; exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
URI="$(mirror)"
[ -n "$URI" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d}"
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/debs"
cat > "$WORK/unstable.sources" <<EOF
Types: deb
URIs: $URI
Suites: $SUITES
Components: main
Architectures: $ARCH
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
APT=(-o "Dir::Etc::SourceList=$WORK/unstable.sources" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$WORK/lists" -o Dir::State::status=/dev/null
     -o "Dir::Cache=$WORK/cache" -o APT::Sandbox::User=root -o Debug::NoLocking=1)

log "resolving haproxy $SERIES.x in Debian $SUITES"
if ! apt-get "${APT[@]}" -qq update >/dev/null 2>"$WORK/update.err"; then
  if cached="$(newest_cached)"; then
    log "package index unreachable ($(tail -n 1 "$WORK/update.err")); using cached $cached"
    printf '%s\n' "$cached"; exit 0
  fi
  die "cannot read the Debian index ($SUITES): $(tail -n 1 "$WORK/update.err")"
fi
# The newest version of the series in any of the suites (no epoch in haproxy's versions).
offered="$(apt-cache "${APT[@]}" madison haproxy | awk -F'|' '{gsub(/ /, "", $2); print $2}' \
           | sort -u -V)"
VERSION="$(grep "^$SERIES\." <<< "$offered" | tail -n 1 || true)"
[ -n "$VERSION" ] || die "no haproxy $SERIES.x in Debian $SUITES" \
  "(offered: $(tr '\n' ' ' <<< "${offered:-none}")); set HAPROXY_LTS_SERIES"
UPSTREAM="${VERSION%%-*}"
DEST="$CACHE/$UPSTREAM-${VERSION##*-}"
if works "$DEST/bin/haproxy"; then
  log "haproxy $VERSION: cached"
  printf '%s\n' "$DEST/bin/haproxy"; exit 0
fi

# haproxy's shared-library dependencies and theirs (not adduser & co: nothing runs them).
direct="$(apt-cache "${APT[@]}" depends --no-recommends --no-suggests --no-conflicts \
            --no-breaks --no-replaces --no-enhances "haproxy=$VERSION" \
          | sed -n 's/^[[:space:]]*Depends:[[:space:]]*\(lib[^[:space:]]*\|zlib1g\).*/\1/p' \
          | sort -u)"
closure="$(apt-cache "${APT[@]}" depends --recurse --no-recommends --no-suggests \
             --no-conflicts --no-breaks --no-replaces --no-enhances $direct \
           | grep -E '^(lib|zlib1g)' | sort -u)"
log "downloading haproxy $VERSION and $(wc -w <<< "$closure") libraries"
(cd "$WORK/debs" && apt-get "${APT[@]}" -qq download "haproxy=$VERSION" $closure) >/dev/null \
  2>"$WORK/download.err" || die "download failed: $(tail -n 1 "$WORK/download.err")"

rm -rf "$DEST.partial"
mkdir -p "$DEST.partial/bin"
for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$DEST.partial/root"; done
ROOT="$DEST.partial/root"
LIBS="$DEST/root/lib/$TRIPLET:$DEST/root/usr/lib/$TRIPLET"
LOADER="$( (ls "$ROOT"/usr/lib/"$TRIPLET"/ld-linux-*.so.* "$ROOT"/lib/"$TRIPLET"/ld-linux-*.so.* \
           2>/dev/null || true) | head -n 1)"
[ -n "$LOADER" ] || die "no dynamic loader in the unpacked libc6"
cp "$ROOT/usr/sbin/haproxy" "$DEST.partial/bin/haproxy"
# Paths as they will be after the move below; RPATH (not RUNPATH) so that the libraries'
# own dependencies resolve from the private root too.
patchelf --set-interpreter "${LOADER/$DEST.partial/$DEST}" --force-rpath --set-rpath "$LIBS" \
  "$DEST.partial/bin/haproxy"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
works "$DEST/bin/haproxy" || die "the unpacked haproxy does not run: $("$DEST/bin/haproxy" -v 2>&1 | tail -n 1)"
log "haproxy $(version_of "$DEST/bin/haproxy") ready"
printf '%s\n' "$DEST/bin/haproxy"

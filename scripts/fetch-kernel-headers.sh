#!/usr/bin/env bash
# Fetch the kernel's own UAPI headers (Debian's linux-libc-dev) for the ABI conformance test.
#
# Debian sid's linux-libc-dev carries include/uapi of the newest kernel, including drm.h and
# every drivers/accel header (rocket, ivpu, amdxdna, ethosu, qaic). We never install it: apt
# runs with a PRIVATE sources list, state and cache (nothing under /etc/apt or /var/lib/apt is
# read or written), `apt-get download` fetches the .deb and `dpkg -x` unpacks it into the cache.
#
# usage:  scripts/fetch-kernel-headers.sh            prints the include directory on stdout
# env:    NPUD_CACHE        cache root (default ${XDG_CACHE_HOME:-~/.cache}/npud)
#         NPUD_HEADERS_SUITE  Debian suite (default sid)
#         NPUD_HEADERS_REFRESH=1  re-resolve the newest package even if one is unpacked
#
# Output: <cache>/kernel-headers/<suite>/usr/include (stdout, last line), and next to it a file
# VERSION holding the package version (e.g. 7.2.13-1), which the test reports.
# Idempotent: a second run with an unpacked tree does no network access and takes milliseconds.
set -euo pipefail

CACHE=${NPUD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/npud}
SUITE=${NPUD_HEADERS_SUITE:-sid}
ROOT="$CACHE/kernel-headers/$SUITE"
TREE="$ROOT/tree"

if [ -f "$ROOT/VERSION" ] && [ -f "$TREE/usr/include/drm/drm.h" ] && [ "${NPUD_HEADERS_REFRESH:-0}" != 1 ]; then
  echo "$TREE/usr/include"
  exit 0
fi

log() { echo "[fetch-kernel-headers] $*" >&2; }
mkdir -p "$ROOT/lists/partial" "$ROOT/aptcache/archives/partial" "$ROOT/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE main" \
  > "$ROOT/sources.list"
APT=(-o Dir::Etc::SourceList="$ROOT/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$ROOT/lists" -o Dir::Cache="$ROOT/aptcache"
     -o Dir::State::Status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root
     -o APT::Architecture=amd64 -o APT::Architectures::=amd64)

log "apt-get update ($SUITE, private lists under $ROOT)"
apt-get "${APT[@]}" -qq update >&2
rm -f "$ROOT"/debs/*.deb
(cd "$ROOT/debs" && apt-get "${APT[@]}" -qq download linux-libc-dev 2>&1 | grep -v unsandboxed >&2 || true)
deb=$(ls "$ROOT"/debs/linux-libc-dev_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || { log "linux-libc-dev could not be downloaded from $SUITE"; exit 1; }
rm -rf "$TREE.new"; mkdir -p "$TREE.new"
dpkg -x "$deb" "$TREE.new"
# The asm/ directory lives under the multiarch triplet; the probe adds it to the include path.
rm -rf "$TREE"; mv "$TREE.new" "$TREE"
dpkg-deb -f "$deb" Version > "$ROOT/VERSION"
log "linux-libc-dev $(cat "$ROOT/VERSION") unpacked into $TREE"
echo "$TREE/usr/include"

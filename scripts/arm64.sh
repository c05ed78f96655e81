#!/usr/bin/env bash
# npud on arm64, under emulation: an arm64 Debian root, the test suite and the ABI check run
# in it, the kernel suite on Debian's arm64 kernel, and the board install path.
#
# Why: npud is for edge boards, and those are arm64. This machine is x86_64, so an arm64
# Debian 12 root is made with debootstrap and every arm64 binary in it (python, gcc, npud's
# daemon) runs under qemu-user through binfmt_misc. The root is cached; a second run only
# re-installs npud from the checkout when it changed.
#
# usage:  scripts/arm64.sh ci               setup, the CI part of the test subset, the kernel
#                                           suite (what scripts/test.sh runs)
#         scripts/arm64.sh all              the whole test subset, the kernel suite and the
#                                           board install (NPUD_ARM64=all ./scripts/test.sh)
#         scripts/arm64.sh ci-tests|all-tests  the same without the kernel suite (scripts/test.sh
#                                           runs that earlier, beside the x86_64 one)
#         scripts/arm64.sh setup            build or refresh the roots and the venv
#         scripts/arm64.sh test [PYTEST...] the arm64 test run (default: the documented subset)
#         scripts/arm64.sh kernel           the kernel suite on Debian's arm64 kernel (QEMU)
#         scripts/arm64.sh board            scripts/install-board.sh in a fresh copy of the root
#         scripts/arm64.sh shell [CMD...]   a shell (or CMD) in the test root, for debugging
# env:    NPUD_CACHE           cache root (default ${XDG_CACHE_HOME:-~/.cache}/npud); the roots
#                              live in $NPUD_CACHE/arm64
#         NPUD_ARM64_MIRROR    Debian mirror (default: the host's, else deb.debian.org)
#         NPUD_ARM64_SUITE     "subset" (default) or "full": which tests the arm64 run takes
#         NPUD_ARM64_WATCHDOG_SCALE  watchdog scale of the daemons in that run (default 20)
#
# Layout of the cache ($NPUD_CACHE/arm64):
#   base/   debootstrap --arch=arm64 bookworm (minbase + systemd, udev, python3) with the
#           host's apt, pip and CA settings carried over: what a stock Debian board has. Never
#           written after it is made; the board install runs on a throw-away overlay of it.
#   test/   an overlay upper directory over base/: gcc, busybox, kmod, tmux and the venv
#           /opt/npud-ci/venv with npud (editable, from the checkout) and its test tools.
#   apt-archives/  the .deb files apt downloads in a fresh root, kept between runs (apt still
#           checks them against the root's index, so a changed package is fetched again).
#   pip-cache/     pip's cache of the venvs' wheels and index answers, likewise kept.
# Every chroot runs in a private mount namespace (unshare -m), so its mounts (the overlay,
# /proc, /dev, the checkout) vanish with it, whatever way it ends.
#
# Host packages: debootstrap qemu-user-static (scripts/test.sh installs them), and for the
# kernel stage qemu-system-arm. Runs as root (debootstrap, chroot and mounts need it).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd -P)
CACHE=${NPUD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/npud}
A="$CACHE/arm64"
BASE="$A/base"
VENV=/opt/npud-ci/venv
SUITE=bookworm
# What a stock Debian board image has; the board install brings the rest itself.
BASE_PKGS=systemd,systemd-sysv,udev,python3,ca-certificates
# The test layer: the probe's compiler, the kernel runner's busybox/kmod, tmux for `npuctl top`.
TEST_PKGS="gcc libc6-dev busybox-static kmod tmux python3-venv"
BASE_KEY="1 $SUITE minbase $BASE_PKGS"
TEST_KEY="1 $TEST_PKGS"
export NPUD_CACHE="$CACHE"

log() { echo "[arm64] $*" >&2; }
die() { log "$*"; exit 1; }

# ---- binfmt_misc: the kernel runs arm64 ELF files through qemu-aarch64 ----------------------
binfmt() {
  local reg=/proc/sys/fs/binfmt_misc
  [ -e "$reg/register" ] || mount -t binfmt_misc binfmt_misc "$reg" ||
    die "cannot mount binfmt_misc at $reg"
  if [ ! -e "$reg/qemu-aarch64" ]; then
    local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -f "$conf" ] || die "$conf missing: install qemu-user-static"
    # The F flag opens the interpreter now, so it need not exist inside the chroot.
    grep -v '^#' "$conf" > "$reg/register"
    log "registered qemu-aarch64 with binfmt_misc"
  fi
  grep -qx enabled "$reg/qemu-aarch64" || echo 1 > "$reg/qemu-aarch64"
}

# ---- the host's settings a debootstrapped root does not inherit ------------------------------
host_mirror() {
  [ -n "${NPUD_ARM64_MIRROR:-}" ] && { echo "$NPUD_ARM64_MIRROR"; return; }
  local m
  m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' |
      grep -v -- '-security' | grep '/debian/\?$' | head -1 || true)
  [ -n "$m" ] || m=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' |
                     grep '/debian/\?$' | head -1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

carry_settings() {  # ROOT: CA certificates, apt's Acquire settings, pip's configuration
  local r=$1 mirror=$2 f
  # Extra CAs (a proxy's, a company's): the host's bundle, which holds them, replaces the
  # root's (running update-ca-certificates under emulation costs minutes), and the CAs go
  # where a later update-ca-certificates in the root keeps them.
  if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    mkdir -p "$r/usr/local/share/ca-certificates"
    cp -rL /usr/local/share/ca-certificates/. "$r/usr/local/share/ca-certificates/"
  fi
  [ -f /etc/ssl/certs/ca-certificates.crt ] &&
    cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/ca-certificates.crt"
  # apt: proxies, release-file validity, retries (the flattened Acquire:: keys only; sources
  # and credentials are not copied: the root gets its own sources below).
  apt-config dump 2>/dev/null |
    grep -E '^Acquire::(([a-z]+::)?Proxy|http|https|ftp|Check-Valid-Until|Check-Date|Retries|ForceIPv4|ForceIPv6|Queue-Mode)' |
    grep -v '::IndexTargets' > "$r/etc/apt/apt.conf.d/00npud-host" || true
  {
    echo "deb $mirror $SUITE main"
    echo "deb $mirror $SUITE-updates main"
    echo "deb ${mirror%/debian*}/debian-security $SUITE-security main"
  } > "$r/etc/apt/sources.list"
  # pip: the global files verbatim (their paths exist in the root too), the user's and the
  # environment's indexes as far as they are reachable from inside (http/https, not file:).
  for f in /etc/pip.conf /etc/xdg/pip/pip.conf /etc/xdg/pip/constraints.txt; do
    [ -f "$f" ] && { mkdir -p "$r$(dirname "$f")"; cp "$f" "$r$f"; }
  done
  local pip=() idx extra
  [ -x .venv/bin/python ] && pip=(.venv/bin/python -m pip)
  if [ ${#pip[@]} -gt 0 ]; then
    idx=$("${pip[@]}" config get global.index-url 2>/dev/null || true)
    extra=$("${pip[@]}" config get global.extra-index-url 2>/dev/null || true)
    extra=$(tr ' ' '\n' <<<"$extra" | grep -E '^https?://' | tr '\n' ' ' || true)
    if [[ "$idx" =~ ^https?:// ]] || [ -n "${extra// /}" ]; then
      mkdir -p "$r/root/.config/pip"
      {
        echo "[global]"
        [[ "$idx" =~ ^https?:// ]] && echo "index-url = $idx"
        [ -n "${extra// /}" ] && echo "extra-index-url = $extra"
      } > "$r/root/.config/pip/pip.conf"
    fi
  fi
  cp /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
}

# Environment carried into every chroot: proxies, pip's and TLS settings, npud's and CI's.
chroot_env() {
  local v val out=()
  for v in $(compgen -e); do
    case "$v" in
      http_proxy|https_proxy|no_proxy|HTTP_PROXY|HTTPS_PROXY|NO_PROXY|CI|SSL_CERT_FILE|\
      REQUESTS_CA_BUNDLE|PIP_DEFAULT_TIMEOUT|PIP_RETRIES|PIP_CERT|PIP_TRUSTED_HOST|NPUD_*) ;;
      PIP_INDEX_URL|PIP_EXTRA_INDEX_URL)
        val=$(tr ' ' '\n' <<<"${!v}" | grep -E '^https?://' | tr '\n' ' ' || true)
        [ -n "${val// /}" ] && out+=("$v=${val% }")
        continue;;
      *) continue;;
    esac
    out+=("$v=${!v}")
  done
  [ ${#out[@]} -eq 0 ] || printf '%s\0' "${out[@]}"
}

# ---- entering a root: a private mount namespace, then chroot ---------------------------------
# enter MODE CMD...: MODE is base (the base root itself), test (base + the test layer) or
# fresh (base + a throw-away layer).
enter() {
  local mode=$1; shift
  local envs=()
  mapfile -d '' envs < <(chroot_env)
  unshare --mount --propagation private -- "$SRC/scripts/arm64.sh" _enter "$mode" \
    "${#envs[@]}" "${envs[@]}" "$@"
}

_enter() {  # runs inside the private mount namespace
  local mode=$1 n=$2; shift 2
  local envs=("${@:1:$n}"); shift "$n"
  local r
  case "$mode" in
    base) r=$BASE;;
    test|fresh)
      local layer=$A/test
      if [ "$mode" = fresh ]; then layer=$(mktemp -d "$A/fresh.XXXXXX"); fi
      mkdir -p "$layer/upper" "$layer/work" "$layer/merged"
      mount -t overlay -o "lowerdir=$BASE,upperdir=$layer/upper,workdir=$layer/work" \
        overlay "$layer/merged"
      r=$layer/merged
      if [ "$mode" = fresh ]; then
        # The throw-away layer goes when this ends; the merged tree (with /dev, /sys bound
        # into it) is only ever unmounted, never removed recursively.
        trap 'umount -R "'"$r"'" && rmdir "'"$r"'"; rm -rf --one-file-system "'"$layer"'/upper" "'"$layer"'/work"; rmdir "'"$layer"'" 2>/dev/null' EXIT
      fi;;
    *) die "unknown root $mode";;
  esac
  mount -t proc proc "$r/proc"
  mount --rbind /sys "$r/sys"
  mount --rbind /dev "$r/dev"
  mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
  mount -t tmpfs -o mode=755 tmpfs "$r/run"
  mkdir -p "$r$SRC" "$r$CACHE"
  mount --bind "$SRC" "$r$SRC"
  mount --bind "$CACHE" "$r$CACHE"
  [ -f /etc/resolv.conf ] && mount --bind /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
  if [ "$mode" = fresh ]; then
    # apt's downloads persist between fresh roots (what the board install fetches is the same
    # every run); what it installs does not.
    mkdir -p "$A/apt-archives/partial"
    mount --bind "$A/apt-archives" "$r/var/cache/apt/archives"
  fi
  local rc=0
  env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${envs[@]}" \
    chroot "$r" /bin/sh -c 'cd "$0" && exec "$@"' "$SRC" "$@" || rc=$?
  return "$rc"
}

# ---- the roots ---------------------------------------------------------------------------
make_base() {
  if [ -f "$BASE/.npud-base" ] && [ "$(cat "$BASE/.npud-base")" = "$BASE_KEY" ]; then
    return 0
  fi
  local t0=$SECONDS mirror
  mirror=$(host_mirror)
  log "debootstrap --arch=arm64 $SUITE from $mirror (once per cache)"
  rm -rf "$A/test"
  mkdir -p "$A"
  # A finished debootstrap is kept when a later step fails (the index unreachable with the
  # carried settings, say): the next run resumes after it.
  if [ "$(cat "$BASE.new/.npud-debootstrap" 2>/dev/null)" != "$BASE_KEY" ]; then
    rm -rf "$BASE.new"
    debootstrap --arch=arm64 --variant=minbase --include="$BASE_PKGS" \
      "$SUITE" "$BASE.new" "$mirror" > "$A/debootstrap.log" 2>&1 ||
      { tail -20 "$A/debootstrap.log" >&2; die "debootstrap failed (log: $A/debootstrap.log)"; }
    echo "$BASE_KEY" > "$BASE.new/.npud-debootstrap"
    log "debootstrap done in $((SECONDS - t0))s"
  fi
  carry_settings "$BASE.new" "$mirror"
  rm -rf "$BASE"; mv "$BASE.new" "$BASE"
  enter base apt-get -qq update || {
    mv "$BASE" "$BASE.new"
    die "the arm64 root cannot reach its package index with the host's settings"
  }
  # Lists and certificates belong to the base: a fresh copy installs without an update.
  echo "$BASE_KEY" > "$BASE/.npud-base"
  log "arm64 base root ready in $((SECONDS - t0))s"
}

make_test_layer() {
  local t0=$SECONDS
  if ! [ -f "$A/test/key" ] || [ "$(cat "$A/test/key")" != "$TEST_KEY" ]; then
    rm -rf "$A/test"; mkdir -p "$A/test"
    log "test layer: apt-get install $TEST_PKGS"
    enter test sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $TEST_PKGS >/dev/null && apt-get clean"
    echo "$TEST_KEY" > "$A/test/key"
    log "test layer packages in $((SECONDS - t0))s"
  fi
  # The venv: the dependencies whenever pyproject.toml changed, npud itself (editable) whenever
  # the checkout moved.
  local deps
  deps=$(sha256sum pyproject.toml | cut -c1-16)
  if [ "$deps" != "$(cat "$A/test/venv.key" 2>/dev/null || true)" ]; then
    t0=$SECONDS
    log "venv $VENV: pip install -e '.[test]' (arm64 wheels)"
    enter test env PIP_CACHE_DIR="$A/pip-cache" sh -c "
      set -e
      [ -x $VENV/bin/python ] || python3 -m venv $VENV
      $VENV/bin/python -m pip install -q --upgrade pip setuptools wheel
      $VENV/bin/python -m pip install -q --no-build-isolation -e '.[test]'
    "
    echo "$deps" > "$A/test/venv.key"
    echo "$SRC" > "$A/test/venv.src"
    log "venv ready in $((SECONDS - t0))s"
  elif [ "$SRC" != "$(cat "$A/test/venv.src" 2>/dev/null || true)" ]; then
    t0=$SECONDS
    log "venv $VENV: npud itself from this checkout ($SRC)"
    enter test "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
    echo "$SRC" > "$A/test/venv.src"
    log "npud re-installed in $((SECONDS - t0))s"
  fi
}

setup() {
  [ "$(id -u)" = 0 ] || die "the arm64 stage needs root (debootstrap, chroot, mounts)"
  # One arm64 run at a time per cache: two would share the test layer's overlay.
  mkdir -p "$A"
  exec 9>"$A/lock"
  flock -w 3600 9 || die "another arm64 run holds $A/lock"
  binfmt
  make_base
  make_test_layer
  # The ABI check compiles against the same kernel headers as the x86_64 run; fetch them on
  # the host (the cache is shared with the root), so the emulated run does no apt work.
  scripts/fetch-kernel-headers.sh >/dev/null
}

# ---- the test run ------------------------------------------------------------------------
# The subset: the arm64 facts (platform, the ABI probe compiled by arm64 gcc), the simulated
# NPU and its device process, the daemon end to end and under systemd's protocol, the LLM
# decode through the daemon and its CLI, npuctl, the client end to end. docs/board.md lists
# what it leaves to the x86_64 run and why; NPUD_ARM64_SUITE=full runs everything.
SUBSET=(tests/test_platform.py tests/abi tests/devices/sim/test_process.py
        tests/daemon/test_daemon_e2e.py tests/daemon/test_systemd.py
        tests/daemon/test_policy_settings.py tests/llm/test_daemon.py tests/llm/test_cli.py
        tests/cli tests/client/test_e2e.py)
# The simulated NPU computes every job for real; under qemu-user that is ~20x slower than the
# host, so the daemons of this run scale their class watchdogs by the same factor.
SCALE=${NPUD_ARM64_WATCHDOG_SCALE:-20}
# What CI runs of the subset on every change (NPUD_ARM64=all runs all of it): the machine and
# ABI checks, the device process (but for its two small-job-first cases, whose big job is
# 17 GFLOP of int8 matmul: three seconds on the host, over ten minutes each under qemu-user),
# the daemon end to end and under systemd's protocol, the LLM decode through the daemon against
# the numpy reference and its CLI, and every npuctl command's JSON against a daemon's known
# workload. About half the subset's time; the rest (npuctl's tables, top and error paths, the
# client end to end, the LLM's EOS, upload and bad-model cases) runs on x86_64 in every run and
# here with `all`.
CI_SUBSET=(tests/test_platform.py tests/abi tests/devices/sim/test_process.py
           tests/daemon/test_daemon_e2e.py tests/daemon/test_systemd.py
           tests/daemon/test_policy_settings.py
           tests/llm/test_daemon.py::test_tokens_through_the_daemon_match_the_reference
           tests/llm/test_daemon.py::test_watchdog_on_a_step_cancels_the_one_in_flight_behind_it
           tests/llm/test_daemon.py::test_jobs_and_buffers_have_the_right_classes
           tests/llm/test_cli.py tests/cli/test_json.py tests/cli/test_model.py
           --deselect
           "tests/devices/sim/test_process.py::test_a_small_job_ends_while_a_big_one_computes_on_another_engine")
# qemu-user answers ENOSYS to an ioctl it cannot translate (here: a DRM ioctl on a pipe) where
# a kernel answers ENOTTY; that is the emulator's, so this one test is left out of the run.
EMULATOR_ONLY=(--deselect tests/abi/test_ioctl.py::test_a_drm_ioctl_on_a_non_drm_fd_names_the_call)

# pytest's per-test timeout is the hang guard of this run: an hour, because a test of real
# compute (the device process's matmul-heavy job) takes many minutes here on a loaded machine.
# Test files are spread over two workers (pytest-xdist, a file per worker at a time): most of
# the subset waits on daemons and device processes, so two emulated interpreters keep both
# cores busy.
run_tests() {
  local args=("$@")
  if [ ${#args[@]} -eq 0 ]; then
    if [ "${NPUD_ARM64_SUITE:-subset}" = full ]; then args=(tests); else args=("${SUBSET[@]}"); fi
  fi
  log "pytest on arm64 (qemu-user): ${args[*]}"
  enter test env NPUD_EXPECT_MACHINE=aarch64 NPUD_SCHEDULER__WATCHDOG_SCALE="$SCALE" \
    "$VENV/bin/python" -m pytest -m "not kernel" -p no:cacheprovider -o timeout=3600 \
    -n 2 --dist loadfile --durations=10 "${EMULATOR_ONLY[@]}" "${args[@]}"
}

# ---- the kernel suite on Debian's arm64 kernel -------------------------------------------
kernel() {
  unshare --mount --propagation private -- "$SRC/scripts/arm64.sh" _kernel
}

_kernel() {  # inside a private mount namespace: the test root as one tree QEMU can share
  local m=$A/test/merged
  mkdir -p "$m" "$A/test/upper" "$A/test/work"
  mount -t overlay -o "lowerdir=$BASE,upperdir=$A/test/upper,workdir=$A/test/work" overlay "$m"
  mkdir -p "$m$SRC" "$m$CACHE"
  mount --bind "$SRC" "$m$SRC"
  mount --bind "$CACHE" "$m$CACHE"
  NPUD_KERNEL_ROOT=$m NPUD_KERNEL_PYTHON=$VENV/bin/python scripts/kernel-tests.sh --arch arm64
}

# ---- the board install path in a fresh root ------------------------------------------------
board() {
  local dir=$A/wheel
  rm -rf "$dir"; mkdir -p "$dir"
  [ -x .venv/bin/python ] || die "no .venv: run scripts/test.sh"
  .venv/bin/python -m pip wheel -q --no-deps -w "$dir" . >/dev/null
  # pip's download cache persists (the wheels of grpcio, numpy, ...); the install does not.
  enter fresh env PIP_CACHE_DIR="$A/pip-cache" "$SRC/scripts/arm64.sh" _board "$(ls "$dir"/npud-*.whl)"
}

_board() {  # inside a fresh copy of the base root: install, start as the unit would, use it
  local wheel=$1 sock=/run/npud/npud.sock t0=$SECONDS
  scripts/install-board.sh --wheel "$wheel"
  log "board: install-board.sh took $((SECONDS - t0))s"
  grep -qx 'ExecStart=/opt/npud/bin/npud --config /etc/npud/npud.toml' \
    /usr/lib/systemd/system/npud.service || die "the installed unit does not start /opt/npud/bin/npud"
  [ -f /usr/lib/udev/rules.d/70-npud.rules ] || die "the udev rule is not installed"
  getent group npu >/dev/null && id -nG npud | grep -qw render || die "sysusers not applied"
  # This board is emulated (~20x slower than a real one): the operator's config raises the
  # watchdogs; the unit itself is used as installed.
  sed -i "s/^watchdog_scale = .*/watchdog_scale = $SCALE/" /etc/npud/npud.toml
  useradd --create-home --groups npu alice
  log "starting the unit's ExecStart as its user (systemd cannot run under emulation)"
  python3 scripts/run-unit.py /usr/lib/systemd/system/npud.service --ready /tmp/ready \
    --timeout 600 &
  local unit=$! pid
  while [ ! -s /tmp/ready ]; do
    kill -0 "$unit" 2>/dev/null || die "the service did not start"
    sleep 1
  done
  pid=$(awk '{print $2}' /tmp/ready)
  log "board: the unit's ExecStart ready $((SECONDS - t0))s after the install began"
  [ "$(stat -c %U "/proc/$pid")" = npud ] || die "npud does not run as user npud"
  [ "$(stat -c '%U:%G %a' "$sock")" = "npud:npu 660" ] ||
    die "socket $sock is $(stat -c '%U:%G %a' "$sock"), not npud:npu 660"
  as_operator() { setpriv --reuid=alice --regid=alice --init-groups \
    env HOME=/home/alice PATH=/opt/npud/bin:/usr/bin:/bin "$@"; }
  log "npuctl, as a member of group npu"
  as_operator npuctl --socket "$sock" devices list
  as_operator npuctl --socket "$sock" version
  log "an LLM decode through the daemon, and the same prompt in process"
  local prompt="An edge board answers" via direct
  via=$(as_operator npud-llm run --socket "$sock" --prompt "$prompt" --max-tokens 8 --no-eos --json)
  direct=$(as_operator npud-llm run --direct --prompt "$prompt" --max-tokens 8 --no-eos --json)
  python3 - "$via" "$direct" <<'PY'
import json, sys
via, direct = (json.loads(text) for text in sys.argv[1:])
assert via["token_ids"] == direct["token_ids"] and len(via["token_ids"]) == 8, (via, direct)
assert via["backend"] != direct["backend"], (via["backend"], direct["backend"])
print(f"[arm64] decode through npud: {len(via['token_ids'])} tokens, equal to the in-process run")
PY
  kill -TERM "$unit"
  wait "$unit" || die "npud did not stop cleanly on SIGTERM"
  log "board install path: installed, started as the unit, answered npuctl and a decode" \
      "($((SECONDS - t0))s in the fresh root)"
}

# What CI runs (scripts/test.sh): the root, CI_SUBSET and the kernel suite on the arm64 kernel.
# Each part prints its own result; the last line names the duration of each. `all` runs the
# whole subset and adds the board install in a fresh root (about 16 min emulated, most of it
# pip: outside the CI budget).
# `ci-tests` and `all-tests` are the same without the kernel suite, which scripts/test.sh runs
# earlier, beside the x86_64 one.
ci() {
  local mode=${1:-ci} kernel_too=${2:-1} t0=$SECONDS t1 times=() tests=("${CI_SUBSET[@]}")
  [ "$mode" = all ] && tests=("${SUBSET[@]}")
  setup; times+=("setup $((SECONDS - t0))s"); t1=$SECONDS
  run_tests "${tests[@]}"; times+=("tests $((SECONDS - t1))s"); t1=$SECONDS
  if [ "$kernel_too" = 1 ] && [ "${NPUD_SKIP_KERNEL:-0}" != 1 ]; then
    kernel; times+=("kernel $((SECONDS - t1))s"); t1=$SECONDS
  fi
  if [ "$mode" = all ]; then
    board; times+=("board $((SECONDS - t1))s")
  fi
  log "arm64 stage ($mode) passed in $((SECONDS - t0))s: ${times[*]}"
}

case "${1:-}" in
  _enter) shift; _enter "$@";;
  _kernel) _kernel;;
  _board) shift; _board "$@";;
  ci) ci;;
  all) ci all;;
  ci-tests) ci ci 0;;
  all-tests) ci all 0;;
  setup) setup;;
  test) shift; setup; run_tests "$@";;
  kernel) setup; kernel;;
  board) setup; board;;
  shell) shift; setup; if [ $# -eq 0 ]; then enter test /bin/bash; else enter test "$@"; fi;;
  *) echo "usage: $0 ci|all|ci-tests|all-tests|setup|test|kernel|board|shell" >&2; exit 2;;
esac

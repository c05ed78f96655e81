#!/usr/bin/env bash
# Install npud with its development tools into .venv and run every check:
# ruff, mypy --strict, the layering contracts, the stale-codegen check, the unit and
# end-to-end tests, and the kernel suite (real DRM ioctls on vgem under QEMU); then the arm64
# stage (scripts/arm64.sh: in an emulated arm64 Debian root, the machine check, the ABI check
# compiled by arm64 gcc, the simulated NPU's device process, the daemon end to end, the LLM
# decode through it and npuctl; its kernel suite on Debian's arm64 kernel runs beside the
# x86_64 one; NPUD_ARM64=all runs the whole arm64 test subset and adds the board install in a
# fresh root; docs/board.md).
#
# On a fresh Debian/Ubuntu machine run as root (or with sudo available) the missing system
# packages are installed first. Set NPUD_SKIP_KERNEL=1 to skip the QEMU kernel suites locally,
# NPUD_SKIP_ARM64=1 to skip the arm64 stage; it is also skipped when pytest arguments are given
# (a partial run) or when not running as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# ---- system packages ---------------------------------------------------------------------
# python3-venv: the venv module; gcc + libc headers: the ABI probe; qemu/busybox/kmod/cpio/xz:
# the kernel runner; systemd: systemd-analyze verify of the unit; tmux: the `npuctl top` test;
# prometheus: the metrics tests; curl: the gateway's curl tests.
want=()
python3 -c 'import ensurepip, venv' 2>/dev/null || want+=(python3-venv)
command -v gcc >/dev/null || want+=(gcc libc6-dev)
if [ "${NPUD_SKIP_KERNEL:-0}" != 1 ]; then
  command -v qemu-system-x86_64 >/dev/null || want+=(qemu-system-x86)
  [ -x /bin/busybox ] || dpkg -s busybox-static >/dev/null 2>&1 || want+=(busybox-static)
  command -v modprobe >/dev/null || want+=(kmod)
  command -v cpio >/dev/null || want+=(cpio)
  command -v xz >/dev/null || want+=(xz-utils)
fi
command -v systemd-analyze >/dev/null || want+=(systemd)
ARM64=1
{ [ "${NPUD_SKIP_ARM64:-0}" = 1 ] || [ $# -gt 0 ] || [ "$(id -u)" != 0 ]; } && ARM64=0
if [ "$ARM64" = 1 ]; then
  # debootstrap + qemu-user-static: the arm64 root; qemu-system-arm: its kernel suite.
  command -v debootstrap >/dev/null || want+=(debootstrap)
  [ -f /usr/lib/binfmt.d/qemu-aarch64.conf ] || want+=(qemu-user-static)
  if [ "${NPUD_SKIP_KERNEL:-0}" != 1 ]; then
    command -v qemu-system-aarch64 >/dev/null || want+=(qemu-system-arm)
  fi
fi
# cmake + g++: building llama-cpp-python, the reference of the real-model tests (once, cached)
command -v cmake >/dev/null || want+=(cmake)
command -v g++ >/dev/null || want+=(g++)
command -v tmux >/dev/null || want+=(tmux)
# prometheus + promtool: a real Prometheus scrapes /metrics in the metrics tests.
command -v prometheus >/dev/null && command -v promtool >/dev/null || want+=(prometheus)
command -v curl >/dev/null || want+=(curl)
# golang-gogoprotobuf-dev: gogo.proto, which Kubernetes' device plugin proto imports (the plugin
# tests compile that proto).
[ -f /usr/share/gocode/src/github.com/gogo/protobuf/gogoproto/gogo.proto ] || want+=(golang-gogoprotobuf-dev)
if [ ${#want[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "== installing system packages: ${want[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi

# ---- Kubernetes' device plugin proto ---------------------------------------------------------
# The device plugin's wire proto is checked against Kubernetes' own, from Debian's package
# golang-github-kubernetes-kubelet-dev. Releases that ship it install it; older ones (bookworm)
# fetch the same package from Debian's unstable archive with apt-get download (a private source
# list, nothing added to the system's) and unpack it under .cache/debian for the tests.
KUBELET_PROTO=usr/share/gocode/src/k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/api.proto
if [ ! -f "/$KUBELET_PROTO" ] && [ ! -f ".cache/debian/$KUBELET_PROTO" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if apt-cache show golang-github-kubernetes-kubelet-dev >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      golang-github-kubernetes-kubelet-dev >/dev/null
  else
    echo "== fetching golang-github-kubernetes-kubelet-dev from Debian unstable"
    apt_tmp=$(mktemp -d)
    mkdir -p "$apt_tmp/lists/partial" "$apt_tmp/archives/partial"
    echo "deb http://deb.debian.org/debian sid main" >"$apt_tmp/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$apt_tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$apt_tmp/lists" -o "Dir::Cache::Archives=$apt_tmp/archives"
      -o Acquire::Languages=none -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" update -qq
    (cd "$apt_tmp" && apt-get "${apt_opts[@]}" download golang-github-kubernetes-kubelet-dev -qq)
    mkdir -p .cache/debian
    dpkg-deb -x "$apt_tmp"/golang-github-kubernetes-kubelet-dev_*.deb .cache/debian
    rm -rf "$apt_tmp"
  fi
fi

# ---- python environment ------------------------------------------------------------------
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'
PY=.venv/bin/python

# ---- llama.cpp, the reference of the real-model tests ------------------------------------
# llama-cpp-python has no wheel on the index and builds from source (minutes on 2 cores); a
# native build crashes on some virtual CPUs, so it targets AVX2 without AVX-512. The wheel is
# built once into a cache outside the checkout ($NPUD_WHEEL_CACHE) and installed from there.
LLAMA_CPP=0.3.36
WHEELS=${NPUD_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/npud/wheels}
if ! $PY -c 'import llama_cpp' 2>/dev/null; then
  wheel=$(ls "$WHEELS"/llama_cpp_python-$LLAMA_CPP-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    echo "== building llama-cpp-python $LLAMA_CPP into $WHEELS (once; at most 40 min)"
    mkdir -p "$WHEELS"
    t0=$(date +%s)
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
      timeout 2400 $PY -m pip wheel -q --no-deps "llama-cpp-python==$LLAMA_CPP" -w "$WHEELS" ||
      echo "!! llama-cpp-python did not build: the comparisons with llama.cpp will be SKIPPED"
    echo "   took $(( $(date +%s) - t0 )) s"
    wheel=$(ls "$WHEELS"/llama_cpp_python-$LLAMA_CPP-*.whl 2>/dev/null | head -n 1 || true)
  fi
  if [ -n "$wheel" ]; then
    $PY -m pip install -q "$wheel" || echo "!! llama-cpp-python did not install: the comparisons with llama.cpp will be SKIPPED"
  fi
fi

# ---- the kernel suites beside the quality gates ---------------------------------------------
# Each kernel suite (real DRM on vgem: x86_64 under QEMU, and arm64 on Debian's arm64 kernel
# from the emulated root) is one QEMU vCPU, a core for a minute or two; they run side by side,
# in the background while the gates run, and their logs are printed whole when they end. The
# arm64 one first makes (or refreshes) the arm64 root.
KERNEL=0
[ "${NPUD_SKIP_KERNEL:-0}" != 1 ] && [ -x scripts/run-in-kernel.sh ] && KERNEL=1
# Each runs in a session of its own (setsid), so a run that stops early (a gate failed, ^C)
# takes the suites' QEMU processes with it.
logs=$(mktemp -d "${TMPDIR:-/tmp}/npud-ci.XXXXXX")
kernel_x86=""; kernel_arm64=""; t_kernel=$SECONDS
stop_suites() {
  local pid
  for pid in $kernel_x86 $kernel_arm64; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  rm -rf "$logs"
}
trap stop_suites EXIT
if [ "$KERNEL" = 1 ]; then
  setsid scripts/kernel-tests.sh > "$logs/kernel" 2>&1 & kernel_x86=$!
  if [ "$ARM64" = 1 ]; then
    setsid scripts/arm64.sh kernel > "$logs/kernel-arm64" 2>&1 & kernel_arm64=$!
  fi
fi

# ---- quality gates -----------------------------------------------------------------------
echo "== ruff";          .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy --strict"; .venv/bin/mypy
echo "== import layers"; .venv/bin/lint-imports

# finish NAME PID LOG: wait for a background suite, print its log, fail the run if it failed.
finish() {
  local rc=0
  wait "$2" || rc=$?
  [ "$2" = "$kernel_x86" ] && kernel_x86="" || kernel_arm64=""
  echo "== $1"
  cat "$3"
  [ "$rc" -eq 0 ] || { echo "== $1 failed (status $rc)"; exit "$rc"; }
}
[ -z "$kernel_x86" ] || finish "kernel suite (QEMU + vgem)" "$kernel_x86" "$logs/kernel"
[ -z "$kernel_arm64" ] ||
  finish "kernel suite on arm64 (Debian's arm64 kernel, emulated root)" "$kernel_arm64" "$logs/kernel-arm64"
[ "$KERNEL" = 0 ] || echo "== kernel suites ended $((SECONDS - t_kernel))s after they began"

# ---- the test suite (its summary line is the last thing printed) --------------------------
# The whole run spreads test files over one worker per core, at most four (pytest-xdist, a
# file per worker at a time: a module's daemon fixture stays in one process). Half the
# suite's time is spent waiting on daemons and subprocesses, so two workers on two cores take
# about half as long as one. A partial run (pytest arguments given) runs in one process.
workers=()
if [ $# -eq 0 ]; then
  n=$(nproc 2>/dev/null || echo 1); [ "$n" -gt 4 ] && n=4
  [ "$n" -gt 1 ] && workers=(-n "$n" --dist loadfile)
fi
echo "== pytest"
set +e
$PY -m pytest -m "not kernel" -p no:cacheprovider "${workers[@]}" "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "no tests were collected: that is a failure"; exit 1; fi
[ $rc -eq 0 ] || exit $rc

# ---- the arm64 stage (its own pytest summary and stage timings are the last lines) ----------
# (its kernel suite ran above, beside the x86_64 one).
if [ "$ARM64" = 1 ]; then
  # NPUD_ARM64=all runs the whole arm64 test subset and adds the board install (most of an
  # hour emulated on 2 cores).
  echo "== arm64 (emulated root: platform, ABI, device process, daemon, LLM decode, npuctl)"
  if [ "${NPUD_ARM64:-ci}" = all ]; then scripts/arm64.sh all-tests; else scripts/arm64.sh ci-tests; fi
fi

#!/usr/bin/env bash
# Run the kernel suite (tests/kernel, marked `kernel`) inside one QEMU boot of a real Debian
# kernel with vgem (scripts/run-in-kernel.sh). Fails the build when a test fails; retries the VM
# once when the guest reports no status at all (125: a flaky boot, not a test failure); prints
# pytest's summary. Called by scripts/test.sh.
#
# pytest starts ~15x slower under TCG, so plugin autoloading is off and only the plugins the
# configuration needs are loaded; the venv's python binary is called directly (a pyenv shim is
# a bash script that costs seconds in the guest).
#
# usage: scripts/kernel-tests.sh [--arch arm64] [PYTEST ARGS...]
# --arch arm64 boots Debian's arm64 kernel with the arm64 root as the guest's filesystem and
# runs the same tests with that root's python: NPUD_KERNEL_ROOT names the root and
# NPUD_KERNEL_PYTHON the interpreter inside it (scripts/arm64.sh kernel sets both).
set -euo pipefail
cd "$(dirname "$0")/.."
runner=(scripts/run-in-kernel.sh)
if [ "${1:-}" = --arch ] && [ "${2:-}" = arm64 ]; then
  shift 2
  root=${NPUD_KERNEL_ROOT:?the arm64 root: run this through scripts/arm64.sh kernel}
  PYBIN=${NPUD_KERNEL_PYTHON:?the interpreter inside the arm64 root}
  [ -x "$root$PYBIN" ] || { echo "kernel-tests: no $PYBIN in $root" >&2; exit 2; }
  runner+=(--arch arm64 --root "$root")
else
  PY=$(readlink -f .venv/bin/python)
  [ -x "$PY" ] || { echo "kernel-tests: no .venv (run scripts/test.sh first)" >&2; exit 2; }
  PYBIN="$PWD/.venv/bin/python"
fi
"${runner[@]}" --setup-only
cmd=(env PYTHONDONTWRITEBYTECODE=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
     "$PYBIN" -m pytest -p timeout -m kernel -p no:cacheprovider -q tests/kernel "$@")
# In the arm64 guest, say which kernel and machine the suite ran on.
[ ${#runner[@]} -eq 1 ] || cmd=(sh -c 'echo "== guest: $(uname -srm)"; exec "$@"' sh "${cmd[@]}")
rc=0
for attempt in 1 2; do
  t0=$SECONDS
  set +e
  "${runner[@]}" -- "${cmd[@]}"
  rc=$?
  set -e
  echo "== kernel suite: status $rc after $((SECONDS - t0))s (attempt $attempt)"
  [ "$rc" -eq 125 ] || break
  echo "== the guest gave no status (boot failure or panic): retrying once"
done
exit "$rc"

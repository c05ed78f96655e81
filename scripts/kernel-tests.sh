#!/usr/bin/env bash
# Run the kernel suite (tests/kernel, marked `kernel`) inside one QEMU boot of a real Debian
# kernel with vgem (scripts/run-in-kernel.sh). Fails the build when a test fails; retries the VM
# once when the guest reports no status at all (125: a flaky boot, not a test failure); prints
# pytest's summary. Called by scripts/test.sh.
#
# pytest starts ~15x slower under TCG, so plugin autoloading is off and only the plugins the
# configuration needs are loaded; the venv's python binary is called directly (a pyenv shim is
# a bash script that costs seconds in the guest).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(readlink -f .venv/bin/python)
[ -x "$PY" ] || { echo "kernel-tests: no .venv (run scripts/test.sh first)" >&2; exit 2; }
scripts/run-in-kernel.sh --setup-only
cmd=(env PYTHONDONTWRITEBYTECODE=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
     "$PWD/.venv/bin/python" -m pytest -p timeout -m kernel -p no:cacheprovider -q tests/kernel "$@")
rc=0
for attempt in 1 2; do
  t0=$SECONDS
  set +e
  scripts/run-in-kernel.sh -- "${cmd[@]}"
  rc=$?
  set -e
  echo "== kernel suite: status $rc after $((SECONDS - t0))s (attempt $attempt)"
  [ "$rc" -eq 125 ] || break
  echo "== the guest gave no status (boot failure or panic): retrying once"
done
exit "$rc"

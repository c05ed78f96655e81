#!/usr/bin/env bash
# Quickstart: install npud into .venv and run its main job on the simulated NPU.
# (The daemon, the LLM decode client and the queue view are wired in here as they land.)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e .
.venv/bin/python -c 'import npud; print("npud", npud.__version__, "installed")'

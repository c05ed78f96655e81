#!/usr/bin/env bash
# Quickstart: install npud into .venv and run its main job on the simulated NPU:
#   1. start the daemon (no NPU here, so it serves a simulated RK3588-class NPU, and says so);
#   2. run an LLM decode client (a tiny Llama-style model: weights as persistent buffers, prefill
#      as THROUGHPUT jobs, each decode step a LATENCY job over the bidirectional stream);
#   3. while it decodes, show the operator's view of the queues (`npuctl`);
#   4. run a second client on the same model: it uploads 0 weight bytes (they stayed resident);
#   5. stop the daemon with SIGTERM (it drains and exits 0).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e .
BIN=$PWD/.venv/bin

RUN=$(mktemp -d "${TMPDIR:-/tmp}/npud-quickstart.XXXXXX")
SOCK=$RUN/npud.sock
export NPUD_SOCKET=$SOCK
PROMPT="Once upon a time, on a board nobody could reach,"

echo "== 1. starting npud on the simulated NPU (log: $RUN/npud.log)"
"$BIN/npud" --device sim --socket "$SOCK" --state-dir "$RUN/state" >"$RUN/npud.log" 2>&1 &
DAEMON=$!
stop_daemon() { kill -TERM "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null || true; }
trap stop_daemon EXIT
for _ in $(seq 300); do
  [ -S "$SOCK" ] && "$BIN/npuctl" version >/dev/null 2>&1 && break
  kill -0 "$DAEMON" 2>/dev/null || { echo "npud exited early:"; cat "$RUN/npud.log"; exit 1; }
  sleep 0.1
done
"$BIN/npuctl" devices list

echo
echo "== 2. an LLM decode client: $BIN/npud-llm run --prompt \"$PROMPT\""
"$BIN/npud-llm" run --prompt "$PROMPT" --max-tokens 160 >"$RUN/llm.out" 2>&1 &
LLM=$!
for _ in $(seq 100); do   # wait until its context is there, then look at the queues
  [ "$("$BIN/npuctl" -o json contexts list 2>/dev/null | tr -d ' \n')" != "[]" ] && break
  sleep 0.1
done

echo
echo "== 3. the queue view while it decodes: npuctl; npuctl queues list"
"$BIN/npuctl"
"$BIN/npuctl" queues list
wait "$LLM" || { cat "$RUN/llm.out"; exit 1; }
echo
echo "-- the client's output (the tiny model has random weights: its text is gibberish):"
cat "$RUN/llm.out"

echo
echo "== 4. a second process on the same model (weights are found resident, 0 bytes uploaded)"
"$BIN/npud-llm" run --prompt "$PROMPT" --max-tokens 16

echo
echo "== 5. stopping npud (SIGTERM: drain, then exit 0)"
kill -TERM "$DAEMON"
rc=0; wait "$DAEMON" || rc=$?
trap - EXIT
echo "npud exited with status $rc"
tail -n 3 "$RUN/npud.log"
rm -rf "$RUN"
exit "$rc"

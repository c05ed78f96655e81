"""npud's benchmarks: every figure a ratio against a baseline measured in the same run.

npud exists to be faster and fairer than each process opening the NPU itself. The benchmarks
here measure that claim on any machine (the simulated NPU in its real-time device-process mode),
and because build machines are noisy every figure is compared with a baseline taken in the same
run rather than with a number remembered from elsewhere:

* P1 overhead: a null job over the bidirectional submit stream vs a bare grpc.aio echo stream
  and vs a direct in-process call into the device layer;
* P2 isolation: LATENCY queue wait under a saturating THROUGHPUT flood, npud policy vs fifo;
* P3 utilisation: engine busy fraction under throughput saturation from 16 clients, npud vs fifo;
* P4 residency: a second process attaching a 100 MB persistent model vs a cold upload;
* P5 decode: LLM tokens/s through the daemon vs in-process, and inter-token p99 under a
  prefill flood vs unloaded (wraps ``bench/decode.py``);
* P6 scale: 1,000 contexts and 100,000 queued jobs (wraps ``bench/scale.py``).

``python -m bench`` runs them all (``--quick`` for the CI smoke check); see docs/benchmarks.md.
"""

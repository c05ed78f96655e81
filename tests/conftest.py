"""Settings for the whole suite, applied before any test module imports numpy.

The simulated NPU computes with numpy in the test process (the direct backend). OpenBLAS
starts a thread per core for every matrix product, and on a small shared CI host those threads
spin against each other and everything else: a 1-row product ran 10x slower than on one
thread. The device process already runs BLAS single-threaded per engine (``npud.devices.sim.host``);
the test process does the same unless the environment says otherwise.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

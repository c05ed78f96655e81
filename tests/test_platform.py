"""Which machine the suite runs on: the arm64 run must really be arm64, not the host."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from npud.abi.conformance import elf_machine


def test_the_interpreter_is_a_binary_of_the_machine_the_run_was_started_for() -> None:
    """platform.machine() is what the run asked for (NPUD_EXPECT_MACHINE; the arm64 run sets
    aarch64) and the running interpreter is an ELF of that very machine, so no host binary
    slipped in."""
    expected = os.environ.get("NPUD_EXPECT_MACHINE", platform.machine())
    assert platform.machine() == expected
    assert elf_machine(Path(sys.executable).resolve()) == expected

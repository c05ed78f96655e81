"""Tests of the simulated NPU."""

"""The npud command-stream format (v1): a small tensor ISA, its builder and its validating decoder.

A leaf: used by the simulated NPU to execute, and by clients (the LLM workload) to compile.
"""

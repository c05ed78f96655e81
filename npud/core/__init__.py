"""Core: contexts, queues, jobs, the scheduler and residency. Pure Python: no grpc, no cffi."""

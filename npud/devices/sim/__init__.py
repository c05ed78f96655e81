"""The simulated NPU: a device model that executes the npud command stream for real (numpy)."""

"""Fake kernels: ioctl-level stand-ins for the NPU drivers, validating like the real ones.

Each module models one driver (``rocket``, ``ivpu``, ``amdxdna``, ``ethosu``, ``qaic``,
``etnaviv``, ``rknpu``) on the DRM core of :mod:`.base`. Struct layouts are written here
independently of :mod:`npud.abi` (Python ``struct`` formats from the kernel headers), so a
wrong declaration on either side shows up as an ABI mismatch rather than cancelling out.
Behaviour (which errno for which mistake) is taken from the drivers' sources; each check cites
the kernel function it mirrors.
"""

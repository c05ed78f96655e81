"""What every real-NPU adapter shares: the kernel file, the device skeleton, waiting, command slots.

The accel adapters (:mod:`~npud.devices.rocket`, :mod:`~npud.devices.ivpu`,
:mod:`~npud.devices.amdxdna`, :mod:`~npud.devices.ethosu`, :mod:`~npud.devices.qaic`, and the
DRM-node ones :mod:`~npud.devices.rknpu` and :mod:`~npud.devices.etnaviv`) differ in how they
allocate, submit and learn of completion, and agree on everything else, which lives here, one
concept a module:

- :mod:`~npud.devices.accel.kernel`: :class:`~npud.devices.accel.kernel.KernelFile`, the
  injectable file-descriptor operations, and the helpers every ioctl needs;
- :mod:`~npud.devices.accel.device`: :class:`~npud.devices.accel.device.AccelDevice`, the
  :class:`~npud.devices.base.Device` skeleton (identity, buffer table, in-flight jobs, loss,
  statistics) and completion by a pollable fd on the event loop;
- :mod:`~npud.devices.accel.waiter`: the device's ONE waiter thread, for kernels that offer
  only a blocking wait ioctl, and the skeleton of such adapters;
- :mod:`~npud.devices.accel.slots`: command BOs reused across jobs, one per job in flight.

Everything except the waiter thread runs on the core thread (the event loop).
"""

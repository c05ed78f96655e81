"""The kernel ABI: cffi declarations of the DRM and accel UAPIs and the one ioctl choke point."""

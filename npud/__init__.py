"""npud: a userspace NPU job-scheduling daemon for Linux.

Importing :mod:`npud` has no side effects; it only carries the version.
"""

__version__ = "0.2.0"

"""Reliability and security: faults, load, bad input and identity (issue 12)."""

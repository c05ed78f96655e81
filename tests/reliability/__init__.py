"""Reliability and security: faults, load, bad input and identity."""

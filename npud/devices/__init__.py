"""Devices: the Device contract (:mod:`npud.devices.base`) and the adapters that implement it."""

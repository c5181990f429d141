"""Petri: a self-hosted gateway that runs untrusted code in hardened containers."""

__version__ = "0.1.0"

"""Lockgate: one identity-aware chokepoint between callers and the systems they reach."""

__version__ = "0.1.0"

"""Masking: detectors, strategies, per-session policy and per-result plans (no I/O)."""

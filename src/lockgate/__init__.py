"""Lockgate: one identity-aware chokepoint between callers and the systems they reach."""

import warnings

__version__ = "0.1.0"

# cryptography 51 deprecates DSA, and asyncssh touches its DSA types when imported: every
# `lockgate` command would print that warning. The gateway never accepts DSA keys (OpenSSH
# dropped ssh-dss), so it says nothing to Lockgate's users. pyproject.toml filters the same.
warnings.filterwarnings(
    "ignore", message="DSA is deprecated", category=UserWarning, module="asyncssh"
)

"""Sans-IO pieces of the SSH gateway (the SSH transport itself is asyncssh's)."""

"""Just-in-time approval: statements held for a reviewer, and time-boxed access grants."""

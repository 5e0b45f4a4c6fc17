"""The admin HTTP API (FastAPI, OpenAPI at /api/openapi.json) and the web console's files."""

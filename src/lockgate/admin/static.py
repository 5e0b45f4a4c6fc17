"""The built web console: files under `admin/static/`, index.html for any other page path.

The console routes in the browser (`/sessions/abc`), so every non-API path that is not a
file gets index.html. Without a build (no index.html), a short page says how to build it;
the API works either way.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

STATIC_DIR = Path(__file__).parent / "static"

NO_CONSOLE = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>Lockgate admin</title>
<h1>Lockgate admin API</h1>
<p>The web console is not built into this installation (no <code>index.html</code> under
<code>lockgate/admin/static/</code>). Build it with <code>scripts/setup</code>, which runs the
<code>web/</code> build.</p>
<p>The HTTP API works: see <a href="/api/docs">/api/docs</a> and
<a href="/api/openapi.json">/api/openapi.json</a>.</p>
</html>
"""


def static_router(folder: Path = STATIC_DIR) -> APIRouter:
    """Routes serving `folder`, with index.html as the fallback for page paths."""
    router = APIRouter(include_in_schema=False)
    root = folder.resolve()

    @router.get("/{path:path}")
    def page(path: str) -> Response:
        if path == "api" or path.startswith(("api/", "auth/")):
            raise HTTPException(404, detail=f"no such API path: /{path}")
        index = root / "index.html"
        if path:
            wanted = (root / path).resolve()
            # Never outside the folder (`..`, symlinks pointing away).
            if wanted.is_relative_to(root) and wanted.is_file():
                media = mimetypes.guess_type(wanted.name)[0] or "application/octet-stream"
                cache = (
                    "public, max-age=31536000, immutable"
                    if path.startswith("assets/")
                    else "no-cache"
                )
                return FileResponse(wanted, media_type=media, headers={"Cache-Control": cache})
            if path.startswith("assets/"):
                raise HTTPException(404, detail=f"no such file: /{path}")
        if index.is_file():
            return FileResponse(
                index, media_type="text/html", headers={"Cache-Control": "no-cache"}
            )
        return HTMLResponse(NO_CONSOLE)

    return router

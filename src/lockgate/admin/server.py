"""The admin listener: uvicorn serving the admin app on the gateway process's own loop.

One process serves it (`lockgate serve`: worker 0; `lockgate demo`: the demo's gateway), on
its own address with TLS like the other listeners (self-signed under STATE/tls when no
cert/key is given). uvicorn's own signal handling is turned off: the gateway's loop owns
SIGINT/SIGTERM and stops this server with the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator

import uvicorn

from lockgate.admin.app import create_app
from lockgate.admin.context import AdminContext
from lockgate.config.admin import Admin
from lockgate.config.model import Manifest
from lockgate.tasks import spawn

log = logging.getLogger("lockgate.admin")


def admin_tls_context(admin: Admin, manifest: Manifest) -> ssl.SSLContext | None:
    """The console's server TLS context (self-signed when no cert/key), or None without TLS."""
    from lockgate.proxy.tls import server_context

    return server_context(admin.tls, manifest, "admin", admin.host)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The gateway's loop handles signals and calls `AdminServer.stop`.
        yield


class AdminServer:
    """The admin API and console on `admin.listen`, in this process's event loop."""

    def __init__(self, ctx: AdminContext) -> None:
        admin = ctx.manifest.admin
        if admin is None:
            raise ValueError("the manifest has no admin section")
        self.admin = admin
        self.ctx = ctx
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        return self.ctx.base_url

    async def start(self) -> None:
        """Bind the listener (raises OSError when the address is taken) and start serving."""
        tls = admin_tls_context(self.admin, self.ctx.manifest)
        family = socket.AF_INET6 if ":" in self.admin.host else socket.AF_INET
        self._sock = socket.create_server((self.admin.host, self.admin.port), family=family)
        self.ctx.base_url = self.admin.base_url(self.address[1])
        config = uvicorn.Config(
            create_app(self.ctx),
            log_config=None,
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            timeout_graceful_shutdown=3,
            ws="none",
        )
        config.load()
        config.ssl = tls  # set after load(): the context is ours, not built from files
        self._server = _EmbeddedServer(config)
        self._task = spawn(self._server.serve(sockets=[self._sock]), name="admin-server")
        # Started once uvicorn's server is listening (or the task failed); uvicorn offers
        # only a flag for it, so poll it briefly.
        while not self._server.started and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()

    async def stop(self) -> None:
        """Stop accepting, end event streams, wait briefly for requests in flight."""
        self.ctx.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        if self._sock is not None:
            self._sock.close()

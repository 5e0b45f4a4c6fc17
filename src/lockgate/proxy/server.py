"""Listeners and worker processes: accept connections and hand them to protocol engines.

One process runs one asyncio loop (uvloop when installed). With `workers: N` the parent
forks N workers that each bind the listener with SO_REUSEPORT, so the kernel spreads
connections over all cores. A CancelRequest may land on any worker: the process id in
every cancel key names the worker that owns the session, and workers forward cancels to
each other over small unix sockets in the state folder.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import struct
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from lockgate import schema
from lockgate.audit import recorder as audit_recorder
from lockgate.audit.ingest import JournalIngester
from lockgate.audit.metrics import AuditMetrics, MetricsServer
from lockgate.audit.sinks import EventObserver, SinkHub
from lockgate.config.model import Manifest
from lockgate.config.ssh import SshListener
from lockgate.gate import Gate
from lockgate.proxy.endpoint import Endpoint
from lockgate.proxy.postgres import CancelRegistry, PostgresEngine
from lockgate.proxy.ssh import SshEngine, ensure_host_key
from lockgate.proxy.tls import listener_context
from lockgate.store import open_engine
from lockgate.tasks import running, spawn

if TYPE_CHECKING:
    from lockgate.admin.server import AdminServer

log = logging.getLogger("lockgate.server")


class _Accepted(Endpoint):
    def __init__(self, engine: PostgresEngine) -> None:
        super().__init__()
        self._engine = engine

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        spawn(self._engine.handle(self), name="pg-session")


class Gateway:
    """All listeners of one manifest, served by this process."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        worker_index: int = 0,
        reuse_port: bool = False,
        ingest: bool = True,
    ) -> None:
        self.manifest = manifest
        self.ingest = ingest
        self.worker_index = worker_index
        self.reuse_port = reuse_port
        self.gate: Gate | None = None
        self.engines: list[PostgresEngine] = []
        self.ssh_engines: list[SshEngine] = []
        self._servers: list[asyncio.Server] = []
        self._cancel_server: asyncio.Server | None = None
        self.cancels = CancelRegistry(key_prefix=worker_index)
        self._watchers: list[asyncio.Task[None]] = []
        # The admin API and console (`admin:`), served by worker 0 only.
        self.admin: AdminServer | None = None

    @property
    def bound_addresses(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for s in self._servers:
            for sock in s.sockets:
                host, port = sock.getsockname()[:2]
                out.append((host, port))
        return out

    def _cancel_socket(self, index: int) -> Path:
        return self.manifest.state_dir / "run" / f"cancel-{index}.sock"

    async def start(self) -> None:
        """Open the state store and bind every listener."""
        loop = asyncio.get_running_loop()
        self.gate = Gate.from_manifest(self.manifest, ingest=self.ingest)
        await self.gate.start()
        for listener in self.manifest.listeners:
            if isinstance(listener, SshListener):
                ssh = SshEngine(self.gate, listener)
                await ssh.start(reuse_port=self.reuse_port)
                self.ssh_engines.append(ssh)
                self._watchers.append(spawn(ssh.watch_sessions(), name="ssh-session-watch"))
                continue
            ctx = listener_context(listener, self.manifest)
            engine = PostgresEngine(self.gate, listener, ctx, self.cancels, self._forward_cancel)
            self.engines.append(engine)
            self._watchers.append(spawn(engine.watch_sessions(), name="session-watch"))
            server = await loop.create_server(
                lambda engine=engine: _Accepted(engine),
                listener.host,
                listener.port,
                reuse_port=self.reuse_port or None,
                backlog=1024,
            )
            self._servers.append(server)
        if self.manifest.admin is not None and self.worker_index == 0:
            from lockgate.admin.context import for_gate
            from lockgate.admin.server import AdminServer

            self.admin = AdminServer(for_gate(self.gate))
            await self.admin.start()
        if self.reuse_port:
            path = self._cancel_socket(self.worker_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            self._cancel_server = await asyncio.start_unix_server(
                self._on_forwarded_cancel, str(path)
            )

    def _forward_cancel(self, pid: int, key: int) -> None:
        index = pid >> 22
        if not self.reuse_port or index == self.worker_index:
            return
        spawn(self._send_forwarded_cancel(index, pid, key), name="cancel-forward")

    async def _send_forwarded_cancel(self, index: int, pid: int, key: int) -> None:
        try:
            _, writer = await asyncio.open_unix_connection(str(self._cancel_socket(index)))
            writer.write(struct.pack("!ii", pid, key))
            await writer.drain()
            writer.close()
        except OSError as exc:
            log.warning("could not forward a cancel request to worker %d: %s", index, exc)

    async def _on_forwarded_cancel(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            data = await reader.readexactly(8)
            pid, key = struct.unpack("!ii", data)
            await self.cancels.cancel(pid, key)
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        """Stop accepting, end live sessions (clients get a shutdown error), flush the audit."""
        if self.admin is not None:
            await self.admin.stop()
        for s in self._servers:
            s.close()
        if self._cancel_server is not None:
            self._cancel_server.close()
        for w in self._watchers:
            w.cancel()
        tasks = running("pg-session")
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for ssh in self.ssh_engines:
            await ssh.stop()
        if self.gate is not None:
            await self.gate.close()
        if self.reuse_port:
            self._cancel_socket(self.worker_index).unlink(missing_ok=True)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when available (it is markedly faster for relaying), else asyncio's loop."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


async def _serve_until_signalled(gateway: Gateway, announce: bool) -> None:
    await gateway.start()
    gc.freeze()  # what startup built lives as long as the process: keep it out of GC passes
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if announce:
        for host, port in gateway.bound_addresses:
            print(f"lockgate: listening on {host}:{port} (postgres)", file=sys.stderr, flush=True)
        for ssh in gateway.ssh_engines:
            for host, port in ssh.bound_addresses:
                print(
                    f"lockgate: listening on {host}:{port} (ssh, host key {ssh.fingerprint})",
                    file=sys.stderr,
                    flush=True,
                )
        if gateway.admin is not None:
            print(f"lockgate: admin console on {gateway.admin.url}/", file=sys.stderr, flush=True)
    await stop.wait()
    await gateway.stop()


def run_worker(
    manifest: Manifest, index: int, reuse_port: bool, announce: bool, ingest: bool = True
) -> None:
    loop = new_event_loop()
    gateway = Gateway(manifest, worker_index=index, reuse_port=reuse_port, ingest=ingest)
    try:
        loop.run_until_complete(_serve_until_signalled(gateway, announce))
    finally:
        loop.close()


def run_gateway(manifest: Manifest, workers: int | None = None) -> int:
    """Serve until SIGINT/SIGTERM with `workers` processes (default: the listeners' setting).

    This process supervises: it forks the workers, forwards signals to them, and runs the
    audit journal ingester, so the workers' loops never wait on the audit store.
    """
    n = workers if workers is not None else max(listener.workers for listener in manifest.listeners)
    if n == 0:
        n = os.cpu_count() or 1
    audit_recorder.check_null_sink(manifest.audit.benchmark_null_sink)
    engine = open_engine(manifest.state_url, create=False)
    try:
        schema.check(engine)  # an out-of-date store: `lockgate migrate` first
        schema.create_tables(engine)  # creates the tables before workers start
    finally:
        engine.dispose()
    for listener in manifest.listeners:
        if isinstance(listener, SshListener):
            ensure_host_key(listener, manifest)  # generated once, before the workers fork
            continue
        # Workers would race to create the self-signed certificate, and one could
        # read another's half-written file: create it once, here.
        listener_context(listener, manifest)
    # Likewise the token signing key: two workers verifying their first token at once
    # must not both create it.
    from lockgate.identity.tokens import SIGNING_KEY_FILE, load_or_create_signing_key

    load_or_create_signing_key(manifest.state_dir / SIGNING_KEY_FILE)
    children: list[int] = []
    # Objects built so far live as long as the processes: out of the collector's passes in
    # the workers (and their pages stay shared with this process, not copied by a GC pass).
    gc.freeze()
    for index in range(n):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run_worker(manifest, index, reuse_port=n > 1, announce=index == 0, ingest=False)
            except BaseException:
                log.exception("worker %d crashed", index)
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    if n > 1:
        print(f"lockgate: {n} worker processes", file=sys.stderr, flush=True)
    # Sinks and metrics see the events this process's ingester commits.
    hub = SinkHub.from_manifest(manifest)
    metrics = AuditMetrics() if manifest.metrics else None
    observers: list[EventObserver] = [hub] if hub.runners else []
    if metrics is not None:
        observers.append(metrics)
    ingester = JournalIngester(
        open_engine(manifest.state_url), manifest.state_dir / "journal", observers=observers
    )
    gc.freeze()  # the ingester's engine, sinks, metrics: as long-lived
    stop_ingest = threading.Event()
    ingest_thread: threading.Thread | None = None
    if ingester.try_lock():
        hub.start()
        ingest_thread = threading.Thread(
            target=ingester.run, args=(stop_ingest,), kwargs={"nice": 10}, daemon=True
        )
        ingest_thread.start()
    metrics_server: MetricsServer | None = None
    if metrics is not None and manifest.metrics:
        try:
            metrics_server = MetricsServer(manifest.metrics, lambda: metrics.render(ingester, hub))
            metrics_server.start()
            print(f"lockgate: metrics on http://{manifest.metrics}/metrics", file=sys.stderr)
        except OSError as exc:
            log.error("metrics listener %s cannot be opened: %s", manifest.metrics, exc)

    def forward(sig: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, sig)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    status = 0
    for child in children:
        while True:
            try:
                _, code = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        status = status or os.waitstatus_to_exitcode(code)
    stop_ingest.set()
    if ingest_thread is not None:
        ingest_thread.join(timeout=60)
        hub.stop()  # undelivered events stay queued for the next start
    if metrics_server is not None:
        metrics_server.stop()
    ingester.unlock()
    return status

"""How each sink type delivers a batch of events (JSON lines); each raises on failure.

Called only from a sink's delivery thread (`sinks.py`), which retries a failed batch.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from lockgate.audit.events import SCHEMA_VERSION, severity
from lockgate.config.sinks import (
    FACILITIES,
    AnySink,
    FileSink,
    SyslogSink,
    WebhookSink,
    split_address,
)

# The documentation enterprise number (RFC 5612) names Lockgate's structured data element.
SD_ID = "lockgate@32473"
_BOM = b"\xef\xbb\xbf"


class FileTransport:
    """Appends JSON lines to a file; rotates to `path.1` … `path.KEEP` by size."""

    def __init__(self, config: FileSink) -> None:
        self.path = Path(config.path)
        self.max_bytes = config.max_bytes
        self.keep = config.keep
        self._fd = -1
        self._size = 0

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size

    def deliver(self, lines: list[bytes]) -> None:
        if self._fd < 0:
            self._open()
        data = b"".join(line + b"\n" for line in lines)
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(data)

    def _rotate(self) -> None:
        self.close()
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def syslog_message(
    line: bytes, facility: int, app_name: str, hostname: str, procid: str, limit: int = 0
) -> bytes:
    """One event as an RFC 5424 message (MSG is the event's JSON, UTF-8 with a BOM)."""
    event = orjson.loads(line)
    pri = facility * 8 + severity(event)
    stamp = event.get("time") or "-"
    sd = f'[{SD_ID} chain="{event["chain"]}" seq="{event["chain_seq"]}" schema="{SCHEMA_VERSION}"]'
    head = f"<{pri}>1 {stamp} {hostname} {app_name} {procid} {event['type']} {sd} ".encode()
    msg = head + _BOM + line
    if limit and len(msg) > limit:
        msg = msg[: limit - 3] + b"..."
    return msg


class SyslogTransport:
    """RFC 5424 over UDP (a datagram per event) or TCP (octet counting, RFC 6587)."""

    def __init__(self, config: SyslogSink) -> None:
        self.host, self.port = split_address(config.address)
        self.tcp = config.transport == "tcp"
        self.facility = FACILITIES[config.facility]
        self.app_name = config.app_name
        self.limit = 0 if self.tcp else config.max_message
        self.hostname = (socket.gethostname() or "-")[:255]
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            if self.tcp:
                self._sock = socket.create_connection((self.host, self.port), timeout=10)
            else:
                info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(info[0], socket.SOCK_DGRAM)
                sock.connect(info[4])
                self._sock = sock
        return self._sock

    def deliver(self, lines: list[bytes]) -> None:
        procid = str(os.getpid())
        try:
            sock = self._connect()
            for line in lines:
                msg = syslog_message(
                    line, self.facility, self.app_name, self.hostname, procid, self.limit
                )
                if self.tcp:
                    sock.sendall(b"%d " % len(msg) + msg)
                else:
                    sock.send(msg)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is a failed delivery: retried, never followed


class WebhookTransport:
    """POSTs `{"schema_version": N, "events": [...]}`; any answer but 2xx is a failure."""

    def __init__(self, config: WebhookSink) -> None:
        self.url = config.url
        self.timeout = config.timeout
        # No proxies from the environment: the audit trail goes where the manifest says.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def deliver(self, lines: list[bytes]) -> None:
        body = b'{"schema_version":%d,"events":[%s]}' % (SCHEMA_VERSION, b",".join(lines))
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "lockgate-audit",
                "Lockgate-Schema-Version": str(SCHEMA_VERSION),
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read()
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise OSError(f"the webhook answered HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise OSError(f"the webhook cannot be reached ({exc.reason})") from None
        if not 200 <= status < 300:
            raise OSError(f"the webhook answered HTTP {status}")

    def close(self) -> None:
        return None


def make_transport(config: AnySink) -> FileTransport | SyslogTransport | WebhookTransport:
    """The transport for a sink's configuration."""
    if isinstance(config, FileSink):
        return FileTransport(config)
    if isinstance(config, SyslogSink):
        return SyslogTransport(config)
    return WebhookTransport(config)

"""X11 connection setup: put the client's authorization cookie in place of the gateway's.

Theory of operation
-------------------
With X11 forwarding the target's sshd hands its X clients a cookie it was told in the
`x11-req` request. The gateway never tells the target the client's cookie: it makes up a
fake one of the same length (as OpenSSH's own client does with the real cookie), and each
X11 connection the target forwards must open with that fake cookie. `CookieSwap` reads the
connection setup request the X client sends first:

    byte-order(1) unused(1) major(2) minor(2) name-length(2) data-length(2) unused(2)
    name (padded to 4 bytes) data (padded to 4 bytes)

checks that the protocol name and the cookie are the fake ones, and gives back the same
request with the client's cookie instead; every later byte passes through untouched. A
setup with another cookie is refused (`X11AuthRefused`), so a process on the target that
did not get the cookie from sshd cannot reach the client's display.

Sans-IO: bytes in, bytes out; nothing here knows about channels or asyncio.
"""

from __future__ import annotations

import hmac
import struct

_PREFIX = 12
_ORDERS = {ord("B"): ">", ord("l"): "<"}


class X11AuthRefused(ValueError):
    """The X11 client did not present the fake cookie (or sent no X11 setup at all)."""


def _padded(n: int) -> int:
    return (n + 3) & ~3


class CookieSwap:
    """Rewrites the first request of one forwarded X11 connection."""

    def __init__(self, proto: bytes, fake: bytes, real: bytes) -> None:
        self.proto = proto
        self.fake = fake
        self.real = real
        self._buf = bytearray()
        self._done = False

    @property
    def done(self) -> bool:
        """True once the setup request went through (later bytes are passed on as they are)."""
        return self._done

    def feed(self, data: bytes) -> bytes:
        """What to pass on for `data` (empty while the setup is incomplete).

        Raises X11AuthRefused for anything but the fake cookie.
        """
        if self._done:
            return data
        self._buf += data
        buf = self._buf
        if len(buf) < _PREFIX:
            return b""
        order = _ORDERS.get(buf[0])
        if order is None:
            raise X11AuthRefused(f"not an X11 connection setup (byte order {buf[0]:#04x})")
        major, minor, name_len, data_len = struct.unpack_from(order + "HHHH", buf, 2)
        end = _PREFIX + _padded(name_len) + _padded(data_len)
        if len(buf) < end:
            return b""
        name = bytes(buf[_PREFIX : _PREFIX + name_len])
        start = _PREFIX + _padded(name_len)
        cookie = bytes(buf[start : start + data_len])
        if name != self.proto or not hmac.compare_digest(cookie, self.fake):
            raise X11AuthRefused("the X11 client did not present the forwarded cookie")
        head = struct.pack(order + "BxHHHHxx", buf[0], major, minor, name_len, len(self.real))
        real = self.real + b"\0" * (_padded(len(self.real)) - len(self.real))
        out = head + bytes(buf[_PREFIX:start]) + real + bytes(buf[end:])
        self._buf = bytearray()
        self._done = True
        return out

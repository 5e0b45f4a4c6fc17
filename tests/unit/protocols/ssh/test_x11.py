"""X11 setup rewriting: the fake cookie out, the client's in; whole, byte by byte, trailing."""

from __future__ import annotations

import struct

import pytest

from lockgate.protocols.ssh.x11 import CookieSwap, X11AuthRefused

NAME = b"MIT-MAGIC-COOKIE-1"
FAKE = bytes(range(16))
REAL = bytes(range(100, 116))


def _setup(order: str, name: bytes, cookie: bytes) -> bytes:
    head = struct.pack(
        ("<" if order == "l" else ">") + "BxHHHHxx", ord(order), 11, 0, len(name), len(cookie)
    )
    return head + name + bytes(-len(name) % 4) + cookie + bytes(-len(cookie) % 4)


@pytest.mark.parametrize("order", ["l", "B"])
def test_the_whole_setup_gets_the_real_cookie_and_later_bytes_pass(order: str) -> None:
    swap = CookieSwap(NAME, FAKE, REAL)
    out = swap.feed(_setup(order, NAME, FAKE) + b"request")
    assert out == _setup(order, NAME, REAL) + b"request"
    assert swap.done
    assert swap.feed(b"more") == b"more"


def test_byte_by_byte_nothing_goes_out_until_the_setup_is_whole() -> None:
    swap = CookieSwap(NAME, FAKE, REAL)
    data = _setup("l", NAME, FAKE) + b"x"
    out = [swap.feed(data[i : i + 1]) for i in range(len(data))]
    assert all(chunk == b"" for chunk in out[: len(data) - 2])
    assert b"".join(out) == _setup("l", NAME, REAL) + b"x"


def test_a_real_cookie_of_another_length_rewrites_the_length_field() -> None:
    real = b"0123456789"
    out = CookieSwap(NAME, FAKE, real).feed(_setup("B", NAME, FAKE))
    assert out == _setup("B", NAME, real)


@pytest.mark.parametrize(
    "data",
    [
        _setup("l", NAME, bytes(16)),  # another cookie
        _setup("l", b"XDM-AUTHORIZATION-1", FAKE),  # another protocol
        _setup("l", b"", b""),  # no authorization at all
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not X11
    ],
)
def test_anything_but_the_fake_cookie_is_refused(data: bytes) -> None:
    with pytest.raises(X11AuthRefused):
        CookieSwap(NAME, FAKE, REAL).feed(data)

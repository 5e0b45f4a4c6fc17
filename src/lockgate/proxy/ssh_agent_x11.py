"""Agent (`ssh -A`) and X11 (`ssh -X`/`-Y`) forwarding, when an `ssh.rules` entry allows it.

Theory of operation
-------------------
Both run the other way round from `-L`: the *target* opens a channel (`auth-agent@openssh.com`
when a program there talks to `$SSH_AUTH_SOCK`, `x11` when one connects to `$DISPLAY`), and
the gateway relays it to a channel of the same kind it opens to the client, whose ssh
connects it to the user's agent or X display. Nothing on the gateway listens, and the
gateway's own login to the target never uses the user's agent (`ssh_upstream`).

1. The client's request on a session channel (`auth-agent-req@openssh.com`, `x11-req`) is
   decided on and recorded by `ssh._GatewayServer._forwarding`. When a rule allows it,
   `allow_agent` / `allow_x11` note it on the connection's `SshContext`, and the channel's
   request to the target carries the same request (`ssh_channel._open_target`).
2. For X11 the target is never told the client's cookie: `X11Grant` makes a fake one of the
   same length, and each forwarded X11 connection must present it; `CookieSwap` puts the
   client's cookie in its place on the way to the client. The gateway opens the X11
   channel to the client only once the cookie was right; a wrong one ends the target's
   channel, recorded as refused.
3. `install` hooks the gateway's connection to the target: each agent or X11 channel the
   target opens is decided on and recorded (`ssh.forward-agent-connection`,
   `ssh.forward-x11-connection`) before the gateway opens its channel to the client, and is
   relayed as a `ForwardedConnection` whose record gets the bytes each way. Without an
   allowed request the target's channel is refused.

asyncssh runs these requests and channel opens without a callback: `install` replaces three
steps of the asyncssh connection object (`_process_auth_agent_at_openssh_dot_com_open`,
`_process_x11_open`, `attach_x11_listener`) and sets `_agent_forward_path` so that session
requests to the target carry `auth-agent-req@openssh.com`; `tests/unit/proxy/
test_ssh_transport.py` fails if an asyncssh upgrade renames them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import asyncssh
from asyncssh.channel import SSHChannel

from lockgate.policy.ssh import SshRequest
from lockgate.protocols.ssh.x11 import CookieSwap
from lockgate.proxy.ssh_channel import SshContext
from lockgate.proxy.ssh_forward import admit_channel, connect_channel
from lockgate.proxy.ssh_transport import MAX_PACKET, WINDOW
from lockgate.tasks import spawn

log = logging.getLogger("lockgate.ssh")

# The asyncssh connection steps `install` replaces, and the attribute that turns on
# `auth-agent-req@openssh.com` in its session requests.
AGENT_OPEN = "_process_auth_agent_at_openssh_dot_com_open"
X11_OPEN = "_process_x11_open"
X11_ATTACH = "attach_x11_listener"
AGENT_PATH = "_agent_forward_path"

# A display name for asyncssh: any non-empty name makes it accept the client's x11-req.
DISPLAY = "lockgate"

_FAILED = asyncssh.OPEN_CONNECT_FAILED


@dataclass(frozen=True, slots=True)
class X11Grant:
    """The client's X11 authorization and the fake one the target is given instead."""

    proto: bytes
    cookie: bytes
    fake: bytes
    screen: int


def allow_agent(ctx: SshContext) -> None:
    """From now on, session channels to the target ask it for agent forwarding."""
    ctx.agent_forwarding = True
    setattr(ctx.upstream, AGENT_PATH, "lockgate-relay")


def allow_x11(ctx: SshContext, chan: object, proto: bytes, cookie: bytes, screen: int) -> None:
    """The session channel `chan` of the client asks the target for X11 forwarding."""
    grant = ctx.x11
    if grant is None or (grant.proto, grant.cookie) != (proto, cookie):
        # One fake per client cookie, as OpenSSH keeps one per connection.
        grant = X11Grant(proto, cookie, secrets.token_bytes(len(cookie)), screen)
        ctx.x11 = grant
    ctx.x11_channels.add(chan)


def install(ctx: SshContext, client: asyncssh.SSHServerConnection) -> None:
    """Hook the target connection of `ctx`: relay its agent and X11 channels to `client`."""
    upstream = ctx.upstream

    def agent_open(packet: Any) -> tuple[SSHChannel[bytes], Awaitable[Any]]:
        packet.check_end()
        if not ctx.agent_forwarding:
            raise asyncssh.ChannelOpenError(_FAILED, "agent forwarding was not requested")
        chan = upstream.create_agent_channel(WINDOW, MAX_PACKET)
        return chan, _agent_connection(ctx, client)

    def x11_open(packet: Any) -> tuple[SSHChannel[bytes], Awaitable[Any]]:
        orig_host = packet.get_string().decode("utf-8", "replace")
        orig_port = packet.get_uint32()
        packet.check_end()
        grant = ctx.x11
        if grant is None:
            raise asyncssh.ChannelOpenError(_FAILED, "X11 forwarding was not requested")
        chan = upstream.create_x11_channel(WINDOW, MAX_PACKET)
        return chan, _x11_connection(ctx, client, grant, orig_host, orig_port)

    async def x11_attach(*_args: object) -> tuple[bytes, bytes, int]:
        grant = ctx.x11
        if grant is None:
            raise ValueError("X11 forwarding was not requested")
        return grant.proto, grant.fake, grant.screen

    setattr(upstream, AGENT_OPEN, agent_open)
    setattr(upstream, X11_OPEN, x11_open)
    setattr(upstream, X11_ATTACH, x11_attach)


async def _agent_connection(
    ctx: SshContext, client: asyncssh.SSHServerConnection
) -> asyncssh.SSHUNIXSession[bytes]:
    """An agent channel the target opened: recorded, then opened to the client's agent."""
    text = "forward agent"
    request = SshRequest("forward", text=text, forwarding="agent")
    pair = await admit_channel(ctx, "ssh.forward-agent-connection", text, request, from_target=True)
    opening = client.create_agent_channel(WINDOW, MAX_PACKET).open(lambda: pair.client)
    await connect_channel(pair, opening, "the client did not accept the agent connection")
    return pair.target


async def _x11_connection(
    ctx: SshContext,
    client: asyncssh.SSHServerConnection,
    grant: X11Grant,
    orig_host: str,
    orig_port: int,
) -> asyncssh.SSHTCPSession[bytes]:
    """An X11 channel the target opened: recorded, opened to the client once its cookie is right.

    The client's channel waits for the target's X client to present the fake cookie: an
    OpenSSH client holds an X11 channel that never sent a setup open until it gets one.
    """
    text = f"forward x11 from {orig_host}:{orig_port}"
    request = SshRequest("forward", text=text, forwarding="x11")
    pair = await admit_channel(ctx, "ssh.forward-x11-connection", text, request, from_target=True)
    swap = CookieSwap(grant.proto, grant.fake, grant.cookie)

    async def open_to_client() -> None:
        try:
            await client.create_x11_connection(
                lambda: pair.client, orig_host, orig_port, window=WINDOW, max_pktsize=MAX_PACKET
            )
        except (asyncssh.Error, OSError) as exc:
            reason = getattr(exc, "reason", "") or type(exc).__name__
            pair.refused(f"the client did not accept the X11 connection ({reason})")

    def rewrite(data: bytes) -> bytes:
        was_done = swap.done
        out = swap.feed(data)
        if swap.done and not was_done:
            spawn(open_to_client(), name="ssh-x11-open")
        return out

    pair.target.rewrite = rewrite
    ctx.forwards.add(pair)
    return pair.target

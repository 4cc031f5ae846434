# SPDX-License-Identifier: GPL-3.0-or-later
"""Protocol layer, Junos ``outbound-ssh``: a ``MSG-ID: DEVICE-CONN-INFO`` preamble, then SSH.

On these ports the listener reads the preamble lines (for the DEVICE-ID, a claim that only
labels a key mismatch; the host key still decides), then runs the same SSH client as on 4334.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable, Dict, Tuple

from netconf_callhome.netutil import format_peer
from netconf_callhome.protocol.events import HandshakeFailure
from netconf_callhome.protocol.ssh import SSHTransport

log = logging.getLogger("netconf_callhome.ssh")

PREAMBLE_LIMIT = 16 * 1024


class OutboundSSHTransport:
    """Accepted sockets on an outbound-ssh port: read the preamble, hand the rest to SSH."""

    def __init__(self, ssh: SSHTransport, *, handshake_timeout: float) -> None:
        self.ssh = ssh
        self.handshake_timeout = handshake_timeout

    async def handle(self, sock: socket.socket, addr: Tuple[Any, ...]) -> None:
        loop = asyncio.get_running_loop()
        peer = format_peer(addr)
        try:
            async with asyncio.timeout(self.handshake_timeout):
                fields = await read_preamble(loop, sock)
        except (TimeoutError, OSError, ValueError) as exc:
            sock.close()
            message = str(exc) or "no complete preamble within %.0f s" % self.handshake_timeout
            self.ssh.events.handshake_failed(
                HandshakeFailure(transport="ssh", peer=peer, reason="outbound-ssh-preamble", message=message)
            )
            return
        device_id = fields.get("DEVICE-ID", "")
        log.info(
            "event=outbound_ssh.preamble peer=%s device_id=%s msg_ver=%s", peer, device_id, fields.get("MSG-VER", "")
        )
        factory: Callable[[], Any] = lambda: self.ssh.connection(loop, device_id)  # noqa: E731
        try:
            await loop.create_connection(factory, sock=sock)
        except OSError as exc:
            sock.close()
            log.warning("event=handshake.failed peer=%s transport=ssh error=%r", peer, str(exc))


def _resolve(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


async def read_preamble(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Dict[str, str]:
    """Consume the ``KEY: value`` lines before the SSH banner, leaving the banner in the socket."""
    sock.setblocking(False)
    fields: Dict[str, str] = {}
    consumed = 0
    while True:
        ready: "asyncio.Future[None]" = loop.create_future()
        loop.add_reader(sock.fileno(), _resolve, ready)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())
        data = sock.recv(PREAMBLE_LIMIT, socket.MSG_PEEK)
        if not data:
            raise ValueError("connection closed during the outbound-ssh preamble")
        if data.startswith(b"SSH-"):
            if not fields:
                raise ValueError("no outbound-ssh preamble before the SSH banner")
            return fields
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= PREAMBLE_LIMIT:
                raise ValueError("outbound-ssh preamble line too long")
            continue
        ssh_at = data.find(b"\nSSH-")
        take = ssh_at + 1 if 0 <= ssh_at < end else end + 1
        chunk = sock.recv(take)
        consumed += len(chunk)
        if consumed > PREAMBLE_LIMIT:
            raise ValueError("outbound-ssh preamble exceeds %d bytes" % PREAMBLE_LIMIT)
        for line in chunk.decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip():
                fields[key.strip().upper()] = value.strip()
        if "MSG-ID" in fields and fields["MSG-ID"] != "DEVICE-CONN-INFO":
            raise ValueError("unexpected outbound-ssh MSG-ID %r" % fields["MSG-ID"])

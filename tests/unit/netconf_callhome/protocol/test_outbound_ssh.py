# SPDX-License-Identifier: GPL-3.0-or-later
"""The Junos outbound-ssh preamble reader (issue 10, defect 3): bounded, and idle while it waits.

A preamble line without a newline used to make the reader spin until ``handshake_timeout`` (it
peeked at the socket, then waited for the socket to be readable, which it still was). The peer
here is the other end of a socket pair; the SSH side is a recorder standing in for asyncssh.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import List, Optional, Tuple

import pytest

from netconf_callhome.protocol.events import HandshakeFailure
from netconf_callhome.protocol.outbound_ssh import MAX_LINE, MAX_LINES, OutboundSSHTransport

pytestmark = pytest.mark.timeout(60)

PREAMBLE = b"MSG-ID: DEVICE-CONN-INFO\r\nMSG-VER: V1\r\nDEVICE-ID: r1\r\nHOST-KEY: ssh-ed25519 AAAA\r\nHMAC: 00ff\r\n"
BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"


class _Recorder(asyncio.Protocol):
    """What asyncssh would be: the protocol the transport is handed to after the preamble."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.BaseTransport] = None
        self.data = bytearray()
        self.more = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.more.set()


class _Events:
    def __init__(self) -> None:
        self.failures: List[HandshakeFailure] = []

    def handshake_failed(self, failure: HandshakeFailure) -> None:
        self.failures.append(failure)


class _SSH:
    def __init__(self) -> None:
        self.events = _Events()
        self.device_ids: List[str] = []
        self.checks: List[object] = []
        self.protocols: List[_Recorder] = []

    def connection(self, loop: asyncio.AbstractEventLoop, device_id: str, host_key_check: object = None) -> _Recorder:
        self.device_ids.append(device_id)
        self.checks.append(host_key_check)
        self.protocols.append(_Recorder())
        return self.protocols[-1]


def _transport(timeout: float) -> Tuple[_SSH, OutboundSSHTransport]:
    ssh = _SSH()
    return ssh, OutboundSSHTransport(ssh, handshake_timeout=timeout)  # type: ignore[arg-type]


async def _handle(outbound: OutboundSSHTransport) -> Tuple["asyncio.Task[None]", socket.socket]:
    mine, peer = socket.socketpair()
    peer.setblocking(False)
    task = asyncio.ensure_future(outbound.handle(mine, ("192.0.2.7", 40000)))
    return task, peer


async def _send(peer: socket.socket, data: bytes, piece: int = 0) -> None:
    loop = asyncio.get_running_loop()
    for i in range(0, len(data), piece or len(data) or 1):
        await loop.sock_sendall(peer, data[i : i + (piece or len(data))])
        await asyncio.sleep(0)


async def _closed_by_listener(peer: socket.socket) -> bool:
    """True when the listener closed the connection (EOF or reset) without sending anything."""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.sock_recv(peer, 100), 5) == b""
    except ConnectionResetError:
        return True


def _failure(ssh: _SSH) -> HandshakeFailure:
    assert len(ssh.events.failures) == 1, ssh.events.failures
    failure = ssh.events.failures[0]
    assert failure.reason == "outbound-ssh-preamble" and failure.peer == "192.0.2.7:40000"
    return failure


def test_preamble_then_ssh_on_the_same_connection():
    async def scenario() -> Tuple[_SSH, bytes]:
        ssh, outbound = _transport(10)
        task, peer = await _handle(outbound)
        # byte-sized pieces: lines and the banner split anywhere
        await _send(peer, PREAMBLE + BANNER[:3], piece=1)
        await asyncio.sleep(0.05)
        assert not task.done()  # "SSH" could still be a preamble line
        await _send(peer, BANNER[3:] + b"\x00\x00\x01\x0c kexinit...")
        await asyncio.wait_for(task, 5)
        recorder = ssh.protocols[0]
        await _send(peer, b"more")  # read by the SSH side now, on the same transport
        while not recorder.data.endswith(b"more"):
            recorder.more.clear()
            await asyncio.wait_for(recorder.more.wait(), 5)
        peer.close()
        return ssh, bytes(recorder.data)

    ssh, data = asyncio.run(scenario())
    assert ssh.device_ids == ["r1"] and ssh.events.failures == []
    assert data == BANNER + b"\x00\x00\x01\x0c kexinit...more"


def test_a_line_without_newline_waits_idle_until_the_timeout():
    """The defect: the reader spun on the socket for the whole handshake timeout."""
    timeout = 1.5

    async def scenario() -> Tuple[_SSH, float, float, bool]:
        ssh, outbound = _transport(timeout)
        task, peer = await _handle(outbound)
        cpu, wall = time.process_time(), time.monotonic()
        await _send(peer, b"MSG-ID: DEVICE-CONN")  # and then nothing
        await asyncio.wait_for(task, timeout + 5)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        closed = await _closed_by_listener(peer)
        peer.close()
        return ssh, cpu, wall, closed

    ssh, cpu, wall, closed = asyncio.run(scenario())
    assert closed and wall >= timeout * 0.9
    assert "no complete outbound-ssh preamble within 1.5 s" in _failure(ssh).message
    # A busy loop burns the whole window (1.5 s of CPU); waiting burns almost nothing.
    assert cpu < 0.25 * wall, "%.2f s of CPU in %.2f s waiting for a preamble line" % (cpu, wall)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"A" * (64 * 1024), "line longer than %d bytes without a newline" % MAX_LINE),
        (b"MSG-ID: DEVICE-CONN-INFO\r\nX: " + b"y" * MAX_LINE + b"\r\n", "line longer than %d bytes" % MAX_LINE),
        (b"MSG-ID: DEVICE-CONN-INFO\r\n" + b"K: v\r\n" * MAX_LINES, "more than %d lines" % MAX_LINES),
        (BANNER, "no outbound-ssh preamble before the SSH banner"),
        (b"MSG-ID: SOMETHING-ELSE\r\n", "unexpected outbound-ssh MSG-ID 'SOMETHING-ELSE'"),
    ],
    ids=["long-line-no-newline", "long-line", "too-many-lines", "plain-ssh", "wrong-msg-id"],
)
def test_a_preamble_over_a_bound_is_closed_at_once(data, message):
    async def scenario() -> Tuple[_SSH, float, float, bool]:
        ssh, outbound = _transport(30)
        task, peer = await _handle(outbound)
        cpu, wall = time.process_time(), time.monotonic()
        try:
            await _send(peer, data, piece=1000)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: what is asserted below
        await asyncio.wait_for(task, 5)  # long before the 30 s timeout
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        closed = await _closed_by_listener(peer)
        peer.close()
        return ssh, cpu, wall, closed

    ssh, cpu, wall, closed = asyncio.run(scenario())
    assert closed and ssh.protocols == []  # never handed to SSH
    assert message in _failure(ssh).message
    assert cpu < 1.0


def test_a_peer_that_leaves_during_the_preamble():
    async def scenario() -> _SSH:
        ssh, outbound = _transport(30)
        task, peer = await _handle(outbound)
        await _send(peer, b"MSG-ID: DEVICE-CONN-INFO\r\nMSG-")
        peer.close()
        await asyncio.wait_for(task, 5)
        return ssh

    assert "connection closed during the outbound-ssh preamble" in _failure(asyncio.run(scenario())).message

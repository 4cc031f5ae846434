# SPDX-License-Identifier: GPL-3.0-or-later
"""A lease for a NETCONF client inside the listener process.

The persistent-connection endpoint (issue 9, an ncclient manager per device inside the listener)
needs a device's NETCONF stream exactly as a control-socket client gets it, without a control
socket: :func:`open_local_lease` prepares a lease (``channel`` or multiplexed ``shared``, with the
same fallback and pins) and serves it on one end of a socket pair; the other end is handed out
as a plain blocking socket, which an ncclient session in a worker thread can read and write.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from netconf_callhome.protocol.framing import Hello
from netconf_callhome.protocol.session import HeldSession


@dataclass
class LocalLease:
    """The client end of an in-process lease; close :attr:`sock` to end it."""

    device: str
    mode: str
    sock: socket.socket  # blocking; NETCONF from the first byte (the device's hello comes first)
    done: "asyncio.Future[str]"  # the lease's end reason
    hello: Hello  # the device's hello, the first message on sock (verified by the listener)

    def close(self) -> None:
        self.sock.close()


async def open_local_lease(held: HeldSession) -> LocalLease:
    """Lease ``held`` to an in-process client; LeaseError as for a control-socket lease."""
    lease = await held.prepare()
    try:
        hello = lease.hello
    except BaseException:
        lease.release()
        raise
    ours, theirs = socket.socketpair()
    try:
        reader, writer = await asyncio.open_connection(sock=ours)
    except BaseException:
        lease.release()
        ours.close()
        theirs.close()
        raise

    async def serve() -> str:
        try:
            return await lease.serve(reader, writer)
        finally:
            writer.close()

    theirs.setblocking(True)
    return LocalLease(device=held.device, mode=lease.mode, sock=theirs, done=asyncio.ensure_future(serve()), hello=hello)

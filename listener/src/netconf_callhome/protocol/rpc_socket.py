# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible's persistent-connection frames on a private Unix socket: one server loop for all.

``ansible.module_utils.connection.send_data`` / ``recv_data`` frame a JSON-RPC request and its
response as an 8-byte big-endian length, then that many bytes. Three sockets of the listener
speak it: a NETCONF device's endpoint (endpoints.ansible_rpc), a RESTCONF device's endpoint
(endpoints.restconf_rpc, which inherits the former's socket) and a proxy endpoint whose requests
go to the node holding the device (control.forward). They differ only in what answers a request,
so the socket (0600 in a 0700 directory), the frame loop and the clean-up are here once, and each
hands in its request handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from typing import Awaitable, Callable, Optional

HEADER = struct.Struct("!Q")  # send_data: the payload's length
MAX_FRAME = 256 * 1024 * 1024  # a request larger than this closes the connection

# What answers one request: its bytes in, the response's bytes out.
Handler = Callable[[bytes], Awaitable[bytes]]


async def serve_frames(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handle: Handler,
    *,
    max_frame: int = MAX_FRAME,
    too_large: Optional[Callable[[int], None]] = None,
) -> None:
    """Answer framed requests one after the other until the client closes (or sends a frame over
    ``max_frame``: ``too_large(size)`` is told, then the connection is closed, since the rest of
    the stream cannot be trusted to be framed). The connection is closed on return."""
    try:
        while True:
            try:
                (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                if size > max_frame:
                    if too_large is not None:
                        too_large(size)
                    return
                data = await reader.readexactly(size)
            except asyncio.IncompleteReadError:
                return
            response = await handle(data)
            writer.write(HEADER.pack(len(response)) + response)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def listen_frames(
    path: str,
    handle: Handler,
    *,
    max_frame: int = MAX_FRAME,
    too_large: Optional[Callable[[int], None]] = None,
) -> asyncio.AbstractServer:
    """A Unix socket at ``path`` (mode 0600; its directory made 0700 if missing; a stale socket
    replaced) answering framed requests with ``handle``. OSError when it cannot listen."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    # the socket is created 0600 (no window in which another user could connect), then made sure
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(
            lambda r, w: serve_frames(r, w, handle, max_frame=max_frame, too_large=too_large), path=path
        )
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return server


def close_frames(server: Optional[asyncio.AbstractServer], path: str, *, unlink: bool = True) -> None:
    """Stop accepting on the socket and remove its file (``unlink`` False: another server took
    the same path since, leave it)."""
    if server is not None:
        server.close()
    if unlink:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


__all__ = ("HEADER", "Handler", "MAX_FRAME", "close_frames", "listen_frames", "serve_frames")

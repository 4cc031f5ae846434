# SPDX-License-Identifier: GPL-3.0-or-later
"""The send_data frame socket shared by the endpoints and the forwarder's proxies
(protocol.rpc_socket): a private socket, requests answered in order by the handler given, an
oversized frame closes the connection, the clean-up removes the file."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
from pathlib import Path
from typing import List

import pytest

from netconf_callhome.protocol.rpc_socket import close_frames, listen_frames

pytestmark = pytest.mark.timeout(30)


def test_frames_are_answered_in_order_on_a_private_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "rpc" / "ep.sock")
    too_large: List[int] = []

    async def handle(data: bytes) -> bytes:
        return data.upper()

    async def main() -> None:
        server = await listen_frames(path, handle, max_frame=64, too_large=too_large.append)
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
            reader, writer = await asyncio.open_unix_connection(path)
            for word in (b"get", b"edit-config", b""):
                writer.write(struct.pack("!Q", len(word)) + word)
                (size,) = struct.unpack("!Q", await reader.readexactly(8))
                assert await reader.readexactly(size) == word.upper()
            writer.write(struct.pack("!Q", 65) + b"x" * 65)  # over max_frame: closed, unanswered
            assert await reader.read() == b"" and too_large == [65]
            writer.close()
        finally:
            close_frames(server, path)
        assert not os.path.exists(path)

    asyncio.run(main())


def test_a_stale_socket_file_is_replaced_and_kept_when_asked(tmp_path: Path) -> None:
    path = str(tmp_path / "ep.sock")
    Path(path).write_text("stale")

    async def handle(data: bytes) -> bytes:
        return data

    async def main() -> None:
        server = await listen_frames(path, handle)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        # another endpoint takes the path (a new socket file there), then the first one closes
        os.unlink(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
            other.bind(path)
            replacement = os.stat(path).st_ino
            close_frames(server, path, unlink=False)
            # left alone (by asyncio too: since Python 3.13 it removes only its own socket file)
            assert os.stat(path).st_ino == replacement
        close_frames(None, path)
        assert not os.path.exists(path)

    asyncio.run(main())

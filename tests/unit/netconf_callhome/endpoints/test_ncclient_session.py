# SPDX-License-Identifier: GPL-3.0-or-later
"""The endpoint's ncclient session writes a message from the caller's thread, framed as ncclient
frames it, instead of queueing it for the session thread's next 0.1 s tick."""

from __future__ import annotations

import socket

import pytest

ncclient = pytest.importorskip("ncclient", reason="the endpoints need ncclient (the 'ansible' extra)")

from ncclient import manager  # noqa: E402
from ncclient.transport import UnixSocketSession  # noqa: E402
from ncclient.transport.errors import TransportError  # noqa: E402
from ncclient.transport.session import NetconfBase  # noqa: E402

from netconf_callhome.endpoints.ncclient_session import direct_send_session_class  # noqa: E402


def _session(sock: socket.socket) -> object:
    cls = direct_send_session_class(UnixSocketSession, NetconfBase, TransportError)
    session = cls(manager.make_device_handler({"name": "default"}))
    session._socket = sock  # pylint: disable=protected-access
    session._connected = True  # pylint: disable=protected-access
    return session


def _read(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(5)  # the bytes are already there; the timeout only guards a broken test
    data = b""
    while len(data) < size:
        data += sock.recv(size - len(data))
    return data


def test_send_writes_end_of_message_framing_before_the_hello_says_base_11() -> None:
    ours, device = socket.socketpair()
    with ours, device:
        session = _session(ours)
        session.send("<rpc/>")  # the session thread is not even running: nothing is queued
        assert session._q.empty()  # pylint: disable=protected-access
        assert _read(device, len(b"<rpc/>]]>]]>")) == b"<rpc/>]]>]]>"


def test_send_writes_chunked_framing_on_base_11() -> None:
    ours, device = socket.socketpair()
    with ours, device:
        session = _session(ours)
        session._base = NetconfBase.BASE_11  # pylint: disable=protected-access
        message = b'<rpc message-id="1"/>'
        session.send(message.decode())
        want = b"\n#21\n" + message + b"\n##\n"  # RFC 6242: chunk size, chunk, end of chunks
        assert _read(device, len(want)) == want


def test_send_on_a_closed_session_raises_ncclients_error() -> None:
    ours, device = socket.socketpair()
    with ours, device:
        session = _session(ours)
        session._connected = False  # pylint: disable=protected-access
        with pytest.raises(TransportError):
            session.send("<rpc/>")


def test_the_subclass_is_built_once() -> None:
    assert direct_send_session_class(UnixSocketSession, NetconfBase, TransportError) is direct_send_session_class(
        UnixSocketSession, NetconfBase, TransportError
    )

# SPDX-License-Identifier: GPL-3.0-or-later
"""The endpoint's ncclient session: it adopts the hello the listener holds (no wait), writes a
message from the caller's thread framed as ncclient frames it, drops the replayed hello before
ncclient's parser, blocks in recv instead of waking every 0.1 s, and wakes up when closed."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, List, Tuple

import pytest

ncclient = pytest.importorskip("ncclient", reason="the endpoints need ncclient (the 'ansible' extra)")

from ncclient import manager  # noqa: E402
from ncclient.transport.errors import TransportError  # noqa: E402
from ncclient.transport.session import NetconfBase, SessionListener  # noqa: E402

from netconf_callhome.endpoints.ncclient_session import ReaderThreads, endpoint_session_class  # noqa: E402

BASE_10 = "urn:ietf:params:netconf:base:1.0"
BASE_11 = "urn:ietf:params:netconf:base:1.1"
DEVICE_HELLO = (
    b'<?xml version="1.0" encoding="UTF-8"?><hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
    b"<capabilities><capability>" + BASE_10.encode() + b"</capability><capability>" + BASE_11.encode()
    + b"</capability></capabilities><session-id>7</session-id></hello>]]>]]>"
)


def _session() -> Any:
    return endpoint_session_class()(manager.make_device_handler({"name": "default"}))


def _read(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(5)  # the bytes are already there; the timeout only guards a broken test
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "closed after %r" % data
        data += chunk
    return data


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    sock.settimeout(5)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed after %r" % data
        data += chunk
    return data


class _Recorder(SessionListener):
    def __init__(self) -> None:
        self.messages: List[Tuple[str, str]] = []
        self.errors: List[Exception] = []
        self.event = threading.Event()

    def callback(self, root: Any, raw: Any) -> None:
        self.messages.append((root[0], raw))
        self.event.set()

    def errback(self, ex: Exception) -> None:
        self.errors.append(ex)
        self.event.set()


def test_send_writes_end_of_message_framing_before_base_11_is_chosen() -> None:
    ours, device = socket.socketpair()
    with ours, device:
        session = _session()
        session._socket = ours  # pylint: disable=protected-access
        session._connected = True  # pylint: disable=protected-access
        session.send("<rpc/>")  # no session thread runs at all: nothing is queued
        assert session._q.empty()  # pylint: disable=protected-access
        assert _read(device, len(b"<rpc/>]]>]]>")) == b"<rpc/>]]>]]>"


def test_send_on_a_closed_session_raises_ncclients_error() -> None:
    ours, device = socket.socketpair()
    with ours, device:
        session = _session()
        session._socket = ours  # pylint: disable=protected-access
        with pytest.raises(TransportError):
            session.send("<rpc/>")


def test_adopt_sends_the_client_hello_framed_by_eom_then_speaks_base_11_without_waiting() -> None:
    ours, device = socket.socketpair()
    with device:
        session = _session()
        # nothing from the device yet: adopt must not wait for its hello
        session.adopt(ours, [BASE_10, BASE_11], 7)
        try:
            assert session.id == "7"
            assert BASE_11 in session.server_capabilities
            assert session._base == NetconfBase.BASE_11  # pylint: disable=protected-access
            hello = _read_until(device, b"]]>]]>")
            assert b"hello" in hello and b"<session-id>" not in hello  # a client hello, EOM-framed
            session.send('<rpc message-id="1"/>')
            assert _read(device, len(b'\n#21\n<rpc message-id="1"/>\n##\n')) == b'\n#21\n<rpc message-id="1"/>\n##\n'
        finally:
            session.close()


def test_the_replayed_hello_never_reaches_ncclients_listeners_and_a_reply_does() -> None:
    ours, device = socket.socketpair()
    with device:
        session = _session()
        recorder = _Recorder()
        session.add_listener(recorder)
        session.adopt(ours, [BASE_10, BASE_11], 7)
        try:
            reply = b'<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="1"><ok/></rpc-reply>'
            # the replayed hello and the first reply in one write: the reader must split them
            device.sendall(DEVICE_HELLO + b"\n#%d\n%s\n##\n" % (len(reply), reply))
            assert recorder.event.wait(5)
            assert recorder.errors == []
            assert [tag for tag, _raw in recorder.messages] == ["{urn:ietf:params:xml:ns:netconf:base:1.0}rpc-reply"]
        finally:
            session.close()


def test_the_reader_blocks_instead_of_polling_and_close_wakes_it() -> None:
    ours, device = socket.socketpair()
    with device:
        session = _session()
        session.adopt(ours, [BASE_10], None)
        device.sendall(DEVICE_HELLO)
        # an idle ncclient Session.run wakes every 0.1 s (10 context switches a second); this
        # reader sleeps in recv until data or close
        assert _wait(lambda: _switches(session) is not None)
        time.sleep(0.2)  # let the reader reach recv after the replayed hello
        before = _switches(session)
        time.sleep(1.0)  # the measured window: its length is the point, not a wait for a condition
        assert not session.wait_closed(0)
        assert _switches(session) - before <= 2, "the idle reader keeps waking up"
        session.close()
        assert session.wait_closed(5)


def test_a_device_that_ends_the_lease_is_reported_to_the_listeners() -> None:
    ours, device = socket.socketpair()
    session = _session()
    recorder = _Recorder()
    session.add_listener(recorder)
    session.adopt(ours, [BASE_10], None)
    _read_until(device, b"]]>]]>")  # the client hello (unread, a close would reset the socket)
    device.sendall(DEVICE_HELLO)
    device.close()
    assert recorder.event.wait(5)
    assert recorder.errors and type(recorder.errors[0]).__name__ == "SessionCloseError"
    assert session.wait_closed(5)
    assert not session.connected


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_a_reply_with_a_dtd_ends_the_session_before_ncclient_parses_it(encoding: str) -> None:
    """ncclient's parser substitutes internal entities; the listener's check runs first."""
    ours, device = socket.socketpair()
    with device:
        session = _session()
        recorder = _Recorder()
        session.add_listener(recorder)
        session.adopt(ours, [BASE_10], None)
        _read_until(device, b"]]>]]>")
        evil = ('<?xml version="1.0" encoding="%s"?><!DOCTYPE r [<!ENTITY e "EXPANDED-ENTITY-TEXT">]>'
                '<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="1"><data>&e;</data>'
                "</rpc-reply>" % encoding)
        device.sendall(DEVICE_HELLO + evil.encode(encoding) + b"]]>]]>")
        assert recorder.event.wait(5)
        assert recorder.messages == [] and recorder.errors
        if encoding == "utf-8":
            assert "carries a DTD" in str(recorder.errors[0])
        # (UTF-16: ncclient itself refuses to decode it: NETCONF is UTF-8; either way nothing is delivered)
        assert session.wait_closed(5) and not session.connected


def test_the_class_is_built_once() -> None:
    assert endpoint_session_class() is endpoint_session_class()


def test_reader_threads_are_reused_and_retire_when_idle() -> None:
    readers = ReaderThreads(idle_seconds=0.2, name="test-readers")
    names: List[str] = []
    done = threading.Event()
    gate = threading.Event()

    def job() -> None:
        names.append(threading.current_thread().name)
        gate.wait(5)
        if len(names) == 3:
            done.set()

    for _unused in range(3):  # three at once: three threads
        readers.submit(job)
    assert _wait(lambda: len(names) == 3)
    assert readers.threads == 3
    gate.set()
    assert done.wait(5)
    assert _wait(lambda: readers._idle == 3)  # pylint: disable=protected-access
    readers.submit(job)  # an idle thread takes it: no fourth thread
    assert _wait(lambda: len(names) == 4)
    assert readers.threads == 3 and names[3] in names[:3]
    assert _wait(lambda: readers.threads == 0)  # idle longer than idle_seconds: they end


def _switches(session: Any) -> Any:
    """Voluntary context switches of the session's reader thread (each a wake-up from a blocking
    call), from /proc."""
    if session.reader_native_id is None:
        return None
    with open("/proc/self/task/%d/status" % session.reader_native_id, encoding="ascii") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return None


def _wait(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())

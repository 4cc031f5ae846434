# SPDX-License-Identifier: GPL-3.0-or-later
"""The pieces of the control protocol the control server and the node-to-node channel share
(control.cluster): an ``rpc`` request's body and answer, and the bound on strangers.

The ``rpc`` body's bound and errors are the same for the control server's own ``rpc`` and the one
the forwarder relays (both call ``read_rpc_body``): checked here on the helper, through the real
control socket of a listener, and through the forwarder's proxy path.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import Any, List

import pytest

from netconf_callhome.control.cluster import MAX_RPC, Strangers, answer_rpc, read_rpc_body
from netconf_callhome.control.forward import Forwarder, proxy_id
from netconf_callhome.errors import ControlError
from netconf_callhome.protocol.rpc_socket import MAX_FRAME

pytestmark = pytest.mark.timeout(60)

BAD_SIZE = "'size' must be the request's length in bytes (1 to %d)" % (256 * 1024 * 1024)


def _reader(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def test_the_rpc_bound_is_the_endpoint_sockets_frame_bound() -> None:
    assert MAX_RPC == MAX_FRAME == 256 * 1024 * 1024


@pytest.mark.parametrize("size", [0, -1, True, False, "3", 1.5, None, 256 * 1024 * 1024 + 1])
def test_a_bad_size_is_refused_before_anything_is_read(size: Any) -> None:
    async def run() -> None:
        reader = _reader(b"abc")
        with pytest.raises(ControlError) as err:
            await read_rpc_body({"size": size} if size is not None else {}, reader)
        assert err.value.message == BAD_SIZE
        assert await reader.read() == b"abc"  # nothing consumed

    asyncio.run(run())


def test_the_body_is_read_exactly_and_a_short_one_is_refused() -> None:
    async def run() -> None:
        reader = _reader(b"12345next")
        assert await read_rpc_body({"size": 5}, reader) == b"12345"
        assert await reader.read() == b"next"
        with pytest.raises(ControlError, match=r"^the connection ended before the 5 bytes of the request$"):
            await read_rpc_body({"size": 5}, _reader(b"123"))

    asyncio.run(run())


def test_the_answer_is_a_line_with_the_size_then_the_bytes() -> None:
    class Sink:
        def __init__(self) -> None:
            self.data = b""

        def write(self, data: bytes) -> None:
            self.data += data

        async def drain(self) -> None:
            pass

    sink = Sink()
    asyncio.run(answer_rpc(sink, b'{"id": 1}'))  # type: ignore[arg-type]
    assert sink.data == b'{"ok": true, "result": {"size": 9}}\n{"id": 1}'


@pytest.mark.parametrize(
    "payload,message",
    [
        (b'{"op": "rpc", "endpoint": "e1", "size": 0}\n', BAD_SIZE),
        (b'{"op": "rpc", "endpoint": "e1", "size": 268435457}\n', BAD_SIZE),
        (b'{"op": "rpc", "endpoint": "e1", "size": 10}\nabc', "the connection ended before the 10 bytes of the request"),
    ],
    ids=["zero", "over-the-bound", "short-body"],
)
def test_the_control_socket_refuses_a_bad_rpc_body(listener_in_thread: Any, payload: bytes, message: str) -> None:
    lst = listener_in_thread()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(lst.config.control_socket)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # a short body then ends here
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    result = json.loads(answer)
    assert result["ok"] is False and result["error"]["message"] == message
    assert lst.call("ping")["pid"] == os.getpid()


def test_the_forwarder_refuses_a_bad_rpc_body_alike() -> None:
    """A proxy endpoint of a device held elsewhere: the body is checked before the owner is asked."""

    class Directory:
        node = "node-a"

    async def run() -> None:
        forwarder = Forwarder(Directory(), None, held_here=lambda device: False, rpc_dir="/nonexistent")  # type: ignore[arg-type]
        # another node's proxy endpoint (its address known): the body is read and checked before
        # that node is dialled (there is no client to dial with here)
        endpoint = proxy_id("node-z", "e1")
        forwarder._addresses["node-z"] = "127.0.0.1:9"
        with pytest.raises(ControlError) as err:
            await forwarder.serve("rpc", {"endpoint": endpoint, "size": 0}, _reader(b""), None)  # type: ignore[arg-type]
        assert err.value.message == BAD_SIZE

    asyncio.run(run())


def test_strangers_past_the_limit_close_the_oldest() -> None:
    async def run() -> None:
        told: List[Any] = []
        strangers = Strangers(2, told.append)
        aborted: List[str] = []

        class Transport:
            def __init__(self, name: str) -> None:
                self.name = name

            def abort(self) -> None:
                aborted.append(self.name)

        class Writer:
            def __init__(self, name: str) -> None:
                self.transport = Transport(name)

        gate = asyncio.Event()
        outcome: dict = {}

        async def stranger(name: str) -> None:
            writer = Writer(name)
            task = strangers.admit(writer, "peer-" + name)  # type: ignore[arg-type]
            try:
                await gate.wait()
            except asyncio.CancelledError:
                outcome[name] = "evicted" if strangers.cancelled(task, writer) else "cancelled"  # type: ignore[arg-type]
                if outcome[name] == "cancelled":
                    raise
                return
            finally:
                strangers.done(task)
            outcome[name] = "verified"

        tasks = {}
        for name in ("a", "b", "c"):
            tasks[name] = asyncio.create_task(stranger(name))
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert outcome == {"a": "evicted"} and told == ["peer-c"] and aborted == ["a", "a"]
        assert len(strangers) == 2
        tasks["b"].cancel()  # not evicted: the cancellation is the caller's
        with pytest.raises(asyncio.CancelledError):
            await tasks["b"]
        assert outcome["b"] == "cancelled" and len(strangers) == 1
        gate.set()
        await tasks["c"]
        assert outcome["c"] == "verified" and len(strangers) == 0

        # close_all (a stopping server) evicts every stranger still waiting
        gate.clear()
        late = [asyncio.create_task(stranger(n)) for n in ("d", "e")]
        await asyncio.sleep(0)
        strangers.close_all()
        await asyncio.gather(*late)
        assert outcome["d"] == outcome["e"] == "evicted" and len(strangers) == 0

    asyncio.run(run())

# SPDX-License-Identifier: GPL-3.0-or-later
"""The leases of a held session (``HeldSession``): the device side is a tiny fake carrier that
answers RPCs, the client side is a real asyncio stream over a socketpair. No network, no SSH.

Shared leases run on the multiplexer (``sessions.mux``; its own tests are in
tests/unit/netconf_callhome/sessions/test_mux.py): the device sees listener message-ids, so
assertions on what the device received compare with :func:`same_but_id`."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any, Awaitable, Callable, List, Optional, Tuple

import pytest

from netconf_callhome.errors import HandshakeError, LeaseError
from netconf_callhome.protocol.framing import BASE_10, BASE_11, CLIENT_HELLO, EOM, Framer, parse_hello
from netconf_callhome.protocol.session import CHANNEL, SHARED, HeldSession
from netconf_callhome.sessions.mux import Multiplexer

pytestmark = pytest.mark.timeout(30)

NS = "urn:ietf:params:xml:ns:netconf:base:1.0"


def hello(*caps: str, session_id: int = 7) -> bytes:
    body = "".join("<capability>%s</capability>" % c for c in caps)
    return ('<hello xmlns="%s"><capabilities>%s</capabilities><session-id>%d</session-id></hello>' % (
        NS, body, session_id)).encode()


def rpc(mid: Optional[str], body: str = "<get-config><source><running/></source></get-config>") -> bytes:
    attr = ' message-id="%s"' % mid if mid is not None else ""
    return ('<rpc xmlns="%s"%s>%s</rpc>' % (NS, attr, body)).encode()


def reply(mid: str, body: str = "<data/>") -> bytes:
    return ('<rpc-reply xmlns="%s" message-id="%s">%s</rpc-reply>' % (NS, mid, body)).encode()


_ID = re.compile(rb"""(message-id=)(["'])(.*?)\2""")


def same_but_id(got: List[bytes], want: List[bytes]) -> bool:
    """Messages equal apart from their message-id values (the multiplexer maps them)."""
    def blank(m: bytes) -> bytes:
        return _ID.sub(rb"\1\2*\2", m, count=1)

    return [blank(m) for m in got] == [blank(m) for m in want]


def device_id(msg: bytes) -> str:
    """The message-id the device saw on a forwarded rpc."""
    found = _ID.search(msg)
    assert found is not None
    return found.group(3).decode()


CLOSE = "<close-session/>"
NOTIFICATION = b'<notification xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0"><eventTime>x</eventTime></notification>'


class FakeDevice:
    """A device behind a :class:`Carrier`: decodes what the listener writes and answers RPCs.

    ``auto_reply`` False keeps RPCs unanswered until the test calls :meth:`answer`.
    """

    def __init__(self, held: HeldSession, *, caps: Tuple[str, ...] = (BASE_10, BASE_11), auto_reply: bool = True) -> None:
        self.held = held
        self.caps = caps
        self.auto_reply = auto_reply
        self.framer = Framer(1 << 20)
        self.received: List[bytes] = []
        self.raw = bytearray()
        self.closed = False
        self.got_hello = False

    # Carrier protocol
    def write(self, data: bytes) -> None:
        self.raw += data
        for msg in self.framer.feed(data):
            if not self.got_hello:
                self.got_hello = True
                if BASE_11 in self.caps and parse_hello(msg).base11:
                    self.framer.use_chunked()
                continue
            self.received.append(msg)
            mid = re.search(rb'message-id="([^"]*)"', msg)
            if self.auto_reply and mid:
                self.answer(mid.group(1).decode())

    def close(self) -> None:
        self.closed = True

    # device side
    def send_hello(self) -> None:
        self.held.data_received(hello(*self.caps) + EOM)

    def send(self, message: bytes, *, now: bool = False) -> None:
        """A message from the device, framed as the session requires; delivered on the next loop
        turn as a transport would, or at once with ``now``."""
        out = Framer(1 << 20)
        if self.held.hello is not None and self.held.hello.base11:
            out.use_chunked()
        if now:
            self.held.data_received(out.encode(message))
        else:
            asyncio.get_running_loop().call_soon(self.held.data_received, out.encode(message))

    def answer(self, mid: str, body: str = "<data/>") -> None:
        self.send(reply(mid, body))


async def open_device(**kwargs: Any) -> Tuple[HeldSession, FakeDevice]:
    held = HeldSession(device="r1", transport="tls", peer="192.0.2.1:4335", fingerprint="SHA256:x",
                       max_hello=1 << 16, max_message=1 << 20)
    dev = FakeDevice(held, **kwargs)
    held.attach(dev)
    dev.send_hello()
    await held.wait_hello()
    held.configure(shared=Multiplexer(held))  # as the service does when the session is ready
    return held, dev


class Client:
    """The lease client's end of a socketpair, speaking NETCONF as ncclient would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = Framer(1 << 20)
        self.inbox: List[bytes] = []

    async def recv(self, timeout: float = 5.0) -> bytes:
        while not self.inbox:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("lease stream closed")
            self.inbox += self.framer.feed(data)
        return self.inbox.pop(0)

    async def send(self, message: bytes, framing: Optional[Framer] = None) -> None:
        self.writer.write((framing or self.framer).encode(message))
        await self.writer.drain()

    async def hello(self, *caps: str) -> bytes:
        """Read the device hello, send ours; switch to chunked when both sides say base:1.1."""
        device_hello = await self.recv()
        await self.send(hello(*caps))
        if BASE_11 in caps and parse_hello(device_hello).base11:
            self.framer.use_chunked()
        return device_hello

    def close(self) -> None:
        self.writer.close()


async def start_lease(held: HeldSession) -> Tuple["asyncio.Task[str]", Client]:
    """Run ``held.lease`` on one end of a socketpair; return the task and the client's end."""
    ours, theirs = socket.socketpair()
    lr, lw = await asyncio.open_connection(sock=theirs)
    cr, cw = await asyncio.open_connection(sock=ours)
    task = asyncio.ensure_future(_lease_and_close(held, lr, lw))
    return task, Client(cr, cw)


async def _lease_and_close(held: HeldSession, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    try:
        return await held.lease(reader, writer)
    finally:
        writer.close()  # as the control server does when the lease ends


def run(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(bounded())


# -- hello and framing on the device side ----------------------------------------------------------


def test_attach_sends_the_listener_hello_eom_framed() -> None:
    async def body() -> None:
        held, dev = await open_device()
        assert bytes(dev.raw).startswith(CLIENT_HELLO + EOM)
        assert held.hello is not None and held.hello.session_id == 7 and held.hello.base11
        assert held.is_open and held.mode == SHARED

    run(body)


def test_base11_device_switches_to_chunked_even_for_bytes_behind_the_hello() -> None:
    async def body() -> None:
        held = HeldSession(device="r1", transport="tls", peer="p", fingerprint="f", max_hello=1 << 16, max_message=1 << 20)
        dev = FakeDevice(held)
        held.attach(dev)
        # the hello and a chunked notification arrive in one read: parsed as chunks, no error
        held.data_received(hello(BASE_10, BASE_11) + EOM + b"\n#5\n<ok/>\n##\n")
        assert (await held.wait_hello()).base11
        assert held.is_open and not held.failed
        held.send(b"<x/>")
        assert bytes(dev.raw).endswith(b"\n#4\n<x/>\n##\n")
        # and what follows is held to chunked framing too
        held.data_received(b"<rpc-reply/>" + EOM)
        assert held.failed and not held.is_open

    run(body)


def test_bytes_behind_a_base11_hello_are_checked_as_chunks() -> None:
    async def body() -> None:
        held = HeldSession(device="r1", transport="tls", peer="p", fingerprint="f", max_hello=1 << 16, max_message=1 << 20)
        held.attach(FakeDevice(held))
        held.data_received(hello(BASE_10, BASE_11) + EOM + b"\n#bogus\n")
        with pytest.raises(HandshakeError, match="invalid chunk header"):
            await held.wait_hello()  # the hello came, but the session broke right after
        assert held.failed

    run(body)


def test_base10_device_stays_eom_framed() -> None:
    async def body() -> None:
        held, dev = await open_device(caps=(BASE_10,))
        held.send(b"<x/>")
        assert bytes(dev.raw).endswith(b"<x/>" + EOM)

    run(body)


@pytest.mark.parametrize(
    "data, why",
    [
        (b"<rpc-reply/>" + EOM, "expected <hello>"),
        (b"<hello xmlns='%s'><capabilities><capability>urn:x</capability></capabilities></hello>" % NS.encode() + EOM, "neither base:1.0 nor base:1.1"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><hello/>' + EOM, "DTD"),
    ],
)
def test_bad_device_hello_fails_the_handshake(data: bytes, why: str) -> None:
    async def body() -> None:
        held = HeldSession(device="r1", transport="tls", peer="p", fingerprint="f", max_hello=1 << 16, max_message=1 << 20)
        held.attach(FakeDevice(held))
        held.data_received(data)
        with pytest.raises(HandshakeError, match="bad hello from device: .*" + re.escape(why)):
            await held.wait_hello()

    run(body)


def test_connection_lost_before_hello_fails_the_handshake_with_the_reason() -> None:
    async def body() -> None:
        held = HeldSession(device="r1", transport="tls", peer="p", fingerprint="f", max_hello=1 << 16, max_message=1 << 20)
        held.attach(FakeDevice(held))
        held.connection_lost("TLS connection reset")
        with pytest.raises(HandshakeError, match="TLS connection reset"):
            await held.wait_hello()
        assert not held.is_open and held.closed.result() == "TLS connection reset"

    run(body)


def test_oversized_hello_is_a_framing_failure() -> None:
    async def body() -> None:
        held = HeldSession(device="r1", transport="tls", peer="p", fingerprint="f", max_hello=1024, max_message=1 << 20)
        dev = FakeDevice(held)
        held.attach(dev)
        held.data_received(b"<hello>" + b"x" * 2048)
        with pytest.raises(HandshakeError, match="exceeds 1024 bytes"):
            await held.wait_hello()
        assert held.failed and dev.closed

    run(body)


def test_device_framing_error_after_hello_closes_and_marks_failed() -> None:
    async def body() -> None:
        held, dev = await open_device()
        held.data_received(b"\n#bogus\n<rpc-reply/>\n##\n")
        assert held.failed and dev.closed and not held.is_open
        reason = held.closed.result()
        assert reason.startswith("device broke NETCONF framing: invalid chunk header")
        with pytest.raises(LeaseError, match="session of r1 is closed"):
            held.send(b"<x/>")
        held.connection_lost("SSH connection closed")  # the carrier's own report comes after
        assert held.closed.result() == reason  # the first reason stays

    run(body)


def test_plain_drop_is_not_a_failure() -> None:
    async def body() -> None:
        held, dev = await open_device()
        held.close("listener stopping")
        assert dev.closed and not held.failed and held.closed.result() == "listener stopping"

    run(body)


# -- shared leases ---------------------------------------------------------------------------------


def test_shared_lease_proxies_hello_rpcs_and_answers_close_session_itself() -> None:
    async def body() -> None:
        held, dev = await open_device()
        task, client = await start_lease(held)
        device_hello = await client.hello(BASE_10, BASE_11)
        assert device_hello == hello(BASE_10, BASE_11)  # the device's original hello, untouched
        assert held.active_leases == 1
        await client.send(rpc("101"))
        assert await client.recv() == reply("101")
        # the client's hello was answered here, not forwarded; the rpc went under a listener id
        assert same_but_id(dev.received, [rpc("101")])
        sent = dev.received[0]
        assert dev.raw.endswith(b"\n#%d\n%s\n##\n" % (len(sent), sent))
        await client.send(rpc("102", CLOSE))
        ok = await client.recv()
        assert b'message-id="102"' in ok and b"<ok/>" in ok
        assert await task == "client closed the session"
        assert len(dev.received) == 1  # close-session never reached the device
        assert held.is_open and held.active_leases == 0
        with pytest.raises(EOFError):
            await client.recv()

    run(body)


def test_base10_client_on_a_base11_device_keeps_eom_to_the_client() -> None:
    async def body() -> None:
        held, dev = await open_device()
        task, client = await start_lease(held)
        await client.hello(BASE_10)
        assert not client.framer.chunked
        await client.send(rpc("1"))
        assert await client.recv() == reply("1")  # decoded by an EOM framer: proves EOM framing
        assert dev.raw.endswith(b"\n##\n")  # device side stays chunked
        client.close()
        assert await task == "client closed the lease"

    run(body)


def test_base11_client_on_a_base10_device_stays_eom() -> None:
    async def body() -> None:
        held, dev = await open_device(caps=(BASE_10,))
        task, client = await start_lease(held)
        await client.hello(BASE_10, BASE_11)
        assert not client.framer.chunked
        await client.send(rpc("1"))
        assert await client.recv() == reply("1")
        assert dev.raw.endswith(dev.received[-1] + EOM) and same_but_id(dev.received, [rpc("1")])
        client.close()
        assert await task == "client closed the lease"

    run(body)


def test_client_rpcs_in_the_same_read_as_its_hello_are_forwarded_chunked() -> None:
    async def body() -> None:
        held, dev = await open_device()
        task, client = await start_lease(held)
        await client.recv()
        chunked = Framer(1 << 20)
        chunked.use_chunked()
        client.writer.write(hello(BASE_11) + EOM + chunked.encode(rpc("5")) + chunked.encode(rpc("6")))
        client.framer.use_chunked()
        assert [await client.recv(), await client.recv()] == [reply("5"), reply("6")]
        assert same_but_id(dev.received, [rpc("5"), rpc("6")])
        client.close()
        assert await task == "client closed the lease"

    run(body)


def test_close_session_without_message_id_gets_an_ok_without_one() -> None:
    async def body() -> None:
        held, _dev = await open_device()
        task, client = await start_lease(held)
        await client.hello(BASE_10)
        await client.send(('<nc:rpc xmlns:nc="%s"><nc:close-session/></nc:rpc>' % NS).encode())
        ok = await client.recv()
        assert b"<ok/>" in ok and b"message-id" not in ok
        assert await task == "client closed the session"

    run(body)


def test_message_ids_in_other_quoting_and_prefixes_are_tracked() -> None:
    async def body() -> None:
        held, dev = await open_device(auto_reply=False)
        task, client = await start_lease(held)
        await client.hello(BASE_10, BASE_11)
        msg = ("<nc:rpc xmlns:nc='%s' message-id='a-1'><nc:get/></nc:rpc>" % NS).encode()
        await client.send(msg)
        await wait_for(lambda: same_but_id(dev.received, [msg]))
        seen = device_id(dev.received[0])
        assert seen != "a-1" and b"message-id='%s'" % seen.encode() in dev.received[0]  # quotes kept
        client.close()
        assert await task == "client closed the lease"
        # the abandoned reply is swallowed: it was recognised by its single-quoted, prefixed id
        task2, client2 = await start_lease(held)
        await client2.hello(BASE_10, BASE_11)
        dev.send(("<nc:rpc-reply xmlns:nc='%s' message-id='%s'><nc:data/></nc:rpc-reply>" % (NS, seen)).encode())
        dev.auto_reply = True
        await client2.send(rpc("b-2"))
        assert await client2.recv() == reply("b-2")
        client2.close()
        assert await task2 == "client closed the lease"

    run(body)


def test_replies_to_abandoned_rpcs_never_reach_the_next_lease() -> None:
    async def body() -> None:
        held, dev = await open_device(auto_reply=False)
        task, client = await start_lease(held)
        await client.hello(BASE_10, BASE_11)
        await client.send(rpc("7"))
        await wait_for(lambda: same_but_id(dev.received, [rpc("7")]))
        client.close()  # gives up before the device answers
        assert await task == "client closed the lease"

        task2, client2 = await start_lease(held)
        await client2.hello(BASE_10, BASE_11)
        dev.answer(device_id(dev.received[0]), "<stale/>")  # the late reply to the first lease's rpc
        dev.auto_reply = True
        await client2.send(rpc("7"))  # the new client happens to reuse the id: gets its own answer
        dev_reply = await client2.recv()
        assert dev_reply == reply("7") and b"stale" not in dev_reply
        client2.close()
        assert await task2 == "client closed the lease"

    run(body)


def test_notifications_reach_a_subscribed_lease_and_are_dropped_without_one() -> None:
    async def body() -> None:
        held, dev = await open_device()
        dev.send(NOTIFICATION, now=True)  # no lease yet: dropped
        task, client = await start_lease(held)
        await client.hello(BASE_10, BASE_11)
        await client.send(rpc("1"))
        assert await client.recv() == reply("1")  # the lease has taken the client's hello by now
        dev.send(NOTIFICATION)  # not subscribed: dropped
        subscribe = '<create-subscription xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0"/>'
        await client.send(rpc("2", subscribe))
        dev_ok = await client.recv()
        assert b'message-id="2"' in dev_ok
        dev.send(NOTIFICATION)
        assert await client.recv() == NOTIFICATION
        client.close()
        assert await task == "client closed the lease"

    run(body)


def test_device_message_before_the_client_hello_is_not_sent_in_the_wrong_framing() -> None:
    async def body() -> None:
        held, dev = await open_device()
        task, client = await start_lease(held)
        assert await client.recv() == hello(BASE_10, BASE_11)
        dev.send(NOTIFICATION, now=True)  # e.g. a subscription a previous lease left running
        await client.send(hello(BASE_10, BASE_11))
        client.framer.use_chunked()
        await client.send(rpc("1"))
        # Before the client's hello its framing is unknown (and it has not subscribed): the
        # notification is dropped, and the first thing the client reads is its reply, chunked.
        assert await client.recv() == reply("1")
        client.close()
        await task

    run(body)


def test_device_loss_ends_the_shared_lease_with_the_reason() -> None:
    async def body() -> None:
        held, _dev = await open_device(auto_reply=False)
        task, client = await start_lease(held)
        await client.hello(BASE_10, BASE_11)
        await client.send(rpc("1"))
        held.connection_lost("SSH connection closed")
        assert await task == "device session closed: SSH connection closed"
        with pytest.raises(EOFError):
            await client.recv()  # the client sees its stream end, not a hang

    run(body)


def test_client_framing_error_ends_the_lease_but_not_the_session() -> None:
    async def body() -> None:
        held, dev = await open_device()
        task, client = await start_lease(held)
        await client.hello(BASE_10, BASE_11)
        client.writer.write(b"\n#zz\n<rpc/>\n##\n")
        assert (await task).startswith("client broke NETCONF framing: invalid chunk header")
        assert held.is_open and not held.failed and dev.received == []

    run(body)


def test_a_client_hello_that_is_not_a_hello_ends_the_lease() -> None:
    async def body() -> None:
        held, dev = await open_device()
        task, client = await start_lease(held)
        await client.recv()
        await client.send(rpc("1"))  # skipped its hello
        assert (await task).startswith("client broke NETCONF framing: expected <hello>")
        assert held.is_open and dev.received == []

    run(body)


def test_shared_leases_run_at_the_same_time() -> None:
    async def body() -> None:
        held, _dev = await open_device()
        task1, client1 = await start_lease(held)
        await client1.hello(BASE_10, BASE_11)
        task2, client2 = await start_lease(held)
        # the second lease starts while the first runs (it used to wait for its turn)
        assert await client2.hello(BASE_10, BASE_11) == hello(BASE_10, BASE_11)
        assert held.active_leases == 2
        await client2.send(rpc("10"))
        await client1.send(rpc("10"))  # the same id in both clients: each gets its own answer
        assert await client2.recv() == reply("10") and await client1.recv() == reply("10")
        await client1.send(rpc("9", CLOSE))
        await client1.recv()
        assert await task1 == "client closed the session"
        await client2.send(rpc("11"))
        assert await client2.recv() == reply("11")
        client2.close()
        assert await task2 == "client closed the lease"
        assert held.active_leases == 0

    run(body)


# -- channel leases --------------------------------------------------------------------------------


CHANNEL_HELLO = hello(BASE_10, BASE_11, session_id=8) + EOM


class FakeChannels:
    """``open_channel`` of an SSH device: each lease gets a socketpair standing for a channel.

    The device says its hello on each new channel at once, unless ``silent`` (one NETCONF
    session per SSH connection: it accepts the channel and never speaks on it)."""

    def __init__(self, refuse: bool = False, silent: bool = False) -> None:
        self.refuse = refuse
        self.silent = silent
        self.opened = 0
        self.ends: List[Tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def __call__(self) -> Tuple[asyncio.StreamWriter, asyncio.StreamReader]:
        if self.refuse:
            raise LeaseError("device refused another NETCONF channel: open failed")
        self.opened += 1
        ours, theirs = socket.socketpair()
        cr, cw = await asyncio.open_connection(sock=ours)
        end = await asyncio.open_connection(sock=theirs)
        if not self.silent:
            end[1].write(CHANNEL_HELLO)
        self.ends.append(end)
        return cw, cr


def test_channel_lease_pipes_bytes_untouched_both_ways() -> None:
    async def body() -> None:
        held, dev = await open_device()
        channels = FakeChannels()
        held.mode, held.open_channel = CHANNEL, channels
        task, client = await start_lease(held)
        # the channel's own hello, read by the listener before piping, reaches the client intact
        assert await read_exactly(client.reader, len(CHANNEL_HELLO)) == CHANNEL_HELLO
        payload = b"any bytes at all, even <hello> not framed"
        client.writer.write(payload)
        await client.writer.drain()
        dev_reader, dev_writer = await wait_for_channel(channels)
        assert await read_exactly(dev_reader, len(payload)) == payload
        dev_writer.write(b"device says hi]]>]]>")
        await dev_writer.drain()
        assert await read_exactly(client.reader, 20) == b"device says hi]]>]]>"
        assert held.active_leases == 1 and dev.received == []  # nothing went over the held session
        client.close()
        assert await task == "client closed the lease"
        assert await dev_reader.read() == b""  # the channel is closed after the lease
        assert held.mode == CHANNEL and held.active_leases == 0

    run(body)


def test_channel_leases_run_side_by_side() -> None:
    async def body() -> None:
        held, _dev = await open_device()
        channels = FakeChannels()
        held.mode, held.open_channel = CHANNEL, channels
        task1, client1 = await start_lease(held)
        task2, client2 = await start_lease(held)
        await wait_for(lambda: channels.opened == 2)
        assert held.active_leases == 2
        for i, client in enumerate((client1, client2)):
            client.writer.write(b"lease%d" % i)
        assert {await read_exactly(r, 6) for r, _w in channels.ends} == {b"lease0", b"lease1"}
        client1.close()
        client2.close()
        assert await task1 == await task2 == "client closed the lease"

    run(body)


def test_device_closing_the_channel_ends_the_lease() -> None:
    async def body() -> None:
        held, _dev = await open_device()
        channels = FakeChannels()
        held.mode, held.open_channel = CHANNEL, channels
        task, client = await start_lease(held)
        _r, dev_writer = await wait_for_channel(channels)
        dev_writer.close()
        assert await task == "device closed the NETCONF channel"
        assert held.is_open

    run(body)


def test_device_loss_ends_a_channel_lease() -> None:
    async def body() -> None:
        held, _dev = await open_device()
        channels = FakeChannels()
        held.mode, held.open_channel = CHANNEL, channels
        task, _client = await start_lease(held)
        dev_reader, _w = await wait_for_channel(channels)
        held.connection_lost("SSH connection closed")
        assert await task == "device session closed: SSH connection closed"
        assert await dev_reader.read() == b""

    run(body)


def test_refused_channel_falls_back_to_shared_for_good() -> None:
    async def body() -> None:
        held, _dev = await open_device()
        channels = FakeChannels(refuse=True)
        held.mode, held.open_channel = CHANNEL, channels
        task, client = await start_lease(held)
        assert await client.hello(BASE_10, BASE_11) == hello(BASE_10, BASE_11)  # shared: the held hello
        assert held.mode == SHARED
        await client.send(rpc("1"))
        assert await client.recv() == reply("1")
        client.close()
        assert await task == "client closed the lease"
        channels.refuse = False
        task2, client2 = await start_lease(held)
        await client2.hello(BASE_10)
        assert channels.opened == 0  # never asked again
        client2.close()
        assert await task2 == "client closed the lease"

    run(body)


# -- helpers ---------------------------------------------------------------------------------------


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition on the event loop (the fake device answers on later loop turns)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met within %.1f s" % timeout)
        await asyncio.sleep(0.01)


async def wait_for_channel(channels: FakeChannels) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    await wait_for(lambda: bool(channels.ends))
    return channels.ends[-1]


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), 5)


def test_a_channel_hello_in_tiny_pieces_is_found_once_and_bounded() -> None:
    """_read_hello finds the end of the hello with a Framer (each byte searched once) and keeps
    every byte for the client; past the limit it fails while reading, not after."""
    from netconf_callhome.errors import FramingError
    from netconf_callhome.protocol.session import _read_hello

    hello = (b'<hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><capabilities><capability>'
             b"urn:ietf:params:netconf:base:1.0</capability></capabilities><session-id>4</session-id></hello>]]>]]>")

    async def read(data: bytes, limit: int) -> bytes:
        reader = asyncio.StreamReader()
        for i in range(0, len(data), 3):
            reader.feed_data(data[i:i + 3])
        reader.feed_eof()
        return await _read_hello(reader, limit)

    assert asyncio.run(read(hello, 4096)) == hello
    with pytest.raises(FramingError, match="exceeds 64 bytes"):
        asyncio.run(read(b"<hello>" + b"x" * 10000, 64))

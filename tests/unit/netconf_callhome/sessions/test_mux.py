# SPDX-License-Identifier: GPL-3.0-or-later
"""The multiplexer of shared leases and the choice of a device's lease mode.

The device is a fake carrier under a real :class:`HeldSession` that records what it receives and
answers when told to (or at once); clients are real asyncio streams over socketpairs, speaking
NETCONF as ncclient would. Channels of an SSH device are socketpairs too. No network, no SSH.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import pytest

from netconf_callhome.config import ListenerConfig, load_config
from netconf_callhome.errors import ConfigError, LeaseError
from netconf_callhome.protocol.framing import BASE_10, BASE_11, EOM, Framer, parse_hello
from netconf_callhome.protocol.session import AUTO, CHANNEL, SHARED, HeldSession
from netconf_callhome.sessions.mux import Multiplexer

pytestmark = pytest.mark.timeout(60)

NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
NS_NOTIF = "urn:ietf:params:xml:ns:netconf:notification:1.0"
SESSION_ID = 7
NOTIFICATION = ('<notification xmlns="%s"><eventTime>2024-01-01T00:00:00Z</eventTime><x/></notification>' % NS_NOTIF).encode()
_ID = re.compile(rb"""message-id=(["'])(.*?)\1""")


def hello(*caps: str, session_id: int = SESSION_ID) -> bytes:
    body = "".join("<capability>%s</capability>" % c for c in caps)
    return ('<hello xmlns="%s"><capabilities>%s</capabilities><session-id>%d</session-id></hello>' % (
        NS, body, session_id)).encode()


def rpc(mid: Optional[str], body: str = "<get-config><source><running/></source></get-config>", quote: str = '"') -> bytes:
    attr = " message-id=%s%s%s" % (quote, mid, quote) if mid is not None else ""
    return ('<rpc xmlns="%s"%s>%s</rpc>' % (NS, attr, body)).encode()


def reply(mid: str, body: str = "<data/>", quote: str = '"') -> bytes:
    return ('<rpc-reply xmlns="%s" message-id=%s%s%s>%s</rpc-reply>' % (NS, quote, mid, quote, body)).encode()


def lock(ds: str) -> str:
    return "<lock><target><%s/></target></lock>" % ds


def unlock(ds: str) -> str:
    return "<unlock><target><%s/></target></unlock>" % ds


def edit(ds: str) -> str:
    return "<edit-config><target><%s/></target><config/></edit-config>" % ds


def ids(msg: bytes) -> str:
    found = _ID.search(msg)
    assert found is not None, msg
    return found.group(2).decode()


class FakeDevice:
    """The device behind the held session: records RPCs; answers at once or when told to."""

    def __init__(self, held: HeldSession, auto_reply: bool = True) -> None:
        self.held = held
        self.auto_reply = auto_reply
        self.framer = Framer(1 << 20)
        self.received: List[bytes] = []
        self.unanswered: List[bytes] = []
        self.got_hello = False
        self.closed = False

    def write(self, data: bytes) -> None:
        for msg in self.framer.feed(data):
            if not self.got_hello:
                self.got_hello = True
                self.framer.use_chunked()
                continue
            self.received.append(msg)
            self.unanswered.append(msg)
            if self.auto_reply:
                self.answer_next()

    def close(self) -> None:
        self.closed = True

    def send(self, message: bytes) -> None:
        out = Framer(1 << 20)
        out.use_chunked()
        asyncio.get_running_loop().call_soon(self.held.data_received, out.encode(message))

    def answer_next(self, body: Optional[str] = None) -> bytes:
        """Answer the oldest unanswered RPC (NETCONF answers in order); returns it."""
        msg = self.unanswered.pop(0)
        if body is None:
            body = "<data/>" if b"<get" in msg else "<ok/>"
        self.send(reply(ids(msg), body))
        return msg

    def ops(self) -> List[str]:
        """The operation of each RPC received, e.g. ["lock", "get-config"]."""
        return [re.search(rb"<rpc[^>]*>\s*<([\w:-]+)", m).group(1).decode() for m in self.received]  # type: ignore[union-attr]


async def open_device(**kwargs: Any) -> Tuple[HeldSession, FakeDevice, Multiplexer]:
    cap = kwargs.pop("cap", 4)
    queue_limit = kwargs.pop("queue_limit", 64)
    held = HeldSession(device="r1", transport="tls", peer="192.0.2.1:4335", fingerprint="SHA256:x",
                       max_hello=1 << 16, max_message=kwargs.pop("max_message", 1 << 20))
    dev = FakeDevice(held, **kwargs)
    held.attach(dev)
    held.data_received(hello(BASE_10, BASE_11) + EOM)
    await held.wait_hello()
    mux = Multiplexer(held, cap=cap, queue_limit=queue_limit)
    held.configure(shared=mux)
    return held, dev, mux


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: "asyncio.Task[str]") -> None:
        self.reader = reader
        self.writer = writer
        self.task = task
        self.framer = Framer(1 << 20)
        self.inbox: List[bytes] = []

    async def recv(self, timeout: float = 5.0) -> bytes:
        while not self.inbox:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("lease stream closed")
            self.inbox += self.framer.feed(data)
        return self.inbox.pop(0)

    async def send(self, message: bytes) -> None:
        self.writer.write(self.framer.encode(message))
        await self.writer.drain()

    async def call(self, message: bytes) -> bytes:
        await self.send(message)
        return await self.recv()

    def close(self) -> None:
        self.writer.close()


async def connect(held: HeldSession, *, modes: Optional[List[str]] = None, handshake: bool = True) -> Client:
    """A lease client: ``held.lease`` on one end of a socketpair, NETCONF hello done."""
    ours, theirs = socket.socketpair()
    lr, lw = await asyncio.open_connection(sock=theirs)
    cr, cw = await asyncio.open_connection(sock=ours)

    async def serve() -> str:
        try:
            return await held.lease(lr, lw, on_mode=modes.append if modes is not None else None)
        finally:
            lw.close()

    client = Client(cr, cw, asyncio.ensure_future(serve()))
    if handshake:
        device_hello = await client.recv()
        await client.send(hello(BASE_10, BASE_11))
        if parse_hello(device_hello).base11:
            client.framer.use_chunked()
    return client


def run(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(bounded())


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met within %.1f s" % timeout)
        await asyncio.sleep(0.005)


def error_tag(msg: bytes) -> str:
    found = re.search(rb"<error-tag>([^<]*)</error-tag>", msg)
    return found.group(1).decode() if found else ""


# -- concurrency and message-ids -------------------------------------------------------------------


def test_concurrent_clients_are_interleaved_and_each_gets_its_own_replies() -> None:
    async def body() -> None:
        held, dev, mux = await open_device(auto_reply=False)
        clients = [await connect(held) for _n in range(3)]
        assert held.active_leases == 3 and mux.clients == 3
        for i, client in enumerate(clients):
            await client.send(rpc("1", "<get><filter>c%d</filter></get>" % i))  # the same id in each
        await wait_for(lambda: len(dev.received) == 3)  # all three at the device at once
        device_ids = [ids(m) for m in dev.received]
        assert len(set(device_ids)) == 3  # three listener ids for the one id of the clients
        for _n in range(3):
            dev.answer_next("<data>%s</data>" % re.search(rb"c\d", dev.unanswered[0]).group().decode())  # type: ignore[union-attr]
        for i, client in enumerate(clients):
            assert await client.recv() == reply("1", "<data>c%d</data>" % i)
        for client in clients:
            client.close()
        assert [await c.task for c in clients] == ["client closed the lease"] * 3
        assert held.active_leases == 0 and held.is_open

    run(body)


def test_message_ids_are_mapped_both_ways_byte_for_byte() -> None:
    async def body() -> None:
        held, dev, _mux = await open_device(auto_reply=False)
        a, b = await connect(held), await connect(held)
        # single quotes around an id holding a double quote, a prefixed rpc, an extra attribute
        # with '>' in its value: only the id's value may change on the way to the device
        msg_a = ("<nc:rpc xmlns:nc='%s' x='1>0' message-id='q\"1'><nc:get/></nc:rpc>" % NS).encode()
        await a.send(msg_a)
        await wait_for(lambda: len(dev.received) == 1)
        await b.send(rpc("q\"1".replace('"', "&quot;")))
        await wait_for(lambda: len(dev.received) == 2)
        got_a = dev.received[0]
        dev_id = ids(got_a)
        assert got_a == msg_a.replace(b"'q\"1'", b"'%s'" % dev_id.encode())
        assert ids(dev.received[1]) != dev_id
        # the device answers with its own quoting and more attributes: all kept but the id
        dev.unanswered.pop(0)
        dev.send(('<nc:rpc-reply xmlns:nc="%s" x="1>0" message-id="%s"><nc:data>A</nc:data></nc:rpc-reply>' % (NS, dev_id)).encode())
        assert await a.recv() == ('<nc:rpc-reply xmlns:nc="%s" x="1>0" message-id=\'q"1\'><nc:data>A</nc:data></nc:rpc-reply>' % NS).encode()
        dev.answer_next("<data>B</data>")
        assert await b.recv() == reply("q&quot;1", "<data>B</data>")
        a.close()
        b.close()
        await asyncio.gather(a.task, b.task)

    run(body)


def test_colliding_ids_between_clients_are_kept_apart_when_answered_out_of_order() -> None:
    async def body() -> None:
        held, dev, _mux = await open_device(auto_reply=False)
        a, b = await connect(held), await connect(held)
        await a.send(rpc("7", "<get>a</get>"))
        await wait_for(lambda: len(dev.received) == 1)
        await b.send(rpc("7", "<get>b</get>"))
        await wait_for(lambda: len(dev.received) == 2)
        first, second = dev.received
        dev.unanswered.clear()
        dev.send(reply(ids(second), "<data>b</data>"))  # a device may answer out of order
        dev.send(reply(ids(first), "<data>a</data>"))
        assert await b.recv() == reply("7", "<data>b</data>")
        assert await a.recv() == reply("7", "<data>a</data>")
        a.close()
        b.close()
        await asyncio.gather(a.task, b.task)

    run(body)


def test_rpc_without_message_id_is_answered_with_missing_attribute() -> None:
    async def body() -> None:
        held, dev, _mux = await open_device()
        a = await connect(held)
        answer = await a.call(rpc(None))
        assert error_tag(answer) == "missing-attribute" and b"<bad-attribute>message-id</bad-attribute>" in answer
        assert dev.received == []
        assert await a.call(rpc("2")) == reply("2")  # the client goes on
        a.close()
        await a.task

    run(body)


# -- fairness --------------------------------------------------------------------------------------


def test_a_busy_client_delays_another_clients_rpc_by_at_most_the_cap() -> None:
    async def body() -> None:
        held, dev, mux = await open_device(auto_reply=False)
        busy, other = await connect(held), await connect(held)
        busy.writer.write(b"".join(busy.framer.encode(rpc("b%d" % i)) for i in range(100)))
        await busy.writer.drain()
        await wait_for(lambda: len(dev.received) == mux.cap)
        await asyncio.sleep(0.05)
        assert len(dev.received) == mux.cap  # no more than the cap outstanding
        await other.send(rpc("single", "<get/>"))
        await wait_for(lambda: len(dev.received) == mux.cap + 1)
        assert dev.received[-1] == rpc(ids(dev.received[-1]), "<get/>")  # the other's rpc, next in line
        # the device answers in order: the other client's reply comes after at most cap replies
        seen_busy = 0
        dev.auto_reply = False
        while True:
            answered = dev.answer_next()
            if answered == dev.received[mux.cap]:
                break
            seen_busy += 1
        assert await other.recv() == reply("single", "<data/>")
        assert seen_busy <= mux.cap
        # the busy client still gets all its 100 replies, in order
        dev.auto_reply = True
        while dev.unanswered:
            dev.answer_next()

        async def drain_busy() -> List[bytes]:
            out = []
            while len(out) < 100:
                out.append(await busy.recv())
                while dev.unanswered:
                    dev.answer_next()
            return out

        assert await drain_busy() == [reply("b%d" % i) for i in range(100)]
        busy.close()
        other.close()
        await asyncio.gather(busy.task, other.task)

    run(body)


def test_clients_with_queued_rpcs_take_turns() -> None:
    async def body() -> None:
        held, dev, _mux = await open_device(auto_reply=False, cap=1)
        a, b = await connect(held), await connect(held)
        a.writer.write(b"".join(a.framer.encode(rpc("a%d" % i, "<get>a</get>")) for i in range(5)))
        b.writer.write(b"".join(b.framer.encode(rpc("b%d" % i, "<get>b</get>")) for i in range(5)))
        await asyncio.gather(a.writer.drain(), b.writer.drain())
        await wait_for(lambda: len(dev.received) == 2)
        while len(dev.received) < 10 or dev.unanswered:
            if dev.unanswered:
                dev.answer_next()
            await asyncio.sleep(0.01)
        owners = [re.search(rb"<get>(\w)</get>", m).group(1).decode() for m in dev.received]  # type: ignore[union-attr]
        assert sorted(owners) == list("aaaaabbbbb")
        assert all(owners[i] != owners[i + 1] for i in range(len(owners) - 1))  # strictly alternating
        a.close()
        b.close()
        await asyncio.gather(a.task, b.task)

    run(body)


# -- locks -----------------------------------------------------------------------------------------


def test_a_lock_holds_against_the_other_clients() -> None:
    async def body() -> None:
        held, dev, mux = await open_device()
        a, b = await connect(held), await connect(held)
        assert await a.call(rpc("1", lock("running"))) == reply("1", "<ok/>")
        assert await a.call(rpc("2", lock("candidate"))) == reply("2", "<ok/>")
        assert set(mux.locks) == {"running", "candidate"}
        at_device = len(dev.received)

        denied = await b.call(rpc("10", lock("running")))
        assert error_tag(denied) == "lock-denied" and b'message-id="10"' in denied
        assert b"<error-type>protocol</error-type>" in denied
        assert b"<error-info><session-id>%d</session-id></error-info>" % SESSION_ID in denied
        for i, op in enumerate([
            edit("running"),
            edit("candidate"),
            "<copy-config><target><running/></target><source><startup/></source></copy-config>",
            "<delete-config><target><candidate/></target></delete-config>",
            "<commit/>",
            "<discard-changes/>",
        ]):
            answer = await b.call(rpc("1%d" % (i + 1), op))
            assert error_tag(answer) == "in-use", op
            assert b'message-id="1%d"' % (i + 1) in answer
        not_yours = await b.call(rpc("20", unlock("running")))
        assert error_tag(not_yours) == "operation-failed"
        assert len(dev.received) == at_device  # none of that reached the device
        # what the lock does not cover goes through, for both; the holder is not held back
        assert await b.call(rpc("21", edit("startup"))) == reply("21", "<ok/>")
        assert await b.call(rpc("22")) == reply("22")
        assert await a.call(rpc("3", edit("running"))) == reply("3", "<ok/>")
        assert await a.call(rpc("4", "<commit/>")) == reply("4", "<ok/>")
        a.close()
        b.close()
        await asyncio.gather(a.task, b.task)

    run(body)


def test_unlock_by_the_holder_frees_the_datastore() -> None:
    async def body() -> None:
        held, dev, mux = await open_device()
        a, b = await connect(held), await connect(held)
        await a.call(rpc("1", lock("running")))
        assert error_tag(await b.call(rpc("1", lock("running")))) == "lock-denied"
        assert await a.call(rpc("2", unlock("running"))) == reply("2", "<ok/>")
        assert mux.locks == {}
        assert await b.call(rpc("2", lock("running"))) == reply("2", "<ok/>")
        assert error_tag(await a.call(rpc("3", edit("running")))) == "in-use"  # now the other way
        a.close()
        b.close()
        await asyncio.gather(a.task, b.task)

    run(body)


def test_a_refused_lock_is_not_held() -> None:
    async def body() -> None:
        held, dev, mux = await open_device(auto_reply=False)
        a, b = await connect(held), await connect(held)
        await a.send(rpc("1", lock("running")))
        await wait_for(lambda: len(dev.received) == 1)
        # while the device has not answered, the lock already holds against the others
        assert error_tag(await b.call(rpc("5", edit("running")))) == "in-use"
        dev.answer_next("<rpc-error><error-type>protocol</error-type><error-tag>lock-denied</error-tag>"
                        "<error-severity>error</error-severity><error-info><session-id>99</session-id></error-info></rpc-error>")
        assert error_tag(await a.recv()) == "lock-denied"  # held by another NETCONF session on the device
        assert mux.locks == {}
        dev.auto_reply = True
        assert await b.call(rpc("6", edit("running"))) == reply("6", "<ok/>")
        a.close()
        b.close()
        await asyncio.gather(a.task, b.task)

    run(body)


@pytest.mark.parametrize("how", ["drop", "close-session"])
def test_locks_are_released_when_their_client_ends(how: str) -> None:
    async def body() -> None:
        held, dev, mux = await open_device()
        a, b = await connect(held), await connect(held)
        await a.call(rpc("1", lock("running")))
        await a.call(rpc("2", lock("candidate")))
        await a.call(rpc("3", edit("candidate")))
        if how == "drop":
            a.close()
            assert await a.task == "client closed the lease"
        else:
            ok = await a.call(rpc("4", "<close-session/>"))
            assert b"<ok/>" in ok and b'message-id="4"' in ok
            assert await a.task == "client closed the session"
        await wait_for(lambda: len(dev.received) == 6)
        # the listener released them itself; for the candidate, as a device does when the
        # session holding its lock ends, uncommitted changes go first
        released = dev.ops()[3:]
        assert sorted(released) == ["discard-changes", "unlock", "unlock"]
        unlock_candidate = next(i for i, m in enumerate(dev.received[3:]) if b"<unlock>" in m and b"<candidate/>" in m)
        assert released.index("discard-changes") < unlock_candidate
        assert mux.locks == {}
        # their replies went nowhere; the other client now gets the datastores
        assert await b.call(rpc("9", lock("running"))) == reply("9", "<ok/>")
        assert await b.call(rpc("10", edit("candidate"))) == reply("10", "<ok/>")
        b.close()
        await b.task

    run(body)


def test_a_lock_whose_client_left_before_the_answer_is_released_when_granted() -> None:
    async def body() -> None:
        held, dev, mux = await open_device(auto_reply=False)
        a, b = await connect(held), await connect(held)
        await a.send(rpc("1", lock("running")))
        await wait_for(lambda: len(dev.received) == 1)
        a.close()
        await a.task
        assert error_tag(await b.call(rpc("1", lock("running")))) == "lock-denied"  # the device holds it
        dev.answer_next()  # granted, to a client that is gone: released at once
        await wait_for(lambda: len(dev.received) == 2)
        assert dev.ops()[1] == "unlock" and mux.locks == {}
        dev.answer_next()
        dev.auto_reply = True
        assert await b.call(rpc("2", lock("running"))) == reply("2", "<ok/>")
        b.close()
        await b.task

    run(body)


# -- confirmed commits ----------------------------------------------------------------------------

CONFIRMED = "<commit><confirmed/><confirm-timeout>120</confirm-timeout></commit>"


def test_a_confirmed_commit_belongs_to_the_client_that_issued_it() -> None:
    """RFC 6241 8.4.1: without <persist> only the issuing session confirms or cancels it."""
    async def body() -> None:
        held, dev, mux = await open_device()
        a, b = await connect(held), await connect(held)
        assert await a.call(rpc("1", CONFIRMED)) == reply("1", "<ok/>")
        assert mux.confirmed is not None
        at_device = len(dev.received)
        for i, op in enumerate(["<commit/>", "<cancel-commit/>", CONFIRMED]):
            refused = await b.call(rpc("1%d" % i, op))
            assert error_tag(refused) == "in-use" and b'message-id="1%d"' % i in refused, op
            assert b"confirmed commit of another client" in refused
        assert len(dev.received) == at_device  # none of that reached the device
        assert await a.call(rpc("2", "<commit/>")) == reply("2", "<ok/>")  # the owner confirms it
        assert mux.confirmed is None
        assert await b.call(rpc("20", "<commit/>")) == reply("20", "<ok/>")  # no one's now
        a.close()
        b.close()
        await asyncio.gather(a.task, b.task)

    run(body)


def test_a_persisted_confirmed_commit_is_any_clients_with_its_persist_id() -> None:
    async def body() -> None:
        held, dev, mux = await open_device()
        a, b = await connect(held), await connect(held)
        await a.call(rpc("1", "<commit><confirmed/><persist>p1</persist></commit>"))
        assert mux.confirmed is None
        assert await b.call(rpc("2", "<commit><persist-id>p1</persist-id></commit>")) == reply("2", "<ok/>")
        a.close()
        b.close()
        await asyncio.gather(a.task, b.task)

    run(body)


@pytest.mark.parametrize("when", ["after-ok", "before-ok"])
def test_a_client_that_ends_with_its_confirmed_commit_pending_has_it_cancelled(when: str) -> None:
    """As a device rolls back when the session that issued a confirmed commit ends."""
    async def body() -> None:
        held, dev, mux = await open_device(auto_reply=(when == "after-ok"))
        a, b = await connect(held), await connect(held)
        if when == "after-ok":
            await a.call(rpc("1", CONFIRMED))
        else:
            await a.send(rpc("1", CONFIRMED))
            await wait_for(lambda: len(dev.received) == 1)
        a.close()
        await a.task
        if when == "before-ok":
            dev.auto_reply = True
            dev.answer_next()  # accepted after its client left: cancelled at once
        await wait_for(lambda: len(dev.received) == 2)
        assert dev.ops() == ["commit", "cancel-commit"] and mux.confirmed is None
        assert await b.call(rpc("5", "<commit/>")) == reply("5", "<ok/>")
        b.close()
        await b.task

    run(body)


def test_a_confirmed_commit_past_its_timeout_is_no_clients() -> None:
    async def body() -> None:
        held, dev, mux = await open_device()
        a, b = await connect(held), await connect(held)
        await a.call(rpc("1", "<commit><confirmed/><confirm-timeout>1</confirm-timeout></commit>"))
        assert error_tag(await b.call(rpc("2", "<commit/>"))) == "in-use"
        assert mux.confirmed is not None
        mux.confirmed.deadline = 0.0  # the device has rolled it back by now
        assert await b.call(rpc("3", "<commit/>")) == reply("3", "<ok/>")
        a.close()
        await a.task
        assert dev.ops()[-1] == "commit"  # nothing cancelled for a client whose commit expired
        b.close()
        await b.task

    run(body)


# -- sessions --------------------------------------------------------------------------------------


def test_close_session_of_one_client_leaves_the_others_running() -> None:
    async def body() -> None:
        held, dev, mux = await open_device(auto_reply=False)
        a, b = await connect(held), await connect(held)
        await a.send(rpc("1"))
        await a.send(rpc("2", "<close-session/>"))
        await wait_for(lambda: len(dev.received) == 1)
        # the close is answered after the reply to the earlier rpc (replies keep request order)
        with pytest.raises(asyncio.TimeoutError):
            await a.recv(timeout=0.2)
        dev.answer_next()
        assert await a.recv() == reply("1")
        ok = await a.recv()
        assert b"<ok/>" in ok and b'message-id="2"' in ok
        assert await a.task == "client closed the session"
        with pytest.raises(EOFError):
            await a.recv()
        dev.auto_reply = True
        assert await b.call(rpc("3")) == reply("3")
        assert held.is_open and mux.clients == 1 and not dev.closed
        assert "close-session" not in dev.ops()
        b.close()
        await b.task

    run(body)


def test_kill_session_is_refused() -> None:
    async def body() -> None:
        held, dev, _mux = await open_device()
        a = await connect(held)
        answer = await a.call(rpc("1", "<kill-session><session-id>%d</session-id></kill-session>" % SESSION_ID))
        assert error_tag(answer) == "operation-not-supported" and b'message-id="1"' in answer
        assert dev.received == [] and held.is_open
        assert await a.call(rpc("2")) == reply("2")
        a.close()
        await a.task

    run(body)


def test_notifications_go_to_the_subscriber_only() -> None:
    async def body() -> None:
        held, dev, _mux = await open_device()
        sub, other = await connect(held), await connect(held)
        dev.send(NOTIFICATION)  # nobody subscribed yet: dropped
        answer = await sub.call(rpc("1", '<create-subscription xmlns="%s"/>' % NS_NOTIF))
        assert answer == reply("1", "<ok/>")
        dev.send(NOTIFICATION)
        assert await sub.recv() == NOTIFICATION
        assert await other.call(rpc("2")) == reply("2")  # the next thing the other one reads
        sub.close()
        await sub.task
        dev.send(NOTIFICATION)  # the subscriber left: dropped
        assert await other.call(rpc("3")) == reply("3")
        other.close()
        await other.task

    run(body)


def test_a_client_that_breaks_the_protocol_ends_alone() -> None:
    async def body() -> None:
        held, dev, _mux = await open_device(max_message=4096)
        a, b, c = await connect(held), await connect(held), await connect(held)
        await a.send(b"<rpc-reply/>")  # not an rpc
        assert (await a.task).startswith("client broke NETCONF framing: expected <rpc>")
        await b.send(rpc("1", "<get>" + "x" * 5000 + "</get>"))  # beyond max_message
        assert (await b.task).startswith("client broke NETCONF framing: NETCONF message exceeds 4096 bytes")
        await c.send(('<!DOCTYPE x [<!ENTITY e "e">]><rpc xmlns="%s" message-id="1"><get/></rpc>' % NS).encode())
        assert "DTD" in await c.task
        d = await connect(held)
        assert await d.call(rpc("1")) == reply("1")
        assert dev.received == [rpc(ids(dev.received[0]))] and held.is_open
        d.close()
        await d.task

    run(body)


def test_device_loss_ends_every_client_and_late_replies_are_swallowed() -> None:
    async def body() -> None:
        held, dev, _mux = await open_device(auto_reply=False)
        a, b = await connect(held), await connect(held)
        await a.send(rpc("1"))
        await wait_for(lambda: len(dev.received) == 1)
        a.close()
        assert await a.task == "client closed the lease"
        dev.answer_next("<stale/>")  # a's reply after a left: goes nowhere
        await b.send(rpc("1"))
        await wait_for(lambda: len(dev.received) == 2)
        held.connection_lost("TLS connection closed")
        assert await b.task == "device session closed: TLS connection closed"
        with pytest.raises(EOFError):
            await b.recv()
        with pytest.raises(LeaseError):
            await held.prepare()

    run(body)


# -- the lease mode: channel, shared, fallback, pins -----------------------------------------------

CHANNEL_HELLO = hello(BASE_10, BASE_11, session_id=21) + EOM


class FakeChannels:
    """``open_channel`` of an SSH device; the device says hello on a new channel unless silent."""

    def __init__(self, *, refuse: bool = False, silent: bool = False) -> None:
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


async def ssh_device(channels: FakeChannels, **configure: Any) -> Tuple[HeldSession, FakeDevice, List[Tuple[str, str]]]:
    held = HeldSession(device="r1", transport="ssh", peer="192.0.2.1:40000", fingerprint="SHA256:x",
                       max_hello=1 << 16, max_message=1 << 20, open_channel=channels)
    dev = FakeDevice(held)
    held.attach(dev)
    held.data_received(hello(BASE_10, BASE_11) + EOM)
    await held.wait_hello()
    held.mode = CHANNEL  # as the SSH transport sets it
    changes: List[Tuple[str, str]] = []
    held.configure(shared=Multiplexer(held), on_mode_change=lambda h, mode, why: changes.append((mode, why)),
                   **configure)
    return held, dev, changes


def test_a_channel_lease_passes_the_channels_hello_on_and_reports_channel() -> None:
    async def body() -> None:
        channels = FakeChannels()
        held, dev, changes = await ssh_device(channels)
        modes: List[str] = []
        client = await connect(held, modes=modes, handshake=False)
        first = await asyncio.wait_for(client.reader.readexactly(len(CHANNEL_HELLO)), 5)
        assert first == CHANNEL_HELLO and modes == [CHANNEL] and held.mode == CHANNEL
        assert channels.opened == 1 and dev.received == [] and changes == []
        client.close()
        assert await client.task == "client closed the lease"

    run(body)


def test_a_silent_channel_falls_back_to_shared_within_the_timeout_for_good() -> None:
    async def body() -> None:
        channels = FakeChannels(silent=True)
        held, dev, changes = await ssh_device(channels, channel_hello_timeout=0.3)
        modes: List[str] = []
        started = time.monotonic()
        client = await connect(held, modes=modes)  # the hello it got is the held session's
        assert time.monotonic() - started < 2.0
        assert modes == [SHARED] and held.mode == SHARED
        assert changes and changes[0][0] == SHARED and "no NETCONF hello" in changes[0][1] and "0.3 s" in changes[0][1]
        # the silent channel was closed, and this very lease is served over the held session
        dev_reader, _w = channels.ends[0]
        assert await asyncio.wait_for(dev_reader.read(), 5) == b""
        assert await client.call(rpc("1")) == reply("1")
        # remembered: the next lease does not try a channel again
        modes2: List[str] = []
        client2 = await connect(held, modes=modes2)
        assert modes2 == [SHARED] and channels.opened == 1 and len(changes) == 1
        assert await client2.call(rpc("2")) == reply("2")
        client.close()
        client2.close()
        await asyncio.gather(client.task, client2.task)

    run(body)


def test_concurrent_leases_on_a_silent_device_fall_back_once() -> None:
    async def body() -> None:
        channels = FakeChannels(silent=True)
        held, _dev, changes = await ssh_device(channels, channel_hello_timeout=0.2)
        modes: List[str] = []
        clients = await asyncio.gather(*[connect(held, modes=modes) for _n in range(3)])
        assert modes == [SHARED] * 3 and len(changes) == 1
        replies = await asyncio.gather(*[c.call(rpc("1")) for c in clients])
        assert replies == [reply("1")] * 3
        for c in clients:
            c.close()
        await asyncio.gather(*[c.task for c in clients])

    run(body)


def test_a_refused_channel_falls_back_to_shared() -> None:
    async def body() -> None:
        channels = FakeChannels(refuse=True)
        held, _dev, changes = await ssh_device(channels)
        modes: List[str] = []
        client = await connect(held, modes=modes)
        assert modes == [SHARED] and held.mode == SHARED and changes[0][0] == SHARED
        assert "refused" in changes[0][1]
        assert await client.call(rpc("1")) == reply("1")
        client.close()
        await client.task

    run(body)


def test_remembered_shared_is_not_probed_again() -> None:
    async def body() -> None:
        channels = FakeChannels()
        held, _dev, changes = await ssh_device(channels, remembered=SHARED)
        assert held.mode == SHARED
        client = await connect(held)
        assert channels.opened == 0 and changes == []
        client.close()
        await client.task

    run(body)


def test_pinned_modes_are_honoured() -> None:
    async def body() -> None:
        # pinned shared: channels work, but are not used
        channels = FakeChannels()
        held, _dev, _changes = await ssh_device(channels, pinned=SHARED)
        client = await connect(held)
        assert held.mode == SHARED and channels.opened == 0
        client.close()
        await client.task

        # pinned channel overrides a remembered shared, and never falls back
        silent = FakeChannels(silent=True)
        held, _dev, changes = await ssh_device(silent, pinned=CHANNEL, remembered=SHARED, channel_hello_timeout=0.2)
        assert held.mode == CHANNEL
        with pytest.raises(LeaseError, match="pinned to session mode 'channel'.*no NETCONF hello"):
            await held.prepare()
        assert held.mode == CHANNEL and changes == [] and held.active_leases == 0
        refused = FakeChannels(refuse=True)
        held, _dev, changes = await ssh_device(refused, pinned=CHANNEL)
        with pytest.raises(LeaseError, match="pinned to session mode 'channel'.*refused"):
            await held.prepare()

        # TLS has no channels: shared whatever is pinned
        tls, _dev, _mux = await open_device()
        tls.configure(pinned=CHANNEL)
        assert tls.mode == SHARED
        with pytest.raises(ValueError):
            tls.configure(pinned="sometimes")

    run(body)


def test_a_prepared_lease_that_is_never_served_closes_its_channel() -> None:
    async def body() -> None:
        channels = FakeChannels()
        held, _dev, _changes = await ssh_device(channels)
        lease = await held.prepare()
        assert lease.mode == CHANNEL and held.active_leases == 1
        lease.release()
        lease.release()
        assert held.active_leases == 0
        dev_reader, _w = channels.ends[0]
        assert await asyncio.wait_for(dev_reader.read(), 5) == b""

    run(body)


# -- options ---------------------------------------------------------------------------------------


def test_session_options_load_validate_and_come_from_the_command_line(tmp_path: Path) -> None:
    cfg = ListenerConfig(home=str(tmp_path))
    assert cfg.channel_hello_timeout == 5.0 and cfg.session_modes == {}
    path = tmp_path / "listener.yml"
    path.write_text("home: %s\nchannel_hello_timeout: 2.5\nsession_modes:\n  r1: shared\n  r2: channel\n" % tmp_path)
    loaded = load_config(str(path), {"session_modes": {"r3": "auto"}})
    assert loaded.channel_hello_timeout == 2.5
    assert loaded.session_modes == {"r1": "shared", "r2": "channel", "r3": AUTO}
    with pytest.raises(ConfigError, match=r"session_modes\.r1: 'sometimes' is not a session mode"):
        load_config(None, {"home": str(tmp_path), "session_modes": {"r1": "sometimes"}})
    with pytest.raises(ConfigError, match="session_modes must be a mapping"):
        load_config(None, {"home": str(tmp_path), "session_modes": ["r1"]})
    with pytest.raises(ConfigError, match="channel_hello_timeout must be positive"):
        load_config(None, {"home": str(tmp_path), "channel_hello_timeout": 0})

    from netconf_callhome import cli

    args = cli._parser().parse_args(["serve", "--channel-hello-timeout", "1.5", "--session-mode", "r1=shared",
                                     "--session-mode", "r2=channel"])
    assert args.channel_hello_timeout == 1.5 and dict(args.session_modes) == {"r1": "shared", "r2": "channel"}
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["serve", "--session-mode", "r1=sometimes"])


# -- through the service and the control socket ------------------------------------------------------


def test_the_service_remembers_a_fallback_and_the_lease_answer_names_the_real_mode(tmp_path: Path) -> None:
    """A silent SSH device leased over the real control socket: the answer says 'shared', the
    registry remembers it, the device's next connection starts shared; two raw leases with
    ``listen: true`` (ncclient's connect_uds) then run at the same time."""
    from netconf_callhome.service import CallHomeListener

    async def body() -> None:
        cfg = load_config(None, {"home": str(tmp_path), "ssh_binds": [], "tls_binds": [], "channel_hello_timeout": 0.3})
        lst = CallHomeListener(cfg)
        await lst.control.start()
        try:
            channels = FakeChannels(silent=True)
            held = HeldSession(device="r1", transport="ssh", peer="192.0.2.1:40000", fingerprint="SHA256:x",
                               max_hello=1 << 16, max_message=1 << 20, open_channel=channels)
            dev = FakeDevice(held)
            held.attach(dev)
            held.data_received(hello(BASE_10, BASE_11) + EOM)
            await held.wait_hello()
            held.mode = CHANNEL
            lst.recorder.session_ready(held, started=time.monotonic(), auth="publickey")
            assert lst.registry.get("r1").session_mode == CHANNEL  # type: ignore[union-attr]

            info, stream = await control_lease(cfg.control_socket, {"device": "r1"})
            assert info["mode"] == SHARED
            assert lst.registry.get("r1").session_mode == SHARED  # type: ignore[union-attr]
            assert lst.metrics.registry.get_sample_value("callhome_leases_total", {"mode": "shared"}) == 1
            assert lst.metrics.registry.get_sample_value("callhome_leases_total", {"mode": "channel"}) is None
            client = Client(stream[0], stream[1], asyncio.ensure_future(asyncio.sleep(0)))
            await client.recv()
            await client.send(hello(BASE_10, BASE_11))
            client.framer.use_chunked()
            assert await client.call(rpc("1")) == reply("1")

            # two raw leases at once on the same one-session device
            raws = []
            for _n in range(2):
                info, _ctl = await control_lease(cfg.control_socket, {"device": "r1", "listen": True})
                assert info["mode"] == SHARED
                r, w = await asyncio.open_unix_connection(info["path"])
                raw = Client(r, w, asyncio.ensure_future(asyncio.sleep(0)))
                await raw.recv()
                await raw.send(hello(BASE_10, BASE_11))
                raw.framer.use_chunked()
                raws.append((raw, _ctl))
            dev.auto_reply = False
            for i, (raw, _ctl) in enumerate(raws):
                await raw.send(rpc("x", "<get>%d</get>" % i))
            await wait_for(lambda: len(dev.unanswered) == 2)  # both at the device at once
            while dev.unanswered:
                dev.answer_next()
            assert [await raw.recv() for raw, _ctl in raws] == [reply("x")] * 2
            assert held.active_leases == 3 and channels.opened == 1
            for raw, ctl in raws:
                raw.close()
                ctl[1].close()
            client.close()
            await wait_for(lambda: held.active_leases == 0)

            # the device calls again: its new session starts shared, no channel is tried
            held.close("replaced")
            channels2 = FakeChannels()
            held2 = HeldSession(device="r1", transport="ssh", peer="192.0.2.1:40001", fingerprint="SHA256:x",
                                max_hello=1 << 16, max_message=1 << 20, open_channel=channels2)
            held2.attach(FakeDevice(held2))
            held2.data_received(hello(BASE_10, BASE_11) + EOM)
            await held2.wait_hello()
            held2.mode = CHANNEL
            lst.recorder.session_ready(held2, started=time.monotonic(), auth="publickey")
            assert held2.mode == SHARED
            info, stream = await control_lease(cfg.control_socket, {"device": "r1"})
            assert info["mode"] == SHARED and channels2.opened == 0
            stream[1].close()
        finally:
            await lst.control.stop()
            for h in list(lst.devices.sessions.values()):
                h.close("test over")
            lst.registry.close()

    run(body)


def test_a_pinned_channel_that_stays_silent_fails_the_lease_clearly(tmp_path: Path) -> None:
    from netconf_callhome.service import CallHomeListener

    async def body() -> None:
        cfg = load_config(None, {"home": str(tmp_path), "ssh_binds": [], "tls_binds": [],
                                 "channel_hello_timeout": 0.2, "session_modes": {"r1": "channel"}})
        lst = CallHomeListener(cfg)
        await lst.control.start()
        try:
            held = HeldSession(device="r1", transport="ssh", peer="192.0.2.1:40000", fingerprint="SHA256:x",
                               max_hello=1 << 16, max_message=1 << 20, open_channel=FakeChannels(silent=True))
            held.attach(FakeDevice(held))
            held.data_received(hello(BASE_10, BASE_11) + EOM)
            await held.wait_hello()
            held.mode = CHANNEL
            lst.recorder.session_ready(held, started=time.monotonic(), auth="publickey")
            r, w = await asyncio.open_unix_connection(cfg.control_socket)
            w.write(json.dumps({"op": "lease", "device": "r1"}).encode() + b"\n")
            answer = json.loads(await asyncio.wait_for(r.readline(), 5))
            assert answer["ok"] is False
            assert "pinned to session mode 'channel'" in answer["error"]["message"]
            assert held.active_leases == 0 and held.mode == CHANNEL
            w.close()
        finally:
            await lst.control.stop()
            held.close("test over")
            lst.registry.close()

    run(body)


async def control_lease(path: str, request: Dict[str, Any]) -> Tuple[Dict[str, Any], Tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    r, w = await asyncio.open_unix_connection(path)
    w.write(json.dumps(dict(request, op="lease")).encode() + b"\n")
    answer = json.loads(await asyncio.wait_for(r.readline(), 5))
    assert answer["ok"], answer
    return answer["result"], (r, w)


def test_an_in_process_lease_hands_out_a_plain_socket() -> None:
    """The interface for an in-process client (the persistent-connection endpoint)."""
    from netconf_callhome.sessions.local import open_local_lease

    async def body() -> None:
        held, _dev, mux = await open_device()
        leases = [await open_local_lease(held) for _n in range(2)]
        assert [lease.mode for lease in leases] == [SHARED, SHARED] and held.active_leases == 2

        def blocking_client(sock: socket.socket, mid: str) -> bytes:
            framer = Framer(1 << 20)
            buf: List[bytes] = []
            while not buf:
                buf += framer.feed(sock.recv(65536))  # the device's hello
            sock.sendall(hello(BASE_10, BASE_11) + EOM)
            framer.use_chunked()
            sock.sendall(framer.encode(rpc(mid)))
            out: List[bytes] = []
            while not out:
                out += framer.feed(sock.recv(65536))
            return out[0]

        loop = asyncio.get_running_loop()
        answers = await asyncio.gather(*[loop.run_in_executor(None, blocking_client, lease.sock, "9") for lease in leases])
        assert answers == [reply("9")] * 2
        for lease in leases:
            lease.close()
        assert [await lease.done for lease in leases] == ["client closed the lease"] * 2
        assert held.active_leases == 0 and mux.clients == 0

    run(body)


# -- liveness (issue 10, defect 10) ------------------------------------------------------------------


def test_a_device_that_stops_answering_is_closed_within_interval_plus_timeout() -> None:
    """Before: a hung TLS device (SIGSTOP) stayed 'connected' and the next task waited 30 s."""

    async def scenario() -> None:
        held, dev, mux = await open_device(auto_reply=False)
        dead: List[str] = []
        started = time.monotonic()
        watcher = asyncio.ensure_future(mux.watch_liveness(0.3, 0.3, dead.append))
        reason = await asyncio.wait_for(asyncio.shield(held.closed), 3)
        took = time.monotonic() - started
        await watcher
        assert 0.5 <= took <= 1.5, took  # interval + timeout, and not much later
        assert "liveness check" in reason and dead == [reason]
        assert dev.closed
        assert dev.ops() == ["get-config"] and b"liveness-check" in dev.received[0]

    run(scenario)


def test_an_answering_device_stays_and_clients_never_see_the_probes() -> None:
    async def scenario() -> None:
        held, dev, mux = await open_device()
        watcher = asyncio.ensure_future(mux.watch_liveness(0.1, 0.5))
        client = await connect(held)
        await wait_for(lambda: dev.ops().count("get-config") >= 3, 5)  # probes went and were answered
        assert held.is_open
        # a client using message-id "1" (as the listener's own first probe did) gets its own reply
        answer = await client.call(rpc("1", "<get><filter/></get>"))
        assert ids(answer) == "1" and b"<data/>" in answer
        await wait_for(lambda: dev.ops().count("get-config") >= 5, 5)
        assert client.inbox == []  # no probe reply leaked to the client
        sent_ids = [ids(m) for m in dev.received]
        assert len(sent_ids) == len(set(sent_ids))  # probes and client RPCs never share an id
        client.close()
        held.close("test over")
        await watcher

    run(scenario)


def test_a_device_busy_with_a_slow_reply_is_not_declared_dead() -> None:
    """Any byte from the device proves it alive: the probe waits behind a client's slow RPC."""

    async def scenario() -> None:
        held, dev, mux = await open_device(auto_reply=False)
        watcher = asyncio.ensure_future(mux.watch_liveness(0.2, 0.3))
        for _i in range(10):  # 1 s of a device that streams something every 0.1 s
            await asyncio.sleep(0.1)
            dev.send(b'<notification xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0"/>')
        assert held.is_open
        # then it goes silent: closed
        await asyncio.wait_for(asyncio.shield(held.closed), 3)
        await watcher

    run(scenario)

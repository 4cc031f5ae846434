# SPDX-License-Identifier: GPL-3.0-or-later
"""The node-to-node channel's connection pool (control.cluster) and the forwarder's remembered
owners (control.forward), in process over real mutual TLS (trustme): reuse, the per-peer bound,
a broken or closed connection replaced, a peer that is gone, the server's bounds on kept
connections, and a remembered owner that no longer holds the device."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

import pytest

from netconf_callhome.config import ClusterOptions
from netconf_callhome.control import cluster as cluster_mod
from netconf_callhome.control.cluster import ClusterClient, ClusterServer, _Pooled
from netconf_callhome.control.forward import Forwarder
from netconf_callhome.errors import ControlError, NodeUnreachableError
from netconf_callhome.state.cluster_nodes import Holder

pytestmark = pytest.mark.timeout(60)


class _Owner:
    """A dispatch like the control server's: answers, then closes its writer (which, on a kept
    connection, ends only that request). Records which connection served each request."""

    def __init__(self) -> None:
        self.seen: List[Tuple[str, Dict[str, Any], int]] = []
        self.release: Optional[asyncio.Event] = None  # set: requests wait for it (concurrency)
        self.abort_after: bool = False  # answer, then abort the connection (a broken one)

    async def __call__(self, reader: Any, writer: Any, op: str, request: Dict[str, Any], peer: str) -> None:
        self.seen.append((op, dict(request), id(writer.transport)))
        if self.release is not None:
            await self.release.wait()
        if op == "rpc":
            body = await reader.readexactly(request["size"])
            writer.write(json.dumps({"ok": True, "result": {"size": len(body) + 1}}).encode() + b"\n" + body + b"!")
        else:
            writer.write(json.dumps({"ok": True, "result": {"op": op, "peer": peer, "device": request.get("device")}}).encode() + b"\n")
        await writer.drain()
        if self.abort_after:
            writer.transport.abort()
        writer.close()

    def connections(self) -> int:
        return len({conn for _op, _request, conn in self.seen})


async def _server(options: ClusterOptions, dispatch: Any, **kwargs: Any) -> Tuple[ClusterServer, str]:
    server = ClusterServer(options, dispatch, **kwargs)
    return server, await server.start()


@contextlib.asynccontextmanager
async def _pair(
    server_options: ClusterOptions, dispatch: Any, client_options: ClusterOptions, **kwargs: Any
) -> AsyncIterator[Tuple[ClusterServer, str, ClusterClient]]:
    """A node's cluster server (``kwargs``: ClusterServer's) and another node's client of it,
    both closed at the end."""
    server, address = await _server(server_options, dispatch, **kwargs)
    client = ClusterClient(client_options)
    try:
        yield server, address, client
    finally:
        client.close()
        await server.stop()


async def _poll(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met within %g s" % timeout
        await asyncio.sleep(0.01)


def test_connections_are_reused_for_calls_and_rpcs(pki: Any) -> None:
    owner = _Owner()

    async def main() -> None:
        async with _pair(pki.options("node-b"), owner, pki.options("node-a")) as (server, address, client):
            for i in range(5):
                assert (await client.call("node-b", address, "wait", {"device": "r%d" % i}, timeout=5))["device"] == "r%d" % i
                assert await client.rpc("node-b", address, "ep", b"x" * (i + 1), timeout=5) == b"x" * (i + 1) + b"!"
            assert client.dialled == 1 and client.reused == 9
            assert owner.connections() == 1 and len(owner.seen) == 10
            # the pool's own words never reach the control server
            assert all("keep" not in request and "only_if_held" not in request for _op, request, _c in owner.seen)
            assert client.idle("node-b") == 1
            # a peer vanishing without a FIN is noticed: keepalive, unacknowledged data bounded
            sock = client._idle[("node-b", address)][0].writer.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10000

    asyncio.run(main())


def test_the_pool_is_bounded_per_peer_and_never_makes_a_request_wait(pki: Any) -> None:
    owner = _Owner()

    async def main() -> None:
        owner.release = asyncio.Event()
        async with _pair(pki.options("node-b"), owner, pki.options("node-a", pool_size=2)) as (server, address, client):
            calls = [asyncio.ensure_future(client.call("node-b", address, "wait", {"device": "r%d" % i}, timeout=5))
                     for i in range(5)]
            await _poll(lambda: len(owner.seen) == 5)  # five at once: five connections, nobody queued
            owner.release.set()
            await asyncio.gather(*calls)
            assert client.dialled == 5 and client.idle("node-b") == 2
            # the three beyond the bound were closed: the server sees them go
            await _poll(lambda: len(server._kept) == 2)
            owner.release = None
            await client.call("node-b", address, "wait", {"device": "again"}, timeout=5)
            assert client.dialled == 5 and client.reused == 1

    asyncio.run(main())


def test_a_pool_size_of_zero_dials_every_request(pki: Any) -> None:
    owner = _Owner()

    async def main() -> None:
        async with _pair(pki.options("node-b"), owner, pki.options("node-a", pool_size=0)) as (server, address, client):
            for _unused in range(3):
                await client.call("node-b", address, "wait", {"device": "r1"}, timeout=5)
            assert client.dialled == 3 and client.idle("node-b") == 0 and owner.connections() == 3

    asyncio.run(main())


def test_a_broken_connection_is_replaced(pki: Any, monkeypatch: Any) -> None:
    owner = _Owner()

    async def main() -> None:
        async with _pair(pki.options("node-b"), owner, pki.options("node-a")) as (server, address, client):
            # the owner answers, then the connection breaks: the pool sees it closed, dials anew
            owner.abort_after = True
            await client.call("node-b", address, "wait", {"device": "r1"}, timeout=5)
            owner.abort_after = False
            await _poll(lambda: all(c.reader.at_eof() for conns in client._idle.values() for c in conns))
            assert (await client.call("node-b", address, "wait", {"device": "r2"}, timeout=5))["device"] == "r2"
            assert client.dialled == 2 and client.reused == 0
            # closed while it looked usable (the peer closed it just as it was taken): the request
            # goes once more, on a new connection, and succeeds
            monkeypatch.setattr(_Pooled, "usable", lambda self, now, idle: True)
            for conns in client._idle.values():
                for conn in conns:
                    conn.writer.transport.abort()  # our side gone: the write or the read fails
                    conn.reader.feed_eof()
            assert (await client.call("node-b", address, "wait", {"device": "r3"}, timeout=5))["device"] == "r3"
            assert client.dialled == 3
            assert [request["device"] for _op, request, _c in owner.seen] == ["r1", "r2", "r3"]  # none twice

    asyncio.run(main())


def test_a_peer_that_is_gone_leaves_no_connection_in_the_pool(pki: Any) -> None:
    owner = _Owner()

    async def main() -> None:
        server, address = await _server(pki.options("node-b"), owner)
        client = ClusterClient(pki.options("node-a", pool_size=4))
        try:
            await asyncio.gather(*(client.call("node-b", address, "wait", {"device": "r%d" % i}, timeout=5)
                                   for i in range(3)))
            assert client.idle("node-b") >= 1
            await server.stop()  # the node dies: its listening socket and kept connections go
            with pytest.raises(NodeUnreachableError, match="node node-b at %s" % address):
                await client.call("node-b", address, "wait", {"device": "r1"}, timeout=5)
            assert client.idle("node-b") == 0
            # it comes back elsewhere (a restart on another port): the next request succeeds there
            server2, address2 = await _server(pki.options("node-b"), owner)
            try:
                assert (await client.call("node-b", address2, "wait", {"device": "r9"}, timeout=5))["device"] == "r9"
                assert client.idle("node-b") == 1
            finally:
                await server2.stop()
        finally:
            client.close()

    asyncio.run(main())


def test_idle_connections_are_closed_on_both_sides(pki: Any) -> None:
    owner = _Owner()

    async def main() -> None:
        async with _pair(pki.options("node-b", pool_idle=0.2), owner, pki.options("node-a", pool_idle=0.2)) as (server, address, client):
            await client.call("node-b", address, "wait", {"device": "r1"}, timeout=5)
            assert client.idle("node-b") == 1 and len(server._kept) == 1
            await _poll(lambda: client.idle("node-b") == 0)  # the client's reaper: pool_idle
            await _poll(lambda: not server._kept)  # the client closed it: the server lets it go
            # a peer that keeps a connection past 2 x pool_idle finds it closed by the server
            client2 = ClusterClient(pki.options("node-a", pool_idle=60))
            try:
                await client2.call("node-b", address, "wait", {"device": "r2"}, timeout=5)
                conn = client2._idle[("node-b", address)][0]
                await _poll(conn.reader.at_eof)
                assert server.kept_idle == pytest.approx(0.4)
                await client2.call("node-b", address, "wait", {"device": "r3"}, timeout=5)
                assert client2.dialled == 2
            finally:
                client2.close()

    asyncio.run(main())


async def _kept_connection(address: str, options: ClusterOptions) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await ClusterClient(options).open("node-b", address)
    writer.write(json.dumps({"op": "wait", "device": "r1", "keep": True}).encode() + b"\n")
    line = await reader.readline()
    assert json.loads(line)["ok"] is True
    return reader, writer


def test_a_kept_connection_keeps_the_bounds_of_the_channel(pki: Any, caplog: Any, monkeypatch: Any) -> None:
    """The next request line on a kept connection is bounded like the first (max_request_bytes,
    one JSON object with an op); the kept connections waiting at once are bounded too."""
    owner = _Owner()
    caplog.set_level(logging.WARNING, logger="netconf_callhome.cluster")

    async def main() -> None:
        server, address = await _server(pki.options("node-b", max_request_bytes=1024), owner)
        options = pki.options("node-a")
        try:
            reader, writer = await _kept_connection(address, options)
            writer.write(b'{"op": "wait", "device": "' + b"x" * 4096 + b'"}\n')
            assert await reader.read() == b""  # closed, unanswered
            assert "reason=request_too_long" in caplog.text
            reader, writer = await _kept_connection(address, options)
            writer.write(b"not json\n")
            assert await reader.read() == b""
            assert "reason=bad_request" in caplog.text
            # no more than _KEPT_MAX kept connections wait at once: one more is closed once answered
            monkeypatch.setattr(cluster_mod, "_KEPT_MAX", 1)
            first = await _kept_connection(address, options)
            second = await _kept_connection(address, options)
            assert await second[0].read() == b""
            assert not first[0].at_eof() and len(server._kept) == 1
            first[1].close()
        finally:
            await server.stop()

    asyncio.run(main())


def test_an_owner_answers_not_held_to_a_remembered_route(pki: Any) -> None:
    owner = _Owner()
    held = {"r1"}

    async def main() -> None:
        async with _pair(pki.options("node-b"), owner, pki.options("node-a"), holds=lambda d: d in held) as (server, address, client):
            assert (await client.call("node-b", address, "wait", {"device": "r1", "only_if_held": True}, timeout=5))
            with pytest.raises(ControlError, match="device r2 holds no session on this node now") as info:
                await client.call("node-b", address, "endpoint", {"device": "r2", "only_if_held": True}, timeout=5)
            assert info.value.details["reason"] == "not-held"
            # not dispatched, and the connection is still the pool's
            assert [request["device"] for _op, request, _c in owner.seen] == ["r1"]
            assert client.dialled == 1 and client.idle("node-b") == 1
            # without only_if_held the owner serves it as before (its own wait for the device)
            assert (await client.call("node-b", address, "wait", {"device": "r2"}, timeout=5))["device"] == "r2"

    asyncio.run(main())


def test_the_forwarder_remembers_owners_and_follows_a_device_that_moved(pki: Any, tmp_path: Path) -> None:
    """One database lookup for many requests; a remembered owner that answers "not held here" is
    forgotten, the database asked again and the request served by the fresh owner; an owner that
    does not answer is forgotten with its connections."""
    owner_b, owner_c = _Owner(), _Owner()
    on_b = {"r1"}
    on_c: set = set()

    async def main() -> None:
        server_b, address_b = await _server(pki.options("node-b"), owner_b, holds=lambda d: d in on_b)
        server_c, address_c = await _server(pki.options("node-c"), owner_c, holds=lambda d: d in on_c)

        class Directory:
            node = "node-a"
            lookups = 0

            async def holder(self, device: str) -> Optional[Holder]:
                Directory.lookups += 1
                if device in on_b:
                    return Holder(device, "node-b", address_b, 1, 0.1)
                if device in on_c:
                    return Holder(device, "node-c", address_c, 2, 0.1)
                return None

        client = ClusterClient(pki.options("node-a"))
        forwarder = Forwarder(Directory(), client, held_here=lambda d: False, rpc_dir=str(tmp_path / "rpc"))  # type: ignore[arg-type]
        try:
            for _unused in range(5):
                answer = await forwarder.serve("wait", {"device": "r1", "wait": 1}, None, None)  # type: ignore[arg-type]
                assert answer is not None and answer["result"]["node"] == "node-b"
            assert Directory.lookups == 1 and client.dialled == 1
            # r1 moves to node-c: node-b says "not held here", the database names node-c
            on_b.discard("r1")
            on_c.add("r1")
            answer = await forwarder.serve("wait", {"device": "r1", "wait": 1}, None, None)  # type: ignore[arg-type]
            assert answer is not None and answer["result"]["node"] == "node-c"
            assert Directory.lookups == 2 and len(owner_b.seen) == 5 and len(owner_c.seen) == 1
            # r1 gone from everywhere: node-c says so, the database knows nobody: served here
            on_c.discard("r1")
            request = {"device": "r1", "wait": 0}
            assert await forwarder.serve("wait", request, None, None) is None  # type: ignore[arg-type]
            assert Directory.lookups == 3 and len(owner_c.seen) == 1
            # back on node-c, which then dies: forgotten with its pooled connections
            on_c.add("r1")
            await forwarder.serve("wait", {"device": "r1", "wait": 0}, None, None)  # type: ignore[arg-type]
            assert client.idle("node-c") == 1
            await server_c.stop()
            with pytest.raises(NodeUnreachableError, match="device r1 is held by node-c at %s, which does not answer" % address_c):
                await forwarder.serve("wait", {"device": "r1", "wait": 0}, None, None)  # type: ignore[arg-type]
            assert client.idle("node-c") == 0 and "r1" not in forwarder._owners
        finally:
            forwarder.close()
            await server_b.stop()
            await server_c.stop()

    asyncio.run(main())


def test_a_lagging_database_row_never_routes_a_request_to_a_node_without_the_device(pki: Any, tmp_path: Path) -> None:
    """The database still names node-b, which holds no session with the device: node-b answers
    "not held here" (it never waits for the device itself); the forwarder polls the database
    while the client's wait lasts and follows it to node-c once the row moves; with no wait left
    the request is served here."""
    owner_b, owner_c = _Owner(), _Owner()
    on_c: set = set()
    row = {"r1": "node-b"}

    async def main() -> None:
        server_b, address_b = await _server(pki.options("node-b"), owner_b, holds=lambda d: False)
        server_c, address_c = await _server(pki.options("node-c"), owner_c, holds=lambda d: d in on_c)
        addresses = {"node-b": address_b, "node-c": address_c}

        class Directory:
            node = "node-a"

            async def holder(self, device: str) -> Optional[Holder]:
                node = row.get(device)
                return Holder(device, node, addresses[node], 1, 0.1) if node else None

            async def holders(self, devices: List[str]) -> Dict[str, Holder]:
                found = {d: await self.holder(d) for d in devices}
                return {d: h for d, h in found.items() if h is not None}

        client = ClusterClient(pki.options("node-a"))
        forwarder = Forwarder(Directory(), client, held_here=lambda d: False, rpc_dir=str(tmp_path / "rpc"))  # type: ignore[arg-type]
        try:
            request: Dict[str, Any] = {"device": "r1", "wait": 0}
            assert await forwarder.serve("wait", request, None, None) is None  # type: ignore[arg-type]
            assert owner_b.seen == []  # refused before the control server, never served there

            async def move() -> None:
                await asyncio.sleep(0.5)
                on_c.add("r1")
                row["r1"] = "node-c"

            mover = asyncio.ensure_future(move())
            answer = await forwarder.serve("wait", {"device": "r1", "wait": 5}, None, None)  # type: ignore[arg-type]
            await mover
            assert answer is not None and answer["result"]["node"] == "node-c" and owner_b.seen == []
        finally:
            forwarder.close()
            await server_b.stop()
            await server_c.stop()

    asyncio.run(main())


def test_a_node_whose_heartbeat_is_stale_is_neither_remembered_nor_reused(pki: Any, tmp_path: Path) -> None:
    """A node that stopped refreshing its heartbeat may have left the cluster: every request asks
    the database again and dials it anew (a dead one then fails within connect_timeout instead
    of a request waiting on a kept connection nobody answers)."""
    owner = _Owner()
    age = {"value": 60.0}

    async def main() -> None:
        server, address = await _server(pki.options("node-b"), owner, holds=lambda d: True)

        class Directory:
            node = "node-a"
            lookups = 0

            async def holder(self, device: str) -> Optional[Holder]:
                Directory.lookups += 1
                return Holder(device, "node-b", address, 1, age["value"])

        client = ClusterClient(pki.options("node-a"))
        forwarder = Forwarder(Directory(), client, held_here=lambda d: False, rpc_dir=str(tmp_path / "rpc"))  # type: ignore[arg-type]
        try:
            for _unused in range(3):
                assert await forwarder.serve("wait", {"device": "r1", "wait": 1}, None, None)  # type: ignore[arg-type]
            assert Directory.lookups == 3 and client.dialled == 3 and client.reused == 0
            age["value"] = 1.0  # heartbeats again: remembered, its connection reused
            for _unused in range(3):
                assert await forwarder.serve("wait", {"device": "r1", "wait": 1}, None, None)  # type: ignore[arg-type]
            assert Directory.lookups == 4 and client.dialled == 3 and client.reused == 3
        finally:
            forwarder.close()
            await server.stop()

    asyncio.run(main())

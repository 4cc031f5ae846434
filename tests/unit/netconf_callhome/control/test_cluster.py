# SPDX-License-Identifier: GPL-3.0-or-later
"""The node-to-node channel (control.cluster) and the forwarding (control.forward), in process:
mutual TLS with a cluster CA (trustme), the bounds on peers not verified yet, a proxy endpoint's
JSON-RPC round trip, and the error that names an owner which does not answer."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import trustme

from netconf_callhome.config import ClusterOptions, ListenerConfig
from netconf_callhome.control.cluster import ClusterClient, ClusterServer
from netconf_callhome.control.forward import Forwarder, parse_proxy_id, proxy_id
from netconf_callhome.errors import ConfigError, NodeUnreachableError
from netconf_callhome.state.cluster_nodes import Holder

pytestmark = pytest.mark.timeout(60)


class _Recorder:
    """A dispatch that answers every request with what it got and who sent it."""

    def __init__(self) -> None:
        self.seen: List[Tuple[str, Dict[str, Any], str]] = []

    async def __call__(self, reader: Any, writer: Any, op: str, request: Dict[str, Any], peer: str) -> None:
        self.seen.append((op, request, peer))
        writer.write(json.dumps({"ok": True, "result": {"op": op, "peer": peer, "request": request}}).encode() + b"\n")
        await writer.drain()
        writer.close()


async def _server(options: ClusterOptions, dispatch: Any) -> Tuple[ClusterServer, str]:
    server = ClusterServer(options, dispatch)
    return server, await server.start()


def test_a_member_is_served_and_named_by_its_certificate(pki: Any) -> None:

    async def main() -> None:
        recorder = _Recorder()
        server, address = await _server(pki.options("node-a"), recorder)
        try:
            client = ClusterClient(pki.options("node-b"))
            result = await client.call("node-a", address, "wait", {"device": "r1", "wait": 1.5}, timeout=5)
            assert result == {"op": "wait", "peer": "node-b", "request": {"device": "r1", "wait": 1.5}}
            assert recorder.seen == [("wait", {"device": "r1", "wait": 1.5}, "node-b")]
        finally:
            await server.stop()

    asyncio.run(main())


def _raw_attempt(address: str, ctx: ssl.SSLContext, line: bytes = b'{"op": "devices"}\n') -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(line)
                return tls.recv(65536)
        except (ssl.SSLError, ConnectionError):
            return b""


def _in_thread(func: Any, *args: Any) -> "asyncio.Future[Any]":
    return asyncio.get_running_loop().run_in_executor(None, func, *args)


def test_peers_without_a_certificate_of_the_cluster_ca_are_refused(pki: Any, tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="netconf_callhome.cluster")

    async def main() -> None:
        recorder = _Recorder()
        options = pki.options("node-a")
        server, address = await _server(options, recorder)
        try:
            anonymous = ssl.create_default_context(cafile=options.ca)
            anonymous.check_hostname = False
            assert await _in_thread(_raw_attempt, address, anonymous) == b""
            other = trustme.CA().issue_cert("node-x", "127.0.0.1")
            other_cert, other_key = tmp_path / "x.pem", tmp_path / "x.key"
            other.cert_chain_pems[0].write_to_path(str(other_cert))
            other.private_key_pem.write_to_path(str(other_key))
            stranger = ssl.create_default_context(cafile=options.ca)
            stranger.check_hostname = False
            stranger.load_cert_chain(str(other_cert), str(other_key))
            assert await _in_thread(_raw_attempt, address, stranger) == b""
            assert recorder.seen == []
            # the server's certificate is checked by the client side as well
            foreign = ClusterClient(pki.options("node-f", ca=trustme.CA()))
            with pytest.raises(NodeUnreachableError):
                await foreign.call("node-a", address, "devices", {}, timeout=5)
            assert recorder.seen == []
        finally:
            await server.stop()

    asyncio.run(main())
    assert "event=cluster.peer_refused" in caplog.text and "reason=certificate" in caplog.text


def test_a_silent_peer_is_closed_at_auth_timeout_and_strangers_are_bounded(pki: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="netconf_callhome.cluster")

    async def main() -> None:
        options = pki.options("node-a", auth_timeout=0.5, max_unauthenticated=2)
        server, address = await _server(options, _Recorder())
        host, port = address.rsplit(":", 1)
        try:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection(host, int(port))
            assert await asyncio.wait_for(reader.read(1), 5) == b""
            assert time.monotonic() - started < 2.0
            writer.close()
            # three silent peers, room for two: the oldest is closed at once
            conns = [await asyncio.open_connection(host, int(port)) for _unused in range(3)]
            first = conns[0][0]
            assert await asyncio.wait_for(first.read(1), 0.4) == b""
            for _r, w in conns:
                w.close()
        finally:
            await server.stop()

    asyncio.run(main())
    assert "reason=auth_timeout" in caplog.text
    assert "reason=unauthenticated_limit" in caplog.text


def test_a_request_line_over_the_bound_is_refused(pki: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="netconf_callhome.cluster")

    async def main() -> None:
        recorder = _Recorder()
        options = pki.options("node-a", max_request_bytes=1024)
        server, address = await _server(options, recorder)
        try:
            member = ssl.create_default_context(cafile=options.ca)
            member.check_hostname = False
            peer = pki.options("node-b")
            member.load_cert_chain(peer.cert, peer.key)
            line = b'{"op": "devices", "pad": "' + b"x" * 4096 + b'"}\n'
            assert await _in_thread(_raw_attempt, address, member, line) == b""
            assert recorder.seen == []
        finally:
            await server.stop()

    asyncio.run(main())
    assert "reason=request_too_long" in caplog.text


def test_an_owner_that_does_not_answer_is_named(pki: Any, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    address = "127.0.0.1:%d" % port

    class Directory:
        node = "node-a"

        async def holder(self, device: str) -> Optional[Holder]:
            return Holder(device, "node-b", address, 3, 42.0)

    async def main() -> None:
        forwarder = Forwarder(
            Directory(), ClusterClient(pki.options("node-a")),  # type: ignore[arg-type]
            held_here=lambda device: False, rpc_dir=str(tmp_path / "rpc"),
        )
        with pytest.raises(NodeUnreachableError) as info:
            await forwarder.serve("wait", {"device": "r1", "wait": 0.5}, None, None)  # type: ignore[arg-type]
        message = str(info.value)
        assert message.startswith("device r1 is held by node-b at %s, which does not answer (no heartbeat for 42 s): " % address), message
        assert info.value.details["node"] == "node-b"

    asyncio.run(main())


def test_a_proxy_endpoint_carries_json_rpc_to_the_owner(pki: Any, tmp_path: Path) -> None:
    """endpoint on node-a for a device node-b holds: node-a's answer names a socket of its own;
    a module's send_data frame there reaches node-b's endpoint through rpc, and back."""

    async def owner(reader: Any, writer: Any, op: str, request: Dict[str, Any], peer: str) -> None:
        if op == "endpoint":
            answer: Dict[str, Any] = {"ok": True, "result": {"id": "ep-b", "socket_path": "/owner/only.sock",
                                                             "device": request["device"]}}
            writer.write(json.dumps(answer).encode() + b"\n")
        elif op == "rpc":
            body = await reader.readexactly(request["size"])
            response = json.dumps({"jsonrpc": "2.0", "id": json.loads(body)["id"], "result": "from " + request["endpoint"]})
            writer.write(json.dumps({"ok": True, "result": {"size": len(response)}}).encode() + b"\n" + response.encode())
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, address = await _server(pki.options("node-b"), owner)

        class Directory:
            node = "node-a"

            async def holder(self, device: str) -> Optional[Holder]:
                return Holder(device, "node-b", address, 1, 0.5)

        forwarder = Forwarder(
            Directory(), ClusterClient(pki.options("node-a")),  # type: ignore[arg-type]
            held_here=lambda device: False, rpc_dir=str(tmp_path / "rpc"),
        )
        try:
            answer = await forwarder.serve("endpoint", {"device": "r1", "wait": 0}, None, None)  # type: ignore[arg-type]
            assert answer is not None
            result = answer["result"]
            assert result["node"] == "node-b" and result["forwarded"] is True
            path = result["socket_path"]
            assert path.startswith(str(tmp_path / "rpc")) and os.stat(path).st_mode & 0o777 == 0o600
            reader, writer = await asyncio.open_unix_connection(path)
            request = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "get"}).encode()
            writer.write(struct.pack("!Q", len(request)) + request)
            (size,) = struct.unpack("!Q", await reader.readexactly(8))
            assert json.loads(await reader.readexactly(size)) == {"jsonrpc": "2.0", "id": 7, "result": "from ep-b"}
            writer.close()
            # the same endpoint asked again is the same proxy
            again = await forwarder.serve("endpoint", {"device": "r1"}, None, None)  # type: ignore[arg-type]
            assert again is not None and again["result"]["id"] == result["id"]
            # the owner gone: the module's request gets a JSON-RPC error that names it
            await server.stop()
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(struct.pack("!Q", len(request)) + request)
            (size,) = struct.unpack("!Q", await reader.readexactly(8))
            error = json.loads(await reader.readexactly(size))["error"]["message"]
            assert error.startswith("device r1 is held by node-b at %s, which does not answer: " % address), error
            writer.close()
        finally:
            forwarder.close()
            await server.stop()
        assert not os.path.exists(path)

    asyncio.run(main())


def test_a_proxy_id_routes_an_rpc_from_any_node(pki: Any, tmp_path: Path) -> None:
    """A relay behind a balancer may send its rpc to another node than the one that answered
    endpoint: the proxy id names the owner, so node-c forwards it too, and the owner serves its own
    endpoint id when the rpc reaches it directly."""
    assert parse_proxy_id(proxy_id("node-b.example", "0123abcd")) == ("node-b.example", "0123abcd")
    assert parse_proxy_id("0123abcd") is None and parse_proxy_id("fwd-zz-1") is None

    async def owner(reader: Any, writer: Any, op: str, request: Dict[str, Any], peer: str) -> None:
        body = await reader.readexactly(request["size"])
        response = json.dumps({"id": json.loads(body)["id"], "result": request["endpoint"]}).encode()
        writer.write(json.dumps({"ok": True, "result": {"size": len(response)}}).encode() + b"\n" + response)
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, address = await _server(pki.options("node-b"), owner)

        class Directory:
            node = "node-c"

            async def address(self, node: str) -> str:
                return address if node == "node-b" else ""

        forwarder = Forwarder(
            Directory(), ClusterClient(pki.options("node-c")),  # type: ignore[arg-type]
            held_here=lambda device: False, rpc_dir=str(tmp_path / "rpc"),
        )
        try:
            body = json.dumps({"id": 3, "method": "get"}).encode()
            reader = asyncio.StreamReader()
            reader.feed_data(body)
            reader.feed_eof()
            sent: List[bytes] = []

            class Writer:
                def write(self, data: bytes) -> None:
                    sent.append(data)

                async def drain(self) -> None:
                    return None

            request = {"endpoint": proxy_id("node-b", "ep-b"), "size": len(body)}
            assert await forwarder.serve("rpc", request, reader, Writer()) == {}  # type: ignore[arg-type]
            line, _sep, payload = b"".join(sent).partition(b"\n")
            assert json.loads(line)["ok"] is True and json.loads(payload) == {"id": 3, "result": "ep-b"}
            # an id naming this node itself: served here under the owner's own id
            mine = {"endpoint": proxy_id("node-c", "ep-c"), "size": 1}
            assert await forwarder.serve("rpc", mine, None, None) is None  # type: ignore[arg-type]
            assert mine["endpoint"] == "ep-c"
            with pytest.raises(NodeUnreachableError, match="no node-to-node address"):
                await forwarder.serve("rpc", {"endpoint": proxy_id("node-z", "e"), "size": 1}, None, None)  # type: ignore[arg-type]
        finally:
            forwarder.close()
            await server.stop()

    asyncio.run(main())


def test_served_here_when_nobody_else_holds_the_device(pki: Any, tmp_path: Path) -> None:
    class Directory:
        node = "node-a"

        lookups = 0
        batched: List[List[str]] = []

        async def holder(self, device: str) -> Optional[Holder]:
            Directory.lookups += 1
            return Holder(device, "node-a", "127.0.0.1:1", 1, 0.0)  # this node's own (stale) row

        async def holders(self, devices: List[str]) -> Dict[str, Holder]:
            Directory.batched.append(devices)
            return {d: Holder(d, "node-a", "127.0.0.1:1", 1, 0.0) for d in devices}

    async def main() -> None:
        forwarder = Forwarder(
            Directory(), ClusterClient(pki.options("node-a", ca=trustme.CA())),  # type: ignore[arg-type]
            held_here=lambda device: False, rpc_dir=str(tmp_path / "rpc"),
        )
        request = {"device": "r1", "wait": 0.3}
        started = time.monotonic()
        assert await forwarder.serve("wait", request, None, None) is None  # type: ignore[arg-type]
        # the wait was spent looking: the local handler gets what is left (nothing)
        assert time.monotonic() - started >= 0.3 and request["wait"] == 0.0
        # twenty clients waiting at once: one direct lookup each, then one batched query per 0.2 s
        Directory.lookups, Directory.batched[:] = 0, []
        requests = [{"device": "w%02d" % i, "wait": 0.5} for i in range(20)]
        results = await asyncio.gather(*(forwarder.serve("wait", r, None, None) for r in requests))  # type: ignore[arg-type]
        assert results == [None] * 20 and Directory.lookups == 20
        assert 1 <= len(Directory.batched) <= 3 and len(Directory.batched[0]) == 20, Directory.batched
        assert await forwarder.serve("rpc", {"endpoint": "local-id", "size": 3}, None, None) is None  # type: ignore[arg-type]

    asyncio.run(main())


@pytest.mark.parametrize(
    "cluster, state_url, message",
    [
        ({"bind": "127.0.0.1:4340"}, "postgresql://u@h/db", "cluster needs cert, key and ca"),
        ({"bind": "127.0.0.1:4340", "cert": "c", "key": "k", "ca": "a"}, "", "cluster needs state_url on PostgreSQL"),
        ({"auth_timeout": 0}, "", "cluster.auth_timeout"),
        ({"max_request_bytes": 10}, "", "cluster.max_request_bytes"),
        ({"max_unauthenticated": 0}, "", "cluster.max_unauthenticated"),
    ],
)
def test_cluster_options_are_checked(cluster: Dict[str, Any], state_url: str, message: str) -> None:
    config = ListenerConfig(state_url=state_url, cluster=ClusterOptions(**cluster))
    with pytest.raises(ConfigError) as info:
        config.validate()
    assert message in str(info.value)


def test_bad_cluster_files_are_a_config_error(tmp_path: Path) -> None:
    options = ClusterOptions(bind="127.0.0.1:0", cert=str(tmp_path / "missing.pem"), key="k", ca="a")
    with pytest.raises(ConfigError) as info:
        ClusterServer(options, _Recorder())
    assert "cluster: cannot load cert/key/ca" in str(info.value)


def test_devices_on_any_node_merge_the_shared_rows(tmp_path: Path) -> None:
    """devices/device: every node's rows with their node; this node's own last view of a device
    another node holds as this_node; scope node for this node's own records only."""
    from netconf_callhome.control.server import ControlServer
    from netconf_callhome.errors import ControlError
    from netconf_callhome.state.registry import Registry, SQLiteStore

    registry = Registry(SQLiteStore(str(tmp_path / "registry.sqlite")))
    registry.load()
    registry.update("mine", status="connected", peer="10.0.0.1:1")
    registry.update("moved", status="disconnected", last_error="moved to node node-b")

    class Listener:
        sessions: Dict[str, Any] = {}
        restconf_sessions: Dict[str, Any] = {}

        def __init__(self) -> None:
            self.registry = registry

        def enrolled_devices(self) -> List[str]:
            return ["mine", "moved", "theirs", "never"]

    class Directory:
        node = "node-a"

        async def devices(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
            rows = [
                {"name": "mine", "status": "connected", "node": None},  # this node's row, not flushed yet
                {"name": "moved", "status": "connected", "node": "node-b"},
                {"name": "theirs", "status": "connected", "node": "node-c"},
            ]
            return [r for r in rows if name is None or r["name"] == name]

    server = ControlServer(ListenerConfig(home=str(tmp_path / "home")), Listener())  # type: ignore[arg-type]
    server.directory = Directory()  # type: ignore[assignment]

    async def main() -> None:
        listed = {r["name"]: r for r in await server._op_devices({})}
        assert sorted(listed) == ["mine", "moved", "never", "theirs"]
        assert listed["mine"]["status"] == "connected" and listed["mine"]["node"] == "node-a"
        assert listed["moved"]["node"] == "node-b" and listed["moved"]["this_node"] == {
            "node": "node-a", "status": "disconnected", "last_error": "moved to node node-b"}
        assert listed["theirs"]["node"] == "node-c" and "this_node" not in listed["theirs"]
        assert listed["never"]["status"] == "never-seen"
        assert (await server._op_device({"device": "theirs"}))["node"] == "node-c"
        own = await server._op_device({"device": "moved", "scope": "node"})
        assert own["status"] == "disconnected" and "node" not in own  # the view before item 4
        assert sorted(r["name"] for r in await server._op_devices({"scope": "node"})) == ["mine", "moved", "never", "theirs"]
        assert [r["name"] for r in await server._op_devices({"status": "connected"})] == ["mine", "moved", "theirs"]
        with pytest.raises(ControlError, match="'scope' must be"):
            await server._op_devices({"scope": "everything"})

    asyncio.run(main())

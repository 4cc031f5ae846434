# SPDX-License-Identifier: GPL-3.0-or-later
"""RESTCONF call home, the HTTP client on the device's connection (issue 11, item 1).

The device here is written with h2 and h11 themselves (server side), behind real TLS with ALPN
on a socket pair: the listener runs :func:`open_tls` on its end exactly as on an accepted
call-home socket. Handlers shape each answer, including the faults a hostile or broken device
can produce: a body that never ends, an oversized header block, malformed JSON/XML, a DTD, a
device that stalls or stops answering altogether.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import h11
import h2.config
import h2.connection
import h2.events
import pytest
import trustme

from netconf_callhome.config import ListenerConfig, TLSOptions
from netconf_callhome.errors import (
    RestconfConnectionLostError,
    RestconfContentError,
    RestconfProtocolError,
    RestconfResponseTooLargeError,
    RestconfStatusError,
    RestconfTimeoutError,
)
from netconf_callhome.fingerprints import cert_fingerprint_of_der
from netconf_callhome.protocol.events import HandshakeFailure, VerifiedDevice
from netconf_callhome.protocol.restconf import (
    BasicCredentials,
    Http2Connection,
    Http11Connection,
    RestconfConnection,
    RestconfLimits,
    RestconfTransport,
    open_tls,
    restconf_client_context,
)

pytestmark = pytest.mark.timeout(60)

HOST_META = (
    b"<?xml version='1.0' encoding='UTF-8'?>\n"
    b"<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n"
    b"  <Link rel='restconf' href='/top/restconf'/>\n</XRD>\n"
)
YANG_LIBRARY = json.dumps(
    {
        "ietf-yang-library:yang-library": {
            "content-id": "42",
            "module-set": [
                {
                    "name": "complete",
                    "module": [
                        {"name": "ietf-interfaces", "revision": "2018-02-20",
                         "namespace": "urn:ietf:params:xml:ns:yang:ietf-interfaces"},
                        {"name": "example-system", "revision": "2024-01-01", "namespace": "urn:example:system",
                         "feature": ["ntp"]},
                    ],
                    "import-only-module": [
                        {"name": "ietf-yang-types", "revision": "2013-07-15",
                         "namespace": "urn:ietf:params:xml:ns:yang:ietf-yang-types"},
                    ],
                }
            ],
        }
    }
).encode()
MODULES_STATE = json.dumps(
    {
        "ietf-yang-library:modules-state": {
            "module-set-id": "7",
            "module": [
                {"name": "ietf-interfaces", "revision": "2014-05-08",
                 "namespace": "urn:ietf:params:xml:ns:yang:ietf-interfaces", "conformance-type": "implement"},
                {"name": "ietf-inet-types", "revision": "2013-07-15",
                 "namespace": "urn:ietf:params:xml:ns:yang:ietf-inet-types", "conformance-type": "import"},
            ],
        }
    }
).encode()

Request = Dict[str, Any]  # method, path, headers (dict), body
# A handler answers a request: (status, headers, body), or a special action understood by the
# device class ("stall", "endless", "big-headers").
Answer = Any
Handler = Callable[[Request], Awaitable[Answer]]


async def default_handler(req: Request) -> Answer:
    path = req["path"]
    if path == "/.well-known/host-meta":
        return 200, [("content-type", "application/xrd+xml")], HOST_META
    if path == "/top/restconf/data/ietf-yang-library:yang-library":
        return 200, [("content-type", "application/yang-data+json")], YANG_LIBRARY
    if path == "/top/restconf/yang-library-version":
        return 200, [("content-type", "application/yang-data+json")], b'{"ietf-restconf:yang-library-version": "2019-01-04"}'
    if path.startswith("/top/restconf/data/echo"):
        return 200, [("content-type", "application/octet-stream")], req["body"]
    if path.startswith("/top/restconf/data/slow"):
        await asyncio.sleep(0.2)
        return 200, [("content-type", "application/yang-data+json")], b"{}"
    return 404, [("content-type", "application/yang-data+json")], b'{"ietf-restconf:errors": {}}'


class Device:
    """Common to both device flavours: requests seen, requests in flight, the handler."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: List[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.transport: Any = None
        self.deaf = False  # stop reading: a dead device that keeps the TCP connection
        self.closed = asyncio.Event()
        self.tasks: List["asyncio.Task[None]"] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.started()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed.set()
        for task in self.tasks:
            task.cancel()

    def eof_received(self) -> bool:
        return False

    def started(self) -> None:
        pass

    def spawn(self, req: Request) -> None:
        self.requests.append(req)
        self.tasks.append(asyncio.ensure_future(self._serve(req)))

    async def _serve(self, req: Request) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            answer = await self.handler(req)
            if answer == "stall":
                await asyncio.Event().wait()
            await self.respond(req, answer)
        finally:
            self.in_flight -= 1

    async def respond(self, req: Request, answer: Answer) -> None:
        raise NotImplementedError


class H2Device(Device, asyncio.Protocol):
    max_streams: Optional[int] = None  # the device's SETTINGS_MAX_CONCURRENT_STREAMS, if any

    def started(self) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        if self.max_streams is not None:
            self.conn.local_settings.max_concurrent_streams = self.max_streams
            self.conn.local_settings.acknowledge()
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())
        self.partial: Dict[int, Request] = {}
        self.window = asyncio.Event()
        self.resets: List[int] = []

    def data_received(self, data: bytes) -> None:
        if self.deaf:
            return
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = dict(event.headers)
                self.partial[event.stream_id] = {
                    "method": headers[":method"], "path": headers[":path"], "headers": headers,
                    "body": b"", "stream_id": event.stream_id,
                }
            elif isinstance(event, h2.events.DataReceived):
                self.partial[event.stream_id]["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.spawn(self.partial.pop(event.stream_id))
            elif isinstance(event, (h2.events.WindowUpdated, h2.events.StreamReset)):
                if isinstance(event, h2.events.StreamReset):
                    self.resets.append(event.stream_id)
                self.window.set()
                self.window = asyncio.Event()
        self.transport.write(self.conn.data_to_send())

    async def respond(self, req: Request, answer: Answer) -> None:
        sid = req["stream_id"]
        if answer == "big-headers":
            self.conn.send_headers(sid, [(":status", "200"), ("x-big", "x" * 40_000)])
            self.transport.write(self.conn.data_to_send())
            return
        if answer == "endless":
            self.conn.send_headers(sid, [(":status", "200"), ("content-type", "application/yang-data+json")])
            await self.send_body(sid, None)
            return
        status, headers, body = answer
        self.conn.send_headers(sid, [(":status", str(status)), *headers, ("content-length", str(len(body)))],
                               end_stream=not body)
        self.transport.write(self.conn.data_to_send())
        if body:
            await self.send_body(sid, body)

    async def send_body(self, sid: int, body: Optional[bytes]) -> None:
        """Send body (None: forever) as the client's windows allow."""
        sent = 0
        while body is None or sent < len(body):
            if self.transport.is_closing() or sid not in self.conn.streams or self.conn.streams[sid].closed:
                return
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                await self.window.wait()
                continue
            chunk = b"x" * room if body is None else body[sent : sent + room]
            self.conn.send_data(sid, chunk, end_stream=body is not None and sent + len(chunk) == len(body))
            sent += len(chunk)
            self.transport.write(self.conn.data_to_send())
            await asyncio.sleep(0)


class H11Device(Device, asyncio.Protocol):
    def started(self) -> None:
        self.conn = h11.Connection(h11.SERVER)
        self.current: Optional[Request] = None

    def data_received(self, data: bytes) -> None:
        if self.deaf:
            return
        self.conn.receive_data(data)
        self.pump()

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                headers = {k.decode(): v.decode() for k, v in event.headers}
                self.current = {"method": event.method.decode(), "path": event.target.decode(),
                                "headers": headers, "body": b""}
            elif isinstance(event, h11.Data):
                assert self.current is not None
                self.current["body"] += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert self.current is not None
                self.spawn(self.current)
            elif isinstance(event, h11.ConnectionClosed):
                return

    async def respond(self, req: Request, answer: Answer) -> None:
        if answer == "big-headers":
            self.transport.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 40_000 + b"\r\n\r\n")
            return
        if answer == "endless":
            self.transport.write(self.conn.send(h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")])))
            while not self.transport.is_closing():
                self.transport.write(self.conn.send(h11.Data(data=b"x" * 65536)))
                await asyncio.sleep(0)
            return
        status, headers, body = answer
        out = self.conn.send(h11.Response(status_code=status, headers=[*headers, ("content-length", str(len(body)))]))
        if body and req["method"] != "HEAD":
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        self.transport.write(out)
        self.conn.start_next_cycle()
        self.pump()  # a pipelined next request, if any


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        listener = self.ca.issue_cert("listener.example.net")
        self.cert = tmp / "listener.crt"
        self.key = tmp / "listener.key"
        listener.cert_chain_pems[0].write_to_path(str(self.cert))
        listener.private_key_pem.write_to_path(str(self.key))
        self.device = self.ca.issue_cert("dev1.example.net")

    def device_context(self, alpn: List[str]) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.device.configure_cert(ctx)
        self.ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED  # the device checks the listener's certificate
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


async def connect(
    tmp: Path,
    alpn: str,
    handler: Handler = default_handler,
    limits: Optional[RestconfLimits] = None,
    credentials: Optional[BasicCredentials] = None,
    device_streams: Optional[int] = None,
) -> Tuple[RestconfConnection, Device]:
    """A device (TLS server, ALPN only ``alpn``) on one end of a socket pair, the listener's
    RESTCONF client on the other, as on an accepted call-home socket."""
    pki = Pki(tmp)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    device: Device = H2Device(handler) if alpn == "h2" else H11Device(handler)
    if device_streams is not None:
        device.max_streams = device_streams  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    dev_ctx = pki.device_context([alpn])
    link, _pong = await asyncio.gather(
        open_tls(ours, restconf_client_context(str(pki.cert), str(pki.key)), timeout=10),
        loop.connect_accepted_socket(lambda: device, sock=theirs, ssl=dev_ctx),  # type: ignore[arg-type,return-value]
    )
    assert link.alpn == alpn and link.chain
    conn = link.start(limits=limits, credentials=credentials, device="dev1", peer="socketpair")
    return conn, device


def run(scenario: Callable[[], Awaitable[Any]], timeout: float = 45.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(scenario(), timeout)

    return asyncio.run(bounded())


BOTH = pytest.mark.parametrize("alpn", ["h2", "http/1.1"])


@BOTH
def test_root_yang_library_data_and_ping(tmp_path: Path, alpn: str) -> None:
    async def scenario() -> None:
        conn, device = await connect(tmp_path, alpn)
        assert isinstance(conn, Http2Connection if alpn == "h2" else Http11Connection)
        assert await conn.discover_root() == "/top/restconf"
        lib = await conn.yang_library()
        assert lib.source == "yang-library" and lib.content_id == "42"
        assert [(m.name, m.revision, m.implemented) for m in lib.modules] == [
            ("ietf-interfaces", "2018-02-20", True),
            ("example-system", "2024-01-01", True),
            ("ietf-yang-types", "2013-07-15", False),
        ]
        system = lib.module("example-system")
        assert system is not None and system.namespace == "urn:example:system" and system.features == ("ntp",)
        accept = device.requests[1]["headers"]["accept"]
        assert accept == "application/yang-data+json"
        # A body larger than HTTP/2's initial 64 KiB window: sending waits for WINDOW_UPDATEs.
        payload = bytes(range(256)) * 1024
        resp = await conn.request("PUT", "/top/restconf/data/echo", {"content-type": "application/yang-data+json"}, payload)
        assert resp.status == 200 and resp.body == payload and resp.http_version == conn.http_version
        assert await conn.ping() >= 0
        if alpn == "http/1.1":
            assert device.requests[-1]["method"] == "HEAD"
            assert device.requests[-1]["path"] == "/top/restconf/yang-library-version"
        missing = await conn.get("/top/restconf/data/nothing")
        with pytest.raises(RestconfStatusError, match="HTTP 404") as err:
            missing.raise_for_status()
        assert err.value.details["status"] == 404
        conn.close("test over")
        assert await conn.closed == "test over"
        await asyncio.wait_for(device.closed.wait(), 5)

    run(scenario)


@BOTH
def test_concurrent_requests_share_streams_or_queue(tmp_path: Path, alpn: str) -> None:
    async def scenario() -> None:
        conn, device = await connect(tmp_path, alpn, limits=RestconfLimits(max_concurrent_streams=4))
        results = await asyncio.gather(*(conn.get("/top/restconf/data/slow/%d" % i) for i in range(10)))
        assert [r.status for r in results] == [200] * 10
        if alpn == "h2":
            assert device.max_in_flight == 4  # side by side, capped by the listener's limit
        else:
            assert device.max_in_flight == 1  # HTTP/1.1: queued, one at a time
        conn.close()

    run(scenario)


@BOTH
def test_host_meta_404_uses_the_default_root_and_says_so(
    tmp_path: Path, alpn: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(req: Request) -> Answer:
        if req["path"] == "/restconf/data/ietf-yang-library:yang-library":
            return 404, [], b""
        if req["path"] == "/restconf/data/ietf-yang-library:modules-state":
            return 200, [("content-type", "application/yang-data+json")], MODULES_STATE
        return 404, [], b""

    async def scenario() -> None:
        conn, _device = await connect(tmp_path, alpn, handler)
        with caplog.at_level(logging.INFO, logger="netconf_callhome.restconf"):
            assert await conn.discover_root() == "/restconf"
            lib = await conn.yang_library()
        assert "event=restconf.root_default" in caplog.text and "404" in caplog.text
        assert "event=restconf.yang_library_fallback" in caplog.text
        assert lib.source == "modules-state" and lib.content_id == "7"
        assert [(m.name, m.implemented) for m in lib.modules] == [("ietf-interfaces", True), ("ietf-inet-types", False)]
        conn.close()

    run(scenario)


def test_host_meta_other_errors_are_not_guessed_away(tmp_path: Path) -> None:
    async def handler(req: Request) -> Answer:
        return 500, [], b"internal error"

    async def scenario() -> None:
        conn, _device = await connect(tmp_path, "h2", handler)
        with pytest.raises(RestconfStatusError, match="HTTP 500"):
            await conn.discover_root()
        assert conn.root is None
        conn.close()

    run(scenario)


BAD_HOST_META = {
    "dtd": (
        b"<?xml version='1.0'?><!DOCTYPE XRD [<!ENTITY x 'lol'>]>"
        b"<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'><Link rel='restconf' href='/&x;'/></XRD>",
        "DTD",
    ),
    "external-entity": (
        b"<?xml version='1.0'?><!DOCTYPE XRD SYSTEM 'file:///etc/passwd'><XRD/>",
        "DTD",
    ),
    "malformed": (b"<XRD><Link rel='restconf' href='/restconf'></XRD>", "not well-formed"),
    "no-link": (b"<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'/>", "no <Link rel='restconf'"),
    "dot-segments": (b"<XRD><Link rel='restconf' href='/a/../etc'/></XRD>", "unusable RESTCONF root"),
    "query": (b"<XRD><Link rel='restconf' href='/restconf?x=1'/></XRD>", "unusable RESTCONF root"),
}


@pytest.mark.parametrize("case", sorted(BAD_HOST_META))
def test_bad_host_meta_is_a_clear_content_error(tmp_path: Path, case: str) -> None:
    body, message = BAD_HOST_META[case]

    async def handler(req: Request) -> Answer:
        return 200, [("content-type", "application/xrd+xml")], body

    async def scenario() -> None:
        conn, _device = await connect(tmp_path, "http/1.1", handler)
        with pytest.raises(RestconfContentError, match=message.replace("?", "\\?")):
            await conn.discover_root()
        assert await conn.ping() >= 0  # the connection is still good
        conn.close()

    run(scenario)


def test_absolute_href_gives_its_path_and_jrd_is_read(tmp_path: Path) -> None:
    answers = iter(
        [
            (200, [("content-type", "application/xrd+xml")],
             b"<XRD><Link rel='restconf' href='https://device.example/api/restconf/'/></XRD>"),
            (200, [("content-type", "application/json")], b'{"links": [{"rel": "restconf", "href": "/jrd"}]}'),
        ]
    )

    async def handler(req: Request) -> Answer:
        return next(answers)

    async def scenario() -> None:
        conn, _device = await connect(tmp_path, "h2", handler)
        assert await conn.discover_root() == "/api/restconf"
        assert await conn.discover_root() == "/jrd"
        conn.close()

    run(scenario)


BAD_LIBRARY = {
    "malformed-json": (b'{"ietf-yang-library:yang-library": {', "not valid JSON"),
    "deep-json": (b"[" * 200_000 + b"]" * 200_000, "not valid JSON"),
    "not-utf8": (b'{"a": "\xff\xfe"}', "not valid JSON"),
    "wrong-shape": (b'{"ietf-yang-library:yang-library": []}', "missing or not a JSON object"),
    "module-without-name": (
        b'{"ietf-yang-library:yang-library": {"module-set": [{"module": [{"revision": "x"}]}]}}',
        "without a name",
    ),
    "numeric-revision": (
        b'{"ietf-yang-library:yang-library": {"module-set": [{"module": [{"name": "m", "revision": 5}]}]}}',
        "non-string revision",
    ),
}


@BOTH
@pytest.mark.parametrize("case", sorted(BAD_LIBRARY))
def test_malformed_yang_library_is_a_clear_error_and_the_connection_stays(tmp_path: Path, alpn: str, case: str) -> None:
    body, message = BAD_LIBRARY[case]

    async def handler(req: Request) -> Answer:
        if req["path"].endswith("yang-library"):
            return 200, [("content-type", "application/yang-data+json")], body
        return await default_handler(req)

    async def scenario() -> None:
        conn, _device = await connect(tmp_path, alpn, handler)
        await conn.discover_root()
        with pytest.raises(RestconfContentError, match=message):
            await conn.yang_library()
        assert (await conn.get("/top/restconf/yang-library-version")).status == 200
        conn.close()

    run(scenario)


def test_malformed_xml_yang_library(tmp_path: Path) -> None:
    async def handler(req: Request) -> Answer:
        if req["path"].endswith("yang-library"):
            return 200, [("content-type", "application/yang-data+xml")], b"<yang-library><module-set>"
        return await default_handler(req)

    async def scenario() -> None:
        conn, _device = await connect(tmp_path, "h2", handler)
        with pytest.raises(RestconfContentError, match="not well-formed"):
            await conn.yang_library()
        conn.close()

    run(scenario)


def test_never_ending_body_http2_resets_only_that_stream(tmp_path: Path) -> None:
    async def handler(req: Request) -> Answer:
        return "endless" if req["path"].endswith("/endless") else await default_handler(req)

    async def scenario() -> None:
        conn, device = await connect(tmp_path, "h2", handler, limits=RestconfLimits(max_body_bytes=256 * 1024))
        with pytest.raises(RestconfResponseTooLargeError, match="body over the limit") as err:
            await conn.get("/top/restconf/data/endless")
        assert err.value.details["limit"] == 256 * 1024
        while not device.resets:  # the listener reset the stream (CANCEL): the device stops
            await asyncio.sleep(0.01)
        assert device.resets == [device.requests[0]["stream_id"]]
        assert not conn.is_closed
        assert (await conn.get("/top/restconf/yang-library-version")).status == 200
        assert await conn.ping() >= 0
        conn.close()

    run(scenario)


def test_never_ending_body_http11_costs_the_connection(tmp_path: Path) -> None:
    async def handler(req: Request) -> Answer:
        return "endless"

    async def scenario() -> None:
        conn, device = await connect(tmp_path, "http/1.1", handler, limits=RestconfLimits(max_body_bytes=256 * 1024))
        with pytest.raises(RestconfResponseTooLargeError, match="body over the limit"):
            await conn.get("/top/restconf/data/endless")
        assert "body over the limit" in await conn.closed
        await asyncio.wait_for(device.closed.wait(), 5)
        with pytest.raises(RestconfConnectionLostError):
            await conn.get("/top/restconf/data/x")

    run(scenario)


@BOTH
def test_oversized_header_block(tmp_path: Path, alpn: str) -> None:
    async def handler(req: Request) -> Answer:
        return "big-headers"

    async def scenario() -> None:
        conn, _device = await connect(tmp_path, alpn, handler, limits=RestconfLimits(max_header_bytes=16 * 1024))
        with pytest.raises(RestconfResponseTooLargeError, match="over the limit"):
            await conn.get("/top/restconf/data/x")
        # HTTP/2: the HPACK state is lost with an undecoded block; HTTP/1.1: cannot skip it.
        await asyncio.wait_for(conn.closed, 5)

    run(scenario)


def test_stalled_device_http2_times_out_the_request_only(tmp_path: Path) -> None:
    async def handler(req: Request) -> Answer:
        return "stall" if req["path"].endswith("/stall") else await default_handler(req)

    async def scenario() -> None:
        conn, device = await connect(tmp_path, "h2", handler)
        with pytest.raises(RestconfTimeoutError, match="did not answer GET /top/restconf/data/stall within 0.3s"):
            await conn.request("GET", "/top/restconf/data/stall", timeout=0.3)
        assert not conn.is_closed
        while not device.resets:  # the abandoned stream is reset, not left open on the device
            await asyncio.sleep(0.01)
        assert (await conn.get("/top/restconf/yang-library-version")).status == 200
        conn.close()

    run(scenario)


def test_stalled_device_http11_closes_the_connection(tmp_path: Path) -> None:
    async def handler(req: Request) -> Answer:
        return "stall"

    async def scenario() -> None:
        conn, _device = await connect(tmp_path, "http/1.1", handler, limits=RestconfLimits(request_timeout=0.3))
        queued = asyncio.ensure_future(conn.get("/top/restconf/data/b", timeout=5))
        with pytest.raises(RestconfTimeoutError):
            await conn.get("/top/restconf/data/a")
        assert "cannot skip a pending response" in await conn.closed
        with pytest.raises(RestconfConnectionLostError):  # the queued request does not hang
            await queued

    run(scenario)


@BOTH
def test_dead_device_is_detected_by_keepalive(tmp_path: Path, alpn: str) -> None:
    async def scenario() -> None:
        conn, device = await connect(tmp_path, alpn)
        await conn.discover_root()
        device.deaf = True  # TCP stays up, nothing is answered any more
        reason = await conn.keepalive(interval=0.2, timeout=0.3)
        assert "keepalive" in reason and conn.closed.result() == reason
        assert conn.is_closed
        await asyncio.wait_for(device.closed.wait(), 5)

    run(scenario)


def test_keepalive_ends_with_the_connection(tmp_path: Path) -> None:
    async def scenario() -> None:
        conn, device = await connect(tmp_path, "h2")
        keeper = asyncio.ensure_future(conn.keepalive(interval=0.1, timeout=2))
        await asyncio.sleep(0.35)  # a few pings answered
        assert not keeper.done()
        device.transport.close()
        assert "lost" in await asyncio.wait_for(keeper, 5) or conn.is_closed

    run(scenario)


@BOTH
def test_device_hang_up_fails_in_flight_requests(tmp_path: Path, alpn: str) -> None:
    async def handler(req: Request) -> Answer:
        return "stall"

    async def scenario() -> None:
        conn, device = await connect(tmp_path, alpn, handler)
        pending = asyncio.ensure_future(conn.get("/top/restconf/data/x"))
        while not device.requests:
            await asyncio.sleep(0.01)
        device.transport.close()
        with pytest.raises(RestconfConnectionLostError, match="lost|closed"):
            await pending
        assert conn.is_closed

    run(scenario)


def test_garbage_from_an_http2_device_is_a_protocol_error(tmp_path: Path) -> None:
    async def handler(req: Request) -> Answer:
        return "stall"

    async def scenario() -> None:
        conn, device = await connect(tmp_path, "h2", handler)
        pending = asyncio.ensure_future(conn.get("/top/restconf/data/x"))
        while not device.requests:
            await asyncio.sleep(0.01)
        # A frame header announcing a 1 MiB DATA frame on stream 0: invalid in every way.
        device.transport.write(b"\x10\x00\x00\x00\x00\x00\x00\x00\x00")
        with pytest.raises(RestconfProtocolError, match="broke HTTP/2"):
            await pending
        assert "broke HTTP/2" in await conn.closed

    run(scenario)


@BOTH
def test_basic_credentials_are_sent_and_never_logged(tmp_path: Path, alpn: str, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-Pa55"
    creds = BasicCredentials("admin", secret)
    assert secret not in repr(creds)

    async def scenario() -> None:
        with caplog.at_level(logging.DEBUG):
            conn, device = await connect(tmp_path, alpn, credentials=creds)
            await conn.discover_root()
            await conn.yang_library()
            await conn.ping()
            conn.close()
        assert device.requests[0]["headers"]["authorization"] == creds.header()
        if alpn == "http/1.1":  # the keepalive request is authenticated too
            assert device.requests[-1]["method"] == "HEAD"
            assert device.requests[-1]["headers"]["authorization"] == creds.header()
        assert secret not in repr(conn)

    run(scenario)
    assert secret not in caplog.text and creds.header() not in caplog.text


def test_request_arguments_are_checked(tmp_path: Path) -> None:
    async def scenario() -> None:
        conn, _device = await connect(tmp_path, "h2")
        with pytest.raises(ValueError, match="invalid request path"):
            await conn.request("GET", "/a b")
        with pytest.raises(ValueError, match="invalid request path"):
            await conn.request("GET", "relative")
        with pytest.raises(ValueError, match="set by the RESTCONF connection"):
            await conn.request("GET", "/x", {"Host": "evil"})
        with pytest.raises(ValueError, match="invalid header name"):
            await conn.request("GET", "/x", {"x y": "1"})
        with pytest.raises(ValueError, match="line break"):
            await conn.request("GET", "/x", {"x-a": "1\r\nx-b: 2"})
        with pytest.raises(ValueError, match="invalid HTTP method"):
            await conn.request("GE T", "/x")
        conn.close()

    run(scenario)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        RestconfLimits(max_body_bytes=0)
    with pytest.raises(ValueError, match="h2_stream_window"):
        RestconfLimits(h2_stream_window=2**31)
    with pytest.raises(ValueError, match="request_timeout"):
        RestconfLimits(request_timeout=0)


def test_the_devices_stream_limit_is_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        conn, device = await connect(tmp_path, "h2", device_streams=2)
        await conn.ping()  # the device's SETTINGS arrived
        results = await asyncio.gather(*(conn.get("/top/restconf/data/slow/%d" % i) for i in range(6)))
        assert [r.status for r in results] == [200] * 6
        assert device.max_in_flight == 2
        conn.close()

    run(scenario)


def test_goaway_fails_unprocessed_streams_and_ends_the_connection(tmp_path: Path) -> None:
    async def handler(req: Request) -> Answer:
        return "stall"

    async def scenario() -> None:
        conn, device = await connect(tmp_path, "h2", handler)
        first = asyncio.ensure_future(conn.get("/top/restconf/data/a"))
        while not device.requests:
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(conn.get("/top/restconf/data/b"))
        while len(device.requests) < 2:
            await asyncio.sleep(0.01)
        dev = device  # an H2Device
        dev.conn.close_connection(last_stream_id=1)  # type: ignore[attr-defined]
        dev.transport.write(dev.conn.data_to_send())  # type: ignore[attr-defined]
        with pytest.raises(RestconfConnectionLostError, match="GOAWAY"):
            await second  # stream 3: never processed, safe to retry
        assert not first.done()  # stream 1 may still be answered
        with pytest.raises(RestconfConnectionLostError, match="GOAWAY"):
            await conn.get("/top/restconf/data/c")  # no new streams after GOAWAY
        conn.close()
        with pytest.raises(RestconfConnectionLostError):
            await first

    run(scenario)


def test_a_ping_flood_ends_the_connection(tmp_path: Path) -> None:
    async def scenario() -> None:
        conn, device = await connect(tmp_path, "h2")
        dev = device
        for i in range(1100):
            dev.conn.ping(i.to_bytes(8, "big"))  # type: ignore[attr-defined]
        dev.transport.write(dev.conn.data_to_send())  # type: ignore[attr-defined]
        reason = await asyncio.wait_for(conn.closed, 10)
        assert "PING/SETTINGS frames" in reason and "flood" in reason

    run(scenario)


# -- the transport: accepted socket to a ready device, through the (fake) policy -----------------


class Slots:
    def __init__(self) -> None:
        self.taken = 0

    def is_blocked(self, peer_ip: str) -> bool:
        return False

    def acquire(self, peer: str) -> bool:
        self.taken += 1
        return True

    def release(self) -> None:
        self.taken -= 1


class Events:
    def __init__(self, accept: bool = True, credentials: Optional[BasicCredentials] = None) -> None:
        self.accept = accept
        self.credentials = credentials
        self.ready: "asyncio.Queue[RestconfConnection]" = asyncio.Queue()
        self.failures: "asyncio.Queue[HandshakeFailure]" = asyncio.Queue()
        self.asked: List[str] = []

    def tls_certificate(self, chain: Any, *, peer: str) -> Optional[VerifiedDevice]:
        if not self.accept:
            return None
        return VerifiedDevice(device="dev1", fingerprint=cert_fingerprint_of_der(chain[0]))

    def restconf_credentials(self, device: str) -> Optional[BasicCredentials]:
        self.asked.append(device)
        return self.credentials

    def handshake_failed(self, failure: HandshakeFailure) -> None:
        self.failures.put_nowait(failure)

    def restconf_ready(self, conn: RestconfConnection, *, started: float) -> None:
        self.ready.put_nowait(conn)


async def transport_and_device(
    tmp: Path, events: Events, alpn: str, handler: Handler = default_handler, handshake_timeout: float = 10.0
) -> Tuple[RestconfTransport, Slots, Device]:
    pki = Pki(tmp)
    cfg = ListenerConfig(home=str(tmp), tls=TLSOptions(client_cert=str(pki.cert), client_key=str(pki.key)),
                         handshake_timeout=handshake_timeout)
    slots = Slots()
    transport = RestconfTransport(cfg, admission=slots, events=events)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    lsock.setblocking(False)
    loop = asyncio.get_running_loop()
    device: Device = H2Device(handler) if alpn == "h2" else H11Device(handler)
    dsock = socket.create_connection(lsock.getsockname())  # the device dials the listener
    dsock.setblocking(False)
    accepted, addr = await loop.sock_accept(lsock)
    lsock.close()
    handled = asyncio.ensure_future(transport.handle(accepted, addr))
    await loop.connect_accepted_socket(lambda: device, sock=dsock, ssl=pki.device_context([alpn]))  # type: ignore[arg-type,return-value]
    await handled
    return transport, slots, device


@BOTH
def test_transport_hands_over_a_ready_device(tmp_path: Path, alpn: str) -> None:
    async def scenario() -> None:
        events = Events(credentials=BasicCredentials("admin", "pw"))
        transport, slots, device = await transport_and_device(tmp_path, events, alpn)
        conn = events.ready.get_nowait()
        assert conn.device == "dev1" and conn.root == "/top/restconf" and len(conn.fingerprint.split(":")) == 32
        assert conn.library is not None and conn.library.module("ietf-interfaces") is not None
        assert conn.http_version == ("2" if alpn == "h2" else "1.1")
        assert device.requests[0]["headers"]["authorization"] == BasicCredentials("admin", "pw").header()
        host = device.requests[0]["headers"].get(":authority" if alpn == "h2" else "host")
        assert host == "127.0.0.1"
        assert events.asked == ["dev1"] and slots.taken == 0 and transport.pending == 0
        assert events.failures.empty()
        conn.close()

    run(scenario)


def test_transport_refused_certificate_sends_no_http(tmp_path: Path) -> None:
    async def scenario() -> None:
        events = Events(accept=False)
        _transport, slots, device = await transport_and_device(tmp_path, events, "h2")
        failure = events.failures.get_nowait()
        assert (failure.transport, failure.reason, failure.device) == ("restconf", "host-key", "")
        await asyncio.wait_for(device.closed.wait(), 5)
        assert device.requests == [] and events.ready.empty() and slots.taken == 0

    run(scenario)


@pytest.mark.parametrize(
    "answer, reason",
    [
        ((401, [], b"unauthorized"), "auth-failed"),
        ((200, [("content-type", "application/yang-data+json")], b"{broken"), "protocol"),
        ("stall", "timeout"),
    ],
    ids=["401", "malformed-json", "stall"],
)
def test_transport_failures_are_classified(tmp_path: Path, answer: Answer, reason: str) -> None:
    async def handler(req: Request) -> Answer:
        if req["path"].endswith("yang-library"):
            return answer
        return await default_handler(req)

    async def scenario() -> None:
        events = Events()
        _transport, slots, device = await transport_and_device(tmp_path, events, "h2", handler, handshake_timeout=1.0)
        failure = events.failures.get_nowait()
        assert failure.reason == reason and failure.device == "dev1", failure
        assert events.ready.empty() and slots.taken == 0
        await asyncio.wait_for(device.closed.wait(), 5)

    run(scenario)


def test_device_text_in_errors_is_one_printable_line(tmp_path: Path) -> None:
    async def handler(req: Request) -> Answer:
        return 500, [], b"boom\x1b[31m red\r\nfake-log-line event=device.connected\x00"

    async def scenario() -> None:
        conn, _device = await connect(tmp_path, "h2", handler)
        with pytest.raises(RestconfStatusError) as err:
            (await conn.get("/x")).raise_for_status()
        assert "\x1b" not in err.value.message and "\n" not in err.value.message and "\x00" not in err.value.message
        assert "boom [31m red fake-log-line" in err.value.message
        conn.close()

    run(scenario)


def test_concurrent_large_answers_wait_for_each_other(tmp_path: Path) -> None:
    """HTTP/2: what all streams of a connection hold at once is bounded by flow control
    (max_buffered_bytes), and every request still completes (the oldest always progresses)."""
    body = bytes(range(256)) * 2048  # 512 KiB each

    async def handler(req: Request) -> Answer:
        return 200, [("content-type", "application/octet-stream")], body

    async def scenario() -> None:
        limits = RestconfLimits(max_buffered_bytes=256 * 1024, h2_stream_window=65535, h2_connection_window=65535 * 8)
        conn, _device = await connect(tmp_path, "h2", handler, limits=limits)
        results = await asyncio.gather(*(conn.get("/top/restconf/data/big/%d" % i) for i in range(6)))
        assert all(r.status == 200 and r.body == body for r in results)
        assert isinstance(conn, Http2Connection)
        # Without the bound all six (3 MiB) arrive interleaved; with it: the cap, plus the
        # oldest request's body, plus what the open windows let in.
        assert conn.peak_buffered <= 256 * 1024 + len(body) + 6 * 65535, conn.peak_buffered
        assert conn.buffered == 0
        assert await conn.ping() >= 0
        conn.close()

    run(scenario)

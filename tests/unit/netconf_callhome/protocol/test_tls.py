# SPDX-License-Identifier: GPL-3.0-or-later
"""The TLS call-home transport on memory BIOs: a device (TLS server on the socket it dialled)
gets a held NETCONF session; garbage, a refused certificate and a hang-up are failures."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable, List, Optional, Sequence, Tuple

import pytest
import trustme

from netconf_callhome.config import ListenerConfig, TLSOptions
from netconf_callhome.fingerprints import cert_fingerprint_of_der
from netconf_callhome.protocol.events import HandshakeFailure, VerifiedDevice
from netconf_callhome.protocol.framing import EOM
from netconf_callhome.protocol.session import HeldSession
from netconf_callhome.protocol.tls import TLSTransport

pytestmark = pytest.mark.timeout(60)

NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
HELLO = (
    '<hello xmlns="%s"><capabilities><capability>urn:ietf:params:netconf:base:1.0</capability>'
    "</capabilities><session-id>4</session-id></hello>" % NS
).encode()


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
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.chains: List[Sequence[bytes]] = []
        self.failures: List[HandshakeFailure] = []
        self.ready: "asyncio.Queue[HeldSession]" = asyncio.Queue()
        self.failed = asyncio.Event()

    def ssh_host_key(self, key: Any, *, peer: str, device_id: str) -> None:
        raise AssertionError("not SSH")

    def tls_certificate(self, chain: Sequence[bytes], *, peer: str) -> Optional[VerifiedDevice]:
        self.chains.append(chain)
        if not self.accept:
            return None
        return VerifiedDevice(device="dev1", fingerprint=cert_fingerprint_of_der(chain[0]))

    def handshake_failed(self, failure: HandshakeFailure) -> None:
        self.failures.append(failure)
        self.failed.set()

    def session_ready(self, held: HeldSession, *, started: float, auth: str) -> None:
        self.ready.put_nowait(held)

    def spawn(self, awaitable: Awaitable[Any]) -> None:
        asyncio.ensure_future(awaitable)


class Pki:
    def __init__(self, tmp: Path) -> None:
        ca = trustme.CA()
        listener = ca.issue_cert("listener.example.net")
        self.cert = tmp / "listener.crt"
        self.key = tmp / "listener.key"
        listener.cert_chain_pems[0].write_to_path(str(self.cert))
        listener.private_key_pem.write_to_path(str(self.key))
        self.device = ca.issue_cert("dev1.example.net")

    def device_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.device.configure_cert(ctx)
        return ctx


def run(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(bounded())


async def start(tmp: Path, events: Events, handshake_timeout: float = 10.0) -> Tuple[TLSTransport, int, Slots]:
    pki = Pki(tmp)
    cfg = ListenerConfig(
        home=str(tmp), tls=TLSOptions(client_cert=str(pki.cert), client_key=str(pki.key)),
        handshake_timeout=handshake_timeout,
    )
    slots = Slots()
    transport = TLSTransport(cfg, admission=slots, events=events)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    lsock.setblocking(False)
    loop = asyncio.get_running_loop()

    async def accept() -> None:
        while True:
            sock, addr = await loop.sock_accept(lsock)
            asyncio.ensure_future(transport.handle(sock, addr))

    asyncio.ensure_future(accept())
    transport.pki = pki  # type: ignore[attr-defined]
    return transport, lsock.getsockname()[1], slots


class Device(asyncio.Protocol):
    """The device's side: TLS server on the connection it dialled, NETCONF bytes collected."""

    def __init__(self) -> None:
        self.data = b""
        self.got = asyncio.Event()
        self.closed = asyncio.Event()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed.set()

    async def until(self, marker: bytes) -> None:
        while marker not in self.data:
            self.got.clear()
            await self.got.wait()


async def dial(port: int, ctx: ssl.SSLContext) -> Device:
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    dev = Device()
    await loop.connect_accepted_socket(lambda: dev, sock=sock, ssl=ctx)
    return dev


def test_a_device_gets_a_held_session_and_data_flows_both_ways(tmp_path: Path) -> None:
    async def scenario() -> None:
        events = Events()
        transport, port, slots = await start(tmp_path, events)
        dev = await dial(port, transport.pki.device_context())  # type: ignore[attr-defined]
        await dev.until(EOM)  # the listener's hello
        assert b"<hello" in dev.data
        dev.transport.write(HELLO + EOM)
        held = await events.ready.get()
        assert held.device == "dev1" and held.transport == "tls" and held.hello is not None
        assert held.fingerprint == cert_fingerprint_of_der(events.chains[0][0])
        assert len(held.fingerprint.split(":")) == 32
        assert slots.taken == 0 and transport.pending == 0
        got: List[bytes] = []

        class Shared:
            def device_message(self, message: bytes) -> None:
                got.append(message)

            async def serve(self, reader: Any, writer: Any) -> str:
                return ""

        held.configure(shared=Shared())
        big = b"<rpc-reply>" + b"x" * 100000 + b"</rpc-reply>"  # several TLS records
        dev.transport.write(big + EOM)
        while not got:
            await asyncio.sleep(0.01)
        assert got == [big]
        held.send(b"<rpc/>")
        await dev.until(b"<rpc/>" + EOM)
        held.close("test over")
        await asyncio.wait_for(dev.closed.wait(), 5)

    run(scenario)


def test_device_hang_up_closes_the_held_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        events = Events()
        transport, port, _slots = await start(tmp_path, events)
        dev = await dial(port, transport.pki.device_context())  # type: ignore[attr-defined]
        await dev.until(EOM)
        dev.transport.write(HELLO + EOM)
        held = await events.ready.get()
        dev.transport.close()
        reason = await asyncio.wait_for(held.closed, 5)
        assert "TLS connection closed" in reason

    run(scenario)


def test_garbage_and_refused_certificates_fail_and_free_the_slot(tmp_path: Path) -> None:
    async def scenario() -> None:
        events = Events(accept=False)
        transport, port, slots = await start(tmp_path, events)
        # garbage instead of a ServerHello
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.read(1)  # the ClientHello started
        writer.write(b"\x00garbage, not TLS\r\n" * 10)
        await asyncio.wait_for(events.failed.wait(), 5)
        assert events.failures[0].reason == "error" and "SSL" in events.failures[0].message
        writer.close()
        # a certificate the policy refuses
        events.failed.clear()
        dev = await dial(port, transport.pki.device_context())  # type: ignore[attr-defined]
        await asyncio.wait_for(events.failed.wait(), 5)
        assert events.failures[1].reason == "host-key"
        await asyncio.wait_for(dev.closed.wait(), 5)
        assert slots.taken == 0 and transport.pending == 0

    run(scenario)


def test_a_stalled_handshake_times_out_and_lets_go(tmp_path: Path) -> None:
    async def scenario() -> None:
        events = Events()
        transport, port, slots = await start(tmp_path, events, handshake_timeout=0.5)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read(5)  # a ClientHello record header, then silence
        await asyncio.wait_for(events.failed.wait(), 5)
        assert events.failures[0].reason == "timeout"
        await asyncio.wait_for(reader.read(), 5)  # the rest of the ClientHello, then EOF: it hung up
        assert reader.at_eof()
        writer.close()
        assert slots.taken == 0 and transport.pending == 0

    run(scenario)

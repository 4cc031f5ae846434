# SPDX-License-Identifier: GPL-3.0-or-later
"""The single call-home port's detection: the transport from a connection's first bytes.

Detection per first bytes (whole, partial, one byte at a time), garbage refused at the first
byte that fits no signature, silence taken for TLS, a stalled peer costing no CPU, the bytes
handed unchanged to the transport that takes over, and the TLS path's ALPN dispatch with one
handshake (NETCONF over TLS through the real TLSTransport; RESTCONF recorded), plus the pin."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, List, Optional, Sequence, Tuple

import pytest
import trustme

from netconf_callhome.config import ListenerConfig, TLSOptions
from netconf_callhome.fingerprints import cert_fingerprint_of_der
from netconf_callhome.protocol.events import HandshakeFailure, VerifiedDevice
from netconf_callhome.protocol.first_bytes import (
    MAX_DETECT_BYTES,
    OUTBOUND_SSH,
    SSH,
    TLS,
    FirstBytes,
    SinglePortTransport,
    UnknownProtocolError,
    detect,
)
from netconf_callhome.protocol.framing import EOM
from netconf_callhome.protocol.restconf import TLSLink, restconf_client_context
from netconf_callhome.protocol.session import HeldSession
from netconf_callhome.protocol.tls import TLSTransport

pytestmark = pytest.mark.timeout(60)

HELLO = (
    b'<hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><capabilities>'
    b"<capability>urn:ietf:params:netconf:base:1.0</capability></capabilities><session-id>4</session-id></hello>"
)


# -- detect(): the decision on the bytes so far ----------------------------------------------


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"SSH-2.0-", SSH),
        (b"SSH-2.0-OpenSSH_9.6\r\n", SSH),
        (b"SSH-1.99-Cisco-1.25\r\n", SSH),
        (b"MSG-ID:", OUTBOUND_SSH),
        (b"MSG-ID: DEVICE-CONN-INFO\r\nMSG-VER: V1\r\n", OUTBOUND_SSH),
    ],
)
def test_a_signature_decides(data: bytes, kind: str) -> None:
    assert detect(data) == kind


@pytest.mark.parametrize("data", [b"", b"S", b"SS", b"SSH", b"SSH-", b"SSH-2", b"SSH-2.0", b"SSH-1.9", b"M", b"MSG-ID"])
def test_the_beginning_of_a_signature_waits_for_more(data: bytes) -> None:
    assert detect(data) is None


@pytest.mark.parametrize(
    "data",
    [
        b"G",  # refused at the first byte that fits no signature
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",  # a ClientHello: the peer wants to be the TLS client (wrong role)
        b"SSH-3.0-x",
        b"SSH-2.0x",
        b"MSG-IDX",
        b"msg-id:",
        b"\r\nSSH-2.0-",  # RFC 4253 4.2 lines before the banner: refused here (docs/single-port.md)
        b"\x00" * MAX_DETECT_BYTES,
    ],
)
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(UnknownProtocolError, match="not SSH"):
        detect(data)


def test_any_buffer_of_the_maximum_length_is_decided() -> None:
    assert MAX_DETECT_BYTES == len(b"SSH-1.99-")
    for data in (b"SSH-1.99-", b"SSH-2.0-x", b"MSG-ID:xy"):
        assert detect(data) is not None


# -- FirstBytes on a real connection ---------------------------------------------------------


def run(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(bounded())


class Counting(FirstBytes):
    """FirstBytes that counts the event loop's calls into it."""

    def __init__(self, silence: float) -> None:
        super().__init__(silence)
        self.calls = 0

    def buffer_updated(self, nbytes: int) -> None:
        self.calls += 1
        super().buffer_updated(nbytes)


class Rest(asyncio.Protocol):
    """The protocol that takes over after detection: what it gets must follow what was read."""

    def __init__(self) -> None:
        self.data = b""
        self.got = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()


async def pair(silence: float) -> Tuple[socket.socket, asyncio.Transport, Counting]:
    listener_side, device = tcp_pair()
    listener_side.setblocking(False)
    transport, reader = await asyncio.get_running_loop().connect_accepted_socket(
        lambda: Counting(silence), sock=listener_side
    )
    assert isinstance(transport, asyncio.Transport)
    return device, transport, reader


def test_only_the_signature_is_read_and_the_rest_stays_for_the_transport() -> None:
    async def scenario() -> None:
        device, transport, reader = await pair(silence=5)
        banner = b"SSH-2.0-OpenSSH_9.6 Debian\r\n" + b"x" * 5000
        device.sendall(banner)
        kind, data = await reader.done
        # One recv_into of the detector's buffer: never more than the longest signature.
        assert kind == SSH and data == banner[:MAX_DETECT_BYTES]
        await asyncio.sleep(0.1)  # paused: nothing more is read while nobody has taken over
        assert reader.received == MAX_DETECT_BYTES
        rest = Rest()
        transport.set_protocol(rest)
        transport.resume_reading()
        while len(rest.data) < len(banner) - len(data):
            rest.got.clear()
            await rest.got.wait()
        assert data + rest.data == banner
        transport.close()
        device.close()

    run(scenario)


def test_bytes_one_at_a_time_slower_than_the_silence_still_decide() -> None:
    async def scenario() -> None:
        device, transport, reader = await pair(silence=0.2)
        for byte in b"MSG-ID:":
            device.send(bytes([byte]))
            await asyncio.sleep(0.3)  # each pause longer than the silence: only no byte at all means TLS
        kind, data = await reader.done
        assert (kind, data) == (OUTBOUND_SSH, b"MSG-ID:")
        assert reader.calls == len(b"MSG-ID:")
        transport.close()
        device.close()

    run(scenario)


def test_silence_means_a_tls_device() -> None:
    async def scenario() -> None:
        device, transport, reader = await pair(silence=0.3)
        started = time.monotonic()
        kind, data = await reader.done
        assert (kind, data) == (TLS, b"")
        assert time.monotonic() - started >= 0.25
        # A byte arriving now is not read by the detector (reading paused for the handshake).
        device.send(b"x")
        await asyncio.sleep(0.1)
        assert reader.received == 0
        transport.close()
        device.close()

    run(scenario)


def test_garbage_is_refused_at_the_first_byte_that_fits_no_signature() -> None:
    async def scenario() -> None:
        device, transport, reader = await pair(silence=5)
        device.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(UnknownProtocolError, match="b'G"):
            await reader.done
        assert reader.received <= MAX_DETECT_BYTES
        transport.close()
        device.close()

    run(scenario)


def test_a_stalled_partial_signature_costs_no_cpu_and_stays_undecided() -> None:
    async def scenario() -> None:
        device, transport, reader = await pair(silence=0.1)
        device.send(b"SS")
        while reader.received < 2:
            await asyncio.sleep(0.01)
        cpu = time.process_time()
        await asyncio.sleep(1.0)  # the silence passes: with bytes read it does not mean TLS
        spent = time.process_time() - cpu
        assert not reader.done.done()
        assert reader.calls == 1  # the loop called it once, for the bytes; no polling since
        assert spent < 0.1, "a stalled peer cost %.3f s of CPU in 1 s" % spent
        transport.close()
        device.close()

    run(scenario)


def test_a_peer_that_closes_before_deciding_is_a_lost_connection() -> None:
    async def scenario() -> None:
        device, transport, reader = await pair(silence=5)
        device.send(b"SSH")
        device.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionResetError, match="after 3 byte"):
            await reader.done
        transport.close()
        device.close()

    run(scenario)


# -- SinglePortTransport: detection, then the hand-over ---------------------------------------


def tcp_pair() -> Tuple[socket.socket, socket.socket]:
    """(the listener's accepted socket, the device's): TCP on loopback, as a call home is (the
    listener sets TCP keepalive options a socketpair does not have)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        device = socket.create_connection(server.getsockname())
        accepted, _addr = server.accept()
    return accepted, device


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
    def __init__(self) -> None:
        self.failures: List[HandshakeFailure] = []
        self.failed = asyncio.Event()
        self.ready: "asyncio.Queue[HeldSession]" = asyncio.Queue()

    def ssh_host_key(self, key: Any, *, peer: str, device_id: str) -> None:
        raise AssertionError("not SSH")

    def tls_certificate(self, chain: Sequence[bytes], *, peer: str) -> Optional[VerifiedDevice]:
        return VerifiedDevice(device="dev1", fingerprint=cert_fingerprint_of_der(chain[0]))

    def handshake_failed(self, failure: HandshakeFailure) -> None:
        self.failures.append(failure)
        self.failed.set()

    def session_ready(self, held: HeldSession, *, started: float, auth: str) -> None:
        self.ready.put_nowait(held)

    def spawn(self, awaitable: Awaitable[Any]) -> None:
        asyncio.ensure_future(awaitable)


class FakeSSH:
    """SSHTransport's side of the hand-over: the 'client connection' records what it gets."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.conns: List[Rest] = []

    def connection(self, loop: Any, device_id: str, **kwargs: Any) -> Rest:
        conn = Rest()
        self.conns.append(conn)
        return conn


class FakeOutbound:
    def __init__(self, events: Events) -> None:
        self.ssh = FakeSSH(events)
        self.taken: List[Tuple[str, bytes]] = []

    async def takeover(self, transport: asyncio.Transport, peer: str, data: bytes) -> None:
        self.taken.append((peer, data))
        transport.close()


class FakeRestconf:
    """RestconfTransport's side: the ALPN context, and serve() records the link it gets."""

    def __init__(self, cfg: ListenerConfig) -> None:
        self.context = restconf_client_context(cfg.tls.client_cert, cfg.tls.client_key)
        self.links: "asyncio.Queue[Tuple[TLSLink, Optional[str]]]" = asyncio.Queue()

    async def serve(self, peer: str, started: float, connect: Any, *, refuse: Any = None) -> None:
        link = await connect()
        self.links.put_nowait((link, refuse("dev1")))
        link.tls.close()


class Pki:
    def __init__(self, tmp: Path) -> None:
        ca = trustme.CA()
        listener = ca.issue_cert("listener.example.net")
        self.cert, self.key = tmp / "listener.crt", tmp / "listener.key"
        listener.cert_chain_pems[0].write_to_path(str(self.cert))
        listener.private_key_pem.write_to_path(str(self.key))
        self.device = ca.issue_cert("dev1.example.net")

    def device_context(self, alpn: Optional[List[str]] = None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.device.configure_cert(ctx)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


class Port:
    """A SinglePortTransport on a loopback port, with the real TLSTransport and fakes."""

    def __init__(self, tmp: Path, *, tls: bool = True, pins: Optional[dict] = None, silence: float = 0.3) -> None:
        self.pki = Pki(tmp)
        self.cfg = ListenerConfig(
            home=str(tmp),
            tls=TLSOptions(client_cert=str(self.pki.cert), client_key=str(self.pki.key)) if tls else TLSOptions(),
            handshake_timeout=10.0,
            callhome_silence=silence,
            callhome_detect_timeout=1.5,
            callhome_transports=pins or {},
        )
        self.slots = Slots()
        self.events = Events()
        self.outbound = FakeOutbound(self.events)
        self.tls = TLSTransport(self.cfg, admission=self.slots, events=self.events) if tls else None
        self.restconf = FakeRestconf(self.cfg) if tls else None
        self.port = SinglePortTransport(
            self.cfg,
            admission=self.slots,
            events=self.events,
            outbound_ssh=self.outbound,  # type: ignore[arg-type]
            tls=self.tls,
            restconf=self.restconf,  # type: ignore[arg-type]
        )
        self.tasks: List["asyncio.Task[None]"] = []

    async def dial(self) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The device's end of a connection the port is handling."""
        listener_side, device = tcp_pair()
        listener_side.setblocking(False)
        self.tasks.append(asyncio.ensure_future(self.port.handle(listener_side, ("127.0.0.1", 40000))))
        return await asyncio.open_connection(sock=device)

    async def settle(self) -> None:
        await asyncio.gather(*self.tasks)


def test_ssh_goes_to_the_ssh_client_with_every_byte(tmp_path: Path) -> None:
    async def scenario() -> None:
        p = Port(tmp_path)
        reader, writer = await p.dial()
        writer.write(b"SSH-2.0-libssh_0.10.6\r\n" + b"k" * 3000)
        await writer.drain()
        await p.settle()
        conn = p.outbound.ssh.conns[0]
        sent = b"SSH-2.0-libssh_0.10.6\r\n" + b"k" * 3000
        while len(conn.data) < len(sent):
            conn.got.clear()
            await conn.got.wait()
        assert conn.data == sent  # the detector's bytes first (start_ssh), then the socket's
        assert p.port.detected[SSH] == 1 and p.slots.taken == 0 and not p.events.failures
        writer.close()

    run(scenario)


def test_outbound_ssh_goes_to_the_preamble_reader_with_the_bytes_read(tmp_path: Path) -> None:
    async def scenario() -> None:
        p = Port(tmp_path)
        reader, writer = await p.dial()
        writer.write(b"MSG-ID: DEVICE-CONN-INFO\r\n")
        await p.settle()
        assert p.outbound.taken == [("127.0.0.1:40000", b"MSG-ID: D")]  # what was read, for the preamble reader
        assert p.port.detected[OUTBOUND_SSH] == 1 and p.slots.taken == 0
        writer.close()

    run(scenario)


@pytest.mark.parametrize(
    "first, reason",
    [(b"GET / HTTP/1.1\r\n", "unknown-protocol"), (b"SSH-2", "timeout"), (b"\x16\x03\x01", "unknown-protocol")],
)
def test_garbage_and_a_stalled_signature_are_refused_and_reported(tmp_path: Path, first: bytes, reason: str) -> None:
    async def scenario() -> None:
        p = Port(tmp_path)
        reader, writer = await p.dial()
        writer.write(first)
        await p.settle()
        try:
            assert await reader.read() == b""  # closed...
        except ConnectionResetError:
            pass  # ...or aborted
        [failure] = p.events.failures
        assert (failure.transport, failure.reason, failure.device) == ("callhome", reason, "")
        assert repr(first[:MAX_DETECT_BYTES])[2:6] in failure.message
        assert p.slots.taken == 0 and p.port.pending == 0 and sum(p.port.detected.values()) == 0
        writer.close()

    run(scenario)


def test_silence_without_tls_configured_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        p = Port(tmp_path, tls=False)
        reader, writer = await p.dial()
        await p.settle()
        [failure] = p.events.failures
        assert (failure.transport, failure.reason) == ("callhome", "tls-not-configured")
        assert "tls.client_cert" in failure.message
        writer.close()

    run(scenario)


async def tls_device(p: Port, alpn: Optional[List[str]]) -> Tuple[ssl.SSLSocket, float]:
    """A TLS device (the TLS *server* on the connection it dialled) calling the port: silent
    until the listener's ClientHello; the handshake runs in a thread, blocking as a device's."""
    listener_side, device = tcp_pair()
    listener_side.setblocking(False)
    device.settimeout(10)
    started = time.monotonic()
    p.tasks.append(asyncio.ensure_future(p.port.handle(listener_side, ("127.0.0.1", 40001))))
    tls = await asyncio.to_thread(p.pki.device_context(alpn).wrap_socket, device, server_side=True)
    return tls, time.monotonic() - started


def test_silence_then_one_handshake_without_alpn_is_netconf_over_tls(tmp_path: Path) -> None:
    async def scenario() -> None:
        p = Port(tmp_path, silence=0.3)
        tls, elapsed = await tls_device(p, None)
        assert elapsed >= 0.25  # the ClientHello came after the silence
        assert tls.selected_alpn_protocol() is None
        got = b""
        while EOM not in got:
            got += await asyncio.to_thread(tls.recv, 65536)
        assert b"<hello" in got
        await asyncio.to_thread(tls.sendall, HELLO + EOM)
        held = await asyncio.wait_for(p.events.ready.get(), 10)
        assert held.transport == "tls" and held.device == "dev1"
        assert p.port.detected[TLS] == 1 and p.slots.taken == 0 and p.tls is not None and p.tls.pending == 0
        held.close("test over")
        await p.settle()
        tls.close()

    run(scenario)


def test_alpn_chosen_means_restconf_on_the_same_handshake(tmp_path: Path) -> None:
    async def scenario() -> None:
        p = Port(tmp_path, silence=0.2)
        tls, _elapsed = await tls_device(p, ["h2", "http/1.1"])
        assert p.restconf is not None
        link, refused = await asyncio.wait_for(p.restconf.links.get(), 10)
        assert link.alpn == "h2" and link.chain and refused is None
        assert p.port.detected == {"ssh": 0, "outbound-ssh": 0, "tls": 0, "restconf": 1}
        await p.settle()
        tls.close()
        tls, _elapsed = await tls_device(p, ["http/1.1"])
        link, refused = await asyncio.wait_for(p.restconf.links.get(), 10)
        assert link.alpn == "http/1.1"
        await p.settle()
        assert p.slots.taken == 0
        tls.close()

    run(scenario)


def test_a_pinned_device_that_negotiated_the_other_protocol_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        p = Port(tmp_path, silence=0.2, pins={"dev1": "tls"})
        tls, _elapsed = await tls_device(p, ["h2"])
        assert p.restconf is not None
        _link, refused = await asyncio.wait_for(p.restconf.links.get(), 10)
        assert refused is not None and "pinned to NETCONF over TLS" in refused and "'h2'" in refused
        tls.close()
        await p.settle()

        # Pinned to RESTCONF, no ALPN: the real NETCONF-over-TLS path refuses it after the verdict.
        (tmp_path / "b").mkdir()
        p2 = Port(tmp_path / "b", silence=0.2, pins={"dev1": "restconf"})
        tls, _elapsed = await tls_device(p2, None)
        await asyncio.wait_for(p2.events.failed.wait(), 10)
        [failure] = p2.events.failures
        assert (failure.transport, failure.reason, failure.device) == ("tls", "transport-pinned", "dev1")
        assert "pinned to RESTCONF" in failure.message and "no ALPN" in failure.message
        assert p2.events.ready.empty()
        await p2.settle()
        tls.close()

    run(scenario)


def test_an_ssh_banner_after_the_silence_is_a_slow_ssh_banner_not_garbage(tmp_path: Path) -> None:
    async def scenario() -> None:
        p = Port(tmp_path, silence=0.2)
        reader, writer = await p.dial()
        hello = await reader.read(5)  # silence: the listener starts TLS
        assert hello[:1] == b"\x16"  # a TLS handshake record: our ClientHello
        writer.write(b"SSH-2.0-SlowDevice\r\n")  # the banner, late
        await p.settle()
        [failure] = p.events.failures
        assert (failure.transport, failure.reason) == ("tls", "slow-ssh-banner")
        assert "SSH banner" in failure.message and "callhome_silence (0.2 s)" in failure.message
        writer.close()

    run(scenario)


def test_an_ssh_device_on_the_tls_port_is_named(tmp_path: Path) -> None:
    """start_tls, shared with 4335: an SSH banner in answer to the ClientHello says so."""

    async def scenario() -> None:
        p = Port(tmp_path)
        assert p.tls is not None
        listener_side, device = tcp_pair()
        listener_side.setblocking(False)
        task = asyncio.ensure_future(p.tls.handle(listener_side, ("127.0.0.1", 40002)))
        reader, writer = await asyncio.open_connection(sock=device)
        await reader.read(5)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await task
        [failure] = p.events.failures
        assert (failure.transport, failure.reason) == ("tls", "ssh-banner")
        assert "b'SSH-2.0-'" in failure.message and "SSH device where TLS was expected" in failure.message
        writer.close()

    run(scenario)


# -- the options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"callhome_binds": ["0.0.0.0"]}, "needs a port"),
        ({"callhome_binds": ["[::]"]}, "needs a port"),
        ({"callhome_binds": ["0.0.0.0:99999"]}, "port must be 0-65535"),
        ({"callhome_silence": 0}, "callhome_silence must be positive"),
        ({"callhome_silence": 12, "callhome_detect_timeout": 10}, "below callhome_detect_timeout"),
        ({"callhome_transports": {"r1": "ssh"}}, "callhome_transports.r1: 'ssh' is not a TLS call-home transport"),
        ({"callhome_bind": ["0.0.0.0:4330"]}, "unknown option"),
    ],
)
def test_bad_single_port_options_stop_the_listener_with_their_name(tmp_path: Path, overrides: dict, error: str) -> None:
    from netconf_callhome.config import load_config
    from netconf_callhome.errors import ConfigError

    with pytest.raises(ConfigError, match=error):
        load_config(None, dict({"home": str(tmp_path)}, **overrides))


def test_the_single_port_is_off_by_default_and_binds_name_their_port(tmp_path: Path) -> None:
    from netconf_callhome.config import load_config

    assert load_config(None, {"home": str(tmp_path)}).callhome_binds == []
    cfg = load_config(None, {"home": str(tmp_path), "callhome_binds": ["0.0.0.0:4330", "[::]:4330", ":0"]})
    assert cfg.callhome_binds == ["0.0.0.0:4330", "[::]:4330", ":0"]
    assert (cfg.callhome_silence, cfg.callhome_detect_timeout, cfg.callhome_transports) == (1.0, 10.0, {})

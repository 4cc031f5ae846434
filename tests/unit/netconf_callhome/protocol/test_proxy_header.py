# SPDX-License-Identifier: GPL-3.0-or-later
"""The PROXY protocol step of the accept path (protocol.proxy_header).

The parsers (v1 text, v2 binary: every family and command, TLVs, CRC32C, malformed, oversized,
truncated input), the exact reader on real sockets (not one byte past the header, slow and
silent senders bounded by the timeout without spinning), and the gate: a balancer's header
makes the device the peer, a LOCAL header is a quiet health check, a header from any other
address is refused and reported."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import time
from typing import Any, Awaitable, Callable, List, Optional, Tuple

import pytest

from netconf_callhome.protocol.events import HandshakeFailure
from netconf_callhome.protocol.proxy_header import (
    V1_MAX_BYTES,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxiedSocket,
    ProxyHeaderError,
    ProxyProtocolGate,
    crc32c,
    parse_v1,
    parse_v2,
    read_proxy_header,
    starts_like_proxy_header,
)

pytestmark = pytest.mark.timeout(60)


def v2(
    command: int = 1,
    family: int = 1,
    protocol: int = 1,
    addresses: bytes = b"",
    tlvs: bytes = b"",
    version: int = 2,
    length: Optional[int] = None,
) -> bytes:
    payload = addresses + tlvs
    size = len(payload) if length is None else length
    return V2_SIGNATURE + bytes([(version << 4) | command, (family << 4) | protocol]) + struct.pack("!H", size) + payload


def inet(src: str = "192.0.2.7", sport: int = 40001, dst: str = "198.51.100.1", dport: int = 4334) -> bytes:
    return ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + struct.pack("!HH", sport, dport)


def split(data: bytes) -> Tuple[bytes, bytes]:
    return data[:16], data[16:]


# -- v1 ----------------------------------------------------------------------------------------


def test_v1_tcp4_and_tcp6() -> None:
    line = b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 4334\r\n"
    header = parse_v1(line)
    assert (header.version, header.family, header.source, header.destination) == (
        1,
        "tcp4",
        ("192.0.2.7", 40001),
        ("198.51.100.1", 4334),
    )
    assert header.length == len(line) and not header.health_check
    header = parse_v1(b"PROXY TCP6 2001:db8::7 2001:db8::1 40001 4334\r\n")
    assert header.source == ("2001:db8::7", 40001)
    # an IPv4 client seen through a v6 socket: one notation for the device
    assert parse_v1(b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n").source == ("192.0.2.7", 1)


def test_v1_unknown_is_a_health_check() -> None:
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
        header = parse_v1(line)
        assert header.health_check and header.source is None


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 4334\n",  # no CR
        b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 4334",  # no line end
        b"PROXY  TCP4 192.0.2.7 198.51.100.1 40001 4334\r\n",  # double space
        b"PROXY TCP4 192.0.2.7 198.51.100.1 +80 4334\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 080 4334\r\n",  # leading zero
        b"PROXY TCP4 192.0.2.7 198.51.100.1 70000 4334\r\n",
        b"PROXY TCP4 192.0.2.999 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",  # v6 address in a TCP4 line
        b"PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n",
        b"PROXY tcp4 192.0.2.7 198.51.100.1 1 2\r\n",
        b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3\r\n",
        b"PROXY UNKNOWN\x00\r\n",
        b"proxy TCP4 192.0.2.7 198.51.100.1 1 2\r\n",
    ],
)
def test_v1_malformed(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError) as info:
        parse_v1(line)
    assert info.value.reason == "proxy-malformed"


def test_v1_oversized() -> None:
    line = b"PROXY UNKNOWN " + b"x" * V1_MAX_BYTES + b"\r\n"
    with pytest.raises(ProxyHeaderError) as info:
        parse_v1(line)
    assert info.value.reason == "proxy-oversized"


# -- v2 ----------------------------------------------------------------------------------------


def test_v2_tcp4_tcp6_and_mapped() -> None:
    header = parse_v2(*split(v2(addresses=inet())))
    assert (header.version, header.command, header.family) == (2, "proxy", "tcp4")
    assert header.source == ("192.0.2.7", 40001) and header.destination == ("198.51.100.1", 4334)
    assert header.length == 16 + 12
    header = parse_v2(*split(v2(family=2, addresses=inet("2001:db8::7", 5, "2001:db8::1", 6))))
    assert header.source == ("2001:db8::7", 5)
    header = parse_v2(*split(v2(family=2, addresses=inet("::ffff:192.0.2.9", 5, "::1", 6))))
    assert header.source == ("192.0.2.9", 5)


def test_v2_local_unspec_unix() -> None:
    local = parse_v2(*split(v2(command=0, family=0, protocol=0)))
    assert local.health_check and local.source is None
    # LOCAL ignores whatever address block comes with it
    assert parse_v2(*split(v2(command=0, addresses=inet()))).health_check
    unspec = parse_v2(*split(v2(family=0, protocol=0)))
    assert unspec.command == "proxy" and unspec.source is None and not unspec.health_check
    unix = parse_v2(*split(v2(family=3, addresses=b"/run/a".ljust(108, b"\0") + b"/run/b".ljust(108, b"\0"))))
    assert unix.family == "unix" and unix.source is None and not unix.health_check


def test_v2_tlvs_and_crc32c() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    tlvs = bytes([0x05]) + struct.pack("!H", 3) + b"abc"  # PP2_TYPE_UNIQUE_ID
    assert parse_v2(*split(v2(addresses=inet(), tlvs=tlvs))).source == ("192.0.2.7", 40001)
    zeroed = v2(addresses=inet(), tlvs=tlvs + bytes([0x03]) + struct.pack("!H", 4) + b"\0\0\0\0")
    good = zeroed[:-4] + struct.pack("!I", crc32c(zeroed))
    assert parse_v2(*split(good)).source == ("192.0.2.7", 40001)
    bad = zeroed[:-4] + struct.pack("!I", crc32c(zeroed) ^ 1)
    with pytest.raises(ProxyHeaderError, match="CRC32C"):
        parse_v2(*split(bad))


@pytest.mark.parametrize(
    "data, reason",
    [
        (v2(version=1, addresses=inet()), "proxy-malformed"),
        (v2(command=2, addresses=inet()), "proxy-malformed"),
        (v2(family=4, addresses=inet()), "proxy-malformed"),
        (v2(protocol=3, addresses=inet()), "proxy-malformed"),
        (v2(protocol=2, addresses=inet()), "proxy-malformed"),  # UDP
        (v2(addresses=inet()[:8]), "proxy-malformed"),  # short IPv4 block
        (v2(family=2, addresses=inet()), "proxy-malformed"),  # IPv4 block for TCP6
        (v2(addresses=inet(), tlvs=b"\x05\x00"), "proxy-malformed"),  # TLV header cut
        (v2(addresses=inet(), tlvs=b"\x05\x00\x09abc"), "proxy-malformed"),  # TLV past the end
        (v2(addresses=inet(), tlvs=b"\x03\x00\x02ab"), "proxy-malformed"),  # CRC of 2 bytes
        (v2(addresses=inet(), length=V2_MAX_PAYLOAD + 1), "proxy-oversized"),
        (b"\r\n\r\n\x00\r\nQUIT!" + v2(addresses=inet())[12:], "proxy-malformed"),
    ],
)
def test_v2_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError) as info:
        parse_v2(*split(data))
    assert info.value.reason == reason


def test_v2_truncated_block() -> None:
    head, payload = split(v2(addresses=inet()))
    with pytest.raises(ProxyHeaderError) as info:
        parse_v2(head, payload[:-1])
    assert info.value.reason == "proxy-truncated"


def test_signature_sniffing() -> None:
    assert starts_like_proxy_header(b"PROXY TCP4 ")
    assert starts_like_proxy_header(v2(addresses=inet()))
    assert not starts_like_proxy_header(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert not starts_like_proxy_header(b"\x16\x03\x01")
    assert not starts_like_proxy_header(b"PROX")  # not decided: the transport judges it


# -- the reader on real sockets ----------------------------------------------------------------


def run(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro_fn()

    return asyncio.run(bounded())


def pair() -> Tuple[socket.socket, socket.socket]:
    server, client = socket.socketpair()
    server.setblocking(False)
    return server, client


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 4334\r\n",
        v2(addresses=inet()),
        v2(addresses=inet(), tlvs=b"\x05\x00\x03abc"),
    ],
)
def test_reader_takes_the_header_and_not_one_byte_more(header: bytes) -> None:
    server, client = pair()
    # the device's first bytes in the same segment (the SSH banner; a CR LF in it too)
    client.sendall(header + b"SSH-2.0-device\r\nrest")

    async def main() -> Any:
        return await read_proxy_header(server, timeout=5)

    result = run(main)
    assert result.source == ("192.0.2.7", 40001) and result.length == len(header)
    server.setblocking(True)
    assert server.recv(100) == b"SSH-2.0-device\r\nrest"
    server.close()
    client.close()


@pytest.mark.parametrize(
    "header", [b"PROXY TCP6 2001:db8::7 2001:db8::1 40001 4334\r\n", v2(family=2, addresses=inet("2001:db8::7", 40001, "2001:db8::1", 4334))]
)
def test_reader_slow_sender_within_the_bound(header: bytes) -> None:
    server, client = pair()

    async def main() -> Any:
        async def trickle() -> None:
            for i in range(len(header)):
                client.send(header[i : i + 1])
                await asyncio.sleep(0.005)
            client.send(b"after")

        feeder = asyncio.ensure_future(trickle())
        result = await read_proxy_header(server, timeout=10)
        await feeder
        return result

    assert run(main).source == ("2001:db8::7", 40001)
    server.setblocking(True)
    assert server.recv(10) == b"after"
    server.close()
    client.close()


@pytest.mark.parametrize("partial", [b"", b"PROXY TCP4 192.0", v2(addresses=inet())[:20], V2_SIGNATURE[:5]])
def test_reader_slow_or_silent_sender_times_out_without_spinning(partial: bytes) -> None:
    server, client = pair()
    client.sendall(partial)

    async def main() -> Tuple[str, float, float]:
        cpu, wall = time.process_time(), time.monotonic()
        with pytest.raises(ProxyHeaderError) as info:
            await read_proxy_header(server, timeout=0.5)
        return info.value.reason, time.process_time() - cpu, time.monotonic() - wall

    reason, cpu, wall = run(main)
    assert reason == "proxy-timeout"
    assert 0.45 <= wall < 2.0
    assert cpu < 0.1, "the wait must block, not poll (%.3f s CPU in %.2f s)" % (cpu, wall)
    server.close()
    client.close()


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "proxy-truncated"),
        (b"PROXY TCP4 192.0.2.7", "proxy-truncated"),
        (v2(addresses=inet())[:10], "proxy-truncated"),
        (v2(addresses=inet())[:20], "proxy-truncated"),
        (b"SSH-2.0-device\r\n", "proxy-missing"),
        (b"PUT / HTTP/1.1\r\n", "proxy-missing"),
        (b"\r\n\r\nhello", "proxy-missing"),
        (b"PROXY UNKNOWN " + b"x" * 200, "proxy-oversized"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "proxy-malformed"),
        (v2(addresses=inet(), length=60000) + b"x" * 100, "proxy-oversized"),
    ],
)
def test_reader_refuses(data: bytes, reason: str) -> None:
    server, client = pair()
    client.sendall(data)
    client.shutdown(socket.SHUT_WR)

    async def main() -> str:
        with pytest.raises(ProxyHeaderError) as info:
            await read_proxy_header(server, timeout=5)
        return info.value.reason

    assert run(main) == reason
    server.close()
    client.close()


# -- the gate ----------------------------------------------------------------------------------


class FakeAdmission:
    def __init__(self, blocked: Tuple[str, ...] = (), slots: int = 10) -> None:
        self.blocked = blocked
        self.asked: List[str] = []
        self.slots = slots
        self.in_progress = 0
        self.acquired: List[str] = []

    def is_blocked(self, peer_ip: str) -> bool:
        self.asked.append(peer_ip)
        return peer_ip in self.blocked

    def acquire(self, peer: str) -> bool:
        if self.in_progress >= self.slots:
            return False
        self.in_progress += 1
        self.acquired.append(peer)
        return True

    def release(self) -> None:
        self.in_progress -= 1


class FakeEvents:
    def __init__(self) -> None:
        self.failures: List[HandshakeFailure] = []

    def handshake_failed(self, failure: HandshakeFailure) -> None:
        self.failures.append(failure)


def gate_run(
    networks: List[str], data: bytes, kind: str = "tls", blocked: Tuple[str, ...] = (), close: bool = False, slots: int = 10
) -> Tuple[ProxyProtocolGate, List[Tuple[socket.socket, Tuple[Any, ...]]], FakeEvents, FakeAdmission, List[str]]:
    handled: List[Tuple[socket.socket, Tuple[Any, ...]]] = []
    events, admission = FakeEvents(), FakeAdmission(blocked, slots)
    refused: List[str] = []
    gate = ProxyProtocolGate(
        networks, timeout=0.5, admission=admission, events=events, on_refused=refused.append  # type: ignore[arg-type]
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        client = socket.create_connection(lsock.getsockname())
        client.sendall(data)
        if close:
            client.shutdown(socket.SHUT_WR)
        sock, addr = await loop.sock_accept(lsock)

        async def handler(s: socket.socket, a: Tuple[Any, ...]) -> None:
            assert admission.in_progress == 0, "the PROXY step's slot is released before the transport runs"
            handled.append((s, a))

        await gate.accept(sock, addr, handler, kind)
        client.close()
        lsock.close()

    run(main)
    return gate, handled, events, admission, refused


def test_gate_balancer_header_makes_the_device_the_peer() -> None:
    gate, handled, events, admission, refused = gate_run(["127.0.0.0/8"], v2(addresses=inet()) + b"SSH-2.0-x\r\n")
    assert len(handled) == 1 and not events.failures and not refused
    sock, addr = handled[0]
    assert addr == ("192.0.2.7", 40001)
    assert isinstance(sock, ProxiedSocket) and sock.getpeername() == ("192.0.2.7", 40001)
    assert sock.balancer[0] == "127.0.0.1"
    assert admission.asked == ["192.0.2.7"]  # admission judges the device, never the balancer
    sock.close()


def test_gate_ssh_port_leaves_admission_to_the_ssh_client() -> None:
    gate, handled, events, admission, refused = gate_run(["127.0.0.1"], v2(addresses=inet()), kind="ssh")
    assert len(handled) == 1 and admission.asked == []
    handled[0][0].close()


def test_gate_blocked_device_behind_the_balancer() -> None:
    gate, handled, events, admission, refused = gate_run(["127.0.0.1/32"], v2(addresses=inet()), blocked=("192.0.2.7",))
    assert handled == [] and admission.asked == ["192.0.2.7"]


def test_gate_header_naming_the_balancers_own_connection_is_a_health_check() -> None:
    """HAProxy's v1 health check (send-proxy + check-send-proxy) names its own connection."""
    handled: List[Any] = []
    events, admission = FakeEvents(), FakeAdmission()
    gate = ProxyProtocolGate(["127.0.0.1/32"], timeout=1, admission=admission, events=events)  # type: ignore[arg-type]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        client = socket.create_connection(lsock.getsockname())
        own_port = client.getsockname()[1]
        client.sendall(b"PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\n" % (own_port, lsock.getsockname()[1]))
        sock, addr = await loop.sock_accept(lsock)

        async def handler(s: socket.socket, a: Tuple[Any, ...]) -> None:
            handled.append(a)

        await gate.accept(sock, addr, handler, "ssh")
        # the same address with another port is a device on the balancer's host: handed on
        other = socket.create_connection(lsock.getsockname())
        other.sendall(b"PROXY TCP4 127.0.0.1 127.0.0.1 %d 4334\r\n" % ((own_port % 60000) + 1))
        sock, addr = await loop.sock_accept(lsock)
        await gate.accept(sock, addr, handler, "ssh")
        for s in (client, other, lsock):
            s.close()

    run(main)
    assert gate.health_checks == 1 and len(handled) == 1 and events.failures == []


def test_gate_health_check_closes_quietly() -> None:
    for data in (v2(command=0, family=0, protocol=0), b"PROXY UNKNOWN\r\n"):
        gate, handled, events, admission, refused = gate_run(["127.0.0.1/32"], data)
        assert handled == [] and events.failures == [] and refused == [] and gate.health_checks == 1


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"SSH-2.0-device\r\n", "proxy-missing"),
        (b"", "proxy-timeout"),
        (v2(family=0, protocol=0), "proxy-no-address"),
        (v2(family=3, addresses=b"\0" * 216), "proxy-no-address"),
    ],
)
def test_gate_balancer_without_a_usable_header_is_refused(data: bytes, reason: str) -> None:
    gate, handled, events, admission, refused = gate_run(["127.0.0.1/32"], data)
    assert handled == [] and refused == [reason] and gate.refused == {reason: 1}
    # counted, but never against the balancer's address (that would block every device behind it)
    assert events.failures == [] and admission.asked == []


@pytest.mark.parametrize("kind", ["ssh", "tls", "callhome"])
@pytest.mark.parametrize("data", [v2(addresses=inet()), b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\n"])
def test_gate_header_from_elsewhere_is_refused(kind: str, data: bytes) -> None:
    gate, handled, events, admission, refused = gate_run(["10.9.9.0/24"], data, kind=kind)
    assert handled == []
    assert [(f.reason, f.peer.startswith("127.0.0.1:")) for f in events.failures] == [("proxy-header-untrusted", True)]
    assert gate.refused == {"proxy-header-untrusted": 1}


def test_gate_direct_device_passes_unchanged() -> None:
    gate, handled, events, admission, refused = gate_run(["10.9.9.0/24"], b"SSH-2.0-device\r\n", kind="ssh")
    assert len(handled) == 1 and not isinstance(handled[0][0], ProxiedSocket)
    assert handled[0][1][0] == "127.0.0.1" and events.failures == []
    handled[0][0].close()


def test_gate_trusts() -> None:
    gate = ProxyProtocolGate(
        ["10.0.0.0/8", "2001:db8::/32", "192.0.2.5"], timeout=1, admission=FakeAdmission(), events=FakeEvents()  # type: ignore[arg-type]
    )
    assert gate.enabled
    assert gate.trusts("10.1.2.3") and gate.trusts("::ffff:10.1.2.3") and gate.trusts("2001:db8::1")
    assert gate.trusts("192.0.2.5") and not gate.trusts("192.0.2.6") and not gate.trusts("not-an-ip")
    assert not ProxyProtocolGate([], timeout=1, admission=FakeAdmission(), events=FakeEvents()).enabled  # type: ignore[arg-type]


def test_gate_waits_hold_a_handshake_slot() -> None:
    """A balancer's header, and a direct peer's first bytes on a port where the device speaks
    first, are waited for under a handshake slot (max_handshakes bounds a flood of silent
    connections); none free: closed at once, nothing read."""
    gate, handled, events, admission, refused = gate_run(["127.0.0.1/32"], v2(addresses=inet()))
    assert len(handled) == 1 and admission.acquired and admission.acquired[0].startswith("127.0.0.1:")
    assert admission.in_progress == 0
    handled[0][0].close()
    gate, handled, events, admission, refused = gate_run(["10.9.9.0/24"], b"SSH-2.0-device\r\n", kind="ssh")
    assert len(handled) == 1 and len(admission.acquired) == 1 and admission.in_progress == 0
    handled[0][0].close()
    for networks, kind in ((["127.0.0.1/32"], "tls"), (["10.9.9.0/24"], "outbound_ssh")):
        gate, handled, events, admission, refused = gate_run(networks, v2(addresses=inet()), kind=kind, slots=0)
        assert handled == [] and events.failures == [] and refused == []
    # where the listener speaks first, a direct peer is not waited for: no slot taken here
    gate, handled, events, admission, refused = gate_run(["10.9.9.0/24"], b"", kind="tls", slots=0)
    assert len(handled) == 1 and admission.acquired == []
    handled[0][0].close()


def test_options_are_validated(tmp_path: Any) -> None:
    from netconf_callhome.config import load_config
    from netconf_callhome.errors import ConfigError

    cfg = load_config(overrides={"home": str(tmp_path), "proxy_protocol_from": "192.0.2.5"})
    assert cfg.proxy_protocol_from == ["192.0.2.5"] and cfg.proxy_protocol_timeout == 5.0
    assert load_config(overrides={"home": str(tmp_path)}).proxy_protocol_from == []  # off by default
    for bad, message in (
        (["10.0.0.1/8"], "has host bits set"),
        (["balancer.example.net"], "is not an address or network"),
        (["192.0.2.0/33"], "is not an address or network"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(overrides={"home": str(tmp_path), "proxy_protocol_from": bad})
    with pytest.raises(ConfigError, match="proxy_protocol_timeout must be positive"):
        load_config(overrides={"home": str(tmp_path), "proxy_protocol_timeout": 0})

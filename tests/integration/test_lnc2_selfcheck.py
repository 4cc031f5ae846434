# SPDX-License-Identifier: GPL-3.0-or-later
"""Self-check of the libnetconf2 test peer (``tests/peers/bin/lnc2-device``).

Why: later integration tests point this device at the project's call-home listener. If the
device itself were broken, those tests would fail for the wrong reason, so this file checks it
against a minimal call-home *client* written right here (asyncssh ``listen_reverse`` for SSH,
Python ``ssl`` in client mode over an accepted TCP socket for TLS), independent of the
project's listener code.

What is checked, per transport: the device calls home, its identity is the expected one (host
key fingerprint / server certificate), the NETCONF ``<hello>`` carries base:1.0 and base:1.1,
``<get-config>`` of running returns the device's data, ``<edit-config>`` changes it,
``<close-session>`` gets ``<ok/>``, and the device calls home again after the client drops
the connection or while the listener is not up yet. Negative cases: a wrong SSH client key and
an untrusted TLS client certificate do not get a session.

Skips (with the reason printed) only if the C peer cannot be built.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncssh
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))
from lnc2_peer import Lnc2Device, SshCallHome  # noqa: E402
from pki import SshKey, TestPki, make_ca, make_client_cert, make_pki, make_ssh_key  # noqa: E402

NS_BASE = "urn:ietf:params:xml:ns:netconf:base:1.0"
CAP_10 = "urn:ietf:params:netconf:base:1.0"
CAP_11 = "urn:ietf:params:netconf:base:1.1"
CAP_NCS = (
    "urn:ietf:params:xml:ns:yang:ietf-netconf-server?module=ietf-netconf-server&amp;revision=2023-12-28"
)
DEVICE = "lnc2-selfcheck"
TIMEOUT = 20.0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """One set of credentials for the module (RSA key generation is slow-ish)."""
    return make_pki(tmp_path_factory.mktemp("pki"), device_name=DEVICE, serial_number="SN-4242")


@pytest.fixture
def started() -> Iterator[list[Lnc2Device]]:
    """Devices a test starts; stopped (and checked for a clean SIGTERM exit) afterwards."""
    devices: list[Lnc2Device] = []
    yield devices
    for dev in devices:
        rc = dev.stop()
        assert rc == 0, f"lnc2-device did not exit cleanly on SIGTERM (rc={rc}):\n{dev.log}"
        assert "lnc2-device: stopped" in dev.log


def free_port() -> int:
    """An unused loopback port (for tests that must start the device before the listener)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- NETCONF framing


class Reader(Protocol):
    """What both asyncssh's SSHReader and asyncio's StreamReader offer."""

    async def read(self, n: int = -1) -> Any: ...


class Writer(Protocol):
    """What both asyncssh's SSHWriter and asyncio's StreamWriter offer."""

    def write(self, data: Any) -> None: ...


class NetconfChannel:
    """Just enough NETCONF framing (RFC 6242): end-of-message until both sides said base:1.1,
    chunked framing afterwards."""

    def __init__(self, reader: Reader, writer: Writer) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = b""
        self.chunked = False

    async def recv(self, timeout: float = TIMEOUT) -> str:
        """Next complete message."""
        return await asyncio.wait_for(self._recv(), timeout)

    async def _recv(self) -> str:
        while True:
            msg = self._parse()
            if msg is not None:
                return msg
            data = await self.reader.read(65536)
            if not data:
                raise EOFError(f"connection closed; unparsed: {self.buf[:200]!r}")
            self.buf += data

    def _parse(self) -> str | None:
        if not self.chunked:
            end = self.buf.find(b"]]>]]>")
            if end < 0:
                return None
            msg, self.buf = self.buf[:end], self.buf[end + 6 :]
            return msg.decode()
        out = b""
        pos = 0
        while True:
            if self.buf[pos : pos + 4] == b"\n##\n":
                self.buf = self.buf[pos + 4 :]
                return out.decode()
            m = re.match(rb"\n#([1-9][0-9]*)\n", self.buf[pos:])
            if not m:
                return None
            size = int(m.group(1))
            start = pos + m.end()
            if len(self.buf) < start + size:
                return None
            out += self.buf[start : start + size]
            pos = start + size

    def send(self, msg: str) -> None:
        data = msg.encode()
        if self.chunked:
            self.writer.write(b"\n#%d\n" % len(data) + data + b"\n##\n")
        else:
            self.writer.write(data + b"]]>]]>")

    async def hello(self, base11: bool = True) -> str:
        """Receive the device's hello, answer with ours; switch framing if both do 1.1."""
        server_hello = await self.recv()
        caps = [CAP_10] + ([CAP_11] if base11 else [])
        self.send(
            f'<hello xmlns="{NS_BASE}"><capabilities>'
            + "".join(f"<capability>{c}</capability>" for c in caps)
            + "</capabilities></hello>"
        )
        self.chunked = base11 and CAP_11 in server_hello
        return server_hello

    async def rpc(self, body: str, message_id: int) -> str:
        """Send one RPC and return its reply, checking the message-id echo."""
        self.send(f'<rpc message-id="{message_id}" xmlns="{NS_BASE}">{body}</rpc>')
        reply = await self.recv()
        assert f'message-id="{message_id}"' in reply, reply
        return reply


@dataclass
class Dialogue:
    """What a standard exchange with the device produced."""

    hello: str
    get_config: str
    get_config_after_edit: str
    edit_reply: str
    unsupported_reply: str
    close_reply: str


async def standard_dialogue(chan: NetconfChannel, base11: bool = True) -> Dialogue:
    """hello, get-config, edit-config, get-config, copy-config (not implemented), close-session."""
    hello = await chan.hello(base11)
    get1 = await chan.rpc("<get-config><source><running/></source></get-config>", 1)
    edit = await chan.rpc(
        "<edit-config><target><running/></target><config>"
        '<device xmlns="urn:netconf-callhome:test-device">'
        "<description>set-by-selfcheck</description>"
        "<interface><name>ge-0/0/7</name><mtu>9000</mtu></interface>"
        "</device></config></edit-config>",
        2,
    )
    get2 = await chan.rpc("<get-config><source><running/></source></get-config>", 3)
    unsupported = await chan.rpc(
        "<copy-config><target><running/></target><source><running/></source></copy-config>", 4
    )
    close = await chan.rpc("<close-session/>", 5)
    return Dialogue(hello, get1, get2, edit, unsupported, close)


def check_dialogue(d: Dialogue, device_name: str) -> None:
    """Assertions shared by the SSH and TLS happy paths."""
    assert d.hello.count("<capability>") >= 2, d.hello
    assert f"<capability>{CAP_10}</capability>" in d.hello
    assert f"<capability>{CAP_11}</capability>" in d.hello
    assert re.search(r"<session-id>\d+</session-id>", d.hello), d.hello
    # advertised by the device itself (it does not load the module), "&" escaped on the wire
    assert f"<capability>{CAP_NCS}</capability>" in d.hello, d.hello
    assert "<rpc-reply" in d.get_config and "<data>" in d.get_config, d.get_config
    assert f"<name>{device_name}</name>" in d.get_config, d.get_config
    assert "set-by-selfcheck" not in d.get_config
    assert "<ok/>" in d.edit_reply, d.edit_reply
    assert "<description>set-by-selfcheck</description>" in d.get_config_after_edit
    assert "<name>ge-0/0/7</name><mtu>9000</mtu>" in d.get_config_after_edit
    assert "<error-tag>operation-not-supported</error-tag>" in d.unsupported_reply
    assert "<rpc-reply" in d.close_reply and "<ok/>" in d.close_reply, d.close_reply


# --------------------------------------------------------------------------- SSH call-home client


@dataclass
class SshListener:
    """A minimal asyncssh call-home listener: accepted connections and errors land in queues."""

    acceptor: asyncssh.SSHAcceptor
    conns: asyncio.Queue[asyncssh.SSHClientConnection]
    errors: asyncio.Queue[Exception]

    @property
    def port(self) -> int:
        return int(self.acceptor.sockets[0].getsockname()[1])


@asynccontextmanager
async def ssh_listener(
    trusted_host_keys: list[SshKey],
    username: str,
    client_key: SshKey | None = None,
    password: str | None = None,
    port: int = 0,
) -> AsyncIterator[SshListener]:
    """listen_reverse on 127.0.0.1 trusting exactly ``trusted_host_keys``."""
    conns: asyncio.Queue[asyncssh.SSHClientConnection] = asyncio.Queue()
    errors: asyncio.Queue[Exception] = asyncio.Queue()
    keys = [asyncssh.read_public_key(k.public_path) for k in trusted_host_keys]
    acceptor = await asyncssh.listen_reverse(
        "127.0.0.1",
        port,
        username=username,
        client_keys=[str(client_key.private_path)] if client_key else None,
        password=password,
        known_hosts=(keys, [], []),
        server_host_key_algs=[alg.decode() for k in keys for alg in k.sig_algorithms],
        preferred_auth="publickey" if client_key else "password",
        agent_path=None,
        acceptor=conns.put_nowait,
        error_handler=lambda _conn, exc: errors.put_nowait(exc),
        login_timeout=TIMEOUT,
    )
    try:
        yield SshListener(acceptor, conns, errors)
    finally:
        acceptor.close()
        # Python 3.12+: asyncio's Server.wait_closed() also waits for the connections it accepted,
        # and the (persistent) device may already have called home again: close what is queued and
        # do not wait for a connection still in its handshake (it ends when the device stops).
        while not conns.empty():
            conns.get_nowait().abort()
        try:
            await asyncio.wait_for(acceptor.wait_closed(), 2)
        except asyncio.TimeoutError:
            pass


async def open_netconf(conn: asyncssh.SSHClientConnection) -> NetconfChannel:
    """Open the ``netconf`` subsystem on an accepted call-home connection."""
    writer, reader, _stderr = await conn.open_session(subsystem="netconf", encoding=None)
    return NetconfChannel(reader, writer)


# --------------------------------------------------------------------------- TLS call-home client


def tls_client_context(
    pki: TestPki, *, pinned: bool = False, client_cert: tuple[Path, Path] | None = None
) -> ssl.SSLContext:
    """Client-side context: verify the device by CA + hostname (CN/SAN = device name), or not
    at all when ``pinned`` (the test then compares the certificate fingerprint itself)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if pinned:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile=str(pki.device_ca.cert_path))
    cert, key = client_cert or (pki.listener_cert.cert_path, pki.listener_cert.key_path)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


@asynccontextmanager
async def tcp_listener(port: int = 0) -> AsyncIterator[socket.socket]:
    """A non-blocking listening socket on 127.0.0.1 (the call-home port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def accept_tls(
    listen_sock: socket.socket, ctx: ssl.SSLContext, server_hostname: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Accept the device's TCP connection, then act as the TLS *client* on it (RFC 8071)."""
    loop = asyncio.get_running_loop()
    conn, _addr = await asyncio.wait_for(loop.sock_accept(listen_sock), TIMEOUT)
    return await asyncio.wait_for(
        asyncio.open_connection(sock=conn, ssl=ctx, server_hostname=server_hostname), TIMEOUT
    )


def peer_cert_fingerprint(writer: asyncio.StreamWriter) -> str:
    """SHA-256 of the DER certificate the device presented, ``AB:CD:..``."""
    import hashlib

    ssl_obj = writer.get_extra_info("ssl_object")
    der = ssl_obj.getpeercert(binary_form=True)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, ssl.SSLError):
        pass


# --------------------------------------------------------------------------- tests: SSH


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa", "rsa"])
def test_ssh_call_home_netconf_session(
    device_binary: Path, pki: TestPki, started: list[Lnc2Device], algorithm: str
) -> None:
    """Each host key format is read by libssh (device) and verified by asyncssh (listener)."""
    host_key = pki.host_keys[algorithm]  # type: ignore[index]

    async def scenario() -> None:
        async with ssh_listener([host_key], "netconf", client_key=pki.listener_ssh_key) as lst:
            dev = Lnc2Device(
                DEVICE,
                ssh=SshCallHome(  # only this one host key
                    host="127.0.0.1",
                    port=lst.port,
                    host_keys=[host_key.private_path],
                    username="netconf",
                    authorized_keys=[pki.listener_ssh_key.public_path],
                ),
            )
            started.append(dev.start())
            conn = await asyncio.wait_for(lst.conns.get(), TIMEOUT)
            async with conn:
                fp = conn.get_server_host_key().get_fingerprint("sha256")
                assert fp == host_key.fingerprint
                chan = await open_netconf(conn)
                dialogue = await standard_dialogue(chan)
                check_dialogue(dialogue, DEVICE)
                m = await dev.await_line(
                    r"ch-ssh session (\d+) established .*user=netconf", TIMEOUT
                )
                await dev.await_line(rf"ch-ssh session {m.group(1)} closed reason=closed", TIMEOUT)
                assert dev.count(r"session \d+ rpc get-config") == 2

    asyncio.run(scenario())


def test_ssh_password_auth(device_binary: Path, pki: TestPki, started: list[Lnc2Device]) -> None:
    """--password without an authorized key: password authentication is what gets in."""

    async def scenario() -> None:
        async with ssh_listener(
            list(pki.host_keys.values()), "operator", password="s3cret-pw"
        ) as lst:
            dev = Lnc2Device.from_pki(
                pki, ssh_port=lst.port, username="operator", password="s3cret-pw", use_key=False
            )
            started.append(dev.start())
            conn = await asyncio.wait_for(lst.conns.get(), TIMEOUT)
            async with conn:
                chan = await open_netconf(conn)
                hello = await chan.hello(base11=False)  # also exercise end-of-message framing
                assert CAP_11 in hello
                reply = await chan.rpc("<get-config><source><running/></source></get-config>", 7)
                assert f"<name>{DEVICE}</name>" in reply
                assert "<ok/>" in await chan.rpc("<close-session/>", 8)
            await dev.await_line(r"ssh password auth for user=operator accepted", TIMEOUT)

    asyncio.run(scenario())


def test_ssh_wrong_client_key_gets_no_session(
    device_binary: Path, pki: TestPki, started: list[Lnc2Device], tmp_path: Path
) -> None:
    """A listener with a key the device does not authorize is refused (and the device keeps
    calling home)."""
    stranger = make_ssh_key(tmp_path, "stranger", "ed25519")

    async def scenario() -> None:
        async with ssh_listener(
            list(pki.host_keys.values()), "netconf", client_key=stranger
        ) as lst:
            dev = Lnc2Device.from_pki(pki, ssh_port=lst.port)
            started.append(dev.start())
            exc = await asyncio.wait_for(lst.errors.get(), TIMEOUT)
            assert isinstance(exc, asyncssh.PermissionDenied), repr(exc)
            # it calls home again after the failure
            await dev.await_line(r"ch-ssh connect attempt", TIMEOUT, since=dev.mark())
            assert lst.conns.empty()
            assert dev.count(r"session \d+ established") == 0

    asyncio.run(scenario())


def test_ssh_reconnects_after_drop(
    device_binary: Path, pki: TestPki, started: list[Lnc2Device]
) -> None:
    """Persistent call home: when the listener drops an established session the device calls
    home again at once, and the new session works."""

    async def scenario() -> None:
        async with ssh_listener(
            list(pki.host_keys.values()), "netconf", client_key=pki.listener_ssh_key
        ) as lst:
            dev = Lnc2Device.from_pki(pki, ssh_port=lst.port)
            started.append(dev.start())
            first = await asyncio.wait_for(lst.conns.get(), TIMEOUT)
            chan = await open_netconf(first)
            await chan.hello()
            m = await dev.await_line(r"ch-ssh session (\d+) established", TIMEOUT)
            first.abort()  # drop without <close-session>
            await dev.await_line(rf"ch-ssh session {m.group(1)} closed", TIMEOUT)
            second = await asyncio.wait_for(lst.conns.get(), TIMEOUT)
            async with second:
                chan2 = await open_netconf(second)
                hello2 = await chan2.hello()
                sid2 = re.search(r"<session-id>(\d+)</session-id>", hello2)
                assert sid2 and sid2.group(1) != m.group(1)
                assert "<ok/>" in await chan2.rpc("<close-session/>", 1)

    asyncio.run(scenario())


def test_ssh_retries_until_listener_is_up(
    device_binary: Path, pki: TestPki, started: list[Lnc2Device]
) -> None:
    """Started before the listener exists, the device keeps trying (about once a second) and
    gets through once the listener is up."""
    port = free_port()
    dev = Lnc2Device.from_pki(pki, ssh_port=port)
    started.append(dev.start())
    dev.wait_for(r"ch-ssh connect attempt to 127\.0\.0\.1:%d" % port, TIMEOUT)
    dev.wait_for(r"ch-ssh connect attempt", TIMEOUT, since=dev.mark())
    assert dev.count(r"session \d+ established") == 0

    async def scenario() -> None:
        async with ssh_listener(
            list(pki.host_keys.values()), "netconf", client_key=pki.listener_ssh_key, port=port
        ) as lst:
            conn = await asyncio.wait_for(lst.conns.get(), TIMEOUT)
            async with conn:
                chan = await open_netconf(conn)
                assert CAP_10 in await chan.hello()
                assert "<ok/>" in await chan.rpc("<close-session/>", 1)
            await dev.await_line(r"ch-ssh session \d+ established", TIMEOUT)

    asyncio.run(scenario())


# --------------------------------------------------------------------------- tests: TLS


def test_tls_call_home_netconf_session(
    device_binary: Path, pki: TestPki, started: list[Lnc2Device]
) -> None:
    """CA-signed device certificate (CN = device name, serialNumber set), verified with
    hostname checking; the listener's client certificate is mapped to user netconf."""

    async def scenario() -> None:
        async with tcp_listener() as lsock:
            port = int(lsock.getsockname()[1])
            dev = Lnc2Device.from_pki(pki, tls_port=port)
            started.append(dev.start())
            reader, writer = await accept_tls(lsock, tls_client_context(pki), DEVICE)
            try:
                ssl_obj = writer.get_extra_info("ssl_object")
                subject = dict(x[0] for x in ssl_obj.getpeercert()["subject"])
                assert subject["commonName"] == DEVICE
                assert subject["serialNumber"] == "SN-4242"
                assert peer_cert_fingerprint(writer) == pki.device_cert.fingerprint
                dialogue = await standard_dialogue(NetconfChannel(reader, writer))
                check_dialogue(dialogue, DEVICE)
            finally:
                await close_writer(writer)
            m = await dev.await_line(r"ch-tls session (\d+) established .*user=netconf", TIMEOUT)
            await dev.await_line(rf"ch-tls session {m.group(1)} closed reason=closed", TIMEOUT)

    asyncio.run(scenario())


def test_tls_self_signed_pinned_and_reconnect(
    device_binary: Path, pki: TestPki, started: list[Lnc2Device]
) -> None:
    """Self-signed device certificate identified by its pinned fingerprint; after the
    listener drops the session the device calls home again."""

    async def scenario() -> None:
        async with tcp_listener() as lsock:
            port = int(lsock.getsockname()[1])
            dev = Lnc2Device.from_pki(pki, tls_port=port, self_signed=True)
            started.append(dev.start())
            ctx = tls_client_context(pki, pinned=True)
            reader, writer = await accept_tls(lsock, ctx, DEVICE)
            assert peer_cert_fingerprint(writer) == pki.device_self_signed.fingerprint
            chan = NetconfChannel(reader, writer)
            await chan.hello()
            m = await dev.await_line(r"ch-tls session (\d+) established", TIMEOUT)
            writer.transport.abort()  # drop it
            await dev.await_line(rf"ch-tls session {m.group(1)} closed", TIMEOUT)
            reader2, writer2 = await accept_tls(lsock, ctx, DEVICE)
            try:
                chan2 = NetconfChannel(reader2, writer2)
                await chan2.hello()
                reply = await chan2.rpc("<get/>", 1)
                assert f"<name>{DEVICE}</name>" in reply
                assert "<ok/>" in await chan2.rpc("<close-session/>", 2)
            finally:
                await close_writer(writer2)
            assert dev.count(r"ch-tls session \d+ established") == 2

    asyncio.run(scenario())


def test_tls_untrusted_client_cert_gets_no_session(
    device_binary: Path, pki: TestPki, started: list[Lnc2Device], tmp_path: Path
) -> None:
    """A client certificate from a CA the device does not trust never gets a <hello>."""
    rogue_ca = make_ca(tmp_path, "rogue-ca")
    rogue = make_client_cert(tmp_path, rogue_ca, "rogue")

    async def scenario() -> None:
        async with tcp_listener() as lsock:
            port = int(lsock.getsockname()[1])
            dev = Lnc2Device.from_pki(pki, tls_port=port)
            started.append(dev.start())
            ctx = tls_client_context(pki, client_cert=(rogue.cert_path, rogue.key_path))
            got_hello = False
            try:
                reader, writer = await accept_tls(lsock, ctx, DEVICE)
                try:
                    data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
                    got_hello = b"<hello" in data
                finally:
                    await close_writer(writer)
            except (ssl.SSLError, ConnectionError):
                pass  # refused during the handshake (TLS 1.2 style)
            assert not got_hello
            await dev.await_line(r"ch-tls connect attempt", TIMEOUT, since=dev.mark())
            assert dev.count(r"session \d+ established") == 0

    asyncio.run(scenario())

# SPDX-License-Identifier: GPL-3.0-or-later
"""RESTCONF call home wired into the service (issue 11): a RESTCONF device is a device of the
listener like the others. On a listener that is built but opens no port: connections are made
by hand (no device) or by the real RestconfTransport with an in-process h11 device."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import typing as t
from pathlib import Path

import h11
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from netconf_callhome.config import ListenerConfig, RestconfOptions, TLSOptions
from netconf_callhome.errors import ConfigError, DeviceNotReadyError, WaitTimeoutError
from netconf_callhome.fingerprints import cert_fingerprint_of_der
from netconf_callhome.protocol.restconf import (
    BasicCredentials,
    RestconfConnection,
    YangLibrary,
    YangModule,
    restconf_connection,
)
from netconf_callhome.protocol.session import HeldSession
from netconf_callhome.service import CallHomeListener
from netconf_callhome.state.registry import CONNECTED, DISCONNECTED

pytestmark = pytest.mark.timeout(60)

LIBRARY = YangLibrary(
    modules=(YangModule("ietf-interfaces", "2018-02-20", "urn:ietf:params:xml:ns:yang:ietf-interfaces"),),
    source="yang-library",
)
CAP = "urn:ietf:params:xml:ns:yang:ietf-interfaces?module=ietf-interfaces&revision=2018-02-20"


class Carrier:
    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        listener = self.ca.issue_cert("listener.example.net")
        self.cert = tmp / "listener.crt"
        self.key = tmp / "listener.key"
        listener.cert_chain_pems[0].write_to_path(str(self.cert))
        listener.private_key_pem.write_to_path(str(self.key))
        self.device = self.ca.issue_cert("dev1.example.net")
        self.device_der = x509.load_pem_x509_certificate(self.device.cert_chain_pems[0].bytes()).public_bytes(
            serialization.Encoding.DER
        )
        self.fingerprint = cert_fingerprint_of_der(self.device_der)


def make_listener(
    tmp_path: Path, devices: t.Dict[str, t.Any], pki: t.Optional[Pki] = None, **options: t.Any
) -> CallHomeListener:
    (tmp_path / "trust.json").write_text(json.dumps({"version": 1, "devices": devices}))
    tls = TLSOptions(client_cert=str(pki.cert), client_key=str(pki.key)) if pki else TLSOptions()
    config = ListenerConfig(
        home=str(tmp_path), ssh_binds=[], tls_binds=[], restconf_binds=["127.0.0.1:0"] if pki else [], tls=tls, **options
    )
    return CallHomeListener(config)


def ready(lst: CallHomeListener, device: str, fingerprint: str, peer: str = "192.0.2.1:40000") -> RestconfConnection:
    """What the RESTCONF transport hands over once root and YANG library were read."""
    conn = restconf_connection("h2", device=device, peer=peer)
    conn.attach(Carrier())
    conn.fingerprint = fingerprint
    conn.root = "/restconf"
    conn.library = LIBRARY
    lst.recorder.restconf_ready(conn, started=time.monotonic())
    return conn


async def poll(condition: t.Callable[[], t.Any], timeout: float, what: str) -> t.Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.01)


def test_a_ready_restconf_device_is_connected_and_replaced_by_its_next_call(tmp_path: Path) -> None:
    lst = make_listener(tmp_path, {"r1": {"tls_fingerprints": ["SHA256:" + "AB:" * 31 + "AB"]}}, liveness_interval=0)

    async def scenario() -> None:
        waiter = asyncio.ensure_future(lst.waiters.wait_connected("r1", 5))
        await asyncio.sleep(0)
        first = ready(lst, "r1", "fp1")
        await asyncio.wait_for(waiter, 2)  # the wait operation wakes for a RESTCONF device
        rec = lst.registry.get("r1")
        assert (rec.status, rec.transport, rec.fingerprint, rec.peer) == (CONNECTED, "restconf", "fp1", "192.0.2.1:40000")
        assert rec.capabilities == [CAP] and rec.connect_count == 1
        assert lst.metrics.handshakes.labels(transport="restconf", result="ok")._value.get() == 1
        assert lst.devices.hint_for("192.0.2.1", "restconf") == ""  # connected: no hint needed

        # a lease needs a NETCONF session: said at once, not after the wait
        with pytest.raises(DeviceNotReadyError, match="connected over RESTCONF"):
            await lst.waiters.wait_ready("r1", 5)

        second = ready(lst, "r1", "fp1", peer="192.0.2.1:40001")
        await poll(lambda: first.is_closed, 2, "the replaced connection to close")
        assert first.closed.result() == "replaced by a new call from 192.0.2.1:40001"
        await asyncio.sleep(0)
        rec = lst.registry.get("r1")
        assert rec.status == CONNECTED and rec.peer == "192.0.2.1:40001" and rec.connect_count == 2

        second.close("device went away")
        await poll(lambda: lst.registry.get("r1").status == DISCONNECTED, 2, "r1 disconnected")
        assert lst.registry.get("r1").last_error == "device went away"
        assert "r1" not in lst.devices.restconf
        assert lst.devices.hint_for("192.0.2.1", "restconf") == "r1"
        with pytest.raises(WaitTimeoutError):
            await lst.waiters.wait_connected("r1", 0.05)

        third = ready(lst, "r1", "fp1")
        await lst.stop()
        assert third.is_closed and third.closed.result() == "listener stopping"

    asyncio.run(scenario())


HELLO = (
    b'<hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><capabilities>'
    b"<capability>urn:ietf:params:netconf:base:1.0</capability></capabilities>"
    b"<session-id>1</session-id></hello>]]>]]>"
)


async def netconf_ready(lst: CallHomeListener, device: str, fingerprint: str) -> HeldSession:
    """What the TLS transport hands over once the device's NETCONF hello arrived."""
    held = HeldSession(
        device=device, transport="tls", peer="192.0.2.1:50000", fingerprint=fingerprint, max_hello=1 << 16, max_message=1 << 20
    )
    held.attach(Carrier())
    held.data_received(HELLO)
    await held.wait_hello()
    lst.recorder.session_ready(held, started=time.monotonic(), auth="certificate")
    return held


@pytest.mark.parametrize("first_gone", ["netconf", "restconf"])
def test_a_device_on_both_transports_stays_connected_through_the_other(tmp_path: Path, first_gone: str) -> None:
    """A device with a NETCONF/TLS session and a RESTCONF connection: when one of them ends, the
    record stays 'connected' and describes the one left; only when both are gone is it
    'disconnected'. (Before: a NETCONF close marked it disconnected while RESTCONF was still up.)"""
    lst = make_listener(tmp_path, {"r1": {"tls_fingerprints": ["SHA256:" + "AB:" * 31 + "AB"]}}, liveness_interval=0)

    async def scenario() -> None:
        held = await netconf_ready(lst, "r1", "fp-netconf")
        conn = ready(lst, "r1", "fp-restconf")
        status = await lst.control._op_status({})  # what `callhome-listener status` shows
        assert status["sessions"] == 2 and status["sessions_by_transport"] == {"ssh": 0, "tls": 1, "restconf": 1}
        if first_gone == "netconf":
            held.close("device closed the NETCONF session")
            await poll(lambda: "r1" not in lst.devices.sessions, 2, "the NETCONF session to go")
            rec = lst.registry.get("r1")
            assert (rec.status, rec.transport, rec.fingerprint) == (CONNECTED, "restconf", "fp-restconf"), rec
            assert rec.capabilities == [CAP]
            conn.close("device went away")
        else:
            conn.close("device went away")
            await poll(lambda: len(lst.devices.restconf) == 0, 2, "the RESTCONF connection to be released")
            rec = lst.registry.get("r1")
            assert (rec.status, rec.transport, rec.fingerprint) == (CONNECTED, "tls", "fp-netconf"), rec
            assert rec.capabilities == ["urn:ietf:params:netconf:base:1.0"]
            held.close("device closed the NETCONF session")
        await poll(lambda: lst.registry.get("r1").status == DISCONNECTED, 2, "r1 disconnected once both are gone")
        await lst.stop()

    asyncio.run(scenario())


def test_a_silent_restconf_device_is_closed_by_the_keepalive(tmp_path: Path) -> None:
    lst = make_listener(tmp_path, {}, liveness_interval=0.05, liveness_timeout=0.2)

    async def scenario() -> None:
        conn = ready(lst, "r1", "fp1")  # its carrier swallows the PING: no answer ever comes
        await poll(lambda: lst.registry.get("r1").status == DISCONNECTED, 5, "r1 declared dead")
        assert lst.registry.get("r1").last_error.startswith("device did not answer a keepalive"), lst.registry.get("r1")
        assert conn.is_closed
        await poll(lambda: lst.metrics.failures.labels(transport="restconf", reason="unresponsive")._value.get() == 1,
                   2, "the unresponsive metric")
        await lst.stop()

    asyncio.run(scenario())


def test_a_trust_change_closes_only_the_untrusted_restconf_connection(tmp_path: Path) -> None:
    fp1, fp2 = "11:" * 31 + "11", "22:" * 31 + "22"  # the notation the listener writes
    lst = make_listener(tmp_path, {"r1": {"tls_fingerprints": [fp1]}, "r2": {"tls_fingerprints": [fp2]}},
                        liveness_interval=0)

    async def scenario() -> None:
        one, two = ready(lst, "r1", fp1), ready(lst, "r2", fp2, peer="192.0.2.2:1")
        await lst.trust.revoke("r1")
        assert one.is_closed and one.closed.result() == "key revoked"
        assert not two.is_closed
        await poll(lambda: lst.registry.get("r1").status == DISCONNECTED, 2, "r1 disconnected")
        assert lst.registry.get("r2").status == CONNECTED
        two.close("done")

    asyncio.run(scenario())
    lst.registry.close()


def test_credentials_basic_with_a_password_reference_else_certificate_only(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    lst = make_listener(
        tmp_path,
        {
            "r1": {"tls_fingerprints": ["SHA256:" + "11:" * 31 + "11"],
                   "credentials": {"username": "admin", "password_file": str(secret)}},
            "r2": {"tls_fingerprints": ["SHA256:" + "22:" * 31 + "22"], "credentials": {"username": "x"}},
            "r3": {"tls_fingerprints": ["SHA256:" + "33:" * 31 + "33"],
                   "credentials": {"password_file": str(tmp_path / "missing")}},
        },
    )
    creds = lst.gate.restconf_credentials("r1")
    assert isinstance(creds, BasicCredentials) and creds.username == "admin" and creds.password == "s3cret"
    assert "s3cret" not in repr(creds)
    assert lst.gate.restconf_credentials("r2") is None  # the client certificate alone
    with pytest.raises(ConfigError, match="cannot read password file"):
        lst.gate.restconf_credentials("r3")  # fails that call home with this message (classify)
    lst.registry.close()


def test_an_unknown_certificate_is_pending_as_restconf_and_approving_it_enrolls(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    lst = make_listener(tmp_path, {}, pki)
    assert lst.gate.tls_certificate([pki.device_der], peer="192.0.2.9:5000", transport="restconf") is None
    (pending,) = lst.registry.pending()
    assert pending.transport == "restconf" and pending.fingerprint == pki.fingerprint
    assert pending.key_type == "x509" and "BEGIN CERTIFICATE" in pending.public_key
    asyncio.run(lst.trust.approve(pki.fingerprint, "dev1"))
    assert lst.registry.pending() == []
    verified = lst.gate.tls_certificate([pki.device_der], peer="192.0.2.9:5000", transport="restconf")
    assert verified is not None and verified.device == "dev1"
    # a pending entry enrolled some other way is dropped on the next reload (a certificate, not a host key)
    assert lst.policy.enrolled_pending("restconf", pki.fingerprint, pending.public_key, [])
    assert lst.policy.still_trusts("dev1", "restconf", pki.fingerprint)
    lst.registry.close()


def test_a_bad_restconf_section_fails_the_listener_with_a_clear_error(tmp_path: Path) -> None:
    config = ListenerConfig(home=str(tmp_path / "home"), restconf=RestconfOptions(max_concurrent_streams=0))
    with pytest.raises(ConfigError, match="restconf.max_concurrent_streams must be at least 1"):
        CallHomeListener(config)
    assert not (tmp_path / "home").exists()  # nothing created


# -- through the real transport: TLS, HTTP/1.1, root and library, the service's records ---------

HOST_META = b"<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'><Link rel='restconf' href='/restconf'/></XRD>"
YANG_LIBRARY = json.dumps(
    {"ietf-yang-library:yang-library": {"content-id": "1", "module-set": [{"name": "all", "module": [
        {"name": "ietf-interfaces", "revision": "2018-02-20",
         "namespace": "urn:ietf:params:xml:ns:yang:ietf-interfaces"}]}]}}
).encode()


class H11Device(asyncio.Protocol):
    """A RESTCONF device over HTTP/1.1: host-meta, the YANG library, 404 for the rest."""

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.SERVER)
        self.transport: t.Any = None
        self.authorization: t.List[str] = []
        self.lost = asyncio.Event()

    def connection_made(self, transport: t.Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: t.Optional[Exception]) -> None:
        self.lost.set()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.Request):
                target = event.target.decode()
                self.authorization += [v.decode() for k, v in event.headers if k == b"authorization"]
            elif isinstance(event, h11.EndOfMessage):
                if target == "/.well-known/host-meta":
                    status, body, ctype = 200, HOST_META, "application/xrd+xml"
                elif target == "/restconf/data/ietf-yang-library:yang-library":
                    status, body, ctype = 200, YANG_LIBRARY, "application/yang-data+json"
                else:
                    status, body, ctype = 404, b"{}", "application/yang-data+json"
                out = self.conn.send(h11.Response(status_code=status, headers=[
                    ("content-type", ctype), ("content-length", str(len(body)))]))
                out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
                self.transport.write(out)
                self.conn.start_next_cycle()


async def call_home(lst: CallHomeListener, pki: Pki) -> H11Device:
    """The device dials the listener; the service's RESTCONF transport handles the socket."""
    assert lst.restconf is not None
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.setblocking(False)
    loop = asyncio.get_running_loop()
    dsock = socket.create_connection(lsock.getsockname())
    dsock.setblocking(False)
    accepted, addr = await loop.sock_accept(lsock)
    lsock.close()
    handled = asyncio.ensure_future(lst.restconf.handle(accepted, addr))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pki.device.configure_cert(ctx)
    pki.ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    device = H11Device()
    try:
        await loop.connect_accepted_socket(lambda: device, sock=dsock, ssl=ctx)  # type: ignore[arg-type,return-value]
    except (ssl.SSLError, ConnectionError):
        pass  # the listener may drop a refused device before the device's side finished
    await handled
    return device


def test_a_device_through_the_transport_is_held_by_the_service(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("pw\n")
    lst = make_listener(
        tmp_path,
        {"dev1": {"tls_fingerprints": [pki.fingerprint], "credentials": {"username": "admin", "password_file": str(secret)}}},
        pki,
    )

    async def scenario() -> None:
        device = await call_home(lst, pki)
        rec = lst.registry.get("dev1")
        assert rec is not None and (rec.status, rec.transport) == (CONNECTED, "restconf"), rec
        assert rec.fingerprint == pki.fingerprint and rec.capabilities == [CAP]
        assert device.authorization and set(device.authorization) == {BasicCredentials("admin", "pw").header()}
        conn = lst.devices.restconf.get("dev1")
        assert conn is not None and conn.http_version == "1.1"
        await lst.stop()
        await asyncio.wait_for(device.lost.wait(), 5)
        assert lst.registry.get("dev1").status == DISCONNECTED

    asyncio.run(scenario())


def test_an_unknown_device_through_the_transport_gets_no_session(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    lst = make_listener(tmp_path, {}, pki)

    async def scenario() -> None:
        device = await call_home(lst, pki)
        (pending,) = lst.registry.pending()
        assert pending.transport == "restconf" and pending.fingerprint == pki.fingerprint
        assert len(lst.devices.restconf) == 0 and lst.registry.get("dev1") is None
        assert lst.metrics.failures.labels(transport="restconf", reason="host-key")._value.get() == 1
        await asyncio.wait_for(device.lost.wait(), 5)
        await lst.stop()

    asyncio.run(scenario())

# SPDX-License-Identifier: GPL-3.0-or-later
"""RESTCONF call home against a real HTTP server nobody here wrote: Debian's nginx (issue 11).

nginx calls home over a reversed TCP connection (``tests/peers/nginx_peer.py``: socat dials the
test's call-home port and bridges to nginx), so the code under test runs the TLS client and the
HTTP client on an *accepted* socket, with nginx verifying the listener's client certificate.
The call-home server here is a plain asyncio accept loop handing each socket to
:func:`netconf_callhome.protocol.restconf.open_tls`; the service wiring comes later.

Both HTTP versions: nginx with HTTP/2 (ALPN ``h2``) and nginx without it (ALPN ``http/1.1``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable, List, Optional

import pytest

from netconf_callhome.errors import RestconfStatusError
from netconf_callhome.protocol.restconf import (
    BasicCredentials,
    Http2Connection,
    Http11Connection,
    RestconfConnection,
    TLSLink,
    open_tls,
    restconf_client_context,
)

pytestmark = pytest.mark.timeout(120)


def _der_fingerprint(pem_path: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(pem_path.read_text())
    return hashlib.sha256(der).hexdigest()


class CallHomePort:
    """A listening socket; each accepted connection goes through TLS and lands in a queue."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.links: "asyncio.Queue[Any]" = asyncio.Queue()
        self._task = asyncio.ensure_future(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _addr = await loop.sock_accept(self.sock)
            try:
                self.links.put_nowait(await open_tls(sock, self.context, timeout=10))
            except Exception as exc:  # pylint: disable=broad-except  # reported to the test
                self.links.put_nowait(exc)

    async def next_link(self, timeout: float = 20) -> TLSLink:
        got = await asyncio.wait_for(self.links.get(), timeout)
        if isinstance(got, BaseException):
            raise got
        return got

    def close(self) -> None:
        self._task.cancel()
        self.sock.close()


def nginx(port: int, pki: Any, **kwargs: Any) -> Any:
    """The nginx peer dialing ``port``: the device certificate of ``pki``, trusting its listener CA."""
    from nginx_peer import NginxPeer, PeerUnavailable

    try:
        peer = NginxPeer(
            ("127.0.0.1", port),
            server_cert=pki.device_cert.cert_path,
            server_key=pki.device_cert.key_path,
            client_ca=pki.listener_ca.cert_path,
            **kwargs,
        )
        peer.__enter__()
    except PeerUnavailable as exc:
        pytest.skip("nginx peer unavailable: %s" % exc)
    return peer


def listener_context(cert: Any) -> ssl.SSLContext:
    return restconf_client_context(str(cert.cert_path), str(cert.key_path))


def run(scenario: Callable[[], Awaitable[Any]], timeout: float = 90) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(scenario(), timeout)

    return asyncio.run(bounded())


@pytest.mark.parametrize("http2", [True, False], ids=["h2", "http1.1"])
def test_nginx_restconf_device_over_reversed_tcp(tmp_path: Path, http2: bool) -> None:
    from pki import make_pki

    pki = make_pki(tmp_path / "pki", device_name="nginx-dev")

    async def scenario() -> str:
        port = CallHomePort(listener_context(pki.listener_cert))
        peer = await asyncio.to_thread(nginx, port.port, pki, http2=http2)
        conn: Optional[RestconfConnection] = None
        try:
            peer.start_dialing()
            link = await port.next_link()
            assert link.alpn == ("h2" if http2 else "http/1.1")
            # What the policy would pin: the device's certificate, as nginx presented it.
            assert hashlib.sha256(link.chain[0]).hexdigest() == _der_fingerprint(pki.device_cert.cert_path)
            conn = link.start(device="nginx-dev", peer="127.0.0.1", authority="nginx-dev")
            assert isinstance(conn, Http2Connection if http2 else Http11Connection)

            assert await conn.discover_root() == "/restconf"
            lib = await conn.yang_library()
            assert lib.source == "yang-library" and lib.content_id == "nginx-peer-1"
            assert {m.name for m in lib.modules} >= {"ietf-interfaces", "ietf-yang-library"}
            interfaces = lib.module("ietf-interfaces")
            assert interfaces is not None and interfaces.revision == "2018-02-20"
            assert interfaces.namespace == "urn:ietf:params:xml:ns:yang:ietf-interfaces"

            data = await conn.get("/restconf/data/ietf-interfaces:interfaces")
            data.raise_for_status()
            assert data.content_type == "application/yang-data+json"
            names = [i["name"] for i in data.json()["ietf-interfaces:interfaces"]["interface"]]
            assert names == ["eth0", "lo"]

            # The writable path: PUT creates (201), PUT again replaces (204), GET reads it back.
            path = "/restconf/data/example-system:system"
            body = json.dumps({"example-system:system": {"hostname": "r1", "ntp": {"enabled": True}}}).encode()
            headers = {"content-type": "application/yang-data+json"}
            created = await conn.request("PUT", path, headers, body)
            assert created.status == 201, created
            replaced = await conn.request("PUT", path, headers, body.replace(b"r1", b"r2"))
            assert replaced.status == 204, replaced
            back = await conn.get(path)
            assert back.status == 200 and back.json()["example-system:system"]["hostname"] == "r2"
            assert peer.stored(path) == body.replace(b"r1", b"r2")
            if peer.njs:  # POST and PATCH through the peer's restconf.js (nginx's JavaScript module)
                clock = "/restconf/data/example-system:clock"
                posted = await conn.request("POST", clock, headers, b'{"example-system:clock": {"timezone": "UTC"}}')
                assert posted.status == 201 and posted.header("location") == clock, posted
                again = await conn.request("POST", clock, headers, b'{"example-system:clock": {}}')
                assert again.status == 409
                assert again.json()["ietf-restconf:errors"]["error"][0]["error-tag"] == "data-exists"
                patch = b'{"example-system:system": {"ntp": {"server": "ntp1"}}}'
                assert (await conn.request("PATCH", path, headers, patch)).status == 204
                merged = (await conn.get(path)).json()["example-system:system"]
                assert merged == {"hostname": "r2", "ntp": {"enabled": True, "server": "ntp1"}}
                assert (await conn.request("PATCH", path + "-missing", headers, patch)).status == 404
                assert (await conn.request("POST", path + "-x", headers, b"{oops")).status == 400
                assert (await conn.request("DELETE", clock)).status == 204
            else:  # a static nginx: POST and PATCH are 405 (documented in nginx_peer.py)
                for method in ("POST", "PATCH"):
                    refused = await conn.request(method, path, headers, body)
                    assert refused.status == 405, (method, refused.status)
            deleted = await conn.request("DELETE", path)
            assert deleted.status == 204
            assert (await conn.get(path)).status == 404

            # Side by side (HTTP/2 streams) or queued (HTTP/1.1): all answered.
            many = await asyncio.gather(*(conn.get("/restconf/yang-library-version") for _unused in range(20)))
            assert {r.status for r in many} == {200}
            assert await conn.ping() >= 0

            # The device goes away: the connection says so.
            await asyncio.to_thread(peer.hang_up)
            assert await asyncio.wait_for(conn.closed, 10)
            return peer.access_log()
        finally:
            if conn is not None:
                conn.close()
            port.close()
            await asyncio.to_thread(peer.__exit__)

    log = run(scenario)
    proto = "HTTP/2.0" if http2 else "HTTP/1.1"
    assert '"GET /.well-known/host-meta %s" 200' % proto in log, log
    assert '"PUT /restconf/data/example-system:system %s" 201' % proto in log, log


def test_nginx_refuses_a_listener_certificate_it_does_not_trust(tmp_path: Path) -> None:
    from pki import make_pki

    pki = make_pki(tmp_path / "pki", device_name="nginx-dev")
    stranger = make_pki(tmp_path / "stranger", device_name="unused")  # another listener CA

    async def scenario() -> str:
        port = CallHomePort(listener_context(stranger.listener_cert))
        peer = await asyncio.to_thread(nginx, port.port, pki)
        try:
            peer.start_dialing()
            conn = (await port.next_link()).start(device="nginx-dev")
            # nginx completes TLS, then answers every request with 400 (certificate error).
            with pytest.raises(RestconfStatusError, match="HTTP 400") as err:
                await conn.discover_root()
            assert err.value.details["status"] == 400
            conn.close()
            return peer.error_log()
        finally:
            port.close()
            await asyncio.to_thread(peer.__exit__)

    assert "client SSL certificate verify error" in run(scenario)


def test_nginx_basic_auth_credentials_are_sent_not_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pki import make_pki

    pki = make_pki(tmp_path / "pki", device_name="nginx-dev")
    password = "n0t-logged-Pa55"

    async def scenario() -> None:
        port = CallHomePort(listener_context(pki.listener_cert))
        peer = await asyncio.to_thread(nginx, port.port, pki, basic_auth=("admin", password), redial=True)
        try:
            peer.start_dialing()
            anonymous = (await port.next_link()).start(device="nginx-dev")
            assert await anonymous.discover_root() == "/restconf"  # host-meta is public
            assert (await anonymous.get("/restconf/yang-library-version")).status == 401
            anonymous.close()
            # The device calls again (redial); this time the listener has its credentials.
            conn = (await port.next_link()).start(device="nginx-dev", credentials=BasicCredentials("admin", password))
            await conn.discover_root()
            lib = await conn.yang_library()
            assert lib.module("ietf-restconf") is not None
            wrong = (await conn.request("GET", "/restconf/yang-library-version",
                                        {"authorization": BasicCredentials("admin", "wrong").header()}))
            assert wrong.status == 401
            conn.close()
        finally:
            port.close()
            await asyncio.to_thread(peer.__exit__)

    with caplog.at_level(logging.DEBUG):
        run(scenario)
    assert password not in caplog.text


def test_restconf_transport_with_nginx(tmp_path: Path) -> None:
    """The transport end to end: accepted socket, TLS, the (pinning) verdict, root, library."""
    from pki import make_pki

    from netconf_callhome.config import ListenerConfig, TLSOptions
    from netconf_callhome.protocol.events import HandshakeFailure, VerifiedDevice
    from netconf_callhome.protocol.restconf import RestconfTransport

    pki = make_pki(tmp_path / "pki", device_name="nginx-dev")
    pinned = _der_fingerprint(pki.device_cert.cert_path)

    class Slots:
        def is_blocked(self, peer_ip: str) -> bool:
            return False

        def acquire(self, peer: str) -> bool:
            return True

        def release(self) -> None:
            pass

    class Events:
        def __init__(self) -> None:
            self.ready: "asyncio.Queue[RestconfConnection]" = asyncio.Queue()
            self.failures: List[HandshakeFailure] = []

        def tls_certificate(self, chain: Any, *, peer: str) -> Optional[VerifiedDevice]:
            if hashlib.sha256(chain[0]).hexdigest() != pinned:
                return None
            return VerifiedDevice(device="nginx-dev", fingerprint=pinned)

        def restconf_credentials(self, device: str) -> Optional[BasicCredentials]:
            return None

        def handshake_failed(self, failure: HandshakeFailure) -> None:
            self.failures.append(failure)

        def restconf_ready(self, conn: RestconfConnection, *, started: float) -> None:
            self.ready.put_nowait(conn)

    async def scenario() -> None:
        cfg = ListenerConfig(
            home=str(tmp_path / "home"),
            tls=TLSOptions(client_cert=str(pki.listener_cert.cert_path), client_key=str(pki.listener_cert.key_path)),
            handshake_timeout=20,
        )
        events = Events()
        transport = RestconfTransport(cfg, admission=Slots(), events=events)
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4)
        lsock.setblocking(False)
        peer = await asyncio.to_thread(nginx, lsock.getsockname()[1], pki)
        try:
            peer.start_dialing()
            sock, addr = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(lsock), 20)
            await transport.handle(sock, addr)
            assert events.failures == []
            conn = events.ready.get_nowait()
            assert conn.http_version == "2" and conn.root == "/restconf" and conn.fingerprint == pinned
            assert conn.library is not None and conn.library.module("ietf-ip") is not None
            keeper = asyncio.ensure_future(conn.keepalive(interval=0.2, timeout=5))
            await asyncio.sleep(0.7)  # nginx answers the PINGs: the connection stays
            assert not keeper.done()
            await asyncio.to_thread(peer.hang_up)
            assert await asyncio.wait_for(keeper, 10)
        finally:
            lsock.close()
            await asyncio.to_thread(peer.__exit__)

    run(scenario)

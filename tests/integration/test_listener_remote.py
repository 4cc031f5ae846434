# SPDX-License-Identifier: GPL-3.0-or-later
"""Remote control of the listener (AWX, containers): TCP + TLS + token, and leases streamed over it."""

from __future__ import annotations

import json
import selectors
import socket
import ssl
import threading

import pytest
import trustme
from harness import free_port, running

from netconf_callhome.control.client import ControlClient
from netconf_callhome.errors import ListenerUnreachableError, NotAuthorizedError

TOKEN = "t0ken-for-the-remote-listener-0123456789"
_CHUNK = 65536
_HIGH_WATER = 4 * 1024 * 1024


@pytest.fixture
def remote_listener(listener_factory, fleet, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_pem, key_pem, ca_pem = tmp_path / "srv.pem", tmp_path / "srv.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    config = tmp_path / "listener.yml"
    config.write_text(json.dumps({"control_tcp": {"bind": "127.0.0.1:%d" % port, "cert": str(cert_pem),
                                                  "key": str(key_pem), "token_file": str(token_file)}}))
    lst = listener_factory("--config", str(config))
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    return lst, "tls://127.0.0.1:%d" % port, str(ca_pem)


def test_remote_control_needs_the_token(remote_listener):
    lst, address, ca = remote_listener
    assert lst.call("status")["control_tcp"] == address
    with pytest.raises(NotAuthorizedError):
        ControlClient(address, tls_ca_file=ca).call("status")
    with pytest.raises(NotAuthorizedError):
        ControlClient(address, token="wrong-token-wrong-token", tls_ca_file=ca).call("devices")
    with pytest.raises(NotAuthorizedError, match="only accepted on the local control socket"):
        ControlClient(address, token=TOKEN, tls_ca_file=ca).call("shutdown")
    assert ControlClient(address, token=TOKEN, tls_ca_file=ca).call("status")["enrolled"] == 1
    # an unverified server certificate is refused by default
    with pytest.raises(ListenerUnreachableError):
        ControlClient(address, token=TOKEN).call("status")
    assert TOKEN not in lst.log()


def test_lease_streams_over_tls(remote_listener, fleet):
    from ncclient.devices.default import DefaultDeviceHandler
    from ncclient.manager import Manager
    from ncclient.transport.unixSocket import UnixSocketSession

    lst, address, ca = remote_listener
    with running(fleet.simulator(lst.ssh_port, 1, "--single-session", wait_connected=1)):
        for _round in range(2):
            sock, info = ControlClient(address, token=TOKEN, tls_ca_file=ca).lease("sim0001", wait=10)
            handler = DefaultDeviceHandler()
            session = UnixSocketSession(handler)
            session._socket = adoptable(sock)
            session._connected = True
            session._post_connect()
            with Manager(session, handler, timeout=30) as mgr:
                assert "sim0001" in mgr.get_config("running").xml
                big = "x" * 300000  # larger than any single TLS record or socket buffer
                mgr.edit_config(target="running", config='<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                                '<note xmlns="urn:example:sim">%s</note></config>' % big)
                assert big in mgr.get_config("running").xml


# A raw lease over TLS, for a program that drives ncclient itself (issue 9 item 6). ncclient's
# UnixSocketSession waits on the socket with a selector, which misses TLS records already
# decrypted into the SSL buffer: one thread owning the TLS socket bridges it to a socket pair.
def adoptable(sock: socket.socket) -> socket.socket:
    """A plain stream socket carrying the same bytes as ``sock`` (``sock`` itself if plain)."""
    if not isinstance(sock, ssl.SSLSocket):
        return sock
    inner, outer = socket.socketpair()
    threading.Thread(target=_bridge, args=(sock, outer), name="callhome-tls-bridge", daemon=True).start()
    return inner


def _bridge(tls: ssl.SSLSocket, plain: socket.socket) -> None:
    """Copy bytes both ways until either side ends; then close both (ncclient sees EOF)."""
    tls.setblocking(False)
    plain.setblocking(False)
    to_tls = bytearray()
    to_plain = bytearray()
    sel = selectors.DefaultSelector()
    try:
        while True:
            tls_ev = (selectors.EVENT_READ if len(to_plain) < _HIGH_WATER else 0) | (
                selectors.EVENT_WRITE if to_tls else 0
            )
            plain_ev = (selectors.EVENT_READ if len(to_tls) < _HIGH_WATER else 0) | (
                selectors.EVENT_WRITE if to_plain else 0
            )
            for fileobj, events in ((tls, tls_ev), (plain, plain_ev)):
                try:
                    sel.unregister(fileobj)
                except KeyError:
                    pass
                if events:
                    sel.register(fileobj, events)
            ready = {key.fileobj: mask for key, mask in sel.select(0 if tls.pending() else 30.0)}
            if tls.pending() or ready.get(tls, 0) & selectors.EVENT_READ:
                try:
                    data = tls.recv(_CHUNK)
                    if not data:
                        _flush(plain, to_plain)
                        return
                    to_plain += data
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
            if ready.get(plain, 0) & selectors.EVENT_READ:
                try:
                    data = plain.recv(_CHUNK)
                    if not data:
                        _flush(tls, to_tls)
                        return
                    to_tls += data
                except BlockingIOError:
                    pass
            if to_tls:
                try:
                    sent = tls.send(bytes(to_tls[:_CHUNK]))
                    del to_tls[:sent]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    pass
            if to_plain:
                try:
                    sent = plain.send(bytes(to_plain[:_CHUNK]))
                    del to_plain[:sent]
                except BlockingIOError:
                    pass
    except (OSError, ValueError):
        return
    finally:
        sel.close()
        for s in (plain, tls):
            try:
                s.close()
            except OSError:
                pass


def _flush(sock: socket.socket, pending: bytearray) -> None:
    """Deliver what was already read before closing, so no reply is lost at the end."""
    if pending:
        sock.settimeout(10.0)
        sock.sendall(bytes(pending))

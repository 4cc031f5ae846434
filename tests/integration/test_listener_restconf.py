# SPDX-License-Identifier: GPL-3.0-or-later
"""RESTCONF call home through the listener process (issue 11): Debian's nginx, a RESTCONF
server nobody here wrote, calls ``--restconf`` over a reversed TCP connection
(``tests/peers/nginx_peer.py``: socat dials the listener and bridges to nginx) and becomes a
device of the listener like the NETCONF ones: the certificate verdict of NETCONF over TLS
(unknown certificates pending, under transport ``restconf``), the registry record, the ``wait``
operation, trust changes, the status operation and the logs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List

import pytest
from harness import enroll, wait_until

from netconf_callhome.errors import DeviceNotFoundError
from netconf_callhome.policy.trust_store import TrustStore, set_credentials

pytestmark = pytest.mark.timeout(180)

DEVICE = "nginx-dev"
INTERFACES_CAP = "urn:ietf:params:xml:ns:yang:ietf-interfaces?module=ietf-interfaces&revision=2018-02-20"


@pytest.fixture
def pki(tmp_path: Path) -> Any:
    from pki import make_pki

    return make_pki(tmp_path / "pki", device_name=DEVICE)


def restconf_args(pki: Any) -> List[str]:
    return [
        "--restconf", "127.0.0.1:0",
        "--tls", "127.0.0.1:0",  # never the default 4335 (other tests run beside this one)
        "--tls-client-cert", str(pki.listener_cert.cert_path),
        "--tls-client-key", str(pki.listener_cert.key_path),
    ]


def restconf_port(lst: Any) -> int:
    return int(lst.call("status")["restconf"][0].rsplit(":", 1)[1])


def nginx(port: int, pki: Any, **kwargs: Any) -> Any:
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


def pending_restconf(lst: Any) -> List[Dict[str, Any]]:
    return [p for p in lst.call("pending") if p["transport"] == "restconf"]


@pytest.mark.parametrize("http2", [True, False], ids=["h2", "http1.1"])
def test_restconf_device_connects_like_the_others(pki: Any, listener_factory: Any, tmp_path: Path, http2: bool) -> None:
    password = "rc-Pa55-not-logged"
    secret = tmp_path / "rc-secret"
    secret.write_text(password + "\n")
    lst = listener_factory(*restconf_args(pki))
    enroll(lst.home, DEVICE, tls_fp=pki.device_cert.fingerprint)

    def creds(data: Dict[str, Any]) -> None:
        set_credentials(data, DEVICE, {"username": "admin", "password_file": str(secret)})

    TrustStore(str(lst.home / "trust.json")).update(creds)
    lst.start()
    status = lst.call("status")
    assert len(status["restconf"]) == 1 and status["restconf"][0].startswith("127.0.0.1:")
    assert "restconf=127.0.0.1:%d" % restconf_port(lst) in lst.wait_log("event=listener.started")

    peer = nginx(restconf_port(lst), pki, http2=http2, basic_auth=("admin", password))
    try:
        peer.start_dialing()
        rec = lst.wait_device(DEVICE, "connected", timeout=30)
        assert rec["transport"] == "restconf" and rec["fingerprint"] == pki.device_cert.fingerprint
        assert INTERFACES_CAP in rec["capabilities"]
        assert rec["peer"].startswith("127.0.0.1:")
        assert lst.call("wait", device=DEVICE, wait=5)["status"] == "connected"  # the wait op knows it
        log = lst.wait_log("event=device.connected device=%s" % DEVICE)
        assert "transport=restconf" in log and ("http=2" if http2 else "http=1.1") in log
        # basic auth took: nginx logged the YANG library read as 200 for user admin
        library_read = re.compile(r' - admin \[[^]]*\] "GET /restconf/data/ietf-yang-library:yang-library HTTP/[0-9.]+" 200 ')
        wait_until(lambda: library_read.search(peer.access_log()), 10, "the authenticated YANG library read",
                   detail=peer.access_log)
        status = lst.call("status")  # the RESTCONF connection is a session; no NETCONF one
        assert status["sessions"] == 1 and status["sessions_by_transport"] == {"ssh": 0, "tls": 0, "restconf": 1}

        peer.hang_up()  # the device goes away
        rec = lst.wait_device(DEVICE, "disconnected", timeout=20)
        assert rec["last_error"], rec
        assert pending_restconf(lst) == []
    finally:
        peer.__exit__()
    assert password not in lst.log()


def test_unknown_certificate_pending_then_approved_then_revoked(pki: Any, listener_factory: Any) -> None:
    lst = listener_factory(*restconf_args(pki)).start()
    peer = nginx(restconf_port(lst), pki, redial=True, retry=0.3)
    try:
        peer.start_dialing()
        # unknown: pending under transport restconf, no session, nothing recorded for the name
        (entry,) = wait_until(lambda: pending_restconf(lst), 30, "the certificate to be pending",
                              detail=lambda: lst.log()[-3000:])
        assert entry["fingerprint"] == pki.device_cert.fingerprint and entry["key_type"] == "x509"
        with pytest.raises(DeviceNotFoundError):
            lst.call("device", device=DEVICE)
        assert "event=device.unknown_key" in lst.log() and "transport=restconf" in lst.log()
        assert "event=device.connected" not in lst.log()

        # approved: the device's next call connects
        lst.cli("approve", entry["fingerprint"], "--device", DEVICE)
        rec = lst.wait_device(DEVICE, "connected", timeout=30)
        assert rec["transport"] == "restconf" and rec["fingerprint"] == pki.device_cert.fingerprint
        assert pending_restconf(lst) == []

        # revoked: the held connection is closed at once, and its next call is pending again
        lst.cli("revoke", DEVICE)
        rec = lst.wait_device(DEVICE, "disconnected", timeout=20)
        assert rec["last_error"] == "key revoked", rec
        wait_until(lambda: pending_restconf(lst), 30, "the revoked certificate to be pending again",
                   detail=lambda: lst.log()[-3000:])
        assert lst.call("device", device=DEVICE)["status"] == "disconnected"
    finally:
        peer.__exit__()


def test_ca_and_identity_enrollment_and_its_revocation(pki: Any, listener_factory: Any) -> None:
    lst = listener_factory(*restconf_args(pki), "--device-ca", str(pki.device_ca.cert_path))
    enroll(lst.home, DEVICE, identity="serial:SN-0001")
    lst.start()
    peer = nginx(restconf_port(lst), pki)
    try:
        peer.start_dialing()
        rec = lst.wait_device(DEVICE, "connected", timeout=30)
        assert rec["transport"] == "restconf" and rec["fingerprint"] == pki.device_cert.fingerprint
        # the identity the connection was accepted under is what a trust change checks
        lst.cli("revoke", DEVICE, "--identity", "serial:SN-0001")
        rec = lst.wait_device(DEVICE, "disconnected", timeout=20)
        assert rec["last_error"] == "key revoked", rec
    finally:
        peer.__exit__()

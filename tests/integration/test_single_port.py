# SPDX-License-Identifier: GPL-3.0-or-later
"""One call-home port for every transport (issue 11, item 3), through the listener process.

Onto ONE port (``callhome_binds``) call, in one test: the libnetconf2 device over SSH and another
over TLS (NETCONF over TLS: no ALPN), OpenSSH ``sshd -i`` over a reversed TCP connection, Debian's
nginx as a RESTCONF device (ALPN h2) and the outbound-ssh simulator (Junos preamble). Each gets
its session under the right transport name, as on its dedicated port; a NETCONF lease works on
the NETCONF ones. Garbage on the same port is refused, logged and counted (metrics), and the
others stay connected. A second test pins a device to the transport it does not speak."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml
from harness import enroll, free_port, ncclient_over_lease, running, wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def pkis(tmp_path: Path) -> Dict[str, Any]:
    """One PKI per device name (a device is its key); the listener's TLS certificate and CA
    are those of ``lnc2-tls``'s PKI, which nginx trusts too."""
    from pki import make_pki

    return {
        name: make_pki(tmp_path / "pki" / name, device_name=name, host_key_algorithms=("ed25519",))
        for name in ("lnc2-ssh", "lnc2-tls", "nginx-dev")
    }


def single_port_listener(listener_factory: Any, pkis: Dict[str, Any], tmp_path: Path, **options: Any) -> Any:
    """A listener whose listener.yml sets callhome_binds (no CLI flag: the file is how an
    operator sets it), with TLS configured and the IANA ports on ephemeral ports."""
    tls = pkis["lnc2-tls"]
    lst = listener_factory(
        "--tls", "127.0.0.1:0",
        "--tls-client-cert", str(tls.listener_cert.cert_path),
        "--tls-client-key", str(tls.listener_cert.key_path),
    )
    lst.home.mkdir(parents=True, exist_ok=True)
    (lst.home / "listener.yml").write_text(yaml.safe_dump(dict({"callhome_binds": ["127.0.0.1:0"]}, **options)))
    return lst


def metrics(port: int) -> str:
    return urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()


def refused(port: int, data: bytes) -> bytes:
    """Send ``data`` to the port; what comes back before it is closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        try:
            return sock.recv(100)
        except ConnectionResetError:
            return b""


def _containing(text: str, needle: str) -> "str | None":
    """``text`` when it contains ``needle`` (a wait_until predicate), else None."""
    return text if needle in text else None


def test_every_transport_calls_one_port(device_binary: Any, pkis: Dict[str, Any], listener_factory: Any, fleet: Any, tmp_path: Path) -> None:
    from lnc2_peer import Lnc2Device
    from peer_availability import PeerUnavailable, unavailable
    from nginx_peer import NginxPeer
    from pki import make_ssh_key
    from sshd_peer import SshdPeer

    metrics_port = free_port()
    lst = single_port_listener(
        listener_factory, pkis, tmp_path, metrics_bind="127.0.0.1:%d" % metrics_port, callhome_detect_timeout=3
    )
    ssh_dev, tls_dev, rc_dev = pkis["lnc2-ssh"], pkis["lnc2-tls"], pkis["nginx-dev"]
    enroll(lst.home, "lnc2-ssh", ssh_key=ssh_dev.host_keys["ed25519"].public_line, private_key=ssh_dev.listener_ssh_key.private_path)
    enroll(lst.home, "lnc2-tls", tls_fp=tls_dev.device_cert.fingerprint)
    enroll(lst.home, "nginx-dev", tls_fp=rc_dev.device_cert.fingerprint)
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    port = lst.callhome_port
    assert "callhome=127.0.0.1:%d" % port in lst.wait_log("event=listener.started")

    # Two stalled peers from the start: part of an SSH banner, then nothing; and a silent one that
    # never answers the ClientHello. Both are dropped at their bound while the devices connect.
    stalled_banner = socket.create_connection(("127.0.0.1", port), timeout=10)
    stalled_banner.sendall(b"SS")
    stalled_tls = socket.create_connection(("127.0.0.1", port), timeout=10)
    client_key = make_ssh_key(tmp_path / "sshd-client", "listener")
    try:
        sshd = SshdPeer(("127.0.0.1", port), password_auth=False, redial=True, retry=0.5)
        sshd.__enter__()
    except PeerUnavailable as exc:
        unavailable("OpenSSH peer", exc)
    try:
        nginx = NginxPeer(
            ("127.0.0.1", port),
            server_cert=rc_dev.device_cert.cert_path,
            server_key=rc_dev.device_cert.key_path,
            client_ca=tls_dev.listener_ca.cert_path,  # the listener's certificate is tls_dev's
            http2=True,
            redial=True,
        )
        nginx.__enter__()
    except PeerUnavailable as exc:
        sshd.__exit__(None, None, None)
        unavailable("nginx peer", exc)
    lnc2_ssh = Lnc2Device.from_pki(ssh_dev, ssh_port=port)
    lnc2_tls = Lnc2Device.from_pki(tls_dev, tls_port=port)
    try:
        sshd.add_authorized_key(client_key.public_line)
        enroll(lst.home, "sshd-dev", ssh_key=sshd.host_key_line, username=sshd.username, private_key=client_key.private_path)
        lst.call("reload")
        with lnc2_ssh, lnc2_tls, running(fleet.simulator(port, 1, "--outbound-ssh-preamble")):
            sshd.start_dialing()
            nginx.start_dialing()
            expected = {"lnc2-ssh": "ssh", "lnc2-tls": "tls", "sshd-dev": "ssh", "sim0001": "ssh", "nginx-dev": "restconf"}
            records = {name: lst.wait_device(name, "connected", timeout=60) for name in expected}
            assert {name: rec["transport"] for name, rec in records.items()} == expected
            assert records["lnc2-tls"]["fingerprint"] == tls_dev.device_cert.fingerprint
            assert records["nginx-dev"]["fingerprint"] == rc_dev.device_cert.fingerprint
            assert any("ietf-interfaces" in cap for cap in records["nginx-dev"]["capabilities"])
            log = lst.wait_log("event=outbound_ssh.preamble")
            assert "device_id=sim0001" in log  # the preamble reader took over after detection
            status = lst.call("status")
            assert status["sessions_by_transport"] == {"ssh": 3, "tls": 1, "restconf": 1}
            # NETCONF over the SSH and the TLS device called in on the single port
            for name in ("lnc2-ssh", "lnc2-tls", "sshd-dev"):
                mgr = ncclient_over_lease(lst.control, name, wait=20)[0]
                with mgr:
                    assert mgr.get_config("running").ok

            # Garbage on the same port: refused, logged with its reason, counted; nobody else moves.
            assert refused(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
            assert refused(port, b"\x16\x03\x01\x00\x05hello") == b""  # a TLS *client*: the wrong role
            log = lst.wait_log("reason=unknown-protocol")
            assert log.count("event=handshake.failed") >= 2 and "transport=callhome" in log
            assert "GET / HTT" in log  # the message shows what came (the 9 bytes read)
            body = wait_until(
                lambda: _containing(metrics(metrics_port), 'callhome_failures_total{reason="unknown-protocol",transport="callhome"} 2.0'),
                10,
                "the refusals in the metrics",
                detail=lambda: metrics(metrics_port),
            )
            failed = re.search(r'callhome_handshakes_total\{result="failed",transport="callhome"\} ([0-9.]+)', body)
            assert failed and float(failed.group(1)) >= 2.0  # the garbage, and the stalled banner once timed out
            for transport in ("ssh", "tls", "restconf"):
                assert 'callhome_handshakes_total{result="ok",transport="%s"}' % transport in body
            for name in expected:
                rec = lst.call("device", device=name)
                assert rec["status"] == "connected" and rec["connect_count"] == records[name]["connect_count"], rec
            assert lst.call("status")["sessions_by_transport"] == {"ssh": 3, "tls": 1, "restconf": 1}
            # The stalled ones: dropped at callhome_detect_timeout / handshake_timeout, reasons logged.
            log = lst.wait_log("reason=timeout")
            assert re.search(r"transport=callhome reason=timeout error=.only 2 byte\(s\) b.{1,3}SS", log), log[-2000:]
            assert stalled_banner.recv(10) == b""
            assert stalled_tls.recv(4096)[:1] == b"\x16"  # our ClientHello, after the silence
            wait_until(lambda: "transport=tls reason=timeout" in lst.log(), 20, "the silent TLS peer's timeout")
    finally:
        stalled_banner.close()
        stalled_tls.close()
        nginx.__exit__(None, None, None)
        sshd.__exit__(None, None, None)


def test_a_device_pinned_to_restconf_is_refused_over_netconf_tls(
    device_binary: Any, pkis: Dict[str, Any], listener_factory: Any, tmp_path: Path
) -> None:
    from lnc2_peer import Lnc2Device

    lst = single_port_listener(listener_factory, pkis, tmp_path, callhome_transports={"lnc2-tls": "restconf"})
    tls_dev = pkis["lnc2-tls"]
    enroll(lst.home, "lnc2-tls", tls_fp=tls_dev.device_cert.fingerprint)
    lst.start()
    with Lnc2Device.from_pki(tls_dev, tls_port=lst.callhome_port):
        rec = lst.wait_device("lnc2-tls", "error", timeout=30)
        assert "pinned to RESTCONF" in rec["last_error"] and "no ALPN" in rec["last_error"]
        assert "reason=transport-pinned" in lst.wait_log("reason=transport-pinned")
        assert lst.call("status")["sessions"] == 0

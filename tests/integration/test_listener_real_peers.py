# SPDX-License-Identifier: GPL-3.0-or-later
"""The listener against NETCONF servers nobody here wrote: libnetconf2 (SSH and TLS call home,
compiled by the tests) and OpenSSH ``sshd -i`` reached through a reversed TCP connection."""

from __future__ import annotations

import pytest
from harness import enroll as _enroll
from harness import ncclient_over_lease, wait_until

from netconf_callhome.errors import DeviceNotFoundError


@pytest.fixture
def pki(tmp_path):
    from pki import make_pki

    return make_pki(tmp_path / "pki", device_name="lnc2-dev1", serial_number="SN-0001")


def _tls_args(pki, *extra):
    return (
        "--tls",
        "127.0.0.1:0",
        "--tls-client-cert",
        str(pki.listener_cert.cert_path),
        "--tls-client-key",
        str(pki.listener_cert.key_path),
    ) + extra


def _read_config(lst, device):
    mgr, info = ncclient_over_lease(lst.control, device, wait=20)
    with mgr:
        reply = mgr.get_config("running")
        assert reply.ok
        return info, reply.xml


def test_libnetconf2_ssh_enrolled_key(device_binary, pki, listener_factory):
    from lnc2_peer import Lnc2Device

    lst = listener_factory()
    _enroll(
        lst.home,
        "lnc2-dev1",
        ssh_key=pki.host_keys["ed25519"].public_line,
        private_key=pki.listener_ssh_key.private_path,
    )
    lst.start()
    with Lnc2Device.from_pki(pki, ssh_port=lst.ssh_port):
        rec = lst.wait_device("lnc2-dev1", "connected", timeout=30)
        assert rec["fingerprint"] == pki.host_keys["ed25519"].fingerprint
        assert "urn:ietf:params:netconf:base:1.1" in rec["capabilities"]
        info, xml = _read_config(lst, "lnc2-dev1")
        assert info["transport"] == "ssh"
        # a second lease after the first one closed its session
        _read_config(lst, "lnc2-dev1")
        assert lst.call("device", device="lnc2-dev1")["connect_count"] == 1
    assert "auth=publickey" in lst.log()


def test_libnetconf2_ssh_unknown_key_pending(device_binary, pki, listener_factory):
    from lnc2_peer import Lnc2Device

    lst = listener_factory().start()
    with Lnc2Device.from_pki(pki, ssh_port=lst.ssh_port):
        lst.cli("pending")
        pending = wait_until(lambda: lst.call("pending"), 30, "the device's key to be pending")
        assert pending[0]["fingerprint"] == pki.host_keys["ed25519"].fingerprint
        with pytest.raises(DeviceNotFoundError):
            lst.control.lease("lnc2-dev1", wait=1)


def test_libnetconf2_ssh_wrong_credentials(device_binary, pki, listener_factory, tmp_path):
    from lnc2_peer import Lnc2Device
    from pki import make_ssh_key

    wrong = make_ssh_key(tmp_path / "wrong", "not-authorized")
    lst = listener_factory()
    _enroll(lst.home, "lnc2-dev1", ssh_key=pki.host_keys["ed25519"].public_line, private_key=wrong.private_path)
    lst.start()
    with Lnc2Device.from_pki(pki, ssh_port=lst.ssh_port):
        rec = lst.wait_device("lnc2-dev1", "auth-failed", timeout=30)
        assert "rejected the listener's credentials" in rec["last_error"]


def test_libnetconf2_tls_pinned_certificate(device_binary, pki, listener_factory):
    from lnc2_peer import Lnc2Device

    lst = listener_factory(*_tls_args(pki))
    _enroll(lst.home, "lnc2-dev1", tls_fp=pki.device_self_signed.fingerprint)
    lst.start()
    with Lnc2Device.from_pki(pki, tls_port=lst.tls_port, self_signed=True):
        rec = lst.wait_device("lnc2-dev1", "connected", timeout=30)
        assert rec["transport"] == "tls" and rec["session_mode"] == "shared"
        info = _read_config(lst, "lnc2-dev1")[0]
        assert info["mode"] == "shared"
        _read_config(lst, "lnc2-dev1")  # the one TLS session outlives each lease
        assert lst.call("device", device="lnc2-dev1")["connect_count"] == 1


def test_libnetconf2_tls_ca_and_identity(device_binary, pki, listener_factory):
    from lnc2_peer import Lnc2Device

    lst = listener_factory(*_tls_args(pki, "--device-ca", str(pki.device_ca.cert_path)))
    _enroll(lst.home, "lnc2-dev1", identity="serial:SN-0001")
    lst.start()
    with Lnc2Device.from_pki(pki, tls_port=lst.tls_port):
        rec = lst.wait_device("lnc2-dev1", "connected", timeout=30)
        assert rec["fingerprint"] == pki.device_cert.fingerprint  # one notation (issue 10)
        _read_config(lst, "lnc2-dev1")


def test_libnetconf2_tls_identity_without_the_ca_is_a_mismatch(device_binary, pki, listener_factory):
    """A certificate that names an enrolled identity but does not chain to the CA is refused."""
    from lnc2_peer import Lnc2Device

    lst = listener_factory(*_tls_args(pki, "--device-ca", str(pki.device_ca.cert_path)))
    _enroll(lst.home, "lnc2-dev1", identity="cn:lnc2-dev1")
    lst.start()
    with Lnc2Device.from_pki(pki, tls_port=lst.tls_port, self_signed=True):
        rec = lst.wait_device("lnc2-dev1", "key-mismatch", timeout=30)
        assert "x509" in rec["last_error"]
        pending = lst.call("pending")
        assert pending[0]["claim_source"] == "identity" and "cn:lnc2-dev1" in pending[0]["identities"]


def test_openssh_sshd_over_reversed_tcp(listener_factory, tmp_path):
    from pki import make_ssh_key
    from peer_availability import peer_or_skip
    from sshd_peer import SshdPeer

    client_key = make_ssh_key(tmp_path / "listener-key", "listener")
    lst = listener_factory()
    lst.start()
    peer = peer_or_skip(
        SshdPeer(("127.0.0.1", lst.ssh_port), password_auth=False, redial=True, retry=0.5).__enter__, "OpenSSH peer"
    )
    try:
        peer.add_authorized_key(client_key.public_line)
        _enroll(
            lst.home,
            "sshd-dev",
            ssh_key=peer.host_key_line,
            username=peer.username,
            private_key=client_key.private_path,
        )
        lst.call("reload")
        peer.start_dialing()
        rec = lst.wait_device("sshd-dev", "connected", timeout=30)
        assert rec["fingerprint"] == peer.fingerprint
        info, xml = _read_config(lst, "sshd-dev")
        assert "sshd-peer" in xml
        # OpenSSH allows several sessions per connection: each lease is its own channel
        assert info["mode"] == "channel"
        _read_config(lst, "sshd-dev")
    finally:
        peer.__exit__(None, None, None)

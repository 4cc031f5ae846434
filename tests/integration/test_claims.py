# SPDX-License-Identifier: GPL-3.0-or-later
"""An unauthenticated claim never rewrites a connected device (issue 10, defect 5): a peer with an
unknown key that says it is an enrolled, connected device (Junos outbound-ssh ``DEVICE-ID``, or a
certificate with that device's subject) is recorded as a pending claim; the device stays
``connected`` and keeps serving leases."""

from __future__ import annotations

import pytest
from harness import enroll, ncclient_over_lease, running, wait_until
from tls_device import TLSDevice


def _outbound_port(lst):
    return int(lst.call("status")["outbound_ssh"][0].rsplit(":", 1)[1])


def _claim(lst, device):
    pending = [p for p in lst.call("pending") if p["claimed_device"] == device]
    return pending[0] if pending and pending[0]["count"] >= 2 else None


def test_device_id_claim_leaves_the_connected_device_alone(listener_factory, fleet, tmp_path):
    lst = listener_factory("--outbound-ssh", "127.0.0.1:0")
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    port = _outbound_port(lst)
    with running(fleet.simulator(port, 1, "--outbound-ssh-preamble", wait_connected=1)):
        lst.wait_device("sim0001", "connected")
        # the intruder: its own host key, DEVICE-ID sim0001, calling again and again
        with running(fleet.simulator(port, 1, "--outbound-ssh-preamble", keys_dir=tmp_path / "intruder-keys")):
            claim = wait_until(lambda: _claim(lst, "sim0001"), 20, "the intruder's claim to be recorded twice")
        assert claim["reason"] == "key-mismatch" and claim["claim_source"] == "device-id"
        rec = lst.call("device", device="sim0001")
        assert rec["status"] == "connected" and rec["last_error"] == "" and rec["connect_count"] == 1
        assert [d["name"] for d in lst.call("devices") if d["status"] == "connected"] == ["sim0001"]
        mgr, _info = ncclient_over_lease(lst.control, "sim0001")
        with mgr:
            assert "sim0001" in mgr.get_config("running").xml
    log = lst.log()
    assert "event=device.claim_refused device=sim0001" in log and "Do not approve this key" in log
    assert "event=device.key_mismatch" not in log


@pytest.fixture
def pki(tmp_path):
    from pki import make_pki

    return make_pki(tmp_path / "pki", device_name="tls-dev1", serial_number="SN-0001", host_key_algorithms=("ed25519",))


def test_certificate_subject_claim_leaves_the_connected_device_alone(pki, listener_factory):
    lst = listener_factory(
        "--tls",
        "127.0.0.1:0",
        "--tls-client-cert",
        str(pki.listener_cert.cert_path),
        "--tls-client-key",
        str(pki.listener_cert.key_path),
        "--device-ca",
        str(pki.device_ca.cert_path),
    )
    enroll(lst.home, "tls-dev1", identity="serial:SN-0001")
    lst.start()
    with TLSDevice("tls-dev1", lst.tls_port, pki.device_cert.cert_path, pki.device_cert.key_path) as dev:
        lst.wait_device("tls-dev1", "connected")
        # self-signed, the same subject (CN, serialNumber): a claim no CA vouches for
        for attempt in range(2):
            forged_cert = pki.device_self_signed
            name = "forged-%d" % attempt
            with TLSDevice(name, lst.tls_port, forged_cert.cert_path, forged_cert.key_path) as forged:
                wait_until(forged.ended.is_set, 10, "the forged certificate to be refused")
        claim = wait_until(lambda: _claim(lst, "tls-dev1"), 10, "the forged claim to be recorded")
        assert claim["reason"] == "key-mismatch" and claim["claim_source"] == "identity"
        assert claim["fingerprint"] == pki.device_self_signed.fingerprint
        rec = lst.call("device", device="tls-dev1")
        assert rec["status"] == "connected" and rec["last_error"] == ""
        assert not dev.ended.is_set()
    assert "event=device.claim_refused device=tls-dev1" in lst.log()

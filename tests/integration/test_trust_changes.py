# SPDX-License-Identifier: GPL-3.0-or-later
"""Trust-store changes against a live TLS device enrolled by certificate identity + CA (issue 10,
defect 6): unrelated changes leave its session alone, revoking its identity closes it."""

from __future__ import annotations

import json

import pytest
from harness import enroll, ncclient_over_lease, wait_until
from tls_device import TLSDevice

from netconf_callhome.policy.trust_store import TrustStore


@pytest.fixture
def pki(tmp_path):
    from pki import make_pki

    return make_pki(tmp_path / "pki", device_name="tls-dev1", serial_number="SN-0001", host_key_algorithms=("ed25519",))


def _tls_args(pki):
    return (
        "--tls",
        "127.0.0.1:0",
        "--tls-client-cert",
        str(pki.listener_cert.cert_path),
        "--tls-client-key",
        str(pki.listener_cert.key_path),
        "--device-ca",
        str(pki.device_ca.cert_path),
    )


def _get_config(lst, device):
    mgr, _info = ncclient_over_lease(lst.control, device, wait=10)
    with mgr:
        assert mgr.get_config("running").ok


def test_identity_enrolled_tls_device_survives_unrelated_changes_until_revoked(pki, listener_factory, fleet):
    lst = listener_factory(*_tls_args(pki))
    enroll(lst.home, "tls-dev1", identity="serial:SN-0001")
    lst.start()
    with TLSDevice("tls-dev1", lst.tls_port, pki.device_cert.cert_path, pki.device_cert.key_path) as dev:
        rec = lst.wait_device("tls-dev1", "connected")
        assert rec["transport"] == "tls" and rec["connect_count"] == 1
        _get_config(lst, "tls-dev1")

        # unrelated trust changes, each the way operators make them
        other = fleet.keys(["sim0001"])["sim0001"].export_public_key().decode().strip()
        lst.call("enroll", device="sim0001", kind="ssh_host_keys", value=other)  # control op
        lst.cli("revoke", "sim0001")  # another device removed
        loads = lst.log().count("event=trust.loaded")
        enroll(lst.home, "tls-dev2", identity="cn:tls-dev2")  # a file edit the listener picks up itself
        wait_until(lambda: lst.log().count("event=trust.loaded") > loads, 10, "the listener to reload the file")
        lst.call("enroll", device="tls-dev1", kind="tls_identities", value="cn:tls-dev1-spare")  # its own, more
        lst.call("reload")
        _get_config(lst, "tls-dev1")
        rec = lst.call("device", device="tls-dev1")
        assert rec["status"] == "connected" and rec["connect_count"] == 1  # the same session throughout
        assert not dev.ended.is_set()
        assert "key replaced" not in lst.log() and "event=device.untrusted" not in lst.log()

        # revoking the identity it was accepted under closes it
        lst.cli("revoke", "tls-dev1", "--identity", "serial:SN-0001")
        wait_until(dev.ended.is_set, 10, "the listener to close the revoked device's session")
        rec = lst.wait_device("tls-dev1", "disconnected")
        assert rec["last_error"] == "key revoked"
    assert "event=device.untrusted device=tls-dev1" in lst.log()
    assert json.dumps(TrustStore(str(lst.home / "trust.json")).load()["devices"]["tls-dev1"]) == json.dumps(
        {"tls_identities": ["cn:tls-dev1-spare"]}
    )

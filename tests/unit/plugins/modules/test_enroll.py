# SPDX-License-Identifier: GPL-3.0-or-later
"""Enrollment logic against a trust store file (no listener running): each explicit source,
observed keys refused without an expected fingerprint or TOFU, mismatch refusal, idempotence,
check mode, absent."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import asyncssh
import pytest

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.enroll import run
from netconf_callhome.errors import (
    ConfigError,
    KeyMismatchError,
    ListenerUnreachableError,
    UnknownKeyError,
)
from netconf_callhome.fingerprints import ssh_fingerprint


def _key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()


KEY_A, KEY_B = _key(), _key()


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return tmp_path / "trust.json"


def enroll(store: Path, check: bool = False, scanned: t.Optional[str] = None, **params: t.Any) -> t.Any:
    base = {"listener": "unix:" + str(store.parent / "no-listener.sock"), "trust_store": str(store), "state": "present"}
    base.update(params)
    return run(base, check_mode=check, scan=lambda host, port, **kw: scanned or KEY_A)


def devices(store: Path) -> t.Dict[str, t.Any]:
    return dict(json.loads(store.read_text())["devices"])


def test_public_key_is_enrolled_once(store: Path) -> None:
    first = enroll(store, device="r1", source="public_key", value=KEY_A)
    assert first.changed and first.fingerprint == ssh_fingerprint(KEY_A) and first.written_via == "file"
    assert devices(store)["r1"]["ssh_host_keys"] == [KEY_A]
    again = enroll(store, device="r1", source="public_key", value=KEY_A)
    assert again.changed is False
    assert oct(store.stat().st_mode & 0o777) == "0o600"


def test_check_mode_writes_nothing(store: Path) -> None:
    result = enroll(store, check=True, device="r1", source="fingerprint", value=ssh_fingerprint(KEY_A))
    assert result.changed and not store.exists()


def test_tls_sources(store: Path, tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    pem = ca.issue_cert("r2.example.net").cert_chain_pems[0].bytes().decode()
    result = enroll(store, device="r2", source="certificate", value=pem)
    assert result.kind == "tls_fingerprints" and len(result.fingerprint.split(":")) == 32  # hex pairs, no SHA256: prefix (issue 10)
    ident = enroll(store, device="r2", source="tls_identity", value="serial:FOC1234X")
    assert ident.changed and devices(store)["r2"]["tls_identities"] == ["serial:FOC1234X"]
    with pytest.raises(ConfigError, match="TLS identity must be one of"):
        enroll(store, device="r2", source="tls_identity", value="FOC1234X")


def test_scanned_key_needs_expected_fingerprint_or_tofu(store: Path) -> None:
    with pytest.raises(UnknownKeyError, match="nobody vouched for.*expected_fingerprint: SHA256:"):
        enroll(store, device="r1", source="ssh_scan", host="127.0.0.1")
    assert not store.exists()
    with pytest.raises(KeyMismatchError, match="not the expected"):
        enroll(store, device="r1", source="ssh_scan", host="127.0.0.1", expected_fingerprint=ssh_fingerprint(KEY_B))
    ok = enroll(store, device="r1", source="ssh_scan", host="127.0.0.1", expected_fingerprint=ssh_fingerprint(KEY_A))
    assert ok.changed and ok.fingerprint == ssh_fingerprint(KEY_A)
    tofu = enroll(store, scanned=KEY_B, device="r3", source="ssh_scan", host="127.0.0.1", trust_on_first_use=True)
    assert tofu.changed and tofu.warnings and "trusted on first use" in tofu.warnings[0]


def test_scanned_key_that_differs_from_the_enrolled_one_is_a_mismatch(store: Path) -> None:
    enroll(store, device="r1", source="public_key", value=KEY_A)
    with pytest.raises(KeyMismatchError, match="already has .* enrolled, and it now presents"):
        enroll(store, scanned=KEY_B, device="r1", source="ssh_scan", host="127.0.0.1", trust_on_first_use=True)
    assert devices(store)["r1"]["ssh_host_keys"] == [KEY_A]
    replaced = enroll(store, scanned=KEY_B, device="r1", source="ssh_scan", host="127.0.0.1",
                      expected_fingerprint=ssh_fingerprint(KEY_B), replace_existing=True)
    assert replaced.changed and devices(store)["r1"]["ssh_host_keys"] == [KEY_B]


def test_key_of_another_device_is_refused(store: Path) -> None:
    enroll(store, device="r1", source="public_key", value=KEY_A)
    with pytest.raises(ConfigError, match="already enrolled for device 'r1'"):
        enroll(store, device="r2", source="public_key", value=KEY_A)


def test_absent_and_credentials(store: Path) -> None:
    enroll(store, device="r1", source="public_key", value=KEY_A, credentials={"username": "admin", "password_env": "R1_PW"})
    assert devices(store)["r1"]["credentials"] == {"username": "admin", "password_env": "R1_PW"}
    gone = enroll(store, device="r1", state="absent", source="public_key", value=KEY_A)
    assert gone.changed and devices(store)["r1"]["ssh_host_keys"] == []
    whole = enroll(store, device="r1", state="absent")
    assert whole.changed and "r1" not in devices(store)
    assert enroll(store, device="r1", state="absent").changed is False


def test_pending_needs_the_listener(store: Path) -> None:
    with pytest.raises(ListenerUnreachableError, match="needs the running listener"):
        enroll(store, device="r1", source="pending", expected_fingerprint=ssh_fingerprint(KEY_A))


CERT_FP = "SHA256:" + ":".join(["7E"] * 32)


@pytest.mark.parametrize("transport", ["tls", "restconf"])
def test_certificate_devices_refuse_ssh_sources_and_take_tls_ones(store: Path, transport: str) -> None:
    with pytest.raises(ConfigError, match="identified by its TLS certificate: source public_key does not apply"):
        enroll(store, device="r1", source="public_key", value=KEY_A, transport=transport)
    done = enroll(store, device="r1", source="tls_fingerprint", value=CERT_FP, transport=transport)
    assert done.changed and done.kind == "tls_fingerprints" and done.transport == transport
    # one trust-store entry serves NETCONF over TLS and RESTCONF: the listener's verdict is the same
    assert enroll(store, device="r1", source="tls_fingerprint", value=CERT_FP,
                  transport="tls" if transport == "restconf" else "restconf").changed is False
    ident = enroll(store, device="r1", source="tls_identity", value="serial:SN-1", transport=transport)
    assert ident.changed and devices(store)["r1"]["tls_identities"] == ["serial:SN-1"]


def test_ssh_devices_refuse_certificates(store: Path) -> None:
    with pytest.raises(ConfigError, match="SSH device is identified by its SSH host key: source tls_fingerprint"):
        enroll(store, device="r1", source="tls_fingerprint", value=CERT_FP, transport="ssh")
    with pytest.raises(ConfigError, match="transport must be one of ssh, tls, restconf"):
        enroll(store, device="r1", source="tls_fingerprint", value=CERT_FP, transport="http")


class FakeListener:
    """The listener's control client as the Enroller uses it: status, pending, approve."""

    def __init__(self, store: Path, pending: t.List[t.Dict[str, t.Any]]) -> None:
        self.store, self.pending, self.approved = store, pending, []  # type: ignore[var-annotated]
        self.address = "unix:fake"

    def call(self, op: str, **kw: t.Any) -> t.Any:
        if op == "status":
            return {"trust_store": str(self.store)}
        if op == "pending":
            return self.pending
        if op == "approve":
            self.approved.append(kw)
            return {"changed": True}
        raise AssertionError(op)


def approve(store: Path, listener: FakeListener, **params: t.Any) -> t.Any:
    from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config import enroll as enroll_mod

    base = {"listener": "unix:fake", "trust_store": str(store), "state": "present", "source": "pending"}
    base.update(params)
    original = enroll_mod.ControlClient
    enroll_mod.ControlClient = lambda *a, **kw: listener  # type: ignore[misc,assignment]
    try:
        return run(base, check_mode=False)
    finally:
        enroll_mod.ControlClient = original  # type: ignore[misc]


def test_pending_restconf_certificate_is_approved_as_a_tls_fingerprint(store: Path) -> None:
    entries = [{"fingerprint": ssh_fingerprint(KEY_A), "transport": "ssh", "public_key": KEY_A, "peer": "192.0.2.9:1",
                "claimed_device": "r1"},
               {"fingerprint": CERT_FP, "transport": "restconf", "key_type": "x509", "peer": "192.0.2.9:2",
                "claimed_device": "r1"}]
    listener = FakeListener(store, entries)
    done = approve(store, listener, device="r1", transport="restconf", expected_fingerprint=CERT_FP,
                   credentials={"username": "nms", "password_env": "R1_HTTP_PW"})
    assert done.changed and done.kind == "tls_fingerprints" and done.transport == "restconf"
    assert listener.approved == [{"fingerprint": CERT_FP, "device": "r1", "replace": False,
                                  "credentials": {"username": "nms", "password_env": "R1_HTTP_PW"}}]
    # without expected_fingerprint, transport picks the one of the device's two pending entries
    listener = FakeListener(store, entries)
    picked = approve(store, listener, device="r1", transport="restconf", trust_on_first_use=True)
    assert picked.fingerprint and listener.approved[0]["fingerprint"] == CERT_FP


def test_pending_key_of_another_transport_is_refused_naming_it(store: Path) -> None:
    listener = FakeListener(store, [{"fingerprint": CERT_FP, "transport": "tls", "key_type": "x509", "peer": "p",
                                     "claimed_device": "r1"}])
    with pytest.raises(UnknownKeyError, match="came over tls, not restconf; NOT enrolled"):
        approve(store, listener, device="r1", transport="restconf", expected_fingerprint=CERT_FP)
    assert listener.approved == []

# SPDX-License-Identifier: GPL-3.0-or-later
"""The service's state and trust decisions (issue 10, defects 4, 5, 6, 13), on a listener that
is built but opens no port: held sessions are fed a hello by hand."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import typing as t
from pathlib import Path

import asyncssh
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from netconf_callhome.config import ListenerConfig, TLSOptions
from netconf_callhome.errors import AuthFailedError, ConfigError, HandshakeTimeoutError
from netconf_callhome.fingerprints import ssh_fingerprint
from netconf_callhome.policy import trust_ops
from netconf_callhome.protocol.session import HeldSession
from netconf_callhome.service import CallHomeListener
from netconf_callhome.protocol.events import HandshakeFailure
from netconf_callhome.state.registry import AUTH_FAILED, CONNECTED, ERROR, KEY_MISMATCH, SQLiteStore

HELLO = (
    b'<hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><capabilities>'
    b"<capability>urn:ietf:params:netconf:base:1.0</capability></capabilities>"
    b"<session-id>1</session-id></hello>]]>]]>"
)


class Carrier:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def ssh_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


def public_line(key: asyncssh.SSHKey) -> str:
    return key.export_public_key("openssh").decode().strip()


def make_listener(tmp_path: Path, devices: t.Dict[str, t.Any], cas: t.Sequence[bytes] = ()) -> CallHomeListener:
    (tmp_path / "trust.json").write_text(json.dumps({"version": 1, "devices": devices}))
    paths = []
    for number, pem in enumerate(cas):
        path = tmp_path / ("ca%d.pem" % number)
        path.write_bytes(pem)
        paths.append(str(path))
    config = ListenerConfig(home=str(tmp_path), ssh_binds=[], tls_binds=[], tls=TLSOptions(device_cas=paths))
    return CallHomeListener(config)


async def connect(lst: CallHomeListener, device: str, transport: str, fingerprint: str) -> HeldSession:
    """What a transport does once the device's key was accepted and its hello arrived."""
    held = HeldSession(
        device=device,
        transport=transport,
        peer="192.0.2.1:40000",
        fingerprint=fingerprint,
        max_hello=1 << 16,
        max_message=1 << 20,
    )
    held.attach(Carrier())
    held.data_received(HELLO)
    await held.wait_hello()
    lst.recorder.session_ready(held, started=time.monotonic(), auth="test")
    return held


def der_chain(leaf: trustme.LeafCert) -> t.List[bytes]:
    return [
        x509.load_pem_x509_certificate(b.bytes()).public_bytes(serialization.Encoding.DER)
        for b in leaf.cert_chain_pems
    ]


async def poll(condition: t.Callable[[], t.Any], timeout: float, what: str) -> t.Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.01)


# -- defect 5: a claim never rewrites a device that holds a verified session ----------------------


def test_device_id_claim_leaves_a_connected_device_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    real, intruder = ssh_key(), ssh_key()
    lst = make_listener(tmp_path, {"r1": {"ssh_host_keys": [public_line(real)]}})

    async def scenario() -> None:
        held = await connect(lst, "r1", "ssh", ssh_fingerprint(public_line(real)))
        with caplog.at_level(logging.WARNING, logger="netconf_callhome.listener"):
            login = lst.gate.ssh_host_key(intruder, peer="198.51.100.7:5000", device_id="r1")
        assert login is None  # never authenticated to
        rec = lst.registry.get("r1")
        assert rec.status == CONNECTED and rec.last_error == "" and rec.peer == "192.0.2.1:40000"
        assert held.is_open
        (pending,) = lst.registry.pending()
        assert pending.fingerprint == intruder.get_fingerprint("sha256")
        assert (pending.reason, pending.claimed_device, pending.claim_source) == ("key-mismatch", "r1", "device-id")
        assert "event=device.claim_refused device=r1" in caplog.text
        assert "Do not approve this key" in caplog.text and "approve FINGERPRINT" not in caplog.text

        # once r1 has no session, the same claim is reported on r1 as before (a replaced device)
        held.close("gone")
        lst.gate.ssh_host_key(intruder, peer="198.51.100.7:5000", device_id="r1")
        rec = lst.registry.get("r1")
        assert rec.status == KEY_MISMATCH and "not enrolled for it" in rec.last_error
        assert lst.registry.get_pending(pending.fingerprint).count == 2

    asyncio.run(scenario())
    lst.registry.close()


def test_certificate_claim_leaves_a_connected_tls_device_alone(tmp_path: Path) -> None:
    ca, rogue_ca = trustme.CA(), trustme.CA()
    lst = make_listener(tmp_path, {"r1": {"tls_identities": ["dns:r1.example.net"]}}, [ca.cert_pem.bytes()])
    genuine = der_chain(ca.issue_cert("r1.example.net"))
    forged = der_chain(rogue_ca.issue_cert("r1.example.net"))  # the same subject, another issuer

    async def scenario() -> None:
        accepted = lst.gate.tls_certificate(genuine, peer="192.0.2.1:40000")
        assert accepted is not None and accepted.device == "r1"
        held = await connect(lst, "r1", "tls", accepted.fingerprint)
        assert lst.gate.tls_certificate(forged, peer="198.51.100.7:5000") is None
        assert lst.registry.get("r1").status == CONNECTED and held.is_open
        (pending,) = lst.registry.pending()
        assert (pending.reason, pending.claimed_device, pending.claim_source) == ("key-mismatch", "r1", "identity")

    asyncio.run(scenario())
    lst.registry.close()


def test_approving_a_forged_claim_by_default_is_refused_while_the_device_is_connected(tmp_path: Path) -> None:
    """``approve FP`` without ``--device`` takes the device the certificate names; for a device
    that holds a verified session that would pin a forged certificate in one command."""
    ca, rogue_ca = trustme.CA(), trustme.CA()
    lst = make_listener(tmp_path, {"r1": {"tls_identities": ["dns:r1.example.net"]}}, [ca.cert_pem.bytes()])
    genuine = der_chain(ca.issue_cert("r1.example.net"))
    forged = der_chain(rogue_ca.issue_cert("r1.example.net"))

    async def scenario() -> None:
        accepted = lst.gate.tls_certificate(genuine, peer="192.0.2.1:40000")
        assert accepted is not None
        held = await connect(lst, "r1", "tls", accepted.fingerprint)
        assert lst.gate.tls_certificate(forged, peer="198.51.100.7:5000") is None
        (pending,) = lst.registry.pending()
        with pytest.raises(ConfigError, match="connected with a verified key right now.*--device r1"):
            await lst.trust.approve(pending.fingerprint)
        assert "tls_fingerprints" not in lst.trust_store.load()["devices"]["r1"]  # nothing trusted
        assert held.is_open and lst.registry.get_pending(pending.fingerprint) is not None
        # named explicitly, it is the operator's decision (a device really replaced)
        await lst.trust.approve(pending.fingerprint, "r1")
        assert lst.registry.get_pending(pending.fingerprint) is None

    asyncio.run(scenario())
    lst.registry.close()


# -- defect 6: only sessions whose identity is no longer trusted are closed ------------------------


def test_trust_changes_close_only_untrusted_sessions(tmp_path: Path) -> None:
    ca = trustme.CA()
    ssh_dev, other = ssh_key(), ssh_key()
    pinned = ca.issue_cert("r3.example.net")
    lst = make_listener(
        tmp_path,
        {
            "r1": {"tls_identities": ["dns:r1.example.net"]},  # by identity + CA: no pinned fingerprint
            "r2": {"ssh_host_keys": [public_line(ssh_dev)]},
        },
        [ca.cert_pem.bytes()],
    )

    async def scenario() -> None:
        verified = lst.gate.tls_certificate(der_chain(ca.issue_cert("r1.example.net")), peer="192.0.2.1:1")
        assert verified is not None
        r1 = await connect(lst, "r1", "tls", verified.fingerprint)
        r2 = await connect(lst, "r2", "ssh", ssh_fingerprint(public_line(ssh_dev)))
        pinned_fp = trust_ops.explicit_identity("certificate", pinned.cert_chain_pems[0].bytes().decode()).fingerprint
        await lst.trust.enroll("r3", "tls_fingerprints", pinned_fp)
        verified3 = lst.gate.tls_certificate(der_chain(pinned), peer="192.0.2.3:1")
        assert verified3 is not None and verified3.device == "r3"
        r3 = await connect(lst, "r3", "tls", pinned_fp)

        # unrelated changes: another device enrolled, another key for r2, a file edit + reload
        await lst.trust.enroll("r4", "ssh_host_keys", public_line(other))
        await lst.trust.enroll("r1", "tls_identities", "serial:R1-SPARE")
        trust_ops.enroll(lst.trust_store, "r5", "tls_identities", "cn:r5")
        lst.trust.reload()
        assert r1.is_open and r2.is_open and r3.is_open

        # revoking exactly the identity r1 was accepted under closes r1 only
        await lst.trust.revoke("r1", "dns:r1.example.net")
        await poll(lambda: not r1.is_open, 5, "r1 to be closed")
        assert r1.closed.result() == "key revoked"
        assert r2.is_open and r3.is_open
        # a pinned certificate removed by hand (no listener op): closed on the next reload
        trust_ops.revoke(lst.trust_store, "r3", pinned_fp)
        assert lst.trust.reload()
        await poll(lambda: not r3.is_open, 5, "r3 to be closed")
        assert r2.is_open

    asyncio.run(scenario())
    lst.registry.close()


# -- defect 13: stale pending entries, credentials with approve ------------------------------------


def test_pending_entry_goes_when_its_key_is_enrolled_another_way(tmp_path: Path) -> None:
    known, stray = ssh_key(), ssh_key()
    lst = make_listener(tmp_path, {"r1": {"ssh_host_keys": [public_line(known)]}})

    async def scenario() -> None:
        lst.gate.ssh_host_key(stray, peer="192.0.2.9:1", device_id="")
        lst.gate.ssh_host_key(ssh_key(), peer="192.0.2.8:1", device_id="")
        assert len(lst.registry.pending()) == 2
        # the enroll module writes the file itself, then the listener reloads
        trust_ops.enroll(lst.trust_store, "r9", "ssh_host_keys", public_line(stray))
        assert lst.trust.reload()
        assert [p.fingerprint for p in lst.registry.pending()] != [stray.get_fingerprint("sha256")]
        assert lst.registry.get_pending(stray.get_fingerprint("sha256")) is None
        assert len(lst.registry.pending()) == 1

    asyncio.run(scenario())
    lst.registry.close()


def test_approve_applies_the_credentials(tmp_path: Path) -> None:
    stray = ssh_key()
    lst = make_listener(tmp_path, {})

    async def scenario() -> None:
        lst.gate.ssh_host_key(stray, peer="192.0.2.9:1", device_id="")
        fp = stray.get_fingerprint("sha256")
        creds = {"username": "admin", "password_env": "R9_PW", "password_file": None}
        result = await lst.trust.approve(fp, "r9", credentials=creds)
        assert result["device"] == "r9"
        entry = json.loads((tmp_path / "trust.json").read_text())["devices"]["r9"]
        assert entry["credentials"] == {"username": "admin", "password_env": "R9_PW"}
        assert lst.policy.credentials_for("r9").username == "admin"

    asyncio.run(scenario())
    lst.registry.close()


# -- defect 4: housekeeping goes on while the registry cannot be written ---------------------------


def test_housekeeping_goes_on_while_the_registry_is_locked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = ssh_key()
    lst = make_listener(tmp_path, {"r1": {"ssh_host_keys": [public_line(key)]}, "r2": {"tls_identities": ["cn:r2"]}})
    # a short busy timeout: each refused write fails in 50 ms instead of 5 s
    lst.registry.store.close()
    lst.registry.store = SQLiteStore(lst.config.registry, busy_timeout=0.05)
    lst.registry.flush_interval = 0.05

    async def scenario() -> None:
        held = await connect(lst, "r1", "ssh", ssh_fingerprint(public_line(key)))
        lst.registry.flush()
        other = sqlite3.connect(lst.config.registry, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        lst.registry.update("r1", connect_count=42)
        with caplog.at_level(logging.DEBUG, logger="netconf_callhome"):
            lst.spawn(lst._housekeeping())
            await poll(lambda: "event=registry.flush_failed attempts=1" in caplog.text, 10, "the first failure")
            # the key removed by hand while the database is locked: reloaded, session closed
            trust_ops.revoke(lst.trust_store, "r1")
            await poll(lambda: "r1" not in lst.policy.index.devices, 10, "the trust store reload")
            await poll(lambda: not held.is_open, 10, "the session of the revoked key to close")
            await poll(lambda: "event=registry.flush_retry_failed attempts=2" in caplog.text, 10, "a retry")
            assert caplog.text.count("event=registry.flush_failed") == 1  # once per streak
            assert lst.registry.has_unsaved()
            # idle exit still runs too
            lst.config.idle_exit = 0.01
            await poll(lst._stopping.is_set, 10, "the idle exit")
            other.rollback()
            other.close()
            await poll(lambda: not lst.registry.has_unsaved(), 40, "the flush after the lock is released")
            await poll(lambda: "event=registry.flush_recovered" in caplog.text, 40, "the recovery log line")
        with sqlite3.connect(lst.config.registry) as db:
            (doc,) = db.execute("SELECT doc FROM devices WHERE name='r1'").fetchone()
        assert json.loads(doc)["connect_count"] == 42

    async def run() -> None:
        try:
            await scenario()
        finally:
            for task in list(lst._tasks):
                task.cancel()
            await asyncio.gather(*lst._tasks, return_exceptions=True)

    asyncio.run(run())
    lst.registry.close()


# -- issue 7: a failure's class decides the device's status; its code is the reason ----------------


def test_an_auth_failed_error_marks_the_device_auth_failed_and_counts_its_reason(tmp_path: Path) -> None:
    lst = make_listener(tmp_path, {})

    async def scenario() -> None:
        lst.recorder.handshake_failed(
            HandshakeFailure(transport="ssh", peer="192.0.2.5:4000", error=AuthFailedError("denied"), device="r1")
        )
        lst.recorder.handshake_failed(
            HandshakeFailure(transport="tls", peer="192.0.2.6:4000", error=HandshakeTimeoutError("slow"), device="r2")
        )
        r1, r2 = lst.registry.get("r1"), lst.registry.get("r2")
        assert (r1.status, r1.last_error) == (AUTH_FAILED, "denied")
        assert (r2.status, r2.last_error) == (ERROR, "slow")
        sample = lst.metrics.registry.get_sample_value
        assert sample("callhome_failures_total", {"transport": "ssh", "reason": "auth-failed"}) == 1
        assert sample("callhome_failures_total", {"transport": "tls", "reason": "timeout"}) == 1
        await lst.stop()

    asyncio.run(scenario())

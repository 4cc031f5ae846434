# SPDX-License-Identifier: GPL-3.0-or-later
"""Attacks on state and trust (issue 10, defects 4-6): a locked registry, unauthenticated claims
on a connected device's name, trust-store changes under a device enrolled by CA identity."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from attacklib import AttackListener, CanaryLoop, ssh_identity, tls_options, verdict
from harness import wait_until

pytestmark = pytest.mark.timeout(300)  # conftest.TEST_TIMEOUT: a hung attack fails, it does not stall make test


def _edit_trust_store(lp: AttackListener, change: Callable[[Dict[str, Any]], None]) -> None:
    """What an operator does with an editor: read, change, write the file (renamed into place)."""
    path = lp.home / "trust.json"
    data = json.loads(path.read_text())
    change(data)
    tmp = path.with_name("trust.json.by-hand")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _registry_docs(lp: AttackListener, table: str) -> Dict[str, Dict[str, Any]]:
    with sqlite3.connect("file:%s?mode=ro" % (lp.home / "registry.sqlite"), uri=True, timeout=10) as db:
        key = "name" if table == "devices" else "fingerprint"
        return {k: json.loads(doc) for k, doc in db.execute("SELECT %s, doc FROM %s" % (key, table))}


class RegistryLock:
    """An exclusive SQLite transaction on the registry file, held until released."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(str(path), timeout=10, isolation_level=None, check_same_thread=False)
        self.db.execute("BEGIN EXCLUSIVE")
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.db.execute("ROLLBACK")
            self.db.close()


def test_registry_locked_loses_nothing_and_trust_reload_goes_on(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
) -> None:
    """Defect 4: while another process holds the registry file locked ("database is locked"),
    the listener keeps serving, still reloads the trust store (a key removed by hand ends that
    device's session) and writes every change made meanwhile once the lock is gone."""
    lp = attack_listener()
    loop = canaries(lp, idle=1)
    victim = loop.idle[0]
    fleet = loop.fleet
    victim_fp = fleet.fingerprint(victim)
    wait_until(lambda: _registry_docs(lp, "devices").get(victim, {}).get("status") == "connected", 20,
               "the victim's connected record in the registry file")

    def refused() -> List[Dict[str, Any]]:
        return [
            ev for ev in lp.events() if ev.get("level") in ("warning", "error") and "database is locked" in json.dumps(ev)
        ]

    lock = RegistryLock(lp.home / "registry.sqlite")
    try:
        _edit_trust_store(lp, lambda data: data["devices"].pop(victim))
        # Trust reloads do not wait for the registry: the victim's session ends during the lock.
        fleet.wait_for("DISCONNECTED", 1, name=victim, timeout=20)
        # ...and it calls again, now as an unknown key: a pending entry, written after the lock.
        wait_until(lambda: any(p["fingerprint"] == victim_fp for p in lp.call("pending")), 20,
                   "the victim's key as pending")
        # The listener tried to write and was refused (its retry logs it), or 15 s went by.
        deadline = time.monotonic() + 15
        wait_until(lambda: refused() or time.monotonic() > deadline, 20, "a refused registry write")
        loop.wait_more(4)
    finally:
        lock.release()
    assert refused(), "the refused registry write was not logged: %s" % [
        ev for ev in lp.events() if "registry" in json.dumps(ev)][-5:]

    def written() -> bool:
        rec = _registry_docs(lp, "devices").get(victim, {})
        return rec.get("status") not in (None, "connected") and victim_fp in _registry_docs(lp, "pending")

    wait_until(written, 40, "the changes made during the lock in the registry file",
               detail=lambda: "%s\n%s" % (_registry_docs(lp, "devices").get(victim), lp.log()[-2000:]))
    # Housekeeping is alive after the lock: another hand edit takes effect too.
    second = loop.devices[-1]
    loop.stop()
    _edit_trust_store(lp, lambda data: data["devices"].pop(second))
    fleet.wait_for("DISCONNECTED", 1, name=second, timeout=20)
    loop.drops = lambda: 0  # sim0004's drop was asked for
    verdict(lp, loop)


@pytest.mark.parametrize("claim", ["device-id", "certificate"])
def test_unauthenticated_claim_leaves_connected_device_alone(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
    sim_devices: Callable[..., Any],
    device_process: Callable[..., Any],
    tls_pki: Any,
    tmp_path: Path,
    claim: str,
) -> None:
    """Defect 5: an unknown key claims a connected canary's name, again and again (a Junos
    DEVICE-ID preamble; a self-signed certificate with the device's subject). The claim is
    recorded on the pending entry; the device stays connected and leasable."""
    if claim == "device-id":
        lp = attack_listener(outbound_ssh_binds=["127.0.0.1:0"])
        loop = canaries(lp)
        target = loop.devices[0]
        # A second fleet with other keys: its sim0001 is an impostor announcing DEVICE-ID sim0001,
        # dialing the outbound-ssh port (sim_devices dials the ``ssh_port`` of what it is given).
        port = lp.outbound_ssh_port
        outbound = type("OutboundPort", (), {"ssh_port": port, "call": staticmethod(lp.call)})()
        sim_devices(outbound, 1, enroll=False, wait_connected=False, keys_dir=tmp_path / "impostor-keys",
                    outbound_ssh_preamble=True)
    else:
        import pki  # tests/peers

        lp = attack_listener(**tls_options(tls_pki))
        target = "tlsdev1"
        lp.call("enroll", device=target, kind="tls_identities", value="cn:%s" % target)
        lp.allow(target, tls_pki.device_cert.fingerprint)
        real = device_process("tls", "--listener", "127.0.0.1:%d" % lp.tls_port, "--name", target,
                              "--cert", str(tls_pki.device_cert.cert_path), "--key", str(tls_pki.device_cert.key_path))
        lp.wait_device(target, "connected", timeout=30)
        loop = canaries(lp, extra=[target], extra_drops=[lambda: real.count("DISCONNECTED")])
        forged = pki.make_self_signed_device_cert(tmp_path / "impostor", target)
        device_process("tls", "--listener", "127.0.0.1:%d" % lp.tls_port, "--name", target,
                       "--cert", str(forged.cert_path), "--key", str(forged.key_path), "--retry", "0.2")

    def claimed() -> bool:
        return any(p.get("claimed_device") == target and p.get("count", 0) >= 5 for p in lp.call("pending"))

    wait_until(claimed, 30, "five claims on %s recorded as pending" % target,
               detail=lambda: "%s\n%s" % (lp.call("pending"), lp.log()[-2000:]))
    record = lp.record(target)
    assert record["status"] == "connected", "a claim rewrote the connected device: %s" % record
    assert "approve" not in record.get("last_error", ""), record
    loop.wait_more(2 * len(loop.devices))
    assert lp.record(target)["status"] == "connected"
    verdict(lp, loop)


def _enroll_identity(lp: AttackListener) -> None:
    lp.call("enroll", device="tlsdev1", kind="tls_identities", value="serial:SN-0001")


def _enroll_other(lp: AttackListener, tmp_path: Path) -> None:
    _key, line, _fp = ssh_identity(tmp_path / "other-keys", "other1")
    lp.call("enroll", device="other1", kind="ssh_host_keys", value=line)


def _hand_edit(lp: AttackListener, tmp_path: Path) -> None:
    _key, line, _fp = ssh_identity(tmp_path / "other-keys", "other2")
    _edit_trust_store(lp, lambda data: data["devices"].__setitem__("other2", {"ssh_host_keys": [line]}))
    assert lp.call("reload")["reloaded"]


@pytest.mark.parametrize("change", ["enroll-identity", "enroll-other-device", "hand-edit-reload", "revoke-other"])
def test_trust_change_keeps_ca_identity_tls_device(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
    device_process: Callable[..., Any],
    tls_pki: Any,
    tmp_path: Path,
    change: str,
) -> None:
    """Defect 6: a TLS device enrolled by CA identity (``cn:``, chain to a device CA; no pinned
    fingerprint) keeps its session through trust-store changes that do not concern its identity."""
    lp = attack_listener(**tls_options(tls_pki))
    lp.call("enroll", device="tlsdev1", kind="tls_identities", value="cn:tlsdev1")
    lp.allow("tlsdev1", tls_pki.device_cert.fingerprint)
    dev = device_process("tls", "--listener", "127.0.0.1:%d" % lp.tls_port, "--name", "tlsdev1",
                         "--cert", str(tls_pki.device_cert.cert_path), "--key", str(tls_pki.device_cert.key_path))
    lp.wait_device("tlsdev1", "connected", timeout=30)
    loop = canaries(lp, extra=["tlsdev1"], extra_drops=[lambda: dev.count("DISCONNECTED")])
    before = lp.record("tlsdev1")

    if change == "enroll-identity":
        _enroll_identity(lp)
    elif change == "enroll-other-device":
        _enroll_other(lp, tmp_path)
    elif change == "hand-edit-reload":
        _hand_edit(lp, tmp_path)
    else:
        loop.stop()  # a canary is about to be revoked: its leases are meant to fail
        lp.call("revoke", device=loop.devices[0])

    if change != "revoke-other":
        loop.wait_more(2 * len(loop.devices))
    after = lp.record("tlsdev1")
    assert after["status"] == "connected" and after["connect_count"] == before["connect_count"], (
        "the trust change dropped the CA-identity device: %s" % after
    )
    assert dev.count("DISCONNECTED") == 0, dev.output()
    if change == "revoke-other":
        # The revoked canary's session ends; the TLS device's lease still works.
        loop.lease_once("tlsdev1")
        loop.drops = lambda: dev.count("DISCONNECTED")
    verdict(lp, loop)

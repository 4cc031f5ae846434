# SPDX-License-Identifier: GPL-3.0-or-later
"""Policy rules added by issue 10: claims against live devices (defect 5), what stays trusted
after a trust change (defect 6), stale pending entries, credentials on approve and stale
temporary files (defect 13)."""

from __future__ import annotations

import json
import os
import time
import typing as t
from pathlib import Path

import asyncssh
import pytest
import trustme

from netconf_callhome.config import Credentials, TLSOptions
from netconf_callhome.errors import ConfigError
from netconf_callhome.fingerprints import cert_fingerprint_of_der, pem_to_der, ssh_fingerprint
from netconf_callhome.policy import trust_ops
from netconf_callhome.policy.trust_store import TrustStore
from netconf_callhome.policy.verdicts import MISMATCH, UNKNOWN, TrustPolicy, Verdict, refusal


def key_line() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()


def make_policy(tmp_path: Path, devices: t.Dict[str, t.Any], cas: t.Sequence[bytes] = ()) -> TrustPolicy:
    (tmp_path / "trust.json").write_text(json.dumps({"version": 1, "devices": devices}))
    paths = []
    for number, pem in enumerate(cas):
        (tmp_path / ("ca%d.pem" % number)).write_bytes(pem)
        paths.append(str(tmp_path / ("ca%d.pem" % number)))
    return TrustPolicy(TrustStore(str(tmp_path / "trust.json")), TLSOptions(device_cas=paths), Credentials())


# -- defect 5 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["device-id", "identity", "address"])
def test_a_claim_against_a_connected_device_never_marks_it(source: str) -> None:
    verdict = Verdict(MISMATCH, "r1", "SHA256:x", claim_source=source)
    live = refusal(verdict, key_type="ssh-ed25519", peer="198.51.100.7:1", device_connected=True)
    assert not live.mark_device and live.event == "device.claim_refused"
    assert "Do not approve this key for 'r1'" in live.message and "--replace" not in live.message
    idle = refusal(verdict, key_type="ssh-ed25519", peer="198.51.100.7:1", device_connected=False)
    assert idle.mark_device and idle.event == "device.key_mismatch"
    assert idle.message == "presented ssh-ed25519 SHA256:x, which is not enrolled for it (from 198.51.100.7:1)"


def test_an_unknown_key_marks_nobody() -> None:
    for verdict in (Verdict(UNKNOWN, "", "SHA256:x"), Verdict(UNKNOWN, "new1", "SHA256:x", claim_source="device-id")):
        for connected in (True, False):
            out = refusal(verdict, key_type="x509", peer="p", device_connected=connected)
            assert not out.mark_device and out.event == "device.unknown_key"


# -- defect 6 ----------------------------------------------------------------------------------------


def test_still_trusts_follows_the_identity_a_session_was_accepted_under(tmp_path: Path) -> None:
    ssh_r2, tls_fp = key_line(), "AB:" * 31 + "CD"
    devices = {
        "r1": {"tls_identities": ["dns:r1.example.net", "serial:R1"]},
        "r2": {"ssh_host_keys": [ssh_r2]},
        "r3": {"tls_fingerprints": [tls_fp]},
    }
    policy = make_policy(tmp_path, devices)
    fp_r2 = ssh_fingerprint(ssh_r2)
    assert policy.still_trusts("r1", "tls", "11:" * 32, ["cn:whatever", "dns:r1.example.net"])
    assert not policy.still_trusts("r1", "tls", "11:" * 32, ["dns:r9.example.net"])
    assert not policy.still_trusts("r1", "tls", "11:" * 32, [])  # no identity known: fail closed
    assert policy.still_trusts("r2", "ssh", fp_r2) and not policy.still_trusts("r1", "ssh", fp_r2)
    assert policy.still_trusts("r3", "tls", tls_fp)

    store = policy.store
    trust_ops.revoke(store, "r1", "serial:R1")  # another identity of r1: r1 stays trusted
    assert policy.reload() and policy.still_trusts("r1", "tls", "11:" * 32, ["dns:r1.example.net"])
    trust_ops.revoke(store, "r1", "dns:r1.example.net")
    assert policy.reload() and not policy.still_trusts("r1", "tls", "11:" * 32, ["dns:r1.example.net"])
    # an identity that now names another device is not trust for this one
    trust_ops.enroll(store, "r9", "tls_identities", "dns:r1.example.net")
    assert policy.reload() and not policy.still_trusts("r1", "tls", "11:" * 32, ["dns:r1.example.net"])


def test_enrolled_pending(tmp_path: Path) -> None:
    ca, rogue = trustme.CA(), trustme.CA()
    genuine = ca.issue_cert("r1.example.net").cert_chain_pems[0].bytes().decode()
    forged = rogue.issue_cert("r1.example.net").cert_chain_pems[0].bytes().decode()
    ssh = key_line()
    policy = make_policy(
        tmp_path,
        {"r1": {"tls_identities": ["dns:r1.example.net"]}, "r2": {"ssh_host_keys": [ssh]}},
        [ca.cert_pem.bytes()],
    )
    fp = cert_fingerprint_of_der(pem_to_der(genuine))
    assert policy.enrolled_pending("ssh", ssh_fingerprint(ssh), "", [])
    assert not policy.enrolled_pending("ssh", ssh_fingerprint(key_line()), "", [])
    assert policy.enrolled_pending("tls", fp, genuine, ["dns:r1.example.net"])
    # a forged claim stays pending: it is the evidence (defect 5)
    assert not policy.enrolled_pending("tls", "22:" * 32, forged, ["dns:r1.example.net"])
    assert not policy.enrolled_pending("tls", "22:" * 32, "not a certificate", ["dns:r1.example.net"])
    assert not policy.enrolled_pending("tls", "22:" * 32, genuine, ["dns:nobody"])


# -- defect 13 ---------------------------------------------------------------------------------------


class Pending:
    fingerprint = ""
    transport = "ssh"
    public_key = ""
    reason = "unknown-key"
    claimed_device = ""
    claim_source = ""
    peer = "192.0.2.1:1"


def test_approve_pending_applies_credentials(tmp_path: Path) -> None:
    store = TrustStore(str(tmp_path / "trust.json"))
    entry = Pending()
    entry.public_key = key_line()
    entry.fingerprint = ssh_fingerprint(entry.public_key)
    creds = {"username": "admin", "private_key_file": "/etc/k", "password_file": None}
    dry = trust_ops.approve_pending(store, entry, "r1", credentials=creds, dry_run=True)
    assert dry.changed and not os.path.exists(store.path)
    change = trust_ops.approve_pending(store, entry, "r1", credentials=creds)
    assert change.changed
    assert store.load()["devices"]["r1"]["credentials"] == {"username": "admin", "private_key_file": "/etc/k"}
    # the same key again with other credentials: a change of credentials only
    again = trust_ops.approve_pending(store, entry, "r1", credentials={"username": "ops"})
    assert again.changed and store.load()["devices"]["r1"]["credentials"] == {"username": "ops"}
    with pytest.raises(ConfigError, match="unsupported credential fields: password"):
        trust_ops.approve_pending(store, entry, "r1", credentials={"password": "secret"})
    with pytest.raises(ConfigError, match="credentials must be an object"):
        trust_ops.approve_pending(store, entry, "r1", credentials=t.cast(t.Any, "admin"))


def _temp(directory: Path, name: str, age: float) -> Path:
    path = directory / name
    path.write_text("{}")
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def test_stale_temporary_files_are_removed_under_the_lock(tmp_path: Path) -> None:
    store = TrustStore(str(tmp_path / "trust.json"))
    stale = _temp(tmp_path, ".trust-dead1.tmp", 3600)
    fresh = _temp(tmp_path, ".trust-live1.tmp", 1)  # a write in progress elsewhere: kept
    other = _temp(tmp_path, "notes.tmp", 3600)
    # a read before any writer ran creates no lock file and removes nothing
    store.load()
    assert not os.path.exists(store.lock_path) and stale.exists()
    trust_ops.enroll(store, "r1", "tls_identities", "cn:r1")  # a write sweeps under its lock
    assert not stale.exists() and fresh.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.glob(".trust-*.tmp")) == [".trust-live1.tmp"]
    # a read sweeps too when nobody holds the lock (the listener's reload, a kill -9 later)
    stale2 = _temp(tmp_path, ".trust-dead2.tmp", 120)
    store.load()
    assert not stale2.exists() and fresh.exists()


def test_a_read_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    import fcntl

    store = TrustStore(str(tmp_path / "trust.json"))
    trust_ops.enroll(store, "r1", "tls_identities", "cn:r1")
    stale = _temp(tmp_path, ".trust-dead.tmp", 3600)
    fd = os.open(store.lock_path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer at work
    try:
        started = time.monotonic()
        assert "r1" in store.load()["devices"]
        assert time.monotonic() - started < 1.0 and stale.exists()  # left for later
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

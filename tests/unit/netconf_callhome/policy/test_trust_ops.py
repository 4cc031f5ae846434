# SPDX-License-Identifier: GPL-3.0-or-later
"""The one set of trust store rules (policy/trust_ops.py): approving a pending key, enrolling an
explicit or observed identity, replacing only when asked, revoking, and dry runs that write nothing.
"""

from __future__ import annotations

import json
import os
import re
import typing as t
from pathlib import Path

import asyncssh
import pytest

from netconf_callhome.errors import ConfigError, KeyMismatchError, UnknownKeyError
from netconf_callhome.fingerprints import ssh_fingerprint
from netconf_callhome.policy import trust_ops
from netconf_callhome.policy.trust_ops import (
    PendingEntry,
    ReplaceRequiredError,
    TrustChange,
    approve_pending,
    enroll,
    revoke,
)
from netconf_callhome.policy.trust_store import TrustStore

CERT_FP = ":".join(["AB"] * 32)  # the one notation written (issue 10)
CERT_FP2 = ":".join(["CD"] * 32)


def ssh_key(alg: str = "ssh-ed25519") -> str:
    return asyncssh.generate_private_key(alg).export_public_key("openssh").decode().strip()


KEY_A, KEY_B, KEY_C = ssh_key(), ssh_key(), ssh_key("ecdsa-sha2-nistp256")
FP_A, FP_B, FP_C = ssh_fingerprint(KEY_A), ssh_fingerprint(KEY_B), ssh_fingerprint(KEY_C)


@pytest.fixture()
def store(tmp_path: Path) -> TrustStore:
    return TrustStore(str(tmp_path / "trust.json"))


def devices(store: TrustStore) -> t.Dict[str, t.Any]:
    with open(store.path, encoding="utf-8") as handle:
        return dict(json.load(handle)["devices"])


def seed(store: TrustStore, data: t.Dict[str, t.Any]) -> None:
    with open(store.path, "w", encoding="utf-8") as handle:
        json.dump({"version": 1, "devices": data}, handle)


def pending(public_key: str = KEY_B, **fields: t.Any) -> PendingEntry:
    fp = ssh_fingerprint(public_key) if public_key else fields.pop("fingerprint")
    return PendingEntry(fingerprint=fp, public_key=public_key, **fields)


# -- approve ---------------------------------------------------------------------------------------


def test_approve_enrolls_the_key_and_is_idempotent(store: TrustStore) -> None:
    change = approve_pending(store, pending(KEY_A), "r1")
    assert (change.changed, change.device, change.kind, change.fingerprint) == (True, "r1", "ssh_host_keys", FP_A)
    assert (change.before, change.after, change.transport) == ([], [FP_A], "ssh")
    assert devices(store)["r1"]["ssh_host_keys"] == [KEY_A]
    mtime = os.stat(store.path).st_mtime_ns
    again = approve_pending(store, pending(KEY_A), "r1")
    assert again.changed is False and os.stat(store.path).st_mtime_ns == mtime


def test_approve_refuses_a_second_key_of_the_same_kind(store: TrustStore) -> None:
    """What `callhome-listener approve FP --device r1` used to do silently."""
    seed(store, {"r1": {"ssh_host_keys": [KEY_A]}})
    with pytest.raises(ReplaceRequiredError) as info:
        approve_pending(store, pending(KEY_B), "r1")
    message = info.value.message
    assert FP_A in message and FP_B in message
    assert "callhome-listener approve %s --device r1 --replace" % FP_B in message
    assert isinstance(info.value, ConfigError) and isinstance(info.value, KeyMismatchError)
    assert info.value.code == "key-mismatch"  # what crosses the control socket
    assert devices(store)["r1"]["ssh_host_keys"] == [KEY_A]
    # another algorithm is still another key of the same kind: the listener reports it as a mismatch
    with pytest.raises(ReplaceRequiredError):
        approve_pending(store, pending(KEY_C), "r1")


def test_approving_a_mismatch_replaces_only_when_asked(store: TrustStore) -> None:
    seed(store, {"r1": {"ssh_host_keys": [KEY_A], "credentials": {"username": "admin"}}})
    mismatch = pending(KEY_B, reason="key-mismatch", claimed_device="r1", claim_source="address", peer="192.0.2.1:5000")
    with pytest.raises(ReplaceRequiredError, match="--replace"):
        approve_pending(store, mismatch, "r1")
    change = approve_pending(store, mismatch, "r1", replace=True)
    assert change.changed and change.replaced == [FP_A] and change.before == [FP_A] and change.after == [FP_B]
    # the credentials are filed under the device, not the key: they stay
    assert devices(store)["r1"] == {"ssh_host_keys": [KEY_B], "credentials": {"username": "admin"}}


def test_replace_keeps_other_kinds(store: TrustStore) -> None:
    seed(store, {"r1": {"ssh_host_keys": [KEY_A], "tls_identities": ["serial:R1"]}})
    change = approve_pending(store, pending(KEY_B), "r1", replace=True)
    assert change.replaced == [FP_A]
    assert devices(store)["r1"] == {"ssh_host_keys": [KEY_B], "tls_identities": ["serial:R1"]}


def test_approve_tls_pins_the_certificate_next_to_an_identity(store: TrustStore) -> None:
    # A CA-enrolled device (tls_identities) whose certificate failed the chain check: pinning the
    # certificate is another kind of identity, not a second one of the same kind.
    seed(store, {"r1": {"tls_identities": ["serial:R1"]}})
    entry = PendingEntry(fingerprint=CERT_FP, transport="tls", reason="key-mismatch", claimed_device="r1",
                         claim_source="identity")
    change = approve_pending(store, entry)  # the certificate names r1: no --device needed
    assert (change.device, change.kind, change.transport) == ("r1", "tls_fingerprints", "tls")
    assert devices(store)["r1"]["tls_fingerprints"] == [CERT_FP]
    other = PendingEntry(fingerprint=CERT_FP2, transport="tls", claimed_device="r1", claim_source="identity")
    with pytest.raises(ReplaceRequiredError):
        approve_pending(store, other)


def test_approve_needs_a_device_unless_the_certificate_names_one(store: TrustStore) -> None:
    hinted = pending(KEY_B, claimed_device="r1", claim_source="address", peer="192.0.2.1:5000")
    with pytest.raises(ConfigError, match=r"say which device.*192\.0\.2\.1:5000 last used by 'r1'"):
        approve_pending(store, hinted)
    with pytest.raises(ConfigError, match=re.escape("say which device key %s belongs to (--device NAME)" % FP_B) + "$"):
        approve_pending(store, pending(KEY_B))
    assert not os.path.exists(store.path)


def test_approve_never_moves_a_key_between_devices(store: TrustStore) -> None:
    seed(store, {"r1": {"ssh_host_keys": [KEY_A]}})
    with pytest.raises(ConfigError, match="already enrolled for device 'r1'"):
        approve_pending(store, pending(KEY_A), "r2", replace=True)
    assert set(devices(store)) == {"r1"}


def test_approve_dry_run_writes_nothing(store: TrustStore) -> None:
    change = approve_pending(store, pending(KEY_A), "r1", dry_run=True)
    assert change.changed and change.dry_run and change.after == [FP_A]
    assert not os.path.exists(store.path)


def test_approve_without_a_public_key_line_enrolls_the_fingerprint(store: TrustStore) -> None:
    entry = PendingEntry(fingerprint=FP_A)
    change = approve_pending(store, entry, "r1")
    assert change.after == [FP_A] and devices(store)["r1"]["ssh_host_keys"] == [FP_A]


def test_the_registry_pending_entry_fits(store: TrustStore) -> None:
    """state.registry.PendingKey is what the service passes; policy does not import it."""
    from netconf_callhome.state.registry import PendingKey

    entry = PendingKey(fingerprint=FP_A, key_type="ssh-ed25519", transport="ssh", public_key=KEY_A,
                       peer="192.0.2.1:5000")
    assert approve_pending(store, entry, "r1").after == [FP_A]


def test_pending_entry_from_the_control_answer() -> None:
    entry = PendingEntry.from_mapping(
        {"fingerprint": CERT_FP, "transport": "tls", "public_key": None, "reason": "key-mismatch",
         "claimed_device": "r1", "claim_source": "identity", "peer": "[2001:db8::1]:4335", "count": 3}
    )
    assert entry == PendingEntry(CERT_FP, "tls", "", "key-mismatch", "r1", "identity", "[2001:db8::1]:4335")


# -- enroll ----------------------------------------------------------------------------------------


def test_explicit_keys_may_join_observed_ones_may_not(store: TrustStore) -> None:
    enroll(store, "r1", "ssh_host_keys", KEY_A)
    joined = enroll(store, "r1", "ssh_host_keys", KEY_B)  # vouched for by whoever gave it
    assert joined.changed and joined.after == [FP_A, FP_B] and joined.replaced == []
    with pytest.raises(ReplaceRequiredError, match="replace_existing: true"):
        enroll(store, "r1", "ssh_host_keys", KEY_C, observed=True)
    assert devices(store)["r1"]["ssh_host_keys"] == [KEY_A, KEY_B]
    replaced = enroll(store, "r1", "ssh_host_keys", KEY_C, observed=True, replace=True)
    assert replaced.replaced == [FP_A, FP_B] and replaced.after == [FP_C]


def test_observed_key_for_a_new_device_or_the_same_key_is_fine(store: TrustStore) -> None:
    first = enroll(store, "r1", "ssh_host_keys", KEY_A, observed=True)
    assert first.changed and first.after == [FP_A]
    same = enroll(store, "r1", "ssh_host_keys", FP_A, observed=True)  # another spelling of the same key
    assert same.changed is False and same.after == [FP_A]


def test_explicit_replace_removes_the_others(store: TrustStore) -> None:
    enroll(store, "r1", "tls_fingerprints", CERT_FP)
    change = enroll(store, "r1", "tls_fingerprints", CERT_FP2, replace=True)
    assert change.replaced == [CERT_FP] and devices(store)["r1"]["tls_fingerprints"] == [CERT_FP2]


def test_enroll_credentials(store: TrustStore) -> None:
    credentials = {"username": "admin", "password_env": "PW", "password_file": ""}
    change = enroll(store, "r1", "tls_identities", "SERIAL:FOC1", credentials=credentials)
    assert change.fingerprint == "serial:FOC1"
    assert devices(store)["r1"] == {"tls_identities": ["serial:FOC1"],
                                    "credentials": {"username": "admin", "password_env": "PW"}}
    # changing only the credentials is a change
    assert enroll(store, "r1", "tls_identities", "serial:FOC1", credentials={"username": "ops"}).changed
    with pytest.raises(ConfigError, match="unsupported credential fields: password"):
        enroll(store, "r1", "tls_identities", "serial:FOC1", credentials={"password": "secret"})


def test_enroll_refusals(store: TrustStore) -> None:
    with pytest.raises(ConfigError, match="kind must be one of"):
        enroll(store, "r1", "passwords", "x")
    with pytest.raises(ConfigError, match="TLS identity must be one of"):
        enroll(store, "r1", "tls_identities", "FOC1")
    with pytest.raises(ConfigError, match="invalid device name"):
        enroll(store, "a/b", "ssh_host_keys", KEY_A)
    enroll(store, "r1", "ssh_host_keys", KEY_A)
    with pytest.raises(ConfigError, match="already enrolled for device 'r1'"):
        enroll(store, "r2", "ssh_host_keys", FP_A)
    assert set(devices(store)) == {"r1"}


def test_enroll_dry_run(store: TrustStore) -> None:
    seed(store, {"r1": {"ssh_host_keys": [KEY_A]}})
    before = open(store.path, encoding="utf-8").read()
    change = enroll(store, "r1", "ssh_host_keys", KEY_B, observed=True, replace=True, dry_run=True)
    assert change.changed and change.after == [FP_B] and change.replaced == [FP_A]
    assert open(store.path, encoding="utf-8").read() == before


# -- revoke ----------------------------------------------------------------------------------------


def test_revoke_one_identity_then_the_device(store: TrustStore) -> None:
    seed(store, {"r1": {"ssh_host_keys": [KEY_A, KEY_B], "tls_identities": ["serial:R1"]}})
    one = revoke(store, "r1", FP_A)
    assert one.changed and one.identity == FP_A and one.fingerprint == FP_A
    assert one.before == [FP_A, FP_B, "serial:R1"] and one.after == [FP_B, "serial:R1"]
    assert revoke(store, "r1", KEY_A).changed is False  # already gone (any spelling)
    # restricted to a kind, a value of another kind matches nothing
    assert revoke(store, "r1", FP_B, kind="tls_identities").changed is False
    whole = revoke(store, "r1")
    assert whole.changed and whole.after == [] and devices(store) == {}
    assert revoke(store, "r1").changed is False


def test_revoke_dry_run_and_bad_kind(store: TrustStore) -> None:
    seed(store, {"r1": {"ssh_host_keys": [KEY_A]}})
    change = revoke(store, "r1", dry_run=True)
    assert change.changed and change.after == [] and devices(store) == {"r1": {"ssh_host_keys": [KEY_A]}}
    with pytest.raises(ConfigError, match="kind must be one of"):
        revoke(store, "r1", FP_A, kind="keys")


# -- results and shared rules ------------------------------------------------------------------------


def test_results_carry_what_the_old_operations_answered(store: TrustStore) -> None:
    approved = approve_pending(store, pending(KEY_A), "r1").to_dict()
    assert {"device", "fingerprint", "transport", "changed"} <= set(approved)
    enrolled = enroll(store, "r2", "ssh_host_keys", KEY_B).to_dict()
    assert {"changed", "device", "kind", "fingerprint", "before", "after"} <= set(enrolled)
    revoked = revoke(store, "r2", None).to_dict()
    assert (revoked["device"], revoked["identity"], revoked["changed"]) == ("r2", None, True)
    assert json.loads(json.dumps(approved)) == approved  # plain JSON for the control socket
    assert TrustChange(changed=False, device="x").to_dict()["replaced"] == []


@pytest.mark.parametrize(
    "source, value, kind, fingerprint",
    [
        ("public_key", KEY_A, "ssh_host_keys", FP_A),
        ("fingerprint", FP_A, "ssh_host_keys", FP_A),
        ("tls_fingerprint", "ab" * 32, "tls_fingerprints", CERT_FP),
        ("tls_identity", "CN:r1", "tls_identities", "cn:r1"),
    ],
)
def test_explicit_identity(source: str, value: str, kind: str, fingerprint: str) -> None:
    identity = trust_ops.explicit_identity(source, value)
    assert (identity.kind, identity.fingerprint, identity.observed) == (kind, fingerprint, False)


def test_check_observed() -> None:
    seen = trust_ops.Identity("ssh_host_keys", KEY_A, FP_A, observed=True)
    trust_ops.check_observed(seen, expected=FP_A, tofu=False, where="r1")  # matches: no exception
    trust_ops.check_observed(seen, expected=None, tofu=True, where="r1")  # trust on first use
    with pytest.raises(KeyMismatchError, match="not the expected"):
        trust_ops.check_observed(seen, expected=FP_B, tofu=True, where="r1")
    with pytest.raises(UnknownKeyError, match="nobody vouched for"):
        trust_ops.check_observed(seen, expected=None, tofu=False, where="r1")
    assert trust_ops.same_fingerprint("ssh_host_keys", KEY_A, FP_A)
    assert not trust_ops.same_fingerprint("tls_fingerprints", KEY_A, FP_A)  # not of that kind

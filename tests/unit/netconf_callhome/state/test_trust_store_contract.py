# SPDX-License-Identifier: GPL-3.0-or-later
"""The trust store contract: the trust operations (policy/trust_ops.py) give the same answers
and leave the same document on the file store (trust.json) and on PostgreSQL
(state/trust_postgres.py); every case runs against both (``make_trust``). Then what only the
shared store has: a change on one node seen by another, the database's own refusal of one key
for two devices, and a database that goes away."""

from __future__ import annotations

import concurrent.futures
import logging
import time
import typing as t
from pathlib import Path

import asyncssh
import pytest

from netconf_callhome.config import Credentials, TLSOptions
from netconf_callhome.errors import ConfigError, TrustStoreError
from netconf_callhome.fingerprints import ssh_fingerprint
from netconf_callhome.policy import trust_ops
from netconf_callhome.policy.trust_ops import PendingEntry, ReplaceRequiredError
from netconf_callhome.policy.trust_store import TrustStore, add_identity
from netconf_callhome.policy.verdicts import TrustPolicy


def ssh_key(alg: str = "ssh-ed25519") -> str:
    return asyncssh.generate_private_key(alg).export_public_key("openssh").decode().strip()


KEY_A, KEY_B = ssh_key(), ssh_key()
FP_A, FP_B = ssh_fingerprint(KEY_A), ssh_fingerprint(KEY_B)
CERT_FP = ":".join(["AB"] * 32)


@pytest.fixture(params=["file", "postgresql"])
def make_trust(request: t.Any, tmp_path: Path) -> t.Iterator[t.Callable[..., t.Any]]:
    """``make_trust(node)``: a trust store on this test's one storage; several calls are several
    nodes (or processes) on it."""
    opened: t.List[t.Any] = []

    def make(node: str = "n1") -> t.Any:
        if request.param == "file":
            return TrustStore(str(tmp_path / "trust.json"))
        from netconf_callhome.state.trust_postgres import PostgresTrustStore

        store = PostgresTrustStore(request.getfixturevalue("pg_url"), node=node, poll_interval=0.1)
        opened.append(store)
        return store

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for store in opened:
        store.close()


def _pending(public_key: str, **fields: t.Any) -> PendingEntry:
    return PendingEntry(fingerprint=ssh_fingerprint(public_key), public_key=public_key, **fields)


def _devices(store: t.Any) -> t.Dict[str, t.Any]:
    return dict(store.load()["devices"])


def _eventually(check: t.Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within %.1f s" % timeout
        time.sleep(0.02)


# -- the same trust operations on both stores --------------------------------------------------


def test_approve_enrolls_and_is_idempotent(make_trust):
    store = make_trust()
    change = trust_ops.approve_pending(store, _pending(KEY_A), "r1", credentials={"username": "admin"})
    assert (change.changed, change.before, change.after) == (True, [], [FP_A])
    assert _devices(store) == {"r1": {"ssh_host_keys": [KEY_A], "credentials": {"username": "admin"}}}
    signature = store.stat_signature()
    again = trust_ops.approve_pending(store, _pending(KEY_A), "r1", credentials={"username": "admin"})
    assert again.changed is False and store.stat_signature() == signature  # nothing written


def test_a_second_key_needs_replace_and_credentials_stay(make_trust):
    store = make_trust()
    trust_ops.enroll(store, "r1", "ssh_host_keys", KEY_A, credentials={"username": "admin"})
    with pytest.raises(ReplaceRequiredError, match="--replace"):
        trust_ops.approve_pending(store, _pending(KEY_B, reason="key-mismatch"), "r1")
    assert _devices(store)["r1"]["ssh_host_keys"] == [KEY_A]
    change = trust_ops.approve_pending(store, _pending(KEY_B), "r1", replace=True)
    assert change.replaced == [FP_A] and change.after == [FP_B]
    assert _devices(store)["r1"] == {"ssh_host_keys": [KEY_B], "credentials": {"username": "admin"}}


def test_a_key_never_moves_between_devices(make_trust):
    store = make_trust()
    trust_ops.enroll(store, "r1", "ssh_host_keys", KEY_A)
    with pytest.raises(ConfigError, match="already enrolled for device 'r1'"):
        trust_ops.approve_pending(store, _pending(KEY_A), "r2")
    assert set(_devices(store)) == {"r1"}


def test_dry_run_writes_nothing(make_trust):
    store = make_trust()
    trust_ops.enroll(store, "r1", "ssh_host_keys", KEY_A)
    signature = store.stat_signature()
    change = trust_ops.revoke(store, "r1", dry_run=True)
    assert change.changed and change.after == [] and change.dry_run
    change = trust_ops.enroll(store, "r2", "tls_fingerprints", CERT_FP, dry_run=True)
    assert change.changed
    assert set(_devices(make_trust("other"))) == {"r1"} and store.stat_signature() == signature


def test_revoke_one_identity_then_the_device(make_trust):
    store = make_trust()
    trust_ops.enroll(store, "r1", "ssh_host_keys", KEY_A)
    trust_ops.enroll(store, "r1", "tls_identities", "serial:R1", credentials={"username": "u"})
    change = trust_ops.revoke(store, "r1", FP_A)
    assert change.changed and change.after == ["serial:R1"]
    assert _devices(store)["r1"] == {"ssh_host_keys": [], "tls_identities": ["serial:R1"], "credentials": {"username": "u"}}
    assert trust_ops.revoke(store, "r1").changed and _devices(store) == {}
    assert trust_ops.revoke(store, "r1").changed is False  # not enrolled: not an error
    # the key is free again, for another device
    trust_ops.enroll(store, "r2", "ssh_host_keys", KEY_A)
    assert set(_devices(store)) == {"r2"}


def test_passwords_are_refused_and_nothing_is_written(make_trust):
    store = make_trust()
    trust_ops.enroll(store, "r1", "ssh_host_keys", KEY_A)

    def smuggle(data: t.Dict[str, t.Any]) -> None:
        data["devices"]["r1"]["credentials"] = {"password": "hunter2"}

    with pytest.raises(TrustStoreError, match="credentials may only hold username"):
        store.update(smuggle)
    assert _devices(make_trust("other")) == {"r1": {"ssh_host_keys": [KEY_A]}}


def test_outbound_ssh_secret_references(make_trust):
    store = make_trust()
    result = trust_ops.set_outbound_ssh_secret(store, "mx1", "env:MX1_SECRET")
    assert result["changed"] and result["outbound_ssh"] == {"secret": "env:MX1_SECRET", "allow_rotation": False}
    trust_ops.set_outbound_ssh_group_secret(store, "branch", ["br-*"], "file:/etc/callhome/branch.secret")
    listed = trust_ops.outbound_ssh_secrets(make_trust("other"))
    assert listed["devices"] == {"mx1": {"secret": "env:MX1_SECRET", "allow_rotation": False}}
    assert listed["groups"]["branch"]["device_ids"] == ["br-*"]
    assert trust_ops.set_outbound_ssh_group_secret(store, "branch", None)["changed"]
    assert trust_ops.set_outbound_ssh_secret(store, "mx1", None)["changed"]
    assert trust_ops.outbound_ssh_secrets(store) == {"devices": {}, "groups": {}}
    assert trust_ops.set_outbound_ssh_group_secret(store, "branch", None)["changed"] is False


def test_writers_on_two_nodes_lose_no_update(make_trust):
    """Two nodes (two stores, several threads each) enroll at once: every enrollment is there."""
    nodes = [make_trust("a"), make_trust("b")]
    keys = [ssh_key() for _unused in range(24)]

    def enroll(i: int) -> None:
        trust_ops.enroll(nodes[i % 2], "r%02d" % i, "ssh_host_keys", keys[i])

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(enroll, range(len(keys))))
    fresh = make_trust("c")
    assert set(_devices(fresh)) == {"r%02d" % i for i in range(len(keys))}


def test_a_change_on_one_node_reaches_the_policy_of_another(make_trust):
    node_a, node_b = make_trust("a"), make_trust("b")
    policy = TrustPolicy(node_b, TLSOptions(), Credentials())
    assert policy.ssh_verdict(FP_A).outcome == "unknown-key"
    trust_ops.enroll(node_a, "r1", "ssh_host_keys", KEY_A)
    _eventually(lambda: policy.reload() or policy.index.ssh.get(FP_A) == "r1", timeout=2.0)
    assert policy.ssh_verdict(FP_A).device == "r1"
    trust_ops.revoke(node_a, "r1")
    _eventually(lambda: policy.reload() or policy.index.ssh.get(FP_A) is None, timeout=2.0)
    assert policy.ssh_verdict(FP_A).outcome == "unknown-key"


# -- PostgreSQL only ---------------------------------------------------------------------------


def test_the_database_refuses_one_key_for_two_devices(postgres, pg_url):
    from netconf_callhome.state.trust_postgres import PostgresTrustStore

    store = PostgresTrustStore(pg_url, node="n1")
    try:
        trust_ops.enroll(store, "r1", "ssh_host_keys", KEY_A)

        def bypass(data: t.Dict[str, t.Any]) -> None:
            # what add_identity refuses; written straight into the document
            data["devices"]["r2"] = {"ssh_host_keys": [FP_A]}

        with pytest.raises(ConfigError, match="enrolled for two devices"):
            store.update(bypass)
        assert set(_devices(store)) == {"r1"}
        rows = postgres.psql("SELECT kind, identity, device FROM trust_identities", pg_url.rsplit("/", 1)[1])
        assert rows == [["ssh_host_keys", FP_A, "r1"]]
    finally:
        store.close()


def test_an_unreachable_database_refuses_changes_and_keeps_serving_the_last_read(postgres, pg_url, caplog):
    from netconf_callhome.state.trust_postgres import PostgresTrustStore

    database = pg_url.rsplit("/", 1)[1]
    store = PostgresTrustStore(pg_url, node="n1", poll_interval=0.1)
    try:
        trust_ops.enroll(store, "r1", "ssh_host_keys", KEY_A)
        with caplog.at_level(logging.ERROR, logger="netconf_callhome.trust"):
            postgres.psql("ALTER DATABASE %s ALLOW_CONNECTIONS false" % database)
            postgres.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'" % database)
            with pytest.raises(TrustStoreError, match=r"cannot change the trust store postgresql://callhome:\*\*\*@") as info:
                trust_ops.enroll(store, "r2", "ssh_host_keys", KEY_B)
            assert postgres.password not in info.value.message
            _eventually(lambda: "event=trust.poll_failed" in caplog.text)
        assert caplog.text.count("event=trust.poll_failed") == 1
        assert postgres.password not in caplog.text
        assert set(_devices(store)) == {"r1"}  # served from the last read
        postgres.psql("ALTER DATABASE %s ALLOW_CONNECTIONS true" % database)
        trust_ops.enroll(store, "r2", "ssh_host_keys", KEY_B)
        assert set(_devices(store)) == {"r1", "r2"}
    finally:
        postgres.psql("ALTER DATABASE %s ALLOW_CONNECTIONS true" % database)
        store.close()


def test_identities_are_rows(postgres, pg_url):
    from netconf_callhome.state.trust_postgres import PostgresTrustStore

    store = PostgresTrustStore(pg_url, node="node-a")
    try:
        data: t.Dict[str, t.Any] = {"version": 1, "devices": {}}
        add_identity(data, "r1", kind="tls_identities", value="SERIAL:R1")
        trust_ops.enroll(store, "r1", "tls_identities", "SERIAL:R1")
        trust_ops.enroll(store, "r1", "ssh_host_keys", KEY_A)
        rows = postgres.psql(
            "SELECT kind, identity, device FROM trust_identities ORDER BY kind", pg_url.rsplit("/", 1)[1]
        )
        assert rows == [["ssh_host_keys", FP_A, "r1"], ["tls_identities", "serial:R1", "r1"]]
        assert postgres.psql("SELECT updated_by FROM trust_devices", pg_url.rsplit("/", 1)[1]) == [["node-a"]]
    finally:
        store.close()


def test_a_change_is_notified_to_every_node_at_once(postgres, pg_url):
    """LISTEN/NOTIFY, not the poller: with a 30 s poll, node-b's subscriber hears of node-a's
    change within a second, and serves it."""
    from netconf_callhome.state.trust_postgres import PostgresTrustStore

    node_a = PostgresTrustStore(pg_url, node="a", poll_interval=30)
    node_b = PostgresTrustStore(pg_url, node="b", poll_interval=30)
    heard: t.List[t.Tuple[int, float]] = []
    try:
        node_b.subscribe(lambda revision: heard.append((revision, time.monotonic())))
        _eventually(node_b.listener.connected.is_set)
        started = time.monotonic()
        trust_ops.enroll(node_a, "r1", "ssh_host_keys", KEY_A)
        _eventually(lambda: bool(heard), timeout=1.0)
        assert heard[0][0] == node_a.revision and heard[0][1] - started < 1.0
        assert _devices(node_b) == _devices(node_a)
        assert node_b.stat_signature() == node_a.stat_signature()
    finally:
        node_a.close()
        node_b.close()


def test_the_first_node_seeds_the_shared_store_from_its_file(postgres, pg_url, tmp_path):
    from netconf_callhome.state.stores import open_trust_store

    first, second = tmp_path / "a" / "trust.json", tmp_path / "b" / "trust.json"
    for path, (name, key) in ((first, ("r1", KEY_A)), (second, ("r2", KEY_B))):
        path.parent.mkdir()
        trust_ops.enroll(TrustStore(str(path)), name, "ssh_host_keys", key)
    node_a = open_trust_store(pg_url, trust_file=str(first), node="a")
    node_b = open_trust_store(pg_url, trust_file=str(second), node="b")  # its file is not used
    try:
        assert set(_devices(node_a)) == set(_devices(node_b)) == {"r1"}
        # a file store where there is no shared database
        assert isinstance(open_trust_store("", trust_file=str(first), node="a"), TrustStore)
    finally:
        node_a.close()  # type: ignore[attr-defined]
        node_b.close()  # type: ignore[attr-defined]

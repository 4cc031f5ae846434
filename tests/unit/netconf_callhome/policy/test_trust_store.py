# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import json
import multiprocessing
import os
import stat

import asyncssh
import pytest

from netconf_callhome.errors import ConfigError, TrustStoreError
from netconf_callhome.fingerprints import (
    normalize_cert_fingerprint,
    ssh_fingerprint,
)
from netconf_callhome.policy.trust_store import (
    TrustIndex,
    TrustStore,
    add_identity,
    remove_identity,
    set_credentials,
)


def _pub(alg="ssh-ed25519"):
    return asyncssh.generate_private_key(alg).export_public_key().decode().strip()


@pytest.mark.parametrize("alg", ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"])
def test_fingerprint_matches_asyncssh(alg):
    key = asyncssh.generate_private_key(alg, **({"key_size": 2048} if alg == "ssh-rsa" else {}))
    assert ssh_fingerprint(key.export_public_key().decode()) == key.get_fingerprint("sha256")


def test_wrong_key_blob_is_refused():
    ed = _pub().split()[1]
    with pytest.raises(ConfigError, match="does not match"):
        ssh_fingerprint("ecdsa-sha2-nistp256 " + ed)


def test_cert_fingerprint_forms_normalize():
    hexfp = "ab" * 32
    expected = ":".join(["AB"] * 32)  # one notation (issue 10); the old SHA256: prefix is still read
    assert normalize_cert_fingerprint(hexfp) == expected
    assert normalize_cert_fingerprint(":".join(["ab"] * 32)) == expected
    assert normalize_cert_fingerprint("sha256:" + hexfp) == expected
    with pytest.raises(ConfigError):
        normalize_cert_fingerprint("ab" * 31)


def test_atomic_write_mode_and_roundtrip(tmp_path):
    store = TrustStore(str(tmp_path / "trust.json"))
    key = _pub()
    changed, before, after = store.update(lambda d: add_identity(d, "r1", kind="ssh_host_keys", value=key))
    assert changed and before["devices"] == {}
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert json.load(open(store.path))["devices"]["r1"]["ssh_host_keys"] == [key]
    # idempotent: a second identical update writes nothing
    mtime = os.stat(store.path).st_mtime_ns
    changed = store.update(lambda d: add_identity(d, "r1", kind="ssh_host_keys", value=key))[0]
    assert not changed and os.stat(store.path).st_mtime_ns == mtime
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_dry_run_does_not_write(tmp_path):
    store = TrustStore(str(tmp_path / "trust.json"))
    before, after = store.update(lambda d: add_identity(d, "r1", kind="ssh_host_keys", value=_pub()), dry_run=True)[1:]
    assert before != after and not os.path.exists(store.path)


def test_identity_cannot_move_between_devices_silently(tmp_path):
    store = TrustStore(str(tmp_path / "trust.json"))
    key = _pub()
    store.update(lambda d: add_identity(d, "r1", kind="ssh_host_keys", value=key))
    with pytest.raises(ConfigError, match="already enrolled for device 'r1'"):
        store.update(lambda d: add_identity(d, "r2", kind="ssh_host_keys", value=key))


def test_remove_by_fingerprint_and_whole_device(tmp_path):
    store = TrustStore(str(tmp_path / "trust.json"))
    k1, k2 = _pub(), _pub()
    store.update(
        lambda d: (
            add_identity(d, "r1", kind="ssh_host_keys", value=k1),
            add_identity(d, "r1", kind="ssh_host_keys", value=k2),
        )
    )
    changed, after = store.update(lambda d: remove_identity(d, "r1", value=ssh_fingerprint(k1)))[::2]
    assert changed and after["devices"]["r1"]["ssh_host_keys"] == [k2]
    changed, after = store.update(lambda d: remove_identity(d, "r1"))[::2]
    assert changed and after["devices"] == {}


def test_passwords_are_never_stored(tmp_path):
    store = TrustStore(str(tmp_path / "trust.json"))
    with pytest.raises(ConfigError):
        store.update(lambda d: set_credentials(d, "r1", {"password": "x"}))
    (tmp_path / "bad.json").write_text(json.dumps({"devices": {"r1": {"credentials": {"password": "x"}}}}))
    with pytest.raises(TrustStoreError):
        TrustStore(str(tmp_path / "bad.json")).load()


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "trust.json"
    path.write_text("{not json")
    with pytest.raises(TrustStoreError, match="not valid JSON"):
        TrustStore(str(path)).load()


def _writer(path, name, keys):
    store = TrustStore(path)
    for key in keys:
        store.update(lambda d, k=key: add_identity(d, name, kind="ssh_host_keys", value=k))


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "trust.json")
    jobs = {"w%d" % i: [_pub() for _index in range(10)] for i in range(4)}
    procs = [multiprocessing.Process(target=_writer, args=(path, n, ks)) for n, ks in jobs.items()]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    index = TrustIndex(TrustStore(path).load())
    assert len(index.ssh) == 40
    for name, keys in jobs.items():
        assert all(index.ssh[ssh_fingerprint(k)] == name for k in keys)


def test_bulk_enrollment_with_one_index_is_consistent(tmp_path):
    keys = {"d%03d" % i: _pub() for i in range(50)}
    store = TrustStore(str(tmp_path / "trust.json"))

    def mutate(data):
        index = TrustIndex(data)
        for name, key in keys.items():
            add_identity(data, name, kind="ssh_host_keys", value=key, index=index)
        # the shared index saw every addition: re-adding a key for another device is refused
        with pytest.raises(ConfigError, match="already enrolled for device 'd000'"):
            add_identity(data, "other", kind="ssh_host_keys", value=keys["d000"], index=index)

    store.update(mutate)
    index = TrustIndex(store.load())
    assert {index.ssh[ssh_fingerprint(k)] for k in keys.values()} == set(keys)

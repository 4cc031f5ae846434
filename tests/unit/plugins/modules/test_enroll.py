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

# SPDX-License-Identifier: GPL-3.0-or-later
"""Outbound-ssh secrets (issue 11 item 4): references, never values; resolved when needed; which
secret checks a DEVICE-ID; and the policy's whole check of a preamble against a proved key.

Every refusal here also asserts that the secret's value is nowhere: not in the message, the
exception, the repr, the trust store file or the log records.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict

import asyncssh
import pytest

from netconf_callhome.config import Credentials, TLSOptions
from netconf_callhome.errors import ConfigError, TrustStoreError
from netconf_callhome.policy import trust_ops
from netconf_callhome.policy.secrets import (
    MAX_SECRET_BYTES,
    Secret,
    SecretUnavailableError,
    binding_for,
    parse_reference,
    resolve,
)
from netconf_callhome.policy.trust_store import TrustStore, set_outbound_ssh, set_outbound_ssh_group
from netconf_callhome.policy.verdicts import DEVICE_ID_INVALID, TrustPolicy
from netconf_callhome.protocol.outbound_ssh import (
    HMAC_FAILED,
    HMAC_MISSING,
    HOST_KEY_DIFFERS,
    SECRET_UNAVAILABLE,
    Preamble,
    host_key_hmac,
)

SECRET = "Junos-shared-s3cret!"


def _secret_file(tmp_path: Path, value: str = SECRET, mode: int = 0o600, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    os.chmod(path, mode)
    return path


# -- references --------------------------------------------------------------------------------


@pytest.mark.parametrize("ref, parsed", [("env:CH_SECRET", ("env", "CH_SECRET")), ("file:/etc/x/../s", ("file", "/etc/s"))])
def test_references_parse(ref: str, parsed: tuple) -> None:
    assert parse_reference(ref) == parsed


@pytest.mark.parametrize("ref", [SECRET, "env:", "env:1BAD", "env:A-B", "file:relative/path", "file:", "plain", "", None, 42])
def test_a_value_that_is_not_a_reference_is_refused_without_being_repeated(ref: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_reference(ref)
    assert "env:NAME" in err.value.message and "file:/absolute/path" in err.value.message
    if isinstance(ref, str) and len(ref) > 6:
        assert ref not in err.value.message  # it may be the secret itself


def test_env_reference_resolves_and_names_a_missing_variable() -> None:
    secret = resolve("env:CH_SECRET", environ={"CH_SECRET": SECRET})
    assert secret.reveal() == SECRET.encode()
    with pytest.raises(SecretUnavailableError, match="CH_SECRET is not set"):
        resolve("env:CH_SECRET", environ={})
    with pytest.raises(SecretUnavailableError, match="empty"):
        resolve("env:CH_SECRET", environ={"CH_SECRET": ""})


def test_file_reference_resolves_without_its_final_newline(tmp_path: Path) -> None:
    path = _secret_file(tmp_path)
    assert resolve("file:%s" % path).reveal() == SECRET.encode()
    os.chmod(path, 0o400)
    assert resolve("file:%s" % path).reveal() == SECRET.encode()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620])
def test_a_group_or_world_accessible_secret_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = _secret_file(tmp_path, mode=mode)
    with pytest.raises(SecretUnavailableError) as err:
        resolve("file:%s" % path)
    assert "group or others" in err.value.message and "chmod 600" in err.value.message
    assert "%04o" % mode in err.value.message
    assert SECRET not in err.value.message


def test_missing_directory_empty_and_oversized_secret_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretUnavailableError, match="cannot open"):
        resolve("file:%s" % (tmp_path / "nope"))
    os.chmod(tmp_path, 0o700)
    with pytest.raises(SecretUnavailableError, match="not a regular file"):
        resolve("file:%s" % tmp_path)
    with pytest.raises(SecretUnavailableError, match="empty"):
        resolve("file:%s" % _secret_file(tmp_path, "", name="empty"))
    big = _secret_file(tmp_path, "x" * (MAX_SECRET_BYTES + 1), name="big")
    with pytest.raises(SecretUnavailableError, match="longer than %d bytes" % MAX_SECRET_BYTES):
        resolve("file:%s" % big)
    assert resolve("file:%s" % _secret_file(tmp_path, "y" * MAX_SECRET_BYTES, name="max")).reveal() == b"y" * MAX_SECRET_BYTES


def test_a_secret_never_shows_its_value() -> None:
    secret = Secret(SECRET.encode(), "env:CH_SECRET")
    for text in (repr(secret), str(secret), "%s" % secret, "%r" % [secret], f"{secret}"):
        assert SECRET not in text and "env:CH_SECRET" in text
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(secret)


# -- which secret applies -----------------------------------------------------------------------


def test_own_secret_wins_over_a_group_and_groups_match_by_pattern() -> None:
    devices: Dict[str, dict] = {"br-1": {"outbound_ssh": {"secret": "env:OWN", "allow_rotation": True}}}
    groups = {"branch": {"device_ids": ["br-*"], "secret": "env:GROUP"}, "core": {"device_ids": ["core-?"], "secret": "env:CORE"}}
    own = binding_for("br-1", devices, groups)
    assert own is not None and own.reference == "env:OWN" and own.allow_rotation and own.source == "device br-1"
    group = binding_for("br-2", devices, groups)
    assert group is not None and group.reference == "env:GROUP" and not group.allow_rotation and group.source == "group branch"
    assert binding_for("core-12", devices, groups) is None  # ? is one character
    assert binding_for("BR-2", devices, groups) is None  # case-sensitive, as DEVICE-IDs are
    assert binding_for("", {}, {"all": {"device_ids": ["*"], "secret": "env:X"}}) is None


def test_a_device_id_in_two_groups_is_refused_naming_both() -> None:
    groups = {"a": {"device_ids": ["r*"], "secret": "env:A"}, "b": {"device_ids": ["*1"], "secret": "env:B"}}
    with pytest.raises(SecretUnavailableError, match=r"several outbound-ssh groups \(a, b\)"):
        binding_for("r1", {}, groups)


# -- the trust store holds references only ------------------------------------------------------


def test_trust_store_keeps_references_and_refuses_a_pasted_secret(tmp_path: Path) -> None:
    store = TrustStore(str(tmp_path / "trust.json"))
    result = trust_ops.set_outbound_ssh_secret(store, "r1", "env:R1_SECRET")
    assert result["changed"] and result["outbound_ssh"] == {"secret": "env:R1_SECRET", "allow_rotation": False}
    assert not trust_ops.set_outbound_ssh_secret(store, "r1", "env:R1_SECRET")["changed"]
    trust_ops.set_outbound_ssh_group_secret(store, "branch", ["br-*"], "file:/etc/callhome/branch.secret")
    with pytest.raises(ConfigError) as err:
        trust_ops.set_outbound_ssh_secret(store, "r2", SECRET)
    assert SECRET not in err.value.message
    with pytest.raises(ConfigError) as err:
        trust_ops.set_outbound_ssh_group_secret(store, "g2", ["x*"], SECRET)
    assert SECRET not in err.value.message
    text = (tmp_path / "trust.json").read_text()
    assert SECRET not in text
    assert trust_ops.outbound_ssh_secrets(store) == {
        "devices": {"r1": {"secret": "env:R1_SECRET", "allow_rotation": False}},
        "groups": {"branch": {"device_ids": ["br-*"], "secret": "file:/etc/callhome/branch.secret", "allow_rotation": False}},
    }
    # unset removes the device entry it created (it held nothing else), ungroup the group
    assert trust_ops.set_outbound_ssh_secret(store, "r1", None)["changed"]
    assert trust_ops.set_outbound_ssh_group_secret(store, "branch", None)["changed"]
    assert json.loads((tmp_path / "trust.json").read_text()) == {"version": 1, "devices": {}}


def test_a_hand_edited_store_with_a_secret_value_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_text(json.dumps({"devices": {"r1": {"outbound_ssh": {"secret": SECRET}}}}))
    with pytest.raises(TrustStoreError) as err:
        TrustStore(str(path)).load()
    assert "r1" in err.value.message and SECRET not in err.value.message
    path.write_text(json.dumps({"devices": {}, "outbound_ssh_groups": {"g": {"device_ids": ["*"], "secret": SECRET}}}))
    with pytest.raises(TrustStoreError) as err:
        TrustStore(str(path)).load()
    assert "'g'" in err.value.message and SECRET not in err.value.message
    for bad in ({"device_ids": [], "secret": "env:X"}, {"device_ids": ["a b"], "secret": "env:X"},
                {"device_ids": ["*"], "secret": "env:X", "allow_rotation": "yes"}, {"device_ids": ["*"], "secret": "env:X", "x": 1}):
        path.write_text(json.dumps({"devices": {}, "outbound_ssh_groups": {"g": bad}}))
        with pytest.raises(TrustStoreError):
            TrustStore(str(path)).load()


def test_mutations_refuse_bad_names() -> None:
    with pytest.raises(ConfigError):
        set_outbound_ssh({}, "a/b", "env:X")
    with pytest.raises(ConfigError):
        set_outbound_ssh_group({}, "bad name", ["*"], "env:X")
    assert not set_outbound_ssh_group({}, "missing", None)


# -- the policy's check of a preamble against the proved key -----------------------------------


@pytest.fixture
def keys() -> Dict[str, asyncssh.SSHKey]:
    return {name: asyncssh.generate_private_key("ssh-ed25519") for name in ("device", "other")}


def _line(key: asyncssh.SSHKey) -> str:
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def _policy(tmp_path: Path, mutate) -> TrustPolicy:  # type: ignore[no-untyped-def]
    store = TrustStore(str(tmp_path / "trust.json"))
    store.update(mutate)
    return TrustPolicy(store, TLSOptions(), Credentials())


def _preamble(device_id: str, host_key: str, secret: str = SECRET, hmac: str = "") -> Preamble:
    fields = {"MSG-ID": "DEVICE-CONN-INFO", "MSG-VER": "V1", "DEVICE-ID": device_id}
    if host_key:
        fields["HOST-KEY"] = host_key
        fields["HMAC"] = hmac or host_key_hmac(secret.encode(), host_key)
    return Preamble.from_fields(fields)


def test_policy_check_outcomes(tmp_path: Path, keys: Dict[str, asyncssh.SSHKey], caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("BR_SECRET", SECRET)
    own = _secret_file(tmp_path, name="r1.secret")

    def mutate(data: dict) -> None:
        set_outbound_ssh(data, "r1", "file:%s" % own)
        set_outbound_ssh_group(data, "branch", ["br-*", "bad*"], "env:BR_SECRET")
        set_outbound_ssh(data, "r9", "env:UNSET_SECRET_VARIABLE")

    policy = _policy(tmp_path, mutate)
    device, other = keys["device"], keys["other"]
    fp = device.get_fingerprint("sha256")

    # no secret for the DEVICE-ID: a label only, whatever the preamble says
    assert policy.outbound_ssh_check(_preamble("sim1", _line(device), "whatever"), fp).binding is None
    # the device's own secret, and a group's
    ok = policy.outbound_ssh_check(_preamble("r1", _line(device)), fp)
    assert ok.verified and ok.binding is not None and ok.binding.source == "device r1"
    grouped = policy.outbound_ssh_check(_preamble("br-7", _line(device)), fp)
    assert grouped.verified and grouped.binding is not None and grouped.binding.source == "group branch"
    # uppercase hex is the same HMAC
    upper = host_key_hmac(SECRET.encode(), _line(device)).upper()
    assert policy.outbound_ssh_check(_preamble("r1", _line(device), hmac=upper), fp).verified

    refusals = {
        "wrong secret": (_preamble("r1", _line(device), "not-the-secret"), HMAC_FAILED, "does not verify"),
        "no HOST-KEY/HMAC": (_preamble("r1", ""), HMAC_MISSING, "no HOST-KEY"),
        "non-hex": (_preamble("r1", _line(device), hmac="zz" * 20), HMAC_FAILED, "not hexadecimal"),
        "oversized": (_preamble("r1", _line(device), hmac="ab" * 2000), HMAC_FAILED, "4000 characters"),
        "truncated": (_preamble("r1", _line(device), hmac="ab" * 10), HMAC_FAILED, "20 characters"),
        "another key announced": (_preamble("r1", _line(other)), HOST_KEY_DIFFERS, "handshake proved %s" % fp),
        "unparsable key": (_preamble("r1", "ssh-ed25519 !!!"), HOST_KEY_DIFFERS, "unparsable"),
        "unset variable": (_preamble("r9", _line(device)), SECRET_UNAVAILABLE, "UNSET_SECRET_VARIABLE is not set"),
        "unsafe device id": (_preamble("bad id", _line(device)), DEVICE_ID_INVALID, "not a usable device name"),
    }
    for what, (preamble, reason, text) in refusals.items():
        check = policy.outbound_ssh_check(preamble, fp)
        assert not check.verified and check.refused == reason, what
        assert text in check.message, (what, check.message)
        assert SECRET not in check.message and SECRET not in repr(check), what
    # a file that became group-readable is refused at the next call, not cached as good
    os.chmod(own, 0o640)
    check = policy.outbound_ssh_check(_preamble("r1", _line(device)), fp)
    assert check.refused == SECRET_UNAVAILABLE and "group or others" in check.message
    assert SECRET not in caplog.text

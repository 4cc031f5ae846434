# SPDX-License-Identifier: GPL-3.0-or-later
"""Outbound-ssh verified by its shared secret (issue 11 item 4), end to end.

A real listener process and the outbound-ssh simulator (tests/peers/simulator.py), which sends
the Junos preamble with ``HOST-KEY`` and ``HMAC: hex(HMAC-SHA1(secret, HOST-KEY))``:

* an unknown device with the right secret is enrolled without an operator (zero-touch) and gets
  its session; the trust store then holds the key it proved;
* a wrong secret, a missing HMAC, and a HOST-KEY other than the key proved in the handshake are
  refused, recorded as pending with the reason, and counted against the address;
* a group secret covers every DEVICE-ID matching its pattern;
* an enrolled device that calls with another key is not re-keyed by its secret (pending
  key-mismatch), unless its secret allows rotation;
* the secret's value is nowhere in the listener's log, trust store, registry or answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from harness import LISTENER_CMD, child_env, ncclient_over_lease, running, wait_until

SECRET = "Zt-outbound-ssh-s3cret-4711"
WRONG = "not-the-configured-secret"


def _outbound_port(lst) -> int:  # type: ignore[no-untyped-def]
    return int(lst.call("status")["outbound_ssh"][0].rsplit(":", 1)[1])


def _secret_cli(home: Path, *argv: str) -> dict:
    import subprocess

    res = subprocess.run(
        LISTENER_CMD + ["--control", "unix:%s" % (home / "control.sock"), "secret", "--home", str(home)] + list(argv),
        capture_output=True, text=True, env=child_env(), timeout=60, check=False,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _secret_file(tmp_path: Path, value: str = SECRET) -> Path:
    path = tmp_path / "outbound.secret"
    path.write_text(value + "\n")
    os.chmod(path, 0o600)
    return path


def _trust(lst) -> dict:  # type: ignore[no-untyped-def]
    return json.loads((lst.home / "trust.json").read_text())


def _assert_secret_nowhere(lst) -> None:  # type: ignore[no-untyped-def]
    """The value in no state file of the listener's home (log, trust store, registry, pending)."""
    for path in sorted(p for p in lst.home.rglob("*") if p.is_file() and not p.is_socket()):
        assert SECRET.encode() not in path.read_bytes(), path
    for answer in (lst.call("pending"), lst.call("devices"), lst.call("status")):
        assert SECRET not in json.dumps(answer)


def _pending(lst, reason: str) -> dict:  # type: ignore[no-untyped-def]
    return wait_until(
        lambda: next((p for p in lst.call("pending") if p["reason"] == reason), None),
        20,
        "a pending entry with reason %s" % reason,
        detail=lambda: lst.log()[-3000:],
    )


def test_zero_touch_enrollment_with_the_devices_own_secret(listener_factory, fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lst = listener_factory("--outbound-ssh", "127.0.0.1:0")
    lst.home.mkdir(parents=True, exist_ok=True)
    secret_file = _secret_file(tmp_path)
    set_result = _secret_cli(lst.home, "set", "sim0001", "file:%s" % secret_file)
    assert set_result["changed"] and set_result["reloaded"] is False  # no listener yet
    lst.start()
    key = fleet.keys(["sim0001"])["sim0001"]
    assert lst.call("pending") == [] and not _trust(lst)["devices"]["sim0001"].get("ssh_host_keys")
    with running(fleet.simulator(_outbound_port(lst), 1, "--outbound-ssh-preamble", "--outbound-ssh-secret", SECRET)):
        rec = lst.wait_device("sim0001", "connected", timeout=30)
        assert rec["fingerprint"] == key.get_fingerprint("sha256")
        entry = _trust(lst)["devices"]["sim0001"]
        assert entry["outbound_ssh"] == {"secret": "file:%s" % secret_file, "allow_rotation": False}
        assert [k.split()[1] for k in entry["ssh_host_keys"]] == [key.export_public_key().decode().split()[1]]
        mgr = ncclient_over_lease(lst.control, "sim0001")[0]
        with mgr:
            assert "sim0001" in mgr.get_config("running").xml
    log = lst.wait_log("event=device.enrolled device=sim0001")
    assert "via=outbound-ssh-secret secret=device sim0001" in log
    assert "fingerprint=%s" % key.get_fingerprint("sha256") in log
    assert lst.call("pending") == []
    _assert_secret_nowhere(lst)


def test_wrong_secret_is_refused_recorded_and_counted(listener_factory, fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lst = listener_factory("--outbound-ssh", "127.0.0.1:0")
    lst.home.mkdir(parents=True, exist_ok=True)
    # A low failure limit shows that wrong HMACs count against the address (guessing the secret).
    (lst.home / "listener.yml").write_text("block_failures: 3\nblock_window: 60\nblock_seconds: 60\nblock_admit_rate: 0\n")
    _secret_cli(lst.home, "set", "sim0001", "file:%s" % _secret_file(tmp_path))
    lst.start()
    with running(fleet.simulator(_outbound_port(lst), 1, "--outbound-ssh-preamble", "--outbound-ssh-secret", WRONG)):
        pending = _pending(lst, "hmac-failed")
        assert pending["claimed_device"] == "sim0001" and pending["claim_source"] == "device-id"
        assert pending["fingerprint"] == fleet.keys(["sim0001"])["sim0001"].get_fingerprint("sha256")
        log = lst.wait_log("event=peer.blocked peer_ip=127.0.0.1", timeout=30)
    assert "event=outbound_ssh.refused device_id=sim0001" in log and "reason=hmac-failed" in log
    assert "HMAC does not verify with the configured secret (secret of device sim0001)" in log
    assert "ssh_host_keys" not in _trust(lst)["devices"]["sim0001"]
    assert WRONG not in log
    _assert_secret_nowhere(lst)


def test_missing_hmac_and_a_host_key_other_than_the_proved_one_are_refused(  # type: ignore[no-untyped-def]
    listener_factory, fleet, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("CH_TEST_GROUP_SECRET", SECRET)  # the listener inherits it (child_env)
    lst = listener_factory("--outbound-ssh", "127.0.0.1:0")
    lst.home.mkdir(parents=True, exist_ok=True)
    _secret_cli(lst.home, "group", "sims", "env:CH_TEST_GROUP_SECRET", "--device-id", "sim*")
    lst.start()
    port = _outbound_port(lst)
    # the right secret over a HOST-KEY the device does not hold: the HMAC verifies, the key does not
    other = tmp_path / "other-keys"
    with running(
        fleet.simulator(port, 1, "--outbound-ssh-preamble", "--outbound-ssh-secret", SECRET,
                        "--outbound-ssh-announce-keys", str(other))
    ):
        pending = _pending(lst, "host-key-differs")
    real = fleet.keys(["sim0001"])["sim0001"].get_fingerprint("sha256")
    announced = fleet.keys(["sim0001"], other)["sim0001"].get_fingerprint("sha256")
    assert pending["fingerprint"] == real and pending["claimed_device"] == "sim0001"
    assert "the HMAC verifies for HOST-KEY %s, but the SSH handshake proved %s" % (announced, real) in lst.log()
    # no HOST-KEY/HMAC at all while a secret covers the DEVICE-ID
    with running(fleet.simulator(port, 1, "--outbound-ssh-preamble")):
        _pending(lst, "hmac-missing")
    assert "sim0001" not in _trust(lst)["devices"]
    assert lst.call("devices") == []  # an unauthenticated claim creates no device record
    _assert_secret_nowhere(lst)


def test_group_secret_enrolls_every_matching_device(listener_factory, fleet, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CH_TEST_GROUP_SECRET", SECRET)
    lst = listener_factory("--outbound-ssh", "127.0.0.1:0")
    lst.home.mkdir(parents=True, exist_ok=True)
    out = _secret_cli(lst.home, "group", "sims", "env:CH_TEST_GROUP_SECRET", "--device-id", "sim000[1-3]")
    assert out["outbound_ssh_group"] == {"device_ids": ["sim000[1-3]"], "secret": "env:CH_TEST_GROUP_SECRET", "allow_rotation": False}
    lst.start()
    with running(fleet.simulator(_outbound_port(lst), 4, "--outbound-ssh-preamble", "--outbound-ssh-secret", SECRET)):
        for name in ("sim0001", "sim0002", "sim0003"):
            lst.wait_device(name, "connected", timeout=30)
        # sim0004 is outside the group: no secret applies, so an unknown key, pending as before
        pending = wait_until(lambda: lst.call("pending"), 20, "sim0004 pending")
        assert [(p["claimed_device"], p["reason"]) for p in pending] == [("sim0004", "unknown-key")]
    devices = _trust(lst)["devices"]
    assert sorted(devices) == ["sim0001", "sim0002", "sim0003"]
    assert all(len(devices[n]["ssh_host_keys"]) == 1 and "outbound_ssh" not in devices[n] for n in devices)
    assert lst.log().count("via=outbound-ssh-secret secret=group sims") == 3
    listed = _secret_cli(lst.home, "list")
    assert listed["groups"]["sims"]["secret"] == "env:CH_TEST_GROUP_SECRET" and listed["devices"] == {}
    _assert_secret_nowhere(lst)


@pytest.mark.parametrize("rotation", [False, True])
def test_an_enrolled_device_is_rekeyed_by_its_secret_only_when_rotation_is_allowed(
    listener_factory, fleet, tmp_path, rotation
) -> None:  # type: ignore[no-untyped-def]
    lst = listener_factory("--outbound-ssh", "127.0.0.1:0")
    lst.home.mkdir(parents=True, exist_ok=True)
    old_keys = tmp_path / "old-keys"
    fleet.enroll(lst.home / "trust.json", ["sim0001"], keys_dir=old_keys)  # enrolled with a key it no longer has
    old = _trust(lst)["devices"]["sim0001"]["ssh_host_keys"]
    _secret_cli(lst.home, "set", "sim0001", "file:%s" % _secret_file(tmp_path), *(["--allow-rotation"] if rotation else []))
    lst.start()
    new_fp = fleet.keys(["sim0001"])["sim0001"].get_fingerprint("sha256")
    with running(fleet.simulator(_outbound_port(lst), 1, "--outbound-ssh-preamble", "--outbound-ssh-secret", SECRET)):
        if rotation:
            lst.wait_device("sim0001", "connected", timeout=30)
            assert "replaced=%s" % fleet.keys(["sim0001"], old_keys)["sim0001"].get_fingerprint("sha256") in lst.log()
        else:
            pending = _pending(lst, "key-mismatch")
            assert pending["fingerprint"] == new_fp
            lst.wait_device("sim0001", "key-mismatch", timeout=20)
            lst.wait_log("event=outbound_ssh.rotation_refused device=sim0001")
    keys = _trust(lst)["devices"]["sim0001"]["ssh_host_keys"]
    if rotation:
        assert len(keys) == 1 and keys != old
    else:
        assert keys == old
    _assert_secret_nowhere(lst)

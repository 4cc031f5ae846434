# SPDX-License-Identifier: GPL-3.0-or-later
"""``netconf.callhome.enroll`` in real ``ansible-playbook`` runs: each source, refusal of
unknown and mismatched keys, the listener's pending list, the trust store file fallback."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Dict

import pytest

from harness import ROOT, Fleet, child_env, free_port  # tests/integration (conftest puts it on sys.path)

from netconf_callhome.fingerprints import ssh_fingerprint

pytestmark = pytest.mark.timeout(240)


def enroll(tmp: Path, args: Dict[str, Any], *flags: str) -> Dict[str, Any]:
    out = tmp / ("enroll-%d.json" % time.monotonic_ns())
    playbook = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"netconf.callhome.enroll": args, "register": "r", "ignore_errors": True},
        {"ansible.builtin.copy": {"content": "{{ r | to_json }}", "dest": str(out)}, "check_mode": False},
    ]}]
    (tmp / "enroll.json").write_text(json.dumps(playbook))
    env = child_env(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        [os.path.join(os.path.dirname(os.sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=%s" % os.sys.executable, str(tmp / "enroll.json"), *flags],
        capture_output=True, text=True, env=env, timeout=200, check=False)
    assert out.exists(), "no result (rc=%d):\n%s\n%s" % (proc.returncode, proc.stdout[-3000:], proc.stderr[-2000:])
    return dict(json.loads(out.read_text()))


def store_devices(path: Path) -> Dict[str, Any]:
    return dict(json.loads(path.read_text())["devices"]) if path.exists() else {}


@pytest.fixture
def direct(fleet: Fleet) -> Any:
    import simulator

    keys = fleet.keys(["sim0001"])
    port = free_port()
    proc = simulator.start_simulator_process(
        ["--direct", "127.0.0.1:%d" % port, "--keys-dir", str(fleet.keys_dir), "--user", "netconf",
         "--password", fleet.password], env=child_env())
    proc.wait_for("LISTENING", timeout=30)
    line = keys["sim0001"].export_public_key().decode().strip()
    yield port, line
    proc.stop()


def test_ssh_scan_expected_mismatch_and_tofu(tmp_path: Path, direct: Any) -> None:
    port, line = direct
    trust = tmp_path / "trust.json"
    nolistener = "unix:%s" % (tmp_path / "none.sock")
    base = {"device": "r1", "source": "ssh_scan", "host": "127.0.0.1", "port": port, "trust_store": str(trust),
            "listener": nolistener}
    refused = enroll(tmp_path, base)
    assert refused.get("failed") and "nobody vouched for" in refused["msg"] and ssh_fingerprint(line) in refused["msg"]
    other = "SHA256:" + "A" * 43
    mismatch = enroll(tmp_path, dict(base, expected_fingerprint=other))
    assert mismatch.get("failed") and "not the expected" in mismatch["msg"] and mismatch["error_code"] == "key-mismatch"
    assert store_devices(trust) == {}, "a refused key must never reach the trust store"

    checked = enroll(tmp_path, dict(base, expected_fingerprint=ssh_fingerprint(line)), "--check")
    assert checked["changed"] is True and store_devices(trust) == {}
    ok = enroll(tmp_path, dict(base, expected_fingerprint=ssh_fingerprint(line)), "--diff")
    assert ok["changed"] is True and ok["fingerprint"] == ssh_fingerprint(line) and ok["written_via"] == "file"
    assert store_devices(trust)["r1"]["ssh_host_keys"] == [" ".join(line.split()[:2])]  # as presented: no comment
    assert enroll(tmp_path, dict(base, expected_fingerprint=ssh_fingerprint(line)))["changed"] is False

    tofu = enroll(tmp_path, dict(base, device="r9", trust_on_first_use=True))
    assert tofu.get("failed") and "already enrolled for device 'r1'" in tofu["msg"]  # the key is r1's


def test_explicit_sources_and_absent(tmp_path: Path) -> None:
    import trustme

    trust = tmp_path / "trust.json"
    base = {"trust_store": str(trust), "listener": "unix:%s" % (tmp_path / "none.sock")}
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl r1"
    assert enroll(tmp_path, dict(base, device="r1", source="public_key", value=key))["changed"] is True
    assert enroll(tmp_path, dict(base, device="r1", source="fingerprint", value=ssh_fingerprint(key)))["changed"] is False
    pem = trustme.CA().issue_cert("r2.example.net").cert_chain_pems[0].bytes().decode()
    cert = enroll(tmp_path, dict(base, device="r2", source="certificate", value=pem))
    assert cert["changed"] is True and cert["kind"] == "tls_fingerprints"
    tlsfp = enroll(tmp_path, dict(base, device="r2", source="tls_fingerprint", value=cert["fingerprint"].replace(":", "").lower()))
    assert tlsfp["changed"] is False  # the same fingerprint, written differently
    ident = enroll(tmp_path, dict(base, device="r3", source="tls_identity", value="serial:FOC1234X",
                                  credentials={"username": "admin", "password_env": "R3_PW"}))
    assert ident["changed"] is True
    devices = store_devices(trust)
    assert devices["r3"] == {"tls_identities": ["serial:FOC1234X"], "credentials": {"username": "admin", "password_env": "R3_PW"}}
    assert enroll(tmp_path, dict(base, device="r3", state="absent"))["changed"] is True
    assert "r3" not in store_devices(trust)
    assert enroll(tmp_path, dict(base, device="r3", state="absent"))["changed"] is False


def test_pending_approved_only_with_matching_fingerprint(tmp_path: Path, fleet: Fleet, listener_factory: Any) -> None:
    listener = listener_factory().start()
    keys = fleet.keys(["sim0001"])
    fp = ssh_fingerprint(keys["sim0001"].export_public_key().decode())
    sim = fleet.simulator(listener.ssh_port, 1)
    try:
        deadline = time.monotonic() + 20
        while not listener.call("pending") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [p["fingerprint"] for p in listener.call("pending")] == [fp]
        control = "unix:%s" % listener.status["control_socket"]
        wrong = enroll(tmp_path, {"device": "sim0001", "source": "pending", "listener": control,
                                  "expected_fingerprint": "SHA256:" + "B" * 43})
        assert wrong.get("failed") and "no pending key with fingerprint" in wrong["msg"]
        unvouched = enroll(tmp_path, {"device": "sim0001", "source": "pending", "listener": control,
                                      "host": "127.0.0.1"})
        assert unvouched.get("failed") and "nobody vouched for" in unvouched["msg"]
        checked = enroll(tmp_path, {"device": "sim0001", "source": "pending", "listener": control,
                                    "expected_fingerprint": fp}, "--check")
        assert checked["changed"] is True and listener.call("pending"), "check mode must not approve"
        ok = enroll(tmp_path, {"device": "sim0001", "source": "pending", "listener": control, "expected_fingerprint": fp})
        assert ok["changed"] is True and ok["fingerprint"] == fp, ok
        listener.wait_device("sim0001", "connected", timeout=20)  # the device's next call is accepted
        again = enroll(tmp_path, {"device": "sim0001", "source": "pending", "listener": control, "expected_fingerprint": fp})
        assert again["changed"] is False and not again.get("failed"), again
    finally:
        sim.stop()


def test_writes_through_running_listener(tmp_path: Path, listener_factory: Any) -> None:
    listener = listener_factory().start()
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl r1"
    res = enroll(tmp_path, {"device": "r1", "source": "public_key", "value": key,
                            "listener": "unix:%s" % listener.status["control_socket"]})
    assert res["changed"] is True and res["written_via"] in ("listener", "file+reload"), res
    assert listener.call("device", device="r1")["enrolled"] is True
    gone = enroll(tmp_path, {"device": "r1", "state": "absent", "listener": "unix:%s" % listener.status["control_socket"]})
    assert gone["changed"] is True and listener.call("status")["enrolled"] == 0

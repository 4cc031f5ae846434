# SPDX-License-Identifier: GPL-3.0-or-later
"""The listener against simulated devices (asyncssh, in their own process): trust, credentials,
registry, leases, dead-peer detection, restarts and bad input."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import stat
import time
import urllib.request
from typing import Any, Dict, Optional

import pytest
from harness import free_port, ncclient_over_lease, running, wait_until

# Imported here, with the harness, not inside a test: unit tests that run earlier in the same
# pytest process install Ansible's collection finder, after which a late import can resolve to a
# second copy of the module whose classes pytest.raises would not match.
from netconf_callhome.errors import (
    DeviceNotFoundError,
    DeviceNotReadyError,
    KeyMismatchError,
    WaitTimeoutError,
)


def test_enrolled_devices_get_sessions_and_leases(listener_factory, fleet):
    names = ["sim0001", "sim0002", "sim0003"]
    lst = listener_factory()
    fleet.enroll(lst.home / "trust.json", names)
    lst.start()
    with running(fleet.simulator(lst.ssh_port, 3, wait_connected=3)):
        for name in names:
            rec = lst.call("wait", device=name, wait=20, timeout=30)
            assert rec["status"] == "connected" and rec["transport"] == "ssh"
            assert "urn:ietf:params:netconf:capability:candidate:1.0" in rec["capabilities"]
            assert rec["session_mode"] == "channel"
        mgr, info = ncclient_over_lease(lst.control, "sim0002")
        with mgr:
            assert info["device"] == "sim0002" and info["mode"] == "channel"
            reply = mgr.get_config("running")
            assert "sim0002" in reply.xml  # the simulator puts its hostname in running
        status = lst.call("status")
        assert status["devices"]["connected"] == 3 and status["pending"] == 0
    assert "event=device.connected device=sim0001" in lst.log()
    # credentials never reach the log
    assert fleet.password not in lst.log()


def test_unknown_key_is_pending_until_approved(listener_factory, fleet):
    lst = listener_factory().start()
    keys = fleet.keys(["sim0001"])
    fingerprint = keys["sim0001"].get_fingerprint("sha256")
    with running(fleet.simulator(lst.ssh_port, 1)):
        pending = wait_until(lambda: lst.call("pending"), 20, "the unknown key to be pending")
        assert [p["fingerprint"] for p in pending] == [fingerprint]
        assert pending[0]["reason"] == "unknown-key" and pending[0]["public_key"].startswith("ssh-ed25519 ")
        # never authenticated to, never handed out
        with pytest.raises(DeviceNotFoundError, match="not enrolled"):
            lst.control.lease("sim0001", wait=1)
        assert "auth=" not in lst.log()
        # the device keeps calling, we keep counting
        wait_until(lambda: lst.call("pending")[0]["count"] >= 2, 20, "a second call from the unknown key")
        # the operator's command enrolls it; the next call succeeds without a restart
        res = lst.cli("approve", fingerprint, "--device", "sim0001")
        assert json.loads(res.stdout)["device"] == "sim0001"
        rec = lst.call("wait", device="sim0001", wait=20, timeout=30)
        assert rec["status"] == "connected" and rec["fingerprint"] == fingerprint
        assert lst.call("pending") == []
        trust = json.loads((lst.home / "trust.json").read_text())
        assert trust["devices"]["sim0001"]["ssh_host_keys"][0].startswith("ssh-ed25519 ")
        assert stat.S_IMODE(os.stat(lst.home / "trust.json").st_mode) == 0o600


def test_mismatched_key_is_refused_and_reported(listener_factory, fleet, tmp_path):
    lst = listener_factory()
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    with running(fleet.simulator(lst.ssh_port, 1, wait_connected=1)) as sim:
        lst.wait_device("sim0001", "connected")
    sim.stop()
    lst.wait_device("sim0001", "disconnected")
    # the "same" device comes back with another host key (reinstalled, or an impostor)
    other_keys = tmp_path / "other-keys"
    with running(fleet.simulator(lst.ssh_port, 1, keys_dir=other_keys)):
        rec = lst.wait_device("sim0001", "key-mismatch")
        assert "not enrolled for it" in rec["last_error"]
        with pytest.raises(DeviceNotReadyError, match="approve"):
            lst.control.lease("sim0001", wait=1)
        pending = lst.call("pending")
        assert pending[0]["reason"] == "key-mismatch" and pending[0]["claimed_device"] == "sim0001"
        # an address is only a hint: approving needs the operator to name the device
        res = lst.cli("approve", pending[0]["fingerprint"], check=False)
        assert res.returncode == 1 and "--device" in res.stderr
    assert "event=device.key_mismatch device=sim0001" in lst.log()


def test_wrong_credentials_are_recorded_as_auth_failed(listener_factory, fleet, tmp_path):
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    lst = listener_factory(password_file=wrong)
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    with running(fleet.simulator(lst.ssh_port, 1)):
        rec = lst.wait_device("sim0001", "auth-failed")
        assert "credentials" in rec["last_error"]
        with pytest.raises(DeviceNotReadyError, match="rejected the listener's credentials"):
            lst.control.lease("sim0001", wait=1)
    assert "not-the-password" not in lst.log()


def test_dead_peer_detected_and_reconnect(listener_factory, fleet):
    lst = listener_factory()
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    sim = fleet.simulator(lst.ssh_port, 1, wait_connected=1)
    with running(sim):
        lst.wait_device("sim0001", "connected")
        # a frozen device answers nothing: only keepalives can tell (1 s x 2 here)
        os.kill(sim.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            rec = lst.wait_device("sim0001", "disconnected", timeout=15)
            assert time.monotonic() - t0 < 10
        finally:
            os.kill(sim.proc.pid, signal.SIGCONT)
        rec = lst.wait_device("sim0001", "connected", timeout=20)
        assert rec["connect_count"] >= 2


def test_new_call_replaces_older_connection(listener_factory, fleet):
    lst = listener_factory()
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    with running(fleet.simulator(lst.ssh_port, 1, wait_connected=1)):
        first = lst.wait_device("sim0001", "connected")
        with running(fleet.simulator(lst.ssh_port, 1, wait_connected=1)):
            def second_call() -> Optional[Dict[str, Any]]:
                rec = lst.call("device", device="sim0001")
                return rec if rec["connect_count"] >= 2 else None

            rec = wait_until(second_call, 10, "the second simulator's call")
            assert rec["peer"] != first["peer"]
            assert "event=device.replaced device=sim0001" in lst.log()
            assert lst.call("status")["sessions"] == 1


def test_listener_restart_keeps_registry(listener_factory, fleet):
    port = free_port()
    lst = listener_factory(ssh_port=port)
    fleet.enroll(lst.home / "trust.json", ["sim0001", "sim0002"])
    lst.start()
    sim = fleet.simulator(port, 2, wait_connected=2)
    with running(sim):
        before = lst.wait_device("sim0002", "connected")
        # frozen devices cannot call again before we look at the restarted listener's record
        os.kill(sim.proc.pid, signal.SIGSTOP)
        try:
            lst.stop()
            lst.start()
            rec = lst.call("device", device="sim0002")
        finally:
            os.kill(sim.proc.pid, signal.SIGCONT)
        # the record survived; its old session did not, and the device calls again by itself
        assert rec["first_connected"] == before["first_connected"]
        assert rec["status"] == "disconnected"
        assert rec["connect_count"] == before["connect_count"]
        rec = lst.wait_device("sim0002", "connected", timeout=20)
        assert rec["connect_count"] == before["connect_count"] + 1


def test_single_session_device_is_shared_across_leases(listener_factory, fleet):
    lst = listener_factory()
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    with running(fleet.simulator(lst.ssh_port, 1, "--single-session", wait_connected=1)):
        lst.wait_device("sim0001", "connected")
        modes = []
        for i in range(3):
            mgr, info = ncclient_over_lease(lst.control, "sim0001")
            with mgr:
                mgr.edit_config(
                    target="running",
                    config='<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><note xmlns="urn:example:sim">n%d</note></config>'
                    % i,
                )
                assert "n%d" % i in mgr.get_config("running").xml
            modes.append(info["mode"])
        # An SSH device starts in channel mode; the first lease finds that the device refuses a
        # second channel and falls back to the held session for good. The probe runs before the
        # lease is answered, so every lease names the mode it runs in.
        assert modes == ["shared", "shared", "shared"]
        rec = lst.call("device", device="sim0001")
        # close-session of each lease was answered by the listener: the device session lives on
        assert rec["session_mode"] == "shared" and rec["connect_count"] == 1
        assert rec["status"] == "connected"
        assert "mode=shared" in lst.log()


def test_leases_on_different_devices_run_side_by_side(listener_factory, fleet):
    names = ["sim0001", "sim0002", "sim0003", "sim0004"]
    lst = listener_factory()
    fleet.enroll(lst.home / "trust.json", names)
    lst.start()
    with running(fleet.simulator(lst.ssh_port, 4, "--single-session", wait_connected=4)):
        for name in names:
            lst.wait_device(name, "connected")
        # hold a lease on sim0001 open while the others lease and work
        held = ncclient_over_lease(lst.control, "sim0001")[0]

        def work(name):
            mgr = ncclient_over_lease(lst.control, name, wait=5)[0]
            with mgr:
                return name in mgr.get_config("running").xml

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            assert all(pool.map(work, names[1:], timeout=30))
        assert held.get_config("running").ok
        held.close_session()


def test_plain_ncclient_connect_uds_on_a_lease_socket(listener_factory, fleet):
    from ncclient import manager

    lst = listener_factory()
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    with running(fleet.simulator(lst.ssh_port, 1, wait_connected=1)):
        info = lst.call("lease", device="sim0001", wait=10, listen=True)
        assert stat.S_IMODE(os.stat(info["path"]).st_mode) == 0o600
        with manager.connect_uds(info["path"], device_params={"name": "default"}) as mgr:
            assert "sim0001" in mgr.get_config("running").xml
        assert not os.path.exists(info["path"])


def test_wait_for_a_device_that_never_calls(listener_factory, fleet):
    lst = listener_factory()
    fleet.enroll(lst.home / "trust.json", ["sim0009"])
    lst.start()
    t0 = time.monotonic()
    with pytest.raises(WaitTimeoutError, match="has not called home within 1 s"):
        lst.call("wait", device="sim0009", wait=1, timeout=10)
    assert 0.9 < time.monotonic() - t0 < 5


@pytest.mark.parametrize("fault", ["garbage", "stall", "big-hello", "entity-hello", "bad-framing"])
def test_bad_peers_do_not_disturb_good_ones(listener_factory, fleet, fault):
    names = ["sim0001", "sim0002", "sim0003"]
    lst = listener_factory("--metrics", "127.0.0.1:%d" % free_port())
    fleet.enroll(lst.home / "trust.json", names)
    lst.start()
    extra = ["--fault", "%s=sim0003" % fault, "--big-hello-mib", "4"]
    with running(fleet.simulator(lst.ssh_port, 3, *extra)):
        for name in names[:2]:
            lst.wait_device(name, "connected", timeout=30)
        if fault in ("big-hello", "entity-hello", "bad-framing"):
            rec = lst.wait_device("sim0003", "error", timeout=30)
            assert rec["last_error"]
        else:
            # Neither ever sends an SSH version line (RFC 4253 lets a server send other lines
            # first, so garbage is read as such), so both end at the 3 s handshake bound.
            wait_until(
                lambda: any(
                    "event=handshake.failed peer=127.0.0.1:" in ln and "reason=timeout" in ln for ln in lst.log().splitlines()
                ),
                20, "the %s peer's handshake timeout in the log" % fault, detail=lambda: lst.log()[-3000:],
            )
            # it never completed SSH, so it was never identified: enrolled, never seen
            assert lst.call("device", device="sim0003")["status"] == "never-seen"
        # the good sessions are still usable
        mgr = ncclient_over_lease(lst.control, "sim0001")[0]
        with mgr:
            assert mgr.get_config("running").ok
        assert lst.proc.poll() is None


def test_control_socket_is_private_and_metrics_are_exported(listener_factory, fleet):
    port = free_port()
    lst = listener_factory("--metrics", "127.0.0.1:%d" % port)
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    assert stat.S_IMODE(os.stat(lst.home / "control.sock").st_mode) == 0o600
    with running(fleet.simulator(lst.ssh_port, 1, wait_connected=1)):
        lst.wait_device("sim0001", "connected")
        mgr = ncclient_over_lease(lst.control, "sim0001")[0]
        mgr.close_session()
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
    assert 'callhome_devices{status="connected"} 1.0' in body
    assert 'callhome_handshakes_total{result="ok",transport="ssh"}' in body
    assert 'callhome_leases_total{mode="channel"} 1.0' in body
    assert "callhome_handshake_seconds_bucket" in body


def test_connection_flood_is_bounded(listener_factory, fleet):
    lst = listener_factory("--max-handshakes", "100")
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    socks = []
    try:
        # the flood comes from another address than the device (an attacker, not a neighbour)
        for _attempt in range(300):
            s = socket.create_connection(("127.0.0.1", lst.ssh_port), source_address=("127.0.0.2", 0))
            socks.append(s)
        with running(fleet.simulator(lst.ssh_port, 1)):
            lst.wait_device("sim0001", "connected", timeout=30)
    finally:
        for s in socks:
            s.close()
    assert lst.proc.poll() is None
    # 300 silent connections: 100 held handshake slots until the 3 s bound, the rest were refused
    assert "event=handshake.limit" in lst.log()
    assert "event=peer.blocked peer_ip=127.0.0.2" in lst.log()


def test_enroll_and_revoke_through_the_control_socket(listener_factory, fleet):
    lst = listener_factory().start()
    key = fleet.keys(["sim0001"])["sim0001"].export_public_key().decode().strip()
    other = fleet.keys(["sim0001"], keys_dir=fleet.base / "other")["sim0001"].export_public_key().decode().strip()
    dry = lst.call("enroll", device="sim0001", kind="ssh_host_keys", value=key, dry_run=True)
    assert dry["changed"] and dry["after"] and not (lst.home / "trust.json").exists()
    res = lst.call("enroll", device="sim0001", kind="ssh_host_keys", value=key, observed=True)
    assert res["changed"] and res["fingerprint"].startswith("SHA256:")
    assert not lst.call("enroll", device="sim0001", kind="ssh_host_keys", value=key, observed=True)["changed"]
    with pytest.raises(KeyMismatchError, match="replace_existing"):
        lst.call("enroll", device="sim0001", kind="ssh_host_keys", value=other, observed=True)
    with running(fleet.simulator(lst.ssh_port, 1)):
        lst.wait_device("sim0001", "connected")
        assert lst.call("revoke", device="sim0001", dry_run=True)["changed"]
        assert lst.call("device", device="sim0001")["status"] == "connected"
        assert lst.call("revoke", device="sim0001")["changed"]
        # the held session goes at once, and the next call is refused and pending
        rec = lst.wait_device("sim0001", "disconnected")
        assert rec["last_error"] == "key revoked"
        pending = wait_until(lambda: lst.call("pending"), 10, "the revoked key to be pending")
        assert pending[0]["fingerprint"] == res["fingerprint"]


@pytest.mark.parametrize("mode_args", [[], ["--single-session"]], ids=["channel", "shared"])
def test_device_lost_mid_lease_fails_fast(listener_factory, fleet, mode_args):
    """A device that dies during a lease ends the client's session with an error, never a hang."""
    from ncclient.operations.errors import TimeoutExpiredError
    from ncclient.transport.errors import TransportError

    lst = listener_factory()
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    sim = fleet.simulator(lst.ssh_port, 1, "--no-reconnect", *mode_args, wait_connected=1)
    with running(sim):
        lst.wait_device("sim0001", "connected")
        mgr = ncclient_over_lease(lst.control, "sim0001")[0]
        assert mgr.get_config("running").ok
        os.kill(sim.proc.pid, signal.SIGSTOP)  # frozen: no FIN, no RST; only keepalives tell
        try:
            t0 = time.monotonic()
            with pytest.raises((TransportError, TimeoutExpiredError)):
                mgr.timeout = 30
                mgr.get_config("running")
            elapsed = time.monotonic() - t0
            # keepalive 1 s x 2 in these tests: the lease ends well before ncclient's own 30 s timeout
            assert elapsed < 15, elapsed
        finally:
            os.kill(sim.proc.pid, signal.SIGCONT)
        assert lst.call("device", device="sim0001")["status"] == "disconnected"


def test_stalled_peers_are_blocked_but_slow_ssh_speakers_are_not(listener_factory, fleet, tmp_path):
    """Silent connections from one address get it blocked (RFC 8071 section 4); a peer that spoke
    SSH and then timed out is what a storm behind a NAT looks like, and must not block the NAT."""
    config = tmp_path / "block.yml"
    config.write_text("block_failures: 2\nblock_window: 60\nblock_seconds: 60\n")
    lst = listener_factory("--config", str(config), "--handshake-timeout", "1").start()

    def stall(source, banner):
        s = socket.create_connection(("127.0.0.1", lst.ssh_port), source_address=(source, 0))
        if banner:
            s.sendall(b"SSH-2.0-slow-device\r\n")
        return s

    socks = [stall("127.0.0.3", True) for _attempt in range(3)] + [stall("127.0.0.4", False) for _attempt in range(3)]
    try:
        lst.wait_log("peer_ip=127.0.0.4", timeout=15)
        # all six handshakes time out after the 1 s bound
        wait_until(lambda: lst.log().count("reason=timeout") >= 6, 15, "six handshake timeouts", detail=lst.log)
    finally:
        for s in socks:
            s.close()
    assert "event=peer.blocked peer_ip=127.0.0.4" in lst.log()
    assert "peer_ip=127.0.0.3" not in lst.log()
    assert lst.log().count("reason=timeout") >= 6

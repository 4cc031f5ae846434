# SPDX-License-Identifier: GPL-3.0-or-later
"""The control operations through the real wire: a listener in a thread, its Unix control socket,
and :class:`ControlClient` (or a raw socket for requests the client would never send)."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import threading
from pathlib import Path
from typing import Any, Dict

import pytest

from netconf_callhome.control.client import ControlClient
from netconf_callhome.errors import (
    ConfigError,
    ControlError,
    DeviceNotFoundError,
    DeviceNotReadyError,
    KeyMismatchError,
    ListenerUnreachableError,
    WaitTimeoutError,
)

pytestmark = pytest.mark.timeout(90)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOsTq1VbgXUOdzQ7C/2+tZxjcyq8p5SS7T9G6bhOCtZP"
KEY_FP = "SHA256:"  # prefix of every SSH fingerprint the listener reports


def raw_request(lst: Any, payload: bytes, *, read_timeout: float = 10.0) -> Dict[str, Any]:
    """Send bytes as they are on the control socket; return the one JSON answer line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(read_timeout)
        sock.connect(lst.config.control_socket)
        sender = threading.Thread(target=_send_ignoring_close, args=(sock, payload), daemon=True)
        sender.start()  # a long request may still be going out when the listener answers
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        sender.join(10)
    assert buf.endswith(b"\n"), "no answer line, got %r" % buf[:200]
    return dict(json.loads(buf))


def _send_ignoring_close(sock: socket.socket, payload: bytes) -> None:
    try:
        sock.sendall(payload)
    except OSError:
        pass  # the listener answered and closed before reading all of it


def test_ping(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    pong = lst.call("ping")
    assert pong["pid"] == os.getpid() and pong["uptime"] >= 0 and pong["version"]


def test_status_describes_this_listener(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    st = lst.call("status")
    assert re.fullmatch(r"127\.0\.0\.1:\d+", st["ssh"][0]) and not st["ssh"][0].endswith(":0")
    assert st["tls"] == [] and st["outbound_ssh"] == [] and st["control_tcp"] is None
    assert st["control_socket"] == lst.config.control_socket
    assert st["trust_store"] == str(lst.home / "trust.json")
    assert st["registry"] == str(lst.home / "registry.sqlite")
    assert (st["sessions"], st["active_leases"], st["pending"], st["enrolled"]) == (0, 0, 0, 0)
    assert stat.S_IMODE(os.stat(lst.config.control_socket).st_mode) == 0o600


def test_devices_and_device_for_an_enrolled_device_never_seen(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    assert lst.call("devices") == []
    lst.call("enroll", device="quiet1", kind="ssh_host_keys", value=KEY)
    expected = {"name": "quiet1", "status": "never-seen", "enrolled": True, "active_leases": 0}
    assert lst.call("devices") == [expected]
    assert lst.call("devices", status="connected") == []
    assert lst.call("devices", status="never-seen") == [expected]  # the status listener_info documents
    assert lst.call("device", device="quiet1") == expected
    assert lst.call("status")["enrolled"] == 1


def test_device_unknown_is_not_found(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    with pytest.raises(DeviceNotFoundError, match="'ghost' is not enrolled and has never called home") as err:
        lst.call("device", device="ghost")
    assert err.value.details == {"device": "ghost"}


@pytest.mark.parametrize("args", [{}, {"device": ""}, {"device": 7}])
def test_device_needs_a_name(listener_in_thread: Any, args: Dict[str, Any]) -> None:
    lst = listener_in_thread()
    with pytest.raises(ControlError, match="non-empty string 'device'"):
        lst.call("device", **args)


def test_pending_is_empty_and_approve_of_an_unknown_fingerprint_fails(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    assert lst.call("pending") == []
    with pytest.raises(DeviceNotFoundError, match="no pending key with fingerprint SHA256:nope"):
        lst.call("approve", fingerprint="SHA256:nope", device="r1")
    assert not (lst.home / "trust.json").exists()


def test_unknown_device_key_is_pending_until_approved(listener_in_thread: Any, sim_devices: Any, wait_until: Any) -> None:
    lst = listener_in_thread()
    fleet = sim_devices(lst, 1, enroll=False, wait_connected=False)
    pending = wait_until(lambda: lst.call("pending"), 20, "the unknown key to be pending")
    assert [p["fingerprint"] for p in pending] == [fleet.fingerprint("sim0001")]
    assert pending[0]["reason"] == "unknown-key" and pending[0]["public_key"] == fleet.public_key("sim0001")
    # nothing says which device this is: the operator must name it
    with pytest.raises(ConfigError, match="--device"):
        lst.call("approve", fingerprint=fleet.fingerprint("sim0001"))
    res = lst.call("approve", fingerprint=fleet.fingerprint("sim0001"), device="sim0001")
    assert {k: res[k] for k in ("device", "fingerprint", "transport", "changed", "replaced")} == {
        "device": "sim0001",
        "fingerprint": fleet.fingerprint("sim0001"),
        "transport": "ssh",
        "changed": True,
        "replaced": [],
    }
    rec = lst.call("wait", device="sim0001", wait=20, timeout=30)
    assert rec["status"] == "connected" and rec["fingerprint"] == fleet.fingerprint("sim0001")
    assert rec["enrolled"] is True and rec["session_mode"] == "channel"
    assert lst.call("pending") == []


def test_enroll_dry_run_then_for_real_then_refuses_a_silent_replacement(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    trust = lst.home / "trust.json"
    dry = lst.call("enroll", device="r1", kind="ssh_host_keys", value=KEY, dry_run=True)
    assert dry["changed"] is True and dry["before"] == [] and len(dry["after"]) == 1 and not trust.exists()
    res = lst.call("enroll", device="r1", kind="ssh_host_keys", value=KEY, observed=True)
    assert res["changed"] is True and res["device"] == "r1" and res["fingerprint"].startswith(KEY_FP)
    assert res["after"] == dry["after"] and stat.S_IMODE(os.stat(trust).st_mode) == 0o600
    assert lst.call("enroll", device="r1", kind="ssh_host_keys", value=KEY, observed=True)["changed"] is False
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBWyl7iXh2EgC3j0lbSRdT3UUjRoVsCj4A3y9Ea0dbUw"
    with pytest.raises(KeyMismatchError):
        lst.call("enroll", device="r1", kind="ssh_host_keys", value=other, observed=True)
    assert lst.call("device", device="r1")["enrolled"] is True


@pytest.mark.parametrize(
    "args, error",
    [
        ({"device": "r1", "kind": "bogus", "value": KEY}, "kind must be one of"),
        ({"device": "r1", "kind": "ssh_host_keys", "value": KEY, "credentials": "pw"}, "'credentials' must be an object"),
        ({"device": "r1", "kind": "ssh_host_keys"}, "non-empty string 'value'"),
    ],
)
def test_enroll_rejects_bad_requests(listener_in_thread: Any, args: Dict[str, Any], error: str) -> None:
    lst = listener_in_thread()
    with pytest.raises(ControlError if "kind must" not in error else ConfigError, match=re.escape(error)):
        lst.call("enroll", **args)
    assert not (lst.home / "trust.json").exists()


def test_revoke_dry_run_changes_nothing(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    lst.call("enroll", device="r1", kind="ssh_host_keys", value=KEY)
    before = (lst.home / "trust.json").read_bytes()
    planned = lst.call("revoke", device="r1", dry_run=True)
    assert (planned["device"], planned["identity"], planned["changed"], planned["dry_run"]) == ("r1", None, True, True)
    assert planned["after"] == [] and len(planned["before"]) == 1
    assert (lst.home / "trust.json").read_bytes() == before
    assert lst.call("device", device="r1")["enrolled"] is True
    done = lst.call("revoke", device="r1")
    assert (done["device"], done["identity"], done["changed"], done["dry_run"]) == ("r1", None, True, False)
    assert lst.call("revoke", device="r1", dry_run=True)["changed"] is False
    with pytest.raises(DeviceNotFoundError):
        lst.call("device", device="r1")  # no longer enrolled, never seen


def test_wait_for_a_device_that_never_called(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    lst.call("enroll", device="quiet1", kind="ssh_host_keys", value=KEY)
    with pytest.raises(WaitTimeoutError, match="'quiet1' has not called home within 0 s; it is enrolled but was never seen") as err:
        lst.call("wait", device="quiet1", wait=0.3)
    assert err.value.details["enrolled"] is True and err.value.details["waited"] == 0.3
    with pytest.raises(DeviceNotFoundError, match="not enrolled and has never called home"):
        lst.call("wait", device="ghost", wait=0.1)


def test_wait_timeout_carries_the_registry_state(listener_in_thread: Any, sim_devices: Any, wait_until: Any) -> None:
    lst = listener_in_thread()
    fleet = sim_devices(lst, 1)
    connected = lst.call("wait", device="sim0001", wait=20, timeout=30)
    assert connected["status"] == "connected"
    fleet.stop()  # the device goes away and stays away
    wait_until(lambda: _status(lst, "sim0001") == "disconnected", 20, "sim0001 to be disconnected")
    with pytest.raises(WaitTimeoutError) as err:
        lst.call("wait", device="sim0001", wait=0.2)
    msg = err.value.message
    assert msg.startswith("device 'sim0001' has no session after waiting 0 s: status disconnected, last seen 20")
    assert "UTC from %s" % connected["peer"] in msg
    details = err.value.details
    assert details["status"] == "disconnected" and details["peer"] == connected["peer"] and details["enrolled"] is True


def test_wait_on_a_device_that_refused_the_credentials_says_so(
    listener_in_thread: Any, sim_devices: Any, tmp_path: Path, wait_until: Any
) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    lst = listener_in_thread(credentials={"username": "netconf", "password_file": str(wrong)})
    sim_devices(lst, 1, wait_connected=False)
    wait_until(lambda: _status(lst, "sim0001") == "auth-failed", 20, "sim0001 to fail authentication")
    with pytest.raises(DeviceNotReadyError, match="rejected the listener's credentials") as err:
        lst.call("wait", device="sim0001", wait=0.2)
    assert err.value.details["status"] == "auth-failed"


def _status(lst: Any, name: str) -> str:
    try:
        return str(lst.call("device", device=name)["status"])
    except DeviceNotFoundError:
        return "unknown"


def test_unknown_operation_lists_the_known_ones(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    with pytest.raises(ControlError, match=r"unknown operation 'frobnicate' \(known: .*devices.*lease.*") as err:
        lst.call("frobnicate")
    assert err.value.code == "control"
    known = re.search(r"known: (.*)\)", err.value.message).group(1).split(", ")
    assert {"ping", "status", "devices", "device", "pending", "approve", "revoke", "enroll", "wait", "shutdown", "lease"} <= set(known)


@pytest.mark.parametrize(
    "line",
    [b"this is not json\n", b"[1, 2]\n", b'{"no_op": 1}\n', b'"ping"\n'],
    ids=["not-json", "array", "no-op-field", "string"],
)
def test_malformed_request_line(listener_in_thread: Any, line: bytes) -> None:
    lst = listener_in_thread()
    answer = raw_request(lst, line)
    assert answer["ok"] is False
    assert answer["error"]["code"] == "control"
    assert answer["error"]["message"] == "request must be one JSON object line with an 'op' field"
    assert lst.call("ping")["pid"] == os.getpid()  # the listener is unharmed


def test_over_long_request_line_is_refused(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    payload = b'{"op": "ping", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}\n'
    answer = raw_request(lst, payload)
    assert answer["ok"] is False and answer["error"]["code"] == "request-too-large"
    assert answer["error"]["message"].startswith("request line exceeds 1048576 bytes")
    assert lst.call("ping")["pid"] == os.getpid()


def test_bad_numbers_are_refused(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    for wait in (-1, True, "5"):
        with pytest.raises(ControlError, match="'wait' must be a non-negative number"):
            lst.call("wait", device="r1", wait=wait)


def test_no_listener_is_unreachable(tmp_path: Path) -> None:
    client = ControlClient("unix:%s" % (tmp_path / "control.sock"), timeout=2)
    with pytest.raises(ListenerUnreachableError, match="no call-home listener answers at unix:"):
        client.call("ping")


def test_stop_removes_the_control_socket(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    assert os.path.exists(lst.config.control_socket)
    lst.stop()
    assert not os.path.exists(lst.config.control_socket)
    with pytest.raises(ListenerUnreachableError):
        lst.call("ping")

# SPDX-License-Identifier: GPL-3.0-or-later
"""``netconf.callhome.config`` in real ``ansible-playbook`` runs against the simulator's direct
NETCONF endpoint (candidate, confirmed-commit 1.1, rollback), with a real listener for the safe
rollout.

The simulator does not act on pushed call-home configuration by itself, so a *follower* in the
test plays the device's call-home client: it reads the device's running configuration over its
own NETCONF session and, once an ietf-netconf-server call-home endpoint appears there, starts
the same simulated device (same host key) dialing the address and port that endpoint names.
A device whose configuration names a dead port therefore never calls, as in real life.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from harness import ROOT, Fleet, child_env, free_port  # tests/integration (conftest puts it on sys.path)

pytestmark = pytest.mark.timeout(300)
NCS = "urn:ietf:params:xml:ns:yang:ietf-netconf-server"
CAPS = [
    "urn:ietf:params:netconf:capability:candidate:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
    # "&amp;": the simulator writes capabilities into its hello without XML escaping
    "urn:ietf:params:xml:ns:yang:ietf-netconf-server?module=ietf-netconf-server&amp;revision=2025-04-24",
]
DEVICE = "sim0001"
LISTENER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl listener"


class DirectDevice:
    """The simulator serving NETCONF over SSH directly (no call home) on a free port."""

    def __init__(self, fleet: Fleet, caps: List[str]) -> None:
        import simulator

        self.port = free_port()
        args = ["--direct", "127.0.0.1:%d" % self.port, "--keys-dir", str(fleet.keys_dir), "--user", "netconf",
                "--password", fleet.password]
        for cap in caps:
            args += ["--capability", cap]
        self.proc = simulator.start_simulator_process(args, env=child_env())
        self.proc.wait_for("LISTENING", timeout=30)
        self.password = fleet.password

    def manager(self) -> Any:
        from ncclient import manager

        return manager.connect(host="127.0.0.1", port=self.port, username="netconf", password=self.password,
                               hostkey_verify=False, look_for_keys=False, allow_agent=False, timeout=20)

    def callhome_entries(self, m: Any = None) -> List[Any]:
        own = m is None
        m = m or self.manager()
        try:
            flt = '<netconf-server xmlns="%s"><call-home/></netconf-server>' % NCS
            data = m.get_config("running", filter=("subtree", flt)).data_ele
            return data.findall(".//{%s}netconf-client" % NCS)
        finally:
            if own:
                m.close_session()

    def stop(self) -> None:
        self.proc.stop()


class Follower(threading.Thread):
    """Starts the device's call home once running config points at a listener (see module doc)."""

    def __init__(self, device: DirectDevice, fleet: Fleet) -> None:
        super().__init__(daemon=True)
        self.device, self.fleet = device, fleet
        self.stopping = threading.Event()
        self.sim: Any = None
        self.dialed: Optional[int] = None

    def run(self) -> None:
        m = self.device.manager()
        try:
            while not self.stopping.is_set() and self.sim is None:
                for entry in self.device.callhome_entries(m):
                    port = entry.findtext(".//{%s}remote-port" % NCS)
                    if port and port.isdigit():
                        self.dialed = int(port)
                        self.sim = self.fleet.simulator(int(port), 1)
                        break
                self.stopping.wait(0.2)
        finally:
            m.close_session()

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        if self.sim is not None:
            self.sim.stop()
            self.log = self.sim.lines + self.sim.stderr_lines


@pytest.fixture
def device(fleet: Fleet) -> Any:
    fleet.keys([DEVICE])
    dev = DirectDevice(fleet, CAPS)
    yield dev
    dev.stop()


def play(tmp: Path, device: DirectDevice, args: Dict[str, Any], *flags: str) -> Dict[str, Any]:
    """Run one netconf.callhome.config task with ansible-playbook; return its registered result."""
    out = tmp / ("result-%d.json" % time.monotonic_ns())
    inventory = {"all": {"hosts": {"r1": {
        "ansible_host": "127.0.0.1", "ansible_port": device.port, "ansible_user": "netconf",
        "ansible_password": device.password, "ansible_connection": "ansible.netcommon.netconf",
        "ansible_network_os": "ansible.netcommon.default", "ansible_python_interpreter": os.sys.executable,
    }}}}
    playbook = [{"hosts": "r1", "gather_facts": False, "tasks": [
        {"netconf.callhome.config": args, "register": "r", "ignore_errors": True},
        {"ansible.builtin.copy": {"content": "{{ r | to_json }}", "dest": str(out)},
         "delegate_to": "localhost", "check_mode": False, "vars": {"ansible_connection": "local"}},
    ]}]
    (tmp / "inv.json").write_text(json.dumps(inventory))
    (tmp / "play.json").write_text(json.dumps(playbook))
    env = child_env(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_HOST_KEY_CHECKING="False",
                    ANSIBLE_PERSISTENT_COMMAND_TIMEOUT="120", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([os.path.join(os.path.dirname(os.sys.executable), "ansible-playbook"), "-i", str(tmp / "inv.json"),
                           str(tmp / "play.json"), *flags], capture_output=True, text=True, env=env, timeout=240, check=False)
    assert out.exists(), "playbook produced no result (rc=%d):\n%s\n%s" % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    result = dict(json.loads(out.read_text()))
    result["_stdout"] = proc.stdout
    return result


def ch_args(port: int = 4334, **extra: Any) -> Dict[str, Any]:
    args: Dict[str, Any] = {
        "name": "nms",
        "endpoints": [{"name": "a", "address": "127.0.0.1", "port": port}],
        "ssh": {"host_key_reference": "genkey", "username": "netconf", "client_public_keys": [LISTENER_KEY]},
        "max_attempts": 3,
    }
    args.update(extra)
    return args


def test_check_diff_apply_idempotence_replaced_absent(tmp_path: Path, device: DirectDevice) -> None:
    checked = play(tmp_path, device, ch_args(), "--check", "--diff")
    assert checked["changed"] is True and not checked.get("failed"), checked
    assert checked["revision"] == "2025-04-24" and checked["datastore"] == "candidate"
    assert "<remote-port>4334</remote-port>" in checked["diff"]["after"] and checked["diff"]["before"] == ""
    assert device.callhome_entries() == [], "check mode must not change the device"

    applied = play(tmp_path, device, ch_args(), "--diff")
    assert applied["changed"] is True and not applied.get("failed"), applied
    assert "+          <remote-port>4334</remote-port>" in applied["_stdout"]  # --diff rendered by Ansible
    entries = device.callhome_entries()
    assert len(entries) == 1 and entries[0].findtext(".//{%s}central-keystore-reference" % NCS) == "genkey"

    again = play(tmp_path, device, ch_args())
    assert again["changed"] is False and not again.get("failed"), again

    # present with a subset changes nothing; replaced with fewer settings does
    subset = play(tmp_path, device, {"name": "nms", "endpoints": [{"name": "a", "address": "127.0.0.1", "port": 4334}],
                                     "ssh": {"host_key_reference": "genkey", "username": "netconf"}})
    assert subset["changed"] is False, subset
    replaced = play(tmp_path, device, dict(ch_args(port=4444), state="replaced", max_attempts=None))
    assert replaced["changed"] is True and not replaced.get("failed"), replaced
    entry = device.callhome_entries()[0]
    assert entry.findtext(".//{%s}remote-port" % NCS) == "4444" and entry.find(".//{%s}reconnect-strategy" % NCS) is None
    assert play(tmp_path, device, dict(ch_args(port=4444), state="replaced", max_attempts=None))["changed"] is False

    removed = play(tmp_path, device, {"name": "nms", "state": "absent"}, "--diff")
    assert removed["changed"] is True and device.callhome_entries() == []
    assert play(tmp_path, device, {"name": "nms", "state": "absent"})["changed"] is False


def test_rpc_error_is_a_clear_failure(tmp_path: Path, device: DirectDevice) -> None:
    m = device.manager()
    try:
        m.lock("candidate")  # another operator holds the lock
        failed = play(tmp_path, device, ch_args())
    finally:
        m.close_session()
    assert failed.get("failed") is True
    assert "lock" in failed["msg"] and "locked by session" in failed["msg"], failed["msg"]
    assert device.callhome_entries() == []


def test_safe_rollout_confirms_after_the_device_called(tmp_path: Path, device: DirectDevice, fleet: Fleet,
                                                       listener_factory: Any) -> None:
    listener = listener_factory().start()
    fleet.enroll(Path(listener.status["trust_store"]), [DEVICE])
    listener.call("reload")
    follower = Follower(device, fleet)
    follower.start()
    try:
        result = play(tmp_path, device, ch_args(
            port=listener.ssh_port, confirm_callhome=True, callhome_device=DEVICE, callhome_timeout=40,
            confirm_timeout=90, listener="unix:%s" % listener.status["control_socket"]))
        if result.get("failed"):
            follower.stop()
        assert not result.get("failed"), "%s\nsimulator: %s\nlistener: %s" % (
            result.get("msg"), getattr(follower, "log", None), listener.log()[-2000:])
        assert result["changed"] is True
        ch = result["callhome"]
        assert ch["mode"] == "confirmed-commit" and ch["confirmed"] is True and ch["status"] == "connected", ch
        assert follower.dialed == listener.ssh_port
    finally:
        follower.stop()
    # confirmed: the configuration stays after the session that committed it is gone
    time.sleep(0.5)  # asserts the absence of a rollback for a while: no condition to poll for
    assert len(device.callhome_entries()) == 1


def test_device_that_never_calls_is_rolled_back(tmp_path: Path, device: DirectDevice, listener_factory: Any,
                                                fleet: Fleet) -> None:
    listener = listener_factory().start()
    fleet.enroll(Path(listener.status["trust_store"]), [DEVICE])
    before = play(tmp_path, device, ch_args(port=4334))  # the current, working configuration
    assert before["changed"] is True
    dead = free_port()  # nobody listens there: a typo in the rollout
    started = time.monotonic()
    result = play(tmp_path, device, ch_args(
        port=dead, state="replaced", confirm_callhome=True, callhome_device=DEVICE, callhome_timeout=6,
        confirm_timeout=30, listener="unix:%s" % listener.status["control_socket"]))
    assert result.get("failed") is True
    assert "did not call home" in result["msg"] and "previous configuration" in result["msg"], result["msg"]
    assert result["callhome"]["rollback"] == "cancelled" and result["changed"] is False
    assert time.monotonic() - started < 30, "the rollback must not wait for the confirm timeout"
    entries = device.callhome_entries()
    assert [e.findtext(".//{%s}remote-port" % NCS) for e in entries] == ["4334"], "device must be back on the old config"


def test_refuses_confirm_without_confirmed_commit(tmp_path: Path, fleet: Fleet) -> None:
    fleet.keys([DEVICE])
    dev = DirectDevice(fleet, ["urn:ietf:params:netconf:capability:writable-running:1.0", CAPS[2]])
    try:
        result = play(tmp_path, dev, ch_args(confirm_callhome=True, callhome_device=DEVICE,
                                             listener="unix:%s" % (tmp_path / "none.sock")))
        assert result.get("failed") is True and "allow_unconfirmed" in result["msg"], result
        assert result["callhome"]["mode"] == "refused" and dev.callhome_entries() == []
    finally:
        dev.stop()


def test_unknown_revision_is_refused(tmp_path: Path, fleet: Fleet) -> None:
    fleet.keys([DEVICE])
    dev = DirectDevice(fleet, CAPS[:2] + [CAPS[2].replace("2025-04-24", "2021-01-01")])
    try:
        result = play(tmp_path, dev, ch_args())
        assert result.get("failed") is True
        assert "revision '2021-01-01'" in result["msg"] and "2025-04-24" in result["msg"], result["msg"]
    finally:
        dev.stop()


def test_safe_rollout_onto_the_single_callhome_port(tmp_path: Path, device: DirectDevice, fleet: Fleet,
                                                    listener_factory: Any) -> None:
    """``callhome_port``: the endpoint has no port of its own, so the device is pointed at the
    listener's single call-home port (``callhome_binds``), where the listener tells SSH from the
    device's first bytes; the confirmed commit is confirmed once the device is held there."""
    import yaml

    listener = listener_factory()
    listener.home.mkdir(parents=True, exist_ok=True)
    (listener.home / "listener.yml").write_text(yaml.safe_dump({"callhome_binds": ["127.0.0.1:0"]}))
    listener.start()
    fleet.enroll(Path(listener.status["trust_store"]), [DEVICE])
    listener.call("reload")
    single = int(listener.call("status")["callhome"][0].rsplit(":", 1)[1])
    follower = Follower(device, fleet)
    follower.start()
    try:
        args = ch_args(callhome_port=single, confirm_callhome=True, callhome_device=DEVICE, callhome_timeout=40,
                       confirm_timeout=90, listener="unix:%s" % listener.status["control_socket"])
        args["endpoints"] = [{"name": "a", "address": "127.0.0.1"}]  # no port: callhome_port applies
        result = play(tmp_path, device, args)
        assert not result.get("failed"), "%s\nlistener: %s" % (result.get("msg"), listener.log()[-2000:])
        ch = result["callhome"]
        assert ch["mode"] == "confirmed-commit" and ch["confirmed"] is True and ch["status"] == "connected", ch
        assert follower.dialed == single
    finally:
        follower.stop()
    assert [e.findtext(".//{%s}remote-port" % NCS) for e in device.callhome_entries()] == [str(single)]

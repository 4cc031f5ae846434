# SPDX-License-Identifier: GPL-3.0-or-later
"""Issue 9 item 5: a device lost while a task's RPC is in flight, as a playbook meets it.

The listener is the persistent connection, so when the device goes away mid-task the task's
module is waiting on the listener, not on a socket of its own. A real ``ansible-playbook`` proves
what the issue asks: the task fails within its ``ansible_command_timeout``, the message names the
device and says what happened, and the *next* task of the same run waits for the device to call
home again and then succeeds.

How the RPC is made to be in flight without a special device: the playbook stops at a gate (a
``wait_for`` on a file, run on the controller); the test freezes the simulator (SIGSTOP), opens
the gate, and waits until the module's request has reached the device's socket (its receive
queue, read with ``ss``, is no longer empty: the listener sent the RPC, the device did not read
it). Then the device is either killed (the kernel resets its connection, as when a device
reboots or its process dies) or left frozen (a device or path that hangs: no FIN, no RST).
Both are run on a device that serves a channel per client and on one that serves one session
(the multiplexer's path).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Fleet, wait_until  # noqa: E402
from test_playbook_callhome import (  # noqa: E402  (the playbook tests' listener set-up)
    PASSWORD,
    VENV_BIN,
    Listener,
    _env,
    _recap,
)

from simulator import SimulatorProcess, start_simulator_process  # noqa: E402

pytestmark = pytest.mark.timeout(300)

COMMAND_TIMEOUT = 15  # ansible_command_timeout of the plays below

PLAY = """---
- hosts: all
  gather_facts: false
  tasks:
    - name: Before
      ansible.netcommon.netconf_get:
        source: running
    - name: Gate one
      ansible.builtin.wait_for:
        path: "{{ gate_dir }}/one"
        timeout: 120
      delegate_to: localhost
      vars:
        ansible_connection: local
    - name: In flight
      ansible.netcommon.netconf_rpc:
        rpc: get-config
        xmlns: urn:ietf:params:xml:ns:netconf:base:1.0
        content: <source><running/></source>
      ignore_errors: true
      register: lost
    - name: Gate two
      ansible.builtin.wait_for:
        path: "{{ gate_dir }}/two"
        timeout: 120
      delegate_to: localhost
      vars:
        ansible_connection: local
    - name: After
      ansible.netcommon.netconf_get:
        source: running
      register: after
    - ansible.builtin.assert:
        that:
          - lost is failed
          - "'hostname' in after.stdout"
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("handoff-failures")
    path.chmod(0o700)
    return path


@pytest.fixture(scope="module")
def listener(home: Path) -> Iterator[Listener]:
    lst = Listener(home)
    yield lst
    lst.stop()


class Playbook:
    """``ansible-playbook -v`` in a child process, its output read line by line as it comes."""

    def __init__(self, home: Path, inventory: Path, playbook: Path) -> None:
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "ansible-playbook"), "-v", "-i", str(inventory), str(playbook)],
            env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(home),
        )
        self.lines: List[Tuple[float, str]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append((time.monotonic(), line))

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(line for _when, line in self.lines)

    def wait_line(self, pattern: str, timeout: float) -> float:
        """Wait for a line matching ``pattern``; return when it was read."""
        regex = re.compile(pattern)

        def seen() -> Optional[float]:
            with self._lock:
                for when, line in self.lines:
                    if regex.search(line):
                        return when
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError("ansible-playbook ended before %r:\n%s" % (pattern, self.output[-6000:]))
            return None

        return wait_until(seen, timeout, "%r in the playbook's output" % pattern, detail=lambda: self.output[-4000:])

    def finish(self, timeout: float = 120) -> str:
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(10)
        return self.output


def _receive_queue(device_pid: int, listener_port: int) -> Optional[int]:
    """Bytes the device's end of its call-home connection has received and not read (``ss``)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", "( dport = :%d )" % listener_port],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout
    for line in out.splitlines():
        if "pid=%d," % device_pid in line:
            return int(line.split()[0])
    return None


def _start_device(listener: Listener, home: Path, prefix: str, single_session: bool) -> SimulatorProcess:
    args = ["--listener", "127.0.0.1:%d" % listener.ssh_port, "--count", "1", "--name-prefix", prefix,
            "--keys-dir", str(home / "keys"), "--password", PASSWORD]
    if single_session:
        args.append("--single-session")
    return start_simulator_process(args, wait_connected=1)


def _not_connected(listener: Listener, name: str) -> bool:
    return bool(listener.call("device", device=name).get("status") != "connected")


def _lose_mid_task(listener: Listener, home: Path, prefix: str, single_session: bool,
                   lose: Callable[[SimulatorProcess], None]) -> Tuple[str, Dict[str, float]]:
    """Run PLAY; while its "In flight" RPC waits on the frozen device, ``lose`` the device; start
    the device again once the "After" task waits for it. Returns the output and the seconds from
    the gate's opening (before the task's RPC), from the RPC reaching the device and from ``lose``
    to the task's failure."""
    name = "%s0001" % prefix
    Fleet(home / "sims", PASSWORD).enroll(home / "trust.json", [name], keys_dir=home / "keys")
    listener.call("reload")
    gates = home / ("gates-" + prefix)
    gates.mkdir()
    pb_path = home / ("lose-%s.yml" % prefix)
    pb_path.write_text(PLAY)
    inv = home / ("lose-%s.json" % prefix)
    inv.write_text(json.dumps({"all": {"vars": {
        "ansible_connection": "netconf.callhome.netconf", "ansible_python_interpreter": sys.executable,
        "ansible_command_timeout": COMMAND_TIMEOUT, "ansible_callhome_timeout": 90, "gate_dir": str(gates),
    }, "hosts": {name: {}}}}))
    device = _start_device(listener, home, prefix, single_session)
    again: Optional[SimulatorProcess] = None
    play = Playbook(home, inv, pb_path)
    try:
        listener.wait_connected([name])
        play.wait_line(r"^TASK \[Gate one\]", 120)  # "Before" is done: the endpoint exists
        assert "ok: [%s]" % name in play.output, play.output[-4000:]
        os.kill(device.proc.pid, signal.SIGSTOP)
        (gates / "one").touch()
        opened = time.monotonic()
        play.wait_line(r"^TASK \[In flight\]", 60)
        # the module's RPC has reached the device: sent by the listener, never read
        wait_until(lambda: (_receive_queue(device.proc.pid, listener.ssh_port) or 0) > 0, 60,
                   "the RPC to reach the frozen device", detail=lambda: play.output[-3000:])
        in_flight = time.monotonic()
        lose(device)
        lost_at = time.monotonic()
        failed_at = play.wait_line(r"^fatal: \[%s\]: FAILED!" % name, COMMAND_TIMEOUT + 60)
        # the device is gone for the listener before the next task asks for it
        if device.proc.poll() is None:
            device.proc.kill()  # a frozen device: the test ends it here (its connection reset)
        wait_until(lambda: _not_connected(listener, name), 30, "the listener to see %s gone" % name,
                   detail=lambda: (home / "listener.out").read_text(errors="replace")[-3000:])
        (gates / "two").touch()
        play.wait_line(r"waiting up to \d+ s for device %s to call home" % name, 60)
        again = _start_device(listener, home, prefix, single_session)
        out = play.finish(120)
    finally:
        if play.proc.poll() is None:
            play.proc.kill()
        for sim in (device, again):
            if sim is not None:
                if sim.proc.poll() is None:
                    os.kill(sim.proc.pid, signal.SIGCONT)
                sim.stop()
    assert play.proc.returncode == 0, out[-6000:]
    recap = _recap(out)[name]
    assert recap["failed"] == 0 and recap["unreachable"] == 0 and recap["ignored"] == 1, out[-4000:]
    return out, {"since_gate": failed_at - opened, "since_rpc": failed_at - in_flight, "since_lost": failed_at - lost_at}


def _failure_message(out: str, name: str) -> str:
    match = re.search(r"^fatal: \[%s\]: FAILED! => (\{.*\})$" % re.escape(name), out, re.M)
    assert match, out[-4000:]
    return str(json.loads(match.group(1)).get("msg", ""))


def _kill(device: SimulatorProcess) -> None:
    device.proc.kill()  # SIGKILL: the kernel resets the connection (unread data in its queue)
    device.proc.wait(10)


def _keep_frozen(device: SimulatorProcess) -> None:
    return None


@pytest.mark.parametrize("single_session", [False, True], ids=["channel-per-client", "one-session"])
def test_a_device_killed_mid_rpc_fails_the_task_and_the_next_task_waits_for_it(
    listener: Listener, home: Path, single_session: bool
) -> None:
    prefix = "killed%s" % ("s" if single_session else "c")
    name = "%s0001" % prefix
    out, times = _lose_mid_task(listener, home, prefix, single_session, _kill)
    msg = _failure_message(out, name)
    # names the device, says what happened and what comes next; no stale "run again" advice
    assert "device %s: its NETCONF session ended" % name in msg, msg
    assert "the next task waits for the device to call home again" in msg, msg
    # the connection reset ends the task at once, well within its command timeout
    assert times["since_lost"] < COMMAND_TIMEOUT, "failed %.1f s after the device was killed" % times["since_lost"]
    # and the next task waited for the device's new call and ran on it
    assert "ok: [%s]" % name in out.split("TASK [After]", 1)[1], out[-4000:]


@pytest.mark.parametrize("single_session", [False, True], ids=["channel-per-client", "one-session"])
def test_a_device_that_hangs_mid_rpc_fails_the_task_at_its_command_timeout(
    listener: Listener, home: Path, single_session: bool
) -> None:
    prefix = "hung%s" % ("s" if single_session else "c")
    name = "%s0001" % prefix
    out, times = _lose_mid_task(listener, home, prefix, single_session, _keep_frozen)
    msg = _failure_message(out, name)
    assert "device %s: no reply to" % name in msg and "within %d s (ansible_command_timeout)" % COMMAND_TIMEOUT in msg, msg
    # not before the command timeout (counted from before the RPC was sent), and not much after it
    assert times["since_gate"] >= COMMAND_TIMEOUT, times
    assert times["since_rpc"] < COMMAND_TIMEOUT + 10, times
    assert "ok: [%s]" % name in out.split("TASK [After]", 1)[1], out[-4000:]

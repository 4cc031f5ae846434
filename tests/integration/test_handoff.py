# SPDX-License-Identifier: GPL-3.0-or-later
"""The hand-off of issue 9: the listener serves Ansible's persistent-connection protocol itself.

Real ``ansible-playbook`` runs prove that no ``ansible-connection`` starts on the call-home path,
that several clients of one device (forks, two playbooks at once) run side by side on a device
that serves one NETCONF session, and that a lock taken by one playbook holds against another.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_playbook_callhome import (  # noqa: E402  (helpers of the playbook tests, same listener set-up)
    PASSWORD,
    VENV_BIN,
    Listener,
    _env,
    _recap,
)

from harness import Fleet  # noqa: E402
from simulator import start_simulator_process  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("handoff")
    path.chmod(0o700)
    return path


@pytest.fixture(scope="module")
def listener(home: Path) -> Iterator[Listener]:
    lst = Listener(home)
    yield lst
    lst.stop()


@pytest.fixture(scope="module")
def single(listener: Listener, home: Path) -> Iterator[str]:
    """One simulated device that serves one NETCONF session (refuses a second channel)."""
    name = "one0001"
    Fleet(home / "sims", PASSWORD).enroll(home / "trust.json", [name], keys_dir=home / "keys")
    listener.call("reload")
    sim = start_simulator_process(
        ["--listener", "127.0.0.1:%d" % listener.ssh_port, "--count", "1", "--name-prefix", "one",
         "--keys-dir", str(home / "keys"), "--password", PASSWORD, "--single-session"],
        wait_connected=1,
    )
    try:
        listener.wait_connected([name])
        yield name
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def no_connection_stub(home: Path) -> Path:
    """An ``ansible-connection`` stand-in that records being run and fails."""
    record = home / "ansible-connection-ran"
    stub = home / "ansible-connection-stub.py"
    stub.write_text("import pathlib, sys\npathlib.Path(%r).write_text(' '.join(sys.argv))\nsys.exit(1)\n" % str(record))
    return stub


def _env_no_stub(home: Path, stub: Path) -> Any:
    return _env(home, _ANSIBLE_CONNECTION_PATH=str(stub))


def _inventory(home: Path, name: str, hosts: Any, **hostvars: Any) -> Path:
    inv = {"all": {"vars": dict({"ansible_connection": "netconf.callhome.netconf",
                                 "ansible_python_interpreter": sys.executable}, **hostvars),
                   "hosts": hosts}}
    path = home / ("%s.json" % name)
    path.write_text(json.dumps(inv))
    return path


def _write(home: Path, name: str, text: str) -> Path:
    path = home / name
    path.write_text(text)
    return path


GET = """---
- hosts: all
  gather_facts: false
  tasks:
    - ansible.netcommon.netconf_get:
        source: running
      register: running
    - ansible.netcommon.netconf_rpc:
        rpc: get-config
        xmlns: urn:ietf:params:xml:ns:netconf:base:1.0
        content: <source><running/></source>
    - ansible.builtin.assert:
        that: "'hostname' in running.stdout"
"""

LOCK = """---
- hosts: all
  gather_facts: false
  tasks:
    - name: Lock running
      ansible.netcommon.netconf_rpc:
        rpc: lock
        xmlns: urn:ietf:params:xml:ns:netconf:base:1.0
        content: <target><running/></target>
"""

# The holder keeps the lock until the test creates the marker file (after the editor has run):
# debug needs no connection and the fileglob lookup runs on the controller.
HOLD_LOCK = LOCK + """    - name: Hold the lock
      ansible.builtin.debug:
        msg: holding the lock until {{ marker }} exists
      until: lookup('ansible.builtin.fileglob', marker, wantlist=True) | length > 0
      retries: 1200
      delay: 0.1
    - name: Unlock running
      ansible.netcommon.netconf_rpc:
        rpc: unlock
        xmlns: urn:ietf:params:xml:ns:netconf:base:1.0
        content: <target><running/></target>
"""

EDIT = """---
- hosts: all
  gather_facts: false
  tasks:
    - ansible.netcommon.netconf_config:
        target: running
        lock: always
        content: |
          <config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">
            <system xmlns="urn:ietf:params:xml:ns:yang:ietf-system"><location>locked-out</location></system>
          </config>
"""


def _run(home: Path, playbook: Path, inv: Path, *args: str, env: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inv), str(playbook), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(home),
    )


def test_the_stub_detects_ansible_connection(home: Path, no_connection_stub: Path) -> None:
    """Control: a persistent connection (netcommon's own netconf) does run the stub."""
    record = home / "ansible-connection-ran"
    inv = _inventory(home, "direct", {"nowhere": {}}, ansible_connection="ansible.netcommon.netconf",
                     ansible_host="127.0.0.1", ansible_port=1)
    proc = _run(home, _write(home, "get.yml", GET), inv, env=_env_no_stub(home, no_connection_stub))
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and record.exists(), out[-3000:]
    record.unlink()


def test_no_ansible_connection_and_forks_on_a_one_session_device(home: Path, single: str, no_connection_stub: Path) -> None:
    """Five inventory hosts on one one-session device, --forks 5; ansible-connection never runs."""
    hosts = {"h%d" % i: {"callhome_device": single} for i in range(1, 6)}
    inv = _inventory(home, "forks", hosts)
    pb = _write(home, "get.yml", GET)
    proc = _run(home, pb, inv, "--forks", "5", "-vvv", env=_env_no_stub(home, no_connection_stub))
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, out[-6000:]
    recap = _recap(out)
    assert sorted(recap) == sorted(hosts)
    assert all(r["failed"] == 0 and r["unreachable"] == 0 and r["ok"] == 3 for r in recap.values()), out[-4000:]
    assert not (home / "ansible-connection-ran").exists(), "ansible-connection ran"
    assert "handed off in" in out


def test_two_playbooks_at_once_on_a_one_session_device(home: Path, single: str, no_connection_stub: Path) -> None:
    env = _env_no_stub(home, no_connection_stub)
    pb = _write(home, "get.yml", GET)
    procs = [_run(home, pb, _inventory(home, "two%d" % i, {"p%d" % i: {"callhome_device": single}}), env=env)
             for i in (1, 2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0, out[-4000:]
    assert not (home / "ansible-connection-ran").exists()


def test_a_lock_taken_by_one_playbook_denies_another_playbooks_edit(
    home: Path, single: str, no_connection_stub: Path
) -> None:
    env = _env_no_stub(home, no_connection_stub)
    marker = home / "editor-done"
    if marker.exists():
        marker.unlink()
    holder = _run(home, _write(home, "hold.yml", HOLD_LOCK),
                  _inventory(home, "holder", {"holder": {"callhome_device": single}}), "-e", "marker=%s" % marker,
                  env=env)
    assert holder.stdout is not None
    seen: List[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = holder.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "TASK [Hold the lock]" in line:
            break
    assert any("TASK [Hold the lock]" in line for line in seen), "".join(seen)
    assert not any("FAILED" in line or "fatal" in line for line in seen), "".join(seen)
    editor = _run(home, _write(home, "edit.yml", EDIT),
                  _inventory(home, "editor", {"editor": {"callhome_device": single}}), env=env)
    try:
        out = editor.communicate(timeout=120)[0]
    finally:
        marker.touch()  # the holder unlocks and ends
    rest = holder.communicate(timeout=120)[0]
    assert editor.returncode != 0, out
    # the multiplexer's rpc-error-tag: "locked by another client" is in its in-use answer too
    assert "lock-denied" in out, out[-4000:]
    assert holder.returncode == 0, "".join(seen) + rest
    assert _recap(out)["editor"]["failed"] == 1


LOCK_THEN_FAIL = LOCK + """    - name: The play fails holding the lock
      ansible.builtin.fail:
        msg: failed between lock and unlock
"""


def test_a_lock_is_released_when_the_holders_playbook_fails(home: Path, single: str, no_connection_stub: Path) -> None:
    """ansible-core resets each host's socket at the end of a play, failed or not: the listener ends
    that client then, so its lock goes at once, not when its endpoint has been idle for 60 s."""
    env = _env_no_stub(home, no_connection_stub)
    holder = _run(home, _write(home, "lock-fail.yml", LOCK_THEN_FAIL),
                  _inventory(home, "failing", {"failing": {"callhome_device": single}}), env=env)
    held = holder.communicate(timeout=120)[0]
    assert holder.returncode != 0 and "failed between lock and unlock" in held, held[-4000:]
    assert _recap(held)["failing"]["ok"] == 1, held[-4000:]  # the lock was taken
    started = time.monotonic()
    editor = _run(home, _write(home, "edit.yml", EDIT),
                  _inventory(home, "after", {"after": {"callhome_device": single}}), env=env)
    out = editor.communicate(timeout=120)[0]
    took = time.monotonic() - started
    print("the editor's run after the lock holder's failed play: %.1f s" % took)
    assert editor.returncode == 0, out[-4000:]
    # the editor's whole run, ansible-playbook's start-up included (a few seconds on a loaded
    # machine); the endpoint's idle time (60 s) would be far above
    assert took < 20, took


OWN_LOCK = LOCK + """    - name: Edit in a task with another command timeout (the same client, the same lock)
      ansible.netcommon.netconf_config:
        target: running
        lock: never
        content: |
          <config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">
            <system xmlns="urn:ietf:params:xml:ns:yang:ietf-system"><location>own-lock</location></system>
          </config>
      vars:
        ansible_command_timeout: 120
    - name: Unlock running
      ansible.netcommon.netconf_rpc:
        rpc: unlock
        xmlns: urn:ietf:params:xml:ns:netconf:base:1.0
        content: <target><running/></target>
"""


def test_a_hosts_lock_holds_for_its_tasks_with_another_command_timeout(
    home: Path, single: str, no_connection_stub: Path
) -> None:
    env = _env_no_stub(home, no_connection_stub)
    proc = _run(home, _write(home, "own-lock.yml", OWN_LOCK),
                _inventory(home, "own", {"own": {"callhome_device": single}}), env=env)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-4000:]
    assert _recap(out)["own"]["ok"] == 3 and _recap(out)["own"]["changed"] >= 1, out[-4000:]


def test_tls_device_with_five_forks(device_binary: Any, listener_factory: Any, tmp_path: Path) -> None:
    """libnetconf2 over TLS (one NETCONF session per connection): five inventory hosts, --forks 5."""
    from harness import child_env, enroll
    from lnc2_peer import Lnc2Device
    from pki import make_pki

    tls_pki = make_pki(tmp_path / "pki-tls", device_name="lnc2-tls")
    lst = listener_factory("--tls", "127.0.0.1:0", "--tls-client-cert", str(tls_pki.listener_cert.cert_path),
                           "--tls-client-key", str(tls_pki.listener_cert.key_path))
    lst.start()
    enroll(lst.home, "lnc2-tls", tls_fp=tls_pki.device_self_signed.fingerprint)
    lst.call("reload")
    record = tmp_path / "ansible-connection-ran"
    stub = tmp_path / "stub.py"
    stub.write_text("import pathlib, sys\npathlib.Path(%r).write_text('ran')\nsys.exit(1)\n" % str(record))
    hosts = {"t%d" % i: {"callhome_device": "lnc2-tls"} for i in range(1, 6)}
    inv = tmp_path / "inv.json"
    inv.write_text(json.dumps({"all": {"vars": {
        "ansible_connection": "netconf.callhome.netconf",
        "ansible_callhome_listener": "unix:%s" % (lst.home / "control.sock"),
        "ansible_callhome_timeout": 60, "ansible_python_interpreter": sys.executable}, "hosts": hosts}}))
    pb = tmp_path / "get.yml"
    pb.write_text(GET.replace("'hostname' in running.stdout", "running.stdout | length > 0"))
    env = child_env(ANSIBLE_CONFIG=str(Path(__file__).resolve().parents[2] / "ansible.cfg"),
                    NETCONF_CALLHOME_HOME=str(lst.home), ANSIBLE_NOCOLOR="1", _ANSIBLE_CONNECTION_PATH=str(stub),
                    ANSIBLE_PERSISTENT_CONTROL_PATH_DIR=str(tmp_path / "pc"),
                    PATH="%s:%s" % (Path(sys.executable).parent, os.environ.get("PATH", "")))
    with Lnc2Device.from_pki(tls_pki, tls_port=lst.tls_port, self_signed=True):
        res = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inv), str(pb), "--forks", "5"],
                             env=env, capture_output=True, text=True, timeout=240, cwd=str(tmp_path), check=False)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    recap = _recap(res.stdout)
    assert sorted(recap) == sorted(hosts)
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in recap.values()), res.stdout[-4000:]
    assert not record.exists()


REMOTE_TOKEN = "handoff-remote-token-0123456789"


def test_remote_listener_relays_without_ansible_connection(listener_factory: Any, fleet: Any, tmp_path: Path) -> None:
    """A remote (tls:// + token) listener, as AWX reaches it: the plugin relays the modules' requests
    over the control channel (op ``rpc``); no ansible-connection; the relay's socket is gone after the
    run; a wrong token fails the task naming the token, still without ansible-connection."""
    import re

    import trustme
    from harness import free_port, running

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_pem, key_pem, ca_pem = tmp_path / "srv.pem", tmp_path / "srv.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    token_file = tmp_path / "token"
    token_file.write_text(REMOTE_TOKEN + "\n")
    port = free_port()
    config = tmp_path / "listener.yml"
    config.write_text(json.dumps({"control_tcp": {"bind": "127.0.0.1:%d" % port, "cert": str(cert_pem),
                                                  "key": str(key_pem), "token_file": str(token_file)}}))
    lst = listener_factory("--config", str(config))
    devices = ["sim0001", "sim0002"]
    fleet.enroll(lst.home / "trust.json", devices)
    lst.start()
    record = tmp_path / "ansible-connection-ran"
    stub = tmp_path / "stub.py"
    stub.write_text("import pathlib, sys\npathlib.Path(%r).write_text('ran')\nsys.exit(1)\n" % str(record))
    job_home = tmp_path / "job-home"  # the worker's own home: no listener may start there
    job_home.mkdir(mode=0o700)
    pb = tmp_path / "get.yml"
    pb.write_text(GET + """    - ansible.netcommon.netconf_config:
        target: running
        content: |
          <config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">
            <system xmlns="urn:ietf:params:xml:ns:yang:ietf-system"><location>relayed</location></system>
          </config>
""")

    def run(token: str, name: str) -> "subprocess.CompletedProcess[str]":
        inv = tmp_path / ("%s.json" % name)
        inv.write_text(json.dumps({"all": {"vars": {
            "ansible_connection": "netconf.callhome.netconf",
            "ansible_callhome_listener": "tls://127.0.0.1:%d" % port,
            "ansible_callhome_token": token, "ansible_callhome_tls_ca_file": str(ca_pem),
            "ansible_callhome_embedded": False, "ansible_callhome_timeout": 60,
            "ansible_python_interpreter": sys.executable}, "hosts": {d: {} for d in devices}}}))
        return subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inv), str(pb), "--forks", "2", "-vvv"],
                              env=_env(job_home, _ANSIBLE_CONNECTION_PATH=str(stub)), capture_output=True, text=True,
                              timeout=240, cwd=str(tmp_path), check=False)

    with running(fleet.simulator(lst.ssh_port, len(devices), "--single-session", wait_connected=len(devices))):
        res = run(REMOTE_TOKEN, "good")
        bad = run("not-the-token-0123456789", "bad")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:] + lst.log()[-3000:]
    recap = _recap(res.stdout)
    assert sorted(recap) == devices
    assert all(r["failed"] == 0 and r["unreachable"] == 0 and r["ok"] == 4 for r in recap.values()), out[-4000:]
    assert not record.exists(), "ansible-connection ran"
    relays = re.findall(r"relaying the modules' requests for device \S+ through (\S+) ", out)
    assert len(relays) >= 2 * 3, out[-4000:]  # every module task of every host
    assert not any(Path(p).exists() or Path(p).parent.exists() for p in relays)  # removed after each task
    assert REMOTE_TOKEN not in out and REMOTE_TOKEN not in lst.log()
    assert not (job_home / "control.sock").exists()
    assert "event=endpoint.start" in lst.log()

    bad_out = bad.stdout + bad.stderr
    assert bad.returncode != 0
    assert "a valid token is required" in bad_out and "ansible_callhome_token" in bad_out, bad_out[-4000:]
    assert not record.exists(), "ansible-connection ran"

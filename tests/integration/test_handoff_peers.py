# SPDX-License-Identifier: GPL-3.0-or-later
"""The hand-off of issue 9 against real peers: real listener processes, real ``ansible-playbook`` runs.

* the libnetconf2 device over SSH call home in each of its extra-channel modes (``silent``,
  ``refuse``, ``accept``): ``netconf_get`` and ``netconf_rpc`` succeed and the registry shows the
  session mode the listener settled on (a silent channel is detected within
  ``channel_hello_timeout`` once, and remembered);
* ``netconf_config`` with its options over call home against the simulator (candidate,
  confirmed-commit 1.1, writable-running);
* a vendor netconf plugin (``junipernetworks.junos.junos`` from the ``ansible`` wheel) run inside
  the listener against a simulated device presenting a Junos hello.

No ``ansible-connection`` may run on the call-home path: every playbook runs with a stand-in
(``_ANSIBLE_CONNECTION_PATH``) that records being run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from harness import ROOT, child_env, enroll

pytestmark = pytest.mark.timeout(120)

VENV_BIN = Path(sys.executable).parent
HELLO_TIMEOUT = 2.0  # the listener's channel_hello_timeout in these tests
SIM = "sim0001"

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
      register: rpc
    - ansible.builtin.assert:
        that:
          - "marker in running.stdout"
          - "marker in rpc.stdout_lines | join('')"  # netconf_rpc's stdout is bytes (lxml tostring)
"""


def _stub(tmp_path: Path) -> Tuple[Path, Path]:
    """An ``ansible-connection`` stand-in that records being run and fails."""
    record = tmp_path / "ansible-connection-ran"
    stub = tmp_path / "ansible-connection-stub.py"
    stub.write_text("import pathlib, sys\npathlib.Path(%r).write_text(' '.join(sys.argv))\nsys.exit(1)\n" % str(record))
    return stub, record


def _recap(out: str) -> Dict[str, Dict[str, int]]:
    recap: Dict[str, Dict[str, int]] = {}
    for line in out.split("PLAY RECAP", 1)[-1].splitlines():
        host, sep, counts = line.partition(" : ")
        if sep:
            recap[host.strip()] = {k: int(v) for k, v in (kv.split("=") for kv in counts.split())}
    return recap


def _get_expecting(text: str) -> str:
    """GET, asserting that ``text`` is in what netconf_get and netconf_rpc read from running."""
    return GET.replace("marker in", "%r in" % text)


def _playbook(tmp_path: Path, lst: Any, hosts: Dict[str, Any], text: str, *args: str,
              name: str = "run", collections: str = "", **hostvars: Any) -> Tuple[subprocess.CompletedProcess, float]:
    """Run ``text`` as a playbook over ``netconf.callhome.netconf``; returns the result and its wall time."""
    stub, record = _stub(tmp_path)
    inv = tmp_path / ("%s-inventory.json" % name)
    inv.write_text(json.dumps({"all": {"vars": dict({
        "ansible_connection": "netconf.callhome.netconf",
        "ansible_callhome_listener": "unix:%s" % (lst.home / "control.sock"),
        "ansible_callhome_timeout": 40, "ansible_python_interpreter": sys.executable}, **hostvars),
        "hosts": hosts}}))
    pb = tmp_path / ("%s.yml" % name)
    pb.write_text(text)
    extra = {"ANSIBLE_COLLECTIONS_PATH": collections} if collections else {}
    env = child_env(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), NETCONF_CALLHOME_HOME=str(lst.home),
                    ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", _ANSIBLE_CONNECTION_PATH=str(stub),
                    ANSIBLE_PERSISTENT_CONTROL_PATH_DIR=str(tmp_path / "pc"),
                    PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")), **extra)
    env.pop("NETCONF_CALLHOME_LISTENER", None)
    env.pop("NETCONF_CALLHOME_TOKEN", None)
    started = time.monotonic()
    res = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inv), str(pb), "-vvv", *args],
                         env=env, capture_output=True, text=True, timeout=90, cwd=str(tmp_path), check=False)
    elapsed = time.monotonic() - started
    assert not record.exists(), "ansible-connection ran: %s" % record.read_text()
    return res, elapsed


def _ok(res: subprocess.CompletedProcess, lst: Any, hosts: List[str], ok: int) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:] + "\nlistener log:\n" + lst.log()[-3000:]
    recap = _recap(res.stdout)
    assert sorted(recap) == sorted(hosts), out[-3000:]
    for host in hosts:
        assert recap[host]["failed"] == 0 and recap[host]["unreachable"] == 0, out[-4000:]
        assert recap[host]["ok"] == ok, (host, recap[host], out[-4000:])


def _first_endpoint_startup() -> float:
    """Seconds a listener's first endpoint spends importing and setting up what it needs (ansible-core's
    plugin loader, netcommon's ``default`` sub-plugin, ncclient), in a fresh interpreter of this
    environment; the listener process has been running, so the interpreter's own start is left out."""
    paths = [str(ROOT / ".collections"), str(ROOT / ".deps")]
    code = ("import time\nstarted = time.monotonic()\n"
            "from ansible.plugins.loader import init_plugin_loader, netconf_loader\n"
            "from ansible.utils.jsonrpc import JsonRpcServer\n"
            "init_plugin_loader(%r)\nassert netconf_loader.get('default', class_only=True)\n"
            "import ncclient.manager\nprint(time.monotonic() - started)\n" % paths)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return float(res.stdout.split()[-1])


def _handoffs(out: str) -> List[Tuple[float, str]]:
    """(milliseconds, mode) of every hand-off the plugin reported under -vvv."""
    return [(float(ms), mode) for ms, mode in re.findall(r"handed off in ([\d.]+) ms: endpoint \S+ \((\w+),", out)]


# --------------------------------------------------------------------------------------------
# 1. the libnetconf2 device in each extra-channel mode


@pytest.mark.parametrize("mode,expected", [("silent", "shared"), ("refuse", "shared"), ("accept", "channel")])
def test_lnc2_extra_channel_modes(device_binary: Any, listener_factory: Any, tmp_path: Path,
                                  mode: str, expected: str) -> None:
    """netconf_get and netconf_rpc over SSH call home from the libnetconf2 device whose further SSH
    channels are accepted, left silent or refused; the registry's session_mode follows. A silent
    channel is detected once within channel_hello_timeout; the second run neither probes again nor waits."""
    from lnc2_peer import Lnc2Device
    from pki import make_pki

    name = "lnc2-%s" % mode
    pki = make_pki(tmp_path / "pki", device_name=name, host_key_algorithms=("ed25519",))
    lst = listener_factory("--channel-hello-timeout", str(HELLO_TIMEOUT))
    lst.start()
    enroll(lst.home, name, ssh_key=pki.host_keys["ed25519"].public_line, private_key=pki.listener_ssh_key.private_path)
    lst.call("reload")
    with Lnc2Device.from_pki(pki, ssh_port=lst.ssh_port, extra_channels=mode) as dev:
        dev.wait_for(r"ch-ssh session \d+ established client=", 30)
        lst.call("wait", device=name, wait=30, timeout=35)
        text = _get_expecting("<name>%s</name>" % name)
        first, first_s = _playbook(tmp_path, lst, {name: {}}, text, name="first")
        _ok(first, lst, [name], 3)
        rec = lst.call("device", device=name)
        assert rec["session_mode"] == expected, (rec, lst.log()[-3000:])
        fallbacks = lst.log().count("event=session.mode_fallback")
        assert fallbacks == (1 if expected == "shared" else 0), lst.log()[-3000:]
        if mode == "silent":
            # The first hand-off waited for the silent channel's hello, about channel_hello_timeout,
            # no more. It also pays, once per listener, for loading ansible-core's plugin loader,
            # netcommon's sub-plugin and ncclient (measured now, on this machine under its current
            # load): the bound is twice the hello timeout (the probe, the lease and the manager)
            # plus twice that start-up and a second (the listener also loads the sub-plugin's
            # module and answers the plugin's other requests meanwhile; seen: 3.5 s against a
            # bound of 6.8 s, with a start-up of 0.9 s). It allowed 22 s before.
            waited = max(ms for ms, _m in _handoffs(first.stdout))
            startup = _first_endpoint_startup()
            bound = (2 * HELLO_TIMEOUT + 2 * startup + 1.0) * 1000
            print("silent: first hand-off %.0f ms, bound %.0f ms (start-up %.2f s)" % (waited, bound, startup))
            assert HELLO_TIMEOUT * 1000 * 0.9 <= waited < bound, (_handoffs(first.stdout), startup)
            assert "sent no NETCONF hello on a new channel within %g s" % HELLO_TIMEOUT in lst.log()
            assert dev.count(r"extra channel left silent") >= 1, dev.log
            assert dev.count(r"established on a new channel") == 0
        elif mode == "refuse":
            assert dev.count(r"ssh extra channel refused") >= 1, dev.log
        else:
            assert dev.count(r"established on a new channel") >= 1, dev.log
        first_modes = {m for _ms, m in _handoffs(first.stdout)}
        assert first_modes == {expected}, first.stdout[-3000:]

        mark = dev.mark()
        second, second_s = _playbook(tmp_path, lst, {name: {}}, text, name="second")
        _ok(second, lst, [name], 3)
        handoffs = _handoffs(second.stdout)
        print("%s: first run %.1f s, second %.1f s, second run's hand-offs %s" % (mode, first_s, second_s, handoffs))
        assert handoffs and {m for _ms, m in handoffs} == {expected}, second.stdout[-3000:]
        # no new detection: no fallback, no new channel opened on the device, no hand-off waiting for a hello
        assert lst.log().count("event=session.mode_fallback") == fallbacks, lst.log()[-3000:]
        if expected == "shared":
            assert dev.count(r"extra channel left silent|ssh extra channel refused|on a new channel", since=mark) == 0, \
                dev.log
            assert all(ms < HELLO_TIMEOUT * 1000 for ms, _m in handoffs), handoffs
        cli = lst.cli("--json", "device", name)
        assert json.loads(cli.stdout)["session_mode"] == expected, cli.stdout


# --------------------------------------------------------------------------------------------
# 2. netconf_config and its options against the simulator

LOCATION = """
        content: |
          <config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">
            <system xmlns="urn:ietf:params:xml:ns:yang:ietf-system"><location>%s</location></system>
          </config>"""
CONFIG_OPTIONS = """---
- hosts: all
  gather_facts: false
  tasks:
    - name: Backup, lock always, commit
      ansible.netcommon.netconf_config:
        target: candidate
        lock: always
        backup: true
        backup_options:
          dir_path: "{{ backup_dir }}"
          filename: backup.xml""" + LOCATION % "site-a" + """
      register: edit
    - name: Edit the candidate only
      ansible.netcommon.netconf_config:
        target: candidate
        commit: false""" + LOCATION % "confirmed-site" + """
    - name: Confirmed commit (netconf_rpc; netconf_config's confirm is test_netconf_config_confirm)
      ansible.netcommon.netconf_rpc:
        rpc: commit
        xmlns: urn:ietf:params:xml:ns:netconf:base:1.0
        content: <confirmed/><confirm-timeout>120</confirm-timeout>
    - name: Confirm the commit
      ansible.netcommon.netconf_config:
        confirm_commit: true
      register: confirmed
    - name: Check mode with diff changes nothing on the device
      ansible.netcommon.netconf_config:
        target: candidate""" + LOCATION % "check-only" + """
      check_mode: true
      diff: true
      register: checked
    - name: Same content again (idempotent)
      ansible.netcommon.netconf_config:
        target: candidate
        lock: always""" + LOCATION % "confirmed-site" + """
      diff: true
      register: again
    - ansible.netcommon.netconf_get:
        source: running
      register: running
    - ansible.netcommon.netconf_get:
        source: candidate
      register: candidate
    - ansible.builtin.assert:
        that:
          - edit is changed
          - "'urn:ietf:params:netconf:capability:confirmed-commit:1.1' in edit.server_capabilities"
          - confirmed is changed
          - checked is changed
          - "'check-only' in checked.diff.after"
          - "'confirmed-site' in checked.diff.before"
          - again is not changed
          - "'confirmed-site' in running.stdout"
          - "'check-only' not in running.stdout"
          - "'check-only' not in candidate.stdout"
"""

# netconf_config validates the target datastore as it is *before* its edit (ansible.netcommon's
# order: validate, then edit-config, then commit), so the refused case puts an invalid value in the
# candidate first.
VALIDATE = """---
- hosts: all
  gather_facts: false
  tasks:
    - name: Validate the candidate, edit it, commit
      ansible.netcommon.netconf_config:
        target: candidate
        validate: true""" + LOCATION % "validated-site" + """
      register: valid
    - name: Put a value the device finds invalid in the candidate, without commit
      ansible.netcommon.netconf_config:
        target: candidate
        commit: false""" + LOCATION % "invalid" + """
    - name: Validation of that candidate fails with the device's rpc-error
      ansible.netcommon.netconf_config:
        target: candidate
        validate: true""" + LOCATION % "other-site" + """
      register: refused
      ignore_errors: true
    - ansible.netcommon.netconf_rpc:
        rpc: discard-changes
        xmlns: urn:ietf:params:xml:ns:netconf:base:1.0
    - ansible.netcommon.netconf_get:
        source: running
      register: running
    - ansible.builtin.assert:
        that:
          - valid is changed
          - refused is failed
          - "'is not a valid value' in refused.msg"
          - "'validated-site' in running.stdout"
          - "'other-site' not in running.stdout"
          - "'>invalid<' not in running.stdout"
"""
VALIDATE_CAPABILITIES = (
    "urn:ietf:params:netconf:capability:candidate:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
    "urn:ietf:params:netconf:capability:writable-running:1.0",
    "urn:ietf:params:netconf:capability:validate:1.1",
)

CONFIRM = """---
- hosts: all
  gather_facts: false
  tasks:
    - name: Confirmed commit with netconf_config's confirm option
      ansible.netcommon.netconf_config:
        target: candidate
        confirm: 120""" + LOCATION % "confirm-option" + """
      register: confirmed
    - name: Confirm it
      ansible.netcommon.netconf_config:
        confirm_commit: true
      register: confirmation
    - ansible.netcommon.netconf_get:
        source: running
      register: running
    - ansible.builtin.assert:
        that:
          - confirmed is changed
          - confirmation is changed
          - "'confirm-option' in running.stdout"
"""


@contextlib.contextmanager
def _one_session_sim(listener_factory: Any, fleet: Any, *sim_args: str) -> Iterator[Any]:
    """A listener process and one simulated device (sim0001) serving one NETCONF session, connected."""
    lst = listener_factory()
    fleet.enroll(lst.home / "trust.json", [SIM])
    lst.start()
    sim = fleet.simulator(lst.ssh_port, 1, "--single-session", *sim_args, wait_connected=1)
    try:
        lst.call("wait", device=SIM, wait=30, timeout=35)
        yield lst
    finally:
        sim.stop()


def test_netconf_config_options_against_the_simulator(listener_factory: Any, fleet: Any, tmp_path: Path) -> None:
    """netconf_config over call home with backup: true (file written), lock: always, a confirmed
    commit (:confirmed-commit:1.1) confirmed with confirm_commit, check mode with --diff (the
    candidate is discarded, running unchanged) and an idempotent re-run, on a one-session
    simulated device (the listener multiplexes its one session).

    ``validate``: test_netconf_config_validate (a device that advertises :validate:1.1).
    ``confirm`` (a timeout): see test_netconf_config_confirm.
    """
    with _one_session_sim(listener_factory, fleet) as lst:
        backups = tmp_path / "backups"
        res, _s = _playbook(tmp_path, lst, {SIM: {"backup_dir": str(backups)}}, CONFIG_OPTIONS, "--diff",
                            name="config")
        _ok(res, lst, [SIM], 9)
        backup = backups / "backup.xml"
        assert backup.exists(), res.stdout[-3000:]
        saved = backup.read_text()
        assert re.search(r"<(\w+:)?location>lab</(\w+:)?location>", saved) and "sim0001" in saved, saved
        assert lst.call("device", device=SIM)["session_mode"] == "shared"


def test_netconf_config_validate(listener_factory: Any, fleet: Any, tmp_path: Path) -> None:
    """netconf_config's ``validate: true`` over call home, on a one-session device that advertises
    :validate:1.1: a valid candidate is validated and committed; a candidate the device finds
    invalid fails the task with the device's rpc-error before any commit, and running keeps the
    valid value."""
    caps = [arg for cap in VALIDATE_CAPABILITIES for arg in ("--capability", cap)]
    with _one_session_sim(listener_factory, fleet, *caps) as lst:
        res, _s = _playbook(tmp_path, lst, {SIM: {}}, VALIDATE, name="validate")
        _ok(res, lst, [SIM], 6)


def test_netconf_config_confirm(listener_factory: Any, fleet: Any, tmp_path: Path) -> None:
    """netconf_config's ``confirm: 120`` (a confirmed commit with a timeout) over call home, then
    ``confirm_commit``. Through ansible-connection this fails in ncclient ("Argument must be bytes or
    unicode, got 'int'": netcommon passes the int on); the listener passes the timeout as text."""
    with _one_session_sim(listener_factory, fleet) as lst:
        res, _s = _playbook(tmp_path, lst, {SIM: {}}, CONFIRM, name="confirm")
        assert "Argument must be bytes or unicode" not in res.stdout, res.stdout[-3000:]
        _ok(res, lst, [SIM], 4)


# --------------------------------------------------------------------------------------------
# 3. a vendor netconf plugin: junipernetworks.junos.junos

JUNOS_CAP = "http://xml.juniper.net/netconf/junos/1.0"


def _junos_collection(dest: Path) -> Path:
    """junipernetworks.junos extracted from the cached ansible wheel into ``dest``; skip if absent."""
    wheels = sorted((ROOT / ".cache" / "ansible-wheel").glob("ansible-*.whl"))
    if not wheels:
        pytest.skip("no ansible wheel in %s (junipernetworks.junos comes from it)" % (ROOT / ".cache" / "ansible-wheel"))
    prefix = "ansible_collections/junipernetworks/junos/"
    with zipfile.ZipFile(wheels[-1]) as whl:
        members = [m for m in whl.namelist() if m.startswith(prefix)]
        if prefix + "plugins/netconf/junos.py" not in members:
            pytest.skip("%s has no junipernetworks.junos netconf plugin" % wheels[-1].name)
        for member in members:
            whl.extract(member, str(dest))
    return dest


# The simulator answers only base NETCONF operations; the Junos plugin's get_device_info() (run by
# every module through get_capabilities) sends <get-software-information>. This wrapper runs the
# simulator's own CLI with that one Junos RPC answered, the way a Junos device answers it.
JUNOS_SIM = """
import sys
import xml.etree.ElementTree as ET
sys.path.insert(0, %r)
import netconf_server
import simulator

_dispatch = netconf_server.NetconfSession._dispatch


def dispatch(self, op):
    if netconf_server.local(op.tag) == "get-software-information":
        info = ET.Element("software-information")
        for tag, text in (("host-name", self.device.hostname), ("product-model", "vsrx"),
                          ("junos-version", "23.4R1.9")):
            ET.SubElement(info, tag).text = text
        return [info], False
    return _dispatch(self, op)


netconf_server.NetconfSession._dispatch = dispatch
sys.exit(simulator.main())
"""


def test_junos_netconf_plugin_through_the_listener(listener_factory: Any, fleet: Any, tmp_path: Path) -> None:
    """ansible_network_os junipernetworks.junos.junos: the listener loads the Junos netconf plugin (with
    ncclient's junos device handler) from the clients' collections path and runs netconf_get /
    netconf_rpc through it against a simulated device whose hello carries the Junos capability
    (http://xml.juniper.net/netconf/junos/1.0) and which answers <get-software-information>."""
    junos = _junos_collection(tmp_path / "collections")
    collections = ":".join([str(junos), str(ROOT / ".collections"), str(ROOT / ".deps")])
    lst = listener_factory()
    fleet.enroll(lst.home / "trust.json", [SIM])
    lst.start()
    wrapper = tmp_path / "junos_sim.py"
    wrapper.write_text(JUNOS_SIM % str(ROOT / "tests" / "peers"))
    caps = ["urn:ietf:params:netconf:capability:candidate:1.0",
            "urn:ietf:params:netconf:capability:confirmed-commit:1.1", JUNOS_CAP]
    args = [sys.executable, str(wrapper), "--listener", "127.0.0.1:%d" % lst.ssh_port, "--count", "1",
            "--keys-dir", str(fleet.keys_dir), "--user", "netconf", "--password", fleet.password, "--retry", "0.2",
            "--single-session", *[arg for cap in caps for arg in ("--capability", cap)]]
    sim_log = open(tmp_path / "junos-sim.log", "wb")
    sim = subprocess.Popen(args, stdout=sim_log, stderr=subprocess.STDOUT, env=child_env())
    try:
        lst.call("wait", device=SIM, wait=30, timeout=35)
        res, _s = _playbook(tmp_path, lst, {SIM: {}}, _get_expecting(SIM), name="junos", collections=collections,
                            ansible_network_os="junipernetworks.junos.junos")
        _ok(res, lst, [SIM], 3)
        log = lst.log()
        loaded = re.findall(r"event=endpoint\.plugin_loaded network_os=(\S+) plugin=(\S+)", log)
        assert any(os_ == "junipernetworks.junos.junos" and "junos" in plugin for os_, plugin in loaded), \
            (loaded, log[-3000:])
        assert re.search(r"handed off in [\d.]+ ms: .*network_os junipernetworks\.junos\.junos, junos\)", res.stdout), \
            res.stdout[-3000:]
    finally:
        sim.terminate()
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
        sim_log.close()

# SPDX-License-Identifier: GPL-3.0-or-later
"""``netconf.callhome.config`` end to end against the libnetconf2 device, with a real listener.

Why: ``test_config_module.py`` proves the module's sequence against the simulator, whose call home
is played by a "follower" in the test. Here nothing is played: ``lnc2-device`` (libnetconf2 2.0 on
Debian 12, 3.x on Debian 13 where libnetconf2 applies the configuration through its own
implementation of the model; ``tests/peers/libnetconf2/device.c``) takes the pushed
``ietf-netconf-server`` configuration through its direct NETCONF/SSH endpoint (``ansible.netcommon.netconf`` in real ``ansible-playbook`` runs),
runs its own checks on it, commits it (candidate, confirmed commit with persist-id) and then
*itself* dials what the configuration names. The listener is the collection's own
(``callhome-listener serve``) and logs in with a key that only the pushed configuration authorizes
on the device; the device's host key gets into the listener's trust store through
``netconf.callhome.enroll`` (``ssh_scan`` of the direct endpoint, checked against the expected
fingerprint). So a ``connected`` record at the listener proves the whole chain: XML accepted by a
NETCONF server nobody here wrote, applied, dialed, host key enrolled, client key authorized.

Covered: safe rollout that confirms only after the call home, idempotence, check mode with diff;
rollback when the device cannot reach a listener (dead port) or the listener refuses it (wrong key
enrolled); ``state: absent`` of one of two entries and of the last one (the whole ``call-home``
presence container goes, as the model requires); the NETCONF-namespaced subtree filters
(yang-library and running) that libnetconf2 requires.

Skips (with the reason printed) only if the C device cannot be built.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from harness import ROOT, ListenerProcess, child_env  # tests/integration (conftest puts it on sys.path)
from lnc2_peer import Lnc2Device, free_port  # tests/peers
from pki import SshKey, TestPki, make_pki, make_ssh_key  # tests/peers

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config import ietf
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.revision import (
    revision_from_yang_library,
    yang_library_filter,
)

pytestmark = pytest.mark.timeout(400)

NCS_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-server"
DEVICE = "lnc2-cfg"  # the device's name at the listener (its trust-store entry)
CLIENT = "nms"  # the netconf-client entry the module manages


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("pki"), device_name=DEVICE)


@pytest.fixture(scope="module")
def listener_key(tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    """The listener's login key for call home: the device accepts it only because the pushed
    configuration lists it (the device's command line authorizes ``pki.listener_ssh_key``)."""
    return make_ssh_key(tmp_path_factory.mktemp("listener-key"), "callhome_listener", "ed25519")


@pytest.fixture
def device(device_binary: Path, pki: TestPki, tmp_path: Path) -> Iterator[Lnc2Device]:
    """A device with a direct endpoint and no call-home configuration at all."""
    dev = Lnc2Device.from_pki(pki, direct_port=free_port(), log_file=tmp_path / "device.log")
    with dev:
        yield dev
    assert dev.returncode == 0, dev.log


@pytest.fixture
def listener(listener_factory: Any, listener_key: SshKey) -> ListenerProcess:
    """The collection's listener, logging in to devices with ``listener_key`` (then the
    factory's password, which the device does not accept)."""
    return listener_factory("--private-key", str(listener_key.private_path)).start()


# --------------------------------------------------------------------------- helpers


def hostkey_reference(pki: TestPki) -> str:
    """Keystore name of the device's ed25519 host key (``hostkeyN`` in ``--hostkey`` order)."""
    return "hostkey%d" % list(pki.host_keys).index("ed25519")


def play(tmp: Path, device: Lnc2Device, pki: TestPki, tasks: list[tuple[str, str, dict[str, Any]]],
         *flags: str) -> dict[str, Any]:
    """One ``ansible-playbook`` run; ``tasks`` are ``(register, module, args)``. Modules other
    than ``netconf.callhome.config`` run on the controller (``delegate_to: localhost``, never in
    check mode). Returns the registered results by name, plus ``_stdout``."""
    out = tmp / ("results-%d.json" % time.monotonic_ns())
    inventory = {"all": {"hosts": {"dev": {
        "ansible_host": "127.0.0.1", "ansible_port": device.direct_port, "ansible_user": "netconf",
        "ansible_ssh_private_key_file": str(pki.listener_ssh_key.private_path),
        "ansible_connection": "ansible.netcommon.netconf", "ansible_network_os": "ansible.netcommon.default",
        "ansible_python_interpreter": sys.executable,
    }}}}
    play_tasks: list[dict[str, Any]] = []
    for register, module, args in tasks:
        task: dict[str, Any] = {"name": register, module: args, "register": register, "ignore_errors": True}
        if module != "netconf.callhome.config":
            task.update({"delegate_to": "localhost", "check_mode": False, "vars": {"ansible_connection": "local"}})
        play_tasks.append(task)
    content = "{{ {%s} | to_json }}" % ", ".join("'%s': %s" % (r, r) for r, _m, _a in tasks)
    play_tasks.append({"ansible.builtin.copy": {"content": content, "dest": str(out)}, "delegate_to": "localhost",
                       "check_mode": False, "vars": {"ansible_connection": "local"}})
    (tmp / "inv.json").write_text(json.dumps(inventory))
    (tmp / "play.json").write_text(json.dumps([{"hosts": "dev", "gather_facts": False, "tasks": play_tasks}]))
    env = child_env(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_HOST_KEY_CHECKING="False",
                    ANSIBLE_PERSISTENT_COMMAND_TIMEOUT="120", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(tmp / "inv.json"),
         str(tmp / "play.json"), *flags],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert out.exists(), "playbook produced no result (rc=%d):\n%s\n%s" % (
        proc.returncode, proc.stdout[-4000:], proc.stderr[-3000:])
    results = dict(json.loads(out.read_text()))
    results["_stdout"] = proc.stdout
    return results


def enroll_args(device: Lnc2Device, pki: TestPki, listener: ListenerProcess) -> dict[str, Any]:
    """Enroll the host key the direct endpoint presents, only if it is the expected one."""
    return {"device": DEVICE, "source": "ssh_scan", "host": "127.0.0.1", "port": device.direct_port,
            "key_type": "ssh-ed25519", "expected_fingerprint": pki.host_keys["ed25519"].fingerprint,
            "listener": "unix:%s" % listener.status["control_socket"]}


def config_args(pki: TestPki, listener_key: SshKey, port: int, *, name: str = CLIENT,
                **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "name": name,
        "endpoints": [{"name": "ep1", "address": "127.0.0.1", "port": port}],
        "ssh": {"host_key_reference": hostkey_reference(pki), "username": "netconf",
                "client_public_keys": [listener_key.public_line]},
        "max_attempts": 3,
    }
    args.update(extra)
    return args


def confirm_args(listener: ListenerProcess, callhome_timeout: int, confirm_timeout: int) -> dict[str, Any]:
    return {"confirm_callhome": True, "callhome_device": DEVICE, "callhome_timeout": callhome_timeout,
            "confirm_timeout": confirm_timeout, "listener": "unix:%s" % listener.status["control_socket"]}


def clients(device: Lnc2Device) -> dict[str, etree._Element]:
    """The netconf-client entries of the device's running datastore, by name."""
    root = etree.fromstring(device.running_config().encode())
    return {e.findtext("{%s}name" % NCS_NS): e for e in root.iter("{%s}netconf-client" % NCS_NS)}


def line_index(device: Lnc2Device, pattern: str, since: int = 0) -> int:
    """Index of the first device log line (from ``since``) matching ``pattern``; -1 if none."""
    rx = re.compile(pattern)
    return next((i for i, line in enumerate(device.lines) if i >= since and rx.search(line)), -1)


def failure(result: dict[str, Any], device: Lnc2Device, listener: ListenerProcess | None = None) -> str:
    """Everything needed to understand a failed assertion."""
    return "%s\n--- device log:\n%s\n--- listener log:\n%s" % (
        json.dumps({k: v for k, v in result.items() if k != "_stdout"}, indent=1, default=str)[-5000:],
        device.log[-4000:], listener.log()[-3000:] if listener else "")


# --------------------------------------------------------------------------- tests


def test_safe_rollout_idempotence_check_and_diff(tmp_path: Path, device: Lnc2Device, pki: TestPki,
                                                 listener: ListenerProcess, listener_key: SshKey) -> None:
    """Check mode + diff change nothing; the confirmed rollout returns only after the device called
    the listener (registry ``connected``), then confirms; a second run changes nothing; a check
    run with another setting shows before and after without touching the device."""
    wanted = dict(config_args(pki, listener_key, listener.ssh_port), **confirm_args(listener, 30, 60))

    # 1. enroll the host key for real, then the config task in check mode with diff
    mark = device.mark()
    checked = play(tmp_path, device, pki, [("enroll", "netconf.callhome.enroll", enroll_args(device, pki, listener)),
                                           ("config", "netconf.callhome.config", wanted)], "--check", "--diff")
    enrolled, res = checked["enroll"], checked["config"]
    assert not enrolled.get("failed") and enrolled["changed"] is True, failure(enrolled, device, listener)
    assert enrolled["fingerprint"] == pki.host_keys["ed25519"].fingerprint
    assert not res.get("failed") and res["changed"] is True, failure(res, device, listener)
    assert res["revision"] == "2023-12-28" and res["revision_source"] == "hello capabilities"
    assert res["datastore"] == "candidate" and res["callhome"]["skipped"] == "check mode"
    assert res["diff"]["before"] == "" and f"<remote-port>{listener.ssh_port}</remote-port>" in res["diff"]["after"]
    assert "central-keystore-reference>%s<" % hostkey_reference(pki) in res["diff"]["after"]
    assert clients(device) == {}, "check mode must not change the device"
    assert device.count(r"running changed|edit-config|commit", since=mark) == 0, device.log
    assert listener.call("device", device=DEVICE)["status"] == "never-seen"

    # 2. the real run: confirmed commit, call home, confirm
    mark = device.mark()
    applied = play(tmp_path, device, pki, [("enroll", "netconf.callhome.enroll", enroll_args(device, pki, listener)),
                                           ("config", "netconf.callhome.config", wanted)], "--diff")
    assert applied["enroll"]["changed"] is False, failure(applied["enroll"], device, listener)
    res = applied["config"]
    assert not res.get("failed") and res["changed"] is True, failure(res, device, listener)
    ch = res["callhome"]
    assert ch["mode"] == "confirmed-commit" and ch["confirmed"] is True and ch["status"] == "connected", ch
    assert ch["fingerprint"] == pki.host_keys["ed25519"].fingerprint, ch
    assert f"+          <remote-port>{listener.ssh_port}</remote-port>" in applied["_stdout"]  # Ansible's diff
    record = listener.call("device", device=DEVICE)
    assert record["status"] == "connected" and record["fingerprint"] == pki.host_keys["ed25519"].fingerprint, record
    # the order on the device: confirmed commit pending, the pushed client's session, then the confirm
    pending = line_index(device, r"confirmed commit pending timeout=60s persist=yes", mark)
    session = line_index(device, rf"ch-ssh session \d+ established client={CLIENT}\b", mark)
    confirmed = line_index(device, r"confirmed commit confirmed", mark)
    assert -1 < pending < session < confirmed, device.log
    assert device.count(r"confirmed commit rolled back", since=mark) == 0, device.log
    entry = clients(device)[CLIENT]
    assert entry.findtext(".//{%s}remote-port" % NCS_NS) == str(listener.ssh_port)

    # 3. the same again: nothing to do, nothing sent
    mark = device.mark()
    again = play(tmp_path, device, pki, [("config", "netconf.callhome.config", wanted)])["config"]
    assert not again.get("failed") and again["changed"] is False, failure(again, device, listener)
    assert again["callhome"]["skipped"] == "no change"
    assert device.count(r"running changed|rpc (edit-config|commit|lock)", since=mark) == 0, device.log

    # 4. check mode + diff of a changed setting: before and after shown, device untouched
    mark = device.mark()
    other = dict(wanted, max_attempts=5)
    previewed = play(tmp_path, device, pki, [("config", "netconf.callhome.config", other)], "--check", "--diff")
    preview = previewed["config"]
    assert not preview.get("failed") and preview["changed"] is True, failure(preview, device, listener)
    assert "<max-attempts>3</max-attempts>" in preview["diff"]["before"]
    assert "<max-attempts>5</max-attempts>" in preview["diff"]["after"]
    # Ansible renders the diff: the old value removed, the new one added
    assert re.search(r"^-\s*<max-attempts>3</max-attempts>$", previewed["_stdout"], re.M), previewed["_stdout"]
    assert re.search(r"^\+\s*<max-attempts>5</max-attempts>$", previewed["_stdout"], re.M), previewed["_stdout"]
    assert clients(device)[CLIENT].findtext(".//{%s}max-attempts" % NCS_NS) == "3"
    assert device.count(r"running changed|rpc (edit-config|commit|lock)", since=mark) == 0, device.log
    assert listener.call("device", device=DEVICE)["status"] == "connected"


@pytest.mark.parametrize("why", ["dead-port", "listener-refuses"])
def test_device_that_cannot_call_home_is_rolled_back(tmp_path: Path, device: Lnc2Device, pki: TestPki,
                                                     listener: ListenerProcess, listener_key: SshKey,
                                                     why: str) -> None:
    """The confirmed commit is cancelled when the device does not get a session with the listener:
    nobody listens on the configured port, or the listener refuses the device's host key (another
    key is enrolled for it). The task fails saying so, and the device's running configuration has
    no call-home client afterwards (and it stops dialing)."""
    if why == "dead-port":
        port = free_port()
        prepare: list[tuple[str, str, dict[str, Any]]] = [
            ("enroll", "netconf.callhome.enroll", enroll_args(device, pki, listener))]
    else:
        port = listener.ssh_port
        wrong = make_ssh_key(tmp_path / "wrong", "not_the_device", "ed25519")
        prepare = [("enroll", "netconf.callhome.enroll", {
            "device": DEVICE, "source": "public_key", "value": wrong.public_line,
            "listener": "unix:%s" % listener.status["control_socket"]})]
    mark = device.mark()
    started = time.monotonic()
    results = play(tmp_path, device, pki, prepare + [
        ("config", "netconf.callhome.config",
         dict(config_args(pki, listener_key, port), **confirm_args(listener, 6, 30)))])
    assert not results["enroll"].get("failed"), failure(results["enroll"], device, listener)
    res = results["config"]
    assert res.get("failed") is True, failure(res, device, listener)
    assert f"device '{DEVICE}' did not call home" in res["msg"], res["msg"]
    assert "cancelled" in res["msg"] and "previous configuration" in res["msg"], res["msg"]
    assert res["callhome"]["rollback"] == "cancelled" and res["changed"] is False, res
    assert time.monotonic() - started < 30, "the rollback must not wait for the device's confirm timeout"
    # the device really had the configuration, and dialed it, before the rollback
    if why == "dead-port":
        assert line_index(device, rf"ch(-ssh)? connect attempt to 127\.0\.0\.1:{port}\b", mark) >= 0, device.log
    else:
        assert line_index(device, rf"ch(-ssh)? tcp connected to 127\.0\.0\.1:{port}\b", mark) >= 0, device.log
        pending = [p["fingerprint"] for p in listener.call("pending")]
        assert pki.host_keys["ed25519"].fingerprint in pending, pending
        assert listener.call("device", device=DEVICE)["status"] != "connected"
    assert line_index(device, r"confirmed commit rolled back \(cancel-commit\)", mark) >= 0, device.log
    assert clients(device) == {}, "the device must be back on its previous (empty) call-home configuration"
    device.wait_for(rf"callhome client {CLIENT} removed", since=mark)
    # no more dialing once the client is gone (it retries about once a second while it exists);
    # these sleeps assert an absence over time (first let an in-flight retry pass, then watch)
    time.sleep(2.5)
    quiet = device.mark()
    time.sleep(2.5)
    assert device.count(r"ch(-ssh)? (connect attempt|tcp connected)", since=quiet) == 0, device.log


def test_absent_removes_an_entry_and_the_last_one_with_call_home(
    tmp_path: Path, device: Lnc2Device, pki: TestPki, listener: ListenerProcess, listener_key: SshKey
) -> None:
    """``state: absent`` of one of two entries removes that entry (the device drops its client and
    the listener sees the session go); of the last entry, the whole ``call-home`` container (the
    device refuses an empty one: presence container, ``min-elements 1``); then nothing is left and
    a second run reports no change."""
    dead = free_port()
    setup = play(tmp_path, device, pki, [
        ("enroll", "netconf.callhome.enroll", enroll_args(device, pki, listener)),
        ("nms", "netconf.callhome.config", config_args(pki, listener_key, listener.ssh_port)),
        ("backup", "netconf.callhome.config", config_args(pki, listener_key, dead, name="backup")),
    ])
    for key in ("enroll", "nms", "backup"):
        assert not setup[key].get("failed") and setup[key]["changed"] is True, failure(setup[key], device, listener)
    listener.wait_device(DEVICE, "connected")
    assert sorted(clients(device)) == ["backup", CLIENT]

    mark = device.mark()
    removed = play(tmp_path, device, pki, [("config", "netconf.callhome.config",
                                            {"name": CLIENT, "state": "absent"})], "--diff")["config"]
    assert not removed.get("failed") and removed["changed"] is True, failure(removed, device, listener)
    assert removed["after"] == "" and f"<name>{CLIENT}</name>" in removed["before"]
    assert sorted(clients(device)) == ["backup"]
    device.wait_for(rf"callhome client {CLIENT} removed", since=mark)
    listener.wait_device(DEVICE, "disconnected")

    mark = device.mark()
    last = play(tmp_path, device, pki, [("config", "netconf.callhome.config",
                                         {"name": "backup", "state": "absent"})])["config"]
    assert not last.get("failed") and last["changed"] is True, failure(last, device, listener)
    assert clients(device) == {}
    assert "call-home" not in device.running_config()
    device.wait_for(r"callhome client backup removed", since=mark)
    assert device.count(r"edit refused", since=mark) == 0, device.log

    again = play(tmp_path, device, pki, [("config", "netconf.callhome.config",
                                          {"name": "backup", "state": "absent"})])["config"]
    assert not again.get("failed") and again["changed"] is False, failure(again, device, listener)


def test_subtree_filters_are_accepted_by_libnetconf2(device: Lnc2Device) -> None:
    """The yang-library filter (revision detection when the hello does not name the module) and
    the running-config filter the module sends are accepted by libnetconf2, which refuses an
    unqualified ``<filter>`` ("Missing XML namespace"). Through ncclient's string-filter path,
    the one ``ansible.netcommon.netconf`` uses for the module's filters.

    The device does not load ietf-netconf-server (it advertises it in the hello only, see
    device.c), so its yang-library cannot name that module: the positive check asks the same
    filter for ietf-netconf, which the device's yang-library lists."""
    with device.connect_direct() as mgr:
        reply = mgr.get(filter=yang_library_filter("ietf-netconf")).data_xml
        assert revision_from_yang_library(reply, module="ietf-netconf") == "2011-06-01", reply[:2000]
        reply = mgr.get(filter=yang_library_filter()).data_xml
        assert revision_from_yang_library(reply) is None, "the device does not implement the module itself"
        running = mgr.get_config("running", filter=etree.tostring(ietf.running_filter(CLIENT)).decode()).data_xml
        assert ietf.find_client(running, CLIENT) is None
        names = mgr.get_config("running", filter=etree.tostring(ietf.client_names_filter()).decode()).data_xml
        assert ietf.client_names(names) == []
    assert "Missing XML namespace" not in device.log, device.log


def test_refused_change_is_a_clear_failure(tmp_path: Path, device: Lnc2Device, pki: TestPki,
                                           listener_key: SshKey) -> None:
    """A host-key reference to a key the device's keystore lacks is refused by the device's own
    check at edit-config: the task fails naming the RPC and the device's words (not a bytes repr),
    the candidate is discarded and running stays empty."""
    args = config_args(pki, listener_key, free_port())
    args["ssh"] = dict(args["ssh"], host_key_reference="no-such-key")
    res = play(tmp_path, device, pki, [("config", "netconf.callhome.config", args)])["config"]
    assert res.get("failed") is True, failure(res, device)
    assert res["msg"].startswith("the device refused the change: edit-config failed"), res["msg"]
    assert "'no-such-key', which does not exist" in res["msg"] and "b'" not in res["msg"], res["msg"]
    assert res["rpc_error"]["message"] in res["msg"], res
    assert clients(device) == {}
    assert "no-such-key" not in device.running_config("candidate"), "the refused edit must be discarded"

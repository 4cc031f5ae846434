# SPDX-License-Identifier: GPL-3.0-or-later
"""Unchanged ``ansible.netcommon.restconf_get`` / ``restconf_config`` over RESTCONF call home
(issue 11, item 2): real ``ansible-playbook`` runs through ``netconf.callhome.httpapi`` with
``ansible_network_os: ansible.netcommon.restconf`` against Debian's nginx calling home over a
reversed TCP connection (``tests/peers/nginx_peer.py``), one device on HTTP/2 and one on HTTP/1.1
with HTTP basic authentication from the trust store.

What is proved: the modules run unmodified (no ``ansible-connection`` starts; a stub in its place
records any start); restconf_get reads JSON; restconf_config creates, updates and deletes on the
writable path, a second run is ``changed: false``, check mode writes nothing (nginx's files and
access log say so); several hosts and forks on one device share its one call-home connection
(nginx's ``$connection`` serial in its access log); a missing resource fails restconf_get with the
device's own error text; a device that never called home makes the host unreachable with the
listener's explanation.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ListenerProcess, enroll, wait_until  # noqa: E402
from test_playbook_callhome import VENV_BIN, _env, _recap  # noqa: E402

from netconf_callhome.policy.trust_store import TrustStore, set_credentials  # noqa: E402

pytestmark = pytest.mark.timeout(300)

H2 = "rc-h2"
H11 = "rc-h11"
PASSWORD = "rc-basic-Pa55-never-logged"
DATA = "/restconf/data/example-widgets:widgets"  # nginx stores it under its document root


TOKEN = "t0ken-for-the-remote-restconf-listener-0123"


class Devices:
    """The listener process with --restconf and two nginx devices called home and ready; its
    remote control endpoint (``remote``, TLS + ``TOKEN``, CA file ``remote_ca``) for the relay."""

    def __init__(self, lst: ListenerProcess, peers: Dict[str, Any], home: Path, remote: str, remote_ca: str) -> None:
        self.lst = lst
        self.peers = peers
        self.home = home
        self.remote = remote
        self.remote_ca = remote_ca


@pytest.fixture(scope="module")
def devices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devices]:
    from nginx_peer import NginxPeer, PeerUnavailable
    from pki import make_device_cert, make_pki

    base = tmp_path_factory.mktemp("restconf-handoff")
    base.chmod(0o700)
    pki = make_pki(base / "pki", device_name=H2)
    h11_cert = make_device_cert(base / "pki", pki.device_ca, H11, "SN-0002")
    secret = base / "rc-secret"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    home = base / "home"
    # the remote control endpoint (AWX, containers): TLS with its own CA, and a token
    import trustme

    from harness import free_port

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(base / "ctl.pem"))
    server.private_key_pem.write_to_path(str(base / "ctl.key"))
    ca.cert_pem.write_to_path(str(base / "ctl-ca.pem"))
    (base / "token").write_text(TOKEN + "\n")
    control_port = free_port()
    (base / "listener.yml").write_text(json.dumps({"control_tcp": {
        "bind": "127.0.0.1:%d" % control_port, "cert": str(base / "ctl.pem"), "key": str(base / "ctl.key"),
        "token_file": str(base / "token")}}))
    lst = ListenerProcess(home, [
        "--config", str(base / "listener.yml"), "--ssh", "127.0.0.1:0", "--tls", "127.0.0.1:0", "--restconf", "127.0.0.1:0",
        "--tls-client-cert", str(pki.listener_cert.cert_path), "--tls-client-key", str(pki.listener_cert.key_path),
        "--handshake-timeout", "10", "--log-level", "INFO",
    ])
    home.mkdir(parents=True)
    enroll(home, H2, tls_fp=pki.device_cert.fingerprint)
    enroll(home, H11, tls_fp=h11_cert.fingerprint)
    TrustStore(str(home / "trust.json")).update(
        lambda data: set_credentials(data, H11, {"username": "admin", "password_file": str(secret)})
    )
    lst.start()
    port = int(lst.call("status")["restconf"][0].rsplit(":", 1)[1])
    peers: Dict[str, Any] = {}
    try:
        for name, cert, kwargs in ((H2, pki.device_cert, {}),
                                   (H11, h11_cert, {"http2": False, "basic_auth": ("admin", PASSWORD)})):
            try:
                peer = NginxPeer(("127.0.0.1", port), server_cert=cert.cert_path, server_key=cert.key_path,
                                 client_ca=pki.listener_ca.cert_path, redial=True, retry=0.3, **kwargs)
                peer.__enter__()
            except PeerUnavailable as exc:
                pytest.skip("nginx peer unavailable: %s" % exc)
            peers[name] = peer
            peer.start_dialing()
            rec = lst.wait_device(name, "connected", timeout=30)
            assert rec["transport"] == "restconf", rec
        yield Devices(lst, peers, home, "tls://127.0.0.1:%d" % control_port, str(base / "ctl-ca.pem"))
    finally:
        for peer in peers.values():
            peer.__exit__()
        lst.stop()
    assert PASSWORD not in lst.log()


def _stub(home: Path) -> Path:
    """An ``ansible-connection`` stand-in that records being run and fails."""
    stub = home / "ansible-connection-stub.py"
    stub.write_text("import pathlib, sys\npathlib.Path(%r).write_text(' '.join(sys.argv))\nsys.exit(1)\n"
                    % str(home / "ansible-connection-ran"))
    return stub


def _inventory(devs: Devices, name: str, hosts: Dict[str, Dict[str, Any]], **extra: Any) -> Path:
    inv = {"all": {"vars": dict({
        "ansible_connection": "netconf.callhome.httpapi",
        "ansible_network_os": "ansible.netcommon.restconf",
        "ansible_callhome_listener": "unix:%s" % (devs.home / "control.sock"),
        "ansible_callhome_embedded": False,
        "ansible_callhome_timeout": 20,
        "ansible_python_interpreter": sys.executable,
    }, **extra), "hosts": hosts}}
    path = devs.home / ("%s.json" % name)
    path.write_text(json.dumps(inv))
    return path


def _play(devs: Devices, name: str, text: str, inventory: Path, *args: str) -> subprocess.CompletedProcess:
    playbook = devs.home / ("%s.yml" % name)
    playbook.write_text(text)
    env = _env(devs.home, _ANSIBLE_CONNECTION_PATH=str(_stub(devs.home)))
    res = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *args],
                         env=env, capture_output=True, text=True, timeout=240, cwd=str(devs.home), check=False)
    assert not (devs.home / "ansible-connection-ran").exists(), "ansible-connection was started"
    return res


def _ok(res: subprocess.CompletedProcess, hosts: List[str]) -> Dict[str, Dict[str, int]]:
    recap = _recap(res.stdout)
    detail = res.stdout[-6000:] + res.stderr[-3000:]
    for host in hosts:
        assert host in recap, detail
        assert recap[host]["failed"] == 0 and recap[host]["unreachable"] == 0, detail
    return recap


GET = """---
- hosts: all
  gather_facts: false
  tasks:
    - name: Read the interfaces as JSON
      ansible.netcommon.restconf_get:
        path: /data/ietf-interfaces:interfaces
      register: interfaces
    - ansible.builtin.assert:
        that:
          - interfaces is not changed
          - interfaces.response['ietf-interfaces:interfaces'].interface | map(attribute='name') | list == ['eth0', 'lo']
    - name: Read the YANG library (the modules the listener learned too)
      ansible.netcommon.restconf_get:
        path: /data/ietf-yang-library:yang-library
      register: library
    - ansible.builtin.assert:
        that: "'ietf-interfaces' in (library.response['ietf-yang-library:yang-library']['module-set'][0].module | map(attribute='name'))"
"""


def test_restconf_get_reads_json_over_both_http_versions(devices: Devices) -> None:
    inv = _inventory(devices, "get", {H2: {}, H11: {}})
    res = _play(devices, "get", GET, inv, "-vvv")
    _ok(res, [H2, H11])
    # the hand-off: the listener's endpoint, over the held connection of each HTTP version
    assert "RESTCONF endpoint" in res.stdout and "HTTP/2 from" in res.stdout and "HTTP/1.1 from" in res.stdout
    for name in (H2, H11):
        log = devices.peers[name].access_log()
        assert re.search(r'"GET /restconf/data/ietf-interfaces:interfaces HTTP/%s" 200 ' % ("2.0" if name == H2 else "1.1"),
                         log), log
    assert "event=endpoint.start api=restconf device=%s network_os=ansible.netcommon.restconf root=/restconf" % H2 \
        in devices.lst.log()
    # basic credentials went to the HTTP/1.1 device, never into the listener's log
    assert re.search(r' - admin \[[^]]*\] "GET /restconf/data/ietf-interfaces:interfaces', devices.peers[H11].access_log())
    assert PASSWORD not in devices.lst.log() and PASSWORD not in res.stdout


CONFIG = """---
- hosts: all
  gather_facts: false
  vars:
    widgets: {"example-widgets:widgets": {"widget": [{"name": "w1", "size": 3}]}}
    bigger: {"example-widgets:widgets": {"widget": [{"name": "w1", "size": 5}]}}
  tasks:
    - name: Create in check mode (nothing written)
      ansible.netcommon.restconf_config:
        method: put
        path: /data/example-widgets:widgets
        content: "{{ widgets | to_json }}"
      check_mode: true
      register: r
    - ansible.builtin.assert: {that: [r is changed]}
    - name: Still absent after check mode
      ansible.netcommon.restconf_get:
        path: /data/example-widgets:widgets
      register: absent
      failed_when: absent.code | default(0) != 404
    - name: Create
      ansible.netcommon.restconf_config:
        method: put
        path: /data/example-widgets:widgets
        content: "{{ widgets | to_json }}"
      register: r
    - ansible.builtin.assert: {that: [r is changed]}
    - name: Create again (idempotent)
      ansible.netcommon.restconf_config:
        method: put
        path: /data/example-widgets:widgets
        content: "{{ widgets | to_json }}"
      register: r
    - ansible.builtin.assert: {that: [r is not changed]}
    - name: Update
      ansible.netcommon.restconf_config:
        method: put
        path: /data/example-widgets:widgets
        content: "{{ bigger | to_json }}"
      register: r
    - ansible.builtin.assert: {that: [r is changed]}
    - name: Update again (idempotent)
      ansible.netcommon.restconf_config:
        method: put
        path: /data/example-widgets:widgets
        content: "{{ bigger | to_json }}"
      register: r
    - ansible.builtin.assert: {that: [r is not changed]}
    - name: Read it back
      ansible.netcommon.restconf_get:
        path: /data/example-widgets:widgets
      register: now
    - ansible.builtin.assert:
        that: now.response['example-widgets:widgets'].widget[0].size == 5
    - name: Delete in check mode (nothing removed)
      ansible.netcommon.restconf_config:
        method: delete
        path: /data/example-widgets:widgets
      check_mode: true
      register: r
    - ansible.builtin.assert: {that: [r is changed]}
    - name: Delete
      ansible.netcommon.restconf_config:
        method: delete
        path: /data/example-widgets:widgets
      register: r
    - ansible.builtin.assert: {that: [r is changed]}
    - name: Delete again (idempotent)
      ansible.netcommon.restconf_config:
        method: delete
        path: /data/example-widgets:widgets
      register: r
    - ansible.builtin.assert: {that: [r is not changed]}
"""

PATCH = """---
- hosts: all
  gather_facts: false
  tasks:
    - name: Create with POST (restconf_config's default method)
      ansible.netcommon.restconf_config:
        path: /data/example-gadgets:gadgets
        content: '{"example-gadgets:gadgets": {"colour": "red"}}'
      register: r
    - ansible.builtin.assert: {that: [r is changed]}
    - name: Merge with PATCH
      ansible.netcommon.restconf_config:
        method: patch
        path: /data/example-gadgets:gadgets
        content: '{"example-gadgets:gadgets": {"colour": "blue"}}'
      register: r
    - ansible.builtin.assert: {that: [r is changed]}
    - name: PATCH again (idempotent)
      ansible.netcommon.restconf_config:
        method: patch
        path: /data/example-gadgets:gadgets
        content: '{"example-gadgets:gadgets": {"colour": "blue"}}'
      register: r
    - ansible.builtin.assert: {that: [r is not changed]}
    - ansible.netcommon.restconf_config:
        method: delete
        path: /data/example-gadgets:gadgets
"""


@pytest.mark.parametrize("device", [H2, H11])
def test_restconf_config_create_update_delete_idempotent_and_check_mode(devices: Devices, device: str) -> None:
    peer = devices.peers[device]
    writes_before = _writes(peer.access_log())
    inv = _inventory(devices, "config-%s" % device, {device: {}})
    res = _play(devices, "config-%s" % device, CONFIG, inv)
    recap = _ok(res, [device])
    # changed: create in check mode, create, update, delete in check mode, delete
    assert recap[device]["changed"] == 5, res.stdout[-4000:]
    # nginx saw exactly the writes that were not check mode and changed something
    assert _writes(peer.access_log())[len(writes_before):] == ["PUT 201", "PUT 204", "DELETE 204"], peer.access_log()
    assert peer.stored(DATA) is None
    if peer.njs:  # POST and PATCH need nginx's JavaScript module (restconf.js)
        res = _play(devices, "patch-%s" % device, PATCH, inv)
        _ok(res, [device])
        assert _writes(peer.access_log())[-3:] == ["POST 201", "PATCH 204", "DELETE 204"], peer.access_log()


def _writes(log: str) -> List[str]:
    """The write requests nginx logged, as "METHOD status"."""
    return ["%s %s" % m for m in re.findall(r'"(PUT|POST|PATCH|DELETE) /restconf/data/\S+ HTTP/[0-9.]+" (\d+) ', log)]


MANY = """---
- hosts: all
  gather_facts: false
  tasks:
    - ansible.netcommon.restconf_get:
        path: /data/ietf-interfaces:interfaces
      register: one
    - ansible.netcommon.restconf_get:
        path: /data/ietf-yang-library:yang-library
    - ansible.netcommon.restconf_get:
        path: /data/ietf-interfaces:interfaces
      register: three
    - ansible.builtin.assert:
        that: one.response == three.response
"""


@pytest.mark.parametrize("device", [H2, H11])
def test_several_hosts_and_forks_share_the_devices_one_connection(devices: Devices, device: str) -> None:
    peer = devices.peers[device]
    before = devices.lst.call("device", device=device)
    hosts = ["%s-view%d" % (device, i) for i in range(8)]
    inv = _inventory(devices, "many-%s" % device, {h: {"callhome_device": device} for h in hosts})
    seen = len(peer.access_log().splitlines())
    res = _play(devices, "many-%s" % device, MANY, inv, "--forks", "8")
    _ok(res, hosts)
    after = devices.lst.call("device", device=device)
    # the same call-home connection all along: no new call, and nginx served every request on it
    assert after["connect_count"] == before["connect_count"] and after["peer"] == before["peer"]
    lines = [ln for ln in peer.access_log().splitlines()[seen:] if "/restconf/data/" in ln]
    assert len(lines) >= 3 * len(hosts), lines
    connections = {re.search(r" conn=(\d+) ", ln + " ").group(1) for ln in lines}  # type: ignore[union-attr]
    assert len(connections) == 1, lines


FAIL_GET = """---
- hosts: all
  gather_facts: false
  tasks:
    - ansible.netcommon.restconf_get:
        path: /data/example-absent:nothing
"""


def test_an_http_error_fails_restconf_get_with_the_devices_text(devices: Devices) -> None:
    inv = _inventory(devices, "fail", {H2: {}, H11: {}})
    res = _play(devices, "fail", FAIL_GET, inv)
    recap = _recap(res.stdout)
    assert recap[H2]["failed"] == 1 and recap[H11]["failed"] == 1, res.stdout
    # the device's RFC 8040 error-message, and the status as the module's error code
    assert res.stdout.count("uri path not found on this device") >= 2, res.stdout
    assert '"code": 404' in res.stdout, res.stdout


def test_a_device_that_never_called_home_is_unreachable_with_the_reason(devices: Devices) -> None:
    enroll(devices.home, "rc-silent", tls_fp="SHA256:" + ":".join(["AB"] * 32))
    devices.lst.call("reload")
    inv = _inventory(devices, "ghost", {"rc-ghost": {}, "rc-silent": {}}, ansible_callhome_timeout=2)
    res = _play(devices, "ghost", FAIL_GET, inv)
    recap = _recap(res.stdout)
    assert recap["rc-ghost"]["unreachable"] == 1 and recap["rc-silent"]["unreachable"] == 1, res.stdout
    assert "'rc-ghost' is not enrolled and has never called home" in res.stdout, res.stdout
    assert "'rc-silent' has not called home within 2 s" in res.stdout and "4336 RESTCONF" in res.stdout, res.stdout


def _connected(devs: Devices, name: str) -> Optional[Dict[str, Any]]:
    rec = devs.lst.call("device", device=name)
    return rec if rec.get("status") == "connected" else None


def test_a_device_that_calls_again_is_used_by_the_next_task(devices: Devices) -> None:
    """The endpoint follows the device, not one connection: after a new call the next task runs."""
    inv = _inventory(devices, "again", {H2: {}})
    res = _play(devices, "again", GET, inv)
    _ok(res, [H2])
    before = devices.lst.call("device", device=H2)["connect_count"]
    devices.peers[H2].hang_up()  # redial=True: nginx's socat calls again
    wait_until(lambda: (_connected(devices, H2) or {}).get("connect_count", 0) > before, 30,
               "the device to call home again", detail=lambda: devices.lst.log()[-3000:])
    res = _play(devices, "again", GET, inv)
    _ok(res, [H2])


def test_a_remote_listener_serves_the_modules_through_the_relay(devices: Devices) -> None:
    """``tls://`` listener (AWX): the task's local relay forwards each request (control op ``rpc``)."""
    inv = _inventory(devices, "remote", {H2: {}, H11: {}}, ansible_callhome_listener=devices.remote,
                     ansible_callhome_token=TOKEN, ansible_callhome_tls_ca_file=devices.remote_ca)
    res = _play(devices, "remote", GET, inv, "-vvv")
    _ok(res, [H2, H11])
    relays = re.findall(r"RESTCONF endpoint \S*callhome-relay-\S*/rpc\.sock ", res.stdout)
    assert len(relays) >= 4, res.stdout[-5000:]  # 2 tasks x 2 hosts, each through its task's relay
    assert TOKEN not in res.stdout and TOKEN not in devices.lst.log()

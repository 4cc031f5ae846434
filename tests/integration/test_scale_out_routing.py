# SPDX-License-Identifier: GPL-3.0-or-later
"""Scale-out, issue 12 item 4: clients use any node. Listener processes on one real PostgreSQL
(tests/peers/postgres_peer.py), a cluster CA (trustme) for the node-to-node channel, simulated
devices:

- a playbook whose hosts are spread over three nodes runs through one node's control socket
  (``netconf_get`` via ``netconf.callhome.netconf``: the endpoint and its JSON-RPC are forwarded);
- ``devices`` on any node lists every device, with the node holding it;
- a peer without a certificate from the cluster CA is refused on the channel;
- the owner killed: a clear error naming it; once the device has called another node, the next
  request through the same node succeeds (a lease, forwarded).
- forwarded requests reuse one pooled connection to the owner; a device that moves between live
  nodes is followed (the former owner answers "not held here" to the remembered route).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import trustme
from harness import cluster_certs, enroll, free_port, ncclient_over_lease, running, wait_until

from netconf_callhome.errors import CallHomeError, NodeUnreachableError

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.timeout(300)


def _nodes(listener_factory: Any, postgres: Any, tmp_path: Path, database: str, names: List[str], fleet: Any,
           enrolled: List[str], extra: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    url = postgres.create_database(database)
    certs = cluster_certs(tmp_path / "cluster", names)
    nodes: Dict[str, Any] = {}
    for i, name in enumerate(names):
        home = tmp_path / name
        config = tmp_path / ("%s.yml" % name)
        cluster = dict(certs[name], bind="127.0.0.1:0", connect_timeout=2)
        config.write_text("state_url: %s\nnode_name: %s\ncluster: %s\n%s" % (
            url, name, json.dumps(cluster), (extra or {}).get(name, "")))
        os.chmod(config, 0o600)
        if i == 0 and enrolled:
            fleet.enroll(home / "trust.json", enrolled)
        nodes[name] = listener_factory("--config", str(config), home=home).start()
    return nodes


def _cluster_address(postgres: Any, database: str, node: str) -> str:
    rows = postgres.psql("SELECT address FROM nodes WHERE name = '%s'" % node, database)
    assert rows, "node %s has no row in nodes" % node
    return rows[0][0]


def test_status_names_the_channel_recorded_in_the_database(listener_factory, fleet, postgres, tmp_path):
    database = "routing_status_%d" % os.getpid()
    nodes = _nodes(listener_factory, postgres, tmp_path, database, ["node-a", "node-b"], fleet, [])
    for name, node in nodes.items():
        address = node.call("status")["cluster"]
        assert address.startswith("127.0.0.1:") and address == _cluster_address(postgres, database, name)
        assert "event=cluster.listening bind=%s advertise=%s" % (address, address) in node.log()
    # a client waiting for a device nobody holds: batched lookups in the database, then the usual error
    started = time.monotonic()
    with pytest.raises(CallHomeError, match="ghost0001"):
        nodes["node-a"].call("wait", device="ghost0001", wait=1.0)
    assert time.monotonic() - started >= 1.0
    assert "event=cluster.lookup_failed" not in nodes["node-a"].log()


def _held_by(postgres: Any, database: str, device: str) -> List[List[str]]:
    return postgres.psql(
        "SELECT d.node FROM devices d JOIN device_owners o ON o.name = d.name AND o.node = d.node "
        "WHERE d.name = '%s' AND d.status = 'connected'" % device,
        database,
    )


def _env(home: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PATH": "%s:%s" % (VENV_BIN, env.get("PATH", "")),
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "NETCONF_CALLHOME_HOME": str(home),
            "ANSIBLE_PERSISTENT_CONTROL_PATH_DIR": str(home / "pc"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        }
    )
    env.pop("NETCONF_CALLHOME_LISTENER", None)
    env.pop("NETCONF_CALLHOME_TOKEN", None)
    return env


def test_a_playbook_over_hosts_on_three_nodes_runs_through_one(listener_factory, fleet, postgres, tmp_path):
    database = "routing_play_%d" % os.getpid()
    names = ["node-a", "node-b", "node-c"]
    devices = {"node-a": "ra0001", "node-b": "rb0001", "node-c": "rc0001"}
    nodes = _nodes(listener_factory, postgres, tmp_path, database, names, fleet, sorted(devices.values()))
    a = nodes["node-a"]
    sims = [fleet.simulator(nodes[n].ssh_port, 1, "--name-prefix", devices[n][:2], wait_connected=1) for n in names]
    try:
        for name, device in devices.items():
            wait_until(lambda d=device, n=name: _held_by(postgres, database, d) == [[n]], 15, "%s held by %s" % (device, name))
        # devices on any node: every device, with the node holding it
        for node in nodes.values():
            listed = {rec["name"]: rec for rec in node.call("devices")}
            for name, device in devices.items():
                assert listed[device]["status"] == "connected" and listed[device]["node"] == name, listed
            assert node.call("device", device="rc0001")["node"] == "node-c"
        table = nodes["node-b"].cli("devices").stdout  # the CLI on any node: a NODE column
        assert table.splitlines()[0].split()[:3] == ["NAME", "STATUS", "NODE"], table
        assert [line.split()[:3] for line in table.splitlines()[1:]] == [
            [device, "connected", name] for name, device in sorted(devices.items())], table
        # the playbook, all through node-a's control socket
        work = tmp_path / "play"
        work.mkdir()
        inventory = work / "inv.json"
        inventory.write_text(json.dumps({"all": {
            "vars": {"ansible_connection": "netconf.callhome.netconf",
                     "ansible_callhome_listener": "unix:%s" % (a.home / "control.sock"),
                     "ansible_callhome_timeout": 20},
            "hosts": {d: {} for d in devices.values()},
        }}))
        started = time.monotonic()
        res = subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOKS / "get_running.yml"),
             "--forks", "3"],
            env=_env(work), capture_output=True, text=True, timeout=240, cwd=str(work), check=False,
        )
        print("playbook over 3 nodes through node-a: %.2f s" % (time.monotonic() - started))
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:] + a.log()[-3000:]
        for device in devices.values():
            assert "%s: " % device in res.stdout and "ok=2" in res.stdout, res.stdout
        log = a.log()
        assert "event=cluster.endpoint_forwarded device=rb0001 node=node-b" in log, log[-3000:]
        assert "event=cluster.endpoint_forwarded device=rc0001 node=node-c" in log
        # node-b and node-c served the endpoints of their own devices
        assert "event=endpoint.start device=rb0001" in nodes["node-b"].log()
        assert "event=endpoint.start device=rc0001" in nodes["node-c"].log()
        assert "event=endpoint.start device=rb0001" not in log
        # the inventory plugin pointed at node-c sees every device, with the node holding it
        src = work / "fleet.callhome.yml"
        src.write_text("plugin: netconf.callhome.registry\nlistener: unix:%s\nstatuses: [connected]\n"
                       % (nodes["node-c"].home / "control.sock"))
        res = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(src), "--list"],
                             env=_env(work), capture_output=True, text=True, timeout=60, cwd=str(work), check=False)
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        assert sorted(data["callhome_connected"]["hosts"]) == sorted(devices.values()), data
        for name, device in devices.items():
            record = data["_meta"]["hostvars"][device]["callhome"]
            held_on = record["node"]
            held_on = held_on.get("__ansible_unsafe") if isinstance(held_on, dict) else held_on  # ansible-core 2.19
            assert held_on == name, record
    finally:
        for sim in sims:
            sim.stop()


def test_a_peer_without_a_cluster_certificate_is_refused(listener_factory, fleet, postgres, tmp_path):
    database = "routing_refuse_%d" % os.getpid()
    nodes = _nodes(listener_factory, postgres, tmp_path, database, ["node-a"], fleet, [])
    a = nodes["node-a"]
    host, port = _cluster_address(postgres, database, "node-a").rsplit(":", 1)
    certs = tmp_path / "cluster"
    request = json.dumps({"op": "devices"}).encode() + b"\n"

    def attempt(ctx: ssl.SSLContext) -> bytes:
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname=host) as tls:
                    tls.sendall(request)
                    return tls.recv(65536)
            except (ssl.SSLError, ConnectionError):
                return b""

    # no client certificate at all
    plain = ssl.create_default_context(cafile=str(certs / "cluster-ca.pem"))
    plain.check_hostname = False
    assert attempt(plain) == b""
    a.wait_log("event=cluster.peer_refused")
    assert "reason=certificate" in a.log()
    # a certificate from another CA
    other = trustme.CA().issue_cert("node-x", "127.0.0.1")
    other_cert, other_key = tmp_path / "x.pem", tmp_path / "x.key"
    other.cert_chain_pems[0].write_to_path(str(other_cert))
    other.private_key_pem.write_to_path(str(other_key))
    stranger = ssl.create_default_context(cafile=str(certs / "cluster-ca.pem"))
    stranger.check_hostname = False
    stranger.load_cert_chain(str(other_cert), str(other_key))
    assert attempt(stranger) == b""
    # the same request with the node's own certificate is answered
    member = ssl.create_default_context(cafile=str(certs / "cluster-ca.pem"))
    member.check_hostname = False
    member.load_cert_chain(str(certs / "node-a.pem"), str(certs / "node-a.key"))
    answer = attempt(member)
    assert answer.startswith(b'{"ok": true'), answer
    # a member asks only what forwarding needs: no trust change, no shutdown over the channel
    for op in ("shutdown", "revoke", "approve"):
        request = json.dumps({"op": op, "device": "x", "fingerprint": "SHA256:x"}).encode() + b"\n"
        answer = json.loads(attempt(member))
        assert answer["ok"] is False and answer["error"]["code"] == "not-authorized", answer
        assert "not served on the node-to-node channel" in answer["error"]["message"]
    assert a.call("status")["pid"]  # still running
    # a silent peer is dropped at auth_timeout, not held
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        started = time.monotonic()
        assert raw.recv(1) == b""
        assert time.monotonic() - started < 8.0  # auth_timeout 5 s
    a.wait_log("reason=auth_timeout")


def _read_through(node: Any, device: str, holder: str) -> None:
    """``device`` found on ``holder`` through ``node``, and its running configuration read over a
    lease that ``node`` forwards there."""
    rec = node.call("wait", device=device, wait=20)
    assert rec["node"] == holder, rec
    manager, info = ncclient_over_lease(node.control, device)
    try:
        assert info["node"] == holder
        assert "<data" in manager.get_config("running").xml
    finally:
        manager.close_session()


def test_owner_down_is_a_clear_error_and_the_next_request_after_the_move_succeeds(
    listener_factory, fleet, postgres, tmp_path
):
    database = "routing_down_%d" % os.getpid()
    nodes = _nodes(listener_factory, postgres, tmp_path, database, ["node-a", "node-b", "node-c"], fleet, ["mb0001"])
    a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
    with running(fleet.simulator(b.ssh_port, 1, "--name-prefix", "mb", wait_connected=1)):
        wait_until(lambda: _held_by(postgres, database, "mb0001") == [["node-b"]], 15, "mb0001 held by node-b")
        # through node-a: wait and a lease are forwarded to node-b
        assert a.call("wait", device="mb0001", wait=5)["node"] == "node-b"
        manager, info = ncclient_over_lease(a.control, "mb0001")
        try:
            assert info["node"] == "node-b"
            assert "<data" in manager.get_config("running").xml
        finally:
            manager.close_session()
        address = _cluster_address(postgres, database, "node-b")
        assert b.proc is not None
        b.proc.kill()  # kill -9: node-b never says its sessions ended
        b.proc.wait()
        started = time.monotonic()
        with pytest.raises(NodeUnreachableError) as info_err:
            a.call("wait", device="mb0001", wait=1)
        message = str(info_err.value)
        assert "device mb0001 is held by node-b at %s, which does not answer" % address in message, message
        assert time.monotonic() - started < 10
    # the device redials another node (its address moved: HAProxy's job in production)
    with running(fleet.simulator(c.ssh_port, 1, "--name-prefix", "mb", wait_connected=1)):
        _read_through(a, "mb0001", "node-c")
        assert "event=cluster.lease_forwarded device=mb0001 node=node-c" in a.log()


def test_forwarded_requests_reuse_one_connection_and_follow_a_device_between_live_nodes(
    listener_factory, fleet, postgres, tmp_path
):
    """node-a remembers that node-b holds the device and reuses one pooled connection to it for
    every forwarded request; the device then moves to node-c while node-b stays up: node-b
    answers "not held here" to node-a's remembered route, and node-a follows the device."""
    database = "routing_moved_%d" % os.getpid()
    nodes = _nodes(listener_factory, postgres, tmp_path, database, ["node-a", "node-b", "node-c"], fleet, ["mv0001"])
    a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
    with running(fleet.simulator(b.ssh_port, 1, "--name-prefix", "mv", wait_connected=1)):
        wait_until(lambda: _held_by(postgres, database, "mv0001") == [["node-b"]], 15, "mv0001 held by node-b")
        for _unused in range(20):
            assert a.call("wait", device="mv0001", wait=5)["node"] == "node-b"
        # twenty forwarded requests, one connection (TLS handshake and certificate checks once)
        assert a.log().count("event=cluster.dialled node=node-b") == 1, a.log()[-3000:]
    wait_until(lambda: _held_by(postgres, database, "mv0001") == [], 15, "mv0001 held by nobody")
    with running(fleet.simulator(c.ssh_port, 1, "--name-prefix", "mv", wait_connected=1)):
        _read_through(a, "mv0001", "node-c")
    assert a.log().count("event=cluster.dialled node=node-c") == 1, a.log()[-3000:]
    assert "event=cluster.peer_refused" not in b.log() + c.log()


def test_a_remote_client_through_one_nodes_control_tcp_reaches_a_device_of_another(
    listener_factory, fleet, postgres, tmp_path
):
    """AWX's way: tls:// + token to node-a (the relay in the worker sends each JSON-RPC request with
    the rpc operation, here to node-a's proxy endpoint), the device held by node-b."""
    database = "routing_tcp_%d" % os.getpid()
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = tmp_path / "control-tcp"
    files.mkdir()
    server.cert_chain_pems[0].write_to_path(str(files / "srv.pem"))
    server.private_key_pem.write_to_path(str(files / "srv.key"))
    ca.cert_pem.write_to_path(str(files / "ca.pem"))
    token = "routing-token-0123456789"
    (files / "token").write_text(token + "\n")
    port = free_port()
    control_tcp = "control_tcp: %s\n" % json.dumps({"bind": "127.0.0.1:%d" % port, "cert": str(files / "srv.pem"),
                                                    "key": str(files / "srv.key"), "token_file": str(files / "token")})
    nodes = _nodes(listener_factory, postgres, tmp_path, database, ["node-a", "node-b"], fleet, ["tb0001"],
                   extra={"node-a": control_tcp})
    with running(fleet.simulator(nodes["node-b"].ssh_port, 1, "--name-prefix", "tb", wait_connected=1)):
        wait_until(lambda: _held_by(postgres, database, "tb0001") == [["node-b"]], 15, "tb0001 held by node-b")
        work = tmp_path / "play"
        work.mkdir()
        inventory = work / "inv.json"
        inventory.write_text(json.dumps({"all": {
            "vars": {"ansible_connection": "netconf.callhome.netconf",
                     "ansible_callhome_listener": "tls://127.0.0.1:%d" % port,
                     "ansible_callhome_token": token,
                     "ansible_callhome_tls_ca_file": str(files / "ca.pem"),
                     "ansible_callhome_timeout": 20},
            "hosts": {"tb0001": {}},
        }}))
        res = subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOKS / "get_running.yml")],
            env=_env(work), capture_output=True, text=True, timeout=240, cwd=str(work), check=False,
        )
        log = nodes["node-a"].log()
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:] + log[-3000:]
        assert "tb0001: " in res.stdout
        assert "event=cluster.endpoint_forwarded device=tb0001 node=node-b" in log
        assert "event=endpoint.start device=tb0001" in nodes["node-b"].log()
        assert token not in log


RESTCONF_GET = """---
- hosts: all
  gather_facts: false
  tasks:
    - name: Read the interfaces as JSON
      ansible.netcommon.restconf_get:
        path: /data/ietf-interfaces:interfaces
      register: interfaces
    - ansible.builtin.assert:
        that:
          - interfaces.response['ietf-interfaces:interfaces'].interface | map(attribute='name') | list == ['eth0', 'lo']
"""


def test_restconf_get_through_one_node_reaches_a_device_held_by_another(listener_factory, fleet, postgres, tmp_path):
    """netconf.callhome.httpapi pointed at node-a; Debian's nginx (tests/peers/nginx_peer.py) calls
    node-b home over RESTCONF: the httpapi endpoint is forwarded like a NETCONF one."""
    from nginx_peer import NginxPeer, PeerUnavailable
    from pki import make_pki

    database = "routing_restconf_%d" % os.getpid()
    pki = make_pki(tmp_path / "pki", device_name="rcb1")
    tls = ("tls:\n  client_cert: %s\n  client_key: %s\nrestconf_binds: ['127.0.0.1:0']\ntls_binds: ['127.0.0.1:0']\n"
           % (pki.listener_cert.cert_path, pki.listener_cert.key_path))
    (tmp_path / "node-a").mkdir()
    enroll(tmp_path / "node-a", "rcb1", tls_fp=pki.device_cert.fingerprint)  # seeds the shared trust store
    nodes = _nodes(listener_factory, postgres, tmp_path, database, ["node-a", "node-b"], fleet, [],
                   extra={"node-b": tls})
    b = nodes["node-b"]
    port = int(b.call("status")["restconf"][0].rsplit(":", 1)[1])
    try:
        peer = NginxPeer(("127.0.0.1", port), server_cert=pki.device_cert.cert_path, server_key=pki.device_cert.key_path,
                         client_ca=pki.listener_ca.cert_path, redial=True, retry=0.3)
        peer.__enter__()
    except PeerUnavailable as exc:
        pytest.skip("nginx peer unavailable: %s" % exc)
    try:
        peer.start_dialing()
        wait_until(lambda: _held_by(postgres, database, "rcb1") == [["node-b"]], 30, "rcb1 held by node-b",
                   detail=lambda: b.log()[-3000:])
        work = tmp_path / "play"
        work.mkdir()
        inventory = work / "inv.json"
        inventory.write_text(json.dumps({"all": {"vars": {
            "ansible_connection": "netconf.callhome.httpapi",
            "ansible_network_os": "ansible.netcommon.restconf",
            "ansible_callhome_listener": "unix:%s" % (nodes["node-a"].home / "control.sock"),
            "ansible_callhome_embedded": False,
            "ansible_callhome_timeout": 20,
            "ansible_python_interpreter": sys.executable,
        }, "hosts": {"rcb1": {}}}}))
        playbook = work / "get.yml"
        playbook.write_text(RESTCONF_GET)
        res = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(playbook)],
                             env=_env(work), capture_output=True, text=True, timeout=240, cwd=str(work), check=False)
        log = nodes["node-a"].log()
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:] + log[-3000:]
        assert "event=cluster.endpoint_forwarded device=rcb1 node=node-b" in log
        assert "event=endpoint.start api=restconf device=rcb1" in b.log()
        assert '"GET /restconf/data/ietf-interfaces:interfaces HTTP/2.0" 200 ' in peer.access_log()
    finally:
        peer.__exit__()

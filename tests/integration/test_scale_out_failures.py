# SPDX-License-Identifier: GPL-3.0-or-later
"""Scale-out failures, issue 12 item 6: three listener nodes on one PostgreSQL
(tests/peers/postgres_peer.py) behind Debian's HAProxy (tests/peers/haproxy_peer.py,
``send-proxy-v2``), simulated devices calling the one address.

- kill -9 of a node: its devices are connected on the other nodes within their redial time plus
  one keepalive; an ``ansible-playbook`` task in flight on it (a ``netconf_get`` whose device
  does not answer yet) fails with a clear error and the next task, through the node now holding
  the device, succeeds; no enrollment is lost (the trust rows are unchanged); restarted, the node
  clears its stale ``connected`` rows and takes devices again.
- the libnetconf2 device through HAProxy: kill -9 of its node, it is connected on another within
  one redial plus one keepalive, and a NETCONF read through a surviving node succeeds.
- PostgreSQL restarted mid-run: every node keeps its sessions, the registry writes of the outage
  are queued and land when it is back (ownership claims included), an enrollment is refused with
  a clear error while it is down and accepted after.

What test_haproxy_proxy.py (kill -9 of one of two SQLite nodes), test_scale_out_ownership.py
(enrollment refused with one node) and test_state_postgres.py (one node's writes across an
outage) already prove is not repeated here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from harness import ROOT, cluster_certs, enroll, ncclient_over_lease, running, wait_until

from netconf_callhome.errors import CallHomeError

pytestmark = pytest.mark.timeout(300)

BALANCER = "127.0.0.2"  # HAProxy connects to the nodes from here (haproxy_peer.py)
REDIAL = 1.0  # the simulated devices' redial time after a drop (simulator --retry)
# One keepalive: the time SSH keepalives take to declare a peer dead, interval 1 s x count-max 2
# (harness listener_factory). A device that loses its node unannounced (a host that is gone, not a
# process: kill -9 closes the sockets, so the devices here notice at once) needs that long at most.
KEEPALIVE = 2.0
NODES = ("node-a", "node-b", "node-c")
VENV_BIN = Path(sys.executable).parent

PLAYBOOK = """\
- name: One NETCONF read through the call-home connection
  hosts: all
  gather_facts: false
  tasks:
    - name: Read the running datastore
      ansible.netcommon.netconf_get:
        source: running
      register: running
    - name: The reply names the device
      ansible.builtin.assert:
        that: "inventory_hostname in running.stdout"
"""


def _nodes(listener_factory: Any, postgres: Any, fleet: Any, tmp_path: Path, database: str,
           enrolled: List[str]) -> Dict[str, Any]:
    """Three nodes on one fresh database, each believing PROXY headers from HAProxy only; the
    first seeds the shared trust store with ``enrolled``."""
    url = postgres.create_database(database)
    certs = cluster_certs(tmp_path / "cluster", list(NODES))
    nodes: Dict[str, Any] = {}
    for i, name in enumerate(NODES):
        if i == 0:
            fleet.enroll(tmp_path / name / "trust.json", enrolled)
        config = _config(tmp_path, name, url, dict(certs[name], bind="127.0.0.1:0", connect_timeout=2))
        nodes[name] = listener_factory("--config", str(config), home=tmp_path / name).start()
    return nodes


def _config(tmp_path: Path, name: str, url: str, cluster: Dict[str, Any]) -> Path:
    """A node's listener.yml: the shared database, the node-to-node channel (requests for a device
    another node holds are forwarded there), PROXY headers believed from HAProxy only."""
    path = tmp_path / ("%s.yml" % name)
    data = {"state_url": url, "node_name": name, "cluster": cluster, "proxy_protocol_from": ["%s/32" % BALANCER],
            "proxy_protocol_timeout": 2}
    path.write_text(yaml.safe_dump(data))
    os.chmod(path, 0o600)  # it holds the database password
    return path


def _connected(node: Any) -> List[str]:
    """The devices whose session ``node`` holds itself (its own view: by default ``devices``
    shows every node's, from the database)."""
    try:
        return sorted(d["name"] for d in node.call("devices", scope="node") if d["status"] == "connected")
    except CallHomeError:
        return []


def _holders(nodes: Dict[str, Any]) -> Dict[str, List[str]]:
    """device -> the nodes reporting it connected (their own views)."""
    out: Dict[str, List[str]] = {}
    for name, node in nodes.items():
        for device in _connected(node):
            out.setdefault(device, []).append(name)
    return out


def _rows(postgres: Any, database: str) -> Dict[str, List[str]]:
    got = postgres.psql("SELECT name, status, coalesce(node, '-') FROM devices ORDER BY name", database)
    return {r[0]: r[1:] for r in got}


def _trust(postgres: Any, database: str) -> List[List[str]]:
    return postgres.psql(
        "SELECT d.name, d.doc::text, i.kind, i.identity FROM trust_devices d "
        "LEFT JOIN trust_identities i ON i.device = d.name ORDER BY d.name, i.kind, i.identity", database)


def _ansible_env(tmp_path: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PATH": "%s:%s" % (VENV_BIN, env.get("PATH", "")),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_PERSISTENT_CONTROL_PATH_DIR": str(tmp_path / "pc"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    })
    for name in ("NETCONF_CALLHOME_LISTENER", "NETCONF_CALLHOME_TOKEN", "NETCONF_CALLHOME_HOME"):
        env.pop(name, None)
    return env


def _playbook(tmp_path: Path, device: str, node: Any, tag: str) -> subprocess.Popen:
    """``ansible-playbook`` reading ``device`` through ``node``'s control socket (the connection
    plugin's ``ansible_callhome_listener``)."""
    book = tmp_path / "read.yml"
    book.write_text(PLAYBOOK)
    inventory = tmp_path / ("inventory-%s.json" % tag)
    inventory.write_text(json.dumps({"all": {"hosts": {device: {
        "ansible_connection": "netconf.callhome.netconf",
        "ansible_callhome_listener": "unix:%s" % (node.home / "control.sock"),
        "ansible_callhome_wait": 60,
    }}}}))
    out = open(tmp_path / ("ansible-%s.out" % tag), "wb")
    try:
        return subprocess.Popen([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(book)],
                                stdout=out, stderr=subprocess.STDOUT, env=_ansible_env(tmp_path), cwd=str(tmp_path))
    finally:
        out.close()


def _control_clients(node: Any) -> int:
    """Connections open on ``node``'s control socket now (``ss``: the accepted ends name the path)."""
    path = str(node.home / "control.sock")
    out = subprocess.run(["ss", "-xH", "state", "connected"], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if path in line.split())


def _output(tmp_path: Path, tag: str) -> str:
    return (tmp_path / ("ansible-%s.out" % tag)).read_text(errors="replace")


def test_kill_9_of_one_of_three_nodes(listener_factory, fleet, postgres, haproxy, tmp_path):
    database = "kill9_%d" % os.getpid()
    fleet_names = ["fo%04d" % i for i in range(1, 7)]
    task_device, stale_device = "ft0001", "st0001"
    rejoin_names = ["rj%04d" % i for i in range(1, 7)]
    enrolled = fleet_names + [task_device, stale_device] + rejoin_names
    nodes = _nodes(listener_factory, postgres, fleet, tmp_path, database, enrolled)
    lb = haproxy([("127.0.0.1", node.ssh_port) for node in nodes.values()])
    lb.wait_up()
    retry = ("--retry", str(REDIAL))
    with running(fleet.simulator(lb.port, len(fleet_names), "--name-prefix", "fo", *retry,
                                 wait_connected=len(fleet_names))) as devices, \
            running(fleet.simulator(lb.port, 1, "--name-prefix", "ft", *retry, wait_connected=1)) as task_sim:
        everyone = fleet_names + [task_device]
        wait_until(lambda: sorted(d for d, on in _holders(nodes).items() if len(on) == 1) == everyone, 30,
                   "every device connected on one node", detail=lambda: str(_holders(nodes)))
        # the node to kill is the one the task's device called (HAProxy's round robin chose it)
        victim_name = _holders(nodes)[task_device][0]
        victim = nodes[victim_name]
        survivors = {n: node for n, node in nodes.items() if n != victim_name}
        victims_devices = [d for d in _connected(victim) if d != task_device]
        assert victims_devices, "round robin gave %s only the task's device: %s" % (victim_name, _holders(nodes))
        # one more device, called straight to the victim, that never redials: its row is what a
        # killed node leaves behind (connected, node = the dead node)
        with running(fleet.simulator(victim.ssh_port, 1, "--name-prefix", "st", "--no-reconnect", wait_connected=1)):
            wait_until(lambda: _rows(postgres, database).get(stale_device) == ["connected", victim_name], 10,
                       "st0001's row connected on %s" % victim_name)
            wait_until(lambda: all(_rows(postgres, database).get(d, [""])[0] == "connected" for d in everyone), 10,
                       "every row written")
            trust_before = _trust(postgres, database)
            assert {r[0] for r in trust_before} == set(enrolled)

            # a task in flight on the victim, asked through a node that survives (which forwards
            # it to the victim): once the playbook runs its task, the device is frozen so that the
            # request waits on the victim for its answer (for less than the keepalive's 3 s, which
            # would drop the session first)
            entry_name = sorted(survivors)[0]
            entry = survivors[entry_name]
            inflight = _playbook(tmp_path, task_device, entry, "inflight")
            wait_until(lambda: "TASK [Read the running datastore]" in _output(tmp_path, "inflight"), 60,
                       "the playbook's task", detail=lambda: _output(tmp_path, "inflight"))
            task_sim.proc.send_signal(signal.SIGSTOP)
            try:
                wait_until(lambda: _control_clients(entry) > 0, 2.0, "the task's request on %s" % entry_name,
                           interval=0.02, detail=lambda: _output(tmp_path, "inflight"))
                time.sleep(0.5)  # forwarded to the victim, with the device, which does not answer
                assert inflight.poll() is None, _output(tmp_path, "inflight")
                killed_at = time.monotonic()
                victim.proc.kill()  # SIGKILL: no goodbye to anyone
            finally:
                task_sim.proc.send_signal(signal.SIGCONT)
            victim.proc.wait(10)

            # its devices redial through HAProxy and are connected on the survivors
            moved = victims_devices + [task_device]

            def moved_over() -> bool:
                holders = _holders(survivors)
                return all(len(holders.get(d, [])) == 1 for d in moved)

            wait_until(moved_over, 30, "the victim's devices on the survivors", detail=lambda: str(_holders(survivors)))
            moved_in = time.monotonic() - killed_at
            print("kill -9 of %s -> its %d device(s) connected on the others in %.2f s (bound %.1f s)"
                  % (victim_name, len(moved), moved_in, REDIAL + KEEPALIVE))
            assert moved_in <= REDIAL + KEEPALIVE, "%.2f s > redial %.1f s + keepalive %.1f s" % (
                moved_in, REDIAL, KEEPALIVE)
            assert sorted(_holders(survivors)) == sorted(everyone)  # nothing else moved or dropped

            # the task in flight failed, with a reason a person can act on
            assert inflight.wait(120) != 0
            failed = _output(tmp_path, "inflight")
            assert "fatal: [%s]" % task_device in failed, failed
            print("the task in flight:\n%s" % "\n".join(ln for ln in failed.splitlines() if "fatal" in ln))
            assert "could not lease a NETCONF session on device %s" % task_device in failed, failed
            assert "device %s is held by %s at " % (task_device, victim_name) in failed, failed
            assert "which does not answer" in failed, failed
            # the next task, through the same node, succeeds (wherever the device is now)
            nxt = _playbook(tmp_path, task_device, entry, "next")
            assert nxt.wait(120) == 0, _output(tmp_path, "next")
            assert "ok=2" in _output(tmp_path, "next")

            # the database: the moved devices are their new holders', the stale row is still the
            # dead node's (nobody else holds st0001), and not one enrollment was lost
            def rows_moved() -> bool:
                rows = _rows(postgres, database)
                return all(rows[d][0] == "connected" and rows[d][1] != victim_name for d in moved)

            wait_until(rows_moved, 10, "the moved devices' rows", detail=lambda: str(_rows(postgres, database)))
            assert _rows(postgres, database)[stale_device] == ["connected", victim_name]
            assert _trust(postgres, database) == trust_before

        # restarted on the same port, the node rejoins: clears its stale row, takes devices again
        mark = len(victim.log())
        back = listener_factory("--config", str(tmp_path / ("%s.yml" % victim_name)), home=victim.home,
                                ssh_port=victim.ssh_port).start()
        nodes[victim_name] = back
        wait_until(lambda: _rows(postgres, database)[stale_device] == ["disconnected", "-"], 10,
                   "the dead node's stale row cleared", detail=lambda: str(_rows(postgres, database)))
        assert "Traceback" not in back.log()[mark:]
        assert _connected(back) == []  # its old devices stay where they redialed: no flapping back
        lb.wait_up()
        with running(fleet.simulator(lb.port, len(rejoin_names), "--name-prefix", "rj", *retry,
                                     wait_connected=len(rejoin_names))):
            wait_until(lambda: all(len(_holders(nodes).get(d, [])) == 1 for d in rejoin_names), 30,
                       "the new devices connected", detail=lambda: str(_holders(nodes)))
            assert [d for d in _connected(back) if d.startswith("rj")], "the restarted node took no device: %s" % (
                _holders(nodes))
            holders = _holders(nodes)
            assert all(len(on) == 1 for on in holders.values()), holders  # never on two nodes
            assert sorted(holders) == sorted(everyone + rejoin_names)
        assert _trust(postgres, database) == trust_before
        devices.stop()


def test_postgresql_restarted_under_three_nodes(listener_factory, fleet, postgres, haproxy, tmp_path):
    database = "pgrestart_%d" % os.getpid()
    first = ["pr%04d" % i for i in range(1, 7)]
    during = ["pd%04d" % i for i in range(1, 4)]
    nodes = _nodes(listener_factory, postgres, fleet, tmp_path, database, first + during)
    lb = haproxy([("127.0.0.1", node.ssh_port) for node in nodes.values()])
    lb.wait_up()
    key = fleet.keys(["pe0001"])["pe0001"].export_public_key().decode().strip()
    with running(fleet.simulator(lb.port, len(first), "--name-prefix", "pr", wait_connected=len(first))):
        wait_until(lambda: all(_rows(postgres, database).get(d, [""])[0] == "connected" for d in first), 30,
                   "the first devices' rows", detail=lambda: str(_rows(postgres, database)))
        before = dict(_holders(nodes))
        assert sorted(before) == first and all(len(on) == 1 for on in before.values()), before
        assert len({on[0] for on in before.values()}) == 3, before  # spread over the three nodes
        sessions = {d: _session(nodes[on[0]], d) for d, on in before.items()}

        postgres.halt()
        with contextlib.ExitStack() as late:
            try:
                # an enrollment none of the nodes can make durable is refused, on any node
                for name, node in nodes.items():
                    with pytest.raises(CallHomeError) as info:
                        node.call("enroll", device="pe0001", kind="ssh_host_keys", value=key)
                    message = str(info.value)
                    assert "cannot change the trust store postgresql://callhome:***@" in message, (name, message)
                    assert "(nothing was changed)" in message and postgres.password not in message
                # new devices call in meanwhile (their verdicts come from the trust already
                # loaded): status changes and ownership claims the database cannot take now
                late.enter_context(running(fleet.simulator(lb.port, len(during), "--name-prefix", "pd",
                                                           wait_connected=len(during))))
                wait_until(lambda: all(len(_holders(nodes).get(d, [])) == 1 for d in during), 30,
                           "the devices calling during the outage", detail=lambda: str(_holders(nodes)))
                outage_holders = {d: _holders(nodes)[d][0] for d in during}
                for name in set(outage_holders.values()):
                    nodes[name].wait_log("event=registry.flush_failed", timeout=10)
                    nodes[name].wait_log("event=ownership.claim_failed", timeout=10)
                # A window on purpose: what is proved is that nothing drops a held session while
                # the database is away, and "nothing happens" has no event to poll for. The
                # failures that could set it off were just logged; 1 s covers the registry's first
                # retry (flush_interval 0.5 s, doubled) and a keepalive round (interval 1 s), so
                # a reaction to either would show below as another holder or another session.
                time.sleep(1.0)
                # the sessions held before are the same sessions
                now = _holders(nodes)
                assert {d: now.get(d) for d in first} == before, now
                assert {d: _session(nodes[before[d][0]], d) for d in first} == sessions
            finally:
                postgres.resume()
            # back: the queued writes land, the claims of the outage are made
            started = time.monotonic()

            def caught_up() -> bool:
                rows = _rows(postgres, database)
                return all(rows.get(d) == ["connected", before[d][0]] for d in first) and all(
                    rows.get(d) == ["connected", outage_holders[d]] for d in during)

            wait_until(caught_up, 60, "the registry caught up", detail=lambda: str(_rows(postgres, database)))
            print("PostgreSQL back -> registry caught up in %.2f s" % (time.monotonic() - started))
            # the claims are retried every 5 s (ownership.py), not at once
            claims = "SELECT name, node FROM device_owners WHERE name LIKE 'pd%' ORDER BY name"
            wait_until(lambda: postgres.psql(claims, database) == [[d, outage_holders[d]] for d in during], 15,
                       "the outage's ownership claims", detail=lambda: str((postgres.psql(claims, database),
                                                                            outage_holders)))
            print("PostgreSQL back -> every claim of the outage made in %.2f s" % (time.monotonic() - started))
            for name in set(outage_holders.values()):
                nodes[name].wait_log("event=registry.flush_recovered", timeout=30)
                nodes[name].wait_log("event=ownership.claim_recovered", timeout=30)
        # the devices of the outage hung up: those writes land too
        wait_until(lambda: all(_rows(postgres, database).get(d, [""])[0] == "disconnected" for d in during), 10,
                   "the outage devices' disconnects")
        history = postgres.psql("SELECT device, node, event FROM events WHERE device LIKE 'pd%' ORDER BY id", database)
        for device in during:
            node = outage_holders[device]
            assert [device, node, "connected"] in history and [device, node, "disconnected"] in history, history

        # the enrollment refused during the outage is accepted now, and is in the database
        def enrolled() -> bool:
            try:
                return bool(nodes["node-b"].call("enroll", device="pe0001", kind="ssh_host_keys", value=key)["changed"])
            except CallHomeError:
                return False

        wait_until(enrolled, 30, "the enrollment accepted again")
        assert ["pe0001"] in postgres.psql("SELECT name FROM trust_devices ORDER BY name", database)
        assert dict(_holders(nodes)) == before  # still the same sessions
        assert {d: _session(nodes[before[d][0]], d) for d in first} == sessions


def _session(node: Any, device: str) -> List[Any]:
    """What identifies one session of ``device`` on ``node``: a new session changes both."""
    record = node.call("device", device=device, scope="node")
    return [record["last_connected"], record["connect_count"]]


def test_kill_9_moves_the_libnetconf2_device(device_binary, listener_factory, fleet, postgres, haproxy, tmp_path):
    """The libnetconf2 device (a NETCONF server nobody here wrote) calling HAProxy: kill -9 of the
    node holding it, and it is connected on another node within one redial (libnetconf2
    reconnects at once when its session ends, about once a second while nothing answers) plus one
    keepalive; a NETCONF read through the node that stayed first, forwarded or local, succeeds."""
    from lnc2_peer import Lnc2Device
    from pki import make_pki

    pki = make_pki(tmp_path / "pki", device_name="lnc2-dev1")
    enroll(tmp_path / "node-a", "lnc2-dev1", ssh_key=pki.host_keys["ed25519"].public_line,
           private_key=pki.listener_ssh_key.private_path)
    nodes = _nodes(listener_factory, postgres, fleet, tmp_path, "lnc2_%d" % os.getpid(), [])
    lb = haproxy([("127.0.0.1", node.ssh_port) for node in nodes.values()])
    lb.wait_up()
    with Lnc2Device.from_pki(pki, ssh_port=lb.port):
        holder = wait_until(lambda: _holders(nodes).get("lnc2-dev1"), 30, "lnc2-dev1 connected",
                            detail=lambda: str(_holders(nodes)))
        assert len(holder) == 1, holder
        victim = nodes[holder[0]]
        survivors = {n: node for n, node in nodes.items() if n != holder[0]}
        entry = survivors[sorted(survivors)[0]]
        killed_at = time.monotonic()
        victim.proc.kill()
        victim.proc.wait(10)
        moved = wait_until(lambda: _holders(survivors).get("lnc2-dev1"), 30, "lnc2-dev1 on another node",
                           detail=lambda: str(_holders(survivors)))
        moved_in = time.monotonic() - killed_at
        print("kill -9 of %s -> lnc2-dev1 connected on %s in %.2f s" % (holder[0], moved[0], moved_in))
        # libnetconf2's own redial (about 1 s) plus one keepalive of the nodes
        assert moved_in <= 1.0 + KEEPALIVE, moved_in
        rec = survivors[moved[0]].call("device", device="lnc2-dev1", scope="node")
        assert rec["peer"].startswith("127.0.0.1:") and rec["fingerprint"] == pki.host_keys["ed25519"].fingerprint
        manager, info = ncclient_over_lease(entry.control, "lnc2-dev1", wait=20)
        try:
            assert info.get("node", moved[0]) == moved[0], info
            assert manager.get_config("running").ok
        finally:
            manager.close_session()

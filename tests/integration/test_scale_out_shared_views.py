# SPDX-License-Identifier: GPL-3.0-or-later
"""Scale-out, issue 12 items 1, 4 and 5: what any node shows and writes is the shared state.
Two listener processes on one real PostgreSQL (tests/peers/postgres_peer.py):

- ``pending`` on node B lists a key that only node A saw, with ``node: node-a`` (its own view,
  ``scope: node``, does not have it), and ``callhome-listener pending`` shows the node column;
- the enroll module's ``outbound_ssh_secret`` run against node B's control socket (check mode,
  then for real, then again: idempotent) lands in the shared trust store, not in a file; an
  outbound-ssh device that proves that secret calling node A is enrolled zero-touch there and
  gets its session; the secret's value is nowhere in the answers, the database or the homes;
- node B stopped, the same task against its control socket fails naming the shared store, and
  writes no trust store file (no node would read it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

from harness import ncclient_over_lease, running, wait_until
from module_runner import run_module

SECRET = "Zt-shared-outbound-s3cret-0815"


def _node(listener_factory: Any, tmp_path: Path, url: str, name: str) -> Any:
    config = tmp_path / ("%s.yml" % name)
    config.write_text("state_url: %s\nnode_name: %s\n" % (url, name))
    os.chmod(config, 0o600)
    return listener_factory("--config", str(config), "--outbound-ssh", "127.0.0.1:0", home=tmp_path / name).start()


def _enroll_module(check: bool = False, **params: Any) -> Tuple[int, Dict[str, Any]]:
    """netconf.callhome.enroll run in this process, as Ansible runs it (its JSON result)."""
    from ansible_collections.netconf.callhome.plugins.modules import enroll as enroll_module

    return run_module(enroll_module.main, params, check=check, diff=True)


def _outbound_port(node: Any) -> int:
    return int(node.call("status")["outbound_ssh"][0].rsplit(":", 1)[1])


def test_pending_on_any_node_and_a_secret_enrolled_through_another(listener_factory, fleet, postgres, tmp_path):
    database = "shared_views_%d" % os.getpid()
    url = postgres.create_database(database)
    a = _node(listener_factory, tmp_path, url, "node-a")
    b = _node(listener_factory, tmp_path, url, "node-b")

    # -- a key refused on node A is listed by node B, with the node that saw it -----------------
    key = fleet.keys(["pk0001"])["pk0001"]
    fingerprint = key.get_fingerprint("sha256")
    with running(fleet.simulator(a.ssh_port, 1, "--name-prefix", "pk")):
        wait_until(lambda: any(p["fingerprint"] == fingerprint for p in a.call("pending")), 20, "pending on node-a")
        seen = wait_until(
            lambda: next((p for p in b.call("pending") if p["fingerprint"] == fingerprint), None),
            10, "node-b listing node-a's pending key", detail=lambda: b.log()[-3000:],
        )
    assert seen["node"] == "node-a" and seen["reason"] == "unknown-key" and seen["transport"] == "ssh", seen
    assert all(p["fingerprint"] != fingerprint for p in b.call("pending", scope="node"))  # node-b never saw it
    mine = next(p for p in a.call("pending") if p["fingerprint"] == fingerprint)
    assert mine["node"] == "node-a"
    table = b.cli("pending").stdout
    assert "NODE" in table.splitlines()[0] and "node-a" in table and fingerprint in table
    # and any node approves it (find_pending): gone from both lists
    assert b.call("approve", fingerprint=fingerprint, device="pk0001")["changed"] is True
    wait_until(lambda: all(p["fingerprint"] != fingerprint for n in (a, b) for p in n.call("pending")), 10,
               "the approved key gone from every node's pending list")

    # -- outbound_ssh_secret through node B into the shared store --------------------------------
    secret_file = tmp_path / "sim0001.secret"
    secret_file.write_text(SECRET + "\n")
    os.chmod(secret_file, 0o600)
    reference = "file:%s" % secret_file
    task = dict(device="sim0001", outbound_ssh_secret=reference, listener="unix:%s" % (b.home / "control.sock"))
    in_db = "SELECT doc->'outbound_ssh'->>'secret' FROM trust_devices WHERE name = 'sim0001'"

    rc, res = _enroll_module(check=True, **task)
    assert rc == 0 and res["changed"] is True and res["written_via"] == "listener", res
    assert postgres.psql(in_db, database) == []  # check mode wrote nothing
    rc, res = _enroll_module(**task)
    assert rc == 0 and res["changed"] is True and res["written_via"] == "listener", res
    assert res["trust_store"].startswith("postgresql://") and res["outbound_ssh"]["allow_rotation"] is False
    assert res["diff"]["before"] != res["diff"]["after"]
    assert postgres.psql(in_db, database) == [[reference]]
    rc, res = _enroll_module(**task)
    assert rc == 0 and res["changed"] is False, res  # idempotent
    rc, res = _enroll_module(check=True, **task)
    assert rc == 0 and res["changed"] is False, res
    for node in (a, b):
        assert not (node.home / "trust.json").exists()  # nothing written where no node reads
    # the secret list through node A (the shared store), references only
    listed = a.cli("secret", "list").stdout
    assert json.loads(listed)["devices"]["sim0001"] == {"secret": reference, "allow_rotation": False}

    # -- the device proves the secret to node A: zero-touch ------------------------------------
    device_key = fleet.keys(["sim0001"])["sim0001"]
    with running(fleet.simulator(_outbound_port(a), 1, "--outbound-ssh-preamble", "--outbound-ssh-secret", SECRET)):
        rec = a.wait_device("sim0001", "connected", timeout=30)
        assert rec["fingerprint"] == device_key.get_fingerprint("sha256")
        log = a.wait_log("event=device.enrolled device=sim0001")
        assert "via=outbound-ssh-secret secret=device sim0001" in log
        enrolled = "SELECT identity FROM trust_identities WHERE device = 'sim0001'"
        wait_until(lambda: postgres.psql(enrolled, database) == [[device_key.get_fingerprint("sha256")]], 10,
                   "the proved key in the shared trust store")
        # node B sees the enrolled device (item 4) and a NETCONF read through node A works
        wait_until(lambda: b.call("device", device="sim0001").get("node") == "node-a", 10, "node-b showing sim0001")
        mgr = ncclient_over_lease(a.control, "sim0001")[0]
        with mgr:
            assert "sim0001" in mgr.get_config("running").xml

    # -- the secret's value is nowhere -----------------------------------------------------------
    dump = postgres.psql("SELECT doc::text FROM trust_devices UNION ALL SELECT doc::text FROM pending_keys", database)
    assert SECRET not in json.dumps(dump)
    for node in (a, b):
        for answer in (node.call("pending"), node.call("devices"), node.call("status")):
            assert SECRET not in json.dumps(answer)
        for path in sorted(p for p in node.home.rglob("*") if p.is_file() and not p.is_socket()):
            assert SECRET.encode() not in path.read_bytes(), path

    # -- node B stopped: the task fails clearly, and no trust store file is written --------------
    b.stop()
    other = dict(task)
    other["device"] = "sim0002"
    rc, res = _enroll_module(**other)
    assert rc == 1 and res["failed"] and res["error_code"] == "listener-unreachable", res
    assert "keeps its trust store in postgresql://" in res["msg"] and "NOT written" in res["msg"], res["msg"]
    assert not (b.home / "trust.json").exists()
    assert postgres.psql("SELECT name FROM trust_devices WHERE name = 'sim0002'", database) == []

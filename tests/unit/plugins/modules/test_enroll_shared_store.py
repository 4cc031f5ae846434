# SPDX-License-Identifier: GPL-3.0-or-later
"""netconf.callhome.enroll against a running listener (issue 12 items 1, 5): the outbound-ssh
secret goes through the listener's ``secret`` op into whatever store it uses, a node on a shared
PostgreSQL store included (check mode, diff, idempotence; the reference only, never a value), and
nothing is ever written to a trust store file no node reads (a shared node that does not answer,
a remote listener that does not answer, a database URL as trust_store)."""

from __future__ import annotations

import json
import os
import typing as t
from pathlib import Path

import asyncssh
import pytest

from module_runner import ModuleRun, run_module  # tests/unit/plugins/modules, on the path (conftest.py)

from ansible_collections.netconf.callhome.plugins.modules import enroll as enroll_module

pytestmark = pytest.mark.timeout(120)
SECRET = "pasted-Junos-s3cret"


def _run(check: bool = False, diff: bool = True, **params: t.Any) -> ModuleRun:
    return run_module(enroll_module.main, params, check=check, diff=diff)


def _with(task: t.Dict[str, t.Any], **changes: t.Any) -> t.Dict[str, t.Any]:
    out = dict(task)
    out.update(changes)
    return out


def _db(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.fixture
def shared_node(postgres: t.Any, listener_in_thread: t.Any) -> t.Any:
    url = postgres.create_database("enroll_mod_%d_%d" % (os.getpid(), id(listener_in_thread) % 100000))
    lst = listener_in_thread(state_url=url, node_name="node-b")
    lst.url = url
    return lst


def test_secret_on_a_shared_store_check_mode_diff_idempotence(shared_node: t.Any, postgres: t.Any) -> None:
    lst = shared_node
    task = dict(device="r5", outbound_ssh_secret="file:/etc/callhome/r5.secret", listener=lst.address)
    query = "SELECT doc->'outbound_ssh' FROM trust_devices WHERE name = 'r5'"
    rc, res = _run(check=True, **task)
    assert rc == 0 and res["changed"] is True and res["written_via"] == "listener", res
    assert postgres.psql(query, _db(lst.url)) == []
    rc, res = _run(**task)
    assert rc == 0 and res["changed"] is True and res["written_via"] == "listener", res
    assert res["trust_store"].startswith("postgresql://") and res["before"] == res["after"] == []
    assert "outbound_ssh_before" not in res and "r5.secret" not in json.dumps(res)  # no_log: masked
    assert res["diff"]["before"] == "outbound_ssh: null\n" and res["diff"]["after"].startswith("outbound_ssh: {")
    assert json.loads(postgres.psql(query, _db(lst.url))[0][0]) == {
        "secret": "file:/etc/callhome/r5.secret", "allow_rotation": False}
    for check in (True, False):
        rc, res = _run(check=check, **task)
        assert rc == 0 and res["changed"] is False, res
    assert not (lst.home / "trust.json").exists()
    # only the reference's change is a change: allow_rotation, then another reference
    rc, res = _run(check=True, outbound_ssh_allow_rotation=True, **task)
    assert rc == 0 and res["changed"] is True
    rc, res = _run(**_with(task, outbound_ssh_secret="env:R5_SECRET"))
    assert rc == 0 and res["changed"] is True
    assert "file:/etc/callhome/r5.secret" in res["diff"]["before"]  # the old reference, never a value
    # a pasted secret is refused unseen, through the listener as well
    rc, res = _run(**_with(task, outbound_ssh_secret=SECRET))
    assert rc == 1 and "env:NAME" in res["msg"] and SECRET not in json.dumps(res)


def test_identity_with_a_secret_on_a_shared_store(shared_node: t.Any) -> None:
    lst = shared_node
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
    task = dict(device="r6", source="public_key", value=key, outbound_ssh_secret="env:R6_SECRET", listener=lst.address)
    rc, res = _run(check=True, **task)
    assert rc == 0 and res["changed"] is True and res["written_via"] == "listener" and len(res["after"]) == 1, res
    assert res["before"] == [] and not any(d["name"] == "r6" for d in lst.call("devices"))
    assert not lst.call("secret", action="list")["devices"]
    rc, res = _run(**task)
    assert rc == 0 and res["changed"] is True and len(res["after"]) == 1
    rc, res = _run(**task)
    assert rc == 0 and res["changed"] is False and len(res["before"]) == 1
    rc, res = _run(check=True, device="r6", state="absent", listener=lst.address)
    assert rc == 0 and res["changed"] is True and res["written_via"] == "listener" and res["after"] == []
    assert lst.call("device", device="r6")["enrolled"] is True  # check mode revoked nothing


def test_pending_approved_on_a_shared_store_reports_from_the_listener(shared_node: t.Any) -> None:
    from netconf_callhome.state.registry import PendingKey

    lst = shared_node
    private = asyncssh.generate_private_key("ssh-ed25519")
    line = private.export_public_key("openssh").decode().strip()
    fingerprint = private.get_fingerprint("sha256")

    async def record() -> None:
        lst.listener.registry.record_pending(PendingKey(fingerprint=fingerprint, key_type="ssh-ed25519",
                                                        transport="ssh", public_key=line, peer="192.0.2.3:1"))

    lst.run(record())
    task = dict(device="r7", source="pending", expected_fingerprint=fingerprint, listener=lst.address)
    rc, res = _run(check=True, **task)
    assert rc == 0 and res["changed"] is True and res["before"] == [] and res["after"] == [fingerprint], res
    assert lst.call("pending")  # still pending
    rc, res = _run(**task)
    assert rc == 0 and res["changed"] is True and res["after"] == [fingerprint], res
    rc, res = _run(**task)  # nothing pending any more, and enrolled: no change
    assert rc == 0 and res["changed"] is False and res["after"] == [fingerprint], res


def test_secret_through_a_listener_on_a_file_store(listener_in_thread: t.Any) -> None:
    lst = listener_in_thread()
    task = dict(device="r8", outbound_ssh_secret="env:R8_SECRET", listener=lst.address)
    rc, res = _run(check=True, **task)
    assert rc == 0 and res["changed"] is True and res["written_via"] == "file"  # computed on the file
    assert not lst.call("secret", action="list")["devices"]
    rc, res = _run(**task)
    assert rc == 0 and res["changed"] is True and res["written_via"] == "listener", res
    assert res["trust_store"] == lst.config.trust_store
    assert json.loads(Path(lst.config.trust_store).read_text())["devices"]["r8"]["outbound_ssh"]["secret"] == "env:R8_SECRET"
    for check in (True, False):
        rc, res = _run(check=check, **task)
        assert rc == 0 and res["changed"] is False


def test_a_stopped_shared_node_is_an_error_and_no_file_is_written(shared_node: t.Any) -> None:
    lst = shared_node
    address = lst.address
    lst.stop()
    for params in (dict(outbound_ssh_secret="env:R9_SECRET"),
                   dict(source="fingerprint", value="SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU")):
        rc, res = _run(device="r9", listener=address, **params)
        assert rc == 1 and res["error_code"] == "listener-unreachable", res
        assert "keeps its trust store in postgresql://" in res["msg"] and "NOT written" in res["msg"]
    assert not (lst.home / "trust.json").exists()
    # naming a file on purpose (e.g. to seed a new cluster) still writes it
    seed = lst.home / "seed.json"
    rc, res = _run(device="r9", listener=address, trust_store=str(seed), outbound_ssh_secret="env:R9_SECRET")
    assert rc == 0 and res["written_via"] == "file" and seed.exists()


def test_no_file_for_a_remote_listener_that_does_not_answer_nor_a_database_url(tmp_path: Path) -> None:
    rc, res = _run(device="r10", listener="tls://127.0.0.1:1", outbound_ssh_secret="env:R10_SECRET")
    assert rc == 1 and res["error_code"] == "listener-unreachable" and "NOT written" in res["msg"], res
    rc, res = _run(device="r10", listener="unix:%s" % (tmp_path / "none.sock"),
                   trust_store="postgresql://nms@db/callhome", outbound_ssh_secret="env:R10_SECRET")
    assert rc == 1 and "is not a file" in res["msg"], res

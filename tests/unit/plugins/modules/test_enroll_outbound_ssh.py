# SPDX-License-Identifier: GPL-3.0-or-later
"""netconf.callhome.enroll's outbound_ssh_secret (issue 11 item 4): a reference written to the
trust store file, with or without an identity, check mode, and a pasted secret refused unseen."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import asyncssh

from module_runner import ModuleRun, run_module  # tests/unit/plugins/modules, on the path (conftest.py)

from ansible_collections.netconf.callhome.plugins.modules import enroll as enroll_module

SECRET = "pasted-Junos-s3cret"


def _run(store: Path, check: bool = False, **params: t.Any) -> ModuleRun:
    args = {"listener": "unix:" + str(store.parent / "no-listener.sock"), "trust_store": str(store)}
    args.update(params)
    return run_module(enroll_module.main, args, check=check)


def test_pre_provisioned_secret_without_an_identity(tmp_path: Path) -> None:
    store = tmp_path / "trust.json"
    rc, res = _run(store, check=True, device="r5", outbound_ssh_secret="file:/etc/callhome/r5.secret")
    assert rc == 0 and res["changed"] and not store.exists()
    rc, res = _run(store, device="r5", outbound_ssh_secret="file:/etc/callhome/r5.secret")
    assert rc == 0 and res["changed"] and res["written_via"] == "file" and res["before"] == res["after"] == []
    # no_log: even the reference is masked in the result; the trust store has it
    assert res["outbound_ssh"]["allow_rotation"] is False and "r5.secret" not in json.dumps(res)
    assert json.loads(store.read_text())["devices"] == {
        "r5": {"outbound_ssh": {"secret": "file:/etc/callhome/r5.secret", "allow_rotation": False}}
    }
    rc, res = _run(store, device="r5", outbound_ssh_secret="file:/etc/callhome/r5.secret")
    assert rc == 0 and not res["changed"]


def test_secret_with_an_identity_in_one_task(tmp_path: Path) -> None:
    store = tmp_path / "trust.json"
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
    rc, res = _run(store, device="r6", source="public_key", value=key, outbound_ssh_secret="env:R6_SECRET",
                   outbound_ssh_allow_rotation=True)
    assert rc == 0 and res["changed"] and res["kind"] == "ssh_host_keys" and len(res["after"]) == 1
    entry = json.loads(store.read_text())["devices"]["r6"]
    assert entry["outbound_ssh"] == {"secret": "env:R6_SECRET", "allow_rotation": True} and entry["ssh_host_keys"]
    # a new identity with the secret unchanged is still a change
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
    rc, res = _run(store, device="r6", source="public_key", value=other, outbound_ssh_secret="env:R6_SECRET",
                   outbound_ssh_allow_rotation=True)
    assert rc == 0 and res["changed"] and len(res["after"]) == 2


def test_a_pasted_secret_is_refused_and_not_echoed(tmp_path: Path) -> None:
    store = tmp_path / "trust.json"
    rc, res = _run(store, device="r7", outbound_ssh_secret=SECRET)
    assert rc == 1 and res["failed"] and "env:NAME" in res["msg"]
    assert SECRET not in json.dumps(res)  # the invocation's copy included (no_log)
    assert not store.exists()


def test_present_needs_a_source_or_a_secret(tmp_path: Path) -> None:
    rc, res = _run(tmp_path / "trust.json", device="r8")
    assert rc == 1 and "source" in res["msg"] and "outbound_ssh_secret" in res["msg"]

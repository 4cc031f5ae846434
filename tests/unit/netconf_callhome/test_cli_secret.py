# SPDX-License-Identifier: GPL-3.0-or-later
"""``callhome-listener secret``: outbound-ssh secret references in the trust store file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from netconf_callhome.cli import main

SECRET = "pasted-value-0123456789"


def _run(capsys: pytest.CaptureFixture[str], home: Path, *argv: str) -> "tuple[int, str, str]":
    rc = main(["secret", "--home", str(home), *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_set_group_list_unset(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    secret_file = tmp_path / "r1.secret"
    secret_file.write_text("s\n")
    os.chmod(secret_file, 0o600)
    rc, out, err = _run(capsys, home, "set", "r1", "file:%s" % secret_file, "--allow-rotation")
    result = json.loads(out)
    assert rc == 0 and err == "" and result["changed"] and result["reloaded"] is False
    assert result["outbound_ssh"] == {"secret": "file:%s" % secret_file, "allow_rotation": True}
    assert result["trust_store"] == str(home / "trust.json")
    # a reference this process cannot resolve is written, with a warning (the listener's environment may differ)
    monkeypatch.delenv("CLI_TEST_GROUP_SECRET", raising=False)
    rc, out, err = _run(capsys, home, "group", "br", "env:CLI_TEST_GROUP_SECRET", "--device-id", "br-*", "--device-id", "edge?")
    assert rc == 0 and "warning" in err and "CLI_TEST_GROUP_SECRET is not set" in err
    rc, out, err = _run(capsys, home, "list")
    assert json.loads(out) == {
        "devices": {"r1": {"secret": "file:%s" % secret_file, "allow_rotation": True}},
        "groups": {"br": {"device_ids": ["br-*", "edge?"], "secret": "env:CLI_TEST_GROUP_SECRET", "allow_rotation": False}},
    }
    assert json.loads(_run(capsys, home, "unset", "r1")[1])["changed"]
    assert json.loads(_run(capsys, home, "ungroup", "br")[1])["changed"]
    assert json.loads(_run(capsys, home, "list")[1]) == {"devices": {}, "groups": {}}


def test_a_pasted_secret_is_refused_without_being_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, tmp_path, "set", "r1", SECRET)
    assert rc == 1 and out == "" and "env:NAME" in err and SECRET not in err
    assert not (tmp_path / "trust.json").exists()


def test_a_home_whose_listener_keeps_the_shared_store_is_not_edited_as_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No listener answers, but the home's listener keeps its trust store in PostgreSQL (its
    marker): set and list refuse, naming the database, and write no file; --trust-store FILE is
    still a file on purpose."""
    from netconf_callhome.control.client import SHARED_STORE_MARKER

    home = tmp_path / "home"
    home.mkdir()
    (home / SHARED_STORE_MARKER).write_text("postgresql://nms:***@db.example/callhome\n")
    for argv in (("set", "r1", "env:R1_SECRET"), ("list",), ("unset", "r1")):
        rc, out, err = _run(capsys, home, *argv)
        assert rc == 1 and out == "", argv
        assert "keeps its trust store in postgresql://nms:***@db.example/callhome" in err and "--trust-store" in err
    assert not (home / "trust.json").exists()
    seed = tmp_path / "seed.json"
    rc, out, err = _run(capsys, home, "--trust-store", str(seed), "set", "r1", "env:R1_SECRET")
    assert rc == 0 and json.loads(out)["changed"] and seed.exists()


def test_set_and_list_through_a_running_listener(listener_in_thread, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    lst = listener_in_thread()
    rc, out, err = _run(capsys, lst.home, "set", "r2", "env:R2_SECRET")
    result = json.loads(out)
    assert rc == 0 and result["written_via"] == "listener" and result["changed"], err
    rc, out, err = _run(capsys, lst.home, "list")
    assert rc == 0 and json.loads(out)["devices"] == {"r2": {"secret": "env:R2_SECRET", "allow_rotation": False}}
    assert lst.call("secret", action="list")["devices"] == json.loads(out)["devices"]


def test_pending_table_names_the_node_when_several_share_a_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from netconf_callhome.control.client import ControlClient

    rows = [
        {"fingerprint": "SHA256:a", "key_type": "ssh-ed25519", "transport": "ssh", "peer": "192.0.2.1:1",
         "reason": "unknown-key", "claimed_device": "", "count": 1, "last_seen": 0, "node": "node-a"},
        {"fingerprint": "SHA256:b", "key_type": "ssh-ed25519", "transport": "ssh", "peer": "192.0.2.2:1",
         "reason": "unknown-key", "claimed_device": "", "count": 2, "last_seen": 0, "node": None},
    ]
    monkeypatch.setattr(ControlClient, "call", lambda self, op, **kw: rows)
    assert main(["--control", "unix:/nonexistent.sock", "pending"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["FINGERPRINT", "KEY_TYPE", "TRANSPORT", "PEER", "NODE"]
    assert lines[1].split()[4] == "node-a" and lines[2].split()[4] == "-"
    monkeypatch.setattr(ControlClient, "call", lambda self, op, **kw: [{k: v for k, v in r.items() if k != "node"} for r in rows])
    assert main(["--control", "unix:/nonexistent.sock", "pending"]) == 0
    assert "NODE" not in capsys.readouterr().out  # a single node: the table as before

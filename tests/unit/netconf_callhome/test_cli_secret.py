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

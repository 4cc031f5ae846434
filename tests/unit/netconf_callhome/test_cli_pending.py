# SPDX-License-Identifier: GPL-3.0-or-later
"""``callhome-listener pending --scope cluster|node`` against a real listener: on a shared
PostgreSQL store every node's keys (the default) or the asked node's own; a bad scope is refused
by the CLI before any listener is asked; a single node (SQLite) answers its own either way."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, List

import pytest

from netconf_callhome.cli import main
from netconf_callhome.state.registry import PendingKey, Registry
from netconf_callhome.state.stores import open_store

pytestmark = pytest.mark.timeout(120)


def _key(fingerprint: str) -> PendingKey:
    return PendingKey(fingerprint=fingerprint, key_type="ssh-ed25519", transport="ssh", peer="192.0.2.7:40000")


async def _record(lst: Any, key: PendingKey) -> None:
    lst.listener.registry.record_pending(key)


def _pending(capsys: pytest.CaptureFixture[str], address: str, *extra: str) -> List[Any]:
    assert main(["--control", address, "--json", "pending"] + list(extra)) == 0
    return sorted(entry["fingerprint"] for entry in json.loads(capsys.readouterr().out))


def test_scope_on_a_shared_store(postgres, listener_in_thread, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    url = postgres.create_database("cli_pending_%d" % os.getpid())
    lst = listener_in_thread(state_url=url, node_name="node-b")
    other = Registry(open_store(url, sqlite_default=str(tmp_path / "unused.sqlite"), home=str(tmp_path), node="node-a"))
    other.load()
    try:
        other.record_pending(_key("SHA256:seen-on-a"))  # after node-b started: node-b's own view lacks it
        other.flush()
        lst.run(_record(lst, _key("SHA256:seen-on-b")))
        everyone = ["SHA256:seen-on-a", "SHA256:seen-on-b"]
        assert _pending(capsys, lst.address) == everyone
        assert _pending(capsys, lst.address, "--scope", "cluster") == everyone
        assert _pending(capsys, lst.address, "--scope", "node") == ["SHA256:seen-on-b"]
        # the table: NODE with every node's keys; this node's own entries carry no node
        assert main(["--control", lst.address, "pending"]) == 0
        table = capsys.readouterr().out.splitlines()
        assert "NODE" in table[0].split() and len(table) == 3
        assert main(["--control", lst.address, "pending", "--scope", "node"]) == 0
        table = capsys.readouterr().out.splitlines()
        assert "NODE" not in table[0].split() and len(table) == 2 and "SHA256:seen-on-b" in table[1]
        # status counts what the default scope lists
        assert main(["--control", lst.address, "status"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert (status["pending"], status["pending_here"], status["pending_scope"]) == (2, 1, "cluster")
    finally:
        other.close()


def test_scope_on_a_single_node(listener_in_thread, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    lst = listener_in_thread()
    lst.run(_record(lst, _key("SHA256:local")))
    for extra in ((), ("--scope", "cluster"), ("--scope", "node")):
        assert _pending(capsys, lst.address, *extra) == ["SHA256:local"]


@pytest.mark.parametrize("value", ["everywhere", "Node", ""])
def test_a_bad_scope_is_refused_clearly(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--control", "unix:/nonexistent.sock", "pending", "--scope", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    # Python 3.12.8+ and 3.13 print the choices without quotes: (choose from cluster, node)
    assert re.search(r"argument --scope: invalid choice: '%s' \(choose from '?cluster'?, '?node'?\)" % re.escape(value), err), err

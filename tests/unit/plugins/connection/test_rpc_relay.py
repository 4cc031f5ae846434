# SPDX-License-Identifier: GPL-3.0-or-later
"""The task's relay to a remote listener: what a module's Connection sees through it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ansible.module_utils.connection import Connection, ConnectionError as ModuleConnectionError

from ansible_collections.netconf.callhome.plugins.plugin_utils.rpc_relay import Relay, RelayError

pytestmark = pytest.mark.timeout(30)


def test_requests_reach_the_exchange_and_answers_the_module() -> None:
    seen = []

    def exchange(data: bytes) -> bytes:
        req = json.loads(data)
        seen.append(req["method"])
        return json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": "<ok/>" * 50000}).encode()

    relay = Relay(exchange)
    try:
        assert stat.S_IMODE(os.stat(relay.path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(relay.path)).st_mode) == 0o700
        conn = Connection(relay.path)
        assert conn.get_config(source="running") == "<ok/>" * 50000
        assert conn.get_capabilities() == "<ok/>" * 50000
        assert seen == ["get_config", "get_capabilities"]
    finally:
        relay.close()
    assert not Path(relay.path).parent.exists()


def test_a_failed_exchange_is_the_modules_connection_error() -> None:
    def exchange(data: bytes) -> bytes:
        raise RelayError("device d1: the call-home listener at tls://x:1: a valid token is required", "not-authorized")

    relay = Relay(exchange)
    try:
        with pytest.raises(ModuleConnectionError, match="a valid token is required"):
            Connection(relay.path).get_config(source="running")
    finally:
        relay.close()


def test_a_failed_exchange_reaches_netcommons_netconf_modules_with_its_text() -> None:
    """netcommon's ``NetconfConnection`` (what ``netconf_*`` modules talk through) raises the
    error's ``data``, not its ``message``: without it the module said ``b'None'``."""
    netconf = pytest.importorskip(
        "ansible_collections.ansible.netcommon.plugins.module_utils.network.common.netconf",
        reason="ansible.netcommon is not on the collections path")

    def exchange(data: bytes) -> bytes:
        raise RelayError("device d1: the call-home listener at tls://x:1: connection refused", "listener-unreachable")

    relay = Relay(exchange)
    try:
        with pytest.raises(ModuleConnectionError, match="connection refused"):
            netconf.NetconfConnection(relay.path).get_config(source="running")
    finally:
        relay.close()

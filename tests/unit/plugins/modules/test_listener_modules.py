# SPDX-License-Identifier: GPL-3.0-or-later
"""listener_api, the logic behind wait_for_devices and listener_info, against a real listener."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from netconf_callhome.control import api as listener_api
from netconf_callhome.errors import ListenerUnreachableError

pytestmark = pytest.mark.timeout(60)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOsTq1VbgXUOdzQ7C/2+tZxjcyq8p5SS7T9G6bhOCtZP"


@pytest.fixture()
def address(listener_in_thread: Any) -> str:
    """A listener (tests/conftest.py) with one enrolled device that never calls."""
    lst = listener_in_thread()
    lst.call("enroll", device="quiet1", kind="ssh_host_keys", value=KEY)
    return str(lst.address)


def test_wait_reports_each_missing_device(address: str) -> None:
    client = listener_api.client_from_params({"listener": address})
    seen = []
    result = listener_api.wait_for_devices(client, ["quiet1", "ghost"], timeout=0.6, poll_interval=0.2, progress=seen.append)
    assert result["ready"] == [] and result["missing"] == ["quiet1", "ghost"]
    assert result["devices"]["quiet1"]["status"] == "never-seen"
    assert result["devices"]["ghost"]["status"] == "not-found"
    assert len(seen) >= 2  # it polled more than once before giving up
    text = listener_api.describe_missing(result, 0.6)
    assert "2 of 2 device(s)" in text and "ghost: not enrolled" in text and "quiet1: status never-seen" in text


def test_listener_info_returns_registry(address: str) -> None:
    info = listener_api.listener_info(listener_api.client_from_params({"listener": address}))
    assert info["listener"]["pid"] > 0
    assert [d["name"] for d in info["devices"]] == ["quiet1"]
    assert info["pending"] == []


def test_unreachable_listener_raises(tmp_path: Path) -> None:
    client = listener_api.client_from_params({"listener": "unix:%s" % (tmp_path / "none.sock")})
    with pytest.raises(ListenerUnreachableError) as err:
        listener_api.listener_info(client)
    assert listener_api.error_result(err.value)["error_code"] == "listener-unreachable"


def test_address_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETCONF_CALLHOME_LISTENER", "tls://127.0.0.1:4339")
    assert listener_api.listener_address(None) == "tls://127.0.0.1:4339"
    assert listener_api.listener_address("unix:/x.sock") == "unix:/x.sock"

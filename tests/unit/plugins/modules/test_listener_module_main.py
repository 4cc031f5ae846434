# SPDX-License-Identifier: GPL-3.0-or-later
"""netconf.callhome.listener_info and wait_for_devices run as modules: options, results, errors.

``test_listener_modules.py`` tests the logic behind them (``netconf_callhome.control.api``); these
run each module's ``main()`` against a real listener, so the options, the control client built
from them and the ``fail_json`` of a listener error are what a task gets.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from module_runner import run_module  # tests/unit/plugins/modules, on the path (conftest.py)

from ansible_collections.netconf.callhome.plugins.modules import listener_info as listener_info_module
from ansible_collections.netconf.callhome.plugins.modules import wait_for_devices as wait_module

pytestmark = pytest.mark.timeout(60)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOsTq1VbgXUOdzQ7C/2+tZxjcyq8p5SS7T9G6bhOCtZP"


@pytest.fixture(name="address")
def fixture_address(listener_in_thread: t.Any) -> str:
    """A listener (tests/conftest.py) with one enrolled device that never calls."""
    lst = listener_in_thread()
    lst.call("enroll", device="quiet1", kind="ssh_host_keys", value=KEY)
    return str(lst.address)


def test_listener_info_returns_the_registry(address: str) -> None:
    rc, res = run_module(listener_info_module.main, {"listener": address}, check=True)
    assert rc == 0 and res["changed"] is False
    assert res["address"] == address and res["listener"]["pid"] > 0
    assert [d["name"] for d in res["devices"]] == ["quiet1"] and res["pending"] == []


def test_listener_info_filters_by_status(address: str) -> None:
    rc, res = run_module(listener_info_module.main, {"listener": address, "status": "connected", "pending": False})
    assert rc == 0 and res["devices"] == [] and res["pending"] == []


def test_wait_for_devices_fails_naming_the_missing(address: str) -> None:
    args = {"listener": address, "devices": ["quiet1", "ghost"], "timeout": 0.4, "poll_interval": 0.1}
    rc, res = run_module(wait_module.main, args)
    assert rc == 1 and res["failed"] is True
    assert "2 of 2 device(s)" in res["msg"] and "ghost: not enrolled" in res["msg"]
    assert res["ready"] == [] and res["missing"] == ["quiet1", "ghost"]
    assert res["devices"]["ghost"]["status"] == "not-found"


def test_wait_for_devices_without_fail_on_missing_succeeds(address: str) -> None:
    args = {"listener": address, "devices": ["quiet1"], "timeout": 0.3, "poll_interval": 0, "fail_on_missing": False}
    rc, res = run_module(wait_module.main, args, check=True)
    assert rc == 0 and res["changed"] is False and res["missing"] == ["quiet1"] and res["ready"] == []


@pytest.mark.parametrize("main, args", [
    (listener_info_module.main, {}),
    (wait_module.main, {"devices": ["r1"], "timeout": 1}),
], ids=["listener_info", "wait_for_devices"])
def test_an_unreachable_listener_fails_with_its_error(tmp_path: Path,
                                                      main: t.Any, args: t.Dict[str, t.Any]) -> None:
    socket = tmp_path / "none.sock"
    rc, res = run_module(main, dict(args, listener="unix:%s" % socket))
    assert rc == 1 and res["failed"] is True
    assert res["error_code"] == "listener-unreachable" and str(socket) in res["msg"]
    assert isinstance(res["details"], dict)


def test_the_token_is_not_logged(tmp_path: Path) -> None:
    rc, res = run_module(listener_info_module.main,
                         {"listener": "unix:%s" % (tmp_path / "none.sock"), "token": "s3cret-token-value"})
    assert rc == 1 and "s3cret-token-value" not in str(res)

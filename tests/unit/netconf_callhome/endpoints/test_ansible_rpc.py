# SPDX-License-Identifier: GPL-3.0-or-later
"""The listener's persistent-connection endpoint, reached the way modules reach it.

Modules talk to it through ``ansible.module_utils.connection.Connection`` (and netcommon's
``NetconfConnection``), so that is what these tests use, against simulated devices calling home
to a listener in this process.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from ansible.module_utils.connection import Connection, ConnectionError as ModuleConnectionError

REPO = Path(__file__).resolve().parents[4]
PATHS = [str(REPO / ".collections"), str(REPO / ".deps")]
pytestmark = pytest.mark.timeout(90)


def _endpoint(lst: Any, device: str, **args: Any) -> Dict[str, Any]:
    request: Dict[str, Any] = dict(device=device, wait=10, collections_paths=PATHS, command_timeout=10)
    request.update(args)
    return dict(lst.call("endpoint", **request))


@pytest.fixture()
def device(listener_in_thread: Any, sim_devices: Any) -> Any:
    lst = listener_in_thread()
    fleet = sim_devices(lst, 1)
    lst.call("wait", device="sim0001", wait=20, timeout=25)
    return lst, fleet


def test_modules_reach_the_device_through_the_endpoint(device: Any) -> None:
    lst, _fleet = device
    info = _endpoint(lst, "sim0001", client="pb1/h1")
    path = info["socket_path"]
    assert info["created"] and info["device"] == "sim0001" and info["network_os"] == "default"
    assert path.startswith(str(lst.home / "rpc")) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    caps = json.loads(Connection(path).get_capabilities())
    assert caps["network_api"] == "netconf" and caps["device_info"]["network_os"] == "default"
    assert any("base:1.1" in c for c in caps["server_capabilities"])
    data = Connection(path).get_config(source="running")
    assert "<data" in data
    again = _endpoint(lst, "sim0001", client="pb1/h1")
    assert again["socket_path"] == path and not again["created"]
    other = _endpoint(lst, "sim0001", client="pb2/h1")
    assert other["socket_path"] != path


def test_a_confirmed_commit_with_a_numeric_timeout_reaches_the_device(device: Any) -> None:
    """netconf_config passes ``confirm`` as an int ``commit(timeout=)``; ncclient needs text."""
    lst, _fleet = device
    path = _endpoint(lst, "sim0001", client="pb1/confirm")["socket_path"]
    conn = Connection(path)
    conn.edit_config(config='<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><system '
                            'xmlns="urn:ietf:params:xml:ns:yang:ietf-system"><location>c1</location></system></config>',
                     target="candidate")
    reply = conn.commit(confirmed=True, timeout=120)
    assert "<ok" in reply
    # the confirmed commit is pending: a plain commit confirms it, cancel-commit now has nothing to cancel
    assert "<ok" in conn.commit()
    with pytest.raises(ModuleConnectionError, match="no confirmed commit is pending"):
        conn.dispatch(rpc_command='<cancel-commit xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"/>')


def test_several_clients_at_once_on_one_endpoint(device: Any) -> None:
    lst, _fleet = device
    path = _endpoint(lst, "sim0001")["socket_path"]
    errors: List[BaseException] = []

    def work() -> None:
        try:
            for _round in range(5):
                assert "<data" in Connection(path).get(filter=None)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _thread in range(5)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors


def test_a_lock_holds_against_another_client(device: Any) -> None:
    lst, _fleet = device
    first = _endpoint(lst, "sim0001", client="pb1/h1")["socket_path"]
    second = _endpoint(lst, "sim0001", client="pb2/h1")["socket_path"]
    Connection(first).lock(target="running")
    with pytest.raises(ModuleConnectionError, match="lock-denied|in-use|lock"):
        Connection(second).lock(target="running")
    Connection(first).unlock(target="running")
    Connection(second).lock(target="running")
    Connection(second).unlock(target="running")


def test_an_unknown_method_is_a_json_rpc_error(device: Any) -> None:
    lst, _fleet = device
    path = _endpoint(lst, "sim0001")["socket_path"]
    with pytest.raises(ModuleConnectionError, match="Method not found"):
        Connection(path).no_such_method()


def test_an_idle_endpoint_goes(device: Any) -> None:
    lst, _fleet = device
    lst.listener.endpoints.idle_timeout = 0.5
    path = _endpoint(lst, "sim0001")["socket_path"]
    assert Connection(path).get_config(source="running")
    deadline = time.monotonic() + 15
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(path)
    assert len(lst.listener.endpoints) == 0
    assert _endpoint(lst, "sim0001")["created"]  # and comes back on demand


def test_a_lost_device_fails_the_request_naming_it(device: Any) -> None:
    lst, fleet = device
    path = _endpoint(lst, "sim0001")["socket_path"]
    assert Connection(path).get_config(source="running")
    fleet.stop()
    deadline = time.monotonic() + 20
    while lst.call("device", device="sim0001")["status"] == "connected" and time.monotonic() < deadline:
        time.sleep(0.2)
    started = time.monotonic()
    with pytest.raises(ModuleConnectionError, match="sim0001"):
        Connection(path).get_config(source="running")
    assert time.monotonic() - started < 10


def test_a_device_that_never_calls_is_waited_for_then_named(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    from netconf_callhome.errors import DeviceNotFoundError

    with pytest.raises(DeviceNotFoundError, match="ghost"):
        _endpoint(lst, "ghost", wait=0.5)


def test_without_ansible_the_endpoint_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from netconf_callhome.endpoints import ansible_rpc

    real_import = builtins.__import__

    def no_ansible(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("ansible"):
            raise ImportError("No module named %r" % name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ansible)
    with pytest.raises(ansible_rpc.EndpointUnavailableError, match=r"netconf-callhome\[ansible\]"):
        ansible_rpc._AnsibleRuntime().load(PATHS)

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


# -- the client's life: reset, the command timeout per task (issue 9 audit) ---------------------

# the device says "running is locked by session N", the multiplexer "... locked by another client"
LOCK_TAKEN = "lock-denied|in-use|is locked by|locked by another client"


def _lock_within(path: str, seconds: float) -> float:
    """Take the running lock on ``path``, retrying until ``seconds``; the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            Connection(path).lock(target="running")
            return time.monotonic() - started
        except ModuleConnectionError:
            if time.monotonic() - started > seconds:
                raise
            time.sleep(0.05)


@pytest.fixture(params=["channel", "shared"])
def one_device(request: Any, listener_in_thread: Any, sim_devices: Any) -> Any:
    """A device serving a channel per client (locks held by the device), and one serving one
    session (locks held by the listener's multiplexer)."""
    lst = listener_in_thread()
    fleet = sim_devices(lst, 1, single_session=request.param == "shared")
    lst.call("wait", device="sim0001", wait=20, timeout=25)
    return lst, fleet


def test_reset_ends_the_client_and_releases_its_lock_at_once(one_device: Any) -> None:
    """ansible-core resets every host's socket at the end of a play: another playbook's lock
    must succeed then, not after the endpoint's idle time (60 s)."""
    lst, _fleet = one_device
    holder = _endpoint(lst, "sim0001", client="pb1/h1")["socket_path"]
    other = _endpoint(lst, "sim0001", client="pb2/h1")["socket_path"]
    Connection(holder).lock(target="running")
    with pytest.raises(ModuleConnectionError, match=LOCK_TAKEN):
        Connection(other).lock(target="running")
    Connection(holder).reset()  # what StrategyBase.cleanup sends
    assert _lock_within(other, 3.0) < 3.0
    # the holder's socket serves the host's next task with a fresh lease: a new client, which the
    # other playbook's lock now holds against
    assert "<data" in Connection(holder).get_config(source="running")
    with pytest.raises(ModuleConnectionError, match=LOCK_TAKEN):
        Connection(holder).lock(target="running")
    Connection(other).unlock(target="running")
    assert _lock_within(holder, 3.0) < 3.0
    Connection(holder).unlock(target="running")


def test_the_next_task_after_a_reset_gets_a_fresh_lease_on_the_same_path(device: Any) -> None:
    lst, _fleet = device
    first = _endpoint(lst, "sim0001", client="pb1/h1")
    Connection(first["socket_path"]).lock(target="running")
    Connection(first["socket_path"]).reset()
    again = _endpoint(lst, "sim0001", client="pb1/h1")  # meta: reset_connection, then the next task
    assert again["socket_path"] == first["socket_path"] and not again["created"]
    Connection(again["socket_path"]).lock(target="running")  # the first lease's lock is gone
    Connection(again["socket_path"]).unlock(target="running")
    Connection(again["socket_path"]).close()  # close ends the client as reset does
    assert "<data" in Connection(again["socket_path"]).get_config(source="running")


def test_a_confirmed_commit_is_cancelled_when_the_client_is_reset(one_device: Any) -> None:
    """A playbook that ends with a confirmed commit pending: the reset at its end rolls it back
    (RFC 6241 8.4: the session that issued it ended) instead of an idle endpoint 60 s later."""
    lst, _fleet = one_device
    path = _endpoint(lst, "sim0001", client="pb1/confirm")["socket_path"]
    conn = Connection(path)
    conn.edit_config(config='<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><system '
                            'xmlns="urn:ietf:params:xml:ns:yang:ietf-system"><location>pending</location></system>'
                            '</config>', target="candidate")
    assert "<ok" in conn.commit(confirmed=True, timeout=600)
    assert "pending" in Connection(path).get_config(source="running")
    conn.reset()
    reader = _endpoint(lst, "sim0001", client="pb2/reader")["socket_path"]
    deadline = time.monotonic() + 5
    while "pending" in Connection(reader).get_config(source="running") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "pending" not in Connection(reader).get_config(source="running")


def test_a_reset_waits_for_the_requests_in_flight(device: Any, slow_replies: Any) -> None:
    """An ``async`` task's request still running when the play ends: it completes on its lease,
    and the client ends after it."""
    lst, _fleet = device
    holder = _endpoint(lst, "sim0001", client="pb1/h1")["socket_path"]
    other = _endpoint(lst, "sim0001", client="pb2/h1")["socket_path"]
    Connection(holder).lock(target="running")
    outcome: Dict[str, Any] = {}

    def slow_get() -> None:
        try:
            outcome["data"] = Connection(holder).get(filter=SLOW_FILTER)
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    slow_replies(1.5)
    th = threading.Thread(target=slow_get)
    th.start()
    deadline = time.monotonic() + 5
    while not lst.listener.endpoints.active and time.monotonic() < deadline:
        time.sleep(0.02)
    Connection(holder).reset()
    with pytest.raises(ModuleConnectionError, match=LOCK_TAKEN):  # the slow request still runs
        Connection(other).lock(target="running")
    th.join(20)
    assert "error" not in outcome, outcome
    assert _lock_within(other, 3.0) < 3.0
    Connection(other).unlock(target="running")


def test_a_hosts_tasks_with_other_command_timeouts_share_its_lock(device: Any) -> None:
    """``lock`` in one task, then an edit in a task with ``ansible_command_timeout: 120``: the same
    client (the same lease), so the host's own lock does not lock it out."""
    lst, _fleet = device
    first = _endpoint(lst, "sim0001", client="pb1/h1", command_timeout=10)
    Connection(first["socket_path"]).lock(target="running")
    second = _endpoint(lst, "sim0001", client="pb1/h1", command_timeout=120)
    assert second["socket_path"] == first["socket_path"] and not second["created"]
    Connection(second["socket_path"]).edit_config(
        config='<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><system xmlns="urn:ietf:params:xml:ns:'
               'yang:ietf-system"><location>own-lock</location></system></config>', target="running")
    other = _endpoint(lst, "sim0001", client="pb2/h1")["socket_path"]
    with pytest.raises(ModuleConnectionError, match=LOCK_TAKEN):
        Connection(other).lock(target="running")
    Connection(second["socket_path"]).unlock(target="running")


SLOW_FILTER = '<filter type="subtree"><slow-reply xmlns="urn:x-netconf-callhome:test"/></filter>'


@pytest.fixture()
def slow_replies(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``slow_replies(seconds)``: the simulated devices answer requests naming ``slow-reply`` that
    late (on their own loop, without holding up their other sessions)."""
    import asyncio

    import netconf_server  # tests/peers, what the simulator's devices run

    real = netconf_server.NetconfSession._handle_message
    state = {"delay": 0.0}

    def handle(self: Any, msg: bytes) -> None:
        if self.ready and b"slow-reply" in msg and state["delay"] > 0:
            asyncio.get_running_loop().call_later(
                state["delay"], lambda: None if self.closed else real(self, msg))
            return
        real(self, msg)

    monkeypatch.setattr(netconf_server.NetconfSession, "_handle_message", handle)
    return lambda seconds: state.__setitem__("delay", seconds)


def test_a_slow_reply_fails_within_the_tasks_command_timeout_naming_the_device(device: Any, slow_replies: Any) -> None:
    lst, _fleet = device
    slow_replies(4.0)
    path = _endpoint(lst, "sim0001", client="pb1/h1", command_timeout=1)["socket_path"]
    started = time.monotonic()
    with pytest.raises(ModuleConnectionError) as failed:
        Connection(path).get(filter=SLOW_FILTER)
    took = time.monotonic() - started
    assert "sim0001" in str(failed.value) and "within 1 s (ansible_command_timeout)" in str(failed.value)
    assert 0.9 < took < 3.0, took
    # the next task of the host with a longer timeout: the same endpoint, its own timeout
    again = _endpoint(lst, "sim0001", client="pb1/h1", command_timeout=10)
    assert again["socket_path"] == path
    started = time.monotonic()
    assert "<data" in Connection(path).get(filter=SLOW_FILTER)
    assert 3.5 < time.monotonic() - started < 9.0


def test_the_rpc_error_tag_reaches_the_module(listener_in_thread: Any, sim_devices: Any) -> None:
    """Modules show only the error text, and the multiplexer's lock-denied and in-use answers read
    alike: the text names the tag."""
    lst = listener_in_thread()
    sim_devices(lst, 1, single_session=True)
    lst.call("wait", device="sim0001", wait=20, timeout=25)
    holder = _endpoint(lst, "sim0001", client="pb1/h1")["socket_path"]
    other = _endpoint(lst, "sim0001", client="pb2/h1")["socket_path"]
    Connection(holder).lock(target="running")
    with pytest.raises(ModuleConnectionError, match=r"locked by another client .*\(rpc-error lock-denied\)$"):
        Connection(other).lock(target="running")
    with pytest.raises(ModuleConnectionError, match=r"\(rpc-error in-use\)$"):
        Connection(other).edit_config(
            config='<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><system xmlns="urn:ietf:params:xml:ns:'
                   'yang:ietf-system"><location>x</location></system></config>', target="running")
    Connection(holder).unlock(target="running")


def test_a_hosts_network_os_is_its_first_tasks_until_a_reset(device: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A later task asking for another network_os keeps the host's session (and its lock), as
    ansible-connection kept its sub-plugin; after a reset the next task gets the one it asks for."""
    lst, _fleet = device
    first = _endpoint(lst, "sim0001", client="pb1/h1", network_os="auto")
    Connection(first["socket_path"]).lock(target="running")
    with caplog.at_level("INFO", logger="netconf_callhome.endpoints"):
        second = _endpoint(lst, "sim0001", client="pb1/h1", network_os="ansible.netcommon.default")
    assert second["socket_path"] == first["socket_path"] and not second["created"]
    assert "event=endpoint.network_os_kept" in caplog.text
    Connection(second["socket_path"]).unlock(target="running")  # the same lease: its own lock
    Connection(second["socket_path"]).reset()
    third = _endpoint(lst, "sim0001", client="pb1/h1", network_os="ansible.netcommon.default")
    assert third["created"] and third["socket_path"] == first["socket_path"]
    assert "<data" in Connection(third["socket_path"]).get_config(source="running")

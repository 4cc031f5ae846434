# SPDX-License-Identifier: GPL-3.0-or-later
"""The listener's RESTCONF endpoint (issue 11, item 2), reached the way modules reach it.

``ansible.netcommon.restconf_get`` / ``restconf_config`` call ``Connection(socket_path)
.send_request(data, path=..., method=..., accept=..., content_type=...)`` (netcommon's
``module_utils/network/restconf``); these tests make the same calls on the endpoint's socket,
with ansible.netcommon's real ``restconf`` httpapi sub-plugin loaded inside, against:

* a scripted connection (the device's answers, failures and timing chosen per test), and
* a real HTTP/2 and HTTP/1.1 device written with h2/h11 behind TLS (``protocol/test_restconf.py``'s
  device), for concurrency on one connection.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
from ansible.module_utils.connection import Connection, ConnectionError as ModuleConnectionError

from netconf_callhome.endpoints.ansible_rpc import EndpointUnavailableError
from netconf_callhome.endpoints.restconf_rpc import RestconfEndpoints
from netconf_callhome.errors import RestconfConnectionLostError, RestconfTimeoutError
from netconf_callhome.protocol.restconf import Response
from netconf_callhome.sessions.restconf_sessions import RestconfSessions

REPO = Path(__file__).resolve().parents[4]
PATHS = [str(REPO / ".collections"), str(REPO / ".deps")]
pytestmark = pytest.mark.timeout(90)

JSON = [("content-type", "application/yang-data+json")]
Handler = Callable[[str, str, Dict[str, str], bytes], Any]


class ScriptedConnection:
    """What the endpoint uses of a held RestconfConnection, answering with ``handler``."""

    http_version = "2"
    peer = "192.0.2.7:40000"
    library = None

    def __init__(self, device: str, handler: Handler, root: str = "/top/restconf") -> None:
        self.device = device
        self.root = root
        self.handler = handler
        self.seen: List[Tuple[str, str, Dict[str, str], bytes]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.is_closed = False

    async def request(self, method: str, path: str, headers: Any, body: bytes = b"", *, timeout: float = 60) -> Response:
        hdrs = {k.lower(): v for k, v in headers}
        self.seen.append((method, path, hdrs, body))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            answer = self.handler(method, path, hdrs, body)
            if asyncio.iscoroutine(answer):
                answer = await answer
            status, headers_out, data = answer
            return Response(status, tuple(headers_out), data, method, path, self.http_version)
        finally:
            self.in_flight -= 1


def device_ok(method: str, path: str, headers: Dict[str, str], body: bytes) -> Any:
    if method == "GET" and path.endswith("/data/ietf-interfaces:interfaces"):
        return 200, JSON, json.dumps({"ietf-interfaces:interfaces": {"interface": [{"name": "eth0"}]}}).encode()
    if method in ("PUT", "DELETE"):
        return 204, [], b""
    return 404, JSON, json.dumps({"ietf-restconf:errors": {"error": [
        {"error-type": "protocol", "error-tag": "invalid-value", "error-message": "no such thing here"}]}}).encode()


class Harness:
    def __init__(self, tmp: Path, loop: Any, idle_timeout: float = 60.0) -> None:
        """``loop``: the ``loop_thread`` fixture (tests/conftest.py), which runs the endpoints."""
        self.loop = loop
        self.sessions = RestconfSessions()
        self.endpoints = loop.run(self._make(str(tmp), idle_timeout))

    async def _make(self, home: str, idle_timeout: float) -> RestconfEndpoints:
        return RestconfEndpoints(home, self.sessions, idle_timeout=idle_timeout)

    def hold(self, conn: Any) -> Any:
        self.sessions.hold(conn)
        return conn

    def open(self, device: str, **kwargs: Any) -> Dict[str, Any]:
        conn = self.sessions.get(device)
        assert conn is not None
        args: Dict[str, Any] = dict(network_os="ansible.netcommon.restconf", collections_paths=PATHS, command_timeout=5)
        args.update(kwargs)
        return self.loop.run(self.endpoints.open_restconf(conn, **args))

    def close(self) -> None:
        self.loop.run(self.endpoints.close_all())


@pytest.fixture
def harness(tmp_path: Path, loop_thread: Any) -> Any:
    made: List[Harness] = []

    def make(**kwargs: Any) -> Harness:
        made.append(Harness(tmp_path, loop_thread, **kwargs))
        return made[-1]

    yield make
    for h in made:
        h.close()  # before loop_thread's teardown closes the loop


def get(path: str, socket_path: str, **kwargs: Any) -> Any:
    """What restconf_get does (netcommon's module_utils/network/restconf.get)."""
    return Connection(socket_path).send_request(None, path=path, method="GET", accept=kwargs.get("accept"))


def test_restconf_get_goes_over_the_held_connection_under_the_discovered_root(harness: Any) -> None:
    h = harness()
    conn = h.hold(ScriptedConnection("dev1", device_ok))
    info = h.open("dev1", client="pb/1")
    path = info["socket_path"]
    assert info["created"] and info["api"] == "restconf" and info["root"] == "/top/restconf"
    assert info["network_os"] == "ansible.netcommon.restconf" and info["http_version"] == "2"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = get("/data/ietf-interfaces:interfaces", path)
    assert data == {"ietf-interfaces:interfaces": {"interface": [{"name": "eth0"}]}}
    method, sent_path, headers, _body = conn.seen[-1]
    assert (method, sent_path) == ("GET", "/top/restconf/data/ietf-interfaces:interfaces")
    assert headers["accept"] == "application/yang-data+json"  # the restconf sub-plugin's own header
    again = h.open("dev1", client="pb/2")
    assert again["socket_path"] == path and not again["created"]  # one endpoint per device


def test_an_explicit_root_overrides_the_discovered_one(harness: Any) -> None:
    h = harness()
    conn = h.hold(ScriptedConnection("dev1", device_ok))
    path = h.open("dev1", root_path="/other/")["socket_path"]
    get("/data/ietf-interfaces:interfaces", path)
    assert conn.seen[-1][1] == "/other/data/ietf-interfaces:interfaces"


def test_restconf_config_writes_reach_the_device(harness: Any, caplog: pytest.LogCaptureFixture) -> None:
    h = harness()
    conn = h.hold(ScriptedConnection("dev1", device_ok))
    path = h.open("dev1")["socket_path"]
    caplog.set_level(logging.DEBUG)
    content = {"example:widgets": {"secret-ish": "do-not-log-me"}}
    # what restconf_config does (module_utils/network/restconf.edit_config)
    result = Connection(path).send_request(content, path="/data/example:widgets", method="PUT", content_type=None)
    assert result == b"" or result == ""  # 204: no body
    method, sent_path, headers, body = conn.seen[-1]
    assert (method, sent_path) == ("PUT", "/top/restconf/data/example:widgets")
    assert json.loads(body) == content and headers["content-type"] == "application/yang-data+json"
    Connection(path).send_request(None, path="/data/example:widgets", method="DELETE")
    assert conn.seen[-1][0] == "DELETE"
    assert "do-not-log-me" not in caplog.text  # bodies (configuration) are never logged


def test_an_http_error_reaches_the_module_with_the_devices_text_and_status(harness: Any) -> None:
    h = harness()
    h.hold(ScriptedConnection("dev1", device_ok))
    path = h.open("dev1")["socket_path"]
    with pytest.raises(ModuleConnectionError) as err:
        get("/data/absent:thing", path)
    # netcommon's handle_response: the error-messages of an "errors" member, else the whole body
    # (an RFC 8040 "ietf-restconf:errors" body is shown whole, as over ansible.netcommon.httpapi)
    assert "'error-message': 'no such thing here'" in str(err.value)
    assert err.value.code == 404  # what restconf_config reads as "absent"
    h.hold(ScriptedConnection("dev1", lambda m, p, hd, b: (
        400, JSON, b'{"errors": {"error": [{"error-message": "first"}, {"error-message": "second"}]}}')))
    with pytest.raises(ModuleConnectionError) as err:
        get("/data/absent:thing", path)
    assert str(err.value) == "first\nsecond" and err.value.code == 400


def test_a_refused_login_says_whose_credentials(harness: Any) -> None:
    h = harness()
    h.hold(ScriptedConnection("dev1", lambda m, p, hd, b: (401, [("www-authenticate", "Basic")], b"Unauthorized")))
    path = h.open("dev1")["socket_path"]
    with pytest.raises(ModuleConnectionError) as err:
        get("/data/x:y", path)
    assert err.value.code == 401
    assert "device dev1 refused the listener's credentials: HTTP 401 for GET /top/restconf/data/x:y" in str(err.value)
    assert "trust store" in str(err.value)


def test_a_device_gone_before_or_during_a_request_is_named(harness: Any) -> None:
    h = harness()
    conn = h.hold(ScriptedConnection("dev1", device_ok))
    path = h.open("dev1")["socket_path"]

    async def lost(*_args: Any) -> Any:
        raise RestconfConnectionLostError("RESTCONF connection to dev1 lost: device closed the connection")

    conn.handler = lambda *a: lost()
    with pytest.raises(ModuleConnectionError, match=r"device dev1: its RESTCONF connection ended during GET "
                                                    r"/top/restconf/data/x:y \(.*device closed the connection\); "
                                                    r"the next task waits for the device to call home again"):
        get("/data/x:y", path)
    h.sessions.release(conn)
    with pytest.raises(ModuleConnectionError, match="device dev1 has no RESTCONF connection to the listener now"):
        get("/data/x:y", path)


def test_a_silent_device_fails_the_request_with_the_command_timeout(harness: Any) -> None:
    h = harness()
    conn = h.hold(ScriptedConnection("dev1", device_ok))
    path = h.open("dev1", command_timeout=2)["socket_path"]

    async def silent(*_args: Any) -> Any:
        raise RestconfTimeoutError("device dev1 did not answer GET within 2s")

    conn.handler = lambda *a: silent()
    with pytest.raises(ModuleConnectionError, match=r"device dev1 did not answer GET /top/restconf/data/x:y within 2 s "
                                                    r"\(ansible_command_timeout\)"):
        get("/data/x:y", path)


def test_the_next_request_uses_the_devices_new_connection(harness: Any) -> None:
    h = harness()
    first = h.hold(ScriptedConnection("dev1", device_ok))
    path = h.open("dev1")["socket_path"]
    get("/data/ietf-interfaces:interfaces", path)
    second = h.hold(ScriptedConnection("dev1", device_ok))  # the device called home again
    get("/data/ietf-interfaces:interfaces", path)
    assert len(first.seen) == 1 and len(second.seen) == 1


def test_an_unknown_httpapi_plugin_is_named(harness: Any) -> None:
    h = harness()
    h.hold(ScriptedConnection("dev1", device_ok))
    with pytest.raises(EndpointUnavailableError, match="no httpapi plugin 'example.nothing.here'"):
        h.open("dev1", network_os="example.nothing.here")


def test_an_idle_endpoint_goes(harness: Any, wait_until: Any) -> None:
    h = harness(idle_timeout=0.3)
    h.hold(ScriptedConnection("dev1", device_ok))
    path = h.open("dev1")["socket_path"]
    get("/data/ietf-interfaces:interfaces", path)
    wait_until(lambda: not os.path.exists(path) and len(h.endpoints) == 0, 10, "the idle endpoint to go")


def _protocol_tests() -> Any:
    """tests/unit/netconf_callhome/protocol/test_restconf.py: its h2/h11 device and ``connect``."""
    path = Path(__file__).resolve().parents[1] / "protocol" / "test_restconf.py"
    spec = importlib.util.spec_from_file_location("restconf_protocol_device", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("alpn", ["h2", "http/1.1"])
def test_concurrent_tasks_share_the_real_connection(harness: Any, tmp_path: Path, alpn: str) -> None:
    """Eight modules at once: HTTP/2 runs them as parallel streams, HTTP/1.1 queues them; all answered."""
    device = _protocol_tests()

    async def handler(req: Dict[str, Any]) -> Any:
        if req["path"] == "/top/restconf/data/ietf-interfaces:interfaces":
            await asyncio.sleep(0.3)
            return 200, JSON, b'{"ietf-interfaces:interfaces": {}}'
        return await device.default_handler(req)

    h = harness()
    conn, dev = h.loop.run(device.connect(tmp_path, alpn, handler))
    h.loop.run(conn.discover_root())
    h.hold(conn)
    path = h.open("dev1")["socket_path"]
    results: List[Any] = []
    errors: List[BaseException] = []

    def task() -> None:
        try:
            results.append(get("/data/ietf-interfaces:interfaces", path))
        except BaseException as exc:  # pylint: disable=broad-except  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=task) for _task in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == [{"ietf-interfaces:interfaces": {}}] * 8
    if alpn == "h2":
        assert dev.max_in_flight > 1  # streams side by side on the one connection
    else:
        assert dev.max_in_flight == 1  # one at a time, queued
    assert not conn.is_closed
    h.loop.run(_close(conn))


async def _close(conn: Any) -> None:
    conn.close("test over")


def test_the_endpoint_operation_checks_api_and_names_a_device_that_never_called(listener_in_thread: Any) -> None:
    from netconf_callhome.errors import CallHomeError, DeviceNotFoundError

    lst = listener_in_thread()
    base = dict(device="ghost", collections_paths=PATHS, command_timeout=5)
    with pytest.raises(DeviceNotFoundError, match="'ghost' is not enrolled and has never called home"):
        lst.call("endpoint", api="restconf", wait=0.3, **base)
    with pytest.raises(CallHomeError, match="'api' must be 'netconf' or 'restconf'"):
        lst.call("endpoint", api="grpc", wait=0, **base)
    with pytest.raises(CallHomeError, match="'root_path' must be an absolute path"):
        lst.call("endpoint", api="restconf", root_path="restconf", wait=0, **base)


def test_a_device_connected_over_netconf_only_is_sent_to_the_netconf_plugin(
    listener_in_thread: Any, sim_devices: Any
) -> None:
    from netconf_callhome.errors import DeviceNotReadyError

    lst = listener_in_thread()
    sim_devices(lst, 1)
    lst.call("wait", device="sim0001", wait=20, timeout=25)
    with pytest.raises(DeviceNotReadyError, match=r"'sim0001' is connected over NETCONF \(ssh\), not RESTCONF: "
                                                  r"use the netconf.callhome.netconf connection"):
        lst.call("endpoint", device="sim0001", api="restconf", wait=5, collections_paths=PATHS, command_timeout=5)

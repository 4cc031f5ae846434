# SPDX-License-Identifier: GPL-3.0-or-later
"""plugin_utils/_handoff.py: the hand-off both call-home connection plugins share.

Each test runs through both plugins (``netconf.callhome.netconf`` and ``netconf.callhome.httpapi``),
loaded the way Ansible loads them, so what is shared behaves alike and what each plugin words its
own way keeps its wording. The listener's errors come from a real listener started in-process
(``listener_in_thread`` of tests/conftest.py); only where the test needs the exact request the
plugin sends, or an answer a current listener no longer gives, does a recording client stand in.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from ansible.errors import AnsibleConnectionFailure
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader

# tests/unit/plugins/conftest.py has set up Ansible's collection loader (the plugins come through it).

from netconf_callhome.control.client import parse_address
from netconf_callhome.errors import CallHomeError, ConfigError, DeviceNotFoundError, NotAuthorizedError, WaitTimeoutError

from ansible_collections.netconf.callhome.plugins.plugin_utils import _handoff

pytestmark = pytest.mark.timeout(60)

NETCONF = "netconf.callhome.netconf"
HTTPAPI = "netconf.callhome.httpapi"
PLUGINS = [NETCONF, HTTPAPI]
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOsTq1VbgXUOdzQ7C/2+tZxjcyq8p5SS7T9G6bhOCtZP"


def _conn(plugin: str, **var_options: Any) -> Any:
    pc = PlayContext()
    pc.remote_addr = var_options.get("inventory_hostname", "dev1")
    conn = connection_loader.get(plugin, pc, "/dev/null")
    conn.set_options(var_options=dict({"inventory_hostname": "dev1"}, **var_options))
    return conn


class RecordingClient:
    """Stands in for ControlClient: records each call and answers from ``answers`` (op -> list)."""

    def __init__(self, address: str, answers: Dict[str, List[Any]]) -> None:
        self.address = parse_address(address)
        self.token: Optional[str] = None
        self.answers = answers
        self.calls: List[Tuple[str, Dict[str, Any]]] = []

    def call(self, op: str, **kwargs: Any) -> Any:
        self.calls.append((op, kwargs))
        answer = self.answers[op].pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _with_client(conn: Any, client: RecordingClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conn, "_control_client", lambda timeout=30.0: client)


@pytest.fixture()
def listener(listener_in_thread: Any) -> Any:
    return listener_in_thread()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_both_plugins_are_the_shared_handoff_with_the_shared_options(plugin: str) -> None:
    conn = _conn(plugin)
    assert isinstance(conn, _handoff.CallHomeHandoff)
    assert conn.transport == plugin
    # options of the netconf.callhome.connection doc fragment, with their defaults
    assert conn.get_option("callhome_device") == "dev1"
    assert conn.get_option("callhome_embedded") is True
    assert conn.get_option("callhome_progress_interval") == 5
    # and the ones each plugin documents itself
    assert conn.get_option("callhome_timeout") == 300
    assert conn.get_option("callhome_idle_exit") == 900
    assert conn.get_option("network_os") == ("auto" if plugin == NETCONF else "ansible.netcommon.restconf")


@pytest.mark.parametrize("plugin", PLUGINS)
def test_shared_options_come_from_vars_and_env(plugin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETCONF_CALLHOME_TLS_CA_FILE", "/etc/ca.pem")
    monkeypatch.setenv("NETCONF_CALLHOME_EMBEDDED", "false")
    conn = _conn(plugin, callhome_device="r7", ansible_callhome_listener="tls://127.0.0.1:4339",
                 ansible_callhome_progress_interval=2)
    assert conn._device_name() == "r7"
    assert conn._listener_address() == "tls://127.0.0.1:4339" and conn._is_remote()
    assert conn.get_option("callhome_tls_ca_file") == "/etc/ca.pem"
    assert conn.get_option("callhome_embedded") is False
    assert conn.get_option("callhome_progress_interval") == 2


@pytest.mark.parametrize(
    "plugin, fields",
    [
        (NETCONF, {"network_os": "junos"}),
        (HTTPAPI, {"api": "restconf", "network_os": "vendor.x.restconf", "root_path": "/top"}),
    ],
)
def test_the_endpoint_request_and_what_it_records(plugin: str, fields: Dict[str, Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _conn(plugin, ansible_callhome_listener="unix:/nonexistent/control.sock", ansible_network_os=fields["network_os"],
                 ansible_httpapi_restconf_root="/top", ansible_command_timeout=45)
    info = {"socket_path": "/run/ep.sock", "network_os": "resolved-os", "id": "ep1"}
    client = RecordingClient("unix:/nonexistent/control.sock", {"endpoint": [info]})
    _with_client(conn, client, monkeypatch)
    assert conn.socket_path == "/run/ep.sock"
    assert conn.socket_path == "/run/ep.sock"  # asked once per task
    [(op, request)] = client.calls
    assert op == "endpoint" and request.pop("wait") == 0
    assert list(request)[: 1 + len(fields)] == ["device"] + list(fields)
    assert request["device"] == "dev1" and request["command_timeout"] == 45
    assert {k: request[k] for k in fields} == fields
    assert request["client"].endswith("/dev1") and ":" not in request["client"]  # local: no host name
    assert request["collections_paths"]
    assert conn._network_os == "resolved-os"
    assert conn._connect() is conn and conn._connected
    conn.close()
    assert not conn._connected


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_remote_listener_gets_a_relay_that_close_removes(plugin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _conn(plugin, ansible_callhome_listener="tls://127.0.0.1:4339")
    client = RecordingClient("tls://127.0.0.1:4339", {"endpoint": [{"socket_path": "/remote/ep.sock", "id": "ep1"}]})
    _with_client(conn, client, monkeypatch)
    path = conn.socket_path
    assert path != "/remote/ep.sock" and os.path.exists(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert client.calls[0][1]["client"].split(":", 1)[1].endswith("/dev1")  # host name first
    conn.close()
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_remote_endpoint_without_an_id_is_refused(plugin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _conn(plugin, ansible_callhome_listener="tls://127.0.0.1:4339")
    _with_client(conn, RecordingClient("tls://127.0.0.1:4339", {"endpoint": [{"socket_path": "/remote/ep.sock"}]}),
                 monkeypatch)
    with pytest.raises(AnsibleConnectionFailure, match="too old to serve modules over tls://127.0.0.1:4339"):
        conn._connect()


@pytest.mark.parametrize(
    "plugin, error, expected",
    [
        (NETCONF, NotAuthorizedError("bad token"), "refused the request: bad token. Set ansible_callhome_token"),
        (HTTPAPI, NotAuthorizedError("bad token"), "refused the request: bad token. Set ansible_callhome_token"),
        (NETCONF, ConfigError("boom"),
         "could not lease a NETCONF session on device dev1 from the listener at unix:/x.sock: boom (config)"),
        (HTTPAPI, ConfigError("boom"),
         "could not get the RESTCONF endpoint of device dev1 from the listener at unix:/x.sock: boom (config)"),
    ],
)
def test_the_listeners_errors_as_connection_failures(plugin: str, error: CallHomeError, expected: str) -> None:
    failure = _conn(plugin)._failure(error, "dev1", "unix:/x.sock")
    assert isinstance(failure, AnsibleConnectionFailure)
    assert expected in str(failure)


@pytest.mark.parametrize(
    "plugin, expected",
    [
        (NETCONF, "from ansible_callhome_listener / NETCONF_CALLHOME_LISTENER); start it ('callhome-listener serve')"),
        (HTTPAPI, "); start it ('callhome-listener serve --restconf ...')"),
    ],
)
def test_an_unreachable_listener_says_where_it_looked(plugin: str, expected: str, tmp_path: Path) -> None:
    sock = tmp_path / "nobody" / "control.sock"
    conn = _conn(plugin, ansible_callhome_listener="unix:%s" % sock, ansible_callhome_timeout=1)
    with pytest.raises(AnsibleConnectionFailure) as err:
        conn._connect()
    msg = str(err.value)
    assert "no call-home listener answers" in msg and "looked for it at unix:%s" % sock in msg
    assert expected in msg


@pytest.mark.parametrize("plugin", PLUGINS)
def test_an_invalid_address_is_named(plugin: str) -> None:
    conn = _conn(plugin, ansible_callhome_listener="tls://nohost")
    with pytest.raises(AnsibleConnectionFailure, match=r"invalid call-home listener address \(ansible_callhome_listener\): .*tls://HOST:PORT"):
        conn._connect()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_no_embedded_listener_when_turned_off(plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETCONF_CALLHOME_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("NETCONF_CALLHOME_LISTENER", raising=False)
    conn = _conn(plugin, ansible_callhome_embedded=False, ansible_callhome_timeout=1)
    with pytest.raises(AnsibleConnectionFailure, match="no call-home listener answers"):
        conn._connect()
    assert not (tmp_path / "h" / "spawn.lock").exists()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_unknown_device_fails_with_the_listeners_message(plugin: str, listener: Any) -> None:
    conn = _conn(plugin, inventory_hostname="nosuch", ansible_callhome_listener=listener.address,
                 ansible_callhome_timeout=1)
    with pytest.raises(AnsibleConnectionFailure) as err:
        conn._connect()
    assert "'nosuch' is not enrolled and has never called home" in str(err.value)


@pytest.mark.parametrize("plugin, credential", [(NETCONF, "its key"), (HTTPAPI, "its certificate")])
def test_describe_device_in_each_plugins_words(plugin: str, credential: str, listener: Any) -> None:
    listener.call("enroll", device="quiet1", kind="ssh_host_keys", value=SSH_KEY)
    conn = _conn(plugin, ansible_callhome_listener=listener.address)
    client = conn._control_client()
    assert conn._describe_device(client, "nosuch") == (
        "not enrolled and never seen (%s may be waiting in 'callhome-listener pending')" % credential)
    known = conn._describe_device(client, "quiet1")
    assert "last seen never from nowhere" in known
    assert (" over -," in known) == (plugin == HTTPAPI)  # RESTCONF names the transport (none yet)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_an_enrolled_device_that_never_calls_times_out(plugin: str, listener: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    listener.call("enroll", device="quiet1", kind="ssh_host_keys", value=SSH_KEY)
    conn = _conn(plugin, inventory_hostname="quiet1", ansible_callhome_listener=listener.address,
                 ansible_callhome_timeout=1)
    shown: List[str] = []
    monkeypatch.setattr(conn, "_show", lambda level, message: shown.append("%s %s" % (level, message)))
    with pytest.raises(AnsibleConnectionFailure) as err:
        conn._connect()
    assert "'quiet1' has not called home within 1 s" in str(err.value)
    assert any(line.startswith("v waiting up to 1 s for device quiet1 to call home") for line in shown), shown


@pytest.mark.parametrize("plugin", PLUGINS)
def test_progress_reports_while_the_block_waits_and_stops_after(plugin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _conn(plugin, ansible_callhome_progress_interval=1)
    client = RecordingClient("unix:/x.sock", {"device": [DeviceNotFoundError("gone")] * 10})
    reported = threading.Event()
    shown: List[str] = []

    def show(level: str, message: str) -> None:
        shown.append("%s %s" % (level, message))
        reported.set()

    monkeypatch.setattr(conn, "_show", show)
    with conn._reporting_progress(client, "dev1", 0.0):
        assert reported.wait(10), "no progress line within 10 s at a 1 s interval"
    assert shown[0].startswith("v still waiting for dev1 (")
    assert shown[0].endswith(": not enrolled and never seen (its %s may be waiting in 'callhome-listener pending')"
                             % conn._CREDENTIAL)
    watchers = [th for th in threading.enumerate() if th.name == "callhome-progress"]
    for watcher in watchers:
        watcher.join(5)
    assert not any(th.is_alive() for th in watchers), "the progress thread outlived the wait"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_device_that_calls_home_while_waited_for_is_handed_off(plugin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not there at the first ask: the plugin waits (its own way) and takes the endpoint after."""
    conn = _conn(plugin, ansible_callhome_listener="unix:/x.sock", ansible_callhome_timeout=7)
    info = {"socket_path": "/run/ep.sock", "id": "ep1"}
    client = RecordingClient("unix:/x.sock", {
        "endpoint": [WaitTimeoutError("not yet"), info],
        "device": [DeviceNotFoundError("gone")] * 5,
        "wait": [{"ready": True}],
    })
    _with_client(conn, client, monkeypatch)
    assert conn.socket_path == "/run/ep.sock"
    ops = [op for op, _kwargs in client.calls]
    # netconf waits with the 'wait' operation, then asks again; RESTCONF asks once with a wait
    assert ops[0] == "endpoint" and ops[-1] == "endpoint" and ("wait" in ops) == (plugin == NETCONF)
    assert client.calls[-1][1]["wait"] == 7.0

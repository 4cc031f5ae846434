# SPDX-License-Identifier: GPL-3.0-or-later
"""Option handling and error paths of the netconf.callhome.netconf connection plugin.

Against a real listener started in-process (the shared ``listener_in_thread`` fixture of
tests/conftest.py), not mocks: the messages an operator reads come from the listener and must
survive the plugin's mapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ansible.errors import AnsibleConnectionFailure
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader

# tests/unit/plugins/conftest.py has set up Ansible's collection loader (the plugins come through it).

from netconf_callhome.endpoints.platform import platform_from_capabilities

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def listener(listener_in_thread: Any) -> Any:
    return listener_in_thread()


def _conn(**var_options: Any) -> Any:
    pc = PlayContext()
    pc.remote_addr = var_options.get("inventory_hostname", "dev1")
    conn = connection_loader.get("netconf.callhome.netconf", pc, "/dev/null")
    conn._prewaited = True  # unit tests call _connect directly
    conn.set_options(var_options=dict({"inventory_hostname": "dev1"}, **var_options))
    return conn


def test_defaults_suit_call_home() -> None:
    conn = _conn()
    assert conn.transport == "netconf.callhome.netconf"
    assert conn.get_option("callhome_timeout") == 300  # not netcommon's 30 s connect timeout
    assert conn.get_option("callhome_embedded") is True
    assert conn.get_option("network_os") == "auto"
    assert conn.get_option("callhome_device") == "dev1"  # inventory_hostname by default
    assert conn.get_option("persistent_command_timeout") == 30


def test_vars_override_defaults() -> None:
    conn = _conn(
        callhome_device="router-7", ansible_callhome_timeout=12, ansible_callhome_listener="tls://127.0.0.1:4339",
        ansible_callhome_token="s3cret-token-0123456789", ansible_network_os="junos",
    )
    assert conn.get_option("callhome_device") == "router-7"
    assert conn.get_option("callhome_timeout") == 12
    assert conn.get_option("callhome_listener") == "tls://127.0.0.1:4339"
    assert conn.get_option("network_os") == "junos"


def test_env_sets_listener_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETCONF_CALLHOME_LISTENER", "unix:/nonexistent/control.sock")
    monkeypatch.setenv("NETCONF_CALLHOME_TOKEN", "from-env-token-0123456789")
    conn = _conn()
    assert conn.get_option("callhome_listener") == "unix:/nonexistent/control.sock"
    assert conn.get_option("callhome_token") == "from-env-token-0123456789"


def test_unreachable_listener_says_where_it_looked(tmp_path: Path) -> None:
    sock = tmp_path / "nobody" / "control.sock"
    conn = _conn(ansible_callhome_listener="unix:%s" % sock, ansible_callhome_timeout=1)
    with pytest.raises(AnsibleConnectionFailure) as err:
        conn._connect()
    msg = str(err.value)
    assert "no call-home listener answers" in msg and str(sock) in msg
    assert "ansible_callhome_listener" in msg


def test_token_never_appears_in_errors(tmp_path: Path) -> None:
    token = "very-secret-token-0123456789"
    conn = _conn(ansible_callhome_listener="unix:%s" % (tmp_path / "x.sock"), ansible_callhome_token=token)
    with pytest.raises(AnsibleConnectionFailure) as err:
        conn._connect()
    assert token not in str(err.value)
    assert all(token not in m for _level, m in conn.pop_messages())


def test_unknown_device_fails_with_enrollment_hint(listener: Any) -> None:
    conn = _conn(inventory_hostname="nosuch", ansible_callhome_listener=listener.address, ansible_callhome_timeout=1)
    with pytest.raises(AnsibleConnectionFailure) as err:
        conn._connect()
    assert "'nosuch' is not enrolled and has never called home" in str(err.value)


def test_enrolled_device_that_never_calls_times_out(listener: Any) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOsTq1VbgXUOdzQ7C/2+tZxjcyq8p5SS7T9G6bhOCtZP"
    listener.call("enroll", device="quiet1", kind="ssh_host_keys", value=key)
    conn = _conn(inventory_hostname="quiet1", ansible_callhome_listener=listener.address, ansible_callhome_timeout=1)
    with pytest.raises(AnsibleConnectionFailure) as err:
        conn._connect()
    assert "'quiet1' has not called home within 1 s" in str(err.value)


def test_worker_wait_fails_fast_with_listener_message(listener: Any) -> None:
    conn = _conn(inventory_hostname="nosuch", ansible_callhome_listener=listener.address, ansible_callhome_timeout=1)
    with pytest.raises(AnsibleConnectionFailure) as err:
        conn._wait_in_worker()
    assert "not enrolled" in str(err.value)


def test_embedded_listener_is_not_started_for_an_explicit_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETCONF_CALLHOME_HOME", str(tmp_path / "h"))
    conn = _conn(ansible_callhome_listener="unix:%s" % (tmp_path / "other.sock"), ansible_callhome_timeout=1)
    with pytest.raises(AnsibleConnectionFailure):
        conn._connect()
    assert not (tmp_path / "h" / "spawn.lock").exists()


@pytest.mark.parametrize(
    "caps, expected",
    [
        (["urn:ietf:params:netconf:base:1.1"], ("default", "default")),
        (["urn:ietf:params:netconf:base:1.0", "http://xml.juniper.net/netconf/junos/1.0"], ("junos", "junos")),
        (["http://cisco.com/ns/yang/Cisco-IOS-XR-ifmgr-cfg?module=Cisco-IOS-XR-ifmgr-cfg"], ("iosxr", "iosxr")),
        (["http://cisco.com/ns/yang/Cisco-IOS-XE-native?module=Cisco-IOS-XE-native"], ("iosxe", "iosxe")),
        (["urn:nokia.com:sros:ns:yang:sr:conf?module=nokia-conf"], ("sros", "sros")),
        (["urn:huawei:yang:huawei-ifm?module=huawei-ifm"], ("ce", "huaweiyang")),
    ],
)
def test_platform_from_hello_capabilities(caps: Any, expected: Any) -> None:
    assert tuple(platform_from_capabilities(caps)) == expected

# SPDX-License-Identifier: GPL-3.0-or-later
"""The held RESTCONF connections and the ``restconf:`` configuration (issue 11, the wiring)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from netconf_callhome.cli import _parser
from netconf_callhome.config import PORT_RESTCONF, RestconfOptions, load_config
from netconf_callhome.errors import ConfigError
from netconf_callhome.protocol.restconf import RestconfLimits, YangLibrary, YangModule, restconf_connection
from netconf_callhome.sessions.restconf_sessions import RestconfSessions, module_capabilities, restconf_limits


class Carrier:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def test_options_and_limits_have_the_same_fields_and_defaults() -> None:
    options = {f.name: f.default for f in dataclasses.fields(RestconfOptions)}
    limits = {f.name: f.default for f in dataclasses.fields(RestconfLimits)}
    assert options == limits
    assert restconf_limits(RestconfOptions()) == RestconfLimits()


def test_the_restconf_section_becomes_limits(tmp_path: Path) -> None:
    path = tmp_path / "listener.yml"
    path.write_text("restconf:\n  request_timeout: 5\n  max_body_bytes: 1048576\n")
    cfg = load_config(str(path), {"home": str(tmp_path)})
    limits = restconf_limits(cfg.restconf)
    assert limits.request_timeout == 5.0 and limits.max_body_bytes == 1 << 20
    assert limits.ping_timeout == RestconfLimits().ping_timeout


@pytest.mark.parametrize(
    "section, message",
    [
        ({"max_body_bytes": 0}, "restconf.max_body_bytes must be at least 1"),
        ({"request_timeout": -1}, "restconf.request_timeout must be positive"),
        ({"h2_stream_window": 10}, "restconf.h2_stream_window must be between 65535 and 2147483647"),
    ],
)
def test_a_bad_restconf_limit_is_a_config_error(tmp_path: Path, section: dict, message: str) -> None:
    cfg = load_config(None, {"home": str(tmp_path), "restconf": section})
    with pytest.raises(ConfigError, match=message):
        restconf_limits(cfg.restconf)


def test_unknown_restconf_option_and_binds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option.*request_timout"):
        load_config(None, {"home": str(tmp_path), "restconf": {"request_timout": 1}})
    with pytest.raises(ConfigError, match="needs tls.client_cert and tls.client_key"):
        load_config(None, {"home": str(tmp_path), "restconf_binds": ["127.0.0.1:0"]})
    with pytest.raises(ConfigError, match="invalid bind address"):
        load_config(None, {"home": str(tmp_path), "restconf_binds": ["127.0.0.1:99999"],
                           "tls": {"client_cert": "c", "client_key": "k"}})
    cfg = load_config(None, {"home": str(tmp_path)})
    assert cfg.restconf_binds == []  # off by default
    assert PORT_RESTCONF == 4336


def test_cli_restconf_bind_is_repeatable() -> None:
    args = _parser().parse_args(["serve", "--restconf", "127.0.0.1:4336", "--restconf", "[::1]"])
    assert args.restconf_binds == ["127.0.0.1:4336", "[::1]"]


def test_module_capabilities() -> None:
    lib = YangLibrary(
        modules=(
            YangModule("ietf-interfaces", "2018-02-20", "urn:ietf:params:xml:ns:yang:ietf-interfaces"),
            YangModule("example-system", "", "urn:example:system", features=("ntp", "dns")),
            YangModule("ietf-yang-types", "2013-07-15", "urn:ietf:params:xml:ns:yang:ietf-yang-types",
                       implemented=False),
        ),
        source="yang-library",
    )
    assert module_capabilities(lib) == [
        "urn:ietf:params:xml:ns:yang:ietf-interfaces?module=ietf-interfaces&revision=2018-02-20",
        "urn:example:system?module=example-system&features=ntp,dns",
    ]
    assert module_capabilities(None) == []


def test_one_connection_per_device() -> None:
    async def scenario() -> None:
        sessions = RestconfSessions()
        first = restconf_connection("http/1.1", device="r1", peer="192.0.2.1:1")
        second = restconf_connection("h2", device="r1", peer="192.0.2.1:2")
        for conn in (first, second):
            conn.attach(Carrier())
        assert sessions.hold(first, ["dns:r1"]) is None
        assert "r1" in sessions and sessions.get("r1") is first and sessions.identities("r1") == ["dns:r1"]
        assert sessions.hold(second) is first  # the caller closes the one replaced
        assert not sessions.release(first)  # a replaced connection is not the device's any more
        assert sessions.get("r1") is second and len(sessions) == 1
        second.close("gone")
        assert "r1" not in sessions  # closed: not connected, though not yet released
        assert sessions.release(second) and len(sessions) == 0

        third = restconf_connection("http/1.1", device="r2", peer="192.0.2.2:1")
        third.attach(Carrier())
        sessions.hold(third)
        sessions.close_all("listener stopping")
        assert third.is_closed and third.closed.result() == "listener stopping"

    asyncio.run(scenario())

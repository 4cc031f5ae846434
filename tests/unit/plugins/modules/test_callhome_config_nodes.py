# SPDX-License-Identifier: GPL-3.0-or-later
"""The device-side alternative to a load balancer (issue 12, docs/scale-out.md): one
``netconf.callhome.config`` entry whose endpoints are the listener nodes, in order, with a
reconnect strategy (``start-with``, ``max-wait``, ``max-attempts``), so the device moves to the
next node when one is down. Built for every supported revision and validated against the real
ietf-netconf-server YANG module (the schema checker of test_callhome_config_yang)."""

from __future__ import annotations

import importlib.util
import typing as t
from pathlib import Path

import pytest
from lxml import etree

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config import ietf
from netconf_callhome.errors import ConfigError
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.model import from_params
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.revision import PROFILES

NS = {"n": "urn:ietf:params:xml:ns:yang:ietf-netconf-server"}
NODES = [("node-a", "192.0.2.11"), ("node-b", "192.0.2.12"), ("node-c", "2001:db8::13")]


def params(**extra: t.Any) -> t.Dict[str, t.Any]:
    base: t.Dict[str, t.Any] = {
        "name": "nms",
        "endpoints": [{"name": name, "address": address, "port": 4334} for name, address in NODES],
        "ssh": {"host_key_reference": "genkey", "username": "netconf"},
        "start_with": "first-listed",
        "max_attempts": 2,
    }
    base.update(extra)
    return base


def _yang_checker() -> t.Any:
    """test_callhome_config_yang's Schema (pyang), loaded from its file: tests are not a package."""
    path = Path(__file__).with_name("test_callhome_config_yang.py")
    spec = importlib.util.spec_from_file_location("_callhome_config_yang", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("revision", sorted(PROFILES))
@pytest.mark.parametrize("start_with", ["first-listed", "last-connected", "random-selection"])
def test_one_endpoint_per_node_in_order_with_the_reconnect_strategy(revision: str, start_with: str) -> None:
    profile = PROFILES[revision]
    extra: t.Dict[str, t.Any] = {"start_with": start_with}
    if profile.has_reconnect_max_wait:
        extra["max_wait"] = 5
    entry = ietf.build_client(from_params(params(**extra)), profile)
    endpoints = entry.xpath("n:endpoints/n:endpoint", namespaces=NS)
    assert [e.findtext("n:name", namespaces=NS) for e in endpoints] == [n for n, _a in NODES]  # the order is the order tried
    assert [e.findtext(".//n:remote-address", namespaces=NS) for e in endpoints] == [a for _n, a in NODES]
    strategy = entry.find("n:reconnect-strategy", namespaces=NS)
    assert strategy is not None
    children = {etree.QName(c).localname: c.text for c in strategy}
    assert children["start-with"] == start_with and children["max-attempts"] == "2"
    assert children.get("max-wait") == ("5" if profile.has_reconnect_max_wait else None)
    assert entry.find("n:connection-type/n:persistent", namespaces=NS) is not None


def test_max_wait_is_refused_where_the_revision_has_none() -> None:
    old = [r for r, p in PROFILES.items() if not p.has_reconnect_max_wait]
    if not old:
        pytest.fail("every revision has max-wait: this test lost its subject")
    with pytest.raises(ConfigError, match="max-wait"):
        ietf.build_client(from_params(params(max_wait=5)), PROFILES[old[0]])


def test_bad_reconnect_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="start_with"):
        from_params(params(start_with="round-robin"))
    with pytest.raises(ConfigError, match="max_attempts"):
        from_params(params(max_attempts=0))


def test_the_nodes_entry_is_valid_ietf_netconf_server() -> None:
    yang = _yang_checker()
    schema = yang.Schema("ietf-netconf-server@2023-12-28.yang")
    entry = ietf.build_client(
        from_params(params(start_with="random-selection", max_wait=5, max_attempts=3)), PROFILES["2023-12-28"]
    )
    problems = schema.validate(yang.top_of(ietf.wrap_config(entry, name="nms")))
    assert problems == [], "\n".join(problems)

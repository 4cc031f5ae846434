# SPDX-License-Identifier: GPL-3.0-or-later
"""netconf.callhome.registry: source file names and record selection (statuses, jmespath filter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest

from ansible.plugins.loader import inventory_loader

# tests/unit/plugins/conftest.py has set up Ansible's collection loader (the plugins come through it).

RECORDS: List[Dict[str, Any]] = [
    {"name": "edge1", "status": "connected", "transport": "ssh", "capabilities": ["http://xml.juniper.net/junos"]},
    {"name": "edge2", "status": "key-mismatch", "transport": "ssh", "capabilities": []},
    {"name": "core1", "status": "connected", "transport": "tls", "capabilities": []},
]


def _plugin(**options: Any) -> Any:
    plugin = inventory_loader.get("netconf.callhome.registry")
    plugin.set_options(direct=dict({"plugin": "netconf.callhome.registry"}, **options))
    return plugin


def test_verify_file_needs_callhome_suffix(tmp_path: Path) -> None:
    plugin = inventory_loader.get("netconf.callhome.registry")
    good = tmp_path / "fleet.callhome.yml"
    bad = tmp_path / "fleet.yml"
    good.write_text("plugin: netconf.callhome.registry\n")
    bad.write_text("plugin: netconf.callhome.registry\n")
    assert plugin.verify_file(str(good))
    assert not plugin.verify_file(str(bad))


def test_statuses_select() -> None:
    names = [r["name"] for r in _plugin(statuses=["connected"])._selected(RECORDS)]
    assert names == ["edge1", "core1"]


def test_jmespath_filter_and_platform() -> None:
    pytest.importorskip("jmespath", reason="the filter option needs jmespath")
    chosen = _plugin(filter="transport == 'ssh' && platform == 'junos'")._selected(RECORDS)
    assert [r["name"] for r in chosen] == ["edge1"]


def test_bad_filter_is_a_parser_error() -> None:
    pytest.importorskip("jmespath", reason="the filter option needs jmespath")
    from ansible.errors import AnsibleParserError

    with pytest.raises(AnsibleParserError):
        _plugin(filter="transport ==")._selected(RECORDS)

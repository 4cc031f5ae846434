# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Inventory plugin netconf.callhome.registry: hosts from the call-home listener's registry."""

from __future__ import annotations

DOCUMENTATION = r"""
name: registry
short_description: Inventory of the devices the call-home listener knows
version_added: 1.0.0
description:
  - Builds the inventory from the call-home listener's registry, so that a rollout can target
    "everything that called home".
  - Each device becomes a host with C(ansible_connection=netconf.callhome.netconf) and
    C(callhome_device) set, and host variables C(callhome_status), C(callhome_transport),
    C(callhome_peer), C(callhome_fingerprint), C(callhome_capabilities), C(callhome_platform),
    C(callhome_last_seen), C(callhome_enrolled) (the whole record is C(callhome)).
  - Hosts are grouped by status (C(callhome_connected), C(callhome_disconnected), ...),
    transport (C(callhome_ssh), C(callhome_tls)) and platform derived from the capabilities
    (C(callhome_platform_junos), C(callhome_platform_default), ...).
  - The inventory source is a YAML file whose name ends in C(.callhome.yml) or C(.callhome.yaml).
author:
  - netconf.callhome developers (@netconf-callhome)
requirements:
  - the netconf-callhome Python package (C(pip install netconf-callhome))
  - jmespath (only for O(filter))
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: Marks this file as a source for this plugin.
    required: true
    type: str
    choices: [netconf.callhome.registry]
  listener:
    description:
      - Address of the listener's control endpoint, V(unix:/path/control.sock) or V(tls://HOST:PORT).
      - Defaults to the local default control socket.
    type: str
    env:
      - name: NETCONF_CALLHOME_LISTENER
  token:
    description: Token for a remote (V(tls://)) listener.
    type: str
    env:
      - name: NETCONF_CALLHOME_TOKEN
  tls_ca_file:
    description: CA certificate file that verifies a remote listener's TLS certificate.
    type: path
  statuses:
    description:
      - Only devices with one of these statuses; empty means all.
    type: list
    elements: str
    default: []
  filter:
    description:
      - A jmespath expression evaluated on each device record (the listener's fields plus
        C(platform)); the device is included when the result is true.
      - 'Example: V(status == ''connected'' && transport == ''ssh'').'
    type: str
  group_prefix:
    description: Prefix of the status, transport and platform groups.
    type: str
    default: callhome_
  strict:
    description: Fail on errors in O(compose), O(groups) and O(keyed_groups) expressions.
    type: bool
    default: false
"""

EXAMPLES = r"""
# inventory/fleet.callhome.yml: every device that holds a session now
plugin: netconf.callhome.registry
statuses: [connected]
keyed_groups:
  - key: callhome_platform
    prefix: os
compose:
  ansible_network_os: callhome_platform

# inventory/ssh.callhome.yml: remote listener, jmespath filter
plugin: netconf.callhome.registry
listener: tls://callhome.example.net:4339
filter: "transport == 'ssh' && starts_with(name, 'edge')"
"""

import typing as t

from ansible.errors import AnsibleError, AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import (
    HAS_NETCONF_CALLHOME,
    NetconfCallhomeMissing,
    missing_netconf_callhome_msg,
)
from ansible_collections.netconf.callhome.plugins.plugin_utils.platform import platform_from_capabilities

try:
    from netconf_callhome.control.api import listener_address
    from netconf_callhome.control.client import ControlClient
    from netconf_callhome.errors import CallHomeError
except ImportError:  # parse() reports it; the plugin still loads for ansible-doc and verify_file
    CallHomeError = NetconfCallhomeMissing

try:
    from ansible.utils.unsafe_proxy import wrap_var as make_unsafe
except ImportError:  # pragma: no cover
    def make_unsafe(value: t.Any) -> t.Any:  # type: ignore[misc]
        return value

try:
    import jmespath

    HAS_JMESPATH = True
except ImportError:
    HAS_JMESPATH = False

CONNECTION = "netconf.callhome.netconf"
_DEVICE_DATA = frozenset(("callhome", "callhome_capabilities"))


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "netconf.callhome.registry"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith((".callhome.yml", ".callhome.yaml"))

    def parse(self, inventory: t.Any, loader: t.Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        if not HAS_NETCONF_CALLHOME:
            raise AnsibleParserError("netconf.callhome.registry: %s" % missing_netconf_callhome_msg())
        try:
            client = ControlClient(
                listener_address(self.get_option("listener")),
                token=self.get_option("token") or None,
                tls_ca_file=self.get_option("tls_ca_file") or None,
            )
            records = client.call("devices")
        except CallHomeError as exc:
            raise AnsibleParserError("netconf.callhome.registry: %s" % exc.message) from None
        self._populate(records or [])

    def _selected(self, records: t.List[t.Dict[str, t.Any]]) -> t.List[t.Dict[str, t.Any]]:
        statuses = set(self.get_option("statuses") or [])
        expression = self.get_option("filter")
        compiled = None
        if expression:
            if not HAS_JMESPATH:
                raise AnsibleError("netconf.callhome.registry: the 'filter' option needs the jmespath library")
            try:
                compiled = jmespath.compile(expression)
            except jmespath.exceptions.JMESPathError as exc:
                raise AnsibleParserError("netconf.callhome.registry: invalid filter %r: %s" % (expression, exc)) from None
        out = []
        for rec in records:
            rec = dict(rec)
            rec["platform"] = platform_from_capabilities(rec.get("capabilities") or []).network_os
            if statuses and rec.get("status") not in statuses:
                continue
            if compiled is not None and not compiled.search(rec):
                continue
            out.append(rec)
        return out

    def _populate(self, records: t.List[t.Dict[str, t.Any]]) -> None:
        prefix = self.get_option("group_prefix")
        strict = self.get_option("strict")
        for rec in self._selected(records):
            name = str(rec.get("name") or "")
            if not name:
                continue
            host = self.inventory.add_host(name)
            hostvars = {
                "ansible_connection": CONNECTION,
                "callhome_device": name,
                "callhome": rec,
                "callhome_status": rec.get("status"),
                "callhome_transport": rec.get("transport") or "",
                "callhome_peer": rec.get("peer") or "",
                "callhome_fingerprint": rec.get("fingerprint") or "",
                "callhome_capabilities": rec.get("capabilities") or [],
                "callhome_platform": rec["platform"],
                "callhome_last_seen": rec.get("last_seen"),
                "callhome_enrolled": rec.get("enrolled"),
            }
            for key, value in hostvars.items():
                # what the device itself sent (capabilities, errors) is never templated
                self.inventory.set_variable(host, key, make_unsafe(value) if key in _DEVICE_DATA else value)
            for group in (
                "%s%s" % (prefix, _safe(str(rec.get("status") or "unknown"))),
                "%s%s" % (prefix, _safe(str(rec.get("transport")))) if rec.get("transport") else None,
                "%splatform_%s" % (prefix, _safe(rec["platform"])),
            ):
                if group:
                    self.inventory.add_group(group)
                    self.inventory.add_child(group, host)
            variables = self.inventory.get_host(host).get_vars()
            self._set_composite_vars(self.get_option("compose"), variables, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), variables, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, host, strict=strict)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)

# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Junos ``system services outbound-ssh client`` XML (Juniper's pre-RFC 8071 call home).

**PRIVATE** to the collection. The CLI form is::

    system services outbound-ssh client <client-id> {
        device-id <id>; secret <secret>; services netconf;
        keep-alive { retry <n>; timeout <s>; }
        reconnect-strategy (sticky | in-order);
        <address> port <port>;
    }

and Junos' XML API renders configuration statements as elements under ``<configuration>``
(no namespace), list entries keyed by ``<name>``. Junos stores the secret encrypted
(``$9$...``), so it is never part of the idempotence comparison. The exact XML was written from
Juniper's outbound-ssh documentation and has not been checked against a real Junos box.
"""

from __future__ import annotations

import typing as t

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.lxml_support import etree, require_lxml
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.model import CallHomeClient
from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import NetconfCallhomeMissing

try:
    from netconf_callhome.errors import ConfigError
except ImportError:  # the module using this reports it (HAS_NETCONF_CALLHOME)
    ConfigError = NetconfCallhomeMissing  # type: ignore[misc,assignment]

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
#: Leaves the device rewrites (hashes), left out when comparing running with wanted.
VOLATILE = ("secret",)


def _sub(parent: etree._Element, tag: str, text: t.Optional[t.Any] = None) -> etree._Element:
    el = etree.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def build_client(client: CallHomeClient) -> etree._Element:
    """The ``<client>`` entry of outbound-ssh."""
    require_lxml()
    if client.junos is None or not client.junos.device_id:
        raise ConfigError("Junos outbound-ssh needs junos.device_id (the DEVICE-ID the device announces)")
    if any(ep.transport != "ssh" for ep in client.endpoints):
        raise ConfigError("Junos outbound-ssh only carries SSH; remove the TLS endpoints")
    junos = client.junos
    root = etree.Element("client")
    _sub(root, "name", client.name)
    _sub(root, "device-id", junos.device_id)
    if junos.secret:
        _sub(root, "secret", junos.secret)
    if junos.keep_alive_retry is not None or junos.keep_alive_timeout is not None:
        ka = _sub(root, "keep-alive")
        if junos.keep_alive_retry is not None:
            _sub(ka, "retry", junos.keep_alive_retry)
        if junos.keep_alive_timeout is not None:
            _sub(ka, "timeout", junos.keep_alive_timeout)
    if junos.reconnect_strategy:
        _sub(root, "reconnect-strategy", junos.reconnect_strategy)
    _sub(root, "services", "netconf")
    for ep in client.endpoints:
        address = _sub(root, "address")
        _sub(address, "name", ep.address)
        _sub(address, "port", ep.port)
    return root


def _path(parent: etree._Element) -> etree._Element:
    return _sub(_sub(_sub(parent, "system"), "services"), "outbound-ssh")


def wrap_config(client_el: t.Optional[etree._Element], *, name: str, operation: str = "merge") -> etree._Element:
    """``<config><configuration>...`` for edit-config; ``operation`` as in the ietf builder
    (Junos has no ``remove``: absent uses ``delete``, sent only when the entry exists)."""
    config = etree.Element("{%s}config" % NC_NS, nsmap={"nc": NC_NS})
    outbound = _path(_sub(config, "configuration"))
    if operation == "remove" or client_el is None:
        entry = _sub(outbound, "client")
        _sub(entry, "name", name)
        entry.set("{%s}operation" % NC_NS, "delete")
        return config
    entry = etree.fromstring(etree.tostring(client_el))
    outbound.append(entry)
    if operation != "merge":
        entry.set("{%s}operation" % NC_NS, operation)
    return config


def running_filter(name: str) -> etree._Element:
    flt = etree.Element("filter", type="subtree")
    entry = _sub(_path(_sub(flt, "configuration")), "client")
    _sub(entry, "name", name)
    return flt


def find_client(data: t.Union[str, bytes, etree._Element, None], name: str) -> t.Optional[etree._Element]:
    if data is None:
        return None
    if isinstance(data, etree._Element):
        root = data
    else:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        root = etree.fromstring(raw, etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True))
    for entry in root.iter():
        if not isinstance(entry.tag, str) or etree.QName(entry).localname != "client":
            continue
        parent = entry.getparent()
        if parent is None or etree.QName(parent).localname != "outbound-ssh":
            continue
        for child in entry:
            if isinstance(child.tag, str) and etree.QName(child).localname == "name" and (child.text or "").strip() == name:
                return entry
    return None


__all__ = ("VOLATILE", "build_client", "find_client", "running_filter", "wrap_config")

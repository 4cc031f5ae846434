# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""ietf-netconf-server call-home XML, per supported revision.

**PRIVATE** to the collection. Nodes that come from groupings (tcp-client, ssh-server,
tls-server, cert-to-name) take the namespace of the module that uses them, so everything is in
the ietf-netconf-server namespace except identity values (``ct:ssh-public-key-format``,
``x509c2n:specified``), which carry their own prefix declaration. Element order follows the
YANG so that strict servers (libyang) and a plain text diff both see what they expect.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.lxml_support import etree, require_lxml
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.model import CallHomeClient, Endpoint
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.revision import NCS_NS, RCS_NS, Profile
from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import NetconfCallhomeMissing

try:
    from netconf_callhome.errors import ConfigError
except ImportError:  # the module using this reports it (HAS_NETCONF_CALLHOME)
    ConfigError = NetconfCallhomeMissing  # type: ignore[misc,assignment]

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
CT_NS = "urn:ietf:params:xml:ns:yang:ietf-crypto-types"
X509C2N_NS = "urn:ietf:params:xml:ns:yang:ietf-x509-cert-to-name"


@dataclass(frozen=True)
class Schema:
    """Where a call-home client entry lives: ``/<top>/call-home/<entry>[name]`` in ``ns``."""

    ns: str
    top: str
    entry: str


NETCONF = Schema(NCS_NS, "netconf-server", "netconf-client")
RESTCONF = Schema(RCS_NS, "restconf-server", "restconf-client")


def _q(tag: str, ns: str = NCS_NS) -> str:
    return "{%s}%s" % (ns, tag)


def _sub(parent: etree._Element, tag: str, text: t.Optional[t.Any] = None) -> etree._Element:
    """A child in its parent's namespace: every node of a call-home entry is in the namespace of
    the module that uses the groupings (ietf-netconf-server or ietf-restconf-server)."""
    el = etree.SubElement(parent, _q(tag, etree.QName(parent).namespace or NCS_NS))
    if text is not None:
        el.text = str(text)
    return el


def _identity(parent: etree._Element, tag: str, ns: str, prefix: str, name: str) -> etree._Element:
    el = etree.SubElement(parent, _q(tag, etree.QName(parent).namespace or NCS_NS), nsmap={prefix: ns})
    el.text = "%s:%s" % (prefix, name)
    return el


def _tcp(parent: etree._Element, ep: Endpoint) -> None:
    tcp = _sub(parent, "tcp-client-parameters")
    _sub(tcp, "remote-address", ep.address)
    _sub(tcp, "remote-port", ep.port)
    if ep.tcp_keepalives is not None:
        ka = _sub(tcp, "keepalives")
        _sub(ka, "idle-time", ep.tcp_keepalives.idle_time)
        _sub(ka, "max-probes", ep.tcp_keepalives.max_probes)
        _sub(ka, "probe-interval", ep.tcp_keepalives.probe_interval)


def _ssh(parent: etree._Element, client: CallHomeClient, profile: Profile) -> None:
    ssh = client.ssh
    if ssh is None:
        raise ConfigError("client %r has an ssh endpoint but no ssh settings" % client.name)
    params = _sub(parent, "ssh-server-parameters")
    host_key = _sub(_sub(params, "server-identity"), "host-key")
    _sub(host_key, "name", ssh.host_key_name)
    _sub(_sub(host_key, "public-key"), profile.keystore_leaf, ssh.host_key_reference)
    user = _sub(_sub(_sub(params, "client-authentication"), "users"), "user")
    _sub(user, "name", ssh.username)
    if profile.ssh_user_keys == "inline-definition":
        if ssh.client_keys:
            inline = _sub(_sub(user, "public-keys"), "inline-definition")
            for key in ssh.client_keys:
                entry = _sub(inline, "public-key")
                _sub(entry, "name", key.name)
                _identity(entry, "public-key-format", CT_NS, "ct", "ssh-public-key-format")
                _sub(entry, "public-key", key.base64)
    else:  # 2019 drafts: list authorized-key {name; algorithm; key-data}
        for key in ssh.client_keys:
            entry = _sub(user, "authorized-key")
            _sub(entry, "name", key.name)
            _sub(entry, "algorithm", key.algorithm)
            _sub(entry, "key-data", key.base64)
    if ssh.keepalive_max_wait is not None or ssh.keepalive_max_attempts is not None:
        ka = _sub(params, "keepalives")
        if ssh.keepalive_max_wait is not None:
            _sub(ka, "max-wait", ssh.keepalive_max_wait)
        if ssh.keepalive_max_attempts is not None:
            _sub(ka, "max-attempts", ssh.keepalive_max_attempts)


def _tls(parent: etree._Element, client: CallHomeClient, profile: Profile) -> None:
    tls_server_parameters(parent, client)
    cert_to_name(_sub(parent, "netconf-server-parameters"), client)


def tls_server_parameters(parent: etree._Element, client: CallHomeClient) -> None:
    """``tls-server-parameters`` (ietf-tls-server grouping, central key/trust store references)."""
    tls = client.tls
    if tls is None:
        raise ConfigError("client %r has a tls endpoint but no tls settings" % client.name)
    params = _sub(parent, "tls-server-parameters")
    ref = _sub(_sub(_sub(params, "server-identity"), "certificate"), "central-keystore-reference")
    _sub(ref, "asymmetric-key", tls.server_key_reference)
    _sub(ref, "certificate", tls.server_certificate_reference)
    auth = _sub(params, "client-authentication")
    if tls.ca_certs_reference:
        _sub(_sub(auth, "ca-certs"), "central-truststore-reference", tls.ca_certs_reference)
    if tls.ee_certs_reference:
        _sub(_sub(auth, "ee-certs"), "central-truststore-reference", tls.ee_certs_reference)


def cert_to_name(server_parameters: etree._Element, client: CallHomeClient) -> None:
    """``client-identity-mappings`` (RFC 7407 cert-to-name) under ``server_parameters``
    (netconf-server-parameters or restconf-server-parameters)."""
    tls = client.tls
    if tls is None:
        raise ConfigError("client %r has a tls endpoint but no tls settings" % client.name)
    mappings = _sub(server_parameters, "client-identity-mappings")
    for m in tls.cert_to_name:
        ctn = _sub(mappings, "cert-to-name")
        _sub(ctn, "id", m.id)
        if m.fingerprint:
            _sub(ctn, "fingerprint", m.fingerprint)
        _identity(ctn, "map-type", X509C2N_NS, "x509c2n", m.map_type)
        if m.name:
            _sub(ctn, "name", m.name)


def check_supported(client: CallHomeClient, profile: Profile) -> None:
    """Refuse parameters the revision has no node for, instead of silently dropping them."""
    if "tls" in client.transports and not profile.supports_tls:
        raise ConfigError(
            "TLS call-home endpoints are only written for ietf-netconf-server revisions with "
            "central-keystore-reference (2023-12-28 and later); the device implements %s" % profile.revision
        )
    if client.max_wait is not None and not profile.has_reconnect_max_wait:
        raise ConfigError(
            "reconnect-strategy/max-wait does not exist in ietf-netconf-server revision %s; drop max_wait" % profile.revision
        )


def build_client(client: CallHomeClient, profile: Profile) -> etree._Element:
    """The ``netconf-client`` list entry (ncs namespace) for ``client`` in ``profile``'s shape."""
    require_lxml()
    if client.protocol != "netconf":
        raise ConfigError("client %r is a %s call-home client, not a NETCONF one" % (client.name, client.protocol))
    check_supported(client, profile)
    root = etree.Element(_q("netconf-client"), nsmap={None: NCS_NS})
    _sub(root, "name", client.name)
    endpoints = _sub(root, "endpoints")
    for ep in client.endpoints:
        endpoint = _sub(endpoints, "endpoint")
        _sub(endpoint, "name", ep.name)
        transport = _sub(endpoint, ep.transport)
        _tcp(transport, ep)
        if ep.transport == "ssh":
            _ssh(transport, client, profile)
        else:
            _tls(transport, client, profile)
    connection_and_reconnect(root, client)
    return root


def connection_and_reconnect(root: etree._Element, client: CallHomeClient) -> None:
    """``connection-type`` and ``reconnect-strategy``: the same nodes in both server modules."""
    conn = _sub(root, "connection-type")
    if client.connection_type == "persistent":
        _sub(conn, "persistent")
    else:
        periodic = _sub(conn, "periodic")
        if client.period is not None:
            _sub(periodic, "period", client.period)
        if client.anchor_time:
            _sub(periodic, "anchor-time", client.anchor_time)
        if client.idle_timeout is not None:
            _sub(periodic, "idle-timeout", client.idle_timeout)
    if client.start_with or client.max_wait is not None or client.max_attempts is not None:
        strategy = _sub(root, "reconnect-strategy")
        if client.start_with:
            _sub(strategy, "start-with", client.start_with)
        if client.max_wait is not None:
            _sub(strategy, "max-wait", client.max_wait)
        if client.max_attempts is not None:
            _sub(strategy, "max-attempts", client.max_attempts)


def wrap_config(client_el: t.Optional[etree._Element], *, name: str, operation: str = "merge",
                sole_entry: bool = False, schema: Schema = NETCONF) -> etree._Element:
    """``<config>`` for edit-config. ``operation`` goes on the netconf-client entry:
    merge (present), replace (replaced) or remove (absent; then ``client_el`` may be None).

    ``sole_entry`` (with remove): the entry is the only netconf-client, so the whole ``call-home``
    container is removed instead. ``call-home`` is a presence container whose ``netconf-client``
    list has ``min-elements 1``: removing its last entry alone leaves an invalid configuration,
    which strict servers refuse (libnetconf2-based ones do).
    """
    config = etree.Element("{%s}config" % NC_NS, nsmap={"nc": NC_NS})
    server = etree.SubElement(config, _q(schema.top, schema.ns), nsmap={None: schema.ns})
    call_home = _sub(server, "call-home")
    if (operation == "remove" or client_el is None) and sole_entry:
        call_home.set("{%s}operation" % NC_NS, "remove")
        return config
    if operation == "remove" or client_el is None:
        entry = _sub(call_home, schema.entry)
        _sub(entry, "name", name)
    else:
        entry = _copy(client_el)
        call_home.append(entry)
    if operation != "merge":
        entry.set("{%s}operation" % NC_NS, operation)
    return config


def _filter() -> etree._Element:
    # <filter> in the NETCONF base namespace: ncclient sends a filter it is given as it is, and
    # strict servers (libnetconf2/libyang) refuse an unqualified one ("Missing XML namespace").
    return etree.Element("{%s}filter" % NC_NS, {"type": "subtree"}, nsmap={"nc": NC_NS})


def running_filter(name: str, schema: Schema = NETCONF) -> etree._Element:
    """Subtree filter selecting one call-home client entry of the running configuration."""
    flt = _filter()
    server = etree.SubElement(flt, _q(schema.top, schema.ns), nsmap={None: schema.ns})
    entry = _sub(_sub(server, "call-home"), schema.entry)
    _sub(entry, "name", name)
    return flt


def client_names_filter(schema: Schema = NETCONF) -> etree._Element:
    """Subtree filter selecting the names of every call-home client entry (is an entry the last?)."""
    flt = _filter()
    server = etree.SubElement(flt, _q(schema.top, schema.ns), nsmap={None: schema.ns})
    _sub(_sub(_sub(server, "call-home"), schema.entry), "name")
    return flt


def client_names(data: t.Union[str, bytes, etree._Element, None], schema: Schema = NETCONF) -> t.List[str]:
    """Names of the call-home client entries under call-home in a get-config reply."""
    if data is None:
        return []
    root = data if isinstance(data, etree._Element) else _parse(data)
    return [
        (entry.findtext(_q("name", schema.ns)) or "").strip()
        for entry in root.iter(_q(schema.entry, schema.ns))
        if entry.getparent() is not None and entry.getparent().tag == _q("call-home", schema.ns)
    ]


def find_client(data: t.Union[str, bytes, etree._Element, None], name: str,
                schema: Schema = NETCONF) -> t.Optional[etree._Element]:
    """The call-home client entry named ``name`` in a get-config reply, or None."""
    if data is None:
        return None
    root = data if isinstance(data, etree._Element) else _parse(data)
    for entry in root.iter(_q(schema.entry, schema.ns)):
        if (entry.findtext(_q("name", schema.ns)) or "").strip() == name:
            return entry
    return None


def _parse(data: t.Union[str, bytes]) -> etree._Element:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)
    return etree.fromstring(raw, parser)


def _copy(el: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(el))


def to_text(el: t.Optional[etree._Element]) -> str:
    """Pretty XML for diffs and results, with the entry's namespace as the default one (devices
    return their own prefixes; a diff should show configuration changes, not prefix changes)."""
    if el is None:
        return ""
    return etree.tostring(_rebuild(el, None), pretty_print=True).decode("utf-8")


def _rebuild(el: etree._Element, parent: t.Optional[etree._Element]) -> etree._Element:
    if parent is None:
        new = etree.Element(el.tag, nsmap={None: etree.QName(el).namespace} if etree.QName(el).namespace else None)
    else:
        new = etree.SubElement(parent, el.tag)
    for key, value in el.attrib.items():
        if key != "{%s}operation" % NC_NS:
            new.set(key, value)
    kids = [c for c in el if isinstance(c.tag, str)]
    if not kids and el.text and el.text.strip():
        text = el.text.strip()
        prefix = text.split(":", 1)[0] if text.count(":") == 1 else None
        if prefix and prefix in el.nsmap and prefix not in new.nsmap:
            # Keep the identity's prefix declared (lxml has no API to add one in place).
            replacement = etree.Element(el.tag, nsmap={prefix: el.nsmap[prefix]})
            if parent is not None:
                parent.replace(new, replacement)
            new = replacement
        new.text = text
    for child in kids:
        _rebuild(child, new)
    return new


__all__ = (
    "NETCONF",
    "RESTCONF",
    "Schema",
    "build_client",
    "cert_to_name",
    "check_supported",
    "connection_and_reconnect",
    "client_names",
    "client_names_filter",
    "find_client",
    "running_filter",
    "tls_server_parameters",
    "to_text",
    "wrap_config",
)

# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""ietf-restconf-server call-home XML (RFC 8071 RESTCONF call home), per supported revision.

**PRIVATE** to the collection. ``/restconf-server/call-home/restconf-client[name]``: each
endpoint is the ``https`` case of ``restconf-server-callhome-stack-grouping`` with its four
layers, in the order the YANG lists them: ``tcp-client-parameters`` (the listener's address and
port; 4336 when unset), ``tls-server-parameters`` (the device's certificate and how it checks the
listener's), ``http-server-parameters`` (``server-name``, local users for HTTP basic
authentication) and ``restconf-server-parameters`` (cert-to-name: which RESTCONF user the
listener's certificate maps to). Nodes from the groupings take ietf-restconf-server's namespace,
as for ietf-netconf-server (:mod:`.ietf`, whose layer builders this module reuses).
"""

from __future__ import annotations

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.ietf import (
    _sub,
    _tcp,
    cert_to_name,
    connection_and_reconnect,
    tls_server_parameters,
)
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.lxml_support import etree, require_lxml
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.model import CallHomeClient
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.revision import RCS_NS, RestconfProfile
from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import NetconfCallhomeMissing

try:
    from netconf_callhome.errors import ConfigError
except ImportError:  # the module using this reports it (HAS_NETCONF_CALLHOME)
    ConfigError = NetconfCallhomeMissing  # type: ignore[misc,assignment]


def check_supported(client: CallHomeClient, profile: RestconfProfile) -> None:
    """Refuse what the RESTCONF model has no node for, instead of silently dropping it."""
    if client.protocol != "restconf":
        raise ConfigError("client %r is a %s call-home client, not a RESTCONF one" % (client.name, client.protocol))
    others = sorted(client.transports - {"https"})
    if others:
        raise ConfigError("RESTCONF call home runs over https only; endpoints with %s belong to protocol: netconf"
                          % ", ".join(others))
    if client.max_wait is not None and not profile.has_reconnect_max_wait:
        raise ConfigError("reconnect-strategy/max-wait does not exist in ietf-restconf-server revision %s; drop max_wait"
                          % profile.revision)


def _http(parent: etree._Element, client: CallHomeClient) -> None:
    """``http-server-parameters``: present only with something to say (both children are optional)."""
    rc = client.restconf
    if rc is None or (rc.server_name is None and not rc.users):
        return
    params = _sub(parent, "http-server-parameters")
    if rc.server_name is not None:
        _sub(params, "server-name", rc.server_name)
    if rc.users:
        users = _sub(_sub(params, "client-authentication"), "users")
        for user in rc.users:
            entry = _sub(users, "user")
            _sub(entry, "user-id", user.user_id)
            basic = _sub(entry, "basic")
            if user.username is not None:
                _sub(basic, "username", user.username)
            if user.hashed_password is not None:
                _sub(_sub(basic, "password"), "hashed-password", user.hashed_password)


def build_client(client: CallHomeClient, profile: RestconfProfile) -> etree._Element:
    """The ``restconf-client`` list entry (ietf-restconf-server namespace) for ``client``."""
    require_lxml()
    check_supported(client, profile)
    root = etree.Element("{%s}restconf-client" % RCS_NS, nsmap={None: RCS_NS})
    _sub(root, "name", client.name)
    endpoints = _sub(root, "endpoints")
    for ep in client.endpoints:
        endpoint = _sub(endpoints, "endpoint")
        _sub(endpoint, "name", ep.name)
        https = _sub(endpoint, "https")
        _tcp(https, ep)
        tls_server_parameters(https, client)
        _http(https, client)
        cert_to_name(_sub(https, "restconf-server-parameters"), client)
    connection_and_reconnect(root, client)
    return root


__all__ = ("build_client", "check_supported")

# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which platform a device runs, from the capabilities of its NETCONF hello.

**PRIVATE** to the collection. netcommon's ``network_os: auto`` asks every netconf sub-plugin to
``guess_network_os``, and each guess *dials the device*. A call-home device cannot be dialled, but
the listener already holds its hello: the capabilities name the vendor well enough to choose the
netconf sub-plugin and the ncclient device handler.
"""

from __future__ import annotations

import typing as t


class Platform(t.NamedTuple):
    """``network_os`` selects the netconf sub-plugin; ``device_handler`` the ncclient handler."""

    network_os: str
    device_handler: str


DEFAULT = Platform("default", "default")

# (substring of a capability URI, lower-cased) -> platform. Order matters: first match wins.
_MARKERS: t.Tuple[t.Tuple[str, Platform], ...] = (
    ("http://xml.juniper.net/", Platform("junos", "junos")),
    ("urn:juniper-rpc", Platform("junos", "junos")),
    ("cisco-ios-xr", Platform("iosxr", "iosxr")),
    ("http://cisco.com/ns/yang/cisco-xr", Platform("iosxr", "iosxr")),
    ("http://cisco.com/ns/yang/cisco-ia", Platform("iosxe", "iosxe")),
    ("cisco-ios-xe", Platform("iosxe", "iosxe")),
    ("http://cisco.com/ns/yang/ios", Platform("iosxe", "iosxe")),
    ("http://cisco.com/ns/yang/cisco-nx", Platform("nxos", "nexus")),
    ("urn:nokia.com:sros", Platform("sros", "sros")),
    ("urn:alcatel-lucent.com:sros", Platform("sros", "alu")),
    ("urn:huawei:yang:huawei", Platform("ce", "huaweiyang")),
    ("http://www.huawei.com/netconf", Platform("ce", "huawei")),
    ("urn:h3c:", Platform("h3c", "h3c")),
    ("urn:ericsson:", Platform("ericsson", "ericsson")),
)


def platform_from_capabilities(capabilities: t.Iterable[str]) -> Platform:
    """The platform the capabilities point to, or :data:`DEFAULT` (RFC 6241 only)."""
    caps = [str(c).lower() for c in capabilities or ()]
    for marker, platform in _MARKERS:
        if any(marker in cap for cap in caps):
            return platform
    return DEFAULT


__all__ = ("DEFAULT", "Platform", "platform_from_capabilities")

# SPDX-License-Identifier: GPL-3.0-or-later
"""Which platform a device runs, from the capabilities of its NETCONF hello.

netcommon's ``network_os: auto`` asks every netconf sub-plugin to ``guess_network_os``, and each
guess *dials the device*. A call-home device cannot be dialled, but the listener already holds
its hello: the capabilities name the vendor well enough to choose the netconf sub-plugin and the
ncclient device handler. Pure Python: no Ansible, no ncclient.
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

# network_os -> ncclient device handler, for an explicit ansible_network_os.
HANDLERS: t.Dict[str, str] = {
    "junos": "junos", "iosxr": "iosxr", "iosxe": "iosxe", "nxos": "nexus", "sros": "sros",
    "ce": "huaweiyang", "h3c": "h3c", "ericsson": "ericsson", "default": "default",
}


def platform_from_capabilities(capabilities: t.Iterable[str]) -> Platform:
    """The platform the capabilities point to, or :data:`DEFAULT` (RFC 6241 only)."""
    caps = [str(c).lower() for c in capabilities or ()]
    for marker, platform in _MARKERS:
        if any(marker in cap for cap in caps):
            return platform
    return DEFAULT


def short_network_os(network_os: str) -> str:
    """``junipernetworks.junos.junos`` -> ``junos``; ``default`` stays ``default``."""
    return network_os.rsplit(".", 1)[-1]


def platform_for(network_os: str, capabilities: t.Iterable[str]) -> Platform:
    """The platform for an ``ansible_network_os`` value (``auto``: from the capabilities)."""
    if not network_os or network_os == "auto":
        return platform_from_capabilities(capabilities)
    return Platform(network_os, HANDLERS.get(short_network_os(network_os), DEFAULT.device_handler))


__all__ = ("DEFAULT", "HANDLERS", "Platform", "platform_for", "platform_from_capabilities", "short_network_os")

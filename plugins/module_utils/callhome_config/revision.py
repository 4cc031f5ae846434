# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which shape of ietf-netconf-server a device implements, and how to find out.

**PRIVATE** to the collection. The model changed across its drafts (netopeer2 #86, #385, #1687):
the host key reference was ``keystore-reference`` and became ``central-keystore-reference``,
SSH client keys moved from ``users/user/authorized-key`` to ``public-keys/inline-definition``,
``reconnect-strategy/max-wait`` appeared. Each :class:`Profile` names the revision it was
checked against (the YANG files shipped by CESNET netopeer2 / libnetconf2) and the
differences the XML builder needs. An unknown revision is refused: pushing a guessed shape
would at best be rejected and at worst half-applied.
"""

from __future__ import annotations

import re
import typing as t
from dataclasses import dataclass

from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import NetconfCallhomeMissing

try:
    from netconf_callhome.errors import ConfigError
except ImportError:  # the module using this reports it (HAS_NETCONF_CALLHOME)
    ConfigError = NetconfCallhomeMissing  # type: ignore[misc,assignment]

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
NCS_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-server"
RCS_NS = "urn:ietf:params:xml:ns:yang:ietf-restconf-server"
NCS_MODULE = "ietf-netconf-server"
RCS_MODULE = "ietf-restconf-server"
YANGLIB_NS = "urn:ietf:params:xml:ns:yang:ietf-yang-library"
CAP_YANGLIB_10 = "urn:ietf:params:netconf:capability:yang-library:1.0"
CAP_YANGLIB_11 = "urn:ietf:params:netconf:capability:yang-library:1.1"
CAP_CANDIDATE = "urn:ietf:params:netconf:capability:candidate:1.0"
CAP_CONFIRMED_10 = "urn:ietf:params:netconf:capability:confirmed-commit:1.0"
CAP_CONFIRMED_11 = "urn:ietf:params:netconf:capability:confirmed-commit:1.1"
CAP_WRITABLE_RUNNING = "urn:ietf:params:netconf:capability:writable-running:1.0"
JUNOS_CAPS = ("http://xml.juniper.net/netconf/junos/1.0", "http://xml.juniper.net/dmi/system/1.0")


class UnsupportedRevisionError(ConfigError):
    """The device implements a revision of ietf-netconf-server this collection cannot write."""

    code = "unsupported-revision"


@dataclass(frozen=True)
class Profile:
    """What differs between supported revisions, for the XML builder."""

    revision: str
    source: str  # which YANG file the shape was checked against
    keystore_leaf: str  # host key reference leaf under .../host-key/public-key
    ssh_user_keys: str  # "inline-definition" (2023+) or "authorized-key" (2019 drafts)
    has_reconnect_max_wait: bool
    supports_tls: bool


PROFILES: t.Dict[str, Profile] = {
    "2019-07-02": Profile(
        revision="2019-07-02",
        source="CESNET/netopeer2 modules/ietf-netconf-server@2019-07-02.yang, ietf-ssh-server@2019-07-02, ietf-keystore@2019-07-02",
        keystore_leaf="keystore-reference",
        ssh_user_keys="authorized-key",
        has_reconnect_max_wait=False,
        supports_tls=False,
    ),
    "2023-12-28": Profile(
        revision="2023-12-28",
        source="CESNET/libnetconf2 modules/ietf-netconf-server@2023-12-28.yang, ietf-ssh-server@2023-12-28",
        keystore_leaf="central-keystore-reference",
        ssh_user_keys="inline-definition",
        has_reconnect_max_wait=True,
        supports_tls=True,
    ),
    "2025-04-24": Profile(
        revision="2025-04-24",
        source="CESNET/libnetconf2 modules/ietf-netconf-server@2025-04-24.yang (draft -39)",
        keystore_leaf="central-keystore-reference",
        ssh_user_keys="inline-definition",
        has_reconnect_max_wait=True,
        supports_tls=True,
    ),
}


@dataclass(frozen=True)
class RestconfProfile:
    """A revision of ietf-restconf-server this collection writes ``call-home/restconf-client`` for.

    Every known revision has the same call-home shape (endpoint/https with tcp-client-, tls-server-,
    http-server- and restconf-server-parameters; cert-to-name under restconf-server-parameters;
    reconnect-strategy with max-wait), checked against the module text named in ``source``; the
    profile exists so that an unknown revision is refused instead of guessed at.
    """

    revision: str
    source: str
    has_reconnect_max_wait: bool = True


RESTCONF_PROFILES: t.Dict[str, RestconfProfile] = {
    "2023-04-17": RestconfProfile(
        revision="2023-04-17",
        source="opendaylight/netconf protocol/restconf-server/src/main/yang/ietf-restconf-server.yang "
               "(draft-ietf-netconf-restconf-client-server, 2023-04-17)",
    ),
    "2024-03-16": RestconfProfile(
        revision="2024-03-16",
        source="opendaylight/netconf protocol/restconf-server/src/main/yang/ietf-restconf-server@2024-03-16.yang",
    ),
}

# ``&amp;`` too: a capability copied from XML text (or sent by a peer that escaped it twice).
_CAP_REVISION = re.compile(r"[?&;]revision=(\d{4}-\d{2}-\d{2})")


def revision_from_capabilities(capabilities: t.Iterable[str], module: str = NCS_MODULE) -> t.Optional[str]:
    """YANG 1.0 style: ``urn:...:ietf-netconf-server?module=ietf-netconf-server&revision=D``
    (``module`` ietf-restconf-server: the same for ``urn:...:ietf-restconf-server``)."""
    namespace = "urn:ietf:params:xml:ns:yang:" + module
    cap_module = re.compile(r"[?&;]module=%s(?:&|$)" % re.escape(module))
    for cap in capabilities:
        cap = cap.strip()
        if cap.startswith(namespace) and cap_module.search(cap):
            match = _CAP_REVISION.search(cap)
            return match.group(1) if match else ""
    return None


def has_yang_library(capabilities: t.Iterable[str]) -> bool:
    return any(c.strip().startswith((CAP_YANGLIB_10, CAP_YANGLIB_11)) for c in capabilities)


def yang_library_filter(module: str = "ietf-netconf-server") -> str:
    """Subtree filter for ``module``'s entry in RFC 8525 and RFC 7895 yang-library (one ``get``).

    The ``<filter>`` element itself is in the NETCONF base namespace: ncclient keeps a filter
    given as a string as it is, and an unqualified ``<filter>`` inside ``<get>`` is refused by
    strict servers (libnetconf2/libyang: "Missing XML namespace").
    """
    return (
        '<nc:filter xmlns:nc="%s" type="subtree">'
        '<yang-library xmlns="%s"><module-set><module><name>%s</name>'
        "<revision/></module></module-set></yang-library>"
        '<modules-state xmlns="%s"><module><name>%s</name><revision/></module></modules-state>'
        "</nc:filter>" % (NC_NS, YANGLIB_NS, module, YANGLIB_NS, module)
    )


def revision_from_yang_library(data_xml: str, module: str = "ietf-netconf-server") -> t.Optional[str]:
    """Find ``module``'s revision in a ``<get>`` reply (either yang-library flavour)."""
    from lxml import etree  # ncclient's dependency; imported late so the module can report its absence

    try:
        root = etree.fromstring(data_xml.encode("utf-8") if isinstance(data_xml, str) else data_xml)
    except etree.XMLSyntaxError:
        return None
    for entry in root.iter("{%s}module" % YANGLIB_NS):
        if (entry.findtext("{%s}name" % YANGLIB_NS) or "").strip() == module:
            return (entry.findtext("{%s}revision" % YANGLIB_NS) or "").strip()
    return None


def is_junos(capabilities: t.Iterable[str]) -> bool:
    return any(c.strip().startswith(JUNOS_CAPS) for c in capabilities)


def profile_for(found: t.Optional[str], *, where: str = "the device") -> Profile:
    """The profile for a detected (or configured) revision; a clear refusal otherwise."""
    if found is None:
        raise UnsupportedRevisionError(
            "%s does not advertise the ietf-netconf-server module (neither in its hello capabilities nor in "
            "yang-library), so it cannot be configured to call home over NETCONF; set revision explicitly if "
            "you know it implements one of %s" % (where, ", ".join(sorted(PROFILES))),
            details={"found": None, "supported": sorted(PROFILES)},
        )
    profile = PROFILES.get(found)
    if profile is None:
        raise UnsupportedRevisionError(
            "%s implements ietf-netconf-server revision %r, which this collection does not know how to "
            "write (supported: %s); refusing rather than pushing a guessed shape"
            % (where, found or "(no revision)", ", ".join(sorted(PROFILES))),
            details={"found": found, "supported": sorted(PROFILES)},
        )
    return profile


def restconf_profile_for(found: t.Optional[str], *, where: str = "the device") -> RestconfProfile:
    """The RESTCONF profile for a detected (or configured) ietf-restconf-server revision."""
    supported = ", ".join(sorted(RESTCONF_PROFILES))
    if found is None:
        raise UnsupportedRevisionError(
            "%s does not advertise the ietf-restconf-server module (neither in its hello capabilities nor in "
            "yang-library), so it cannot be configured to call home over RESTCONF (RFC 8071 RESTCONF call home "
            "is configured in that module); set revision explicitly if you know it implements one of %s"
            % (where, supported),
            details={"module": RCS_MODULE, "found": None, "supported": sorted(RESTCONF_PROFILES)},
        )
    profile = RESTCONF_PROFILES.get(found)
    if profile is None:
        raise UnsupportedRevisionError(
            "%s implements ietf-restconf-server revision %r, which this collection does not know how to write "
            "(supported: %s); refusing rather than pushing a guessed shape" % (where, found or "(no revision)", supported),
            details={"module": RCS_MODULE, "found": found, "supported": sorted(RESTCONF_PROFILES)},
        )
    return profile


__all__ = (
    "PROFILES",
    "Profile",
    "RESTCONF_PROFILES",
    "RestconfProfile",
    "restconf_profile_for",
    "UnsupportedRevisionError",
    "has_yang_library",
    "is_junos",
    "profile_for",
    "revision_from_capabilities",
    "revision_from_yang_library",
    "yang_library_filter",
)

# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Compare the device's running call-home entry with the wanted one (idempotence, diff mode).

**PRIVATE** to the collection. Devices return configuration with their own namespace prefixes,
their own child order (schema order) and their own identity prefixes (``ct:`` vs
``ietf-crypto-types:``), so comparison works on a canonical form: namespace-qualified names,
identity values resolved to ``{namespace}name``, whitespace-trimmed text, and children sorted
except in lists that YANG declares ``ordered-by user`` (endpoints, host keys, cert-to-name).
"""

from __future__ import annotations

import re
import typing as t

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.lxml_support import etree, require_lxml
from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import NetconfCallhomeMissing

try:
    from netconf_callhome.errors import ConfigError
except ImportError:  # the module using this reports it (HAS_NETCONF_CALLHOME)
    ConfigError = NetconfCallhomeMissing  # type: ignore[misc,assignment]

#: Lists whose order is configuration (``ordered-by user``): never sorted.
ORDERED = frozenset(("endpoint", "host-key", "cert-to-name", "address"))
#: Leaves that identify a list entry.
KEYS = ("name", "id")
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"

Canon = t.Tuple[str, str, t.Tuple[t.Any, ...]]


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _text(el: etree._Element) -> str:
    """Leaf text; an identityref (``prefix:name``) compares by its name only.

    Prefixes are the device's choice, and some servers drop the ``xmlns:prefix`` declaration
    on the way back, so the prefix cannot always be resolved. IPv6 addresses, times and
    fingerprints never match two YANG identifiers joined by one colon, so they stay as they are.
    """
    text = (el.text or "").strip()
    if text.count(":") == 1 and len(el) == 0:
        prefix, _sep, local = text.partition(":")
        if _IDENT.match(prefix) and _IDENT.match(local):
            return local
    return text


def _children(el: etree._Element, ignore: t.Collection[str]) -> t.List[etree._Element]:
    return [c for c in el if isinstance(c.tag, str) and etree.QName(c).localname not in ignore]


def canonical(el: etree._Element, ignore: t.Collection[str] = ()) -> Canon:
    """A hashable, order-normalised form of ``el`` (see module docstring)."""
    kids = [canonical(c, ignore) for c in _children(el, ignore)]
    if etree.QName(el).localname not in ORDERED:
        # Stable sort by tag; within a tag, entries of unordered lists sort by content, but
        # entries of ordered lists keep their relative order.
        kids.sort(key=lambda k: (k[0], "" if _local(k[0]) in ORDERED else repr(k)))
    return (el.tag, _text(el) if not kids else "", tuple(kids))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _key(el: etree._Element) -> t.Optional[t.Tuple[str, str]]:
    for child in el:
        if isinstance(child.tag, str) and etree.QName(child).localname in KEYS and len(child) == 0:
            return (etree.QName(child).localname, (child.text or "").strip())
    return None


def _match(parent: etree._Element, wanted: etree._Element) -> t.Optional[etree._Element]:
    key = _key(wanted)
    for child in parent:
        if child.tag != wanted.tag:
            continue
        if key is None or _key(child) == key:
            return child
    return None


def contains(existing: t.Optional[etree._Element], wanted: etree._Element, ignore: t.Collection[str] = ()) -> bool:
    """True when every node of ``wanted`` is in ``existing`` with the same value (merge would be a no-op)."""
    if existing is None or existing.tag != wanted.tag:
        return False
    wanted_kids = _children(wanted, ignore)
    if not wanted_kids:
        if not _text(wanted):
            return True  # a presence container or an empty leaf: existing is enough
        return _text(existing) == _text(wanted)
    for child in wanted_kids:
        if not contains(_match(existing, child), child, ignore):
            return False
    return True


def equal(existing: t.Optional[etree._Element], wanted: t.Optional[etree._Element], ignore: t.Collection[str] = ()) -> bool:
    """True when the two entries are the same configuration (replace would be a no-op)."""
    if existing is None or wanted is None:
        return existing is None and wanted is None
    return canonical(existing, ignore) == canonical(wanted, ignore)


def merge(existing: t.Optional[etree._Element], wanted: etree._Element) -> etree._Element:
    """What a NETCONF ``merge`` of ``wanted`` into ``existing`` yields (for the diff's "after")."""
    if existing is None:
        return _copy(wanted)
    result = _copy(existing)
    _merge_into(result, wanted)
    return result


def _merge_into(target: etree._Element, wanted: etree._Element) -> None:
    kids = _children(wanted, ())
    if not kids:
        if len(target) == 0:
            target.text = wanted.text
        return
    for child in kids:
        found = _match(target, child)
        if found is None:
            target.append(_copy(child))
        else:
            _merge_into(found, child)


def _copy(el: etree._Element) -> etree._Element:
    copied = etree.fromstring(etree.tostring(el))
    copied.attrib.pop("{%s}operation" % NC_NS, None)
    return copied


def decide(state: str, existing: t.Optional[etree._Element], wanted: t.Optional[etree._Element],
           ignore: t.Collection[str] = ()) -> t.Tuple[bool, t.Optional[etree._Element]]:
    """``(changed, after)`` for ``state`` present / replaced / absent."""
    require_lxml()
    if state == "absent":
        return existing is not None, None
    if wanted is None:
        raise ConfigError("state=%s needs the wanted call-home entry to compare with" % state)
    if state == "replaced":
        return not equal(existing, wanted, ignore), _copy(wanted)
    if contains(existing, wanted, ignore):
        return False, _copy(existing) if existing is not None else None
    return True, merge(existing, wanted)


__all__ = ("canonical", "contains", "decide", "equal", "merge")

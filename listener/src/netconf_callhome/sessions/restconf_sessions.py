# SPDX-License-Identifier: GPL-3.0-or-later
"""Sessions layer: the RESTCONF call-home connections the listener holds, one per device.

The service (composition root) decides what a ready connection means for the registry, the
metrics and the logs; this module keeps the connections themselves: which one is a device's
current connection (a device that calls again replaces its older one), the certificate
identities each was accepted under (re-checked after a trust change, as for NETCONF over TLS),
and the translations between the configuration and the protocol layer: the ``restconf:``
section to :class:`~netconf_callhome.protocol.restconf.RestconfLimits`, a device's YANG
library to capability strings for the registry.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from netconf_callhome.config import RestconfOptions
from netconf_callhome.errors import ConfigError
from netconf_callhome.protocol.restconf import RestconfConnection, RestconfLimits, YangLibrary

TRANSPORT = "restconf"


def restconf_limits(options: RestconfOptions) -> RestconfLimits:
    """The protocol's bounds from the ``restconf:`` section; ConfigError names a bad option."""
    try:
        return RestconfLimits(**dataclasses.asdict(options))
    except ValueError as exc:
        # RestconfLimits' messages start with the field's name: "restconf.<field> must be ...".
        raise ConfigError("listener configuration: restconf.%s" % exc) from None


def module_capabilities(library: Optional[YangLibrary]) -> List[str]:
    """The device's implemented modules as capability strings, in the form a NETCONF hello
    advertises modules (RFC 6020 section 5.6.4): ``namespace?module=name&revision=rev``, plus
    ``&features=a,b`` when the module has features. Import-only modules are left out (no data
    of theirs can be read or written). So ``device`` shows RESTCONF and NETCONF devices alike."""
    if library is None:
        return []
    out: List[str] = []
    for mod in library.modules:
        if not mod.implemented:
            continue
        cap = "%s?module=%s" % (mod.namespace or "urn:unknown", mod.name)
        if mod.revision:
            cap += "&revision=%s" % mod.revision
        if mod.features:
            cap += "&features=%s" % ",".join(mod.features)
        out.append(cap)
    return out


class RestconfSessions:
    """The held RESTCONF connections by device, with the identities each was accepted under."""

    def __init__(self) -> None:
        self._conns: Dict[str, Tuple[RestconfConnection, List[str]]] = {}

    def hold(self, conn: RestconfConnection, identities: Sequence[str] = ()) -> Optional[RestconfConnection]:
        """Make ``conn`` its device's connection; returns the one it replaces (to be closed)."""
        old = self._conns.get(conn.device)
        self._conns[conn.device] = (conn, list(identities))
        return old[0] if old is not None and old[0] is not conn else None

    def release(self, conn: RestconfConnection) -> bool:
        """Forget ``conn`` if it is still its device's connection (False: an older, replaced one)."""
        current = self._conns.get(conn.device)
        if current is None or current[0] is not conn:
            return False
        del self._conns[conn.device]
        return True

    def get(self, device: str) -> Optional[RestconfConnection]:
        """The device's open connection, if any."""
        current = self._conns.get(device)
        return current[0] if current is not None and not current[0].is_closed else None

    def identities(self, device: str) -> List[str]:
        current = self._conns.get(device)
        return list(current[1]) if current is not None else []

    def __contains__(self, device: object) -> bool:
        return isinstance(device, str) and self.get(device) is not None

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[RestconfConnection]:
        return iter([conn for conn, _ids in list(self._conns.values())])

    def close_all(self, reason: str) -> None:
        for conn in list(self):
            conn.close(reason)

# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which platform a device runs, from the capabilities of its NETCONF hello.

**PRIVATE** to the collection. One copy of the table: the listener distribution's
``netconf_callhome.endpoints.platform`` (pure Python; the listener picks the netconf sub-plugin
with it). This module re-exports it for the inventory plugin (``callhome_platform``). Without the
distribution the inventory plugin fails in ``parse()`` naming the pip package before it gets here.
"""

from __future__ import annotations

import typing as t

try:
    from netconf_callhome.endpoints.platform import DEFAULT, Platform, platform_from_capabilities
except ImportError:  # the plugins still load (ansible-doc, verify_file) without the distribution

    class Platform(t.NamedTuple):  # type: ignore[no-redef]
        network_os: str
        device_handler: str

    DEFAULT = Platform("default", "default")  # type: ignore[misc]

    def platform_from_capabilities(capabilities: t.Iterable[str]) -> Platform:  # type: ignore[misc]
        """Without the distribution nothing calls this (the inventory plugin fails first)."""
        return DEFAULT


__all__ = ("DEFAULT", "Platform", "platform_from_capabilities")

# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""lxml, imported the way Ansible module_utils import optional libraries.

**PRIVATE** to the collection. lxml comes with ncclient on the controller, but a module_utils
file must still import where lxml is missing (``ansible-test sanity``'s import test runs in a bare
virtual environment, and a user's interpreter may lack it): the import is guarded here, once, and
``HAS_LXML`` / ``LXML_IMPORT_ERROR`` tell the module to fail with ``missing_required_lib('lxml')``.
Code that builds or parses XML calls :func:`require_lxml` first, so a caller that skipped that
check gets a :class:`ConfigError` naming lxml instead of ``'NoneType' has no attribute ...``.
"""

from __future__ import annotations

import traceback
import typing as t

from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import NetconfCallhomeMissing

try:
    from netconf_callhome.errors import ConfigError
except ImportError:  # the module using this reports it (HAS_NETCONF_CALLHOME)
    ConfigError = NetconfCallhomeMissing  # type: ignore[misc,assignment]

LXML_IMPORT_ERROR: t.Optional[str]
try:
    from lxml import etree
except ImportError:
    etree = None  # type: ignore[assignment]
    HAS_LXML = False
    LXML_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_LXML = True
    LXML_IMPORT_ERROR = None


def require_lxml() -> None:
    """Raise :class:`ConfigError` (with the import traceback in ``details``) when lxml is missing."""
    if not HAS_LXML:
        raise ConfigError(
            "lxml is required to build and compare NETCONF configuration; install it (it comes with "
            "ncclient) for the Python that runs the module",
            details={"exception": LXML_IMPORT_ERROR},
        )


__all__ = ("HAS_LXML", "LXML_IMPORT_ERROR", "etree", "require_lxml")

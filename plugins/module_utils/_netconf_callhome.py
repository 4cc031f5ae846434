# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Whether the ``netconf-callhome`` Python distribution can be imported, and what to say if not.

**PRIVATE** to the collection. The listener, trust store, control protocol, errors and
fingerprints live in the pip distribution ``netconf-callhome`` (import name ``netconf_callhome``);
the collection's plugins stay thin and import it. Where it is missing they must still import
(``ansible-doc``, ``ansible-test sanity``'s import test, listing plugins) and fail only when used,
with a message naming the pip package, as ansible.netcommon does for ansible-pylibssh.

Every plugin, module and utility file that imports ``netconf_callhome`` does so in
``try``/``except ImportError``, binds :class:`NetconfCallhomeMissing` to the exception classes it
names (so ``class X(ConfigError)`` and ``except CallHomeError`` still evaluate) and leaves every
other name unbound; its entry points check :data:`HAS_NETCONF_CALLHOME` before anything else:

* modules: ``module.fail_json(msg=missing_required_lib(PIP_NAME),
  exception=NETCONF_CALLHOME_IMPORT_TRACEBACK)``;
* connection, inventory and other controller plugins: raise ``AnsibleError`` (or a subclass)
  with :func:`missing_netconf_callhome_msg`.

The check imports every ``netconf_callhome`` module the collection uses, so a distribution that
is present but cannot import (one of its own requirements missing, for example ``cryptography``)
counts as missing too, with its own import error in the message.
"""

from __future__ import annotations

import sys
import traceback
import typing as t

PIP_NAME = "netconf-callhome"
IMPORT_NAME = "netconf_callhome"

try:
    # Each module the collection's files import from; keep in step with them.
    import netconf_callhome.control.api  # noqa: F401  pylint: disable=unused-import
    import netconf_callhome.control.client  # noqa: F401  pylint: disable=unused-import
    import netconf_callhome.errors  # noqa: F401  pylint: disable=unused-import
    import netconf_callhome.fingerprints  # noqa: F401  pylint: disable=unused-import
    import netconf_callhome.policy.trust_ops  # noqa: F401  pylint: disable=unused-import
    import netconf_callhome.policy.trust_store  # noqa: F401  pylint: disable=unused-import
except ImportError as exc:
    HAS_NETCONF_CALLHOME = False
    NETCONF_CALLHOME_IMPORT_ERROR: t.Optional[ImportError] = exc
    NETCONF_CALLHOME_IMPORT_TRACEBACK: t.Optional[str] = traceback.format_exc()
else:
    HAS_NETCONF_CALLHOME = True
    NETCONF_CALLHOME_IMPORT_ERROR = None
    NETCONF_CALLHOME_IMPORT_TRACEBACK = None


class NetconfCallhomeMissing(Exception):
    """Stands in for ``netconf_callhome``'s exception classes when the package cannot be imported.

    Bound in place of ``CallHomeError``, ``ConfigError``... so that class statements deriving from
    them and ``except`` clauses naming them still evaluate. Never raised: every entry point fails
    with :func:`missing_netconf_callhome_msg` first.
    """


def missing_netconf_callhome_msg(error: t.Optional[BaseException] = None) -> str:
    """The message for a plugin used where ``netconf_callhome`` cannot be imported.

    ``error`` defaults to the import error met here; the Python named is the one running, since
    that is where the package has to be installed.
    """
    error = error if error is not None else NETCONF_CALLHOME_IMPORT_ERROR
    message = (
        "the %s Python package is required on %s (pip install %s); it provides the call-home "
        "listener and its control client that this collection's plugins use"
        % (PIP_NAME, sys.executable or "this Python", PIP_NAME)
    )
    if error is not None:
        message += ". Importing %s failed: %s" % (IMPORT_NAME, error)
    return message

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

* modules: :func:`fail_if_missing` (``module.fail_json(msg=missing_required_lib(PIP_NAME),
  exception=NETCONF_CALLHOME_IMPORT_TRACEBACK)``), and :func:`fail_on_callhome_error` for the
  package's errors, with :data:`CallHomeError` and :data:`DeviceNotFoundError` imported from here
  (bound to :class:`NetconfCallhomeMissing` where the package is missing);
* connection, inventory and other controller plugins: raise ``AnsibleError`` (or a subclass)
  with :func:`missing_netconf_callhome_msg`.

The check imports every ``netconf_callhome`` module the collection uses, so a distribution that
is present but cannot import (one of its own requirements missing, for example ``cryptography``)
counts as missing too, with its own import error in the message.
"""

from __future__ import annotations

import json
import sys
import traceback
import typing as t

from ansible.module_utils.basic import missing_required_lib

PIP_NAME = "netconf-callhome"
IMPORT_NAME = "netconf_callhome"


class NetconfCallhomeMissing(Exception):
    """Stands in for ``netconf_callhome``'s exception classes when the package cannot be imported.

    Bound in place of ``CallHomeError``, ``ConfigError``... so that class statements deriving from
    them and ``except`` clauses naming them still evaluate. Never raised: every entry point fails
    with :func:`missing_netconf_callhome_msg` first.
    """


try:
    # Each module the collection's files import from; keep in step with them.
    import netconf_callhome.control.api  # noqa: F401  pylint: disable=unused-import
    import netconf_callhome.control.client  # noqa: F401  pylint: disable=unused-import
    import netconf_callhome.errors  # noqa: F401  pylint: disable=unused-import
    import netconf_callhome.fingerprints  # noqa: F401  pylint: disable=unused-import
    import netconf_callhome.policy.trust_ops  # noqa: F401  pylint: disable=unused-import
    import netconf_callhome.policy.trust_store  # noqa: F401  pylint: disable=unused-import
    # The errors the modules catch, imported once here rather than guarded in each of them.
    from netconf_callhome.errors import (  # pylint: disable=unused-import
        CallHomeError,
        DeviceNotFoundError,
    )
except ImportError as exc:
    CallHomeError = DeviceNotFoundError = NetconfCallhomeMissing
    HAS_NETCONF_CALLHOME = False
    NETCONF_CALLHOME_IMPORT_ERROR: t.Optional[ImportError] = exc
    NETCONF_CALLHOME_IMPORT_TRACEBACK: t.Optional[str] = traceback.format_exc()
else:
    HAS_NETCONF_CALLHOME = True
    NETCONF_CALLHOME_IMPORT_ERROR = None
    NETCONF_CALLHOME_IMPORT_TRACEBACK = None


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


def fail_if_missing(module: t.Any) -> None:
    """A module's first check: ``fail_json`` with ``missing_required_lib`` and the import traceback.

    ``module`` is the :class:`AnsibleModule`, built first so that its arguments are checked and
    the failure is reported as Ansible reports any missing library.
    """
    if not HAS_NETCONF_CALLHOME:
        module.fail_json(msg=missing_required_lib(PIP_NAME), exception=NETCONF_CALLHOME_IMPORT_TRACEBACK)


def fail_on_callhome_error(module: t.Any, exc: t.Any, *, json_details: bool = False) -> None:
    """``fail_json`` for ``exc``, a :data:`CallHomeError`: its message, ``error_code`` and ``details``.

    The keys are those of the control protocol's errors (``netconf_callhome.control.api.error_result``).
    ``json_details`` passes ``details`` through JSON first, values it cannot encode as their
    ``str()``, for callers whose errors may carry such values (objects of the device layer).
    """
    details = json.loads(json.dumps(exc.details, default=str)) if json_details else exc.details
    module.fail_json(msg=exc.message, error_code=exc.code, details=details)

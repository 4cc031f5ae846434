# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The options every listener-facing module shares, and the module set up from them.

**PRIVATE** to the collection. :data:`LISTENER_ARGS` is the counterpart of the
``netconf.callhome.listener`` doc fragment (``plugins/doc_fragments/listener.py``), and
:data:`LISTENER_TOKEN_ARGS` of its ``listener_token`` section: keep them in step. They live in
the collection, not in the ``netconf-callhome`` distribution, because a module must build its
``AnsibleModule`` (and so its argument spec) even where that distribution is missing, to report
it with ``fail_json``.

A module on these options (``listener_info``, ``wait_for_devices``) starts with
:func:`listener_module` and asks the listener through :func:`call_listener`, with the functions of
:data:`control_api` (``netconf_callhome.control.api``; ``None`` where the distribution is missing,
which :func:`listener_module` has reported by then).
"""

from __future__ import annotations

import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import (
    CallHomeError,
    fail_if_missing,
    fail_on_callhome_error,
)

try:
    from netconf_callhome.control import api as control_api
except ImportError:  # listener_module() fails with missing_required_lib before any use
    control_api = None

LISTENER_ARGS: t.Dict[str, t.Dict[str, t.Any]] = {
    "listener": {"type": "str"},
    "token": {"type": "str", "no_log": True},
    "tls_ca_file": {"type": "path"},
    "tls_verify": {"type": "bool", "default": True},
    "request_timeout": {"type": "float", "default": 30.0},
}

# listener and listener_token of the modules whose listener is optional (config, enroll): the
# counterpart of the netconf.callhome.listener.listener_token doc fragment.
LISTENER_TOKEN_ARGS: t.Dict[str, t.Dict[str, t.Any]] = {
    "listener": {"type": "str"},
    "listener_token": {"type": "str", "no_log": True},
}

T = t.TypeVar("T")


def listener_module(**options: t.Dict[str, t.Any]) -> AnsibleModule:
    """The module of :data:`LISTENER_ARGS` plus ``options``, check mode supported (these modules
    only read); it has failed already where ``netconf-callhome`` cannot be imported."""
    module = AnsibleModule(argument_spec=dict(LISTENER_ARGS, **options), supports_check_mode=True)
    fail_if_missing(module)
    return module


def call_listener(module: AnsibleModule, request: t.Callable[[t.Any], T]) -> T:
    """``request(client)`` with the control client the module's options name; a listener error
    (unreachable, refused, bad token...) fails the module with its message, code and details."""
    try:
        return request(control_api.client_from_params(module.params))
    except CallHomeError as exc:
        fail_on_callhome_error(module, exc)
        raise  # fail_json exits; only a fail_json patched not to (tests) gets here

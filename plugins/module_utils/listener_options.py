# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Argument spec of the options every listener-facing module shares.

**PRIVATE** to the collection. The counterpart of the ``netconf.callhome.listener`` doc fragment
(``plugins/doc_fragments/listener.py``): keep the two in step. It lives in the collection, not in
the ``netconf-callhome`` distribution, because a module must build its ``AnsibleModule`` (and so
its argument spec) even where that distribution is missing, to report it with ``fail_json``.
"""

from __future__ import annotations

import typing as t

LISTENER_ARGS: t.Dict[str, t.Dict[str, t.Any]] = {
    "listener": {"type": "str"},
    "token": {"type": "str", "no_log": True},
    "tls_ca_file": {"type": "path"},
    "tls_verify": {"type": "bool", "default": True},
    "request_timeout": {"type": "float", "default": 30.0},
}

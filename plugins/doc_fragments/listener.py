# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Options shared by the modules that talk to the call-home listener.

``DOCUMENTATION`` (``netconf.callhome.listener``): the options of ``listener_options.LISTENER_ARGS``
and the attributes of the read-only modules on them (``listener_info``, ``wait_for_devices``; each
documents its own ``check_mode``). ``LISTENER_TOKEN`` (``netconf.callhome.listener.listener_token``):
the two options of ``listener_options.LISTENER_TOKEN_ARGS``, for the modules whose listener is
optional (``config``, ``enroll``).
"""

from __future__ import annotations


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  listener:
    description:
      - Address of the listener's control endpoint, V(unix:/path/control.sock) or V(tls://HOST:PORT).
      - Defaults to E(NETCONF_CALLHOME_LISTENER), else the local default
        V(unix:~/.netconf-callhome/control.sock) (the C(control.sock) under E(NETCONF_CALLHOME_HOME)
        when that is set).
    type: str
  token:
    description:
      - Token for a remote (V(tls://)) listener. Defaults to E(NETCONF_CALLHOME_TOKEN).
    type: str
  tls_ca_file:
    description:
      - CA certificate file that verifies a remote listener's TLS certificate.
    type: path
  tls_verify:
    description:
      - Verify a remote listener's TLS certificate and host name.
    type: bool
    default: true
  request_timeout:
    description:
      - Seconds one control request may take.
    type: float
    default: 30
attributes:
  diff_mode:
    support: none
    description: Changes nothing, so there is no diff to return.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller, next to the listener's control socket.
requirements:
  - the netconf-callhome Python package on the controller (C(pip install netconf-callhome))
notes:
  - Runs on the controller, where the listener's control socket is; delegate the task to
    C(localhost) or run it in a play on C(localhost).
"""

    LISTENER_TOKEN = r"""
options:
  listener:
    description:
      - Control address of the listener (C(unix:/path) or C(tls://host:port)).
      - Defaults to the local V(unix:~/.netconf-callhome/control.sock) (the C(control.sock) under
        E(NETCONF_CALLHOME_HOME) when that is set); unlike C(listener_info), this module does not read
        E(NETCONF_CALLHOME_LISTENER), so set it explicitly for a remote listener (in AWX,
        V({{ ansible_callhome_listener }})).
    type: str
  listener_token:
    description: Token for a remote (C(tls://)) listener.
    type: str
"""

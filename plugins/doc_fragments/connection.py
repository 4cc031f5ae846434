# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Options both call-home connection plugins share (netconf.callhome.netconf, netconf.callhome.httpapi).

Their code is plugin_utils/_handoff.py. Only the options documented alike in both are here; an
option whose text differs per plugin (callhome_timeout, callhome_token, ...) stays in the plugin.
"""

from __future__ import annotations


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  host:
    description:
      - Name of the host as Ansible knows it. Not used to connect anywhere; the device is found
        by O(callhome_device).
    default: inventory_hostname
    type: string
    vars:
      - name: inventory_hostname
      - name: ansible_host
  callhome_device:
    description:
      - Name of the device in the listener's trust store and registry.
      - Defaults to the inventory host name.
    type: string
    vars:
      - name: inventory_hostname
      - name: callhome_device
      - name: ansible_callhome_device
  callhome_listener:
    description:
      - Address of the call-home listener's control endpoint, V(unix:/path/control.sock) or
        V(tls://HOST:PORT) for a remote listener.
      - Defaults to V(unix:~/.netconf-callhome/control.sock), or the C(control.sock) under
        E(NETCONF_CALLHOME_HOME) when that is set.
    type: string
    env:
      - name: NETCONF_CALLHOME_LISTENER
    ini:
      - section: callhome_connection
        key: listener
    vars:
      - name: ansible_callhome_listener
  callhome_tls_ca_file:
    description:
      - CA certificate file that verifies a remote listener's TLS certificate. Without it the
        system trust store is used.
    type: path
    env:
      - name: NETCONF_CALLHOME_TLS_CA_FILE
    ini:
      - section: callhome_connection
        key: tls_ca_file
    vars:
      - name: ansible_callhome_tls_ca_file
  callhome_progress_interval:
    description:
      - While waiting, how often (seconds) to report what the listener knows of the device.
    type: int
    default: 5
    vars:
      - name: ansible_callhome_progress_interval
  callhome_embedded:
    description:
      - Start a listener on this machine when none answers at the default local address.
      - Only applies to the default address; an explicit O(callhome_listener) is never started.
    type: boolean
    default: true
    env:
      - name: NETCONF_CALLHOME_EMBEDDED
    ini:
      - section: callhome_connection
        key: embedded
    vars:
      - name: ansible_callhome_embedded
requirements:
  - the netconf-callhome Python package (C(pip install netconf-callhome))
"""

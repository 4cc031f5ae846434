# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Connection plugin ``netconf.callhome.httpapi``: RESTCONF over connections devices opened by calling home.

The RESTCONF counterpart of ``netconf.callhome.netconf`` (issue 11): not persistent, no
``ansible-connection``. ``socket_path`` (what modules get as ``_ansible_socket``) is the
listener's RESTCONF endpoint for the device (control operation ``endpoint`` with ``api:
restconf``), where the httpapi sub-plugin named by ``ansible_network_os`` runs on the device's held
HTTP/2 or HTTP/1.1 connection (``netconf_callhome.endpoints.restconf_rpc``). A remote ``tls://``
listener is reached through this task's relay (``plugins/plugin_utils/rpc_relay.py``), as for
NETCONF. The plugin itself only waits for the device and asks for the endpoint, with the code it
shares with ``netconf.callhome.netconf`` (``plugins/plugin_utils/_handoff.py``).

Why a subclass of ansible.netcommon's ``NetworkConnectionBase`` and not of its httpapi
connection: the modules run locally (``exec_command``) and find their connection through
``_ansible_socket`` only; netcommon's httpapi connection would load the sub-plugin here too and
carries options (host, port, password, certificates) that mean nothing for a device that dialled
in. The file is named ``httpapi.py`` because action plugins of vendor collections check that the
connection's name ends in ``httpapi``.
"""

from __future__ import annotations

DOCUMENTATION = r"""
author:
  - netconf.callhome developers (@netconf-callhome)
name: httpapi
short_description: RESTCONF over connections that devices opened by calling home (RFC 8071)
description:
  - Runs RESTCONF tasks (M(ansible.netcommon.restconf_get), M(ansible.netcommon.restconf_config))
    over the RESTCONF connection a device opened by calling home to the call-home listener
    (RFC 8071 section 3.2, port 4336). It never connects to the device.
  - Each task asks the listener for the RESTCONF endpoint of the device named by
    O(callhome_device) (by default the inventory host name), waiting up to O(callhome_timeout)
    seconds for the device to call home. With C(-v), the device it waits for and what the
    listener knows of it are shown.
  - The plugin is not persistent, and no C(ansible-connection) process starts. The listener serves
    Ansible's persistent-connection protocol itself and runs the httpapi sub-plugin chosen by
    O(network_os) (V(ansible.netcommon.restconf)) unmodified, sending its requests over the
    device's held HTTP/2 connection (concurrent tasks as parallel streams) or HTTP/1.1 connection
    (requests queued). The listener's environment needs ansible-core and the collection of the
    sub-plugin (C(pip install 'netconf-callhome[ansible]'), ansible.netcommon).
  - The listener authenticates to the device with its client certificate and the device's HTTP
    basic credentials from its trust store; no credentials are set here.
  - HTTP error statuses reach the modules as with M(ansible.netcommon.restconf_get) over
    C(ansible.netcommon.httpapi) (the device's C(error-message), the status as the error code).
  - When no listener answers at the default local address, it starts one on this machine (the
    embedded default). A remote listener (AWX, containers) is reached with a C(tls://HOST:PORT)
    address and a token; the modules' requests are then relayed over its control channel.
version_added: 1.0.0
extends_documentation_fragment:
  - ansible.netcommon.connection_persistent
  - netconf.callhome.connection
options:
  network_os:
    description:
      - The httpapi sub-plugin the listener runs for the device's requests.
    type: string
    default: ansible.netcommon.restconf
    vars:
      - name: ansible_network_os
  root_path:
    description:
      - The RESTCONF root. By default the root the listener discovered from the device's
        C(/.well-known/host-meta) (RFC 8040 section 3.1), C(/restconf) when it publishes none.
    type: string
    vars:
      - name: ansible_httpapi_restconf_root
  callhome_token:
    description:
      - Bearer token for a remote (V(tls://)) listener. Never logged or displayed.
    type: string
    env:
      - name: NETCONF_CALLHOME_TOKEN
    vars:
      - name: ansible_callhome_token
  callhome_timeout:
    description:
      - Seconds to wait for the device to call home when a task needs it.
    type: int
    default: 300
    env:
      - name: NETCONF_CALLHOME_TIMEOUT
    ini:
      - section: callhome_connection
        key: timeout
    vars:
      - name: ansible_callhome_timeout
  callhome_listener_config:
    description:
      - YAML configuration file for an embedded listener (binds, credentials, TLS). RESTCONF call
        home needs C(restconf_binds) and the listener's client certificate there.
    type: path
    env:
      - name: NETCONF_CALLHOME_LISTENER_CONFIG
    ini:
      - section: callhome_connection
        key: listener_config
    vars:
      - name: ansible_callhome_listener_config
  callhome_idle_exit:
    description:
      - An embedded listener exits after this many seconds without control requests.
    type: int
    default: 900
    env:
      - name: NETCONF_CALLHOME_IDLE_EXIT
    ini:
      - section: callhome_connection
        key: idle_exit
    vars:
      - name: ansible_callhome_idle_exit
notes:
  - A device that has not called home within O(callhome_timeout), whose certificate is not
    enrolled or does not match, a device connected over NETCONF only, or a listener that does not
    answer, makes the host B(unreachable), with the listener's explanation as the message.
  - The command timeout (O(persistent_command_timeout), C(ansible_command_timeout)) bounds every
    request; a device that goes away mid-request fails that task with its name, and the next task
    waits for it to call home again.
seealso:
  - module: ansible.netcommon.restconf_get
  - module: ansible.netcommon.restconf_config
  - module: netconf.callhome.wait_for_devices
"""

EXAMPLES = r"""
# inventory (group_vars/restconf_devices.yml)
# ansible_connection: netconf.callhome.httpapi
# ansible_network_os: ansible.netcommon.restconf
# ansible_callhome_timeout: 600

- name: Read and change interfaces of every device that calls home over RESTCONF
  hosts: restconf_devices
  gather_facts: false
  tasks:
    - name: Read the interfaces
      ansible.netcommon.restconf_get:
        path: /data/ietf-interfaces:interfaces
      register: interfaces

    - name: Describe eth0
      ansible.netcommon.restconf_config:
        method: patch
        path: /data/ietf-interfaces:interfaces/interface=eth0
        content: |
          {"ietf-interfaces:interface": [{"name": "eth0", "description": "uplink"}]}
"""

import time
import typing as t

from ansible_collections.ansible.netcommon.plugins.plugin_utils.connection_base import (
    NetworkConnectionBase,
)
from ansible_collections.netconf.callhome.plugins.plugin_utils._handoff import (
    CallHomeError,
    CallHomeHandoff,
)


if t.TYPE_CHECKING:  # annotations only: without the distribution the name is unbound
    from netconf_callhome.control.client import ControlClient


class Connection(CallHomeHandoff, NetworkConnectionBase):
    """Hands modules the listener's RESTCONF endpoint of the device (see the module docstring)."""

    transport = "netconf.callhome.httpapi"
    has_pipelining = True
    # No ansible-connection: the listener holds the connection and serves the protocol.
    force_persistence = False

    _CREDENTIAL = "certificate"
    _DESCRIBE_TRANSPORT = True  # a device may be connected over NETCONF only
    _ENDPOINT_WHAT = "get the RESTCONF endpoint of"

    def _endpoint_fields(self) -> t.Dict[str, t.Any]:
        return {
            "api": "restconf",
            "network_os": self.get_option("network_os") or "ansible.netcommon.restconf",
            "root_path": self.get_option("root_path") or "",
        }

    def _endpoint_summary(self, socket_path: str, info: t.Dict[str, t.Any]) -> str:
        return "RESTCONF endpoint %s (%s, HTTP/%s from %s, root %s, %s)" % (
            socket_path, "new" if info.get("created") else "reused", info.get("http_version"), info.get("peer"),
            info.get("root"), info.get("network_os"),
        )

    def _wait_for_endpoint(self, client: ControlClient, request: t.Dict[str, t.Any], wait: float,
                           command_timeout: int) -> t.Dict[str, t.Any]:
        """The endpoint once the device has called home (one ``endpoint`` call that waits)."""
        device = request["device"]
        self._show("v", "waiting up to %.0f s for device %s to call home over RESTCONF (listener %s: %s)"
                   % (wait, device, client.address, self._describe_device(client, device)))
        started = time.monotonic()
        with self._reporting_progress(client, device, started):
            info = client.call("endpoint", wait=wait, timeout=wait + command_timeout + 30, **request)
        self._show("v", "device %s has called home (waited %.1f s)" % (device, time.monotonic() - started))
        return dict(info)

    def _unreachable(self, exc: CallHomeError, address: str) -> str:
        advice = "start it ('callhome-listener serve --restconf ...') or point ansible_callhome_listener at a running one"
        if self._is_remote():
            advice = "check that the listener runs with control_tcp enabled and that this host can reach it"
        return "%s (looked for it at %s); %s" % (exc.message, address, advice)

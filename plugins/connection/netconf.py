# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Connection plugin ``netconf.callhome.netconf``: NETCONF over sessions devices opened by calling home.

The plugin is not persistent (issue 9): ``socket_path`` (what modules get as ``_ansible_socket``)
is the listener's endpoint for the device, asked for with the control operation ``endpoint``; the
netconf sub-plugin runs inside the listener, on the session it holds. With a remote ``tls://``
listener the endpoint's Unix socket is on another host, so the plugin serves a local socket for
the duration of the task and relays each JSON-RPC request over the authenticated control channel
(operation ``rpc``, plugin_utils/rpc_relay.py). No ``ansible-connection`` runs either way. The
wait and the hand-off are shared with ``netconf.callhome.httpapi`` (plugin_utils/_handoff.py).

Why a subclass of ansible.netcommon's netconf connection: its options (``persistent_command_timeout``
and the rest) and its name are what ``ansible.netcommon.netconf_get`` / ``netconf_config`` /
``netconf_rpc`` and netcommon's netconf action plugin expect. The file must be named
``netconf.py``: netcommon's netconf action plugin accepts only connections named ``*.netconf``.
"""

from __future__ import annotations

DOCUMENTATION = r"""
author:
  - netconf.callhome developers (@netconf-callhome)
name: netconf
short_description: NETCONF over sessions that devices opened by calling home (RFC 8071)
description:
  - Runs NETCONF tasks (M(ansible.netcommon.netconf_get), M(ansible.netcommon.netconf_config),
    M(ansible.netcommon.netconf_rpc) and this collection's modules) over the NETCONF session a
    device opened by calling home to the call-home listener. It never connects to the device.
  - Each task asks the listener for the endpoint of the device named by O(callhome_device) (by
    default the inventory host name), waiting up to O(callhome_timeout) seconds for the device to
    call home. With C(-v), the device it waits for and what the listener knows of it are shown.
  - The plugin is not persistent, and no C(ansible-connection) process
    starts; the listener serves Ansible's persistent-connection protocol itself and runs the
    netconf sub-plugin on the session it holds. The listener's environment then needs
    ansible-core and ncclient (C(pip install 'netconf-callhome[ansible]')). With a remote
    (V(tls://)) listener, this plugin serves the task's modules a local socket (mode 0600, in a
    private directory removed when the task ends) and relays their requests to the listener over
    its TLS control endpoint with the token; still no C(ansible-connection).
  - When no listener answers at the default local address, it starts one on this machine (the
    embedded default), shared by every host and fork and stopping after O(callhome_idle_exit)
    idle seconds. A remote listener (AWX, containers) is reached with a C(tls://HOST:PORT)
    address and a token.
  - Built on the C(ansible.netcommon.netconf) connection, so the netconf sub-plugins chosen by
    C(ansible_network_os) work unchanged (they run inside the listener). Requires the
    C(netconf-callhome) Python package on the controller.
version_added: 1.0.0
extends_documentation_fragment:
  - ansible.netcommon.connection_persistent
  - netconf.callhome.connection
options:
  callhome_token:
    description:
      - Bearer token for a remote (V(tls://)) listener. Never logged or displayed.
      - An AWX credential can inject it as the environment variable.
    type: string
    env:
      - name: NETCONF_CALLHOME_TOKEN
    vars:
      - name: ansible_callhome_token
  callhome_timeout:
    description:
      - Seconds to wait for the device to call home when the first task of the host needs it.
      - Call home is slow by nature (a device dials in on its own schedule), hence a long default;
        netcommon's 30 s connect timeout does not apply to this wait.
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
      - YAML configuration file for an embedded listener (binds, credentials, TLS).
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
      - An embedded listener exits after this many seconds without control requests or leases.
    type: int
    default: 900
    env:
      - name: NETCONF_CALLHOME_IDLE_EXIT
    ini:
      - section: callhome_connection
        key: idle_exit
    vars:
      - name: ansible_callhome_idle_exit
  network_os:
    description:
      - Device platform; selects the netconf sub-plugin and the ncclient device handler.
      - V(auto) (the default) derives it from the capabilities in the device's hello, which the
        listener already holds. It never dials the device to guess.
      - 'The first task of a host sets it for that host''s connection until the connection ends (at
        the end of the play, or with C(meta: reset_connection)), as C(ansible-connection) kept the
        sub-plugin it had loaded; the listener logs C(event=endpoint.network_os_kept) when a later
        task asks for another one.'
    type: string
    default: auto
    vars:
      - name: ansible_network_os
  persistent_command_timeout:
    description:
      - Seconds to wait for the device's reply to each NETCONF request of the task (C(ansible_command_timeout)).
        Each task's own value applies to its requests, on the same session as the host's other tasks (a
        lock taken by one task holds for the next, whatever their timeouts).
      - 'A request without a reply in time fails the task with C(device NAME: no reply to METHOD within N s
        (ansible_command_timeout)); the session stays, and the next task uses it.'
  persistent_connect_timeout:
    description:
      - Ignored by this plugin. There is no connection to open per host (the listener holds the device's
        session); the wait for a device that has not called home yet is bounded by O(callhome_timeout)
        instead.
  import_modules:
    description:
      - Read by ansible.netcommon's action plugins on the controller (direct execution of the module in the
        worker process); works as with C(ansible.netcommon.netconf). The module then reaches the listener's
        endpoint from the worker.
  persistent_log_messages:
    type: boolean
    description:
      - Ignored by this plugin. No C(ansible-connection) runs, so nothing writes the persistent connection's
        messages to the Ansible log file, and the listener does not log the requests' contents (they carry
        configuration and secrets).
      - To see each request of a host, run the listener with debug logging (C(callhome-listener serve
        --log-level debug)); it logs C(event=endpoint.request) with the device, the client, the JSON-RPC
        method, whether it failed and its duration, never its parameters or reply.
    default: false
    ini:
      - section: persistent_connection
        key: log_messages
    env:
      - name: ANSIBLE_PERSISTENT_LOG_MESSAGES
    vars:
      - name: ansible_persistent_log_messages
notes:
  - A device that has not called home within O(callhome_timeout), whose key is not enrolled or
    does not match, or a listener that does not answer, makes the host B(unreachable) (as an SSH
    host that does not answer would), with the listener's explanation as the message.
  - The command timeout (O(persistent_command_timeout), C(ansible_command_timeout)) bounds every
    NETCONF request; a device that drops its session mid-task fails that task, and the next task
    waits for the device to call home again.
  - 'A host''s connection (its NETCONF session or its share of the device''s one session) lasts from
    its first task to the end of the play, as with C(ansible-connection). At the end of every play,
    failed or not, and at C(meta: reset_connection), Ansible resets it and the listener ends it at
    once, releasing the host''s locks and cancelling its pending confirmed commit; the next task starts
    a new one. With a remote (V(tls://)) listener, the task''s relay socket is gone by the end of the
    play, so the listener ends the host''s session after its idle time (60 s) instead.'
seealso:
  - module: netconf.callhome.wait_for_devices
  - module: netconf.callhome.listener_info
"""

EXAMPLES = r"""
# inventory (group_vars/routers.yml)
# ansible_connection: netconf.callhome.netconf
# ansible_network_os: auto
# ansible_callhome_timeout: 600

- name: Read the running configuration of every router that calls home
  hosts: routers
  gather_facts: false
  tasks:
    - name: Get running config
      ansible.netcommon.netconf_get:
        source: running
"""

import os
import threading
import time
import typing as t

from ansible.errors import AnsibleConnectionFailure

from ansible_collections.ansible.netcommon.plugins.connection.netconf import (
    Connection as NetconfConnection,
)
from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import (
    HAS_NETCONF_CALLHOME,
)
from ansible_collections.netconf.callhome.plugins.plugin_utils._handoff import (
    REMOTE_SCHEMES,
    CallHomeError,
    CallHomeHandoff,
    ListenerUnreachableError,
)


if t.TYPE_CHECKING:  # annotations only: without the distribution the name is unbound
    from netconf_callhome.control.client import ControlClient


class Connection(CallHomeHandoff, NetconfConnection):
    """ansible.netcommon's netconf connection, handing modules the listener's endpoint of the device."""

    transport = "netconf.callhome.netconf"
    has_pipelining = False
    # No ansible-connection, local or remote listener: the listener holds the session and serves
    # the persistent-connection protocol; modules get its endpoint (or this task's relay to it).
    force_persistence = False

    # This plugin has always checked the whole distribution (module_utils/_netconf_callhome.py),
    # not only the control client the hand-off imports: keep failing where that check fails.
    _DISTRIBUTION_AVAILABLE = HAS_NETCONF_CALLHOME
    _CREDENTIAL = "key"
    _DESCRIBE_TRANSPORT = False
    _ENDPOINT_WHAT = "lease a NETCONF session on"

    def _endpoint_fields(self) -> t.Dict[str, t.Any]:
        return {"network_os": self.get_option("network_os") or self._play_context.network_os or "auto"}

    def _endpoint_summary(self, socket_path: str, info: t.Dict[str, t.Any]) -> str:
        return "endpoint %s (%s, %s over %s from %s, network_os %s, %s)" % (
            socket_path, info.get("mode"), "new" if info.get("created") else "reused", info.get("transport"),
            info.get("peer"), info.get("network_os"), info.get("device_handler"),
        )

    def _wait_for_endpoint(self, client: ControlClient, request: t.Dict[str, t.Any], wait: float,
                           command_timeout: int) -> t.Dict[str, t.Any]:
        self._wait_in_worker(client)  # -v progress; fails with the device's registry state
        return t.cast(t.Dict[str, t.Any],
                      client.call("endpoint", wait=wait, timeout=wait + command_timeout + 30, **request))

    # -- waiting, in the worker process --------------------------------------------------------

    def _wait_in_worker(self, client: t.Optional[ControlClient] = None) -> None:
        """Wait (control op ``wait``) for the device to call home, with ``-v`` progress."""
        device = self._device_name()
        wait = float(self.get_option("callhome_timeout"))
        if client is None:
            client = self._control_client()
            self._ensure_listener()
        try:
            known = self._describe_device(client, device)
        except ListenerUnreachableError as exc:
            raise AnsibleConnectionFailure(self._unreachable(exc, str(client.address))) from None
        self._show("v", "waiting up to %.0f s for device %s to call home (listener %s: %s)"
                   % (wait, device, client.address, known))
        outcome: t.Dict[str, t.Any] = {}

        def wait_op() -> None:
            try:
                client.call("wait", device=device, wait=wait, timeout=wait + 30)
            except CallHomeError as exc:
                outcome["error"] = exc

        started = time.monotonic()
        waiter = threading.Thread(target=wait_op, name="callhome-wait", daemon=True)
        waiter.start()
        with self._reporting_progress(client, device, started):
            waiter.join()
        if "error" in outcome:
            raise self._failure(outcome["error"], device, str(client.address))
        self._show("v", "device %s has called home (waited %.1f s)" % (device, time.monotonic() - started))

    def _unreachable(self, exc: CallHomeError, address: str) -> str:
        # Names the address as configured (not the client's parsed ``address``) and where it came from.
        configured = self._listener_address()
        how = (
            "ansible_callhome_listener / NETCONF_CALLHOME_LISTENER"
            if self.get_option("callhome_listener")
            else "the default address (NETCONF_CALLHOME_HOME=%s)" % os.environ.get("NETCONF_CALLHOME_HOME", "unset")
        )
        advice = (
            "start it ('callhome-listener serve') or point "
            "ansible_callhome_listener at a running one"
        )
        if configured.startswith(REMOTE_SCHEMES):
            advice = "check that the listener runs with control_tcp enabled and that this host can reach it"
        return "%s (looked for it at %s, from %s); %s" % (exc.message, configured, how, advice)

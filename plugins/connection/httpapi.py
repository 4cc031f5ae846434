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
NETCONF. The plugin itself only waits for the device and asks for the endpoint.

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
requirements:
  - the netconf-callhome Python package (C(pip install netconf-callhome))
extends_documentation_fragment:
  - ansible.netcommon.connection_persistent
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
  callhome_token:
    description:
      - Bearer token for a remote (V(tls://)) listener. Never logged or displayed.
    type: string
    env:
      - name: NETCONF_CALLHOME_TOKEN
    vars:
      - name: ansible_callhome_token
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

import os
import socket
import threading
import time
import typing as t

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.utils.collection_loader import AnsibleCollectionConfig
from ansible.utils.display import Display

from ansible_collections.ansible.netcommon.plugins.plugin_utils.connection_base import (
    NetworkConnectionBase,
)

# Only what every task uses is imported here: Ansible imports a connection plugin afresh in each
# task's worker process (a fork of ansible-playbook), so the embedded-listener start, the relay
# for remote listeners and the package check with its message are imported where they are needed.
try:
    from netconf_callhome.control.client import (
        ControlClient,
        default_control_address,
    )
    from netconf_callhome.errors import (
        CallHomeError,
        DeviceNotFoundError,
        DeviceNotReadyError,
        ListenerUnreachableError,
        NotAuthorizedError,
        WaitTimeoutError,
    )
except ImportError:  # reported when the connection is used (_handoff), not here
    from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import (
        NetconfCallhomeMissing,
    )

    HAS_NETCONF_CALLHOME = False
    CallHomeError = DeviceNotFoundError = DeviceNotReadyError = NetconfCallhomeMissing
    ListenerUnreachableError = NotAuthorizedError = WaitTimeoutError = NetconfCallhomeMissing
else:
    HAS_NETCONF_CALLHOME = True

display = Display()


class Connection(NetworkConnectionBase):
    """Hands modules the listener's RESTCONF endpoint of the device (see the module docstring)."""

    transport = "netconf.callhome.httpapi"
    has_pipelining = True
    # No ansible-connection: the listener holds the connection and serves the protocol.
    force_persistence = False

    def __init__(self, play_context: t.Any, new_stdin: t.Any, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(play_context, new_stdin, *args, **kwargs)
        self._endpoint_info: t.Optional[t.Dict[str, t.Any]] = None
        self._endpoint_request: t.Dict[str, t.Any] = {}
        self._relay: t.Any = None  # rpc_relay.Relay of a remote listener, for the task

    @property
    def socket_path(self) -> t.Optional[str]:
        """What ``_execute_module`` gives modules as ``_ansible_socket``: the hand-off happens here."""
        if self._endpoint_info is None:
            self._handoff()
        return self._socket_path

    def _connect(self) -> t.Any:
        if self._endpoint_info is None:
            self._handoff()
        self._connected = True
        return self

    # -- options ---------------------------------------------------------------------------------

    def _device_name(self) -> str:
        return self.get_option("callhome_device") or self._play_context.remote_addr

    def _listener_address(self) -> str:
        return self.get_option("callhome_listener") or default_control_address()

    def _is_remote(self) -> bool:
        return self._listener_address().startswith(("tls://", "tcp+tls://"))

    def _control_client(self, timeout: float) -> ControlClient:
        """A client for the configured listener; the token stays inside it, never in messages."""
        try:
            return ControlClient(
                self._listener_address(),
                token=self.get_option("callhome_token") or None,
                timeout=timeout,
                tls_ca_file=self.get_option("callhome_tls_ca_file") or None,
            )
        except CallHomeError as exc:
            raise AnsibleConnectionFailure(
                "invalid call-home listener address (ansible_callhome_listener): %s" % exc.message
            ) from None

    # -- the hand-off ----------------------------------------------------------------------------

    def _handoff(self) -> None:
        """Ask the listener for the device's RESTCONF endpoint, waiting (with -v progress) if needed."""
        if not HAS_NETCONF_CALLHOME:
            from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import (
                missing_netconf_callhome_msg,
            )

            raise AnsibleError("netconf.callhome.httpapi connection: %s" % missing_netconf_callhome_msg())
        device = self._device_name()
        host = self._play_context.remote_addr
        wait = float(self.get_option("callhome_timeout"))
        command_timeout = int(self.get_option("persistent_command_timeout"))
        request: t.Dict[str, t.Any] = {
            "device": device,
            "api": "restconf",
            "network_os": self.get_option("network_os") or "ansible.netcommon.restconf",
            "root_path": self.get_option("root_path") or "",
            "command_timeout": command_timeout,
            "collections_paths": [str(p) for p in AnsibleCollectionConfig.collection_paths],
            "client": "%s/%s" % (self._ansible_playbook_pid or os.getppid(), host),
        }
        if self._is_remote():
            request["client"] = "%s:%s" % (socket.gethostname(), request["client"])
        client = self._control_client(timeout=max(60.0, command_timeout + 30.0))
        self._ensure_listener(client)
        started = time.monotonic()
        try:
            try:
                info = client.call("endpoint", wait=0, **request)
            except (WaitTimeoutError, DeviceNotReadyError, DeviceNotFoundError):
                info = self._wait_for_device(client, request, wait, command_timeout)
        except CallHomeError as exc:  # pylint: disable=duplicate-except
            raise self._failure(exc, device, str(client.address)) from None
        self._endpoint_info = info
        self._endpoint_request = request
        socket_path = info["socket_path"]
        if self._is_remote():
            socket_path = self._start_relay(client, info, command_timeout)
        self._socket_path = socket_path
        self._network_os = info.get("network_os") or self._network_os
        display.vvv(
            "device %s handed off in %.1f ms: RESTCONF endpoint %s (%s, HTTP/%s from %s, root %s, %s)"
            % (device, (time.monotonic() - started) * 1000, socket_path, "new" if info.get("created") else "reused",
               info.get("http_version"), info.get("peer"), info.get("root"), info.get("network_os")),
            host=host,
        )

    def _wait_for_device(self, client: ControlClient, request: t.Dict[str, t.Any], wait: float,
                         command_timeout: int) -> t.Dict[str, t.Any]:
        """The endpoint once the device has called home; progress every interval under -v."""
        device = request["device"]
        host = self._play_context.remote_addr
        display.v("waiting up to %.0f s for device %s to call home over RESTCONF (listener %s: %s)"
                  % (wait, device, client.address, self._describe_device(client, device)), host=host)
        stop = threading.Event()
        interval = max(1, int(self.get_option("callhome_progress_interval")))
        started = time.monotonic()

        def watch() -> None:
            while not stop.wait(interval):
                display.v("still waiting for %s (%.0f s): %s"
                          % (device, time.monotonic() - started, self._describe_device(client, device)), host=host)

        watcher = threading.Thread(target=watch, name="callhome-wait", daemon=True)
        watcher.start()
        try:
            info = client.call("endpoint", wait=wait, timeout=wait + command_timeout + 30, **request)
        finally:
            stop.set()
        display.v("device %s has called home (waited %.1f s)" % (device, time.monotonic() - started), host=host)
        return dict(info)

    def _describe_device(self, client: ControlClient, device: str) -> str:
        """One line on what the listener knows of ``device`` (for progress messages)."""
        try:
            rec = client.call("device", device=device, timeout=5.0)
        except DeviceNotFoundError:
            return "not enrolled and never seen (its certificate may be waiting in 'callhome-listener pending')"
        except CallHomeError as exc:  # pylint: disable=duplicate-except
            return "unknown (%s)" % exc.message
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec["last_seen"])) if rec.get("last_seen") else "never"
        text = "status %s over %s, last seen %s from %s" % (
            rec.get("status"), rec.get("transport") or "-", when, rec.get("peer") or "nowhere"
        )
        if rec.get("last_error"):
            text += ", last error: %s" % rec["last_error"]
        return text

    def _ensure_listener(self, client: ControlClient) -> None:
        if not self.get_option("callhome_embedded"):
            return
        from ansible_collections.netconf.callhome.plugins.plugin_utils.embedded_listener import (
            ensure_listener,
            is_default_address,
        )

        address = self._listener_address()
        if not is_default_address(address):
            return
        host = self._play_context.remote_addr
        try:
            started, answer = ensure_listener(
                config_file=self.get_option("callhome_listener_config") or None,
                idle_exit=float(self.get_option("callhome_idle_exit")),
                log=lambda msg: display.v(msg, host=host),
            )
        except CallHomeError as exc:
            raise AnsibleConnectionFailure(exc.message) from None
        if started:
            display.v("started an embedded call-home listener (pid %s) at %s" % (answer.get("pid"), address), host=host)

    def _failure(self, exc: CallHomeError, device: str, address: str) -> AnsibleConnectionFailure:
        """The listener's error as the message an operator reads in the failed task."""
        if isinstance(exc, ListenerUnreachableError):
            advice = "start it ('callhome-listener serve --restconf ...') or point ansible_callhome_listener at a running one"
            if self._is_remote():
                advice = "check that the listener runs with control_tcp enabled and that this host can reach it"
            return AnsibleConnectionFailure("%s (looked for it at %s); %s" % (exc.message, address, advice))
        if isinstance(exc, NotAuthorizedError):
            return AnsibleConnectionFailure(
                "the call-home listener at %s refused the request: %s. Set ansible_callhome_token (or "
                "NETCONF_CALLHOME_TOKEN) to the listener's control token" % (address, exc.message)
            )
        if isinstance(exc, (WaitTimeoutError, DeviceNotReadyError, DeviceNotFoundError)):
            return AnsibleConnectionFailure(exc.message)
        return AnsibleConnectionFailure(
            "could not get the RESTCONF endpoint of device %s from the listener at %s: %s (%s)"
            % (device, address, exc.message, exc.code)
        )

    # -- a remote listener: this task's relay to its endpoint --------------------------------

    def _start_relay(self, client: ControlClient, info: t.Dict[str, t.Any], command_timeout: int) -> str:
        """A local socket for this task's modules, forwarding each request to the remote endpoint
        (control op ``rpc``); :meth:`close` removes it when the task ends."""
        from ansible_collections.netconf.callhome.plugins.plugin_utils.rpc_relay import (
            Relay,
            RelayError,
            control_rpc,
        )

        device = self._device_name()
        address = str(client.address)
        timeout = float(command_timeout) + 30.0
        state = {"id": info.get("id")}

        def open_socket() -> socket.socket:
            try:
                return client._open(timeout)  # the same TLS context and CA file as every control call
            except CallHomeError as exc:
                raise RelayError(exc.message, exc.code) from None

        def exchange(data: bytes) -> bytes:
            try:
                try:
                    return control_rpc(open_socket, client.token, state["id"], data)
                except RelayError as exc:
                    if exc.code != "endpoint-gone":
                        raise
                    # the endpoint went after its idle time: ask for it again, once
                    state["id"] = client.call("endpoint", wait=0, timeout=timeout, **self._endpoint_request)["id"]
                    return control_rpc(open_socket, client.token, state["id"], data)
            except (RelayError, CallHomeError) as exc:
                raise RelayError("device %s: the call-home listener at %s: %s" % (device, address, exc.message),
                                 getattr(exc, "code", "relay")) from None

        self._relay = Relay(exchange, name="callhome-relay-%s" % device)
        return self._relay.path

    def close(self) -> None:
        """The end of the task (the task executor closes its connection): the relay goes too."""
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.close()
        self._conn_closed = True
        self._connected = False

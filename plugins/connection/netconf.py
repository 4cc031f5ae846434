# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Connection plugin ``netconf.callhome.netconf``: NETCONF over sessions devices opened by calling home.

The plugin is not persistent (issue 9): ``socket_path`` (what modules get as ``_ansible_socket``)
is the listener's endpoint for the device, asked for with the control operation ``endpoint``; the
netconf sub-plugin runs inside the listener, on the session it holds. With a remote ``tls://``
listener the endpoint's Unix socket is on another host, so the plugin serves a local socket for
the duration of the task and relays each JSON-RPC request over the authenticated control channel
(operation ``rpc``, plugin_utils/rpc_relay.py). No ``ansible-connection`` runs either way.

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
      - An AWX credential can inject it as the environment variable.
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
    type: string
    default: auto
    vars:
      - name: ansible_network_os
  persistent_log_messages:
    type: boolean
    description:
      - Log every request and reply of the persistent connection to the Ansible log file
        (needs C(log_path)). This logs configuration data unredacted.
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
import socket
import threading
import time
import typing as t

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.utils.collection_loader import AnsibleCollectionConfig
from ansible.utils.display import Display

from ansible_collections.ansible.netcommon.plugins.connection.netconf import (
    Connection as NetconfConnection,
)
from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import (
    HAS_NETCONF_CALLHOME,
    NetconfCallhomeMissing,
    missing_netconf_callhome_msg,
)
from ansible_collections.netconf.callhome.plugins.plugin_utils.embedded_listener import (
    ensure_listener,
    is_default_address,
)
from ansible_collections.netconf.callhome.plugins.plugin_utils.rpc_relay import (
    Relay,
    RelayError,
    control_rpc,
)

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
except ImportError:  # reported when the connection is used (_require_netconf_callhome), not here
    CallHomeError = DeviceNotFoundError = DeviceNotReadyError = NetconfCallhomeMissing
    ListenerUnreachableError = NotAuthorizedError = WaitTimeoutError = NetconfCallhomeMissing

display = Display()


class Connection(NetconfConnection):
    """ansible.netcommon's netconf connection, handing modules the listener's endpoint of the device."""

    transport = "netconf.callhome.netconf"
    has_pipelining = False
    # No ansible-connection, local or remote listener: the listener holds the session and serves
    # the persistent-connection protocol; modules get its endpoint (or this task's relay to it).
    force_persistence = False

    @property
    def socket_path(self) -> t.Optional[str]:
        """What ``_execute_module`` gives modules as ``_ansible_socket``: the hand-off happens here."""
        if self._endpoint_info is None:
            self._handoff()
        return self._socket_path

    def __init__(self, play_context: t.Any, new_stdin: t.Any, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(play_context, new_stdin, *args, **kwargs)
        self._endpoint_info: t.Optional[t.Dict[str, t.Any]] = None
        self._endpoint_request: t.Dict[str, t.Any] = {}
        self._relay: t.Optional[Relay] = None

    # -- options ---------------------------------------------------------------------------------

    def _device_name(self) -> str:
        return self.get_option("callhome_device") or self._play_context.remote_addr

    def _listener_address(self) -> str:
        return self.get_option("callhome_listener") or default_control_address()

    def _control_client(self, timeout: float = 30.0) -> ControlClient:
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

    def _progress(self, level: str, message: str) -> None:
        """Queued messages reach ``-v`` output; the log file gets them as they happen."""
        self.queue_message(level, message)
        display.display("%s: %s" % (self._device_name(), message), log_only=True)

    # -- connect ---------------------------------------------------------------------------------

    def _connect(self) -> t.Any:
        if self._endpoint_info is None:
            self._handoff()
        self._connected = True
        return self

    def _is_remote(self) -> bool:
        return self._listener_address().startswith(("tls://", "tcp+tls://"))

    def _handoff(self) -> None:
        """Wait for the device (with progress under ``-v``), then ask the listener for its endpoint."""
        _require_netconf_callhome()
        device = self._device_name()
        wait = float(self.get_option("callhome_timeout"))
        command_timeout = int(self.get_option("persistent_command_timeout"))
        host = self._play_context.remote_addr
        request = {
            "device": device,
            "network_os": self.get_option("network_os") or self._play_context.network_os or "auto",
            "command_timeout": command_timeout,
            "collections_paths": [str(p) for p in AnsibleCollectionConfig.collection_paths],
            "client": "%s/%s" % (self._ansible_playbook_pid or os.getppid(), host),
        }
        if self._is_remote():  # several controllers (AWX nodes) share a remote listener
            request["client"] = "%s:%s" % (socket.gethostname(), request["client"])
        client = self._control_client(timeout=max(60.0, command_timeout + 30.0))

        def show(level: str, message: str) -> None:
            getattr(display, level)(message, host=host)

        self._ensure_listener(client, show)
        started = time.monotonic()
        try:
            info = client.call("endpoint", wait=0, **request)
        except (WaitTimeoutError, DeviceNotReadyError, DeviceNotFoundError):
            self._wait_in_worker(client)  # -v progress; fails with the device's registry state
            try:
                info = client.call("endpoint", wait=wait, timeout=wait + command_timeout + 30, **request)
            except CallHomeError as exc:
                raise self._failure(exc, device, str(client.address)) from None
        except CallHomeError as exc:  # pylint: disable=duplicate-except
            raise self._failure(exc, device, str(client.address)) from None
        self._endpoint_info = info
        self._endpoint_request = request
        socket_path = info["socket_path"]
        if self._is_remote():
            socket_path = self._start_relay(client, info, command_timeout)
        self._socket_path = socket_path
        self._network_os = info.get("network_os") or self._network_os
        show(
            "vvv",
            "device %s handed off in %.1f ms: endpoint %s (%s, %s over %s from %s, network_os %s, %s)"
            % (device, (time.monotonic() - started) * 1000, socket_path, info.get("mode"),
               "new" if info.get("created") else "reused", info.get("transport"), info.get("peer"),
               info.get("network_os"), info.get("device_handler")),
        )

    # -- a remote listener: this task's relay to its endpoint --------------------------------

    def _start_relay(self, client: ControlClient, info: t.Dict[str, t.Any], command_timeout: int) -> str:
        """A local socket for the modules of this task, forwarding to the remote endpoint (op ``rpc``).

        Modules cannot reach the listener's Unix socket on another host; the worker process lives
        while the task's module runs, so a thread of it relays each request over the control channel
        (TLS, token). :meth:`close` removes it when the task ends.
        """
        device = self._device_name()
        address = str(client.address)
        timeout = float(command_timeout) + 30.0
        state = {"id": info.get("id")}
        if not state["id"]:
            raise AnsibleConnectionFailure(
                "the call-home listener at %s is too old to serve modules over %s (its 'endpoint' answer has no "
                "id for the 'rpc' operation): upgrade netconf-callhome on the listener host" % (address, address)
            )

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
            except RelayError as exc:
                raise RelayError("device %s: the call-home listener at %s: %s" % (device, address, exc.message),
                                 exc.code) from None
            except CallHomeError as exc:
                raise RelayError("device %s: the call-home listener at %s: %s" % (device, address, exc.message),
                                 exc.code) from None

        self._relay = Relay(exchange, name="callhome-relay-%s" % device)
        display.vvv("relaying the modules' requests for device %s through %s to the listener at %s"
                    % (device, self._relay.path, address), host=self._play_context.remote_addr)
        return self._relay.path

    def _ensure_listener(self, client: ControlClient, show: t.Optional[t.Callable[[str, str], None]] = None) -> None:
        show = show or self._progress
        address = self._listener_address()
        if not (self.get_option("callhome_embedded") and is_default_address(address)):
            return
        try:
            started, answer = ensure_listener(
                config_file=self.get_option("callhome_listener_config") or None,
                idle_exit=float(self.get_option("callhome_idle_exit")),
                log=lambda msg: show("v", msg),
            )
        except CallHomeError as exc:
            raise AnsibleConnectionFailure(exc.message) from None
        if started:
            show("v", "started an embedded call-home listener (pid %s) at %s" % (answer.get("pid"), address))

    def _describe_device(self, client: ControlClient, device: str) -> str:
        """One line on what the listener knows of ``device`` (for progress messages)."""
        try:
            rec = client.call("device", device=device, timeout=5.0)
        except DeviceNotFoundError:
            return "not enrolled and never seen (its key may be waiting in 'callhome-listener pending')"
        # pylint cannot tell the two apart: both are NetconfCallhomeMissing where netconf_callhome
        # is missing (and then no call gets here), distinct classes where it is installed.
        except CallHomeError as exc:  # pylint: disable=duplicate-except
            return "unknown (%s)" % exc.message
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec["last_seen"])) if rec.get("last_seen") else "never"
        text = "status %s, last seen %s from %s" % (rec.get("status"), when, rec.get("peer") or "nowhere")
        if rec.get("last_error"):
            text += ", last error: %s" % rec["last_error"]
        return text

    def _failure(self, exc: CallHomeError, device: str, address: str) -> AnsibleConnectionFailure:
        """The listener's error as the message an operator reads in the failed task."""
        if isinstance(exc, ListenerUnreachableError):
            return AnsibleConnectionFailure(self._unreachable(exc))
        if isinstance(exc, NotAuthorizedError):
            return AnsibleConnectionFailure(
                "the call-home listener at %s refused the request: %s. Set ansible_callhome_token (or "
                "NETCONF_CALLHOME_TOKEN) to the listener's control token" % (address, exc.message)
            )
        if isinstance(exc, (WaitTimeoutError, DeviceNotReadyError, DeviceNotFoundError)):
            return AnsibleConnectionFailure(exc.message)
        return AnsibleConnectionFailure(
            "could not lease a NETCONF session on device %s from the listener at %s: %s (%s)"
            % (device, address, exc.message, exc.code)
        )

    # -- waiting, in the worker process --------------------------------------------------------

    def _wait_in_worker(self, client: t.Optional[ControlClient] = None) -> None:
        device = self._device_name()
        wait = float(self.get_option("callhome_timeout"))
        host = self._play_context.remote_addr

        def show(level: str, message: str) -> None:
            getattr(display, level)(message, host=host)

        if client is None:
            client = self._control_client()
            self._ensure_listener(client, show)
        try:
            known = self._describe_device(client, device)
        except ListenerUnreachableError as exc:
            raise AnsibleConnectionFailure(self._unreachable(exc)) from None
        show("v", "waiting up to %.0f s for device %s to call home (listener %s: %s)" % (wait, device, client.address, known))
        outcome: t.Dict[str, t.Any] = {}

        def wait_op() -> None:
            try:
                client.call("wait", device=device, wait=wait, timeout=wait + 30)
            except CallHomeError as exc:
                outcome["error"] = exc

        started = time.monotonic()
        waiter = threading.Thread(target=wait_op, name="callhome-wait", daemon=True)
        waiter.start()
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(client, device, stop, show), daemon=True)
        watcher.start()
        waiter.join()
        stop.set()
        if "error" in outcome:
            raise self._failure(outcome["error"], device, str(client.address))
        show("v", "device %s has called home (waited %.1f s)" % (device, time.monotonic() - started))

    def _watch(self, client: ControlClient, device: str, stop: threading.Event,
               show: t.Callable[[str, str], None]) -> None:
        interval = max(1, int(self.get_option("callhome_progress_interval")))
        started = time.monotonic()
        while not stop.wait(interval):
            show(
                "v", "still waiting for %s (%.0f s): %s" % (device, time.monotonic() - started, self._describe_device(client, device))
            )

    def _unreachable(self, exc: CallHomeError) -> str:
        address = self._listener_address()
        how = (
            "ansible_callhome_listener / NETCONF_CALLHOME_LISTENER"
            if self.get_option("callhome_listener")
            else "the default address (NETCONF_CALLHOME_HOME=%s)" % os.environ.get("NETCONF_CALLHOME_HOME", "unset")
        )
        advice = (
            "start it ('callhome-listener serve') or point "
            "ansible_callhome_listener at a running one"
        )
        if address.startswith(("tls://", "tcp+tls://")):
            advice = "check that the listener runs with control_tcp enabled and that this host can reach it"
        return "%s (looked for it at %s, from %s); %s" % (exc.message, address, how, advice)

    def close(self) -> None:
        """The end of the task (the task executor closes its connection): the relay goes too."""
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.close()
        self._conn_closed = True
        self._connected = False


def _require_netconf_callhome() -> None:
    """Fail the task with the pip package to install when ``netconf_callhome`` cannot be imported."""
    if not HAS_NETCONF_CALLHOME:
        raise AnsibleError("netconf.callhome.netconf connection: %s" % missing_netconf_callhome_msg())

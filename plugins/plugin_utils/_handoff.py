# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The hand-off both call-home connection plugins make: wait for the device, ask for its endpoint.

**PRIVATE** to the collection. ``netconf.callhome.netconf`` (NETCONF) and
``netconf.callhome.httpapi`` (RESTCONF) differ only in what they ask the listener for and in how
they word it; the rest is here once, as a mixin placed before each plugin's netcommon base class
(ansible.netcommon's netconf connection, ``NetworkConnectionBase``):

* the options (device name, listener address, token, CA file) and the control client built from
  them, the token kept inside the client and out of every message;
* the embedded listener started at the default local address (plugin_utils/embedded_listener.py);
* the hand-off itself: ``socket_path`` (what modules get as ``_ansible_socket``) asks the listener
  for the device's endpoint with the control operation ``endpoint``, waiting for the device to
  call home with ``-v`` progress when it is not there yet;
* the listener's errors mapped to :class:`AnsibleConnectionFailure` (the host is unreachable,
  with the listener's explanation as the message);
* for a remote (``tls://``) listener, the task's relay (plugin_utils/rpc_relay.py), removed by
  :meth:`CallHomeHandoff.close` when the task ends.

Ansible imports a connection plugin afresh in each task's worker process (a fork of
``ansible-playbook``), so only what every task uses is imported at the top; the embedded-listener
start, the relay and the missing-package message are imported where they are needed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import typing as t

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.utils.collection_loader import AnsibleCollectionConfig
from ansible.utils.display import Display

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
    from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import (
        NetconfCallhomeMissing,
    )

    HAS_CONTROL_CLIENT = False
    CallHomeError = DeviceNotFoundError = DeviceNotReadyError = NetconfCallhomeMissing  # type: ignore[misc,assignment]
    ListenerUnreachableError = NotAuthorizedError = WaitTimeoutError = NetconfCallhomeMissing  # type: ignore[misc,assignment]
else:
    HAS_CONTROL_CLIENT = True

display = Display()

# What the first ``endpoint`` call (wait=0) raises for a device that is not there yet: then wait.
NOT_THERE_YET = (WaitTimeoutError, DeviceNotReadyError, DeviceNotFoundError)

# Listener addresses whose endpoints are on another host (reached through the task's relay).
REMOTE_SCHEMES = ("tls://", "tcp+tls://")


class CallHomeHandoff:
    """What both call-home connection plugins share; the plugin class lists it before its base.

    A plugin sets the class attributes below and implements :meth:`_endpoint_fields`,
    :meth:`_wait_for_endpoint`, :meth:`_endpoint_summary` and :meth:`_unreachable`.
    """

    #: Whether the plugin can work: the modules it imports from ``netconf_callhome`` imported.
    _DISTRIBUTION_AVAILABLE: bool = HAS_CONTROL_CLIENT
    #: What the device presents to be enrolled ("key", "certificate"), for the pending hint.
    _CREDENTIAL: str = "key"
    #: Whether progress lines name the transport the device is connected over.
    _DESCRIBE_TRANSPORT: bool = False
    #: What failed, in "could not <this> device X from the listener at Y".
    _ENDPOINT_WHAT: str = "get the endpoint of"

    # Provided by Ansible's connection base classes (declared for readers and type checkers).
    transport: str
    _play_context: t.Any
    _socket_path: t.Optional[str]
    _network_os: t.Optional[str]
    _ansible_playbook_pid: t.Optional[str]
    _connected: bool
    _conn_closed: bool
    get_option: t.Callable[..., t.Any]

    def __init__(self, play_context: t.Any, new_stdin: t.Any, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(play_context, new_stdin, *args, **kwargs)  # type: ignore[call-arg]
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

    def close(self) -> None:
        """The end of the task (the task executor closes its connection): the relay goes too."""
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.close()
        self._conn_closed = True
        self._connected = False

    # -- what each plugin asks for and says ------------------------------------------------------

    def _endpoint_fields(self) -> t.Dict[str, t.Any]:
        """The plugin's fields of the ``endpoint`` request (API, network_os...), after ``device``."""
        raise NotImplementedError

    def _wait_for_endpoint(self, client: ControlClient, request: t.Dict[str, t.Any], wait: float,
                           command_timeout: int) -> t.Dict[str, t.Any]:
        """The endpoint of a device that was not there at the first ask, once it has called home."""
        raise NotImplementedError

    def _endpoint_summary(self, socket_path: str, info: t.Dict[str, t.Any]) -> str:
        """What ``-vvv`` shows of the endpoint after "device X handed off in N ms: "."""
        raise NotImplementedError

    def _unreachable(self, exc: CallHomeError, address: str) -> str:
        """The message for a listener that does not answer at ``address``, with what to do."""
        raise NotImplementedError

    # -- options ---------------------------------------------------------------------------------

    def _device_name(self) -> str:
        return t.cast(str, self.get_option("callhome_device") or self._play_context.remote_addr)

    def _listener_address(self) -> str:
        return t.cast(str, self.get_option("callhome_listener") or default_control_address())

    def _is_remote(self) -> bool:
        return self._listener_address().startswith(REMOTE_SCHEMES)

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

    def _show(self, level: str, message: str) -> None:
        """``display.v`` / ``display.vvv`` for this host (the worker's output, not queued)."""
        getattr(display, level)(message, host=self._play_context.remote_addr)

    def _require_netconf_callhome(self) -> None:
        """Fail the task with the pip package to install when ``netconf_callhome`` cannot be imported."""
        if not self._DISTRIBUTION_AVAILABLE:
            from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import (
                missing_netconf_callhome_msg,
            )

            raise AnsibleError("%s connection: %s" % (self.transport, missing_netconf_callhome_msg()))

    # -- the hand-off ----------------------------------------------------------------------------

    def _handoff(self) -> None:
        """Ask the listener for the device's endpoint, waiting (with -v progress) if needed."""
        self._require_netconf_callhome()
        device = self._device_name()
        wait = float(self.get_option("callhome_timeout"))
        command_timeout = int(self.get_option("persistent_command_timeout"))
        request: t.Dict[str, t.Any] = {
            "device": device,
            **self._endpoint_fields(),
            "command_timeout": command_timeout,
            "collections_paths": [str(p) for p in AnsibleCollectionConfig.collection_paths],
            "client": "%s/%s" % (self._ansible_playbook_pid or os.getppid(), self._play_context.remote_addr),
        }
        if self._is_remote():  # several controllers (AWX nodes) share a remote listener
            request["client"] = "%s:%s" % (socket.gethostname(), request["client"])
        client = self._control_client(timeout=max(60.0, command_timeout + 30.0))
        self._ensure_listener()
        started = time.monotonic()
        try:
            try:
                info = client.call("endpoint", wait=0, **request)
            except NOT_THERE_YET:
                info = self._wait_for_endpoint(client, request, wait, command_timeout)
        # pylint cannot tell the two apart: both are NetconfCallhomeMissing where netconf_callhome
        # is missing (and then no call gets here), distinct classes where it is installed.
        except CallHomeError as exc:  # pylint: disable=duplicate-except
            raise self._failure(exc, device, str(client.address)) from None
        self._endpoint_info = info
        self._endpoint_request = request
        socket_path = info["socket_path"]
        if self._is_remote():
            socket_path = self._start_relay(client, info, command_timeout)
        self._socket_path = socket_path
        self._network_os = info.get("network_os") or self._network_os
        self._show("vvv", "device %s handed off in %.1f ms: %s"
                   % (device, (time.monotonic() - started) * 1000, self._endpoint_summary(socket_path, info)))

    def _ensure_listener(self) -> None:
        """Start the embedded listener when none answers at the default address (and it is allowed)."""
        if not self.get_option("callhome_embedded"):
            return
        from ansible_collections.netconf.callhome.plugins.plugin_utils.embedded_listener import (
            ensure_listener,
            is_default_address,
        )

        address = self._listener_address()
        if not is_default_address(address):  # an explicit address is never started
            return
        try:
            started, answer = ensure_listener(
                config_file=self.get_option("callhome_listener_config") or None,
                idle_exit=float(self.get_option("callhome_idle_exit")),
                log=lambda msg: self._show("v", msg),
            )
        except CallHomeError as exc:
            raise AnsibleConnectionFailure(exc.message) from None
        if started:
            self._show("v", "started an embedded call-home listener (pid %s) at %s" % (answer.get("pid"), address))

    # -- waiting ---------------------------------------------------------------------------------

    def _describe_device(self, client: ControlClient, device: str) -> str:
        """One line on what the listener knows of ``device`` (for progress messages)."""
        try:
            rec = client.call("device", device=device, timeout=5.0)
        except DeviceNotFoundError:
            return "not enrolled and never seen (its %s may be waiting in 'callhome-listener pending')" % self._CREDENTIAL
        except CallHomeError as exc:  # pylint: disable=duplicate-except
            return "unknown (%s)" % exc.message
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec["last_seen"])) if rec.get("last_seen") else "never"
        status = rec.get("status")
        if self._DESCRIBE_TRANSPORT:
            status = "%s over %s" % (status, rec.get("transport") or "-")
        text = "status %s, last seen %s from %s" % (status, when, rec.get("peer") or "nowhere")
        if rec.get("last_error"):
            text += ", last error: %s" % rec["last_error"]
        return text

    @contextlib.contextmanager
    def _reporting_progress(self, client: ControlClient, device: str, started: float) -> t.Iterator[None]:
        """While the block waits: under ``-v``, what the listener knows of the device, every
        ``callhome_progress_interval`` seconds (from a thread, as the block's call blocks)."""
        interval = max(1, int(self.get_option("callhome_progress_interval")))
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(interval):
                self._show("v", "still waiting for %s (%.0f s): %s"
                           % (device, time.monotonic() - started, self._describe_device(client, device)))

        threading.Thread(target=watch, name="callhome-progress", daemon=True).start()
        try:
            yield
        finally:
            stop.set()

    # -- errors ----------------------------------------------------------------------------------

    def _failure(self, exc: CallHomeError, device: str, address: str) -> AnsibleConnectionFailure:
        """The listener's error as the message an operator reads in the failed task."""
        if isinstance(exc, ListenerUnreachableError):
            return AnsibleConnectionFailure(self._unreachable(exc, address))
        if isinstance(exc, NotAuthorizedError):
            return AnsibleConnectionFailure(
                "the call-home listener at %s refused the request: %s. Set ansible_callhome_token (or "
                "NETCONF_CALLHOME_TOKEN) to the listener's control token" % (address, exc.message)
            )
        if isinstance(exc, NOT_THERE_YET):
            return AnsibleConnectionFailure(exc.message)
        return AnsibleConnectionFailure(
            "could not %s device %s from the listener at %s: %s (%s)"
            % (self._ENDPOINT_WHAT, device, address, exc.message, exc.code)
        )

    # -- a remote listener: this task's relay to its endpoint ------------------------------------

    def _start_relay(self, client: ControlClient, info: t.Dict[str, t.Any], command_timeout: int) -> str:
        """A local socket for the modules of this task, forwarding to the remote endpoint (op ``rpc``).

        Modules cannot reach the listener's Unix socket on another host; the worker process lives
        while the task's module runs, so a thread of it relays each request over the control channel
        (TLS, token). :meth:`close` removes it when the task ends.
        """
        from ansible_collections.netconf.callhome.plugins.plugin_utils.rpc_relay import (
            Relay,
            RelayError,
            control_rpc,
        )

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
            except (RelayError, CallHomeError) as exc:
                raise RelayError("device %s: the call-home listener at %s: %s" % (device, address, exc.message),
                                 exc.code) from None

        self._relay = Relay(exchange, name="callhome-relay-%s" % device)
        self._show("vvv", "relaying the modules' requests for device %s through %s to the listener at %s"
                   % (device, self._relay.path, address))
        return t.cast(str, self._relay.path)


__all__ = (
    "CallHomeError",
    "CallHomeHandoff",
    "ListenerUnreachableError",
    "REMOTE_SCHEMES",
    "display",
)

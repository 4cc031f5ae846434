# SPDX-License-Identifier: GPL-3.0-or-later
"""Control layer: the listener as the control operations see it.

:class:`ListenerFacade` implements :class:`~netconf_callhome.control.server.ControlledListener`
from the parts the service composes, so the control server never holds the service: state to
read (registry, metrics, the live devices, the bound ports), waits for a device
(:class:`~netconf_callhome.sessions.waiters.DeviceWaiters`), trust changes
(:class:`~netconf_callhome.sessions.trust_edits.TrustEdits`), the per-device endpoints of the
connection plugins, and two lifecycle calls the service hands in (``touch`` postpones an
embedded listener's idle exit, ``request_stop`` is the ``shutdown`` operation).
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Dict, List, Mapping, Tuple

from netconf_callhome.endpoints.ansible_rpc import AnsibleEndpoints
from netconf_callhome.endpoints.restconf_rpc import RestconfEndpoints
from netconf_callhome.metrics import Metrics
from netconf_callhome.policy.verdicts import TrustPolicy
from netconf_callhome.protocol.session import HeldSession
from netconf_callhome.sessions.devices import LiveDevices
from netconf_callhome.sessions.recorder import SessionRecorder
from netconf_callhome.sessions.restconf_sessions import RestconfSessions
from netconf_callhome.sessions.trust_edits import TrustEdits
from netconf_callhome.sessions.waiters import DeviceWaiters
from netconf_callhome.state.registry import Registry


class ListenerFacade:
    """What the control server may read and do, and nothing else of the service."""

    def __init__(
        self,
        *,
        registry: Registry,
        metrics: Metrics,
        policy: TrustPolicy,
        devices: LiveDevices,
        bound: Mapping[str, List[Tuple[str, int]]],
        waiters: DeviceWaiters,
        trust: TrustEdits,
        recorder: SessionRecorder,
        endpoints: AnsibleEndpoints,
        restconf_endpoints: RestconfEndpoints,
        touch: Callable[[], None],
        request_stop: Callable[[], None],
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.bound = bound
        self._policy = policy
        self._devices = devices
        self._waiters = waiters
        self._endpoints = endpoints
        self._restconf_endpoints = restconf_endpoints
        # The operations below are their owners' own methods (one implementation each).
        self.wait_ready = waiters.wait_ready
        self.wait_connected = waiters.wait_connected
        self.approve = trust.approve
        self.enroll = trust.enroll
        self.revoke = trust.revoke
        self.outbound_ssh_secret = trust.outbound_ssh_secret
        self.reload_trust = trust.reload
        self.lease_ended = recorder.lease_ended
        self.touch = touch
        self.request_stop = request_stop

    @property
    def sessions(self) -> Mapping[str, HeldSession]:
        return self._devices.sessions

    @property
    def restconf_sessions(self) -> RestconfSessions:
        return self._devices.restconf

    def enrolled_devices(self) -> Collection[str]:
        return self._policy.index.devices

    async def endpoint(
        self,
        device: str,
        *,
        wait: float,
        network_os: str,
        command_timeout: float,
        collections_paths: List[str],
        client: str,
        api: str = "netconf",
        root_path: str = "",
    ) -> Dict[str, Any]:
        """The device's persistent-connection endpoint, waiting up to ``wait`` s for it to call home.

        ``api`` ``netconf``: its NETCONF session (netconf sub-plugins, netconf.callhome.netconf);
        ``restconf``: its RESTCONF connection (httpapi sub-plugins, netconf.callhome.httpapi)."""
        if api == "restconf":
            conn = await self._waiters.wait_restconf(device, wait)
            return await self._restconf_endpoints.open_restconf(
                conn,
                network_os=network_os,
                root_path=root_path,
                command_timeout=command_timeout,
                collections_paths=collections_paths,
                client=client,
            )
        held = await self._waiters.wait_ready(device, wait)
        return await self._endpoints.open(
            held,
            network_os=network_os,
            command_timeout=command_timeout,
            collections_paths=collections_paths,
            client=client,
        )

    async def rpc(self, endpoint: str, request: bytes) -> bytes:
        """One JSON-RPC request for an endpoint, relayed over the control channel (op ``rpc``)."""
        if self._restconf_endpoints.has(endpoint):
            return await self._restconf_endpoints.request(endpoint, request)
        return await self._endpoints.request(endpoint, request)

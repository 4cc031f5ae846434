# SPDX-License-Identifier: GPL-3.0-or-later
"""Sessions layer: waiting for a device to call home (the control operations ``wait``,
``endpoint`` and ``lease``), and the sentence that says why it did not.

A waiter asks :class:`~netconf_callhome.sessions.devices.LiveDevices` again whenever the device
connects (:meth:`DeviceWaiters.wake`, called by the recorder once a session is held), so no
waiter polls. A wait that ends without a session becomes a ``WaitTimeoutError`` (or
``DeviceNotReadyError`` when the registry says why: a refused key, the device refusing the
listener's credentials), with the registry's record in ``details``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Collection, Dict, List, Optional, Type, TypeVar

from netconf_callhome.errors import CallHomeError, DeviceNotFoundError, DeviceNotReadyError, WaitTimeoutError
from netconf_callhome.protocol.restconf import RestconfConnection
from netconf_callhome.protocol.session import HeldSession
from netconf_callhome.sessions.devices import LiveDevices
from netconf_callhome.state.registry import AUTH_FAILED, KEY_MISMATCH, Registry

_T = TypeVar("_T")


class DeviceWaiters:
    """Coroutines that return once a device holds the session asked for, within a timeout."""

    def __init__(self, devices: LiveDevices, registry: Registry, enrolled: Callable[[], Collection[str]]) -> None:
        self.devices = devices
        self.registry = registry
        self._enrolled = enrolled  # the trust policy's enrolled devices (the error text says which)
        self._waiters: Dict[str, List["asyncio.Future[None]"]] = {}

    def wake(self, device: str) -> None:
        """The device connected: the waits for it look again."""
        for fut in self._waiters.pop(device, []):
            if not fut.done():
                fut.set_result(None)

    async def wait_ready(self, device: str, timeout: float) -> HeldSession:
        """The device's open NETCONF session, waiting up to ``timeout`` s for it to call home."""

        def netconf() -> Optional[HeldSession]:
            held = self.devices.netconf(device)
            if held is not None:
                return held
            if device in self.devices.restconf:
                # Waiting on would only end in a timeout that reads "connected": say why now.
                raise DeviceNotReadyError(
                    "device %r is connected over RESTCONF, which has no NETCONF session to lease: use the "
                    "netconf.callhome.httpapi connection (ansible_network_os ansible.netcommon.restconf) for it" % device,
                    details={"device": device, "transport": "restconf"},
                )
            return None

        return await self._wait_for(device, timeout, netconf)

    async def wait_restconf(self, device: str, timeout: float) -> RestconfConnection:
        """The device's RESTCONF connection, waiting up to ``timeout`` s for it to call home (4336)."""

        def restconf() -> Optional[RestconfConnection]:
            conn = self.devices.restconf.get(device)
            if conn is not None:
                return conn
            held = self.devices.netconf(device)
            if held is not None:
                # Waiting on would only end in a timeout that reads "connected": say why now.
                raise DeviceNotReadyError(
                    "device %r is connected over NETCONF (%s), not RESTCONF: use the netconf.callhome.netconf "
                    "connection for it, or configure its RESTCONF call home to port 4336" % (device, held.transport),
                    details={"device": device, "transport": held.transport},
                )
            return None

        return await self._wait_for(device, timeout, restconf)

    async def wait_connected(self, device: str, timeout: float) -> None:
        """Until the device holds an open session on any transport (NETCONF or RESTCONF), at
        most ``timeout`` s (the ``wait`` operation)."""
        await self._wait_for(device, timeout, lambda: self.devices.connected(device))

    async def _wait_for(self, device: str, timeout: float, ready: Callable[[], Optional[_T]]) -> _T:
        """``ready()``'s first truthy value, asked again whenever the device connects."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            found = ready()
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.not_ready(device, timeout)
            fut: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(device, []).append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except asyncio.TimeoutError:
                pass
            finally:
                waiters = self._waiters.get(device)
                if waiters and fut in waiters:
                    waiters.remove(fut)

    def not_ready(self, device: str, timeout: float) -> CallHomeError:
        """The error of a wait that ended without a session: what the registry knows of it."""
        rec = self.registry.get(device)
        enrolled = device in self._enrolled()
        if rec is None and not enrolled:
            return DeviceNotFoundError(
                "device %r is not enrolled and has never called home; enroll its host key or certificate "
                "(callhome-listener approve / netconf.callhome.enroll)" % device,
                details={"device": device},
            )
        details: Dict[str, Any] = {"device": device, "enrolled": enrolled, "waited": timeout}
        if rec is not None:
            details.update(rec.to_dict())
            details.pop("capabilities", None)
        cls: Type[CallHomeError] = WaitTimeoutError
        if rec is not None and rec.status in (KEY_MISMATCH, AUTH_FAILED):
            cls = DeviceNotReadyError
        return cls(describe_not_ready(device, timeout, rec, enrolled), details=details)


def describe_not_ready(device: str, timeout: float, rec: Any, enrolled: bool) -> str:
    """The sentence an operator reads in a failed task: what happened and what to do."""
    if rec is None:
        return (
            "device %r has not called home within %.0f s; it is enrolled but was never seen. Check that it is "
            "configured to call home to this listener (netconf.callhome.config) and that the listener's call-home port "
            "is reachable from it (4334 NETCONF/SSH, 4335 NETCONF/TLS, 4336 RESTCONF, or the ports in listener.yml)"
            % (device, timeout)
        )
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec.last_seen)) if rec.last_seen else "never"
    base = "device %r has no session after waiting %.0f s: status %s, last seen %s from %s" % (
        device,
        timeout,
        rec.status,
        when,
        rec.peer or "nowhere",
    )
    if rec.status == KEY_MISMATCH:
        return (
            base + ". It presented a key that is not enrolled for it (%s); if the change is expected, "
            "approve it: callhome-listener approve FINGERPRINT --device %s --replace"
            % (rec.last_error, device)
        )
    if rec.status == AUTH_FAILED:
        return (
            base + ". The device rejected the listener's credentials (%s); fix the device's credentials "
            "in the trust store or the listener's defaults" % rec.last_error
        )
    if rec.last_error:
        return base + " (last error: %s)" % rec.last_error
    return base

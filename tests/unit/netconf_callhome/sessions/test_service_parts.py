# SPDX-License-Identifier: GPL-3.0-or-later
"""The parts the service composes, alone: the live-devices table, the waiters, the ownership link
on SQLite (a no-op), and the facade the control server sees (issue 7, item 3)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Collection, List, Set

import pytest

from netconf_callhome.control.facade import ListenerFacade
from netconf_callhome.errors import DeviceNotFoundError, DeviceNotReadyError, WaitTimeoutError
from netconf_callhome.protocol.session import HeldSession
from netconf_callhome.sessions.devices import LiveDevices
from netconf_callhome.sessions.owned import DeviceOwnership
from netconf_callhome.sessions.waiters import DeviceWaiters
from netconf_callhome.state.registry import KEY_MISMATCH, Registry, SQLiteStore

pytestmark = pytest.mark.timeout(30)


def held(device: str, transport: str = "ssh", fingerprint: str = "SHA256:k", peer: str = "192.0.2.1:40000") -> HeldSession:
    return HeldSession(
        device=device, transport=transport, peer=peer, fingerprint=fingerprint, max_hello=1 << 16, max_message=1 << 20
    )


def run(body: Any) -> Any:
    return asyncio.run(body())


# -- LiveDevices ---------------------------------------------------------------------------------


def test_a_new_call_replaces_the_older_session_and_only_the_current_one_is_released() -> None:
    async def body() -> None:
        devices = LiveDevices()
        first, second = held("r1"), held("r1")
        assert devices.hold(first) is None
        assert devices.hold(second) is first  # the caller closes it
        assert devices.hold(second) is None  # the same session again replaces nothing
        assert devices.release(first) is False  # the replaced one closing does not forget r1
        assert devices.netconf("r1") is second and devices.connected("r1")
        second.close("gone")
        assert devices.netconf("r1") is None and not devices.connected("r1") and devices.holds("r1")
        assert devices.release(second) is True and not devices.holds("r1")

    run(body)


def test_the_hint_names_a_device_only_while_it_has_no_session() -> None:
    async def body() -> None:
        devices = LiveDevices()
        session = held("r1", peer="192.0.2.7:5000")
        devices.hold(session)
        devices.called_from(session.peer, "ssh", "r1")
        assert devices.hint_for("192.0.2.7", "ssh") == ""  # connected: no hint to give
        assert devices.hint_for("192.0.2.7", "tls") == ""  # per transport
        session.close("gone")
        devices.release(session)
        assert devices.hint_for("192.0.2.7", "ssh") == "r1"

    run(body)


def test_tls_identities_are_bounded_and_follow_the_session() -> None:
    async def body() -> None:
        devices = LiveDevices(tls_identity_cache=2)
        devices.accepted("F1", ["subject:CN=r1"])
        devices.accepted("F2", ["subject:CN=r2"])
        devices.accepted("F1", ["subject:CN=r1"])  # used again: the newest
        devices.accepted("F3", ["subject:CN=r3"])
        assert devices.identities_of("F2") == [] and devices.identities_of("F1") == ["subject:CN=r1"]
        tls = held("r1", transport="tls", fingerprint="F1")
        devices.hold(tls)
        ssh = held("r2", transport="ssh", fingerprint="SHA256:x")
        devices.hold(ssh)
        live = {s.device: s for s in devices.live()}
        assert list(live["r1"].identities) == ["subject:CN=r1"] and list(live["r2"].identities) == []
        live["r1"].close("revoked")
        assert tls.closed.result() == "revoked"

    run(body)


def test_close_device_closes_what_it_holds_and_says_whether_it_held_anything() -> None:
    async def body() -> None:
        devices = LiveDevices()
        session = held("r1")
        devices.hold(session)
        assert devices.close_device("r1", "moved to node b") is True
        assert session.closed.result() == "moved to node b"
        assert devices.close_device("r2", "x") is False

    run(body)


# -- DeviceWaiters -------------------------------------------------------------------------------


def _waiters(tmp_path: Path, enrolled: Collection[str] = ()) -> DeviceWaiters:
    return DeviceWaiters(LiveDevices(), Registry(SQLiteStore(str(tmp_path / "r.sqlite"))), lambda: set(enrolled))


def test_a_waiter_is_woken_by_the_connection_not_by_polling(tmp_path: Path) -> None:
    async def body() -> None:
        waiters = _waiters(tmp_path, {"r1"})
        task = asyncio.ensure_future(waiters.wait_ready("r1", 20))
        await asyncio.sleep(0.05)
        assert not task.done()
        session = held("r1")
        waiters.devices.hold(session)
        started = time.monotonic()
        waiters.wake("r1")
        assert await asyncio.wait_for(task, 5) is session
        assert time.monotonic() - started < 1.0
        await waiters.wait_connected("r1", 0)  # already connected: returns at once

    run(body)


def test_a_wait_that_ends_without_a_session_says_why(tmp_path: Path) -> None:
    async def body() -> None:
        waiters = _waiters(tmp_path, {"r1", "r2"})
        with pytest.raises(DeviceNotFoundError, match="not enrolled and has never called home"):
            await waiters.wait_connected("ghost", 0)
        with pytest.raises(WaitTimeoutError, match="enrolled but was never seen") as info:
            await waiters.wait_connected("r1", 0.05)
        assert info.value.details["enrolled"] is True
        waiters.registry.update("r2", status=KEY_MISMATCH, last_seen=time.time(), last_error="another key")
        with pytest.raises(DeviceNotReadyError, match="approve FINGERPRINT --device r2 --replace"):
            await waiters.wait_ready("r2", 0)

    run(body)


# -- DeviceOwnership -----------------------------------------------------------------------------


def test_ownership_is_a_no_op_with_sqlite_state(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "r.sqlite"))
    owned = DeviceOwnership(store, Registry(store), LiveDevices())
    assert owned.ownership is None
    owned.claim("r1")
    owned.release("r1")
    owned.close()


# -- ListenerFacade ------------------------------------------------------------------------------


class _Trust:
    def __init__(self) -> None:
        self.calls: List[str] = []

    async def approve(self, fingerprint: str, device: str = "", **kw: Any) -> Any:
        self.calls.append("approve %s %s" % (fingerprint, device))
        return {"device": device}

    async def enroll(self, *a: Any, **kw: Any) -> Any:
        return {}

    async def revoke(self, *a: Any, **kw: Any) -> Any:
        return {}

    async def outbound_ssh_secret(self, *a: Any, **kw: Any) -> Any:
        return {}

    def reload(self) -> bool:
        self.calls.append("reload")
        return True


def test_the_facade_exposes_the_parts_and_nothing_else(tmp_path: Path) -> None:
    async def body() -> None:
        waiters = _waiters(tmp_path, {"r1"})
        trust = _Trust()
        stops: Set[str] = set()
        facade = ListenerFacade(
            registry=waiters.registry,
            metrics=None,  # type: ignore[arg-type]
            policy=type("P", (), {"index": type("I", (), {"devices": {"r1": {}}})()})(),  # type: ignore[arg-type]
            devices=waiters.devices,
            bound={"ssh": [("127.0.0.1", 4334)]},
            waiters=waiters,
            trust=trust,  # type: ignore[arg-type]
            recorder=type("R", (), {"lease_ended": lambda self, held: None})(),  # type: ignore[arg-type]
            endpoints=None,  # type: ignore[arg-type]
            restconf_endpoints=None,  # type: ignore[arg-type]
            touch=lambda: stops.add("touch"),
            request_stop=lambda: stops.add("stop"),
        )
        assert list(facade.enrolled_devices()) == ["r1"]
        session = held("r1")
        waiters.devices.hold(session)
        assert facade.sessions["r1"] is session and len(facade.restconf_sessions) == 0
        assert await facade.wait_ready("r1", 0) is session
        assert await facade.approve("SHA256:x", "r1") == {"device": "r1"}
        assert facade.reload_trust() is True and trust.calls == ["approve SHA256:x r1", "reload"]
        facade.touch()
        facade.request_stop()
        assert stops == {"touch", "stop"}
        assert not hasattr(facade, "spawn") and not hasattr(facade, "ssh_host_key")

    run(body)

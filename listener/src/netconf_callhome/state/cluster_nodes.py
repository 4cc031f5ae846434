# SPDX-License-Identifier: GPL-3.0-or-later
"""Where the nodes of a cluster are, and which one holds a device: read from the shared database.

Every node with a node-to-node channel (``cluster.bind``) records the address it answers on in
the ``nodes`` table (migration 5) and refreshes a heartbeat there. A node that is asked for a
device it does not hold looks up the device's owner (``device_owners``, state.ownership) and that
owner's address here, then forwards the request (control.forward). ``devices`` on any node shows
every device of the shared ``devices`` table.

The queries run on the store's own loop (its thread and pool); the service's loop awaits them
through :meth:`NodeDirectory.run` and never blocks on the database.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Coroutine, Dict, List, Optional, TypeVar

from netconf_callhome.errors import StateStoreError
from netconf_callhome.state.postgres import PostgresConnection
from netconf_callhome.state.registry import CONNECTED

_T = TypeVar("_T")

# How often a node refreshes its heartbeat (seconds); a node silent for HEARTBEAT_STALE is shown
# as such in the errors that name it (it is still tried: the database may be what lags).
HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_STALE = 3 * HEARTBEAT_INTERVAL


@dataclass(frozen=True)
class Holder:
    """The node that holds a device's session now, per the shared database."""

    device: str
    node: str
    address: str  # "" when that node has no channel recorded (no cluster.bind)
    epoch: int
    heartbeat_age: Optional[float]  # seconds since its last heartbeat, None when unknown


_OWNER = """
SELECT o.node, o.epoch, coalesce(n.address, ''), extract(epoch FROM now() - n.heartbeat_at)::float8
FROM device_owners o
JOIN devices d ON d.name = o.name AND d.node = o.node AND d.status = $2
LEFT JOIN nodes n ON n.name = o.node
WHERE o.name = $1
"""
_OWNERS = _OWNER.replace("WHERE o.name = $1", "WHERE o.name = ANY($1::text[])").replace(
    "SELECT o.node,", "SELECT o.name, o.node,"
)
_REGISTER = """
INSERT INTO nodes (name, address, started_at, heartbeat_at) VALUES ($1, $2, now(), now())
ON CONFLICT (name) DO UPDATE SET address = excluded.address, started_at = now(), heartbeat_at = now()
"""


class NodeDirectory:
    """The ``nodes`` table and the owner lookups of one node, on a PostgreSQL store."""

    def __init__(self, store: PostgresConnection) -> None:
        self.store = store
        self.node = store.node

    async def run(self, coro: "Coroutine[Any, Any, _T]") -> _T:
        """Await ``coro`` on the store's loop from any other loop; database errors as
        :class:`StateStoreError` naming the redacted URL."""
        store = self.store
        try:
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, store._loop))
        except store._failures() as exc:
            raise StateStoreError(
                "cannot read the cluster's state from %s: %s" % (store.url, store._scrub(exc)),
                details={"url": store.url},
            ) from None

    async def register(self, address: str) -> None:
        await self.run(self._execute(_REGISTER, self.node, address))

    async def heartbeat(self) -> None:
        await self.run(self._execute("UPDATE nodes SET heartbeat_at = now() WHERE name = $1", self.node))

    async def holder(self, device: str) -> Optional[Holder]:
        """The node whose session with ``device`` is connected now, or None (nobody holds it)."""
        row = await self.run(self._fetchrow(_OWNER, device, CONNECTED))
        if row is None:
            return None
        return Holder(device, str(row[0]), str(row[2]), int(row[1]), None if row[3] is None else float(row[3]))

    async def holders(self, devices: List[str]) -> Dict[str, Holder]:
        """:meth:`holder` for many devices in one query (the devices nobody holds are left out)."""
        rows = await self.run(self._fetch(_OWNERS, devices, CONNECTED))
        return {
            str(r[0]): Holder(str(r[0]), str(r[1]), str(r[3]), int(r[2]), None if r[4] is None else float(r[4]))
            for r in rows
        }

    async def address(self, node: str) -> str:
        """The node-to-node address ``node`` recorded, or ""."""
        row = await self.run(self._fetchrow("SELECT address FROM nodes WHERE name = $1", node))
        return str(row[0]) if row is not None else ""

    async def nodes(self) -> List[Dict[str, Any]]:
        rows = await self.run(
            self._fetch(
                "SELECT name, address, extract(epoch FROM now() - heartbeat_at)::float8 FROM nodes ORDER BY name"
            )
        )
        return [{"node": r[0], "address": r[1], "heartbeat_age": round(float(r[2]), 1)} for r in rows]

    async def devices(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every device row of the shared database (or the one named), with the ``node`` holding it."""
        query = "SELECT doc::text, node FROM devices" + (" WHERE name = $1" if name is not None else "")
        rows = await self.run(self._fetch(query, *([name] if name is not None else [])))
        out = []
        for row in rows:
            doc = json.loads(row[0])
            doc["node"] = row[1]
            out.append(doc)
        return out

    # -- on the store's loop -------------------------------------------------------------------

    async def _execute(self, query: str, *args: Any) -> None:
        async with self.store._pool.acquire() as conn:
            await conn.execute(query, *args)

    async def _fetchrow(self, query: str, *args: Any) -> Any:
        async with self.store._pool.acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def _fetch(self, query: str, *args: Any) -> List[Any]:
        async with self.store._pool.acquire() as conn:
            return list(await conn.fetch(query, *args))


__all__ = ("HEARTBEAT_INTERVAL", "HEARTBEAT_STALE", "Holder", "NodeDirectory")

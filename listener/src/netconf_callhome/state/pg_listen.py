# SPDX-License-Identifier: GPL-3.0-or-later
"""LISTEN/NOTIFY for the PostgreSQL stores: one connection that listens, kept open.

A node learns at once what another node did (a device it holds was claimed elsewhere, the trust
store changed) through PostgreSQL notifications. :class:`ChannelListener` runs on a store's own
loop (never the service's): it opens a dedicated connection (a pooled one would lose its
listeners when the pool resets it), ``LISTEN``s on its channels (asyncpg ``add_listener``), and
when that connection is lost it reconnects with backoff. Notifications sent while it was away are
lost, so each (re)connection calls ``on_connect``: the store then re-reads what it may have
missed (the caller's periodic poll is the fallback either way).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Dict, Optional

from netconf_callhome.state.postgres import PostgresConnection

log = logging.getLogger("netconf_callhome.registry")

RETRY_MAX = 10.0  # seconds between reconnection attempts, at most


class ChannelListener:
    def __init__(
        self,
        store: PostgresConnection,
        channels: Dict[str, Callable[[str], None]],
        *,
        on_connect: Optional[Callable[[], Awaitable[None]]] = None,
        retry: float = 0.5,
    ) -> None:
        self.store = store
        self.channels = channels
        self.on_connect = on_connect
        self.retry = retry
        self.connected = asyncio.Event()  # set while listening (tests wait for it)
        self._task: "Optional[asyncio.Task[None]]" = None

    def start(self) -> None:
        """Start listening (call on the store's loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        delay = self.retry
        failing = False
        while True:
            conn: Any = None
            try:
                conn = await self.store._asyncpg.connect(
                    self.store._dsn, timeout=10, command_timeout=self.store.command_timeout
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn: lost.set())
                for channel, callback in self.channels.items():
                    await conn.add_listener(channel, _deliver(callback))
                self.connected.set()
                if failing:
                    log.warning("event=state.listen_recovered url=%s channels=%s", self.store.url, ",".join(self.channels))
                failing = False
                delay = self.retry
                if self.on_connect is not None:
                    await self.on_connect()
                while not lost.is_set():
                    # A server that vanished without a FIN leaves no termination: ask now and then.
                    try:
                        await asyncio.wait_for(lost.wait(), 5.0)
                    except asyncio.TimeoutError:
                        await conn.fetchval("SELECT 1")
            except asyncio.CancelledError:
                if conn is not None:
                    conn.terminate()
                raise
            except self.store._failures() as exc:
                if not failing:
                    log.error(
                        "event=state.listen_failed url=%s channels=%s error=%r (changes of other nodes are seen "
                        "by polling until it is back)",
                        self.store.url,
                        ",".join(self.channels),
                        self.store._scrub(exc),
                    )
                failing = True
            self.connected.clear()
            if conn is not None and not conn.is_closed():
                conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)


def _deliver(callback: Callable[[str], None]) -> Callable[[Any, int, str, str], None]:
    def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            callback(payload)
        except Exception:  # a bad payload or a bug must not end the listening
            log.exception("event=state.notify_error payload=%r", payload[:200])

    return on_notify

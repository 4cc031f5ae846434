# SPDX-License-Identifier: GPL-3.0-or-later
"""LISTEN/NOTIFY for the PostgreSQL stores: one connection per node that listens, kept open.

A node learns at once what another node did (a device it holds was claimed elsewhere, the trust
store changed) through PostgreSQL notifications. :class:`ChannelListener` runs on a store's own
loop (never the service's): it opens a dedicated connection (a pooled one would lose its
listeners when the pool resets it), ``LISTEN``s on its subscribers' channels (asyncpg
``add_listener``), and when that connection is lost it reconnects with backoff.

**One connection for every channel of the node.** Each committed transaction that sends a
notification wakes every backend listening in the database, on any channel, and each wake-up is a
transaction of its own (docs/performance.md, runs X3 and X4): a node's listening connections
multiply the database's commits during a call-home storm. So the ownership fence and the shared
trust store subscribe to one listener (:meth:`subscribe`, wired by the service): each with its
channel, its callback and its resync, and each on its own store's loop, which may be another
thread's (callbacks are then handed over with ``call_soon_threadsafe``).

Notifications sent while the connection was away are lost, so each (re)connection calls every
subscriber's ``on_connect``: the store then re-reads what it may have missed (the caller's
periodic poll is the fallback either way). A subscriber that joins while the connection is up has
its ``on_connect`` called once its channel is listened to.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Dict, List, Optional, Set

from netconf_callhome.state.postgres import PostgresConnection

log = logging.getLogger("netconf_callhome.registry")

RETRY_MAX = 10.0  # seconds between reconnection attempts, at most


@dataclass(eq=False)
class Subscription:
    """One subscriber's channel: ``callback(payload)`` for each notification and ``on_connect()``
    after each (re)connection, both run on ``loop`` (None: the listener's own loop)."""

    channel: str
    callback: Callable[[str], None]
    on_connect: Optional[Callable[[], Coroutine[Any, Any, None]]]
    loop: Optional[asyncio.AbstractEventLoop]


class ChannelListener:
    def __init__(
        self,
        store: PostgresConnection,
        channels: Optional[Dict[str, Callable[[str], None]]] = None,
        *,
        on_connect: Optional[Callable[[], Coroutine[Any, Any, None]]] = None,
        retry: float = 0.5,
    ) -> None:
        self.store = store
        self.retry = retry
        self.connected = asyncio.Event()  # set while listening (tests wait for it)
        self.connections = 0  # connections made (tests: a reconnection happened)
        self._subs: List[Subscription] = []
        for index, (channel, callback) in enumerate((channels or {}).items()):
            # the resync once per connection, with the first channel
            self._subs.append(Subscription(channel, callback, on_connect if index == 0 else None, None))
        if not channels and on_connect is not None:
            raise ValueError("on_connect without a channel")
        self._task: "Optional[asyncio.Task[None]]" = None
        self._conn: Any = None
        self._listening: Set[str] = set()  # channels LISTENed on the current connection
        self._dispatchers: Dict[str, Callable[[Any, int, str, str], None]] = {}

    @property
    def channels(self) -> List[str]:
        return sorted({sub.channel for sub in self._subs})

    def start(self) -> None:
        """Start listening (call on the store's loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # -- subscribers (any thread) ----------------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        callback: Callable[[str], None],
        *,
        on_connect: Optional[Callable[[], Coroutine[Any, Any, None]]] = None,
        loop: Optional[asyncio.AbstractEventLoop] = None,
    ) -> Subscription:
        """Hear ``channel`` on this listener's connection. ``callback`` and ``on_connect`` run on
        ``loop`` (a store's loop; None: this listener's). Callable from any thread."""
        sub = Subscription(channel, callback, on_connect, None if loop is self.store._loop else loop)
        self._call(self._add, sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub`` (its channel stays listened to until the next connection)."""
        self._call(self._remove, sub)

    def _call(self, func: Callable[[Subscription], None], sub: Subscription) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.store._loop:
            func(sub)
        elif not self.store._loop.is_closed():
            self.store._loop.call_soon_threadsafe(func, sub)

    # -- on the listener's loop ------------------------------------------------------------------

    def _add(self, sub: Subscription) -> None:
        self._subs.append(sub)
        if self.connected.is_set() and self._conn is not None:
            # Up already: listen on its channel, then let it catch up on what it may have missed.
            asyncio.get_running_loop().create_task(self._join(self._conn, sub))

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    async def _join(self, conn: Any, sub: Subscription) -> None:
        try:
            await self._listen_all(conn)
            await self._resync(sub)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001  the connection's loss is handled by _run
            log.warning("event=state.listen_join_failed channel=%s error=%r", sub.channel, self.store._scrub(exc))

    async def _listen_all(self, conn: Any) -> None:
        # Until no channel is missing: a subscriber may join while a LISTEN is awaited.
        while True:
            missing = [sub.channel for sub in self._subs if sub.channel not in self._listening]
            if not missing:
                return
            for channel in dict.fromkeys(missing):
                self._listening.add(channel)
                await conn.add_listener(channel, self._dispatcher(channel))

    def _dispatcher(self, channel: str) -> Callable[[Any, int, str, str], None]:
        # One callable per channel (asyncpg keeps a set of them: added twice, delivered once).
        if channel not in self._dispatchers:

            def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                for sub in list(self._subs):
                    if sub.channel == channel:
                        self._deliver(sub, payload)

            self._dispatchers[channel] = on_notify
        return self._dispatchers[channel]

    def _deliver(self, sub: Subscription, payload: str) -> None:
        if sub.loop is None:
            _call_safely(sub.callback, payload)
            return
        try:
            sub.loop.call_soon_threadsafe(_call_safely, sub.callback, payload)
        except RuntimeError:  # its store was closed meanwhile
            pass

    async def _resync(self, sub: Subscription) -> None:
        """``sub.on_connect()`` on its loop, awaited: a database failure in it is the
        connection's (reconnect, and every subscriber resyncs again)."""
        if sub.on_connect is None:
            return
        if sub.loop is None:
            await sub.on_connect()
            return
        try:
            future: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(sub.on_connect(), sub.loop)
        except RuntimeError:  # its store was closed meanwhile
            return
        # Bounded (a store that is stopping never runs it), and its cancellation (its loop shut
        # down) is not this task's: asyncio.wait neither raises it nor cancels the future.
        wrapped = asyncio.wrap_future(future)
        done, _pending = await asyncio.wait({wrapped}, timeout=self.store.command_timeout + 5)
        if not done:
            future.cancel()
            log.warning("event=state.listen_resync_timeout channel=%s", sub.channel)
        elif not wrapped.cancelled():
            failure = wrapped.exception()
            if failure is not None:
                raise failure  # a database failure: reconnect (every subscriber resyncs again)

    async def _run(self) -> None:
        delay = self.retry
        failing = False
        while True:
            conn: Any = None
            try:
                conn = await self.store._asyncpg.connect(
                    self.store._dsn,
                    timeout=10,
                    command_timeout=self.store.command_timeout,
                    # names the node's one listening backend in pg_stat_activity
                    server_settings={"application_name": ("callhome-listener %s listen" % self.store.node)[:63]},
                )
                self.connections += 1
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn: lost.set())
                self._listening = set()
                self._conn = conn
                await self._listen_all(conn)
                self.connected.set()  # from here on a joining subscriber resyncs itself (_add)
                if failing:
                    log.warning(
                        "event=state.listen_recovered url=%s channels=%s", self.store.url, ",".join(self.channels)
                    )
                failing = False
                delay = self.retry
                for sub in list(self._subs):
                    await self._resync(sub)
                while not lost.is_set():
                    # A server that vanished without a FIN leaves no termination: ask now and then.
                    try:
                        await asyncio.wait_for(lost.wait(), 5.0)
                    except asyncio.TimeoutError:
                        await conn.fetchval("SELECT 1")
            except asyncio.CancelledError:
                self.connected.clear()
                self._conn = None
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
            self._conn = None
            if conn is not None and not conn.is_closed():
                conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)


def _call_safely(callback: Callable[[str], None], payload: str) -> None:
    try:
        callback(payload)
    except Exception:  # a bad payload or a bug must not end the listening
        log.exception("event=state.notify_error payload=%r", payload[:200])

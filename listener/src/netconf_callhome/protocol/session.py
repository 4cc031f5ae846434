# SPDX-License-Identifier: GPL-3.0-or-later
"""A device's held call-home session and the leases that hand it to clients.

Two ways to lease, chosen per device:

``channel``  SSH devices that serve a new NETCONF session on each ``netconf`` channel get a fresh
             channel per lease. The listener reads the device's hello on it first (within
             ``channel_hello_timeout``) and passes it on; then bytes are piped untouched and the
             client runs its own hello with the device. Leases on one device run side by side.
``shared``   TLS devices (one NETCONF session per connection, RFC 7589) and SSH devices that
             refuse a second channel or accept it and never say hello on it (one NETCONF session
             per SSH connection, as libnetconf2 servers do): the listener keeps the one session
             it opened, and a multiplexer (:mod:`netconf_callhome.sessions.mux`, handed in as a
             :class:`SharedServer` by the service) serves any number of clients over it at once.

An SSH device starts in ``channel`` (``auto``); the first refused or silent channel switches it
to ``shared`` for good, and that lease is served shared. The service remembers the switch in
the registry and passes it in for the device's next connections (:meth:`HeldSession.configure`),
where an operator's pin (``session_modes``) overrides both. :meth:`HeldSession.prepare` decides
the mode *before* the lease is announced, so the control answer names the mode it runs in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Optional, Protocol, Tuple

from netconf_callhome.config import SESSION_MODES  # ("auto", "channel", "shared")
from netconf_callhome.errors import (
    FramingError,
    HandshakeError,
    LeaseError,
)

from netconf_callhome.protocol.framing import CLIENT_HELLO, EOM, Framer, Hello, parse_hello

log = logging.getLogger("netconf_callhome.session")

AUTO = "auto"
CHANNEL = "channel"
SHARED = "shared"
DEFAULT_CHANNEL_HELLO_TIMEOUT = 5.0
_READ = 65536


class Carrier(Protocol):
    """The byte pipe under a held NETCONF session (an SSH channel or a TLS connection)."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class SharedServer(Protocol):
    """Serves ``shared`` leases over the held session (``sessions.mux.Multiplexer``)."""

    def device_message(self, message: bytes) -> None:
        """Every device message after the hello."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """One client's lease, until it or the device ends it; returns why."""


ModeChanged = Callable[["HeldSession", str, str], None]


class HeldSession:
    """The NETCONF session the listener opened on a device's call-home connection."""

    def __init__(
        self,
        *,
        device: str,
        transport: str,
        peer: str,
        fingerprint: str,
        max_hello: int,
        max_message: int,
        open_channel: Optional[Callable[[], Awaitable[Tuple[Any, Any]]]] = None,
    ) -> None:
        self.device = device
        self.transport = transport
        self.peer = peer
        self.fingerprint = fingerprint
        self.mode = SHARED
        self.hello: Optional[Hello] = None
        self.connected_at = time.time()
        self.max_message = max_message
        self.max_hello = max_hello
        self._framer = Framer(max_hello)
        self._carrier: Optional[Carrier] = None
        self._hello_waiter: "asyncio.Future[Hello]" = asyncio.get_running_loop().create_future()
        # The waiter may fail before anyone awaits it (connection lost while opening the channel).
        self._hello_waiter.add_done_callback(_retrieve)
        self.closed: "asyncio.Future[str]" = asyncio.get_running_loop().create_future()
        self.active_leases = 0
        self.failed = False  # closed because the device broke the protocol, not a plain drop
        # When the device last sent anything (monotonic): the liveness check probes a session
        # only after it has been silent for a while (sessions.mux.Multiplexer.watch_liveness).
        self.last_received = time.monotonic()
        # From the SSH transport: opens a new ``netconf`` channel on the device's connection.
        self.open_channel = open_channel
        # From the service (configure): how shared leases are served and the mode policy.
        self._shared: Optional[SharedServer] = None
        self.pinned = AUTO
        self.channel_hello_timeout = DEFAULT_CHANNEL_HELLO_TIMEOUT
        self._on_mode_change: Optional[ModeChanged] = None

    # -- carrier callbacks ---------------------------------------------------------------------

    def attach(self, carrier: Carrier) -> None:
        self._carrier = carrier
        carrier.write(CLIENT_HELLO + b"]]>]]>")

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        try:
            self._dispatch(self._framer.feed(data))
        except FramingError as exc:
            self.failed = True
            self.close("device broke NETCONF framing: %s" % exc.message)

    def _dispatch(self, messages: "list[bytes]") -> None:
        for msg in messages:
            if not self._hello_waiter.done():
                try:
                    hello = parse_hello(msg)
                except FramingError as exc:
                    self._hello_waiter.set_exception(HandshakeError("bad hello from device: %s" % exc.message))
                    return
                self._framer.max_message = self.max_message
                self.hello = hello
                self._hello_waiter.set_result(hello)
                if hello.base11:
                    self._dispatch(self._framer.use_chunked())
                    return
                continue
            if self._shared is not None:
                self._shared.device_message(msg)
            # Without a shared server, notifications and stray replies are dropped on purpose.

    def connection_lost(self, reason: str) -> None:
        if not self._hello_waiter.done():
            self._hello_waiter.set_exception(HandshakeError(reason))
        if not self.closed.done():
            self.closed.set_result(reason)  # the service watches this future

    # -- lifecycle -----------------------------------------------------------------------------

    async def wait_hello(self) -> Hello:
        hello = await self._hello_waiter
        if self.closed.done():  # the hello came, but the device broke the session right after
            raise HandshakeError(self.closed.result())
        return hello

    def send(self, message: bytes) -> None:
        if self._carrier is None or self.closed.done():
            raise LeaseError("the device session of %s is closed" % self.device)
        self._carrier.write(self._framer.encode(message))

    def close(self, reason: str) -> None:
        if self._carrier is not None:
            self._carrier.close()
        self.connection_lost(reason)

    @property
    def is_open(self) -> bool:
        return not self.closed.done()

    # -- mode policy ---------------------------------------------------------------------------

    def configure(
        self,
        *,
        shared: Optional[SharedServer] = None,
        pinned: str = AUTO,
        remembered: str = "",
        channel_hello_timeout: float = DEFAULT_CHANNEL_HELLO_TIMEOUT,
        on_mode_change: Optional[ModeChanged] = None,
    ) -> None:
        """Set by the service when the session is ready, before any lease.

        ``pinned`` is the operator's choice for this device (``auto``, ``channel``, ``shared``);
        under ``auto`` a device ``remembered`` as ``shared`` (it refused or ignored a channel on
        an earlier connection) stays shared and is not probed again. Without a way to open
        channels (TLS) the mode is ``shared`` whatever is asked. ``on_mode_change(held, mode,
        reason)`` hears of a fallback, to remember it.
        """
        if pinned not in SESSION_MODES:
            raise ValueError("session mode must be one of %s, not %r" % (", ".join(SESSION_MODES), pinned))
        if shared is not None:
            self._shared = shared
        self.pinned = pinned
        self.channel_hello_timeout = channel_hello_timeout
        self._on_mode_change = on_mode_change
        if self.open_channel is None or pinned == SHARED:
            self.mode = SHARED
        elif pinned == CHANNEL:
            self.mode = CHANNEL
        elif remembered == SHARED:
            self.mode = SHARED

    def _fall_back(self, reason: str) -> None:
        """This device does not serve a session per channel: shared from now on."""
        if self.mode == SHARED:
            return  # a concurrent lease found out first
        self.mode = SHARED
        log.warning("event=session.mode_fallback device=%s mode=shared reason=%r", self.device, reason)
        if self._on_mode_change is not None:
            self._on_mode_change(self, SHARED, reason)

    # -- leases --------------------------------------------------------------------------------

    async def prepare(self) -> "Lease":
        """Decide how the next lease runs and get it ready; :meth:`Lease.serve` runs it.

        In ``channel`` mode this opens the channel and reads the device's hello on it, so a
        device that refuses the channel, or accepts it and stays silent for
        ``channel_hello_timeout`` s, is found here; the lease then runs shared (unless the
        device is pinned to ``channel``: LeaseError).
        """
        if self.closed.done():
            raise LeaseError("the device session of %s is closed: %s" % (self.device, self.closed.result()))
        self.active_leases += 1
        try:
            if self.mode == CHANNEL and self.open_channel is not None:
                lease = await self._channel_lease()
                if lease is not None:
                    return lease
            if self._shared is None:
                raise LeaseError("the session of %s cannot be shared (no multiplexer configured)" % self.device)
            return Lease(self, SHARED)
        except BaseException:
            self.active_leases -= 1
            raise

    async def _channel_lease(self) -> Optional["Lease"]:
        open_channel = self.open_channel
        assert open_channel is not None

        async def open_and_hello() -> Tuple[Any, Any, bytes]:
            chan_writer, chan_reader = await open_channel()
            try:
                return chan_writer, chan_reader, await _read_hello(chan_reader, self.max_hello)
            except BaseException:  # timed out, cancelled, or no hello: the channel goes
                _close_quietly(chan_writer)
                raise

        # The open is bounded too: a device that never confirms the channel is as silent.
        try:
            chan_writer, chan_reader, first = await asyncio.wait_for(open_and_hello(), self.channel_hello_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            self._channel_failed(
                "device sent no NETCONF hello on a new channel within %g s (it serves one session per connection)"
                % self.channel_hello_timeout
            )
            return None
        except LeaseError as exc:  # refused, or closed before its hello
            self._channel_failed(exc.message)
            return None
        except (FramingError, ConnectionError, OSError) as exc:
            self._channel_failed("no NETCONF hello on a new channel: %s" % getattr(exc, "message", exc))
            return None
        return Lease(self, CHANNEL, chan_reader=chan_reader, chan_writer=chan_writer, first=first)

    def _channel_failed(self, reason: str) -> None:
        if self.pinned == CHANNEL:
            raise LeaseError(
                "%s is pinned to session mode 'channel' (session_modes) but %s; pin it 'shared' or 'auto'"
                % (self.device, reason)
            )
        self._fall_back(reason)

    async def lease(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_mode: Optional[Callable[[str], None]] = None,
    ) -> str:
        """Serve one lease on the client's streams until either side ends it; returns why.

        ``on_mode`` hears the mode the lease runs in before it starts.
        """
        lease = await self.prepare()
        if on_mode is not None:
            try:
                on_mode(lease.mode)
            except BaseException:
                lease.release()
                raise
        return await lease.serve(reader, writer)


class Lease:
    """One prepared lease of a held session: its mode is decided, its channel (if any) said hello.

    Serve it once with :meth:`serve`, or give it up with :meth:`release`; either way the held
    session's ``active_leases`` counts it until then.
    """

    def __init__(
        self,
        held: HeldSession,
        mode: str,
        *,
        chan_reader: Optional[asyncio.StreamReader] = None,
        chan_writer: Optional[asyncio.StreamWriter] = None,
        first: bytes = b"",
    ) -> None:
        self.held = held
        self.mode = mode
        self._chan_reader = chan_reader
        self._chan_writer = chan_writer
        self._first = first  # the device's hello on the channel (and whatever came with it)
        self._finished = False

    @property
    def hello(self) -> Hello:
        """The device's hello as this lease's client receives it first: the new channel's own
        (its session-id), or the held session's for a shared lease (what the multiplexer replays)."""
        if self._chan_reader is not None:
            end = self._first.find(EOM)
            return parse_hello(self._first[:end] if end >= 0 else self._first)
        assert self.held.hello is not None  # a lease is prepared only after the hello came
        return self.held.hello

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        if self._finished:
            raise LeaseError("this lease of %s was already used" % self.held.device)
        try:
            if self._chan_reader is not None and self._chan_writer is not None:
                writer.write(self._first)
                return await _pipe(reader, writer, self._chan_reader, self._chan_writer, self.held.closed)
            shared = self.held._shared  # pylint: disable=protected-access
            assert shared is not None
            return await shared.serve(reader, writer)
        finally:
            self._finish()

    def release(self) -> None:
        """Give up a lease that was never served (its channel is closed)."""
        if self._chan_writer is not None and not self._finished:
            _close_quietly(self._chan_writer)
        self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self.held.active_leases -= 1


async def _read_hello(reader: asyncio.StreamReader, limit: int) -> bytes:
    """The device's hello on a fresh channel: every byte read, kept for the client.

    The end of the hello is found by a :class:`Framer` (each byte searched once, the size
    bounded while reading): a device that sends its hello in tiny pieces costs linear time."""
    framer = Framer(limit)
    buf = bytearray()
    while True:
        data = await reader.read(_READ)
        if not data:
            raise LeaseError("device closed the channel before its hello")
        buf += data
        messages = framer.feed(data)  # FramingError past the limit
        if messages:
            parse_hello(messages[0])  # FramingError: not a NETCONF session after all
            return bytes(buf)


def _close_quietly(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except Exception:  # the channel may already be gone with its connection
        pass


def _retrieve(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled():
        fut.exception()


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    chan_reader: asyncio.StreamReader,
    chan_writer: asyncio.StreamWriter,
    device_closed: "asyncio.Future[str]",
) -> str:
    """Copy bytes both ways between a lease client and a dedicated device channel."""

    async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, label: str) -> str:
        while True:
            data = await src.read(_READ)
            if not data:
                return label
            dst.write(data)
            await dst.drain()

    up = asyncio.ensure_future(copy(reader, chan_writer, "client closed the lease"))
    down = asyncio.ensure_future(copy(chan_reader, writer, "device closed the NETCONF channel"))
    closed_wait = asyncio.ensure_future(asyncio.shield(device_closed))
    try:
        done = (await asyncio.wait({up, down, closed_wait}, return_when=asyncio.FIRST_COMPLETED))[0]
        first = done.pop()
        if first is closed_wait:
            return "device session closed: %s" % device_closed.result()
        exc = first.exception()
        return str(exc) if exc else first.result()
    finally:
        for task in (up, down, closed_wait):
            task.cancel()
        _close_quietly(chan_writer)

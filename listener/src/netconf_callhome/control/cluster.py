# SPDX-License-Identifier: GPL-3.0-or-later
"""The node-to-node channel of a scale-out cluster: mutual TLS, the control protocol's lines.

A node forwards a client's ``wait`` / ``endpoint`` / ``lease`` / ``rpc`` for a device another node
holds to that node (control.forward). The channel carries the same JSON-line protocol as the
control socket; a forwarded request is served by the owner's control server as if a local client
had asked, except that it is never forwarded again.

Connections are kept and reused (:class:`ClusterClient`'s pool, ``cluster.pool_size`` per peer,
``cluster.pool_idle``): a request line with ``"keep": true`` (``wait``, ``endpoint``, ``rpc``,
whose answers have a known end: one line, plus ``size`` bytes for ``rpc``) leaves the connection
open for the next request once answered. One request at a time per connection, several
connections per peer: the framing has no request id (answers are matched by order, an ``rpc``
body is raw bytes and a ``lease`` turns the connection into a NETCONF byte stream), so requests
cannot be interleaved on one connection without a new framing; a pool of plain connections
keeps the protocol and still saves the TCP + TLS set-up and the mutual certificate check of
every request. ``lease`` still takes a connection of its own.

A request with ``"only_if_held": true`` (the sender routed it by its cached owner) is answered
``{"ok": false, "error": {"code": "control", "details": {"reason": "not-held"}}}`` when the
device holds no session here: the sender then asks the database who holds it (control.forward).

Who may talk: only a peer presenting a certificate issued by the cluster CA (``cluster.ca``),
checked in the TLS handshake (``CERT_REQUIRED``); there is no token. Until a peer has finished
the handshake and sent its request line it is a stranger, bounded like control_tcp's: all of it
within ``auth_timeout`` s of the accept, a line of at most ``max_request_bytes``, at most
``max_unauthenticated`` strangers at once (the oldest is closed to make room). A kept connection
(verified) waits at most ``2 x pool_idle`` s for its next request line, each line again at most
``max_request_bytes``, and at most ``_KEPT_MAX`` kept connections wait at once (one more is
closed after its answer instead of being kept). A refused or timed
out peer is logged as ``event=cluster.peer_refused`` (at most one line per ``_LOG_EVERY`` s per
reason, with the count since the previous one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from netconf_callhome.config import ClusterOptions, parse_bind
from netconf_callhome.errors import ConfigError, ControlError, NodeUnreachableError, error_from_dict
from netconf_callhome.netutil import describe_peer
from netconf_callhome.protocol.rpc_socket import MAX_FRAME

log = logging.getLogger("netconf_callhome.cluster")

_LOG_EVERY = 10.0
_ANSWER_LIMIT = 64 * 1024 * 1024  # an answer line (a devices list of many thousands of rows)
# Operations whose answer has a known end (one line; rpc: plus its size bytes): their connection
# may be kept for the next request. A lease turns its connection into a NETCONF byte stream.
KEEPABLE_OPS = frozenset(("wait", "endpoint", "rpc"))
# ... and those naming a device, which a cached route asks to serve only if held here
_HELD_OPS = frozenset(("wait", "endpoint", "lease"))
# Kept connections waiting for their next request on one node (64 peers with 8 each): past it a
# connection is closed after its answer (its peer then dials again), so idle peers cannot hold
# an unbounded number of sockets.
_KEPT_MAX = 512
NOT_HELD = "not-held"
# An ``rpc`` body (the control socket's, a forwarded one's): as large as a request on an
# endpoint's Unix socket may be (endpoints.ansible_rpc), since it is one relayed.
MAX_RPC = MAX_FRAME

# What the cluster server hands a verified request to: (reader, writer, op, request, peer node).
Dispatch = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str, Dict[str, Any], str], Awaitable[None]]
# Whether this node holds a session with the device now (the owner's side of a cached route).
Holds = Callable[[str], bool]


def server_context(options: ClusterOptions) -> ssl.SSLContext:
    """TLS server side: this node's certificate; peers must present one from the cluster CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(options.cert, options.key)
        ctx.load_verify_locations(cafile=options.ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("cluster: cannot load cert/key/ca: %s" % exc) from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(options: ClusterOptions) -> ssl.SSLContext:
    """TLS client side: this node's certificate; the peer's must be from the cluster CA. Host names
    are not checked (nodes are often addressed by IP); the CA is the cluster's own, so a certificate
    from it is a node of this cluster."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(options.cert, options.key)
        ctx.load_verify_locations(cafile=options.ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("cluster: cannot load cert/key/ca: %s" % exc) from None
    return ctx


def split_address(address: str) -> Tuple[str, int]:
    host, port = parse_bind(address, 0)
    if not host or not port:
        raise ControlError("cluster address %r must be HOST:PORT" % address)
    return host, port


def peer_name(writer: asyncio.StreamWriter) -> str:
    """The other node as its verified certificate names it: the common name, else the first DNS
    name (for the log; who may connect is decided by the CA alone)."""
    cert = writer.get_extra_info("peercert") or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS":
            return str(value)
    return "?"


class _Refusals:
    """Counts refused peers per reason; one warning per ``_LOG_EVERY`` s per reason."""

    def __init__(self) -> None:
        self._counts: Dict[str, int] = {}
        self._logged: Dict[str, float] = {}

    def hit(self, reason: str, peer: Any, detail: str) -> None:
        self._counts[reason] = self._counts.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged.get(reason, -_LOG_EVERY) >= _LOG_EVERY:
            log.warning(
                "event=cluster.peer_refused peer=%s reason=%s count=%d error=%r",
                describe_peer(peer),
                reason,
                self._counts[reason],
                detail,
            )
            self._logged[reason] = now
            self._counts[reason] = 0


class Strangers:
    """Connections not verified yet, oldest first: at most ``limit`` at once.

    A stranger is a connection until its TLS handshake and request line are in (on the control
    server's remote endpoint: and its token checked). A new one past ``limit`` closes the oldest
    (its task is cancelled; ``on_evict(peer)`` is told the newcomer's peer), so strangers cannot
    hold every slot. The node-to-node channel and the control server's remote endpoint bound
    their strangers alike, here once.
    """

    def __init__(self, limit: int, on_evict: Callable[[Any], None]) -> None:
        self.limit = limit
        self._on_evict = on_evict
        self._open: Dict["asyncio.Task[Any]", asyncio.StreamWriter] = {}  # dicts keep order
        self._evicted: "set[asyncio.Task[Any]]" = set()

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, writer: asyncio.StreamWriter, peer: Any) -> "asyncio.Task[Any]":
        """The current task's connection becomes a stranger (the oldest ones closed for room)."""
        task = asyncio.current_task()
        assert task is not None
        while len(self._open) >= self.limit:
            oldest = next(iter(self._open))
            self._evict(oldest, self._open[oldest])
            self._on_evict(peer)
        self._open[task] = writer
        return task

    def done(self, task: "asyncio.Task[Any]") -> None:
        """The task's connection is a stranger no more (verified, refused or closed)."""
        self._open.pop(task, None)

    def cancelled(self, task: "asyncio.Task[Any]", writer: asyncio.StreamWriter) -> bool:
        """The stranger's task was cancelled: its connection is aborted. True when it was closed
        to make room (the task is to end quietly: ending cancelled would be logged by asyncio),
        False when the cancellation came from elsewhere (the caller re-raises it)."""
        writer.transport.abort()
        if task in self._evicted:
            self._evicted.discard(task)
            return True
        return False

    def close_all(self) -> None:
        for task, writer in list(self._open.items()):
            self._evict(task, writer)

    def _evict(self, task: "asyncio.Task[Any]", writer: asyncio.StreamWriter) -> None:
        self._open.pop(task, None)
        self._evicted.add(task)
        writer.transport.abort()
        task.cancel()


async def read_rpc_body(request: Dict[str, Any], reader: asyncio.StreamReader) -> bytes:
    """The ``size`` bytes that follow an ``rpc`` request line (1 to MAX_RPC): one bound and one
    error for the control server's own ``rpc`` and the one the forwarder relays."""
    size = request.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_RPC:
        raise ControlError("'size' must be the request's length in bytes (1 to %d)" % MAX_RPC)
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ControlError("the connection ended before the %d bytes of the request" % size) from None


async def answer_rpc(writer: asyncio.StreamWriter, response: bytes) -> None:
    """An ``rpc``'s answer: ``{"ok": true, "result": {"size": M}}``, then the M bytes."""
    writer.write(json.dumps({"ok": True, "result": {"size": len(response)}}).encode("utf-8") + b"\n" + response)
    await writer.drain()


class _KeptWriter(asyncio.StreamWriter):
    """A kept connection's writer, lent to the control server for one request: the control server
    closes its writer once it has answered, which here ends only that request (the connection
    goes on to the next one). Writes, drain and abort are the connection's own."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        super().__init__(writer.transport, getattr(writer, "_protocol"), getattr(writer, "_reader"), getattr(writer, "_loop"))

    def close(self) -> None:
        return None

    async def wait_closed(self) -> None:
        return None

    def __del__(self) -> None:  # the connection is the real writer's to close, not this view's
        return None


class ClusterServer:
    """The node-to-node listener (``cluster.bind``)."""

    def __init__(self, options: ClusterOptions, dispatch: Dispatch, *, holds: Optional[Holds] = None) -> None:
        self.options = options
        self._dispatch = dispatch
        self._holds = holds
        self._kept: "set[asyncio.StreamWriter]" = set()  # kept connections waiting for a request
        self.kept_idle = 2 * options.pool_idle  # how long one may wait
        self._tls = server_context(options)
        self._server: Optional[asyncio.AbstractServer] = None
        self.refusals = _Refusals()
        self._strangers = Strangers(
            options.max_unauthenticated,
            lambda peer: self.refusals.hit(
                "unauthenticated_limit", peer, "max_unauthenticated=%d reached" % options.max_unauthenticated
            ),
        )
        self.address = ""

    async def start(self) -> str:
        host, port = parse_bind(self.options.bind, 4340)
        self._server = await asyncio.start_server(
            self._accept, host=host or None, port=port, limit=self.options.max_request_bytes, backlog=1024
        )
        sockname = self._server.sockets[0].getsockname()
        bound = "%s:%d" % (("[%s]" % sockname[0]) if ":" in sockname[0] else sockname[0], sockname[1])
        self.address = self.options.advertise or bound
        log.info("event=cluster.listening bind=%s advertise=%s", bound, self.address)
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._kept):
            writer.transport.abort()
        self._strangers.close_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opts = self.options
        peer = writer.get_extra_info("peername")
        task = self._strangers.admit(writer, peer)
        try:
            async with asyncio.timeout(opts.auth_timeout):
                # TLS here, not in start_server: the handshake counts against auth_timeout and the
                # stranger's slot like the request line does.
                await writer.start_tls(self._tls, ssl_handshake_timeout=opts.auth_timeout)
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    self.refusals.hit("request_too_long", peer, "request line over max_request_bytes=%d" % opts.max_request_bytes)
                    writer.transport.abort()
                    return
                if not line:
                    writer.transport.abort()
                    return
                request = json.loads(line)
                if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                    raise ValueError("not a request object")
        except TimeoutError:
            self.refusals.hit("auth_timeout", peer, "no TLS handshake and request line within auth_timeout=%gs" % opts.auth_timeout)
            writer.transport.abort()
            return
        except asyncio.CancelledError:
            if self._strangers.cancelled(task, writer):
                return
            raise
        except ssl.SSLError as exc:
            # no certificate, or one not issued by the cluster CA: the handshake fails here
            self.refusals.hit("certificate", peer, str(exc))
            writer.transport.abort()
            return
        except ValueError:
            self.refusals.hit("bad_request", peer, "request must be one JSON object line with an 'op' field")
            writer.transport.abort()
            return
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            log.debug("event=cluster.peer_dropped peer=%s error=%r", describe_peer(peer), exc)
            writer.transport.abort()
            return
        finally:
            self._strangers.done(task)
        await self._serve_verified(reader, writer, request, peer, peer_name(writer))

    async def _serve_verified(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Dict[str, Any], peer: Any, node: str
    ) -> None:
        """Serve the verified peer's request, then, while it asks to keep the connection, the
        next ones (one at a time, each line bounded like the first)."""
        while True:
            op = request.pop("op")
            keep = request.pop("keep", False) is True and op in KEEPABLE_OPS
            only_if_held = request.pop("only_if_held", False) is True
            device = request.get("device")
            if only_if_held and op in _HELD_OPS and isinstance(device, str) and self._holds is not None \
                    and not self._holds(device):
                # the sender's route is stale (a remembered owner, or a database row behind the
                # session): it asks the database again instead of this node waiting for the device
                error = ControlError(
                    "device %s holds no session on this node now" % device,
                    details={"reason": NOT_HELD, "device": device},
                )
                try:
                    writer.write(json.dumps({"ok": False, "error": error.to_dict()}).encode("utf-8") + b"\n")
                    await writer.drain()
                except (ConnectionError, OSError):
                    writer.transport.abort()
                    return
            elif keep:
                # the control server closes its writer after each request: it gets one whose
                # close() ends only that request
                await self._dispatch(reader, _KeptWriter(writer), op, request, node)
            else:
                await self._dispatch(reader, writer, op, request, node)
                return
            if not keep or writer.transport.is_closing() or reader.at_eof() or len(self._kept) >= _KEPT_MAX:
                writer.close()
                return
            next_request = await self._next_request(reader, writer, peer)
            if next_request is None:
                return
            request = next_request

    async def _next_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any
    ) -> Optional[Dict[str, Any]]:
        """The next request line of a kept connection, or None (closed: idle too long, the peer
        closed it, or a line over max_request_bytes / not a request)."""
        limit = "request line over max_request_bytes=%d" % self.options.max_request_bytes
        self._kept.add(writer)
        try:
            async with asyncio.timeout(self.kept_idle):
                line = await reader.readline()
        except TimeoutError:
            writer.close()  # idle: the peer's pool closes its side sooner (its pool_idle)
            return None
        except (ValueError, asyncio.LimitOverrunError):
            self.refusals.hit("request_too_long", peer, limit)
            writer.transport.abort()
            return None
        except (ConnectionError, OSError) as exc:
            log.debug("event=cluster.peer_dropped peer=%s error=%r", describe_peer(peer), exc)
            writer.transport.abort()
            return None
        finally:
            self._kept.discard(writer)
        if not line:
            writer.close()
            return None
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError("not a request object")
        except ValueError:
            self.refusals.hit("bad_request", peer, "request must be one JSON object line with an 'op' field")
            writer.transport.abort()
            return None
        return request


class _Pooled:
    """One verified connection to a peer, idle in the pool since ``since``."""

    __slots__ = ("reader", "writer", "since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.since = time.monotonic()

    def usable(self, now: float, idle: float) -> bool:
        """Still open (a peer that closed it or died has sent its FIN, seen here as EOF) and not
        idle so long that the peer may be closing it (it waits 2 x pool_idle)."""
        return not self.writer.transport.is_closing() and not self.reader.at_eof() and now - self.since <= idle


class ClusterClient:
    """Requests to other nodes over the channel, on pooled connections.

    ``wait``, ``endpoint`` and ``rpc`` (:meth:`call`, :meth:`rpc`) reuse an idle verified
    connection to the peer when there is one, else dial a new one; once answered, the connection
    goes back to the pool, which keeps at most ``pool_size`` idle connections per peer (requests
    beyond it at once dial their own and close them after: nobody waits for a pooled one, since a
    ``wait`` may hold its connection for its whole wait). Idle connections go after
    ``pool_idle`` s; any error on a connection drops it, and an unreachable peer's idle
    connections are all dropped (:meth:`drop`). A reused connection found closed before any byte
    of the answer (the peer closed it while idle, or restarted) is replaced by a new one once: the
    peer closes only connections with no request in progress, so the request was not served.
    ``lease`` (:meth:`send`) always has a connection of its own.
    """

    def __init__(self, options: ClusterOptions) -> None:
        self.options = options
        self._tls = client_context(options)
        self._idle: Dict[Tuple[str, str], List[_Pooled]] = {}
        self._reaper: Optional["asyncio.Task[None]"] = None
        self.dialled = 0  # connections opened (tests and the benchmark read these)
        self.reused = 0

    # -- the pool ----------------------------------------------------------------------------------

    def _checkout(self, node: str, address: str) -> Optional[_Pooled]:
        """An idle usable connection to ``node`` at ``address`` (the most recently used first), or
        None. The node's connections to any other address go: it moved (restarted elsewhere)."""
        for key in [k for k in self._idle if k[0] == node and k[1] != address]:
            self._close_all(self._idle.pop(key))
        conns = self._idle.get((node, address))
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if conn.usable(now, self.options.pool_idle):
                self.reused += 1
                return conn
            conn.writer.transport.abort()
        return None

    def _checkin(self, node: str, address: str, conn: _Pooled) -> None:
        conns = self._idle.setdefault((node, address), [])
        if len(conns) >= self.options.pool_size or conn.writer.transport.is_closing() or conn.reader.at_eof():
            conn.writer.transport.abort()
            if not conns:
                del self._idle[(node, address)]
            return
        conn.since = time.monotonic()
        conns.append(conn)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap_loop())

    def drop(self, node: str) -> None:
        """Close every idle connection to ``node`` (it does not answer, or left the cluster)."""
        for key in [k for k in self._idle if k[0] == node]:
            self._close_all(self._idle.pop(key))

    def idle(self, node: str) -> int:
        """How many idle connections to ``node`` the pool holds."""
        return sum(len(conns) for key, conns in self._idle.items() if key[0] == node)

    async def _reap_loop(self) -> None:
        while self._idle:
            await asyncio.sleep(max(0.05, min(5.0, self.options.pool_idle / 2)))
            now = time.monotonic()
            for key, conns in list(self._idle.items()):
                keep = [c for c in conns if c.usable(now, self.options.pool_idle)]
                self._close_all([c for c in conns if c not in keep])
                if keep:
                    self._idle[key] = keep
                else:
                    self._idle.pop(key, None)

    @staticmethod
    def _close_all(conns: List[_Pooled]) -> None:
        for conn in conns:
            conn.writer.transport.abort()

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for key in list(self._idle):
            self._close_all(self._idle.pop(key))

    # -- connections and requests --------------------------------------------------------------

    async def open(self, node: str, address: str) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A verified connection to ``node`` at ``address``, or :class:`NodeUnreachableError`."""
        host, port = split_address(address)
        timeout = self.options.connect_timeout
        try:
            opened = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=self._tls, server_hostname=host, ssl_handshake_timeout=timeout, limit=_ANSWER_LIMIT
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            self.drop(node)
            raise NodeUnreachableError(
                "node %s at %s did not answer within %g s (cluster.connect_timeout)" % (node, address, timeout),
                details={"node": node, "address": address},
            ) from None
        except (OSError, ssl.SSLError) as exc:
            self.drop(node)
            raise NodeUnreachableError(
                "node %s at %s: %s" % (node, address, getattr(exc, "strerror", None) or exc),
                details={"node": node, "address": address},
            ) from None
        self.dialled += 1
        return opened

    def _watch_silence(self, writer: asyncio.StreamWriter) -> None:
        """A peer that vanishes without closing (power loss, a cut cable) sends no FIN: TCP
        keepalive closes an idle pooled connection to it within ~16 s, and a request left
        unacknowledged for 2 x connect_timeout fails (then once on a new connection, which
        fails within connect_timeout), instead of waiting for the answer's whole timeout.
        Linux socket options; elsewhere only what the platform has."""
        sock = writer.get_extra_info("socket")
        if sock is None:
            return
        options = [
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), 10),
            (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), 2),
            (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
            (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(self.options.connect_timeout * 2000)),
        ]
        for level, name, value in options:
            if name is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(level, name, value)

    async def send(
        self,
        node: str,
        address: str,
        op: str,
        args: Dict[str, Any],
        *,
        timeout: float,
        body: bytes = b"",
    ) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter, Dict[str, Any]]:
        """Send one request (and ``body`` after its line) on a new connection of its own; the open
        connection and the answer line (a ``lease``: the connection then carries NETCONF)."""
        reader, writer = await self.open(node, address)
        try:
            answer = await self._request(reader, writer, node, address, op, args, timeout, body, False)
            return reader, writer, answer[0]
        except EOFError as exc:
            writer.transport.abort()
            raise _closed(node, address, op, exc) from None
        except BaseException:
            writer.transport.abort()
            raise

    async def _request(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        node: str,
        address: str,
        op: str,
        args: Dict[str, Any],
        timeout: float,
        body: bytes,
        with_body: bool,
    ) -> Tuple[Dict[str, Any], bytes]:
        """Write the request, read the answer line (and, ``with_body``, the ``size`` bytes after
        a successful one). EOFError: closed (or reset) before any byte of the answer."""
        line = b""
        try:
            writer.write(json.dumps(dict(args, op=op)).encode("utf-8") + b"\n" + body)
            await writer.drain()
            async with asyncio.timeout(timeout):
                line = await reader.readline()
                if not line:
                    raise EOFError("closed")
                answer = json.loads(line)
                if not isinstance(answer, dict):
                    raise ValueError("not an object")
                payload = b""
                if with_body and answer.get("ok"):
                    result = answer.get("result")
                    size = result.get("size", -1) if isinstance(result, dict) else -1
                    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                        raise ControlError("node %s answered %r without a size" % (node, op))
                    try:
                        payload = await reader.readexactly(size)
                    except asyncio.IncompleteReadError as exc:
                        raise ConnectionResetError("%d of %d bytes of the response" % (len(exc.partial), size)) from None
            return answer, payload
        except TimeoutError:
            raise ControlError(
                "node %s at %s did not answer %r within %.0f s" % (node, address, op, timeout),
                details={"node": node, "address": address},
            ) from None
        except (ValueError, asyncio.LimitOverrunError):
            raise ControlError("node %s at %s sent a malformed answer to %r" % (node, address, op)) from None
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            if not line:
                raise EOFError(str(exc) or type(exc).__name__) from None
            raise NodeUnreachableError(
                "node %s at %s dropped the connection during %r: %s" % (node, address, op, exc),
                details={"node": node, "address": address},
            ) from None

    async def _pooled(
        self, node: str, address: str, op: str, args: Dict[str, Any], *, timeout: float, body: bytes = b"", with_body: bool
    ) -> Tuple[Dict[str, Any], bytes]:
        """One request on a pooled connection (see the class doc); the answer and its body."""
        keep = self.options.pool_size > 0
        if keep:
            args = dict(args, keep=True)
        conn = self._checkout(node, address) if keep else None
        while True:
            reused = conn is not None
            if conn is None:
                conn = _Pooled(*await self.open(node, address))
                if keep:
                    self._watch_silence(conn.writer)
                    log.info("event=cluster.dialled node=%s address=%s idle=%d", node, address, self.idle(node))
            try:
                answer, payload = await self._request(
                    conn.reader, conn.writer, node, address, op, args, timeout, body, with_body
                )
            except EOFError as exc:
                conn.writer.transport.abort()
                if reused:  # closed while idle: the request was not served; once on a new one
                    conn = None
                    continue
                self.drop(node)
                raise _closed(node, address, op, exc) from None
            except NodeUnreachableError:
                conn.writer.transport.abort()
                self.drop(node)
                raise
            except BaseException:
                conn.writer.transport.abort()  # timed out or cancelled mid-answer: out of step
                raise
            if keep:
                self._checkin(node, address, conn)
            else:
                conn.writer.close()
            return answer, payload

    async def call(self, node: str, address: str, op: str, args: Dict[str, Any], *, timeout: float) -> Any:
        """One request, its result (the owner's error raised as the same error here)."""
        answer, _body = await self._pooled(node, address, op, args, timeout=timeout, with_body=False)
        return result_of(answer)

    async def rpc(self, node: str, address: str, endpoint: str, data: bytes, *, timeout: float) -> bytes:
        """One JSON-RPC request for the endpoint ``endpoint`` of ``node`` (its ``rpc`` operation)."""
        answer, response = await self._pooled(
            node, address, "rpc", {"endpoint": endpoint, "size": len(data)}, timeout=timeout, body=data, with_body=True
        )
        result_of(answer)
        return response


def _closed(node: str, address: str, op: str, exc: EOFError) -> NodeUnreachableError:
    return NodeUnreachableError(
        "node %s at %s closed the connection without answering %r%s"
        % (node, address, op, "" if str(exc) == "closed" else " (%s)" % exc),
        details={"node": node, "address": address},
    )


def result_of(answer: Dict[str, Any]) -> Any:
    if not answer.get("ok"):
        raise error_from_dict(answer.get("error") or {})
    return answer.get("result")


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until EOF, then half-close (a forwarded lease's NETCONF stream, one direction)."""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
    except (ConnectionError, OSError):
        pass


__all__ = (
    "KEEPABLE_OPS",
    "NOT_HELD",
    "ClusterClient",
    "ClusterServer",
    "NodeUnreachableError",
    "client_context",
    "pipe",
    "result_of",
    "server_context",
)

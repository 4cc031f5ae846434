# SPDX-License-Identifier: GPL-3.0-or-later
"""The node-to-node channel of a scale-out cluster: mutual TLS, the control protocol's lines.

A node forwards a client's ``wait`` / ``endpoint`` / ``lease`` / ``rpc`` for a device another node
holds to that node (control.forward). The channel carries the same JSON-line protocol as the
control socket, one request per connection; a forwarded request is served by the owner's
control server as if a local client had asked, except that it is never forwarded again.

Who may talk: only a peer presenting a certificate issued by the cluster CA (``cluster.ca``),
checked in the TLS handshake (``CERT_REQUIRED``); there is no token. Until a peer has finished
the handshake and sent its request line it is a stranger, bounded like control_tcp's: all of it
within ``auth_timeout`` s of the accept, a line of at most ``max_request_bytes``, at most
``max_unauthenticated`` strangers at once (the oldest is closed to make room). A refused or timed
out peer is logged as ``event=cluster.peer_refused`` (at most one line per ``_LOG_EVERY`` s per
reason, with the count since the previous one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple

from netconf_callhome.config import ClusterOptions, parse_bind
from netconf_callhome.errors import ConfigError, ControlError, NodeUnreachableError, error_from_dict

log = logging.getLogger("netconf_callhome.cluster")

_LOG_EVERY = 10.0
_ANSWER_LIMIT = 64 * 1024 * 1024  # an answer line (a devices list of many thousands of rows)

# What the cluster server hands a verified request to: (reader, writer, op, request, peer node).
Dispatch = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str, Dict[str, Any], str], Awaitable[None]]


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
                _peer(peer),
                reason,
                self._counts[reason],
                detail,
            )
            self._logged[reason] = now
            self._counts[reason] = 0


def _peer(peer: Any) -> str:
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        return "[%s]:%s" % (peer[0], peer[1]) if ":" in str(peer[0]) else "%s:%s" % (peer[0], peer[1])
    return str(peer)


class ClusterServer:
    """The node-to-node listener (``cluster.bind``)."""

    def __init__(self, options: ClusterOptions, dispatch: Dispatch) -> None:
        self.options = options
        self._dispatch = dispatch
        self._tls = server_context(options)
        self._server: Optional[asyncio.AbstractServer] = None
        self._strangers: Dict["asyncio.Task[Any]", asyncio.StreamWriter] = {}
        self._evicted: "set[asyncio.Task[Any]]" = set()
        self.refusals = _Refusals()
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
        for task, writer in list(self._strangers.items()):
            self._evict(task, writer)

    def _evict(self, task: "asyncio.Task[Any]", writer: asyncio.StreamWriter) -> None:
        self._strangers.pop(task, None)
        self._evicted.add(task)
        writer.transport.abort()
        task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opts = self.options
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        while len(self._strangers) >= opts.max_unauthenticated:
            oldest = next(iter(self._strangers))
            self._evict(oldest, self._strangers[oldest])
            self.refusals.hit("unauthenticated_limit", peer, "max_unauthenticated=%d reached" % opts.max_unauthenticated)
        self._strangers[task] = writer
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
            writer.transport.abort()
            if task in self._evicted:
                self._evicted.discard(task)
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
            log.debug("event=cluster.peer_dropped peer=%s error=%r", _peer(peer), exc)
            writer.transport.abort()
            return
        finally:
            self._strangers.pop(task, None)
        op = request.pop("op")
        await self._dispatch(reader, writer, op, request, peer_name(writer))


class ClusterClient:
    """Requests to other nodes over the channel: one TLS connection per request."""

    def __init__(self, options: ClusterOptions) -> None:
        self.options = options
        self._tls = client_context(options)

    async def open(self, node: str, address: str) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A verified connection to ``node`` at ``address``, or :class:`NodeUnreachableError`."""
        host, port = split_address(address)
        timeout = self.options.connect_timeout
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=self._tls, server_hostname=host, ssl_handshake_timeout=timeout, limit=_ANSWER_LIMIT
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise NodeUnreachableError(
                "node %s at %s did not answer within %g s (cluster.connect_timeout)" % (node, address, timeout),
                details={"node": node, "address": address},
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise NodeUnreachableError(
                "node %s at %s: %s" % (node, address, getattr(exc, "strerror", None) or exc),
                details={"node": node, "address": address},
            ) from None

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
        """Send one request (and ``body`` after its line); the open connection and the answer line."""
        reader, writer = await self.open(node, address)
        try:
            writer.write(json.dumps(dict(args, op=op)).encode("utf-8") + b"\n" + body)
            await writer.drain()
            async with asyncio.timeout(timeout):
                line = await reader.readline()
            if not line:
                raise NodeUnreachableError(
                    "node %s at %s closed the connection without answering %r" % (node, address, op),
                    details={"node": node, "address": address},
                )
            answer = json.loads(line)
            if not isinstance(answer, dict):
                raise ValueError("not an object")
            return reader, writer, answer
        except TimeoutError:
            writer.transport.abort()
            raise ControlError(
                "node %s at %s did not answer %r within %.0f s" % (node, address, op, timeout),
                details={"node": node, "address": address},
            ) from None
        except (ValueError, asyncio.LimitOverrunError):
            writer.transport.abort()
            raise ControlError("node %s at %s sent a malformed answer to %r" % (node, address, op)) from None
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            writer.transport.abort()
            raise NodeUnreachableError(
                "node %s at %s dropped the connection during %r: %s" % (node, address, op, exc),
                details={"node": node, "address": address},
            ) from None
        except BaseException:
            writer.transport.abort()
            raise

    async def call(self, node: str, address: str, op: str, args: Dict[str, Any], *, timeout: float) -> Any:
        """One request, its result (the owner's error raised as the same error here)."""
        _reader, writer, answer = await self.send(node, address, op, args, timeout=timeout)
        writer.close()
        return result_of(answer)

    async def rpc(self, node: str, address: str, endpoint: str, data: bytes, *, timeout: float) -> bytes:
        """One JSON-RPC request for the endpoint ``endpoint`` of ``node`` (its ``rpc`` operation)."""
        reader, writer, answer = await self.send(
            node, address, "rpc", {"endpoint": endpoint, "size": len(data)}, timeout=timeout, body=data
        )
        try:
            size = int(result_of(answer).get("size", -1))
            if size < 0:
                raise ControlError("node %s answered 'rpc' without a size" % node)
            async with asyncio.timeout(timeout):
                return await reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            raise NodeUnreachableError(
                "node %s at %s dropped the connection during an rpc response: %s" % (node, address, exc),
                details={"node": node, "address": address},
            ) from None
        finally:
            writer.close()


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
    "ClusterClient",
    "ClusterServer",
    "NodeUnreachableError",
    "client_context",
    "pipe",
    "result_of",
    "server_context",
)

# SPDX-License-Identifier: GPL-3.0-or-later
"""Protocol layer, RESTCONF call home (RFC 8071 section 3.2, port 4336): the HTTP client on the
connection a device opened.

The device dialled the listener; the listener is the TLS client (as for NETCONF over TLS, with
the same context and the same deferred verification, see :mod:`netconf_callhome.protocol.tls`)
and then the HTTP client on that one connection. ALPN decides the HTTP version: ``h2`` runs
HTTP/2 with :mod:`h2`, ``http/1.1`` (or no ALPN at all) HTTP/1.1 with :mod:`h11`. Both libraries
are bring-your-own-I/O state machines: this module feeds them the decrypted bytes and writes what
they produce, so no HTTP is parsed here by hand.

Layout:

* :class:`RestconfConnection` (:class:`Http2Connection`, :class:`Http11Connection`, built by
  :func:`restconf_connection` from the ALPN result) is the *receiver* of a byte carrier: it has
  ``attach(carrier)``, ``data_received(bytes)`` and ``connection_lost(reason)``, the same three
  calls the TLS connection of :mod:`~netconf_callhome.protocol.tls` makes on a held NETCONF
  session, so one TLS connection object serves both (and the single call-home port can bind a
  connection to either after ALPN). On top: :meth:`~RestconfConnection.request`,
  :meth:`~RestconfConnection.discover_root` (RFC 8040 section 3.1),
  :meth:`~RestconfConnection.yang_library` (RFC 8525, falling back to RFC 7895
  ``modules-state``), :meth:`~RestconfConnection.ping` and
  :meth:`~RestconfConnection.keepalive` (a dead device closes the connection).
* :func:`open_tls` runs the TLS client on an accepted socket (ALPN offered) and returns the
  device's chain and the chosen protocol, for the policy to decide on *before* any HTTP byte;
  :meth:`TLSLink.start` then binds a :class:`RestconfConnection` to it.
* :class:`RestconfTransport` does it all for one accepted call-home socket, as
  :class:`~netconf_callhome.protocol.tls.TLSTransport` does for NETCONF over TLS: admission, TLS,
  the verdict (:class:`RestconfEvents`, implemented by the service), root and YANG library within
  ``handshake_timeout``, then ``restconf_ready`` or ``handshake_failed`` (:func:`classify_error`).

Device input is hostile: a response's header block and body are bounded
(:class:`RestconfLimits`), each request has a timeout, HTTP/2 flow-control windows, the
number of concurrent streams and the bytes held for all of them are fixed by the listener, a flood of PING/SETTINGS frames ends the
connection, and a malformed JSON or XML body is a :class:`~netconf_callhome.errors.
RestconfContentError`, never an unhandled exception. Basic credentials are sent, never logged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Tuple, Union, cast
from urllib.parse import urlsplit

import h11
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hpack import Encoder, HeaderTuple, NeverIndexedHeaderTuple

from netconf_callhome.config import ListenerConfig
from netconf_callhome.errors import (
    AuthFailedError,
    CallHomeError,
    ConnectionLostError,
    HandshakeCancelledError,
    HandshakeError,
    HandshakeTimeoutError,
    IdentityRefusedError,
    PeerProtocolError,
    RestconfConnectionLostError,
    RestconfContentError,
    RestconfError,
    RestconfProtocolError,
    RestconfResponseTooLargeError,
    RestconfStatusError,
    RestconfTimeoutError,
    TransportPinnedError,
    UnexpectedHandshakeError,
)
from netconf_callhome.netutil import format_peer, peer_ip, set_tcp_keepalive
from netconf_callhome.protocol.events import Admission, HandshakeFailure, VerifiedDevice
from netconf_callhome.protocol.framing import local_name, parse_xml
from netconf_callhome.protocol.tls import _peer_chain, _TLSConnection, client_context, start_tls

log = logging.getLogger("netconf_callhome.restconf")
# hpack logs every header it encodes or decodes, values included, at DEBUG: an Authorization
# header would reach the listener's log at --log-level DEBUG. Credentials are never logged.
logging.getLogger("hpack").setLevel(logging.INFO)

ALPN_H2 = "h2"
ALPN_HTTP11 = "http/1.1"
# Offered in this order: HTTP/2 multiplexes concurrent tasks on one device's connection.
ALPN_PROTOCOLS: Tuple[str, ...] = (ALPN_H2, ALPN_HTTP11)

DEFAULT_ROOT = "/restconf"
_YANG_LIBRARY = "/data/ietf-yang-library:yang-library"
YANG_DATA_JSON = "application/yang-data+json"
YANG_DATA_XML = "application/yang-data+xml"
# How a connection closed by a missed keepalive words its reason (the service counts these as
# unresponsive devices).
KEEPALIVE_MISSED = "device did not answer a keepalive"

_METHOD = re.compile(r"^[A-Z]{1,16}$")
# origin-form request target: printable ASCII, no spaces (h11/h2 check it too; this says which).
_PATH = re.compile(r"^/[\x21-\x7e]{0,8191}$")
# RFC 9110 token: what a header name may be (h2's own check of our headers is off, see _H2State).
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]{1,256}$")
# Headers this module sets itself; a caller passing one is a programming error.
_RESERVED = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade", "te"})
_H2_DEFAULT_WINDOW = 65535
_PING_BYTES = 8
# A device may send PING and SETTINGS frames; h2 answers each. More than this many in
# _FLOOD_WINDOW seconds is a flood (CVE-2019-9512/9515): the answers would pile up unread.
_FLOOD_LIMIT = 1000
_FLOOD_WINDOW = 10.0
_EXCERPT = 300


@dataclass(frozen=True)
class RestconfLimits:
    """Bounds on what a device may make the listener hold or wait for.

    ``max_header_bytes``   a response's header block (HTTP/1.1: the status line and headers as
                           received; HTTP/2: the decoded header list, also advertised as
                           SETTINGS_MAX_HEADER_LIST_SIZE)
    ``max_body_bytes``     a response's body; over it the HTTP/2 stream is reset, the HTTP/1.1
                           connection closed (it cannot skip the rest of a response)
    ``request_timeout``    seconds from a request's start (waiting for a stream slot or for the
                           HTTP/1.1 queue included) to its complete response
    ``ping_timeout``       seconds for a PING acknowledgement (HTTP/1.1: the cheap request)
    ``max_concurrent_streams``  HTTP/2 requests in flight at once (the device's own
                           SETTINGS_MAX_CONCURRENT_STREAMS lowers it); more wait for a slot
    ``h2_stream_window``   the receive window per HTTP/2 stream
    ``h2_connection_window``  the receive window of the whole HTTP/2 connection
    ``max_buffered_bytes`` HTTP/2: response bytes held at once for all streams of a connection;
                           beyond it the device's windows are reopened only for the oldest
                           request (which therefore always completes), so concurrent large
                           answers wait for each other instead of adding up
    """

    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 64 * 1024 * 1024
    request_timeout: float = 60.0
    ping_timeout: float = 10.0
    max_concurrent_streams: int = 100
    h2_stream_window: int = 1024 * 1024
    h2_connection_window: int = 4 * 1024 * 1024
    max_buffered_bytes: int = 128 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_body_bytes", "max_concurrent_streams", "max_buffered_bytes"):
            if getattr(self, name) < 1:
                raise ValueError("%s must be at least 1" % name)
        for name in ("request_timeout", "ping_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError("%s must be positive" % name)
        for name in ("h2_stream_window", "h2_connection_window"):
            if not _H2_DEFAULT_WINDOW <= getattr(self, name) <= 2**31 - 1:
                raise ValueError("%s must be between 65535 and 2147483647" % name)


@dataclass(frozen=True, repr=False)
class BasicCredentials:
    """HTTP basic credentials for one device (RFC 7617). ``repr`` shows the user only."""

    username: str
    password: str

    def header(self) -> str:
        token = base64.b64encode(("%s:%s" % (self.username, self.password)).encode("utf-8")).decode("ascii")
        return "Basic " + token

    def __repr__(self) -> str:
        return "BasicCredentials(username=%r, password=<hidden>)" % self.username


@dataclass(frozen=True)
class Response:
    """One complete HTTP response: status, headers (names lower-case) and the whole body."""

    status: int
    headers: Tuple[Tuple[str, str], ...]
    body: bytes
    method: str = ""
    path: str = ""
    http_version: str = ""

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-case ('' when absent)."""
        return (self.header("content-type") or "").split(";", 1)[0].strip().lower()

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def raise_for_status(self, what: str = "") -> None:
        """RestconfStatusError unless 2xx; the message quotes the start of the device's error."""
        if self.ok:
            return
        raise RestconfStatusError(
            "device answered %s %s with HTTP %d%s: %s"
            % (self.method, self.path, self.status, " (%s)" % what if what else "", _excerpt(self.body) or "no body"),
            details={"status": self.status, "method": self.method, "path": self.path},
        )

    def json(self, what: str = "response") -> Any:
        """The body as JSON; RestconfContentError when it is not UTF-8 JSON (any depth)."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digits
            raise RestconfContentError(
                "%s from %s %s is not valid JSON: %s" % (what, self.method, self.path, _short(exc)),
                details={"status": self.status, "path": self.path},
            ) from None

    def xml(self, what: str = "response") -> Any:
        """The root element of the body, parsed by the one safe XML parser (DTDs refused)."""
        try:
            return parse_xml(self.body, what)
        except CallHomeError as exc:  # FramingError: malformed, or a DTD
            raise RestconfContentError(
                "%s from %s %s: %s" % (what, self.method, self.path, exc.message),
                details={"status": self.status, "path": self.path},
            ) from None


@dataclass(frozen=True)
class YangModule:
    """One module of the device's YANG library (the RESTCONF counterpart of a capability)."""

    name: str
    revision: str
    namespace: str
    features: Tuple[str, ...] = ()
    implemented: bool = True  # False: import-only (RFC 8525) / conformance-type import (RFC 7895)


@dataclass(frozen=True)
class YangLibrary:
    """What :meth:`RestconfConnection.yang_library` learned: the modules and where from."""

    modules: Tuple[YangModule, ...]
    source: str  # "yang-library" (RFC 8525) or "modules-state" (RFC 7895)
    content_id: str = ""  # content-id / module-set-id: changes when the library changes

    def module(self, name: str) -> Optional[YangModule]:
        for mod in self.modules:
            if mod.name == name:
                return mod
        return None


class Carrier(Protocol):
    """The decrypted byte pipe under a RESTCONF connection (the TLS connection)."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


HeaderArg = Union[Mapping[str, str], Sequence[Tuple[str, str]], None]


class _Exchange:
    """One request's response as it arrives."""

    __slots__ = ("method", "path", "status", "headers", "body", "future", "started", "answered")

    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.path = path
        self.status = 0
        self.headers: Tuple[Tuple[str, str], ...] = ()
        self.body = bytearray()
        self.future: "asyncio.Future[Response]" = asyncio.get_running_loop().create_future()
        self.future.add_done_callback(_retrieve)  # a timed-out caller is gone; nobody else awaits
        self.started = False
        # Set when the complete response arrived. Not future.done(): a caller's cancellation (the
        # request timeout) cancels the awaited future too, and that is not an answer.
        self.answered = False

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def finish(self, http_version: str) -> None:
        self.answered = True
        if not self.future.done():
            self.future.set_result(
                Response(self.status, self.headers, bytes(self.body), self.method, self.path, http_version)
            )


class RestconfConnection:
    """One device's RESTCONF connection: the HTTP client over a call-home carrier.

    Build with :func:`restconf_connection`; bind to a carrier (``attach``). ``closed`` resolves
    with the reason when the connection ends for whatever cause (device gone, protocol error,
    missed keepalive, :meth:`close`); requests then fail with
    :class:`~netconf_callhome.errors.RestconfConnectionLostError`.
    """

    http_version = ""
    alpn = ""
    concurrent = False  # requests may be in flight at once (HTTP/2 streams); HTTP/1.1 queues them

    def __init__(
        self,
        *,
        limits: Optional[RestconfLimits] = None,
        authority: str = "device",
        credentials: Optional[BasicCredentials] = None,
        device: str = "",
        peer: str = "",
    ) -> None:
        self.limits = limits or RestconfLimits()
        self.authority = authority
        self.device = device
        self.peer = peer
        self._authorization = credentials.header() if credentials is not None else None
        self._carrier: Optional[Carrier] = None
        self.closed: "asyncio.Future[str]" = asyncio.get_running_loop().create_future()
        self.root: Optional[str] = None
        self.library: Optional[YangLibrary] = None
        self.last_received = time.monotonic()
        self.requests = 0
        self.fingerprint = ""  # the device certificate's, once the policy accepted it
        self.started = time.monotonic()  # when its call-home connection was accepted

    def __repr__(self) -> str:
        return "<%s device=%r peer=%r http=%s>" % (type(self).__name__, self.device, self.peer, self.http_version)

    # -- the carrier's calls -------------------------------------------------------------------

    def attach(self, carrier: Carrier) -> None:
        self._carrier = carrier
        self._started()

    def data_received(self, data: bytes) -> None:
        if self.closed.done():
            return
        self.last_received = time.monotonic()
        self._on_data(data)

    def connection_lost(self, reason: str) -> None:
        self._end(reason, RestconfConnectionLostError("RESTCONF connection to %s lost: %s" % (self._who(), reason)))

    # -- the API -------------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self.closed.done()

    def close(self, reason: str = "closed by the listener") -> None:
        """End the connection (in-flight requests fail with RestconfConnectionLostError)."""
        if self.closed.done():
            return
        self._goodbye()
        self._end(reason, RestconfConnectionLostError("RESTCONF connection to %s closed: %s" % (self._who(), reason)))

    async def request(
        self,
        method: str,
        path: str,
        headers: HeaderArg = None,
        body: bytes = b"",
        *,
        timeout: Optional[float] = None,
    ) -> Response:
        """Send one request, return the complete response (any status: see raise_for_status).

        Concurrent calls run side by side on HTTP/2 and one after another on HTTP/1.1.
        ``timeout`` (default ``limits.request_timeout``) bounds the whole call.
        ValueError for a malformed method, path or header; RestconfError subclasses otherwise.
        """
        method = method.upper()
        if not _METHOD.match(method):
            raise ValueError("invalid HTTP method %r" % method)
        if not _PATH.match(path):
            raise ValueError("invalid request path %r: origin-form, printable ASCII, at most 8 KiB" % path[:100])
        extra = _headers(headers)
        if self._authorization is not None and not any(k == "authorization" for k, _v in extra):
            extra.append(("authorization", self._authorization))
        limit = self.limits.request_timeout if timeout is None else timeout
        self.requests += 1
        exchange = _Exchange(method, path)
        try:
            async with asyncio.timeout(limit):
                return await self._exchange(exchange, extra, bytes(body))
        except TimeoutError:
            raise RestconfTimeoutError(
                "device %s did not answer %s %s within %gs" % (self._who(), method, path, limit),
                details={"method": method, "path": path, "timeout": limit},
            ) from None

    async def get(self, path: str, accept: str = YANG_DATA_JSON, *, timeout: Optional[float] = None) -> Response:
        return await self.request("GET", path, {"accept": accept}, timeout=timeout)

    async def discover_root(self) -> str:
        """The RESTCONF root (RFC 8040 section 3.1) from ``/.well-known/host-meta``.

        A 404 there means the device does not publish one: the default ``/restconf`` is used and
        logged (``event=restconf.root_default``). Any other failure is an error, not a guess.
        """
        resp = await self.request("GET", "/.well-known/host-meta", {"accept": "application/xrd+xml"})
        if resp.status == 404:
            log.info(
                "event=restconf.root_default device=%s peer=%s root=%s reason=%r",
                self.device, self.peer, DEFAULT_ROOT, "/.well-known/host-meta answered 404",
            )
            self.root = DEFAULT_ROOT
            return self.root
        resp.raise_for_status("RESTCONF root discovery")
        self.root = _root_from_host_meta(resp)
        log.debug("event=restconf.root device=%s peer=%s root=%s", self.device, self.peer, self.root)
        return self.root

    async def discover(self) -> YangLibrary:
        """The root (:meth:`discover_root`), then the YANG library (:meth:`yang_library`).

        On HTTP/2 the library is asked for under the usual root (``/restconf``) on a second
        stream while host-meta is read: with the usual root (nearly every device) the call home
        takes one round trip less and its requests leave in one record. Any other root and that
        answer is dropped and the library read again from the root host-meta named."""
        if not self.concurrent:
            await self.discover_root()
            return await self.yang_library()
        guess = asyncio.ensure_future(self.get(DEFAULT_ROOT + _YANG_LIBRARY))
        try:
            root = await self.discover_root()
        except BaseException:
            guess.cancel()
            await asyncio.gather(guess, return_exceptions=True)
            raise
        if root != DEFAULT_ROOT:
            guess.cancel()
            await asyncio.gather(guess, return_exceptions=True)
            return await self.yang_library()
        return await self.yang_library(await guess)

    async def yang_library(self, first: Optional[Response] = None) -> YangLibrary:
        """The device's modules: RFC 8525 ``yang-library``, else RFC 7895 ``modules-state``.
        ``first``: the answer to ``{root}/data/ietf-yang-library:yang-library`` already read."""
        root = self.root if self.root is not None else await self.discover_root()
        resp = first if first is not None else await self.get(root + _YANG_LIBRARY)
        if resp.status in (400, 404):
            log.info(
                "event=restconf.yang_library_fallback device=%s peer=%s status=%d source=modules-state",
                self.device, self.peer, resp.status,
            )
            resp = await self.get(root + "/data/ietf-yang-library:modules-state")
            resp.raise_for_status("YANG library (modules-state)")
            self.library = _modules_state(resp)
        else:
            resp.raise_for_status("YANG library")
            self.library = _yang_library(resp)
        return self.library

    async def ping(self, timeout: Optional[float] = None) -> float:
        """Check the device answers; returns the round trip in seconds.

        HTTP/2: a PING frame. HTTP/1.1: ``HEAD {root}/yang-library-version`` (any status is an
        answer). RestconfTimeoutError when none comes within ``timeout`` (``limits.ping_timeout``).
        """
        limit = self.limits.ping_timeout if timeout is None else timeout
        started = time.monotonic()
        await self._ping(limit)
        return time.monotonic() - started

    async def keepalive(self, interval: float, timeout: Optional[float] = None) -> str:
        """Until the connection ends: after ``interval`` seconds without a byte from the device,
        ping it; no answer within ``timeout`` closes the connection (a dead device). Returns the
        reason the connection ended."""
        while not self.closed.done():
            idle = time.monotonic() - self.last_received
            if idle < interval:
                await asyncio.wait([self.closed], timeout=interval - idle)
                continue
            try:
                await self.ping(timeout)
            except RestconfError as exc:
                if not self.closed.done():
                    log.warning(
                        "event=restconf.keepalive_failed device=%s peer=%s error=%r", self.device, self.peer, exc.message
                    )
                    self.close("%s: %s" % (KEEPALIVE_MISSED, exc.message))
        return self.closed.result()

    # -- for the subclasses ----------------------------------------------------------------------

    def _started(self) -> None:
        raise NotImplementedError

    def _on_data(self, data: bytes) -> None:
        raise NotImplementedError

    async def _exchange(self, exchange: _Exchange, headers: List[Tuple[str, str]], body: bytes) -> Response:
        raise NotImplementedError

    async def _ping(self, timeout: float) -> None:
        raise NotImplementedError

    def _goodbye(self) -> None:
        """Last bytes before an orderly close (HTTP/2 GOAWAY)."""

    def _fail_all(self, exc: RestconfError) -> None:
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        if data and self._carrier is not None and not self.closed.done():
            self._carrier.write(data)

    def _who(self) -> str:
        return self.device or self.peer or "device"

    def _end(self, reason: str, exc: RestconfError) -> None:
        """The connection is over: fail what is in flight, close the carrier, resolve closed."""
        if self.closed.done():
            return
        self.closed.set_result(reason)
        self._fail_all(exc)
        if self._carrier is not None:
            self._carrier.close()

    def _broken(self, exc: RestconfError) -> None:
        """The device broke the protocol or a bound that costs the whole connection."""
        if self.closed.done():
            return
        log.warning("event=restconf.connection_failed device=%s peer=%s code=%s error=%r",
                    self.device, self.peer, exc.code, exc.message)
        self._end(exc.message, exc)

    def _check_open(self) -> None:
        if self.closed.done():
            raise RestconfConnectionLostError(
                "RESTCONF connection to %s is closed: %s" % (self._who(), self.closed.result())
            )

    def _check_headers(self, exchange: _Exchange, headers: Iterable[Tuple[bytes, bytes]]) -> None:
        decoded = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in headers)
        size = sum(len(k) + len(v) for k, v in decoded)
        if size > self.limits.max_header_bytes:
            raise self._too_large(exchange, "header block", size, self.limits.max_header_bytes)
        exchange.headers = tuple((k, v) for k, v in decoded if not k.startswith(":"))

    def _too_large(self, exchange: _Exchange, what: str, size: int, limit: int) -> RestconfResponseTooLargeError:
        return RestconfResponseTooLargeError(
            "device %s answered %s %s with a %s over the limit (%d > %d bytes)"
            % (self._who(), exchange.method, exchange.path, what, size, limit),
            details={"method": exchange.method, "path": exchange.path, "limit": limit},
        )


class _H2State(h2.connection.H2Connection):
    """h2's connection state machine, remembering fewer closed streams.

    h2 keeps how each closed stream ended (for frames that arrive late) in a dict bounded at
    2**16 entries: megabytes over the life of a busy device's connection, times every device. A
    frame for a stream no longer remembered is still handled (h2 answers it with RST_STREAM), and
    late frames only come for the last few streams.
    """

    MAX_CLOSED_STREAMS = 256

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config)
        self.encoder = _PlainEncoder()


class _PlainEncoder(Encoder):
    """HPACK without Huffman coding of our request headers: a few short headers per request,
    where Huffman saves a handful of bytes for a tenth of the CPU of a request (pure Python)."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        return super().encode(headers, huffman=False)


class Http2Connection(RestconfConnection):
    """RESTCONF over HTTP/2 (ALPN ``h2``): one stream per request, many at once."""

    http_version = "2"
    alpn = ALPN_H2
    concurrent = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        lim = self.limits
        self._h2 = _H2State(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_inbound_headers=True,  # the device's headers: checked
                # Ours are built here from checked parts (_METHOD, _PATH, _headers): h2 checking
                # them again costs a quarter of a request's CPU.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: lim.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: lim.h2_stream_window,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: lim.max_header_bytes,
            },
        )
        # Before our SETTINGS is acknowledged h2 would still decode up to its default (64 KiB).
        self._h2.decoder.max_header_list_size = lim.max_header_bytes
        self._streams: Dict[int, _Exchange] = {}
        self._pings: Dict[bytes, "asyncio.Future[None]"] = {}
        self._changed = asyncio.Event()  # a stream slot or send window may have opened
        self._goaway = False
        self.buffered = 0  # response body bytes held for streams in flight
        self.peak_buffered = 0
        self._withheld: Dict[int, int] = {}  # stream -> flow-controlled bytes not acknowledged yet
        self._control_frames = 0
        self._control_since = time.monotonic()
        self._flush_scheduled = False

    def _started(self) -> None:
        self._h2.initiate_connection()
        extra = self.limits.h2_connection_window - _H2_DEFAULT_WINDOW
        if extra > 0:
            self._h2.increment_flow_control_window(extra)
        self._flush()

    def _flush(self, now: bool = False) -> None:
        """Send what h2 has queued: at the end of this turn of the event loop unless ``now``.

        What one turn produces (the preface with the first requests, a SETTINGS ACK with the
        next request, the WINDOW_UPDATEs of several answers) then goes out as one TLS record
        and one send instead of one each: a call home costs half the sends, and on loopback the
        kernel's receive work for each send is CPU of the sender. ``now`` for the last frames
        before the connection closes (GOAWAY)."""
        if not now:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # driven without a loop (tests feeding bytes by hand)
                loop = None
            if loop is not None:
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    loop.call_soon(self._flush_scheduled_now)
                return
        self._flush_scheduled = False
        self._write(self._h2.data_to_send())

    def _flush_scheduled_now(self) -> None:
        if self._flush_scheduled:
            self._flush(now=True)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- requests --------------------------------------------------------------------------------

    def _slots(self) -> int:
        return min(self.limits.max_concurrent_streams, self._h2.remote_settings.max_concurrent_streams)

    async def _exchange(self, exchange: _Exchange, headers: List[Tuple[str, str]], body: bytes) -> Response:
        while True:  # a free stream slot (the device's limit and ours)
            self._check_open()
            if self._goaway:
                raise RestconfConnectionLostError("device %s is going away (GOAWAY): no new requests" % self._who())
            if self._h2.open_outbound_streams < self._slots():
                break
            await self._changed.wait()
        sid = self._h2.get_next_available_stream_id()
        block = [
            (b":method", exchange.method.encode()),
            (b":scheme", b"https"),
            (b":authority", self.authority.encode("idna") if self.authority else b"device"),
            (b":path", exchange.path.encode("ascii")),
        ]
        # Credentials never enter HPACK's dynamic table (RFC 7541 section 7.1.3).
        block += [
            (NeverIndexedHeaderTuple if k in ("authorization", "cookie") else HeaderTuple)(
                k.encode("latin-1"), v.encode("latin-1")
            )
            for k, v in headers
        ]
        if body:
            block.append((b"content-length", str(len(body)).encode()))
        try:
            self._h2.send_headers(sid, block, end_stream=not body)
        except h2.exceptions.ProtocolError as exc:
            raise ValueError("request %s %s refused by HTTP/2: %s" % (exchange.method, exchange.path, exc)) from None
        exchange.started = True
        self._streams[sid] = exchange
        self._flush()
        try:
            if body:
                await self._send_body(sid, exchange, body)
            return await exchange.future
        finally:
            self._streams.pop(sid, None)
            self._release(sid, exchange)
            if not exchange.answered:  # timed out, cancelled or failed: the device may stop now
                self._reset(sid)
            self._after_stream()

    async def _send_body(self, sid: int, exchange: _Exchange, body: bytes) -> None:
        view = memoryview(body)
        offset = 0
        while offset < len(view):
            self._check_open()
            if exchange.future.done():
                return  # the device answered (413, 4xx) before taking the whole body
            try:
                window = self._h2.local_flow_control_window(sid)
            except h2.exceptions.StreamClosedError:
                return
            if window <= 0:
                opened = asyncio.ensure_future(self._changed.wait())
                try:
                    waiting: List["asyncio.Future[Any]"] = [opened, exchange.future]
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    opened.cancel()
                continue
            size = min(window, self._h2.max_outbound_frame_size, len(view) - offset)
            try:
                self._h2.send_data(sid, bytes(view[offset : offset + size]))
            except h2.exceptions.StreamClosedError:
                return
            offset += size
            self._flush()
        try:
            self._h2.end_stream(sid)
        except h2.exceptions.StreamClosedError:
            return
        self._flush()

    def _after_stream(self) -> None:
        self._wake()
        if self._goaway and not self._streams and not self.closed.done():
            self._end("device sent GOAWAY", RestconfConnectionLostError("device %s went away (GOAWAY)" % self._who()))

    def _reset(self, sid: int) -> None:
        if self.closed.done():
            return
        try:
            self._h2.reset_stream(sid, ErrorCodes.CANCEL)
        except h2.exceptions.StreamClosedError:
            pass
        except h2.exceptions.ProtocolError:
            pass  # already closed both ways
        self._flush()

    async def _ping(self, timeout: float) -> None:
        self._check_open()
        opaque = os.urandom(_PING_BYTES)
        waiter: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        waiter.add_done_callback(_retrieve)
        self._pings[opaque] = waiter
        try:
            try:
                self._h2.ping(opaque)
            except h2.exceptions.ProtocolError as exc:
                raise RestconfConnectionLostError("cannot ping device %s: %s" % (self._who(), exc)) from None
            self._flush()
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise RestconfTimeoutError(
                "device %s did not answer an HTTP/2 PING within %gs" % (self._who(), timeout)
            ) from None
        finally:
            self._pings.pop(opaque, None)

    def _goodbye(self) -> None:
        try:
            self._h2.close_connection()
        except h2.exceptions.ProtocolError:
            return
        self._flush(now=True)

    def _fail_all(self, exc: RestconfError) -> None:
        for ex in list(self._streams.values()):
            ex.fail(exc)
        for waiter in list(self._pings.values()):
            if not waiter.done():
                waiter.set_exception(exc)
        self._wake()

    # -- the device's bytes ----------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.DenialOfServiceError as exc:  # a header list over the limit
            self._flush(now=True)  # the GOAWAY h2 prepared
            self._broken(RestconfResponseTooLargeError(
                "device %s sent an HTTP/2 header block over the limit (%d bytes): %s"
                % (self._who(), self.limits.max_header_bytes, exc)
            ))
            return
        except h2.exceptions.ProtocolError as exc:
            self._flush(now=True)
            self._broken(RestconfProtocolError("device %s broke HTTP/2: %s" % (self._who(), exc)))
            return
        for event in events:
            self._event(event)
            if self.closed.done():
                return
        self._flush()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self._response(event.stream_id, event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self._data(event)
        elif isinstance(event, h2.events.StreamEnded):
            ex = self._streams.get(event.stream_id)
            if ex is not None:
                ex.finish(self.http_version)
        elif isinstance(event, h2.events.StreamReset):
            ex = self._streams.get(event.stream_id)
            if ex is not None:
                ex.fail(RestconfProtocolError(
                    "device %s reset the stream of %s %s (HTTP/2 error %s)"
                    % (self._who(), ex.method, ex.path, _code(event.error_code)),
                    details={"method": ex.method, "path": ex.path},
                ))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._terminated(event)
        elif isinstance(event, h2.events.PingAckReceived):
            waiter = self._pings.get(bytes(event.ping_data or b""))
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif isinstance(event, (h2.events.PingReceived, h2.events.RemoteSettingsChanged)):
            self._control_frame()
            self._wake()  # settings may raise MAX_CONCURRENT_STREAMS or the send window
        elif isinstance(event, h2.events.WindowUpdated):
            self._wake()
        # TrailersReceived, InformationalResponseReceived, SettingsAcknowledged, ...: nothing to do

    def _response(self, sid: int, headers: Any) -> None:
        ex = self._streams.get(sid)
        if ex is None:
            return
        status = b""
        try:
            self._check_headers(ex, headers)
            status = next((v for k, v in headers if k == b":status"), b"")
            ex.status = int(status)
        except RestconfResponseTooLargeError as exc:
            ex.fail(exc)
            self._reset(sid)
        except ValueError:
            ex.fail(RestconfProtocolError("device %s sent a malformed :status %r" % (self._who(), status)))
            self._reset(sid)

    def _data(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        ex = self._streams.get(sid)
        if ex is None or ex.future.done():
            self._h2.acknowledge_received_data(event.flow_controlled_length, sid)  # dropped: nothing held
            return
        data = event.data or b""
        if len(ex.body) + len(data) > self.limits.max_body_bytes:
            self._h2.acknowledge_received_data(event.flow_controlled_length, sid)
            ex.fail(self._too_large(ex, "body", len(ex.body) + len(data), self.limits.max_body_bytes))
            self.buffered -= len(ex.body)
            ex.body = bytearray()
            self._reset(sid)
            return
        ex.body += data
        self.buffered += len(data)
        self.peak_buffered = max(self.peak_buffered, self.buffered)
        # Flow control is the bound on what the device makes us hold: its window reopens while
        # the connection holds less than max_buffered_bytes, and always for the oldest request.
        if self.buffered <= self.limits.max_buffered_bytes or sid == min(self._streams):
            self._h2.acknowledge_received_data(event.flow_controlled_length, sid)
        else:
            self._withheld[sid] = self._withheld.get(sid, 0) + event.flow_controlled_length

    def _release(self, sid: int, exchange: _Exchange) -> None:
        """A stream's exchange is over: its bytes are no longer ours to hold; reopen windows."""
        self.buffered -= len(exchange.body)
        if self.closed.done():
            self._withheld.clear()
            return
        owed = self._withheld.pop(sid, 0)
        if owed:  # the stream is closed: this reopens the connection's window only
            self._h2.acknowledge_received_data(owed, sid)
        oldest = min(self._streams) if self._streams else None
        for other in sorted(self._withheld):
            if self.buffered <= self.limits.max_buffered_bytes or other == oldest:
                self._h2.acknowledge_received_data(self._withheld.pop(other), other)
        self._flush()

    def _terminated(self, event: h2.events.ConnectionTerminated) -> None:
        self._goaway = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        code = _code(event.error_code)
        for sid, ex in list(self._streams.items()):
            if sid > last:  # never processed by the device: safe to retry elsewhere
                ex.fail(RestconfConnectionLostError(
                    "device %s went away (GOAWAY %s) before %s %s" % (self._who(), code, ex.method, ex.path)
                ))
        if event.error_code:
            self._broken(RestconfProtocolError("device %s ended the HTTP/2 connection: GOAWAY %s" % (self._who(), code)))
        elif not any(sid <= last for sid in self._streams):
            self._end("device sent GOAWAY", RestconfConnectionLostError("device %s went away (GOAWAY)" % self._who()))
        self._wake()

    def _control_frame(self) -> None:
        now = time.monotonic()
        if now - self._control_since > _FLOOD_WINDOW:
            self._control_since, self._control_frames = now, 0
        self._control_frames += 1
        if self._control_frames > _FLOOD_LIMIT:
            self._broken(RestconfProtocolError(
                "device %s sent more than %d PING/SETTINGS frames in %gs (a flood)"
                % (self._who(), _FLOOD_LIMIT, _FLOOD_WINDOW)
            ))


class Http11Connection(RestconfConnection):
    """RESTCONF over HTTP/1.1 (ALPN ``http/1.1`` or none): requests queued, one at a time.

    HTTP/1.1 cannot abandon a response half-read: a timed-out or oversized response costs the
    connection (the device calls home again), unlike HTTP/2 where only the stream is reset.
    """

    http_version = "1.1"
    alpn = ALPN_HTTP11

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=self.limits.max_header_bytes)
        self._queue = asyncio.Lock()
        self._current: Optional[_Exchange] = None
        self._eof = ""  # why the device's bytes ended, once they did
        self._probe: Optional[_Exchange] = None  # the keepalive request, if one is running

    def _started(self) -> None:
        pass  # HTTP/1.1: the client speaks first, with its first request

    async def _exchange(self, exchange: _Exchange, headers: List[Tuple[str, str]], body: bytes) -> Response:
        async with self._queue:
            self._check_open()
            block = [("host", self.authority or "device")] + headers
            if body or exchange.method in ("PUT", "POST", "PATCH"):
                block.append(("content-length", str(len(body))))
            try:
                out = self._h11.send(h11.Request(method=exchange.method, target=exchange.path, headers=block))
                if body:
                    out += self._h11.send(h11.Data(data=body)) or b""
                out += self._h11.send(h11.EndOfMessage()) or b""
            except h11.LocalProtocolError as exc:
                raise ValueError("request %s %s refused by HTTP/1.1: %s" % (exchange.method, exchange.path, exc)) from None
            self._current = exchange
            exchange.started = True
            self._write(out or b"")
            try:
                return await exchange.future
            finally:
                self._current = None
                if not exchange.answered and not self.closed.done():
                    # Timed out or cancelled mid-response: HTTP/1.1 cannot skip the rest of it.
                    what = "a keepalive (%s %s)" if exchange is self._probe else "the answer to %s %s"
                    self._broken(RestconfTimeoutError(
                        ("device %s did not complete " + what + " in time; an HTTP/1.1 connection "
                         "cannot skip a pending response, so it is closed") % (self._who(), exchange.method, exchange.path),
                        details={"method": exchange.method, "path": exchange.path},
                    ))

    async def _ping(self, timeout: float) -> None:
        path = (self.root + "/yang-library-version") if self.root is not None else "/.well-known/host-meta"
        self._check_open()
        exchange = _Exchange("HEAD", path)
        self._probe = exchange
        try:
            async with asyncio.timeout(timeout):
                # Authenticated like any request: a device may count (and block) failed logins.
                auth = [("authorization", self._authorization)] if self._authorization is not None else []
                await self._exchange(exchange, auth, b"")  # any status: the device answered
        except TimeoutError:
            raise RestconfTimeoutError(
                "device %s did not answer a keepalive (HEAD %s) within %gs" % (self._who(), path, timeout)
            ) from None
        finally:
            self._probe = None

    def _fail_all(self, exc: RestconfError) -> None:
        if self._current is not None:
            self._current.fail(exc)

    def connection_lost(self, reason: str) -> None:
        if not self.closed.done():
            # A response delimited by the end of the connection (no Content-Length) ends here.
            self._eof = reason
            try:
                self._h11.receive_data(b"")
            except RuntimeError:
                pass
            self._pump()
        super().connection_lost(reason)

    def _on_data(self, data: bytes) -> None:
        try:
            self._h11.receive_data(data)
        except RuntimeError as exc:  # data after the connection was closed by h11
            self._broken(RestconfProtocolError("device %s sent bytes after the end: %s" % (self._who(), exc)))
            return
        self._pump()

    def _pump(self) -> None:
        while not self.closed.done():
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                ex = self._current
                if self._eof:  # the device hung up in the middle of a response
                    self._end(self._eof, RestconfConnectionLostError(
                        "RESTCONF connection to %s lost%s: %s"
                        % (self._who(), " during %s %s" % (ex.method, ex.path) if ex else "", self._eof)
                    ))
                elif exc.error_status_hint == 431:
                    self._broken(RestconfResponseTooLargeError(
                        "device %s sent an HTTP/1.1 response head over the limit (%d bytes)"
                        % (self._who(), self.limits.max_header_bytes),
                        details={"path": ex.path if ex else "", "limit": self.limits.max_header_bytes},
                    ))
                else:
                    self._broken(RestconfProtocolError("device %s broke HTTP/1.1: %s" % (self._who(), exc)))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            ex = self._current
            if isinstance(event, h11.ConnectionClosed):
                self._end("device closed the connection",
                          RestconfConnectionLostError("device %s closed the HTTP/1.1 connection" % self._who()))
                return
            if ex is None or ex.future.done():
                self._broken(RestconfProtocolError("device %s sent a response nobody asked for" % self._who()))
                return
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                try:
                    self._check_headers(ex, event.headers)
                except RestconfResponseTooLargeError as exc:
                    self._broken(exc)
                    return
                ex.status = event.status_code
            elif isinstance(event, h11.Data):
                if len(ex.body) + len(event.data) > self.limits.max_body_bytes:
                    self._broken(self._too_large(ex, "body", len(ex.body) + len(event.data), self.limits.max_body_bytes))
                    return
                ex.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                ex.finish(self.http_version)
                if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
                    self._h11.start_next_cycle()
                else:  # Connection: close, or a response delimited by the end of the connection
                    self._end("device ended the connection after a response (Connection: close)",
                              RestconfConnectionLostError("device %s closed the HTTP/1.1 connection" % self._who()))
                    return


def restconf_connection(alpn: Optional[str], **kwargs: Any) -> RestconfConnection:
    """The connection for the protocol ALPN chose: ``h2`` HTTP/2, ``http/1.1`` or none HTTP/1.1.

    ``kwargs``: ``limits``, ``authority`` (the Host / :authority sent), ``credentials``
    (:class:`BasicCredentials`, sent on every request, never logged), ``device``, ``peer``.
    """
    if alpn == ALPN_H2:
        return Http2Connection(**kwargs)
    if alpn in (ALPN_HTTP11, None, ""):
        return Http11Connection(**kwargs)
    raise RestconfProtocolError("device chose ALPN protocol %r, not one the listener offered" % alpn)


# -- TLS ---------------------------------------------------------------------------------------


def restconf_client_context(cert: str, key: str) -> ssl.SSLContext:
    """The TLS client context for RESTCONF call home: the NETCONF-over-TLS one (the listener's
    certificate; the device verified afterwards by the policy) offering ALPN ``h2``, ``http/1.1``."""
    ctx = client_context(cert, key)
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
    return ctx


@dataclass
class TLSLink:
    """A completed TLS handshake on a device's call-home socket, not yet speaking HTTP."""

    tls: _TLSConnection
    alpn: Optional[str]
    chain: List[bytes] = field(default_factory=list)

    def start(self, **kwargs: Any) -> RestconfConnection:
        """Bind a RESTCONF connection for the ALPN result (kwargs: see restconf_connection)."""
        conn = restconf_connection(self.alpn, **kwargs)
        # The TLS connection feeds any receiver with attach/data_received/connection_lost.
        self.tls.bind(cast(Any, conn))
        return conn

    def abort(self) -> None:
        if self.tls.transport is not None:
            self.tls.transport.abort()


async def open_tls(sock: socket.socket, context: ssl.SSLContext, *, timeout: float) -> TLSLink:
    """Run the TLS client on an accepted call-home socket (memory BIOs, as NETCONF over TLS).

    HandshakeError when no certificate comes; the socket is closed on any failure.
    """
    async with asyncio.timeout(timeout):
        conn = await start_tls(context, sock=sock)
    try:
        return tls_link(conn)
    except BaseException:
        conn._abort()  # pylint: disable=protected-access
        raise


def tls_link(conn: _TLSConnection) -> TLSLink:
    """The link of a completed handshake (:func:`~netconf_callhome.protocol.tls.start_tls`, here
    or on the single call-home port): the device's chain and the ALPN result. HandshakeError
    when the device presented no certificate."""
    chain = _peer_chain(conn.sslobj)
    if not chain:
        raise HandshakeError("device presented no certificate")
    alpn = conn.sslobj.selected_alpn_protocol() if conn.sslobj is not None else None
    return TLSLink(tls=conn, alpn=alpn, chain=chain)


# -- the transport: one accepted call-home connection to a ready RESTCONF device -----------------


class RestconfEvents(Protocol):
    """What the RESTCONF transport asks of and tells the listener (the service implements it)."""

    def tls_certificate(self, chain: Sequence[bytes], *, peer: str) -> Optional[VerifiedDevice]:
        """The device of a verified certificate chain; None when refused (recorded as pending)."""

    def restconf_credentials(self, device: str) -> Optional[BasicCredentials]:
        """HTTP basic credentials for the device, None for the client certificate alone."""

    def handshake_failed(self, failure: HandshakeFailure) -> None: ...

    def restconf_ready(self, conn: RestconfConnection, *, started: float) -> None:
        """A verified device whose root and YANG library were read (``conn.library``)."""


class RestconfTransport:
    """RESTCONF call home (RFC 8071 section 3.2): TLS client, the device's verdict, then HTTP.

    For each accepted socket: admission, the TLS handshake (the listener's certificate, ALPN
    ``h2`` / ``http/1.1``), the device's chain to :meth:`RestconfEvents.tls_certificate` (the
    same verdict as NETCONF over TLS: pinned certificate, or CA chain plus enrolled identity;
    unknown ones pending), then root discovery and the YANG library, all within
    ``handshake_timeout``. The connection is handed over by
    :meth:`RestconfEvents.restconf_ready`; failures are classified as for the other transports
    (:func:`classify_error`) and reported by :meth:`RestconfEvents.handshake_failed`.
    """

    transport = "restconf"

    def __init__(
        self,
        config: ListenerConfig,
        *,
        admission: Admission,
        events: RestconfEvents,
        limits: Optional[RestconfLimits] = None,
    ) -> None:
        self.config = config
        self.admission = admission
        self.events = events
        self.limits = limits or RestconfLimits()
        self.context = restconf_client_context(config.tls.client_cert, config.tls.client_key)
        self.pending = 0

    async def handle(self, sock: socket.socket, addr: Tuple[Any, ...]) -> None:
        """One accepted RESTCONF call-home connection (the listener's accept loop hands it over)."""
        peer = format_peer(addr)
        if not self.admission.acquire(peer):
            sock.close()
            return
        started = time.monotonic()
        try:
            set_tcp_keepalive(sock, self.config)
            await self.serve(
                peer, started, lambda: open_tls(sock, self.context, timeout=self.config.handshake_timeout)
            )
        finally:
            self.admission.release()

    async def serve(
        self,
        peer: str,
        started: float,
        connect: Callable[[], Awaitable[TLSLink]],
        *,
        refuse: Optional[Callable[[str], Optional[str]]] = None,
    ) -> None:
        """The TLS link from ``connect`` (:func:`open_tls` on this port; on the single call-home
        port a handshake already done there, :func:`tls_link`), the verdict, root and YANG
        library within what is left of ``handshake_timeout`` since ``started``, then
        ``restconf_ready``. ``refuse(device)``, asked after the verdict, may turn a verified
        device away with a reason (the single port's per-device transport pin). The caller
        holds the admission slot."""
        self.pending += 1
        try:
            conn = await self._connect(peer, started, connect, refuse)
        finally:
            self.pending -= 1
        if conn is not None:
            self.events.restconf_ready(conn, started=conn.started)

    async def _connect(
        self,
        peer: str,
        started: float,
        connect: Callable[[], Awaitable[TLSLink]],
        refuse: Optional[Callable[[str], Optional[str]]] = None,
    ) -> Optional[RestconfConnection]:
        link: Optional[TLSLink] = None
        conn: Optional[RestconfConnection] = None
        device = ""
        try:
            async with asyncio.timeout(max(0.1, self.config.handshake_timeout - (time.monotonic() - started))):
                link = await connect()
                verified = self.events.tls_certificate(link.chain, peer=peer)
                if verified is None:
                    link.tls.close()
                    self.events.handshake_failed(HandshakeFailure(
                        transport=self.transport, peer=peer, error=IdentityRefusedError("certificate not accepted")
                    ))
                    return None
                device = verified.device
                refused = refuse(device) if refuse is not None else None
                if refused:
                    link.tls.close()
                    self.events.handshake_failed(HandshakeFailure(
                        transport=self.transport, peer=peer, error=TransportPinnedError(refused), device=device
                    ))
                    return None
                conn = link.start(
                    limits=self.limits,
                    authority=_authority(peer),
                    credentials=self.events.restconf_credentials(device),
                    device=device,
                    peer=peer,
                )
                conn.fingerprint = verified.fingerprint
                conn.started = started
                await conn.discover()
        except BaseException as exc:
            error = classify_error(exc)
            if conn is not None:
                conn.close("call-home setup failed: %s" % error.message)
            elif link is not None:
                link.abort()
            # else: open_tls / start_tls closed the socket on their own failures
            self.events.handshake_failed(HandshakeFailure(transport=self.transport, peer=peer, error=error, device=device))
            if isinstance(exc, asyncio.CancelledError):
                raise
            if not isinstance(exc, Exception):
                raise
            return None
        return conn


def classify_error(exc: BaseException) -> CallHomeError:
    """A failed RESTCONF call home in the error hierarchy, in the classes (and so the reason
    codes) the other transports use: ``timeout``, ``auth-failed``, ``protocol``,
    ``connection-lost``, ``handshake``."""
    if isinstance(exc, (RestconfTimeoutError, TimeoutError, asyncio.TimeoutError)):
        return HandshakeTimeoutError(exc.message if isinstance(exc, CallHomeError) else "call home did not complete in time")
    if isinstance(exc, RestconfStatusError) and exc.details.get("status") in (401, 403):
        return AuthFailedError(exc.message, details=exc.details)
    if isinstance(exc, RestconfConnectionLostError):
        return ConnectionLostError(exc.message)
    if isinstance(exc, RestconfError):  # protocol, too large, content, other statuses
        return PeerProtocolError(exc.message, details=exc.details)
    if isinstance(exc, CallHomeError):
        return exc
    if isinstance(exc, ssl.SSLError):
        return HandshakeError("TLS handshake failed: %s" % exc)
    if isinstance(exc, (ConnectionError, EOFError)):
        return ConnectionLostError("connection lost during call home: %s" % exc)
    if isinstance(exc, asyncio.CancelledError):
        return HandshakeCancelledError("listener stopping")
    return UnexpectedHandshakeError("%s: %s" % (type(exc).__name__, exc))


def _authority(peer: str) -> str:
    """The Host / :authority sent: the device's address as the listener sees it."""
    address = peer_ip(peer)
    return "[%s]" % address if ":" in address else (address or "device")


# -- parsing what the device says --------------------------------------------------------------


def _root_from_host_meta(resp: Response) -> str:
    """The href of the ``restconf`` link of an XRD (RFC 6415) or its JSON form (JRD)."""
    href: Optional[str] = None
    if resp.content_type.endswith("json") or resp.body.lstrip()[:1] == b"{":
        doc = resp.json("host-meta (JRD)")
        links = doc.get("links") if isinstance(doc, dict) else None
        for link in links if isinstance(links, list) else []:
            if isinstance(link, dict) and link.get("rel") == "restconf" and isinstance(link.get("href"), str):
                href = link["href"]
                break
    else:
        root = resp.xml("host-meta (XRD)")
        for element in root.iter():
            if isinstance(element.tag, str) and local_name(element.tag) == "Link" and element.get("rel") == "restconf":
                href = element.get("href")
                break
    if href is None:
        raise RestconfContentError(
            "host-meta from %s has no <Link rel='restconf' href=...>: %s" % (resp.path, _excerpt(resp.body)),
            details={"path": resp.path},
        )
    return _root_path(href)


def _root_path(href: str) -> str:
    """The path of a restconf link: absolute URLs give their path (the connection is given),
    no query, fragment, dot segments or control characters; no trailing slash."""
    parts = urlsplit(href.strip())
    path = parts.path
    if (
        parts.query
        or parts.fragment
        or not path.startswith("/")
        or len(path) > 1024
        or any(seg in (".", "..") for seg in path.split("/"))
        or not _PATH.match(path)
    ):
        raise RestconfContentError("host-meta names an unusable RESTCONF root %r" % href[:200])
    return path.rstrip("/")


def _yang_library(resp: Response) -> YangLibrary:
    if "xml" in resp.content_type:
        return _library_from_xml(resp, "yang-library")
    doc = resp.json("YANG library")
    lib = _member(doc, "ietf-yang-library:yang-library", dict, resp)
    modules: List[YangModule] = []
    for mset in _member(lib, "module-set", list, resp, default=[]):
        if not isinstance(mset, dict):
            raise _bad(resp, "module-set entry is not an object")
        for item in _member(mset, "module", list, resp, default=[]):
            modules.append(_module(item, resp, implemented=True))
        for item in _member(mset, "import-only-module", list, resp, default=[]):
            modules.append(_module(item, resp, implemented=False))
    content_id = lib.get("content-id", "")
    return YangLibrary(tuple(_unique(modules)), "yang-library", str(content_id))


def _modules_state(resp: Response) -> YangLibrary:
    if "xml" in resp.content_type:
        return _library_from_xml(resp, "modules-state")
    doc = resp.json("YANG library (modules-state)")
    state = _member(doc, "ietf-yang-library:modules-state", dict, resp)
    modules = []
    for item in _member(state, "module", list, resp, default=[]):
        implemented = not (isinstance(item, dict) and item.get("conformance-type") == "import")
        modules.append(_module(item, resp, implemented=implemented))
    return YangLibrary(tuple(_unique(modules)), "modules-state", str(state.get("module-set-id", "")))


def _library_from_xml(resp: Response, source: str) -> YangLibrary:
    """The same facts from application/yang-data+xml: module elements by local name."""
    root = resp.xml("YANG library (%s)" % source)
    modules = []
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        tag = local_name(element.tag)
        if tag not in ("module", "import-only-module"):
            continue
        fields: Dict[str, Any] = {"feature": []}
        for child in element:
            if not isinstance(child.tag, str):
                continue
            name = local_name(child.tag)
            if name == "feature":
                fields["feature"].append(child.text or "")
            elif name in ("name", "revision", "namespace", "conformance-type"):
                fields[name] = (child.text or "").strip()
        implemented = tag == "module" and fields.get("conformance-type") != "import"
        modules.append(_module(fields, resp, implemented=implemented))
    content_id = ""
    for element in root.iter():
        if isinstance(element.tag, str) and local_name(element.tag) in ("content-id", "module-set-id"):
            content_id = (element.text or "").strip()
            break
    return YangLibrary(tuple(_unique(modules)), source, content_id)


def _module(item: Any, resp: Response, *, implemented: bool) -> YangModule:
    if not isinstance(item, dict):
        raise _bad(resp, "module entry is not an object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(resp, "module entry without a name: %s" % _excerpt(json.dumps(item).encode()))
    revision = item.get("revision", "")
    namespace = item.get("namespace", "")
    features = item.get("feature", [])
    if not isinstance(revision, str) or not isinstance(namespace, str):
        raise _bad(resp, "module %r has a non-string revision or namespace" % name)
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise _bad(resp, "module %r has a malformed feature list" % name)
    return YangModule(name, revision, namespace, tuple(features), implemented)


def _member(doc: Any, key: str, kind: type, resp: Response, default: Any = None) -> Any:
    value = doc.get(key, default) if isinstance(doc, dict) else None
    if not isinstance(value, kind):
        raise _bad(resp, "%r is missing or not a JSON %s" % (key, "object" if kind is dict else "array"))
    return value


def _bad(resp: Response, what: str) -> RestconfContentError:
    return RestconfContentError("YANG library from %s: %s" % (resp.path, what), details={"path": resp.path})


def _unique(modules: List[YangModule]) -> List[YangModule]:
    seen = set()
    out = []
    for mod in modules:
        key = (mod.name, mod.revision, mod.implemented)
        if key not in seen:
            seen.add(key)
            out.append(mod)
    return out


# -- small helpers -------------------------------------------------------------------------------


def _headers(headers: HeaderArg) -> List[Tuple[str, str]]:
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
    out = []
    for name, value in pairs:
        key = str(name).strip().lower()
        if key in _RESERVED or key.startswith(":"):
            raise ValueError("header %r is set by the RESTCONF connection itself" % name)
        if not _TOKEN.match(key):
            raise ValueError("invalid header name %r" % name)
        if any(c in str(value) for c in "\r\n\0"):
            raise ValueError("header %r has a line break or NUL in its value" % name)
        out.append((key, str(value)))
    return out


def _excerpt(body: bytes) -> str:
    text = body[:_EXCERPT].decode("utf-8", "replace")
    # The device's words go into errors and logs: one line, no control characters (escapes).
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text + ("..." if len(body) > _EXCERPT else "")


def _short(exc: BaseException) -> str:
    return str(exc)[:200] or type(exc).__name__


def _code(error_code: Any) -> str:
    try:
        return ErrorCodes(error_code).name
    except ValueError:
        return str(error_code)


def _retrieve(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled():
        fut.exception()


__all__ = (
    "ALPN_H2",
    "ALPN_HTTP11",
    "ALPN_PROTOCOLS",
    "DEFAULT_ROOT",
    "BasicCredentials",
    "Http11Connection",
    "Http2Connection",
    "Response",
    "RestconfConnection",
    "RestconfEvents",
    "RestconfLimits",
    "RestconfTransport",
    "TLSLink",
    "classify_error",
    "YangLibrary",
    "YangModule",
    "open_tls",
    "tls_link",
    "restconf_client_context",
    "restconf_connection",
)

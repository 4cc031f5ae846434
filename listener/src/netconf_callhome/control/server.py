# SPDX-License-Identifier: GPL-3.0-or-later
"""Control endpoint: the control socket (Unix, mode 0600) and the optional remote control
endpoint (TCP + TLS + bearer token) for AWX and containers.

The wire protocol is described in :mod:`netconf_callhome.control.client`. One request per
connection; ``lease`` turns the connection into a NETCONF byte stream. The server reaches the
listener only through :class:`ControlledListener` (state to read, device access, trust
operations, lifecycle), which :class:`~netconf_callhome.control.facade.ListenerFacade` implements.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import ssl
import time
import uuid
from typing import Any, Awaitable, Callable, Collection, Dict, List, Mapping, Optional, Protocol, Sequence, Sized, Tuple

from netconf_callhome.errors import (
    CallHomeError,
    ConfigError,
    ControlError,
    DeviceNotFoundError,
    LeaseError,
    NotAuthorizedError,
    RequestTooLargeError,
    StateStoreError,
)

from netconf_callhome.config import ListenerConfig, parse_bind
from netconf_callhome.control.client import SHARED_STORE_MARKER
from netconf_callhome.control.cluster import Strangers, answer_rpc, read_rpc_body
from netconf_callhome.control.forward import FORWARDED_OPS, Forwarder, splice
from netconf_callhome.metrics import Metrics
from netconf_callhome.netutil import describe_peer
from netconf_callhome.protocol.session import HeldSession, Lease
from netconf_callhome.state.registry import Registry
from netconf_callhome.state.postgres import redact_url
from netconf_callhome.state.stores import is_shared
from netconf_callhome.state.cluster_nodes import NodeDirectory
from netconf_callhome.state.postgres import PostgresStore

log = logging.getLogger("netconf_callhome.control")
VERSION = "0.1.0"
_LINE_LIMIT = 1024 * 1024  # the local socket's request line (its clients passed the file mode)
_BURST_QUIET = 10.0  # seconds without a hit before a bound's burst is reported as over
_REJECT_GRACE = 1.0  # at most this long to let a rejected stranger read its error before closing
# What another node may ask over the node-to-node channel (control.cluster): forwarding and reads.
_CLUSTER_OPS = frozenset(("ping", "status", "devices", "device", "wait", "endpoint", "lease", "rpc"))


# What the control operations need from the listener, by concern. The service hands in one
# object implementing all four (control.facade.ListenerFacade, built from the service's parts);
# a test hands in a fake of the group it exercises.


class ListenerState(Protocol):
    """What the read operations show (``status``, ``devices``, ``device``, ``pending``)."""

    @property
    def registry(self) -> Registry: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def sessions(self) -> Mapping[str, HeldSession]: ...

    @property
    def restconf_sessions(self) -> Sized:
        """The held RESTCONF connections (counted in ``status``)."""

    @property
    def bound(self) -> Mapping[str, List[Tuple[str, int]]]: ...

    def enrolled_devices(self) -> Collection[str]: ...


class DeviceAccess(Protocol):
    """Waiting for a device and handing out its session (``wait``, ``lease``, ``endpoint``, ``rpc``)."""

    async def wait_ready(self, device: str, timeout: float) -> HeldSession: ...

    async def wait_connected(self, device: str, timeout: float) -> None:
        """Until the device holds a session on any transport (NETCONF or RESTCONF)."""

    def lease_ended(self, held: HeldSession) -> None: ...

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
    ) -> Dict[str, Any]: ...

    async def rpc(self, endpoint: str, request: bytes) -> bytes: ...


class TrustOperations(Protocol):
    """Trust changes (``approve``, ``enroll``, ``revoke``, ``secret``, ``reload``). Coroutines:
    their writes run off the event loop (a shared trust store is a database transaction)."""

    async def approve(
        self,
        fingerprint: str,
        device: str = "",
        *,
        replace: bool = False,
        credentials: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]: ...

    async def enroll(
        self,
        device: str,
        kind: str,
        value: str,
        *,
        replace: bool = False,
        observed: bool = False,
        credentials: Optional[Dict[str, Any]] = None,
        dry_run: bool = False,
    ) -> Dict[str, Any]: ...

    async def revoke(self, device: str, identity: Optional[str] = None, *, dry_run: bool = False) -> Dict[str, Any]: ...

    async def outbound_ssh_secret(
        self,
        action: str,
        name: str,
        reference: Optional[str],
        *,
        device_ids: Sequence[str] = (),
        allow_rotation: bool = False,
        dry_run: bool = False,
    ) -> Dict[str, Any]: ...

    def reload_trust(self) -> bool: ...


class Lifecycle(Protocol):
    """``touch`` postpones an embedded listener's idle exit; ``request_stop`` is ``shutdown``."""

    def touch(self) -> None: ...

    def request_stop(self) -> None: ...


class ControlledListener(ListenerState, DeviceAccess, TrustOperations, Lifecycle, Protocol):
    """Everything the control operations need from the listener: the four groups above."""


def listen_backlog() -> int:
    """The accept backlog of the control sockets: the kernel's cap (somaxconn), at least 4096.

    asyncio's default (100) made a Unix ``connect`` fail with EAGAIN as soon as a hundred clients
    (forks of a playbook leasing at once) were waiting to be accepted.
    """
    try:
        with open("/proc/sys/net/core/somaxconn", "r", encoding="ascii") as handle:
            kernel = int(handle.read().strip())
    except (OSError, ValueError):
        kernel = 0
    return max(4096, kernel)


class _Burst:
    """Logs a bound that trips in a flood as two lines per burst, not one per connection: a
    warning at the first hit, and once no hit came for ``_BURST_QUIET`` s, how many there were."""

    def __init__(self, event: str, what: str) -> None:
        self.event = event
        self.what = what
        self.count = 0
        self._first = 0.0
        self._last = 0.0
        self._timer: Optional[asyncio.TimerHandle] = None

    def hit(self, peer: Any) -> None:
        now = time.monotonic()
        if self.count == 0:
            self._first = now
            log.warning("event=%s peer=%s %s (further ones are counted, not logged)", self.event, describe_peer(peer), self.what)
            self._timer = asyncio.get_running_loop().call_later(_BURST_QUIET, self._check)
        self.count += 1
        self._last = now

    def _check(self) -> None:
        quiet = time.monotonic() - self._last
        if quiet < _BURST_QUIET:
            self._timer = asyncio.get_running_loop().call_later(_BURST_QUIET - quiet, self._check)
            return
        log.warning(
            "event=%s_end connections=%d seconds=%.1f", self.event, self.count, self._last - self._first
        )
        self.count = 0
        self._timer = None

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class ControlServer:
    def __init__(self, config: ListenerConfig, listener: ControlledListener) -> None:
        self.listener = listener
        self.config = config
        self._servers: List[asyncio.AbstractServer] = []
        self._token: Optional[bytes] = None
        self._tls: Optional[ssl.SSLContext] = None
        tcp = config.control_tcp
        self._bursts = {
            "limit": _Burst(
                "control.unauthenticated_limit",
                "max_unauthenticated=%d connections without a valid token are open: the oldest is closed "
                "for each new one" % tcp.max_unauthenticated,
            ),
            "timeout": _Burst(
                "control.auth_timeout",
                "closed: no TLS handshake and request line within auth_timeout=%gs" % tcp.auth_timeout,
            ),
            "too_long": _Burst(
                "control.request_too_long",
                "closed: request line over max_request_bytes=%d before authentication" % tcp.max_request_bytes,
            ),
        }
        # Remote connections whose token was not checked yet (control.cluster.Strangers).
        self._strangers = Strangers(tcp.max_unauthenticated, self._bursts["limit"].hit)
        self._started = time.time()
        self._ops: Dict[str, Callable[[Dict[str, Any]], Awaitable[Any]]] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("_op_")
        }
        self.tcp_address: Optional[str] = None
        self.active_leases = 0
        # Scale-out (set by the service on PostgreSQL): the shared database's view of every
        # device (devices, device), and the forwarding of requests for devices other nodes hold.
        self.directory: Optional[NodeDirectory] = None
        self.forwarder: Optional[Forwarder] = None
        self.cluster_address: Optional[str] = None  # this node's advertised node-to-node address

    async def start(self) -> None:
        path = self.config.control_socket
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket from a crashed listener; start() of a live one failed already
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(
                lambda r, w: self._handle(r, w, remote=False), path=path, limit=_LINE_LIMIT, backlog=listen_backlog()
            )
        finally:
            os.umask(old_umask)
        os.chmod(path, self.config.control_socket_mode)
        self._servers.append(server)
        self._mark_trust_store()
        tcp = self.config.control_tcp
        if tcp.bind:
            self._token = _read_token(tcp.token_file, tcp.token_env)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(tcp.cert, tcp.key)
            self._tls = ctx
            host, port = parse_bind(tcp.bind, 4339)
            # Plain TCP here and TLS in _accept_remote: the TLS handshake then counts against the
            # stranger's auth_timeout and max_unauthenticated like its request line does. The
            # stream limit is the request line's bound (leases and rpc bodies do not read lines).
            server = await asyncio.start_server(
                self._accept_remote, host=host or None, port=port, limit=tcp.max_request_bytes, backlog=listen_backlog()
            )
            self._servers.append(server)
            sockname = server.sockets[0].getsockname()
            self.tcp_address = "tls://%s:%d" % (
                (("[%s]" % sockname[0]) if ":" in sockname[0] else sockname[0]),
                sockname[1],
            )
            log.info("event=control.remote_enabled address=%s", self.tcp_address)

    def _mark_trust_store(self) -> None:
        """Next to the control socket, where this listener keeps its trust store when that is the
        shared database (SHARED_STORE_MARKER, the URL redacted); removed on a single node. A
        client that finds no listener answering there must not write the trust store file then:
        no node reads it (the enroll module refuses, naming the database)."""
        marker = os.path.join(os.path.dirname(self.config.control_socket), SHARED_STORE_MARKER)
        if not is_shared(self.config.state_url):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker)
            return
        try:
            temp = "%s.%d.tmp" % (marker, os.getpid())
            with open(temp, "w", encoding="utf-8") as handle:
                handle.write(redact_url(self.config.state_url) + "\n")
            os.replace(temp, marker)
        except OSError as exc:
            log.warning("event=control.marker_failed path=%s error=%r", marker, exc.strerror or exc)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        self._strangers.close_all()
        for burst in self._bursts.values():
            burst.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.control_socket)

    # -- the remote endpoint: strangers until their token is checked ---------------------------

    async def _accept_remote(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A TCP connection to the remote endpoint: TLS, one request line, its token, within bounds.

        Until its token is verified the connection is a stranger: ``auth_timeout`` s from the
        accept for all of it, a line of at most ``max_request_bytes``, one of
        ``max_unauthenticated`` slots. Whatever misses a bound is closed; a bound that trips is
        logged once per burst (:class:`_Burst`), a wrong token once per connection.
        """
        tcp = self.config.control_tcp
        assert self._tls is not None
        peer = writer.get_extra_info("peername")
        task = self._strangers.admit(writer, peer)
        try:
            async with asyncio.timeout(tcp.auth_timeout):
                try:
                    await writer.start_tls(self._tls, ssl_handshake_timeout=tcp.auth_timeout)
                    line = await _read_line(reader, tcp.max_request_bytes)
                    if not line:
                        writer.transport.abort()
                        return
                    op, request = _parse(line)
                    self._authenticate(request, op, peer)
                except CallHomeError as exc:
                    if isinstance(exc, RequestTooLargeError):
                        self._bursts["too_long"].hit(peer)
                    await _reject(reader, writer, exc)
                    return
        except TimeoutError:
            self._bursts["timeout"].hit(peer)
            log.debug("event=control.auth_timeout peer=%s", describe_peer(peer))
            writer.transport.abort()
            return
        except asyncio.CancelledError:
            if self._strangers.cancelled(task, writer):
                return  # made room for a newer stranger
            raise
        except (ssl.SSLError, ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            log.debug("event=control.tls_failed peer=%s error=%r", describe_peer(peer), exc)
            writer.transport.abort()
            return
        finally:
            self._strangers.done(task)
        await self._handle(reader, writer, remote=True, parsed=(op, request))

    async def serve_forwarded(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, op: str, request: Dict[str, Any], peer: str
    ) -> None:
        """A request another node forwarded (control.cluster verified its certificate). Only what
        forwarding needs is served on the channel: trust changes and shutdown are not."""
        request.pop("token", None)
        log.debug("event=cluster.request op=%s from_node=%s", op, peer)
        if op not in _CLUSTER_OPS:
            log.warning("event=cluster.op_refused op=%s from_node=%s", op, peer)
            with contextlib.suppress(ConnectionError, OSError):
                error = NotAuthorizedError(
                    "operation %r is not served on the node-to-node channel (only %s)" % (op, ", ".join(sorted(_CLUSTER_OPS)))
                )
                await _answer(writer, {"ok": False, "error": error.to_dict()})
            writer.close()
            return
        await self._handle(reader, writer, remote=True, parsed=(op, request), forwarded=True)

    def _authenticate(self, request: Dict[str, Any], op: str, peer: Any) -> None:
        token = request.pop("token", None)
        if not (isinstance(token, str) and self._token and hmac.compare_digest(token.encode("utf-8"), self._token)):
            log.warning("event=control.unauthorized peer=%s op=%s", peer, op)
            raise NotAuthorizedError("a valid token is required for remote access to the listener")

    async def _handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        remote: bool,
        parsed: Optional[Tuple[str, Dict[str, Any]]] = None,
        forwarded: bool = False,
    ) -> None:
        """One request: read and parsed here (local socket) or authenticated already (remote, or
        ``forwarded`` by another node over the cluster channel: served here, never sent on)."""
        self.listener.touch()
        op = "?"
        try:
            if parsed is None:
                line = await _read_line(reader, _LINE_LIMIT)
                if not line:
                    return
                op, request = _parse(line)
                request.pop("token", None)
            else:
                op, request = parsed
            if not forwarded and self.forwarder is not None and op in FORWARDED_OPS:
                # the device may be held by another node: the request goes there (control.forward)
                answer = await self.forwarder.serve(op, request, reader, writer)
                if answer is not None:
                    remote_stream = answer.pop("__pipe__", None)
                    if remote_stream is not None:
                        await splice(reader, writer, remote_stream)
                    elif answer:
                        await _answer(writer, answer)
                    return
            if op == "lease":
                await self._lease(request, reader, writer)
                return
            if op == "rpc":
                await self._rpc(request, reader, writer)
                return
            if op == "shutdown" and remote:
                raise NotAuthorizedError("shutdown is only accepted on the local control socket")
            handler = self._ops.get(op)
            if handler is None:
                raise ControlError("unknown operation %r (known: %s)" % (op, ", ".join(sorted(list(self._ops) + ["lease", "rpc"]))))
            result = await handler(request)
            await _answer(writer, {"ok": True, "result": result})
        except CallHomeError as exc:
            if op == "lease":
                self.listener.metrics.lease_errors.labels(code=exc.code).inc()
            with contextlib.suppress(ConnectionError, OSError):
                await _answer(writer, {"ok": False, "error": exc.to_dict()})
        except (ConnectionError, OSError):
            pass
        except Exception as exc:  # never let one bad request take the listener down
            log.exception("event=control.internal_error op=%s", op)
            with contextlib.suppress(ConnectionError, OSError):
                await _answer(
                    writer,
                    {"ok": False, "error": {"code": "internal", "message": "%s: %s" % (type(exc).__name__, exc)}},
                )
        finally:
            self.listener.touch()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # -- a relayed JSON-RPC request -------------------------------------------------------------

    async def _rpc(self, request: Dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """``{"op": "rpc", "endpoint": ID, "size": N}`` then N bytes: one JSON-RPC request of a module.

        For clients that cannot reach the endpoint's Unix socket (a remote listener: the relay the
        connection plugin runs in the ``ansible-playbook`` worker). The request goes to the same
        handler as one on the endpoint's socket (``endpoints.ansible_rpc``); the answer line
        ``{"ok": true, "result": {"size": M}}`` is followed by the M bytes of the JSON-RPC response.
        The body follows the request line so that it is read only after the token was checked, and
        neither side escapes a configuration of many megabytes into a JSON string.
        """
        endpoint = _require_str(request, "endpoint")
        data = await read_rpc_body(request, reader)
        response = await self.listener.rpc(endpoint, data)
        await answer_rpc(writer, response)

    # -- leases --------------------------------------------------------------------------------

    async def _lease(self, request: Dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        device = _require_str(request, "device")
        wait = _number(request, "wait", 0.0)
        held = await self.listener.wait_ready(device, wait)
        # The mode is decided before the answer names it: a device that refuses or ignores a
        # new channel is found here (within channel_hello_timeout) and this lease runs shared.
        lease = await held.prepare()
        try:
            await self._answer_and_serve(request, held, lease, reader, writer)
        finally:
            lease.release()  # a no-op once served; closes the channel of a lease never used

    async def _answer_and_serve(
        self,
        request: Dict[str, Any],
        held: HeldSession,
        lease: Lease,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        lease_id = uuid.uuid4().hex[:12]
        info = {
            "lease": lease_id,
            "device": held.device,
            "mode": lease.mode,
            "transport": held.transport,
            "peer": held.peer,
            "fingerprint": held.fingerprint,
            "capabilities": held.hello.capabilities if held.hello else [],
        }
        if request.get("listen"):
            # For plain ncclient users: a one-shot Unix socket that manager.connect_uds(path) can open.
            path = os.path.join(os.path.dirname(self.config.control_socket), "lease-%s.sock" % lease_id)
            accepted: "asyncio.Future[tuple]" = asyncio.get_running_loop().create_future()

            async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                if accepted.done():
                    w.close()
                    return
                accepted.set_result((r, w))
                await done_serving

            done_serving: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
            old_umask = os.umask(0o177)
            try:
                server = await asyncio.start_unix_server(on_connect, path=path)
            finally:
                os.umask(old_umask)
            try:
                info["path"] = path
                await _answer(writer, {"ok": True, "result": info})
                try:
                    r, w = await asyncio.wait_for(accepted, _number(request, "accept_timeout", 30.0))
                except asyncio.TimeoutError:
                    raise LeaseError("nobody connected to lease socket %s" % path) from None
                finally:
                    server.close()
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                await self._serve_lease(held, lease, info, r, w)
                w.close()
            finally:
                if not done_serving.done():
                    done_serving.set_result(None)
            return
        await _answer(writer, {"ok": True, "result": info})
        await self._serve_lease(held, lease, info, reader, writer)

    async def _serve_lease(
        self,
        held: HeldSession,
        lease: Lease,
        info: Dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        metrics = self.listener.metrics
        metrics.leases.labels(mode=lease.mode).inc()
        metrics.active_leases.inc()
        self.active_leases += 1
        started = time.monotonic()
        log.info("event=lease.start lease=%s device=%s mode=%s", info["lease"], held.device, lease.mode)
        try:
            reason = await lease.serve(reader, writer)
            self.listener.lease_ended(held)
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
        finally:
            metrics.active_leases.dec()
            self.active_leases -= 1
        log.info(
            "event=lease.end lease=%s device=%s mode=%s seconds=%.3f reason=%r",
            info["lease"],
            held.device,
            lease.mode,
            time.monotonic() - started,
            reason,
        )

    # -- plain operations ----------------------------------------------------------------------

    async def _op_ping(self, request: Dict[str, Any]) -> Any:
        return {"version": VERSION, "pid": os.getpid(), "uptime": round(time.time() - self._started, 1)}

    async def _op_status(self, request: Dict[str, Any]) -> Any:
        """What this node runs and holds. ``pending`` counts what ``pending`` lists by default:
        on a shared database every node's keys (``pending_scope: cluster``; ``node`` when the
        database cannot be read and only this node's own are counted), with this node's own as
        ``pending_here``; a single node (SQLite) answers its own count only, as before."""
        lst = self.listener
        status = {
            "version": VERSION,
            "pid": os.getpid(),
            "uptime": round(time.time() - self._started, 1),
            "ssh": ["%s:%d" % b for b in lst.bound["ssh"]],
            "tls": ["%s:%d" % b for b in lst.bound["tls"]],
            "outbound_ssh": ["%s:%d" % b for b in lst.bound["outbound_ssh"]],
            "restconf": ["%s:%d" % b for b in lst.bound.get("restconf", [])],
            "callhome": ["%s:%d" % b for b in lst.bound.get("callhome", [])],
            "control_socket": self.config.control_socket,
            "control_tcp": self.tcp_address,
            "cluster": self.cluster_address,
            # on PostgreSQL the shared trust store (its URL, redacted), not this node's unused file
            "trust_store": redact_url(self.config.state_url) if is_shared(self.config.state_url) else self.config.trust_store,
            "registry": self.config.registry,
            "devices": lst.registry.counts(),
            # every held session, then per transport (a device may hold NETCONF and RESTCONF at once)
            "sessions": len(lst.sessions) + len(lst.restconf_sessions),
            "sessions_by_transport": self._sessions_by_transport(),
            "active_leases": self.active_leases,
            "pending": len(lst.registry.pending()),
            "enrolled": len(lst.enrolled_devices()),
        }
        if self._pending_store() is not None:
            entries, scope = await self._pending_entries("cluster")
            status.update(pending=len(entries), pending_here=status["pending"], pending_scope=scope)
        return status

    def _sessions_by_transport(self) -> Dict[str, int]:
        counts = {"ssh": 0, "tls": 0, "restconf": len(self.listener.restconf_sessions)}
        for held in self.listener.sessions.values():
            counts[held.transport] = counts.get(held.transport, 0) + 1
        return counts

    async def _shared_records(self, request: Dict[str, Any], name: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
        """This node's records, and on a shared database every other node's too: a device another
        node holds (or only others have seen) is shown as the database has it, with its ``node``.
        ``"scope": "node"`` in the request: this node's own records only (its own view)."""
        scope = request.get("scope") or "cluster"
        if scope not in ("cluster", "node"):
            raise ControlError("'scope' must be 'cluster' (every node's devices) or 'node' (this node's own view)")
        local = self.listener.registry
        recs = {rec.name: rec.to_dict() for rec in ([local.get(name)] if name is not None else local.devices()) if rec}
        if self.directory is None or scope == "node":
            return recs
        me = self.directory.node
        for rec in recs.values():
            rec["node"] = me if rec.get("status") == "connected" else None
        try:
            shared = await self.directory.devices(name)
        except StateStoreError as exc:
            log.warning("event=cluster.devices_failed error=%r (this node's own records are shown)", exc.message)
            return recs
        for doc in shared:
            other = doc.get("node")
            name_of = str(doc.get("name"))
            if (other and other != me) or name_of not in recs:
                mine = recs.get(name_of)
                if mine is not None:  # what this node saw last (e.g. "moved to node node-b")
                    doc["this_node"] = {"node": me, "status": mine.get("status"), "last_error": mine.get("last_error")}
                recs[name_of] = doc
        return recs

    async def _op_devices(self, request: Dict[str, Any]) -> Any:
        status = request.get("status")
        out = []
        docs = list((await self._shared_records(request)).values())
        if self.directory is not None:  # several nodes' records: in name order
            docs.sort(key=lambda doc: str(doc.get("name")))
        for rec_doc in docs:
            if status and rec_doc.get("status") != status:
                continue
            out.append(self._device_view(str(rec_doc.get("name")), rec_doc))
        for name in sorted(set(self.listener.enrolled_devices()) - {r["name"] for r in out}):
            # enrolled but never called: listed unfiltered and under their own status filter
            if status in (None, "", "never-seen") and self.listener.registry.get(name) is None:
                out.append(self._device_view(name, {"name": name, "status": "never-seen"}))
        return out

    def _device_view(self, name: str, rec: Dict[str, Any]) -> Dict[str, Any]:
        held = self.listener.sessions.get(name)
        rec["enrolled"] = name in self.listener.enrolled_devices()
        rec["active_leases"] = held.active_leases if held else 0
        return rec

    async def _op_device(self, request: Dict[str, Any]) -> Any:
        name = _require_str(request, "device")
        rec = (await self._shared_records(request, name)).get(name)
        if rec is None:
            if name in self.listener.enrolled_devices():
                return self._device_view(name, {"name": name, "status": "never-seen"})
            raise DeviceNotFoundError(
                "device %r is not enrolled and has never called home" % name, details={"device": name}
            )
        return self._device_view(name, rec)

    async def _op_pending(self, request: Dict[str, Any]) -> Any:
        """The keys waiting for approval. On a shared database every node's (a key refused on
        node A is approved on node B, state.postgres ``find_pending``), each with the ``node``
        that saw it, merged with this node's own entries, which may be newer than their row (the
        registry writes behind). ``"scope": "node"``: this node's own entries only, as
        ``devices`` has it; a single node (SQLite) answers with its own entries, as before."""
        scope = request.get("scope") or "cluster"
        if scope not in ("cluster", "node"):
            raise ControlError("'scope' must be 'cluster' (every node's pending keys) or 'node' (this node's own)")
        return (await self._pending_entries(scope))[0]

    def _pending_store(self) -> Optional[PostgresStore]:
        """The shared database whose pending keys every node sees (None: a single node)."""
        store = self.directory.store if self.directory is not None else None
        return store if isinstance(store, PostgresStore) else None

    async def _pending_entries(self, scope: str) -> Tuple[List[Dict[str, Any]], str]:
        """The pending entries of ``scope`` and the scope they are of: ``node`` when the shared
        database cannot be read (this node's own then, ``event=cluster.pending_failed``)."""
        local = self.listener.registry.pending()
        store = self._pending_store()
        if store is None or scope == "node":
            return [p.to_dict() for p in local], "node"
        me = self.directory.node if self.directory is not None else ""
        mine = {p.fingerprint: dict(p.to_dict(), node=me) for p in local}
        try:
            shared = await asyncio.to_thread(store.list_pending)
        except StateStoreError as exc:
            log.warning("event=cluster.pending_failed error=%r (this node's own pending keys are shown)", exc.message)
            return list(mine.values()), "node"
        merged: Dict[str, Dict[str, Any]] = {}
        for doc in shared:
            fingerprint = str(doc.get("fingerprint"))
            own = mine.pop(fingerprint, None)
            # This node's entry when it saw the key since the row was written (not flushed yet);
            # the row otherwise: it names the node that saw the key last.
            if own is not None and float(own.get("last_seen") or 0) > float(doc.get("last_seen") or 0):
                merged[fingerprint] = own
            else:
                merged[fingerprint] = doc
        merged.update(mine)  # seen here and not written yet
        return sorted(merged.values(), key=lambda doc: float(doc.get("first_seen") or 0)), "cluster"

    async def _op_approve(self, request: Dict[str, Any]) -> Any:
        credentials = request.get("credentials")  # the enroll module's source: pending + credentials
        if credentials is not None and not isinstance(credentials, dict):
            raise ControlError("'credentials' must be an object")
        return await self.listener.approve(
            _require_str(request, "fingerprint"),
            str(request.get("device") or ""),
            replace=bool(request.get("replace")),
            credentials=credentials,
        )

    async def _op_revoke(self, request: Dict[str, Any]) -> Any:
        identity = request.get("identity")
        return await self.listener.revoke(
            _require_str(request, "device"), str(identity) if identity else None, dry_run=bool(request.get("dry_run"))
        )

    async def _op_enroll(self, request: Dict[str, Any]) -> Any:
        credentials = request.get("credentials")
        if credentials is not None and not isinstance(credentials, dict):
            raise ControlError("'credentials' must be an object")
        return await self.listener.enroll(
            _require_str(request, "device"),
            _require_str(request, "kind"),
            _require_str(request, "value"),
            replace=bool(request.get("replace")),
            observed=bool(request.get("observed")),
            credentials=credentials,
            dry_run=bool(request.get("dry_run")),
        )

    async def _op_secret(self, request: Dict[str, Any]) -> Any:
        """An outbound-ssh secret *reference* (``callhome-listener secret``, the enroll module's
        ``outbound_ssh_secret``): ``action`` set/unset (a DEVICE-ID's own), group/ungroup
        (DEVICE-ID patterns), list. Written by the listener to its trust store, the shared one on
        PostgreSQL (a file edit there would be read by no node); ``dry_run`` writes nothing."""
        action = _require_str(request, "action")
        if action not in ("set", "unset", "group", "ungroup", "list"):
            raise ControlError("'action' must be set, unset, group, ungroup or list, not %r" % (action,))
        if action == "list":  # the references in the store the listener uses (never values)
            return await self.listener.outbound_ssh_secret("list", "", None)
        reference = _require_str(request, "reference") if action in ("set", "group") else None
        device_ids = request.get("device_ids") or []
        if action == "group" and (
            not isinstance(device_ids, list) or not device_ids or not all(isinstance(d, str) for d in device_ids)
        ):
            raise ControlError("'device_ids' must be a non-empty list of DEVICE-ID patterns")
        return await self.listener.outbound_ssh_secret(
            action,
            _require_str(request, "name"),
            reference,
            device_ids=device_ids,
            allow_rotation=bool(request.get("allow_rotation")),
            dry_run=bool(request.get("dry_run")),  # the enroll module's check mode
        )

    async def _op_wait(self, request: Dict[str, Any]) -> Any:
        device = _require_str(request, "device")
        # Any transport: a RESTCONF device is connected too (it has no NETCONF session to lease).
        await self.listener.wait_connected(device, _number(request, "wait", 0.0))
        rec = self.listener.registry.get(device)
        return self._device_view(device, rec.to_dict() if rec else {"name": device})

    async def _op_endpoint(self, request: Dict[str, Any]) -> Any:
        """Ansible's persistent-connection endpoint for a device (endpoints.ansible_rpc)."""
        device = _require_str(request, "device")
        paths = request.get("collections_paths") or []
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ControlError("'collections_paths' must be a list of strings")
        network_os = request.get("network_os") or "auto"
        client = request.get("client") or ""
        if not isinstance(network_os, str) or not isinstance(client, str):
            raise ControlError("'network_os' and 'client' must be strings")
        command_timeout = _number(request, "command_timeout", 30.0)
        # api: netconf (the NETCONF session, netconf sub-plugins) or restconf (the RESTCONF
        # connection, httpapi sub-plugins); root_path: an explicit RESTCONF root, else discovered
        api = request.get("api") or "netconf"
        root_path = request.get("root_path") or ""
        if api not in ("netconf", "restconf"):
            raise ControlError("'api' must be 'netconf' or 'restconf', not %r" % (api,))
        if not isinstance(root_path, str) or (root_path and not root_path.startswith("/")):
            raise ControlError("'root_path' must be an absolute path such as /restconf")
        return await self.listener.endpoint(
            device,
            wait=_number(request, "wait", 0.0),
            network_os=network_os,
            command_timeout=command_timeout or 30.0,
            collections_paths=paths,
            client=client,
            api=api,
            root_path=root_path,
        )

    async def _op_reload(self, request: Dict[str, Any]) -> Any:
        return {"reloaded": self.listener.reload_trust(), "enrolled": len(self.listener.enrolled_devices())}

    async def _op_shutdown(self, request: Dict[str, Any]) -> Any:
        asyncio.get_running_loop().call_later(0.05, self.listener.request_stop)
        return {"stopping": True}


async def _read_line(reader: asyncio.StreamReader, limit: int) -> bytes:
    """One request line of at most ``limit`` bytes (the reader's own limit), or ControlError."""
    try:
        return await reader.readline()
    except (ValueError, asyncio.LimitOverrunError):
        raise RequestTooLargeError(
            "request line exceeds %d bytes; a request is one JSON object on one line (bulk data such as an "
            "rpc body follows the line)" % limit
        ) from None


def _parse(line: bytes) -> Tuple[str, Dict[str, Any]]:
    try:
        request = json.loads(line)
        return str(request.pop("op")), request
    except (ValueError, KeyError, AttributeError, TypeError):
        raise ControlError("request must be one JSON object line with an 'op' field") from None


async def _reject(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, exc: CallHomeError) -> None:
    """Answer a stranger's bad request, then close. What it still sends is read and dropped for a
    moment (inside the caller's auth_timeout): closing with unread bytes resets the connection,
    and the reset can destroy the answer before the client reads it."""
    with contextlib.suppress(ConnectionError, OSError):
        await _answer(writer, {"ok": False, "error": exc.to_dict()})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_REJECT_GRACE):
                while await reader.read(65536):
                    pass
    writer.transport.abort()


async def _answer(writer: asyncio.StreamWriter, payload: Dict[str, Any]) -> None:
    writer.write(json.dumps(payload).encode("utf-8") + b"\n")
    await writer.drain()


def _require_str(request: Dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise ControlError("request needs a non-empty string %r" % key)
    return value


def _number(request: Dict[str, Any], key: str, default: float) -> float:
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ControlError("%r must be a non-negative number" % key)
    return float(value)


def _read_token(token_file: str, token_env: str) -> bytes:
    if token_file:
        try:
            with open(token_file, "rb") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise ConfigError("cannot read control token file %s: %s" % (token_file, exc.strerror)) from None
    else:
        token = os.environ.get(token_env, "").encode("utf-8")
    if len(token) < 16:
        raise ConfigError("the control token must be at least 16 characters")
    return token

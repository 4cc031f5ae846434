# SPDX-License-Identifier: GPL-3.0-or-later
"""The composition root: builds the parts, wires them together, owns the lifecycle.

Nothing imports this module. :class:`CallHomeListener` opens the state (registry, trust store,
policy), builds one object per responsibility and hands each the others it needs:

- ``devices`` (:class:`~netconf_callhome.sessions.devices.LiveDevices`): who holds a session now,
  on which transport; their last addresses and certificate identities;
- ``gate`` (:class:`~netconf_callhome.sessions.trust_gate.TrustGate`): the transports' trust
  decisions (host key, certificate, outbound-ssh secret); refusals recorded as pending;
- ``recorder`` (:class:`~netconf_callhome.sessions.recorder.SessionRecorder`): the transports'
  outcomes; every one becomes one registry update, one log line and metrics;
- ``waiters`` (:class:`~netconf_callhome.sessions.waiters.DeviceWaiters`): waiting for a device;
- ``trust`` (:class:`~netconf_callhome.sessions.trust_edits.TrustEdits`): trust operations and
  every reload's effect on live sessions;
- ``ownership`` (:class:`~netconf_callhome.sessions.owned.DeviceOwnership`): scale-out claims;
- the transports, which reach the parts only through :mod:`netconf_callhome.protocol.events`
  (``_TransportEvents`` below routes decisions to the gate and outcomes to the recorder;
  admission is :class:`~netconf_callhome.policy.admission.Admission`);
- the control server, which reaches them only through
  :class:`~netconf_callhome.control.facade.ListenerFacade` (its ``ControlledListener``).

What is left here is the lifecycle: the listening sockets and accept loops, the tasks the
listener owns, housekeeping (trust reload, registry flush, idle exit), signals and stop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Set, Tuple

from netconf_callhome.config import PORT_RESTCONF, PORT_SSH, PORT_TLS, ListenerConfig, parse_bind
from netconf_callhome.control.cluster import ClusterClient, ClusterServer
from netconf_callhome.control.facade import ListenerFacade
from netconf_callhome.control.forward import Forwarder
from netconf_callhome.control.instance import EMBEDDED, SERVICE, InstanceLock
from netconf_callhome.control.server import ControlServer
from netconf_callhome.endpoints.ansible_rpc import AnsibleEndpoints
from netconf_callhome.endpoints.restconf_rpc import RestconfEndpoints
from netconf_callhome.errors import CallHomeError, ConfigError
from netconf_callhome.metrics import Metrics
from netconf_callhome.netutil import format_binds, format_peer, make_listening_socket
from netconf_callhome.policy.admission import Admission
from netconf_callhome.policy.trust_store import TrustStore
from netconf_callhome.policy.verdicts import TrustPolicy
from netconf_callhome.policy.zero_touch import EnrollmentWriter
from netconf_callhome.protocol.events import VerifiedDevice
from netconf_callhome.protocol.first_bytes import SinglePortTransport
from netconf_callhome.protocol.outbound_ssh import OutboundSSHTransport
from netconf_callhome.protocol.proxy_header import ProxyProtocolGate
from netconf_callhome.protocol.restconf import RestconfTransport
from netconf_callhome.protocol.ssh import SSHTransport
from netconf_callhome.protocol.tls import TLSTransport
from netconf_callhome.sessions.devices import LiveDevices
from netconf_callhome.sessions.owned import DeviceOwnership
from netconf_callhome.sessions.recorder import SessionRecorder
from netconf_callhome.sessions.restconf_sessions import restconf_limits
from netconf_callhome.sessions.trust_edits import TrustEdits
from netconf_callhome.sessions.trust_gate import TrustGate
from netconf_callhome.sessions.waiters import DeviceWaiters
from netconf_callhome.state.cluster_nodes import HEARTBEAT_INTERVAL, NodeDirectory
from netconf_callhome.state.pg_listen import ChannelListener
from netconf_callhome.state.postgres import PostgresStore
from netconf_callhome.state.registry import FlushRetry, Registry, RegistryWriteError
from netconf_callhome.state.stores import open_store, open_trust_store

log = logging.getLogger("netconf_callhome.listener")

# Longest pause between registry flush attempts while the database refuses writes (seconds).
REGISTRY_RETRY_MAX = 30.0

ConnectionHandler = Callable[[socket.socket, Tuple[Any, ...]], Awaitable[None]]


class CallHomeListener:
    """The service. ``await start()``, then ``await serve_forever()`` or ``await stop()``."""

    def __init__(self, config: ListenerConfig) -> None:
        self.config = config
        limits = restconf_limits(config.restconf)  # a bad restconf: section fails before any file is opened
        os.makedirs(config.home, mode=0o700, exist_ok=True)
        node = config.node_name or socket.gethostname()
        # state_url picks SQLite (default) or a PostgreSQL database shared by several nodes;
        # opening it connects and migrates the schema before anything is served. With PostgreSQL
        # the trust store is the database's too (every node's changes in force on every node).
        self.trust_store: TrustStore = open_trust_store(config.state_dsn(), trust_file=config.trust_store, node=node)
        self.policy = TrustPolicy(self.trust_store, config.tls, config.credentials)
        store = open_store(config.state_dsn(), sqlite_default=config.registry, home=config.home, node=node)
        self.registry = Registry(store)
        self.devices = LiveDevices()  # who holds a session now, on which transport
        # Scale-out: exactly one node owns a device's session (a no-op with SQLite state); its
        # claims' outcomes come back on the store's thread and are handed to this loop (start).
        shared = getattr(self.trust_store, "listener", None)
        self.ownership = DeviceOwnership(
            store, self.registry, self.devices, listener=shared if isinstance(shared, ChannelListener) else None
        )
        self.registry.load()
        self.metrics = Metrics(self.registry.counts)
        self.admission = Admission(
            max_handshakes=config.max_handshakes,
            block_failures=config.block_failures,
            block_window=config.block_window,
            block_seconds=config.block_seconds,
            admit_rate=config.block_admit_rate,
            on_limit=lambda reason: self.metrics.failures.labels(transport="any", reason=reason).inc(),
        )
        self._tasks: Set["asyncio.Future[Any]"] = set()
        self._stopping = asyncio.Event()
        self.last_activity = time.monotonic()

        # The parts the transports and the control server reach, each with one job.
        self.waiters = DeviceWaiters(self.devices, self.registry, lambda: self.policy.index.devices)
        self.trust = TrustEdits(self.trust_store, self.policy, self.registry, self.devices)
        self.enrollments = EnrollmentWriter(self.trust_store)  # zero-touch (outbound-ssh secrets)
        self.gate = TrustGate(
            self.policy,
            registry=self.registry,
            devices=self.devices,
            trust=self.trust,
            enrollments=self.enrollments,
            spawn=self.spawn,
        )
        self.recorder = SessionRecorder(
            config,
            registry=self.registry,
            metrics=self.metrics,
            admission=self.admission,
            devices=self.devices,
            waiters=self.waiters,
            ownership=self.ownership,
            spawn=self.spawn,
        )

        # The transports: they ask admission, and report to the gate (decisions) and the
        # recorder (outcomes) through the narrow events of protocol.events.
        events = _TransportEvents(self.gate, self.recorder, self.spawn)
        # PROXY headers from the load balancers in proxy_protocol_from, on every kind of port
        # (docs/scale-out.md): the device's address is the peer from the accept on.
        self.proxy = ProxyProtocolGate(
            config.proxy_protocol_from,
            timeout=config.proxy_protocol_timeout,
            admission=self.admission,
            events=events,
            on_refused=lambda reason: self.metrics.failures.labels(transport="proxy", reason=reason).inc(),
        )
        self.ssh = SSHTransport(config, admission=self.admission, events=events)
        self.outbound_ssh = OutboundSSHTransport(self.ssh, handshake_timeout=config.handshake_timeout, events=events)
        self.tls = TLSTransport(config, admission=self.admission, events=events) if config.tls_enabled else None
        self.restconf = (
            RestconfTransport(
                config, admission=self.admission, events=_RestconfEvents(self.gate, self.recorder), limits=limits
            )
            if config.restconf_binds or (config.callhome_binds and config.tls_enabled)
            else None
        )
        # The single call-home port (callhome_binds): detection, then the transports above.
        self.callhome = (
            SinglePortTransport(
                config,
                admission=self.admission,
                events=events,
                outbound_ssh=self.outbound_ssh,
                tls=self.tls,
                restconf=self.restconf,
            )
            if config.callhome_binds
            else None
        )
        self.bound: Dict[str, List[Tuple[str, int]]] = {"ssh": [], "tls": [], "outbound_ssh": [], "restconf": [], "callhome": []}
        self._acceptors: List[Any] = []
        self._listen_socks: List[socket.socket] = []

        # The connection plugins' endpoints and the control server (through ListenerFacade).
        self.instance = InstanceLock(config.home)
        self.endpoints = AnsibleEndpoints(
            config.home, touch=self.touch, lease_ended=self.recorder.lease_ended, collections_paths=config.collections_paths
        )
        # RESTCONF devices' httpapi endpoints (netconf.callhome.httpapi): the same socket directory
        self.restconf_endpoints = RestconfEndpoints(
            config.home, self.devices.restconf, touch=self.touch, collections_paths=config.collections_paths
        )
        self.control = ControlServer(
            config,
            ListenerFacade(
                registry=self.registry,
                metrics=self.metrics,
                policy=self.policy,
                devices=self.devices,
                bound=self.bound,
                waiters=self.waiters,
                trust=self.trust,
                recorder=self.recorder,
                endpoints=self.endpoints,
                restconf_endpoints=self.restconf_endpoints,
                touch=self.touch,
                request_stop=self.request_stop,
            ),
        )
        # Scale-out: every device of the shared database on any node, and requests for a device
        # another node holds forwarded there over the mutual-TLS cluster channel (docs/scale-out.md).
        self.cluster: Optional[ClusterServer] = None
        if isinstance(store, PostgresStore):
            self.control.directory = NodeDirectory(store)
            if config.cluster.bind:
                # holds: a peer routing by a remembered owner asks whether the device is still here
                self.cluster = ClusterServer(config.cluster, self.control.serve_forwarded, holds=self.devices.connected)
                self.control.forwarder = Forwarder(
                    self.control.directory,
                    ClusterClient(config.cluster),
                    held_here=self.devices.connected,
                    rpc_dir=os.path.join(config.home, "rpc"),
                )

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        # One listener per home: checked before a port is bound or the control socket replaced,
        # so a second one names the first (ListenerRunningError) instead of failing on a port.
        self.instance.acquire(mode=EMBEDDED if self.config.idle_exit else SERVICE, control_socket=self.config.control_socket)
        loop = asyncio.get_running_loop()
        self.ownership.bind(loop)
        subscribe = getattr(self.trust_store, "subscribe", None)
        if subscribe is not None:
            # The shared trust store changed (on any node): reload now, not at the next tick.
            subscribe(lambda revision: loop.call_soon_threadsafe(self.trust.reload))
        bind = ""
        try:
            for bind in self.config.ssh_binds:
                if self.proxy.enabled:  # our accept loop: the PROXY header comes before SSH
                    self._serve(self._listen("ssh", bind, PORT_SSH), self._ssh_socket, "ssh")
                else:
                    self._acceptors.append(await self.ssh.listen(self._listen("ssh", bind, PORT_SSH)))
            for bind in self.config.outbound_ssh_binds:
                self._serve(self._listen("outbound_ssh", bind, PORT_SSH), self.outbound_ssh.handle, "outbound_ssh")
            if self.tls is not None:
                for bind in self.config.tls_binds:
                    self._serve(self._listen("tls", bind, PORT_TLS), self.tls.handle, "tls")
            if self.restconf is not None:
                for bind in self.config.restconf_binds:
                    self._serve(self._listen("restconf", bind, PORT_RESTCONF), self.restconf.handle, "restconf")
            if self.callhome is not None:
                for bind in self.config.callhome_binds:
                    self._serve(self._listen("callhome", bind, 0), self.callhome.handle, "callhome")
        except OSError as exc:
            await self.stop()
            raise ConfigError(
                "cannot listen on %s: %s%s"
                % (
                    bind,
                    exc.strerror or exc,
                    "; the process holding it is not a listener of %s" % self.config.home
                    if exc.errno == errno.EADDRINUSE
                    else "",
                )
            ) from None
        await self.control.start()
        if self.cluster is not None and self.control.directory is not None:
            self.control.cluster_address = await self.cluster.start()
            await self.control.directory.register(self.control.cluster_address)
            self.spawn(self._cluster_heartbeat())
        self.instance.update(
            {kind: [format_peer(b) for b in bound] for kind, bound in self.bound.items()}
            | {"control_tcp": [self.control.tcp_address] if self.control.tcp_address else []}
        )
        self.spawn(self._housekeeping())
        if self.config.metrics_bind:
            self.metrics.serve(self.config.metrics_bind)
        log.info(
            "event=listener.started ssh=%s tls=%s restconf=%s callhome=%s control=%s trust_store=%s devices_enrolled=%d",
            format_binds(self.bound["ssh"]),
            format_binds(self.bound["tls"]) or "off",
            format_binds(self.bound["restconf"]) or "off",
            format_binds(self.bound["callhome"]) or "off",
            self.config.control_socket,
            self.trust_store.path,  # the shared store's redacted URL on PostgreSQL
            len(self.policy.index.devices),
        )

    def _listen(self, kind: str, bind: str, default_port: int) -> socket.socket:
        host, port = parse_bind(bind, default_port)
        sock = make_listening_socket(host, port)
        self._listen_socks.append(sock)
        self.bound[kind].append(sock.getsockname()[:2])
        return sock

    def _serve(self, lsock: socket.socket, handler: ConnectionHandler, kind: str) -> None:
        self.spawn(self._accept_loop(lsock, handler, kind))

    async def _accept_loop(self, lsock: socket.socket, handler: ConnectionHandler, kind: str) -> None:
        """Accept loop for the transports asyncssh does not accept for us (TLS, outbound-ssh; SSH
        too with proxy_protocol_from)."""
        loop = asyncio.get_running_loop()
        while True:
            sock, addr = await loop.sock_accept(lsock)
            if self.proxy.enabled:
                # The PROXY step decides the peer (and checks admission on the device's address)
                # in its own task: a slow header never holds up the accept loop.
                self.spawn(self.proxy.accept(sock, addr, handler, kind))
                continue
            if self.admission.is_blocked(str(addr[0])):
                sock.close()
                continue
            self.spawn(handler(sock, addr))

    async def _ssh_socket(self, sock: socket.socket, addr: Tuple[Any, ...]) -> None:
        """The SSH port's connection once the PROXY step is done: the same client asyncssh's
        acceptor builds (it checks admission on the peer, the device's address)."""
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: self.ssh.connection(loop, ""), sock=sock)
        except OSError:
            sock.close()  # reset before the handshake began: nothing to classify

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.trust.reload)
        await self._stopping.wait()
        await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        for acceptor in self._acceptors:
            acceptor.close()
        for sock in self._listen_socks:
            sock.close()
        await self.control.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.control.forwarder is not None:
            self.control.forwarder.close()
        await self.endpoints.close_all()
        await self.restconf_endpoints.close_all()
        self.devices.close_all("listener stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.enrollments.close()
        self.ownership.close()
        close_trust = getattr(self.trust_store, "close", None)
        if close_trust is not None:
            await asyncio.to_thread(close_trust)
        # The last flush in a thread, like every flush: a shared database (state_url) may take
        # up to its command timeout, and the loop still has connections to close meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self.registry.close)
        self.instance.release()
        log.info("event=listener.stopped")

    async def _cluster_heartbeat(self) -> None:
        """This node's row in ``nodes`` stays fresh (errors name a node silent for long)."""
        assert self.control.directory is not None
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self.control.directory.heartbeat()
            except CallHomeError as exc:
                log.debug("event=cluster.heartbeat_failed error=%r", exc.message)

    def spawn(self, awaitable: Awaitable[Any]) -> None:
        """Run a task the listener owns: kept referenced, cancelled on stop."""
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def touch(self) -> None:
        """Control activity: postpones the idle exit of an embedded listener."""
        self.last_activity = time.monotonic()

    async def _housekeeping(self) -> None:
        """Every ``flush_interval``: trust-store reload, registry flush, idle exit. None of them
        may stop the others: a registry the database refuses to write (another process holds
        its lock) is retried with backoff in the background while reloads and idle exit go on."""
        loop = asyncio.get_running_loop()
        retry = FlushRetry(self.registry.flush_interval, REGISTRY_RETRY_MAX)
        flushing: "Optional[asyncio.Future[None]]" = None
        while True:
            await asyncio.sleep(self.registry.flush_interval)
            try:
                self.trust.reload()
            except Exception:  # a bug must not end reloads for good; logged with its traceback
                log.exception("event=trust.reload_error")
            try:
                self.admission.sweep()  # expired address limits are logged (peer.unblocked) without new traffic
            except Exception:  # as above: logged, and the next tick tries again
                log.exception("event=admission.sweep_error")
            now = time.monotonic()
            if flushing is not None and flushing.done():
                error = flushing.exception()
                flushing = None
                if error is None:
                    retry.succeeded(now)
                else:
                    message = error.message if isinstance(error, RegistryWriteError) else repr(error)
                    retry.failed(now, message, self.registry.unsaved_count())
            if flushing is None and self.registry.has_unsaved() and retry.due(now):
                # Not awaited: a write waiting for a locked database must not hold up the loop.
                flushing = loop.run_in_executor(None, self.registry.flush)
            if (
                self.config.idle_exit
                and not self.control.active_leases
                and not self.endpoints.active
                and not self.restconf_endpoints.active
                and time.monotonic() - self.last_activity > self.config.idle_exit
            ):
                log.info("event=listener.idle_exit idle_seconds=%.0f", self.config.idle_exit)
                self._stopping.set()


class _TransportEvents:
    """The SSH, TLS, outbound-ssh, PROXY and single-port transports' events: decisions to the
    trust gate, outcomes to the recorder, tasks to the listener."""

    def __init__(self, gate: TrustGate, recorder: SessionRecorder, spawn: Callable[[Awaitable[Any]], None]) -> None:
        self.ssh_host_key = gate.ssh_host_key
        self.outbound_ssh_host_key = gate.outbound_ssh_host_key
        self.tls_certificate = gate.tls_certificate
        self.handshake_failed = recorder.handshake_failed
        self.session_ready = recorder.session_ready
        self.spawn = spawn


class _RestconfEvents:
    """The RESTCONF transport's events: the certificate verdict of NETCONF over TLS, recorded
    under transport ``restconf`` (pending entries, address hints)."""

    def __init__(self, gate: TrustGate, recorder: SessionRecorder) -> None:
        self._gate = gate
        self.restconf_credentials = gate.restconf_credentials
        self.handshake_failed = recorder.handshake_failed
        self.restconf_ready = recorder.restconf_ready

    def tls_certificate(self, chain: Sequence[bytes], *, peer: str) -> Optional[VerifiedDevice]:
        return self._gate.tls_certificate(chain, peer=peer, transport="restconf")

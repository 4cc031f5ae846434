# SPDX-License-Identifier: GPL-3.0-or-later
"""The composition root: builds the layers, wires their events, owns the lifecycle.

Nothing imports this module. It owns the listening sockets, the held sessions (one per device:
a device that calls again replaces its older connection), the registry, the trust policy and
the control server. The transports reach it only through the narrow interfaces of
:mod:`netconf_callhome.protocol.events` (it implements ``TransportEvents``; admission is
:class:`~netconf_callhome.policy.admission.Admission`), and the control server only through
:class:`~netconf_callhome.control.server.ControlledListener`. Every transport outcome becomes
one registry update, one log line and metrics, here.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import signal
import socket
import ssl
import time
from typing import Any, Awaitable, Callable, Collection, Dict, List, Optional, Sequence, Set, Tuple, Type, TypeVar

import asyncssh

from netconf_callhome.config import PORT_RESTCONF, PORT_SSH, PORT_TLS, ListenerConfig, parse_bind
from netconf_callhome.control.instance import EMBEDDED, SERVICE, InstanceLock
from netconf_callhome.control.cluster import ClusterClient, ClusterServer
from netconf_callhome.control.forward import Forwarder
from netconf_callhome.control.server import ControlServer
from netconf_callhome.endpoints.ansible_rpc import AnsibleEndpoints
from netconf_callhome.endpoints.restconf_rpc import RestconfEndpoints
from netconf_callhome.fingerprints import cert_fingerprint_spellings
from netconf_callhome.errors import (
    AuthFailedError,
    CallHomeError,
    ConfigError,
    DeviceNotFoundError,
    DeviceNotReadyError,
    WaitTimeoutError,
)
from netconf_callhome.metrics import Metrics
from netconf_callhome.netutil import format_binds, format_peer, make_listening_socket, peer_ip
from netconf_callhome.policy.admission import Admission
from netconf_callhome.policy import trust_ops
from netconf_callhome.policy.trust_store import TrustStore
from netconf_callhome.policy.verdicts import ACCEPTED, MISMATCH, TrustPolicy, Verdict, refusal
from netconf_callhome.policy.zero_touch import EnrollmentWriter
from netconf_callhome.protocol.events import HandshakeFailure, SSHLogin, VerifiedDevice
from netconf_callhome.protocol.first_bytes import SinglePortTransport
from netconf_callhome.protocol.proxy_header import ProxyProtocolGate
from netconf_callhome.protocol.outbound_ssh import GatedLogin, HostKeyRefusal, OutboundSSHTransport, Preamble
from netconf_callhome.protocol.restconf import KEEPALIVE_MISSED, BasicCredentials, RestconfConnection, RestconfTransport
from netconf_callhome.protocol.session import AUTO, HeldSession
from netconf_callhome.protocol.ssh import PrivateKeyCache, SSHTransport
from netconf_callhome.protocol.tls import TLSTransport
from netconf_callhome.sessions.mux import Multiplexer
from netconf_callhome.sessions.restconf_sessions import RestconfSessions, module_capabilities, restconf_limits
from netconf_callhome.state.registry import (
    AUTH_FAILED,
    CONNECTED,
    DISCONNECTED,
    ERROR,
    KEY_MISMATCH,
    FlushRetry,
    PendingKey,
    Registry,
    RegistryWriteError,
)
from netconf_callhome.state.ownership import Claim, Ownership
from netconf_callhome.state.pg_listen import ChannelListener
from netconf_callhome.state.postgres import PostgresStore
from netconf_callhome.state.cluster_nodes import HEARTBEAT_INTERVAL, NodeDirectory
from netconf_callhome.state.stores import open_store, open_trust_store

log = logging.getLogger("netconf_callhome.listener")

# Longest pause between registry flush attempts while the database refuses writes (seconds).
REGISTRY_RETRY_MAX = 30.0
# Certificate identities of accepted TLS handshakes, by fingerprint (a cache bounded in size: an
# identity-enrolled session is re-checked against them on every trust change).
TLS_IDENTITY_CACHE = 4096

ConnectionHandler = Callable[[socket.socket, Tuple[Any, ...]], Awaitable[None]]
_T = TypeVar("_T")


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
        # Scale-out: exactly one node owns a device's session (state.ownership); its claims'
        # outcomes come back on the store's thread and are handed to this loop (see start).
        self.ownership: Optional[Ownership] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        if isinstance(store, PostgresStore):
            # One LISTEN connection per node: the fence hears its channel on the shared trust
            # store's (each listening connection costs the database a transaction per notifying
            # commit of any node: docs/performance.md, run X4).
            shared = getattr(self.trust_store, "listener", None)
            self.ownership = Ownership(
                store,
                on_claimed=self._claimed_threadsafe,
                on_moved=self._moved_threadsafe,
                listener=shared if isinstance(shared, ChannelListener) else None,
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
        # PROXY headers from the load balancers in proxy_protocol_from, on every kind of port
        # (docs/scale-out.md): the device's address is the peer from the accept on.
        self.proxy = ProxyProtocolGate(
            config.proxy_protocol_from,
            timeout=config.proxy_protocol_timeout,
            admission=self.admission,
            events=self,
            on_refused=lambda reason: self.metrics.failures.labels(transport="proxy", reason=reason).inc(),
        )
        self._keys = PrivateKeyCache()
        self.ssh = SSHTransport(config, admission=self.admission, events=self)
        self.outbound_ssh = OutboundSSHTransport(self.ssh, handshake_timeout=config.handshake_timeout, events=self)
        self.enrollments = EnrollmentWriter(self.trust_store)  # zero-touch (outbound-ssh secrets)
        self.tls = TLSTransport(config, admission=self.admission, events=self) if config.tls_enabled else None
        self.restconf = (
            RestconfTransport(config, admission=self.admission, events=_RestconfEvents(self), limits=limits)
            if config.restconf_binds or (config.callhome_binds and config.tls_enabled)
            else None
        )
        # The single call-home port (callhome_binds): detection, then the transports above.
        self.callhome = (
            SinglePortTransport(
                config,
                admission=self.admission,
                events=self,
                outbound_ssh=self.outbound_ssh,
                tls=self.tls,
                restconf=self.restconf,
            )
            if config.callhome_binds
            else None
        )
        self.sessions: Dict[str, HeldSession] = {}
        self.restconf_sessions = RestconfSessions()
        self.bound: Dict[str, List[Tuple[str, int]]] = {"ssh": [], "tls": [], "outbound_ssh": [], "restconf": [], "callhome": []}
        self._acceptors: List[Any] = []
        self._listen_socks: List[socket.socket] = []
        self._tasks: Set["asyncio.Future[Any]"] = set()
        self._waiters: Dict[str, List["asyncio.Future[None]"]] = {}
        self._hints: Dict[Tuple[str, str], str] = {}
        # The certificate identities a TLS session was accepted under, kept to tell after a
        # trust change whether it is still trusted (an identity-enrolled device has no pinned
        # fingerprint to look up).
        self._tls_identities: "collections.OrderedDict[str, List[str]]" = collections.OrderedDict()
        self._session_identities: Dict[str, List[str]] = {}
        self._stopping = asyncio.Event()
        self.last_activity = time.monotonic()
        self.control = ControlServer(config, self)
        # Scale-out: every device of the shared database on any node, and requests for a device
        # another node holds forwarded there over the mutual-TLS cluster channel (docs/scale-out.md).
        self.cluster: Optional[ClusterServer] = None
        if isinstance(store, PostgresStore):
            self.control.directory = NodeDirectory(store)
            if config.cluster.bind:
                # holds: a peer routing by a remembered owner asks whether the device is still here
                self.cluster = ClusterServer(config.cluster, self.control.serve_forwarded, holds=self._connected)
                self.control.forwarder = Forwarder(
                    self.control.directory,
                    ClusterClient(config.cluster),
                    held_here=self._connected,
                    rpc_dir=os.path.join(config.home, "rpc"),
                )
        self.instance = InstanceLock(config.home)
        self.endpoints = AnsibleEndpoints(
            config.home, touch=self.touch, lease_ended=self.lease_ended, collections_paths=config.collections_paths
        )
        # RESTCONF devices' httpapi endpoints (netconf.callhome.httpapi): the same socket directory
        self.restconf_endpoints = RestconfEndpoints(
            config.home, self.restconf_sessions, touch=self.touch, collections_paths=config.collections_paths
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        # One listener per home: checked before a port is bound or the control socket replaced,
        # so a second one names the first (ListenerRunningError) instead of failing on a port.
        self.instance.acquire(mode=EMBEDDED if self.config.idle_exit else SERVICE, control_socket=self.config.control_socket)
        self._loop = asyncio.get_running_loop()
        subscribe = getattr(self.trust_store, "subscribe", None)
        if subscribe is not None:
            # The shared trust store changed (on any node): reload now, not at the next tick.
            loop = self._loop
            subscribe(lambda revision: loop.call_soon_threadsafe(self.reload_trust))
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
        loop.add_signal_handler(signal.SIGHUP, self.reload_trust)
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
        for held in list(self.sessions.values()):
            held.close("listener stopping")
        self.restconf_sessions.close_all("listener stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.enrollments.close()
        if self.ownership is not None:
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
                self.reload_trust()
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

    # -- TransportEvents: trust decisions ------------------------------------------------------

    def ssh_host_key(self, key: asyncssh.SSHKey, *, peer: str, device_id: str) -> Optional[SSHLogin]:
        fingerprint = key.get_fingerprint("sha256")
        verdict = self.policy.ssh_verdict(fingerprint, hint=self.hint_for(peer_ip(peer), "ssh"), device_id=device_id)
        if not verdict.accepted:
            public_line = key.export_public_key("openssh").decode("ascii").strip()
            self._refused(verdict, transport="ssh", peer=peer, key_type=key.get_algorithm(), public_key=public_line)
            return None
        return self._ssh_login(verdict)

    def outbound_ssh_host_key(
        self, key: asyncssh.SSHKey, *, peer: str, preamble: Preamble
    ) -> "SSHLogin | GatedLogin | HostKeyRefusal | None":
        """OutboundSSHEvents: a Junos device's proved host key, judged with its preamble. No secret
        for its DEVICE-ID: as on 4334. A secret: the HMAC must verify for the key the handshake
        proved (policy.outbound_ssh_check); then an enrolled key is accepted, and an unknown one
        is enrolled under the DEVICE-ID without an operator (zero-touch), unless that device
        already has another key and its secret does not allow rotation."""
        fingerprint = key.get_fingerprint("sha256")
        check = self.policy.outbound_ssh_check(preamble, fingerprint)
        if check.binding is None and not check.refused:
            return self.ssh_host_key(key, peer=peer, device_id=preamble.device_id)
        public_line = key.export_public_key("openssh").decode("ascii").strip()
        if check.refused:
            # Recorded with the proved key, so an operator who decides the device is genuine (its
            # secret was mistyped) can approve it; the DEVICE-ID stays a claim (claim_source).
            pending = self.registry.record_pending(
                PendingKey(
                    fingerprint=fingerprint,
                    key_type=key.get_algorithm(),
                    transport="ssh",
                    public_key=public_line,
                    peer=peer,
                    reason=check.refused,
                    claimed_device=preamble.device_id,
                    claim_source="device-id" if preamble.device_id else "",
                )
            )
            log_fn = log.error if check.refused == "secret-unavailable" else log.warning
            log_fn(
                "event=outbound_ssh.refused device_id=%s peer=%s fingerprint=%s reason=%s count=%d msg=%r",
                preamble.device_id,
                peer,
                fingerprint,
                check.refused,
                pending.count,
                check.message,
            )
            return HostKeyRefusal(check.refused, check.message)
        assert check.binding is not None
        verdict = self.policy.ssh_verdict(fingerprint, device_id=preamble.device_id)
        if verdict.accepted:
            return self._ssh_login(verdict)
        device = preamble.device_id
        rotate = verdict.outcome == MISMATCH
        if rotate and not check.binding.allow_rotation:
            # The secret proves the caller knows it, not that it is the device whose key is pinned:
            # a group secret sits on every device of the group. Re-keying is the operator's call.
            self._refused(verdict, transport="ssh", peer=peer, key_type=key.get_algorithm(), public_key=public_line)
            message = (
                "HMAC verified (secret of %s), but %s has another host key enrolled and its secret does not "
                "allow rotation; approve the new key (callhome-listener approve %s --device %s --replace) if "
                "the device was really re-keyed" % (check.binding.source, device, fingerprint, device)
            )
            log.warning(
                "event=outbound_ssh.rotation_refused device=%s peer=%s fingerprint=%s msg=%r",
                device,
                peer,
                fingerprint,
                message,
            )
            return HostKeyRefusal("host-key", message)
        # Zero-touch: the key goes to the trust store off the loop, batched with other devices'
        # (policy.zero_touch); the SSH login goes on meanwhile, the session waits for the write.
        gate: "asyncio.Future[str]" = asyncio.get_running_loop().create_future()
        self.spawn(
            self._zero_touch(gate, verdict, public_line, key.get_algorithm(), peer, rotate, check.binding.source)
        )
        return GatedLogin(self._ssh_login(Verdict(ACCEPTED, device, fingerprint)), gate)

    async def _zero_touch(
        self,
        gate: "asyncio.Future[str]",
        verdict: Verdict,
        public_line: str,
        key_type: str,
        peer: str,
        rotate: bool,
        source: str,
    ) -> None:
        """Write a verified outbound-ssh device's key, then open its session's gate."""
        device, fingerprint = verdict.device, verdict.fingerprint
        try:
            outcome = await self.enrollments.enroll(device, public_line, replace=rotate)
        except BaseException:
            if not gate.done():
                gate.set_result("the listener is stopping")
            raise
        if isinstance(outcome, CallHomeError):
            self._refused(verdict, transport="ssh", peer=peer, key_type=key_type, public_key=public_line)
            log.error(
                "event=outbound_ssh.enroll_failed device=%s peer=%s fingerprint=%s error=%r",
                device,
                peer,
                fingerprint,
                outcome.message,
            )
            gate.set_result("zero-touch enrollment of %s failed: %s" % (device, outcome.message))
            return
        self.registry.drop_pending(fingerprint)
        self._trust_changed(device, "key replaced")  # one real reload per written batch (same file after)
        log.info(
            "event=device.enrolled device=%s fingerprint=%s peer=%s via=outbound-ssh-secret secret=%s replaced=%s",
            device,
            fingerprint,
            peer,
            source,
            ",".join(outcome.replaced) or "-",
        )
        trusted = self.policy.still_trusts(device, "ssh", fingerprint)
        gate.set_result("" if trusted else "%s was enrolled for %s but is not trusted after the reload" % (fingerprint, device))

    def _ssh_login(self, verdict: Verdict) -> SSHLogin:
        """The login for an accepted SSH key: the device's credentials, read once per file change."""
        creds = self.policy.credentials_for(verdict.device)
        try:
            keys = self._keys.keys(creds.private_key_file)
        except ConfigError as exc:
            log.error("event=credentials.error device=%s error=%r", verdict.device, exc.message)
            keys = []
        return SSHLogin(
            device=verdict.device,
            fingerprint=verdict.fingerprint,
            username=creds.username,
            keys=keys,
            read_password=creds.read_password,
        )

    def tls_certificate(self, chain: Sequence[bytes], *, peer: str, transport: str = "tls") -> Optional[VerifiedDevice]:
        """The verdict on a device certificate, for NETCONF over TLS and (``transport``
        ``restconf``) RESTCONF alike: pending entries and address hints name the transport."""
        verdict = self.policy.tls_verdict(chain, hint=self.hint_for(peer_ip(peer), transport))
        if not verdict.accepted:
            pem = ssl.DER_cert_to_PEM_cert(chain[0])
            self._refused(verdict, transport=transport, peer=peer, key_type="x509", public_key=pem)
            return None
        self._tls_identities[verdict.fingerprint] = list(verdict.identities)
        self._tls_identities.move_to_end(verdict.fingerprint)
        while len(self._tls_identities) > TLS_IDENTITY_CACHE:
            self._tls_identities.popitem(last=False)
        return VerifiedDevice(device=verdict.device, fingerprint=verdict.fingerprint)

    def hint_for(self, address: str, transport: str) -> str:
        """The device last connected from this address, if it has no live session now."""
        device = self._hints.get((address, transport), "")
        return "" if self._connected(device) else device

    def _connected(self, device: str) -> bool:
        """Whether the device holds an open session on any transport (NETCONF or RESTCONF)."""
        held = self.sessions.get(device)
        return (held is not None and held.is_open) or device in self.restconf_sessions

    def _refused(self, verdict: Verdict, *, transport: str, peer: str, key_type: str, public_key: str) -> None:
        """An unenrolled or mismatched key: record it, never authenticate, never hand it out.

        The claim (which device it says it is) goes on the pending entry; the claimed device's
        own record changes only when that device holds no verified session (verdicts.refusal).
        """
        outcome = refusal(
            verdict, key_type=key_type, peer=peer, device_connected=bool(verdict.device) and self._connected(verdict.device)
        )
        pending = self.registry.record_pending(
            PendingKey(
                fingerprint=verdict.fingerprint,
                key_type=key_type,
                transport=transport,
                public_key=public_key,
                peer=peer,
                reason=verdict.outcome,
                claimed_device=verdict.device,
                claim_source=verdict.claim_source,
                identities=list(verdict.identities),
            )
        )
        if outcome.mark_device:
            self.registry.update(verdict.device, status=KEY_MISMATCH, last_seen=time.time(), last_error=outcome.message)
        if verdict.device:
            log.warning(
                "event=%s device=%s peer=%s transport=%s fingerprint=%s key_type=%s claim_source=%s count=%d msg=%r",
                outcome.event,
                verdict.device,
                peer,
                transport,
                verdict.fingerprint,
                key_type,
                verdict.claim_source,
                pending.count,
                outcome.message,
            )
        else:
            log.warning(
                "event=device.unknown_key peer=%s transport=%s fingerprint=%s key_type=%s count=%d",
                peer,
                transport,
                verdict.fingerprint,
                key_type,
                pending.count,
            )

    # -- TransportEvents: outcomes -------------------------------------------------------------

    def handshake_failed(self, failure: HandshakeFailure) -> None:
        if failure.device:
            status = AUTH_FAILED if isinstance(failure.error, AuthFailedError) else ERROR
            self.registry.update(
                failure.device,
                status=status,
                peer=failure.peer,
                transport=failure.transport,
                last_seen=time.time(),
                last_error=failure.message,
            )
            log.warning(
                "event=device.session_failed device=%s peer=%s transport=%s reason=%s error=%r",
                failure.device,
                failure.peer,
                failure.transport,
                failure.reason,
                failure.message,
            )
        elif failure.reason != "host-key":  # a refused key was logged when it was recorded
            log.warning(
                "event=handshake.failed peer=%s transport=%s reason=%s error=%r",
                failure.peer,
                failure.transport,
                failure.reason,
                failure.message,
            )
        self.metrics.failures.labels(transport=failure.transport, reason=failure.reason).inc()
        self.metrics.handshakes.labels(transport=failure.transport, result="failed").inc()
        self.admission.failed(failure.reason, peer_ip(failure.peer))

    def session_ready(self, held: HeldSession, *, started: float, auth: str) -> None:
        assert held.hello is not None
        now = time.time()
        rec = self.registry.get(held.device)
        # How its leases run: the operator's pin, else what an earlier connection taught (a
        # device that refused or ignored a second channel stays shared), else the transport's.
        mux = Multiplexer(held)
        held.configure(
            shared=mux,
            pinned=self.config.session_modes.get(held.device, AUTO),
            remembered=rec.session_mode if rec is not None and rec.transport == held.transport else "",
            channel_hello_timeout=self.config.channel_hello_timeout,
            on_mode_change=self._mode_changed,
        )
        old = self.sessions.get(held.device)
        self.sessions[held.device] = held
        if held.transport == "tls":
            self._session_identities[held.device] = self._tls_identities.get(held.fingerprint, [])
        held.closed.add_done_callback(lambda fut: self._session_closed(held, fut.result()))
        if held.transport == "tls" and self.config.liveness_interval > 0:
            # TLS has no keepalive of its own (SSH sessions have SSH keepalives): a hung device
            # must not stay 'connected' (RFC 8071 3.1 S7).
            self.spawn(
                mux.watch_liveness(
                    self.config.liveness_interval,
                    self.config.liveness_timeout,
                    lambda reason: self.metrics.failures.labels(transport=held.transport, reason="unresponsive").inc(),
                )
            )
        if old is not None and old is not held:
            old.close("replaced by a new call from %s" % held.peer)
            log.info("event=device.replaced device=%s old_peer=%s new_peer=%s", held.device, old.peer, held.peer)
        self.registry.update(
            held.device,
            status=CONNECTED,
            transport=held.transport,
            peer=held.peer,
            fingerprint=held.fingerprint,
            capabilities=list(held.hello.capabilities),
            session_mode=held.mode,
            first_connected=(rec.first_connected if rec and rec.first_connected else now),
            last_connected=now,
            last_seen=now,
            last_error="",
            connect_count=(rec.connect_count if rec else 0) + 1,
        )
        self._hints[(peer_ip(held.peer), held.transport)] = held.device
        elapsed = time.monotonic() - started
        self.metrics.handshakes.labels(transport=held.transport, result="ok").inc()
        self.metrics.handshake_seconds.labels(transport=held.transport).observe(elapsed)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "event=device.connected device=%s peer=%s transport=%s fingerprint=%s auth=%s mode=%s capabilities=%d handshake_ms=%.1f",
                held.device,
                held.peer,
                held.transport,
                held.fingerprint,
                auth,
                held.mode,
                len(held.hello.capabilities),
                elapsed * 1000,
            )
        self._claim(held.device)
        self._wake(held.device)

    def _session_closed(self, held: HeldSession, reason: str) -> None:
        if self.sessions.get(held.device) is not held:
            return  # an older, replaced session
        del self.sessions[held.device]
        self._session_identities.pop(held.device, None)
        now = time.time()
        conn = self.restconf_sessions.get(held.device)
        if conn is not None:
            # The device also holds a RESTCONF connection: it is still connected, through that one.
            self.registry.update(
                held.device,
                status=CONNECTED,
                transport="restconf",
                peer=conn.peer,
                fingerprint=conn.fingerprint,
                capabilities=module_capabilities(conn.library),
                last_seen=now,
            )
            log.info(
                "event=device.disconnected device=%s peer=%s transport=%s reason=%r still_connected=restconf",
                held.device,
                held.peer,
                held.transport,
                reason,
            )
            return
        status = ERROR if held.failed else DISCONNECTED
        if self.ownership is not None:
            self.ownership.release(held.device)
        self.registry.update(held.device, status=status, last_disconnected=now, last_seen=now, last_error=reason)
        log.info(
            "event=device.disconnected device=%s peer=%s status=%s reason=%r", held.device, held.peer, status, reason
        )

    # -- RESTCONF (RestconfEvents through _RestconfEvents) --------------------------------------

    def restconf_credentials(self, device: str) -> Optional[BasicCredentials]:
        """HTTP basic credentials when the device's credentials (trust store, else the listener's
        defaults) name a password; else None: the listener's client certificate alone. An
        unreadable password reference is a ConfigError, which fails this call home with it."""
        creds = self.policy.credentials_for(device)
        if not (creds.password_file or creds.password_env):
            return None
        password = creds.read_password()
        return None if password is None else BasicCredentials(creds.username, password)

    def restconf_ready(self, conn: RestconfConnection, *, started: float) -> None:
        """A verified RESTCONF device whose root and YANG library were read: held, one per device."""
        now = time.time()
        rec = self.registry.get(conn.device)
        old = self.restconf_sessions.hold(conn, self._tls_identities.get(conn.fingerprint, []))
        conn.closed.add_done_callback(
            lambda fut: self._restconf_closed(conn, "cancelled" if fut.cancelled() else fut.result())
        )
        if self.config.liveness_interval > 0:
            # RESTCONF's keepalive: an HTTP/2 PING, or a cheap request on HTTP/1.1, after
            # liveness_interval s of silence; no answer within liveness_timeout closes it.
            self.spawn(self._restconf_keepalive(conn))
        if old is not None:
            old.close("replaced by a new call from %s" % conn.peer)
            log.info("event=device.replaced device=%s old_peer=%s new_peer=%s", conn.device, old.peer, conn.peer)
        capabilities = module_capabilities(conn.library)
        self.registry.update(
            conn.device,
            status=CONNECTED,
            transport="restconf",
            peer=conn.peer,
            fingerprint=conn.fingerprint,
            capabilities=capabilities,
            first_connected=(rec.first_connected if rec and rec.first_connected else now),
            last_connected=now,
            last_seen=now,
            last_error="",
            connect_count=(rec.connect_count if rec else 0) + 1,
        )
        self._hints[(peer_ip(conn.peer), "restconf")] = conn.device
        elapsed = time.monotonic() - started
        self.metrics.handshakes.labels(transport="restconf", result="ok").inc()
        self.metrics.handshake_seconds.labels(transport="restconf").observe(elapsed)
        log.info(
            "event=device.connected device=%s peer=%s transport=restconf fingerprint=%s http=%s root=%s modules=%d handshake_ms=%.1f",
            conn.device,
            conn.peer,
            conn.fingerprint,
            conn.http_version,
            conn.root,
            len(capabilities),
            elapsed * 1000,
        )
        self._claim(conn.device)
        self._wake(conn.device)

    async def _restconf_keepalive(self, conn: RestconfConnection) -> None:
        reason = await conn.keepalive(self.config.liveness_interval, self.config.liveness_timeout)
        if reason.startswith(KEEPALIVE_MISSED):
            self.metrics.failures.labels(transport="restconf", reason="unresponsive").inc()

    def _restconf_closed(self, conn: RestconfConnection, reason: str) -> None:
        if not self.restconf_sessions.release(conn):
            return  # an older, replaced connection
        now = time.time()
        held = self.sessions.get(conn.device)
        if held is not None and held.is_open:
            # The device also holds a NETCONF session: its record stays 'connected', now for that one.
            self.registry.update(
                conn.device,
                status=CONNECTED,
                transport=held.transport,
                peer=held.peer,
                fingerprint=held.fingerprint,
                capabilities=list(held.hello.capabilities) if held.hello is not None else [],
                last_seen=now,
            )
            log.info(
                "event=device.disconnected device=%s peer=%s transport=restconf reason=%r still_connected=%s",
                conn.device,
                conn.peer,
                reason,
                held.transport,
            )
            return
        if self.ownership is not None:
            self.ownership.release(conn.device)
        self.registry.update(conn.device, status=DISCONNECTED, last_disconnected=now, last_seen=now, last_error=reason)
        log.info(
            "event=device.disconnected device=%s peer=%s transport=restconf status=%s reason=%r",
            conn.device,
            conn.peer,
            DISCONNECTED,
            reason,
        )

    # -- ownership (scale-out, PostgreSQL): one node owns a device's session ------------------

    def _claim(self, device: str) -> None:
        """A verified session is up: claim the device for this node (off the loop, on the
        store's; the outcome comes back through _claimed)."""
        if self.ownership is not None:
            self.ownership.claim(device)

    def _claimed_threadsafe(self, claim: Claim) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._claimed, claim)

    def _moved_threadsafe(self, device: str, node: str, epoch: int) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._moved, device, node, epoch)

    def _claimed(self, claim: Claim) -> None:
        if claim.won:
            # Rewrite the row under the new epoch: a flush that ran before the claim was fenced off.
            if self._connected(claim.device):
                self.registry.update(claim.device)
            log.info(
                "event=device.owned device=%s epoch=%d previous_node=%s", claim.device, claim.epoch, claim.previous or "-"
            )
            return
        self._close_device(
            claim.device,
            "ownership claim lost to node %s (epoch %d)" % (claim.node, claim.epoch),
            event="device.claim_lost",
            node=claim.node,
            epoch=claim.epoch,
        )

    def _moved(self, device: str, node: str, epoch: int) -> None:
        """Another node claimed a device this node owned: its session here is the stale one."""
        assert self.ownership is not None
        if self.ownership.claimed.get(device, 0) >= epoch:
            return  # this node claimed it again since (a newer session here)
        self._close_device(device, "moved to node %s" % node, event="device.moved", node=node, epoch=epoch)

    def _close_device(self, device: str, reason: str, *, event: str, node: str, epoch: int) -> None:
        held = self.sessions.get(device)
        conn = self.restconf_sessions.get(device)
        if held is None and conn is None:
            return
        log.info("event=%s device=%s to_node=%s epoch=%d reason=%r", event, device, node, epoch, reason)
        if held is not None:
            held.close(reason)
        if conn is not None:
            conn.close(reason)

    def _wake(self, device: str) -> None:
        """Wake the control operations waiting for the device to connect."""
        for fut in self._waiters.pop(device, []):
            if not fut.done():
                fut.set_result(None)

    def _mode_changed(self, held: HeldSession, mode: str, reason: str) -> None:
        """A lease found that the device serves one session per connection: remember it at once,
        for this connection's next leases and the device's next connections."""
        if self.sessions.get(held.device) is held:
            self.registry.update(held.device, session_mode=mode)

    def lease_ended(self, held: HeldSession) -> None:
        """A device that refused a second channel is served shared from now on: record it."""
        rec = self.registry.get(held.device)
        if rec is not None and rec.session_mode != held.mode and self.sessions.get(held.device) is held:
            self.registry.update(held.device, session_mode=held.mode)

    # -- ControlledListener --------------------------------------------------------------------

    def enrolled_devices(self) -> Collection[str]:
        return self.policy.index.devices

    def reload_trust(self) -> bool:
        """Re-read the trust store if it changed; then apply the change to live sessions and
        pending entries (``_trust_reloaded``). Every reload goes through here: housekeeping,
        SIGHUP, the control op and the service's own trust operations."""
        changed = self.policy.reload()
        if changed:
            self._trust_reloaded()
        return changed

    async def wait_ready(self, device: str, timeout: float) -> HeldSession:
        """The device's open NETCONF session, waiting up to ``timeout`` s for it to call home."""

        def netconf() -> Optional[HeldSession]:
            held = self.sessions.get(device)
            if held is not None and held.is_open:
                return held
            if device in self.restconf_sessions:
                # Waiting on would only end in a timeout that reads "connected": say why now.
                raise DeviceNotReadyError(
                    "device %r is connected over RESTCONF, which has no NETCONF session to lease: use the "
                    "netconf.callhome.httpapi connection (ansible_network_os ansible.netcommon.restconf) for it" % device,
                    details={"device": device, "transport": "restconf"},
                )
            return None

        return await self._wait_for(device, timeout, netconf)

    async def wait_restconf(self, device: str, timeout: float) -> RestconfConnection:
        """The device's RESTCONF connection, waiting up to ``timeout`` s for it to call home (4336)."""

        def restconf() -> Optional[RestconfConnection]:
            conn = self.restconf_sessions.get(device)
            if conn is not None:
                return conn
            held = self.sessions.get(device)
            if held is not None and held.is_open:
                # Waiting on would only end in a timeout that reads "connected": say why now.
                raise DeviceNotReadyError(
                    "device %r is connected over NETCONF (%s), not RESTCONF: use the netconf.callhome.netconf "
                    "connection for it, or configure its RESTCONF call home to port 4336" % (device, held.transport),
                    details={"device": device, "transport": held.transport},
                )
            return None

        return await self._wait_for(device, timeout, restconf)

    async def wait_connected(self, device: str, timeout: float) -> None:
        """Until the device holds an open session on any transport (NETCONF or RESTCONF), at
        most ``timeout`` s (the ``wait`` operation)."""
        await self._wait_for(device, timeout, lambda: self._connected(device))

    async def _wait_for(self, device: str, timeout: float, ready: Callable[[], Optional[_T]]) -> _T:
        """``ready()``'s first truthy value, asked again whenever the device connects."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            found = ready()
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._not_ready(device, timeout)
            fut: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(device, []).append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except asyncio.TimeoutError:
                pass
            finally:
                waiters = self._waiters.get(device)
                if waiters and fut in waiters:
                    waiters.remove(fut)

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
    ) -> Dict[str, Any]:
        """The device's persistent-connection endpoint, waiting up to ``wait`` s for it to call home.

        ``api`` ``netconf``: its NETCONF session (netconf sub-plugins, netconf.callhome.netconf);
        ``restconf``: its RESTCONF connection (httpapi sub-plugins, netconf.callhome.httpapi)."""
        if api == "restconf":
            conn = await self.wait_restconf(device, wait)
            return await self.restconf_endpoints.open_restconf(
                conn,
                network_os=network_os,
                root_path=root_path,
                command_timeout=command_timeout,
                collections_paths=collections_paths,
                client=client,
            )
        held = await self.wait_ready(device, wait)
        return await self.endpoints.open(
            held,
            network_os=network_os,
            command_timeout=command_timeout,
            collections_paths=collections_paths,
            client=client,
        )

    async def rpc(self, endpoint: str, request: bytes) -> bytes:
        """One JSON-RPC request for an endpoint, relayed over the control channel (op ``rpc``)."""
        if self.restconf_endpoints.has(endpoint):
            return await self.restconf_endpoints.request(endpoint, request)
        return await self.endpoints.request(endpoint, request)

    def _not_ready(self, device: str, timeout: float) -> CallHomeError:
        rec = self.registry.get(device)
        enrolled = device in self.policy.index.devices
        if rec is None and not enrolled:
            return DeviceNotFoundError(
                "device %r is not enrolled and has never called home; enroll its host key or certificate "
                "(callhome-listener approve / netconf.callhome.enroll)" % device,
                details={"device": device},
            )
        details: Dict[str, Any] = {"device": device, "enrolled": enrolled, "waited": timeout}
        if rec is not None:
            details.update(rec.to_dict())
            details.pop("capabilities", None)
        cls: Type[CallHomeError] = WaitTimeoutError
        if rec is not None and rec.status in (KEY_MISMATCH, AUTH_FAILED):
            cls = DeviceNotReadyError
        return cls(describe_not_ready(device, timeout, rec, enrolled), details=details)

    # -- trust changes: the rules are trust_ops'; here, their effect on live sessions ---------

    # The trust writes run in a thread (asyncio.to_thread): with state_url on PostgreSQL they are a
    # database transaction that may wait on other nodes' writers or an unreachable server.

    async def approve(
        self,
        fingerprint: str,
        device: str = "",
        *,
        replace: bool = False,
        credentials: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        pending = self.registry.get_pending(fingerprint)
        # A certificate fingerprint in any accepted notation, and entries recorded before the
        # one notation (SHA256:AB:..), are found too.
        spellings = [fingerprint] + list(cert_fingerprint_spellings(fingerprint))
        for spelling in spellings[1:] if pending is None else []:
            pending = self.registry.get_pending(spelling)
            if pending is not None:
                fingerprint = spelling
                break
        store = self.registry.store
        if pending is None and isinstance(store, PostgresStore):
            # Scale-out: the key may have been refused on another node (its pending entry is shared).
            pending = await asyncio.to_thread(store.find_pending, spellings)
            if pending is not None:
                fingerprint = pending.fingerprint
        if pending is None:
            raise DeviceNotFoundError(
                "no pending key with fingerprint %s (see 'callhome-listener pending')" % fingerprint
            )
        claimed = pending.claimed_device
        if not device and claimed and self._connected(claimed):
            # The device the key *claims* holds a verified session right now: the claim is
            # the presenter's word (a certificate subject anyone can write), and approving it by
            # default would pin a forged key for a working device in one command.
            raise ConfigError(
                "the key %s claims device %r, which is connected with a verified key right now; "
                "approving it would trust a second key for a working device. If the device was "
                "really replaced, name it: approve %s --device %s" % (fingerprint, claimed, fingerprint, claimed),
                details={"device": claimed, "fingerprint": fingerprint},
            )
        change = await asyncio.to_thread(
            trust_ops.approve_pending, self.trust_store, pending, device, replace=replace, credentials=credentials
        )
        self.registry.drop_pending(fingerprint)
        self._trust_changed(change.device, "key replaced")
        log.info(
            "event=key.approved device=%s fingerprint=%s transport=%s replaced=%s",
            change.device,
            fingerprint,
            pending.transport,
            change.replaced,
        )
        return change.to_dict()

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
    ) -> Dict[str, Any]:
        """Enroll an identity given by an operator or a module (trust_ops' rules: an observed key
        never silently joins or replaces another enrolled one)."""
        change = await asyncio.to_thread(
            trust_ops.enroll,
            self.trust_store,
            device,
            kind,
            value,
            replace=replace,
            observed=observed,
            credentials=credentials,
            dry_run=dry_run,
        )
        if not dry_run and change.changed:
            if change.fingerprint:
                self.registry.drop_pending(change.fingerprint)
            self._trust_changed(device, "key replaced")
            log.info("event=key.enrolled device=%s kind=%s fingerprint=%s", device, kind, change.fingerprint)
        return change.to_dict()

    async def revoke(self, device: str, identity: Optional[str] = None, *, dry_run: bool = False) -> Dict[str, Any]:
        change = await asyncio.to_thread(trust_ops.revoke, self.trust_store, device, identity, dry_run=dry_run)
        if not dry_run:
            self._trust_changed(device, "key revoked")
            log.info("event=key.revoked device=%s identity=%s changed=%s", device, identity or "all", change.changed)
        return change.to_dict()

    async def outbound_ssh_secret(
        self,
        action: str,
        name: str,
        reference: Optional[str],
        *,
        device_ids: Sequence[str] = (),
        allow_rotation: bool = False,
        dry_run: bool = False,
    ) -> Dict[str, Any]:
        """Set or remove an outbound-ssh secret reference (the control op ``secret``); ``dry_run``
        computes the change without writing it (the enroll module's check mode); ``list``: every
        reference in the store this listener uses (the shared one on PostgreSQL), never values."""
        if action == "list":
            return await asyncio.to_thread(trust_ops.outbound_ssh_secrets, self.trust_store)
        if action in ("set", "unset"):
            result = await asyncio.to_thread(
                trust_ops.set_outbound_ssh_secret,
                self.trust_store,
                name,
                reference,
                allow_rotation=allow_rotation,
                dry_run=dry_run,
            )
        else:
            result = await asyncio.to_thread(
                trust_ops.set_outbound_ssh_group_secret,
                self.trust_store,
                name,
                list(device_ids) if action == "group" else None,
                reference,
                allow_rotation=allow_rotation,
                dry_run=dry_run,
            )
        if result["changed"] and not dry_run:
            self.reload_trust()
            log.info("event=secret.changed action=%s name=%s", action, name)  # the reference only, never a value
        result["trust_store"] = self.trust_store.path
        return result

    def _trust_changed(self, device: str, reason: str) -> None:
        """After a trust operation on ``device``: reload the policy and apply it (``reason`` is
        what that device's session, if no longer trusted, is closed with)."""
        if self.policy.reload():
            self._trust_reloaded(device, reason)

    def _trust_reloaded(self, device: str = "", reason: str = "") -> None:
        """A new trust store is in force. Close exactly the live sessions whose identity it no
        longer trusts (a pinned key or certificate removed, the certificate identity a TLS
        session was accepted under revoked); every other device keeps its session. Drop the
        pending entries whose key is now enrolled, whichever way it was enrolled."""
        live: List[Tuple[str, str, str, Sequence[str], Callable[[str], None]]] = [
            (held.device, held.transport, held.fingerprint, self._session_identities.get(held.device, ()), held.close)
            for held in self.sessions.values()
        ]
        live += [
            (conn.device, "restconf", conn.fingerprint, self.restconf_sessions.identities(conn.device), conn.close)
            for conn in self.restconf_sessions
            if not conn.is_closed
        ]
        for name, transport, fingerprint, identities, close in live:
            if self.policy.still_trusts(name, transport, fingerprint, identities):
                continue
            why = reason if reason and name == device else "identity no longer enrolled (trust store changed)"
            log.info(
                "event=device.untrusted device=%s transport=%s fingerprint=%s reason=%r", name, transport, fingerprint, why
            )
            close(why)
        for pending in self.registry.pending():
            if self.policy.enrolled_pending(
                pending.transport, pending.fingerprint, pending.public_key, pending.identities
            ):
                self.registry.drop_pending(pending.fingerprint)
                log.info("event=pending.enrolled fingerprint=%s transport=%s", pending.fingerprint, pending.transport)


class _RestconfEvents:
    """The service as the RESTCONF transport's events: the certificate verdict of NETCONF over
    TLS, recorded under transport ``restconf`` (pending entries, address hints)."""

    def __init__(self, listener: CallHomeListener) -> None:
        self._listener = listener

    def tls_certificate(self, chain: Sequence[bytes], *, peer: str) -> Optional[VerifiedDevice]:
        return self._listener.tls_certificate(chain, peer=peer, transport="restconf")

    def restconf_credentials(self, device: str) -> Optional[BasicCredentials]:
        return self._listener.restconf_credentials(device)

    def handshake_failed(self, failure: HandshakeFailure) -> None:
        self._listener.handshake_failed(failure)

    def restconf_ready(self, conn: RestconfConnection, *, started: float) -> None:
        self._listener.restconf_ready(conn, started=started)


def describe_not_ready(device: str, timeout: float, rec: Any, enrolled: bool) -> str:
    """The sentence an operator reads in a failed task: what happened and what to do."""
    if rec is None:
        return (
            "device %r has not called home within %.0f s; it is enrolled but was never seen. Check that it is "
            "configured to call home to this listener (netconf.callhome.config) and that the listener's call-home port "
            "is reachable from it (4334 NETCONF/SSH, 4335 NETCONF/TLS, 4336 RESTCONF, or the ports in listener.yml)"
            % (device, timeout)
        )
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec.last_seen)) if rec.last_seen else "never"
    base = "device %r has no session after waiting %.0f s: status %s, last seen %s from %s" % (
        device,
        timeout,
        rec.status,
        when,
        rec.peer or "nowhere",
    )
    if rec.status == KEY_MISMATCH:
        return (
            base + ". It presented a key that is not enrolled for it (%s); if the change is expected, "
            "approve it: callhome-listener pending, then callhome-listener approve FINGERPRINT --device %s --replace"
            % (rec.last_error, device)
        )
    if rec.status == AUTH_FAILED:
        return (
            base + ". The device rejected the listener's credentials (%s); fix the device's credentials "
            "in the trust store or the listener's defaults" % rec.last_error
        )
    if rec.last_error:
        return base + " (last error: %s)" % rec.last_error
    return base

# SPDX-License-Identifier: GPL-3.0-or-later
"""Lifecycle layer: the call-home listener service.

Owns the listening sockets, the held sessions (one per device: a device that calls again
replaces its older connection), the registry, the trust policy and the control server, and
turns every transport outcome into one registry update, one log line and metrics.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import socket
import time
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Set, Tuple, Type

import asyncssh

from netconf_callhome.errors import (
    CallHomeError,
    ConfigError,
    DeviceNotFoundError,
    DeviceNotReadyError,
    WaitTimeoutError,
)
from netconf_callhome.policy.trust_store import (
    CANONICAL,
    TrustStore,
    add_identity,
    remove_identity,
)

from netconf_callhome.protocol import ssh as ssh_transport, tls as tls_transport
from netconf_callhome.config import PORT_SSH, PORT_TLS, ListenerConfig, parse_bind
from netconf_callhome.metrics import Metrics
from netconf_callhome.policy.verdicts import MISMATCH, TrustPolicy, Verdict
from netconf_callhome.state.registry import (
    AUTH_FAILED,
    CONNECTED,
    DISCONNECTED,
    ERROR,
    KEY_MISMATCH,
    PendingKey,
    Registry,
    SQLiteStore,
)
from netconf_callhome.protocol.session import HeldSession

log = logging.getLogger("netconf_callhome.listener")

ConnectionHandler = Callable[["CallHomeListener", socket.socket, Tuple[Any, ...]], Awaitable[None]]


class CallHomeListener:
    """The service. ``await start()``, then ``await serve_forever()`` or ``await stop()``."""

    def __init__(self, config: ListenerConfig) -> None:
        self.config = config
        os.makedirs(config.home, mode=0o700, exist_ok=True)
        self.trust_store = TrustStore(config.trust_store)
        self.policy = TrustPolicy(self.trust_store, config.tls, config.credentials)
        self.registry = Registry(SQLiteStore(config.registry))
        self.registry.load()
        self.metrics = Metrics(self.registry.counts)
        self.ssh_options = ssh_transport.client_options(self)
        self.tls_context = (
            tls_transport.client_context(config.tls.client_cert, config.tls.client_key) if config.tls_enabled else None
        )
        self.sessions: Dict[str, HeldSession] = {}
        self.bound: Dict[str, List[Tuple[str, int]]] = {"ssh": [], "tls": [], "outbound_ssh": []}
        self._acceptors: List[Any] = []
        self._listen_socks: List[socket.socket] = []
        self._tasks: Set["asyncio.Future[Any]"] = set()
        self._waiters: Dict[str, List["asyncio.Future[None]"]] = {}
        self._hints: Dict[Tuple[str, str], str] = {}
        self._failures: Dict[str, Deque[float]] = {}
        self._blocked: Dict[str, float] = {}
        self._key_cache: Dict[str, Tuple[float, List[asyncssh.SSHKey]]] = {}
        self._handshakes = 0
        self._last_full_warning = 0.0
        self._stopping = asyncio.Event()
        self.last_activity = time.monotonic()
        self.control: Any = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        from netconf_callhome.control.server import ControlServer  # the control layer depends on us, not the reverse

        try:
            for bind in self.config.ssh_binds:
                sock = self._listen("ssh", bind, PORT_SSH)
                self._acceptors.append(await ssh_transport.start_ssh(self, sock))
            for bind in self.config.outbound_ssh_binds:
                sock = self._listen("outbound_ssh", bind, PORT_SSH)
                self.track(asyncio.ensure_future(self._accept_loop(sock, ssh_transport.handle_outbound_ssh)))
            if self.tls_context is not None:
                for bind in self.config.tls_binds:
                    sock = self._listen("tls", bind, PORT_TLS)
                    self.track(asyncio.ensure_future(self._accept_loop(sock, tls_transport.handle_tls)))
        except OSError as exc:
            await self.stop()
            raise ConfigError("cannot listen on %s: %s" % (bind, exc.strerror or exc)) from None
        self.control = ControlServer(self)
        await self.control.start()
        self.track(asyncio.ensure_future(self._housekeeping()))
        if self.config.metrics_bind:
            self.metrics.serve(self.config.metrics_bind)
        log.info(
            "event=listener.started ssh=%s tls=%s control=%s trust_store=%s devices_enrolled=%d",
            _binds(self.bound["ssh"]),
            _binds(self.bound["tls"]) or "off",
            self.config.control_socket,
            self.config.trust_store,
            len(self.policy.index.devices),
        )

    def _listen(self, kind: str, bind: str, default_port: int) -> socket.socket:
        host, port = parse_bind(bind, default_port)
        sock = ssh_transport.make_listening_socket(host, port)
        self._listen_socks.append(sock)
        self.bound[kind].append(sock.getsockname()[:2])
        return sock

    async def _accept_loop(self, lsock: socket.socket, handler: "ConnectionHandler") -> None:
        """Accept loop for the transports asyncssh does not accept for us (TLS, outbound-ssh)."""
        loop = asyncio.get_running_loop()
        while True:
            sock, addr = await loop.sock_accept(lsock)
            if self.is_blocked(str(addr[0])):
                sock.close()
                continue
            self.track(asyncio.ensure_future(handler(self, sock, addr)))

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.policy.reload)
        await self._stopping.wait()
        await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        for acceptor in self._acceptors:
            acceptor.close()
        for sock in self._listen_socks:
            sock.close()
        if self.control is not None:
            await self.control.stop()
        for held in list(self.sessions.values()):
            held.close("listener stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.registry.close()
        log.info("event=listener.stopped")

    def track(self, task: "asyncio.Future[Any]") -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.registry.flush_interval)
            self.policy.reload()
            if self.registry.has_unsaved():
                await loop.run_in_executor(None, self.registry.flush)
            if (
                self.config.idle_exit
                and not self.sessions_leased()
                and time.monotonic() - self.last_activity > self.config.idle_exit
            ):
                log.info("event=listener.idle_exit idle_seconds=%.0f", self.config.idle_exit)
                self._stopping.set()

    def sessions_leased(self) -> int:
        """Leases in progress (kept by the control layer: O(1), ``status`` is polled often)."""
        return self.control.active_leases if self.control is not None else 0

    # -- policy helpers used by the transports -------------------------------------------------

    def client_keys(self, path: str) -> List[asyncssh.SSHKey]:
        """Private keys, read once and cached (re-read when the file changes)."""
        if not path:
            return []
        try:
            mtime = os.stat(path).st_mtime
        except OSError as exc:
            raise ConfigError("cannot read private key %s: %s" % (path, exc.strerror)) from None
        cached = self._key_cache.get(path)
        if cached is None or cached[0] != mtime:
            try:
                cached = (mtime, [asyncssh.read_private_key(path)])
            except (OSError, asyncssh.KeyImportError) as exc:
                raise ConfigError("cannot load private key %s: %s" % (path, exc)) from None
            self._key_cache[path] = cached
        return list(cached[1])

    def is_blocked(self, peer_ip: str) -> bool:
        until = self._blocked.get(peer_ip)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._blocked[peer_ip]
        return False

    def count_failure(self, transport: str, reason: str, peer_ip: str) -> None:
        self.metrics.failures.labels(transport=transport, reason=reason).inc()
        self.metrics.handshakes.labels(transport=transport, result="failed").inc()
        if reason in ("host-key", "auth-failed") or reason.endswith("-after-banner"):
            return  # a device waiting for enrollment retries; blocking it would delay approval
        now = time.monotonic()
        window = self._failures.setdefault(peer_ip, collections.deque())
        window.append(now)
        while window and now - window[0] > self.config.block_window:
            window.popleft()
        if len(window) >= self.config.block_failures:
            self._blocked[peer_ip] = now + self.config.block_seconds
            window.clear()
            log.warning(
                "event=peer.blocked peer_ip=%s seconds=%.0f reason=repeated_failures",
                peer_ip,
                self.config.block_seconds,
            )

    # -- outcomes ------------------------------------------------------------------------------

    def refused(self, verdict: Verdict, *, transport: str, peer: str, key_type: str, public_key: str) -> None:
        """An unenrolled or mismatched key: record it, never authenticate, never hand it out."""
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
        if verdict.outcome == MISMATCH and verdict.device:
            self.registry.update(
                verdict.device,
                status=KEY_MISMATCH,
                last_seen=time.time(),
                last_error="presented %s %s, which is not enrolled for it (from %s)"
                % (key_type, verdict.fingerprint, peer),
            )
            log.warning(
                "event=device.key_mismatch device=%s peer=%s transport=%s fingerprint=%s key_type=%s count=%d",
                verdict.device,
                peer,
                transport,
                verdict.fingerprint,
                key_type,
                pending.count,
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

    def handshake_slot(self, peer: str) -> bool:
        """Bound the handshakes in progress: a connection flood cannot exhaust memory or CPU."""
        if self._handshakes >= self.config.max_handshakes:
            now = time.monotonic()
            if now - self._last_full_warning > 5:
                self._last_full_warning = now
                log.warning("event=handshake.limit peer=%s in_progress=%d", peer, self._handshakes)
            self.metrics.failures.labels(transport="any", reason="handshake-limit").inc()
            return False
        self._handshakes += 1
        return True

    def handshake_done(self) -> None:
        self._handshakes -= 1

    def release_slot(self, owner: Any) -> None:
        """For SSH: the slot is held by the per-connection client object until accept or error."""
        if getattr(owner, "holds_slot", False):
            owner.holds_slot = False
            self.handshake_done()

    def ssh_failed(self, conn: asyncssh.SSHClientConnection, exc: Optional[Exception]) -> None:
        client = conn.get_owner()
        self.release_slot(client)
        if getattr(client, "turned_away", False):
            return
        peer = getattr(client, "peer", "") or "?"
        peer_ip = getattr(client, "peer_ip", "") or "?"
        verdict = getattr(client, "verdict", None)
        reason, message = ssh_transport.describe_ssh_failure(exc)
        if verdict is not None and not verdict.accepted:
            reason = "host-key"  # already recorded by refused()
        elif verdict is not None and verdict.accepted:
            status = AUTH_FAILED if reason == "auth-failed" else ERROR
            self.registry.update(
                verdict.device, status=status, peer=peer, transport="ssh", last_seen=time.time(), last_error=message
            )
            log.warning(
                "event=device.%s device=%s peer=%s transport=ssh error=%r", reason, verdict.device, peer, message
            )
        else:
            log.warning("event=handshake.failed peer=%s transport=ssh reason=%s error=%r", peer, reason, message)
        if reason in ("timeout", "connection-lost") and getattr(conn, "_server_version", None):
            # It spoke SSH, so a handshake that timed out or was dropped is what a storm looks like
            # (the listener slow, devices giving up and redialing), not a stalled attacker: blocking
            # its address would lock out every device behind the same NAT.
            reason += "-after-banner"
        self.count_failure("ssh", reason, peer_ip)

    def session_failed(self, *, device: str, transport: str, peer: str, exc: BaseException) -> None:
        """The handshake or hello failed; ``device`` is empty when trust was never decided."""
        if isinstance(exc, CallHomeError):
            message = exc.message
            reason = exc.code
        else:
            reason, message = ssh_transport.describe_ssh_failure(exc)
        if device:
            self.registry.update(
                device,
                status=ERROR,
                peer=peer,
                transport=transport,
                last_seen=time.time(),
                last_error=message,
            )
            log.warning(
                "event=device.session_failed device=%s peer=%s transport=%s reason=%s error=%r",
                device,
                peer,
                transport,
                reason,
                message,
            )
        else:
            log.warning(
                "event=handshake.failed peer=%s transport=%s reason=%s error=%r",
                peer,
                transport,
                reason,
                message,
            )
        self.count_failure(transport, reason, _peer_ip(peer))

    def session_ready(self, held: HeldSession, *, started: float, auth: str) -> None:
        assert held.hello is not None
        now = time.time()
        old = self.sessions.get(held.device)
        self.sessions[held.device] = held
        held.on_closed = self._session_closed
        if old is not None and old is not held:
            old.close("replaced by a new call from %s" % held.peer)
            log.info("event=device.replaced device=%s old_peer=%s new_peer=%s", held.device, old.peer, held.peer)
        rec = self.registry.get(held.device)
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
        self._hints[(_peer_ip(held.peer), held.transport)] = held.device
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
        for fut in self._waiters.pop(held.device, []):
            if not fut.done():
                fut.set_result(None)

    def _session_closed(self, held: HeldSession, reason: str) -> None:
        if self.sessions.get(held.device) is not held:
            return  # an older, replaced session
        del self.sessions[held.device]
        now = time.time()
        status = ERROR if held.failed else DISCONNECTED
        self.registry.update(held.device, status=status, last_disconnected=now, last_seen=now, last_error=reason)
        log.info(
            "event=device.disconnected device=%s peer=%s status=%s reason=%r", held.device, held.peer, status, reason
        )

    # -- operations for the control layer ------------------------------------------------------

    async def wait_ready(self, device: str, timeout: float) -> HeldSession:
        """The device's open session, waiting up to ``timeout`` s for it to call home."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            held = self.sessions.get(device)
            if held is not None and held.is_open:
                return held
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

    def hint_for(self, peer_ip: str, transport: str) -> str:
        """The device last connected from this address, if it has no live session now."""
        device = self._hints.get((peer_ip, transport), "")
        return "" if device in self.sessions else device

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

    def approve(self, fingerprint: str, device: str = "") -> Dict[str, Any]:
        pending = self.registry.get_pending(fingerprint)
        if pending is None:
            raise DeviceNotFoundError(
                "no pending key with fingerprint %s (see 'callhome-listener pending')" % fingerprint
            )
        name = device or (pending.claimed_device if pending.claim_source == "identity" else "")
        if not name:
            hint = (
                " (it came from the address %s last used by %r)" % (pending.peer, pending.claimed_device)
                if pending.claimed_device
                else ""
            )
            raise ConfigError("say which device key %s belongs to (--device NAME)%s" % (fingerprint, hint))
        if pending.transport == "ssh":
            kind, value = "ssh_host_keys", pending.public_key
        else:
            kind, value = "tls_fingerprints", fingerprint
        if pending.reason == MISMATCH and pending.claimed_device == name:
            # Replacing a device's key is a deliberate act: the old key goes, the new one comes.
            def mutate(data: Dict[str, Any]) -> bool:
                data["devices"].get(name, {})[kind] = []
                return add_identity(data, name, kind=kind, value=value)

        else:

            def mutate(data: Dict[str, Any]) -> bool:
                return add_identity(data, name, kind=kind, value=value)

        changed = self.trust_store.update(mutate)[0]
        self.registry.drop_pending(fingerprint)
        self.policy.reload()
        self._close_if_untrusted(name, "key replaced")
        log.info("event=key.approved device=%s fingerprint=%s transport=%s", name, fingerprint, pending.transport)
        return {"device": name, "fingerprint": fingerprint, "transport": pending.transport, "changed": bool(changed)}

    def enroll(
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
        """Enroll an identity given by an operator or a module (the same rules as the module's
        file path: an observed key never silently replaces another enrolled one)."""
        from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.enroll import (
            Identity,
            identities_of,
            mutate_add,
        )

        if kind not in CANONICAL:
            raise ConfigError("kind must be one of %s" % ", ".join(sorted(CANONICAL)))
        identity = Identity(kind, value, CANONICAL[kind](value), observed=observed)
        changed, before, after = self.trust_store.update(
            mutate_add(device, identity, replace=replace, credentials=credentials), dry_run=dry_run
        )
        if not dry_run and changed:
            self.registry.drop_pending(identity.fingerprint)
            self.policy.reload()
            self._close_if_untrusted(device, "key replaced")
            log.info("event=key.enrolled device=%s kind=%s fingerprint=%s", device, kind, identity.fingerprint)
        return {
            "changed": bool(changed),
            "device": device,
            "kind": kind,
            "fingerprint": identity.fingerprint,
            "before": identities_of(before, device),
            "after": identities_of(after, device),
        }

    def _close_if_untrusted(self, device: str, reason: str) -> None:
        """A live session whose key is no longer enrolled must not be leased again."""
        held = self.sessions.get(device)
        if (
            held is not None
            and held.fingerprint not in self.policy.index.ssh
            and held.fingerprint not in self.policy.index.tls
        ):
            held.close(reason)

    def revoke(self, device: str, identity: Optional[str] = None, *, dry_run: bool = False) -> Dict[str, Any]:
        changed = self.trust_store.update(lambda data: remove_identity(data, device, value=identity), dry_run=dry_run)[
            0
        ]
        if dry_run:
            return {"device": device, "identity": identity, "changed": bool(changed)}
        self.policy.reload()
        self._close_if_untrusted(device, "key revoked")
        log.info("event=key.revoked device=%s identity=%s changed=%s", device, identity or "all", changed)
        return {"device": device, "identity": identity, "changed": bool(changed)}


def _peer_ip(peer: str) -> str:
    """The address part of a peer as the transports format it (``ip:port`` or ``[v6]:port``)."""
    return peer.rsplit(":", 1)[0].strip("[]")


def describe_not_ready(device: str, timeout: float, rec: Any, enrolled: bool) -> str:
    """The sentence an operator reads in a failed task: what happened and what to do."""
    if rec is None:
        return (
            "device %r has not called home within %.0f s; it is enrolled but was never seen. Check that it is "
            "configured to call home to this listener (netconf.callhome.config) and that port 4334/4335 is reachable"
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
            "approve it: callhome-listener pending, then callhome-listener approve FINGERPRINT --device %s"
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


def _binds(bound: List[Tuple[str, int]]) -> str:
    return ",".join("[%s]:%d" % b if ":" in b[0] else "%s:%d" % b for b in bound)

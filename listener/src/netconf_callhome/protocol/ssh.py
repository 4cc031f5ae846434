# SPDX-License-Identifier: GPL-3.0-or-later
"""Protocol layer, SSH: accept call-home TCP on 4334 and run the SSH *client* on it.

asyncssh's ``listen_reverse`` does exactly the RFC 8071 role reversal. We give it listening
sockets we made (so IPv6-only flags and port 0 work), one shared options object (built once: the
per-connection cost is then the handshake itself), and a per-connection :class:`DeviceSSHClient`
that asks for a trust decision on the host key and then logs in with that device's credentials.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import asyncssh

from netconf_callhome.config import ListenerConfig
from netconf_callhome.errors import (
    AuthFailedError,
    CallHomeError,
    ConfigError,
    ConnectionLostError,
    EnrollFailedError,
    HandshakeError,
    HandshakeTimeoutError,
    IdentityRefusedError,
    LeaseError,
    PeerProtocolError,
    SSHLibraryError,
    UnexpectedHandshakeError,
    handshake_error,
)
from netconf_callhome.netutil import format_peer, set_tcp_keepalive
from netconf_callhome.protocol.events import Admission, HandshakeFailure, SSHLogin, TransportEvents
from netconf_callhome.protocol.session import CHANNEL, HeldSession

log = logging.getLogger("netconf_callhome.ssh")

# Client preference decides which of a device's host keys it presents: a fixed order makes the
# enrolled key predictable (ed25519 first, as OpenSSH does).
HOST_KEY_ALGS = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
]


class PrivateKeyCache:
    """The listener's private keys, read once and re-read when the file changes."""

    def __init__(self) -> None:
        self._cache: Dict[str, Tuple[float, List[asyncssh.SSHKey]]] = {}

    def keys(self, path: str) -> List[asyncssh.SSHKey]:
        if not path:
            return []
        try:
            mtime = os.stat(path).st_mtime
        except OSError as exc:
            raise ConfigError("cannot read private key %s: %s" % (path, exc.strerror)) from None
        cached = self._cache.get(path)
        if cached is None or cached[0] != mtime:
            try:
                cached = (mtime, [asyncssh.read_private_key(path)])
            except (OSError, asyncssh.KeyImportError) as exc:
                raise ConfigError("cannot load private key %s: %s" % (path, exc)) from None
            self._cache[path] = cached
        return list(cached[1])


class DeviceSSHClient(asyncssh.SSHClient):
    """Per-connection SSH client: trust decision first, then this device's credentials only."""

    def __init__(
        self, transport: "SSHTransport", device_id: str = "", host_key_check: Optional["HostKeyCheck"] = None
    ) -> None:
        self.transport = transport
        self.device_id = device_id  # from a Junos outbound-ssh preamble, if any
        # Outbound-ssh: the preamble's own check (HMAC, HOST-KEY) instead of events.ssh_host_key.
        self.host_key_check = host_key_check
        self.refused_reason = ""  # set by host_key_check: why a proved key was refused
        self.refused_message = ""
        # Set by host_key_check: the session waits for it ('' = go, else why not): a zero-touch
        # enrollment that must be on disk before the device is served.
        self.gate: "Optional[asyncio.Future[str]]" = None
        self.conn: Optional[asyncssh.SSHClientConnection] = None
        self.peer = ""
        self.peer_ip = ""
        self.login: Optional[SSHLogin] = None
        self.refused = False  # the host key was not accepted (recorded as pending upstream)
        self.started = time.monotonic()
        self._keys_left: List[asyncssh.SSHKey] = []
        self._password_tried = False
        self.auth_methods: List[str] = []
        self.holds_slot = False
        self.turned_away = False

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.peer_ip = str(peer[0])
        self.peer = format_peer(peer)
        admission = self.transport.admission
        if admission.is_blocked(self.peer_ip) or not admission.acquire(self.peer):
            self.turned_away = True  # already counted; not a failure of this peer's handshake
            conn.abort()
            return
        self.holds_slot = True

    def release_slot(self) -> None:
        if self.holds_slot:
            self.holds_slot = False
            self.transport.admission.release()

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        if self.host_key_check is not None:
            login = self.host_key_check(self, key)
        else:
            login = self.transport.events.ssh_host_key(key, peer=self.peer, device_id=self.device_id)
        if login is None:
            self.refused = True
            return False
        assert self.conn is not None
        # asyncssh fixes the user name when the connection object is built, before we know who
        # called; the user-auth request is only built after this point, so it can still change.
        self.conn._username = login.username  # pylint: disable=protected-access
        self._keys_left = list(login.keys)
        self.login = login
        return True

    def public_key_auth_requested(self) -> Optional[asyncssh.SSHKey]:
        if self._keys_left:
            self.auth_methods.append("publickey")
            return self._keys_left.pop(0)
        return None

    def password_auth_requested(self) -> Optional[str]:
        if self._password_tried or self.login is None:
            return None
        self._password_tried = True
        try:
            password = self.login.read_password()
        except ConfigError as exc:
            log.error("event=credentials.error device=%s error=%r", self.login.device, exc.message)
            return None
        if password is not None:
            self.auth_methods.append("password")
        return password

    def kbdint_auth_requested(self) -> Optional[str]:
        return None


# (client, proved host key) -> the login, or None when refused (recorded by the check's owner).
HostKeyCheck = Callable[[DeviceSSHClient, asyncssh.SSHKey], Optional[SSHLogin]]


class _ChannelCarrier(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    """Feeds the held NETCONF channel into its :class:`HeldSession` (no task per device)."""

    def __init__(self, held: HeldSession, conn: asyncssh.SSHClientConnection) -> None:
        self.held = held
        self.conn = conn
        self.chan: Optional[asyncssh.SSHClientChannel] = None  # type: ignore[type-arg]

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        self.held.attach(self)

    def data_received(self, data: bytes, datatype: Optional[int]) -> None:
        self.held.data_received(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.held.connection_lost("NETCONF channel closed" + (": %s" % exc if exc else ""))

    def write(self, data: bytes) -> None:
        if self.chan is not None:
            self.chan.write(data)

    def close(self) -> None:
        # Closing the session closes the connection: a revoked or replaced device must call again.
        self.conn.close()


class SSHTransport:
    """NETCONF over SSH call home: asyncssh accepts, we verify, log in and open ``netconf``."""

    def __init__(
        self, config: ListenerConfig, *, admission: Admission, events: TransportEvents
    ) -> None:
        self.config = config
        self.admission = admission
        self.events = events
        self.options = asyncssh.SSHClientConnectionOptions(
            client_factory=lambda: DeviceSSHClient(self),
            known_hosts=([], [], []),  # empty, not None: every key goes to validate_host_public_key
            server_host_key_algs=HOST_KEY_ALGS,
            username="netconf",
            client_keys=None,  # keys come per device from public_key_auth_requested
            agent_path=None,
            public_key_auth=True,
            password_auth=True,
            kbdint_auth=False,
            host_based_auth=False,
            gss_host=None,
            login_timeout=config.handshake_timeout,
            keepalive_interval=config.keepalive_interval,
            keepalive_count_max=config.keepalive_count_max,
            tcp_keepalive=True,  # tuned per socket in open_netconf
            compression_algs=None,
        )

    async def listen(self, sock: socket.socket) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen_reverse(
            sock=sock, options=self.options, acceptor=self._accepted, error_handler=self._failed, config=None
        )

    def options_for(
        self, device_id: str, host_key_check: Optional[HostKeyCheck] = None
    ) -> asyncssh.SSHClientConnectionOptions:
        """Options whose client carries a claimed DEVICE-ID (Junos outbound-ssh), and the
        preamble's host key check when it has one."""
        return asyncssh.SSHClientConnectionOptions(
            options=self.options,
            client_factory=functools.partial(DeviceSSHClient, self, device_id, host_key_check),
        )

    def connection(
        self, loop: asyncio.AbstractEventLoop, device_id: str, host_key_check: Optional[HostKeyCheck] = None
    ) -> asyncssh.SSHClientConnection:
        """A client connection object for a socket we already read from (outbound-ssh, the
        single call-home port)."""
        # Options derived per connection cost ~0.3 ms of CPU (asyncssh re-validates them all):
        # with nothing of its own to carry, the connection shares the port's options.
        options = self.options if not device_id and host_key_check is None else self.options_for(device_id, host_key_check)
        return asyncssh.SSHClientConnection(loop, options, self._accepted, self._failed)  # type: ignore[arg-type]

    # -- outcomes --------------------------------------------------------------------------

    def _accepted(self, conn: asyncssh.SSHClientConnection) -> None:
        client: DeviceSSHClient = conn.get_owner()  # type: ignore[assignment]
        client.release_slot()
        self.events.spawn(self._open_netconf(conn, client))

    def _failed(self, conn: asyncssh.SSHClientConnection, exc: Optional[Exception]) -> None:
        client: DeviceSSHClient = conn.get_owner()  # type: ignore[assignment]
        client.release_slot()
        if client.turned_away:
            return
        error = ssh_failure(exc)
        device = ""
        if client.refused:
            # already recorded as pending by the events side; an outbound-ssh refusal names its reason
            error = handshake_error(client.refused_reason or IdentityRefusedError.code, client.refused_message or error.message)
        elif client.login is not None:
            device = client.login.device
        elif isinstance(error, (HandshakeTimeoutError, ConnectionLostError)) and getattr(conn, "_server_version", None):
            # It spoke SSH, so a handshake that timed out or was dropped is what a storm looks like
            # (the listener slow, devices giving up and redialing), not a stalled attacker: blocking
            # its address would lock out every device behind the same NAT. Same class, own reason.
            error = type(error)(error.message, code=error.code + "-after-banner")
        self.events.handshake_failed(HandshakeFailure(transport="ssh", peer=client.peer or "?", error=error, device=device))

    async def _open_netconf(self, conn: asyncssh.SSHClientConnection, client: DeviceSSHClient) -> None:
        assert client.login is not None
        cfg = self.config
        if client.gate is not None and not await self._gate_open(conn, client, client.gate):
            return

        async def open_channel() -> Tuple[Any, Any]:
            try:
                chan_writer, chan_reader = (await conn.open_session(subsystem="netconf", encoding=None))[:2]
            except (asyncssh.ChannelOpenError, asyncssh.Error, OSError) as exc:
                raise LeaseError("device refused another NETCONF channel: %s" % exc) from None
            return chan_writer, chan_reader

        held = HeldSession(
            device=client.login.device,
            transport="ssh",
            peer=client.peer,
            fingerprint=client.login.fingerprint,
            max_hello=cfg.max_hello_bytes,
            max_message=cfg.max_message_bytes,
            open_channel=open_channel,
        )
        set_tcp_keepalive(conn.get_extra_info("socket"), cfg)
        try:
            remaining = max(0.1, cfg.handshake_timeout - (time.monotonic() - client.started))
            async with asyncio.timeout(remaining):
                await conn.create_session(
                    functools.partial(_ChannelCarrier, held, conn), subsystem="netconf", encoding=None
                )
                await held.wait_hello()
        except BaseException as exc:
            conn.close()
            self.events.handshake_failed(
                HandshakeFailure(transport="ssh", peer=held.peer, error=classify(exc), device=held.device)
            )
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        held.mode = CHANNEL
        conn_closed = conn.wait_closed()
        self.events.session_ready(held, started=client.started, auth=",".join(client.auth_methods))

        async def watch() -> None:
            await conn_closed
            held.connection_lost("SSH connection closed")

        self.events.spawn(watch())

    async def _gate_open(
        self, conn: asyncssh.SSHClientConnection, client: DeviceSSHClient, gate: "asyncio.Future[str]"
    ) -> bool:
        """Wait (within what is left of handshake_timeout) for the gate; False: refused, closed."""
        assert client.login is not None
        remaining = max(0.1, self.config.handshake_timeout - (time.monotonic() - client.started))
        try:
            async with asyncio.timeout(remaining):
                refusal = await asyncio.shield(gate)
        except TimeoutError:
            refusal = "the trust store write did not complete within handshake_timeout"
        if not refusal:
            return True
        conn.close()
        self.events.handshake_failed(
            HandshakeFailure(transport="ssh", peer=client.peer, error=EnrollFailedError(refusal))
        )
        return False


def classify(exc: BaseException) -> CallHomeError:
    """A failure after trust was decided, in the error hierarchy: ours as raised (a HandshakeError
    from the hello, a FramingError, a ConfigError reading credentials), then asyncssh's."""
    if isinstance(exc, CallHomeError):
        return exc
    return ssh_failure(exc)


def ssh_failure(exc: Optional[BaseException]) -> HandshakeError:
    """An asyncssh failure (None: the peer closed) as the HandshakeError subclass that names it;
    its ``code`` is the reason logs and metrics show."""
    if exc is None:
        return ConnectionLostError("the device closed the connection during the SSH handshake")
    if isinstance(exc, asyncssh.PermissionDenied):
        return AuthFailedError("device rejected the listener's credentials")
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return IdentityRefusedError("host key not accepted")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return HandshakeTimeoutError("handshake did not complete in time")
    if isinstance(exc, asyncssh.ProtocolError):
        return PeerProtocolError("SSH protocol error: %s" % exc)
    if isinstance(exc, asyncssh.ConnectionLost) and "timeout" in str(exc).lower():
        return HandshakeTimeoutError("handshake did not complete in time (%s)" % exc)  # asyncssh's login timeout
    if isinstance(exc, (asyncssh.ConnectionLost, BrokenPipeError, ConnectionResetError)):
        return ConnectionLostError("connection lost during handshake: %s" % exc)
    if isinstance(exc, asyncssh.Error):
        return SSHLibraryError(str(exc))
    return UnexpectedHandshakeError("%s: %s" % (type(exc).__name__, exc))

# SPDX-License-Identifier: GPL-3.0-or-later
"""Protocol layer, SSH: accept call-home TCP on 4334 and run the SSH *client* on it.

asyncssh's ``listen_reverse`` does exactly the RFC 8071 role reversal. We give it listening
sockets we made (so IPv6-only flags and port 0 work), one shared options object (built once: the
per-connection cost is then the handshake itself), and a per-connection :class:`DeviceSSHClient`
that asks the trust policy about the host key and supplies that device's credentials.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import asyncssh

from netconf_callhome.errors import ConfigError, LeaseError

from netconf_callhome.config import Credentials, ListenerConfig
from netconf_callhome.policy.verdicts import Verdict
from netconf_callhome.protocol.session import CHANNEL, HeldSession

if TYPE_CHECKING:
    from netconf_callhome.service import CallHomeListener

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


class _HostKeyRejected(Exception):
    pass


class DeviceSSHClient(asyncssh.SSHClient):
    """Per-connection SSH client: trust decision first, then this device's credentials only."""

    def __init__(self, listener: "CallHomeListener", device_id: str = "") -> None:
        self.listener = listener
        self.device_id = device_id  # from a Junos outbound-ssh preamble, if any
        self.conn: Optional[asyncssh.SSHClientConnection] = None
        self.peer = ""
        self.peer_ip = ""
        self.verdict: Optional[Verdict] = None
        self.key_type = ""
        self.started = time.monotonic()
        self._keys_left: List[asyncssh.SSHKey] = []
        self._password_tried = False
        self._auth_methods: List[str] = []
        self._creds: Optional[Credentials] = None
        self.holds_slot = False
        self.turned_away = False

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.peer_ip = str(peer[0])
        self.peer = _fmt_peer(peer)
        if self.listener.is_blocked(self.peer_ip) or not self.listener.handshake_slot(self.peer):
            self.turned_away = True  # already counted; not a failure of this peer's handshake
            conn.abort()
            return
        self.holds_slot = True

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        fingerprint = key.get_fingerprint("sha256")
        self.key_type = key.get_algorithm()
        verdict = self.listener.policy.ssh_verdict(
            fingerprint, hint=self.listener.hint_for(self.peer_ip, "ssh"), device_id=self.device_id
        )
        self.verdict = verdict
        if not verdict.accepted:
            public_line = key.export_public_key("openssh").decode("ascii").strip()
            self.listener.refused(
                verdict, transport="ssh", peer=self.peer, key_type=self.key_type, public_key=public_line
            )
            return False
        creds = self.listener.policy.credentials_for(verdict.device)
        assert self.conn is not None
        # asyncssh fixes the user name when the connection object is built, before we know who
        # called; the user-auth request is only built after this point, so it can still change.
        self.conn._username = creds.username  # pylint: disable=protected-access
        try:
            self._keys_left = self.listener.client_keys(creds.private_key_file)
        except ConfigError as exc:
            log.error("event=credentials.error device=%s error=%r", verdict.device, exc.message)
            self._keys_left = []
        self._creds = creds
        return True

    def public_key_auth_requested(self) -> Optional[asyncssh.SSHKey]:
        if self._keys_left:
            self._auth_methods.append("publickey")
            return self._keys_left.pop(0)
        return None

    def password_auth_requested(self) -> Optional[str]:
        if self._password_tried or self._creds is None or self.verdict is None:
            return None
        self._password_tried = True
        try:
            password = self._creds.read_password()
        except ConfigError as exc:
            log.error("event=credentials.error device=%s error=%r", self.verdict.device, exc.message)
            return None
        if password is not None:
            self._auth_methods.append("password")
        return password

    def kbdint_auth_requested(self) -> Optional[str]:
        return None


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


def client_options(listener: "CallHomeListener") -> asyncssh.SSHClientConnectionOptions:
    cfg = listener.config
    return asyncssh.SSHClientConnectionOptions(
        client_factory=lambda: DeviceSSHClient(listener),
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
        login_timeout=cfg.handshake_timeout,
        keepalive_interval=cfg.keepalive_interval,
        keepalive_count_max=cfg.keepalive_count_max,
        tcp_keepalive=True,  # tuned per socket in open_netconf
        compression_algs=None,
    )


def make_listening_socket(host: str, port: int) -> socket.socket:
    """Bind one address; IPv6 sockets are v6-only so '0.0.0.0' and '::' can both be listed."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, addr = infos[0][0], infos[0][4]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(4096)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def set_tcp_keepalive(sock: Optional[socket.socket], cfg: "ListenerConfig") -> None:
    """Kernel keepalives: the cheap dead-peer detector (see ListenerConfig)."""
    if sock is None:
        return
    idle = max(1, int(cfg.tcp_keepalive_idle))
    interval = max(1, int(cfg.tcp_keepalive_interval))
    count = max(1, cfg.tcp_keepalive_count)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        # Unacknowledged data must not keep a dead peer "connected" for the kernel's 15 minutes.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, (idle + interval * count) * 1000)


async def start_ssh(listener: "CallHomeListener", sock: socket.socket) -> asyncssh.SSHAcceptor:
    return await asyncssh.listen_reverse(
        sock=sock,
        options=listener.ssh_options,
        acceptor=functools.partial(_spawn, listener),
        error_handler=listener.ssh_failed,
        config=None,
    )


def _spawn(listener: "CallHomeListener", conn: asyncssh.SSHClientConnection) -> None:
    listener.release_slot(conn.get_owner())
    task = asyncio.ensure_future(open_netconf(listener, conn))
    listener.track(task)


async def open_netconf(listener: "CallHomeListener", conn: asyncssh.SSHClientConnection) -> None:
    client: DeviceSSHClient = conn.get_owner()  # type: ignore[assignment]
    assert client.verdict is not None
    cfg = listener.config
    held = HeldSession(
        device=client.verdict.device,
        transport="ssh",
        peer=client.peer,
        fingerprint=client.verdict.fingerprint,
        max_hello=cfg.max_hello_bytes,
        max_message=cfg.max_message_bytes,
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
        listener.session_failed(device=held.device, transport="ssh", peer=held.peer, exc=exc)
        if isinstance(exc, asyncio.CancelledError):
            raise
        return

    async def open_channel() -> Tuple[Any, Any]:
        try:
            chan_writer, chan_reader = (await conn.open_session(subsystem="netconf", encoding=None))[:2]
        except (asyncssh.ChannelOpenError, asyncssh.Error, OSError) as exc:
            raise LeaseError("device refused another NETCONF channel: %s" % exc) from None
        return chan_writer, chan_reader

    held.mode = CHANNEL
    held.open_channel = open_channel  # type: ignore[assignment]
    conn_closed = conn.wait_closed()
    listener.session_ready(held, started=client.started, auth=",".join(client._auth_methods))

    async def watch() -> None:
        await conn_closed
        held.connection_lost("SSH connection closed")

    listener.track(asyncio.ensure_future(watch()))


def _fmt_peer(peer: Tuple[Any, ...]) -> str:
    host, port = peer[0], peer[1]
    return "[%s]:%s" % (host, port) if ":" in str(host) else "%s:%s" % (host, port)


def describe_ssh_failure(exc: Optional[BaseException]) -> Tuple[str, str]:
    """Map an asyncssh failure to (registry status reason, human message)."""
    if exc is None:
        return "connection-lost", "the device closed the connection during the SSH handshake"
    if isinstance(exc, asyncssh.PermissionDenied):
        return "auth-failed", "device rejected the listener's credentials"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return "host-key", "host key not accepted"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", "handshake did not complete in time"
    if isinstance(exc, asyncssh.ProtocolError):
        return "protocol", "SSH protocol error: %s" % exc
    if isinstance(exc, asyncssh.ConnectionLost) and "timeout" in str(exc).lower():
        return "timeout", "handshake did not complete in time (%s)" % exc  # asyncssh's login timeout
    if isinstance(exc, (asyncssh.ConnectionLost, BrokenPipeError, ConnectionResetError)):
        return "connection-lost", "connection lost during handshake: %s" % exc
    if isinstance(exc, asyncssh.Error):
        return "ssh-error", str(exc)
    return "error", "%s: %s" % (type(exc).__name__, exc)


# -- Junos outbound-ssh ------------------------------------------------------------------------

_PREAMBLE_LIMIT = 16 * 1024


async def handle_outbound_ssh(listener: "CallHomeListener", sock: socket.socket, addr: Tuple[Any, ...]) -> None:
    """Junos ``outbound-ssh`` sends ``MSG-ID: DEVICE-CONN-INFO`` lines before SSH starts; on these
    ports the listener reads them (for the DEVICE-ID), then runs the same SSH client as on 4334."""
    loop = asyncio.get_running_loop()
    peer = _fmt_peer(addr)
    try:
        async with asyncio.timeout(listener.config.handshake_timeout):
            fields = await read_outbound_ssh_preamble(loop, sock)
    except (TimeoutError, OSError, ValueError) as exc:
        sock.close()
        log.warning(
            "event=handshake.failed peer=%s transport=ssh reason=outbound-ssh-preamble error=%r", peer, str(exc)
        )
        listener.count_failure("ssh", "outbound-ssh-preamble", str(addr[0]))
        return
    device_id = fields.get("DEVICE-ID", "")
    log.info("event=outbound_ssh.preamble peer=%s device_id=%s msg_ver=%s", peer, device_id, fields.get("MSG-VER", ""))
    options = asyncssh.SSHClientConnectionOptions(
        options=listener.ssh_options, client_factory=functools.partial(DeviceSSHClient, listener, device_id)
    )

    def factory() -> asyncssh.SSHClientConnection:
        return asyncssh.SSHClientConnection(
            loop, options, functools.partial(_spawn, listener), listener.ssh_failed  # type: ignore[arg-type]
        )

    try:
        await loop.create_connection(factory, sock=sock)
    except OSError as exc:
        sock.close()
        log.warning("event=handshake.failed peer=%s transport=ssh error=%r", peer, str(exc))


def _resolve(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


async def read_outbound_ssh_preamble(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Dict[str, str]:
    """Consume the ``KEY: value`` lines before the SSH banner, leaving the banner in the socket."""
    sock.setblocking(False)
    fields: Dict[str, str] = {}
    consumed = 0
    while True:
        ready: "asyncio.Future[None]" = loop.create_future()
        loop.add_reader(sock.fileno(), _resolve, ready)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())
        data = sock.recv(_PREAMBLE_LIMIT, socket.MSG_PEEK)
        if not data:
            raise ValueError("connection closed during the outbound-ssh preamble")
        if data.startswith(b"SSH-"):
            if not fields:
                raise ValueError("no outbound-ssh preamble before the SSH banner")
            return fields
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= _PREAMBLE_LIMIT:
                raise ValueError("outbound-ssh preamble line too long")
            continue
        ssh_at = data.find(b"\nSSH-")
        take = ssh_at + 1 if 0 <= ssh_at < end else end + 1
        chunk = sock.recv(take)
        consumed += len(chunk)
        if consumed > _PREAMBLE_LIMIT:
            raise ValueError("outbound-ssh preamble exceeds %d bytes" % _PREAMBLE_LIMIT)
        for line in chunk.decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip():
                fields[key.strip().upper()] = value.strip()
        if "MSG-ID" in fields and fields["MSG-ID"] != "DEVICE-CONN-INFO":
            raise ValueError("unexpected outbound-ssh MSG-ID %r" % fields["MSG-ID"])

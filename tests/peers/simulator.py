# SPDX-License-Identifier: GPL-3.0-or-later
"""Many simulated NETCONF devices calling home (RFC 8071, SSH) from one asyncio process.

Why: the listener has to be exercised by thousands of devices (connection storms, idle fleets,
reconnects, misbehaving peers) without thousands of VMs. Each device is an SSH *server* that
dials the listener with :func:`asyncssh.connect_reverse`, presents its own persistent host key,
authenticates the listener (password and/or public key) and serves the ``netconf`` subsystem with
the sans-IO core in ``netconf_server.py``. Devices are plain objects plus one task each (no
threads); ``--processes K`` splits a fleet across K worker processes when one core is not enough.

Progress goes to stdout, one machine-readable line per event::

    CONNECTED <name>                  SSH connection to the listener is authenticated and up
    READY <name> <session-id>         a NETCONF session finished its hello exchange
    SESSION-END <name> <sid> <why>    a NETCONF session ended
    REFUSED <name> <what>             a channel or subsystem request was refused
    TCP-CONNECTED <name> <fault>      a raw-TCP fault device (garbage/stall/slow-banner) connected
    DISCONNECTED <name> <reason>      the connection (or dial attempt) ended
    LISTENING <name> <host>:<port>    direct (non-call-home) SSH server is up (--direct)
    STARTED <count> <unix-time>       keys loaded, all device tasks created (dialing begins)

With ``--tls-cert``/``--tls-key`` the devices call home over TLS instead (RFC 7589 on port 4335:
the device dials, then acts as the TLS *server*) and serve one NETCONF session per connection;
``CONNECTED`` then means the TLS handshake is done. The host keys are not used.
    SUMMARY {json}                    on SIGTERM/SIGINT, before exiting
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import hmac
import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parent))

from netconf_server import (  # noqa: E402
    BASE_10,
    BASE_11,
    BASE_NS,
    DEFAULT_CAPABILITIES,
    NetconfDevice,
    NetconfSession,
)

FAULTS = (
    "garbage",
    "stall",
    "slow-banner",
    "big-hello",
    "entity-hello",
    "bad-framing",
    "drop-after-hello",
)
KEY_ALGS = {"ed25519": "ssh-ed25519", "ecdsa": "ecdsa-sha2-nistp256", "rsa": "ssh-rsa"}
RAW_FAULTS = ("garbage", "stall", "slow-banner")


def device_name(prefix: str, index: int) -> str:
    """Name of device ``index`` (1-based): sim0001, sim0002, ..."""
    return f"{prefix}{index:04d}"


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (one fd per device connection)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def public_line(key: asyncssh.SSHKey) -> str:
    """``<alg> <base64>`` without comment, the form a trust store pins."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def ensure_keys(
    keys_dir: Path, names: Sequence[str], key_type: str = "ed25519"
) -> dict[str, asyncssh.SSHKey]:
    """Load each device's host key from ``keys_dir``, generating it on first use.

    Why persistent: the listener pins host keys, so a device must present the same key across
    runs; ``DIR/<name>`` is the OpenSSH private key and ``DIR/<name>.pub`` its public key.
    """
    keys_dir.mkdir(parents=True, exist_ok=True)
    alg = KEY_ALGS[key_type]
    keys: dict[str, asyncssh.SSHKey] = {}
    for name in names:
        path = keys_dir / name
        if path.exists():
            keys[name] = asyncssh.read_private_key(path)
            continue
        key = asyncssh.generate_private_key(
            alg, comment=name, **({"key_size": 2048} if key_type == "rsa" else {})
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(key.export_private_key("openssh"))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        path.with_name(name + ".pub").write_bytes(key.export_public_key("openssh"))
        keys[name] = key
    return keys


def write_manifest(path: Path, keys: dict[str, asyncssh.SSHKey]) -> None:
    """Write ``{name: {public_key, fingerprint}}`` so a listener trust store can be filled."""
    data = {
        name: {"public_key": public_line(k), "fingerprint": k.get_fingerprint("sha256")}
        for name, k in keys.items()
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def parse_faults(specs: Iterable[str]) -> dict[str, str]:
    """``MODE`` (every device) or ``MODE=name1,name2`` (those devices) -> {name or '*': MODE}."""
    out: dict[str, str] = {}
    for spec in specs:
        mode, _sep, names = spec.partition("=")
        if mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r}; choose from {', '.join(FAULTS)}")
        for n in names.split(",") if names else ["*"]:
            out[n.strip()] = mode
    return out


def _big_hello(mib: float) -> bytes:
    """A well-formed hello padded with capabilities until it exceeds ``mib`` MiB."""
    target = int(mib * 1024 * 1024) + 1
    one = "<capability>urn:example:pad:%08d:" + "x" * 200 + "</capability>"
    n = target // (len(one % 0)) + 1
    caps = "".join(one % i for i in range(n))
    return (
        f'<hello xmlns="{BASE_NS}"><capabilities><capability>{BASE_10}</capability>'
        f"<capability>{BASE_11}</capability>{caps}</capabilities>"
        f"<session-id>1</session-id></hello>"
    ).encode()


def _entity_hello() -> bytes:
    """A hello carrying a DTD with the classic billion-laughs entity expansion."""
    ents = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' for i in range(1, 10)
    ]
    return (
        '<?xml version="1.0"?><!DOCTYPE hello [' + "".join(ents) + "]>"
        f'<hello xmlns="{BASE_NS}"><capabilities><capability>{BASE_10}</capability>'
        "<capability>&lol9;</capability></capabilities><session-id>1</session-id></hello>"
    ).encode()


@dataclasses.dataclass
class SimConfig:
    """Everything that shapes a fleet; the CLI and :class:`SimulatedDevices` both fill it."""

    listener: Optional[tuple[str, int]]
    count: int = 1
    name_prefix: str = "sim"
    keys_dir: Path = Path("sim-keys")
    key_type: str = "ed25519"
    manifest: Optional[Path] = None
    user: str = "netconf"
    password: Optional[str] = None
    authorized_keys: Optional[Path] = None
    retry: float = 1.0
    concurrency: int = 0
    stagger: float = 0.0
    single_session: bool = False
    direct: Optional[tuple[str, int]] = None
    faults: dict[str, str] = dataclasses.field(default_factory=dict)
    outbound_ssh_preamble: bool = False
    outbound_ssh_host_key: bool = False
    outbound_ssh_secret: Optional[str] = None
    # Announce in HOST-KEY (and HMAC) the key of the same name from this directory instead of the
    # device's own: a device whose preamble does not match the key it proves in the handshake.
    outbound_ssh_announce_keys: Optional[Path] = None
    big_hello_mib: float = 16.0
    slow_delay: float = 1.0
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    login_timeout: float = 120.0
    connect_timeout: float = 60.0
    keepalive_interval: float = 0.0
    reconnect: bool = True
    # TLS call home (RFC 7589): the devices' certificate and key (one for all), optionally the CA
    # the listener's client certificate must chain to (without it any client certificate goes).
    tls_cert: Optional[Path] = None
    tls_key: Optional[Path] = None
    tls_ca: Optional[Path] = None
    first_index: int = 1
    last_index: Optional[int] = None  # inclusive; worker processes get a slice
    verbose_events: bool = True

    def names(self) -> list[str]:
        """Names of the devices this process runs."""
        last = self.last_index if self.last_index is not None else self.count
        return [device_name(self.name_prefix, i) for i in range(self.first_index, last + 1)]


class _Device:
    """Small per-device record: identity, live connection, lazily built NETCONF state."""

    __slots__ = (
        "sim",
        "name",
        "index",
        "key",
        "fault",
        "conn",
        "nc",
        "channels",
        "connects",
        "task",
        "reason",
        "ready_sessions",
    )

    def __init__(self, sim: "Simulator", name: str, index: int, key: asyncssh.SSHKey) -> None:
        self.sim = sim
        self.name = name
        self.index = index
        self.key = key
        self.fault: Optional[str] = sim.cfg.faults.get(name, sim.cfg.faults.get("*"))
        self.conn: Optional[asyncssh.SSHServerConnection] = None
        self.nc: Optional[NetconfDevice] = None
        self.channels = 0
        self.connects = 0
        self.ready_sessions = 0
        self.task: Optional[asyncio.Task[None]] = None
        self.reason = ""

    def netconf(self) -> NetconfDevice:
        """Datastores are created on first use, so idle devices stay small."""
        if self.nc is None:
            self.nc = NetconfDevice(self.name, capabilities=self.sim.cfg.capabilities)
        return self.nc


class _NetconfChannel(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    """One SSH session channel; accepts only the ``netconf`` subsystem."""

    def __init__(self, dev: _Device, conn: asyncssh.SSHServerConnection) -> None:
        self.dev = dev
        self.conn = conn
        self.chan: Optional[asyncssh.SSHServerChannel[bytes]] = None
        self.nc: Optional[NetconfSession] = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:  # type: ignore[override]
        self.chan = chan

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "netconf":
            self.dev.sim.emit("REFUSED", self.dev.name, f"subsystem:{subsystem}")
            return False
        return True

    def shell_requested(self) -> bool:
        self.dev.sim.emit("REFUSED", self.dev.name, "shell")
        return False

    def exec_requested(self, command: str) -> bool:
        self.dev.sim.emit("REFUSED", self.dev.name, "exec")
        return False

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        return False

    def session_started(self) -> None:
        assert self.chan is not None
        dev, chan = self.dev, self.chan
        fault = dev.fault
        hello: Optional[bytes] = None
        if fault == "big-hello":
            hello = self.dev.sim.big_hello()
        elif fault == "entity-hello":
            hello = _entity_hello()

        def send(data: bytes) -> None:
            if not chan.is_closing():
                chan.write(data)

        def close(reason: str) -> None:
            if self.nc is not None:
                dev.sim.emit(
                    "SESSION-END", dev.name, f"{self.nc.session_id} {reason.replace(' ', '_')}"
                )
            chan.write_eof()
            chan.close()

        self.nc = NetconfSession(
            dev.netconf(), send, close, hello_override=hello, on_ready=self._ready
        )
        self.nc.start()

    def _ready(self, session: NetconfSession) -> None:
        dev = self.dev
        dev.ready_sessions += 1
        dev.sim.stats["sessions"] += 1
        dev.sim.emit("READY", dev.name, str(session.session_id))
        if dev.fault == "bad-framing":
            assert self.chan is not None
            self.chan.write(b"\n#bogus\n<rpc-reply/>\n##\n")
        elif dev.fault == "drop-after-hello":
            asyncio.get_running_loop().call_later(0.05, self.conn.abort)

    def data_received(self, data: bytes, datatype: Any) -> None:  # type: ignore[override]
        if self.nc is not None:
            before = self.nc.rpc_count
            self.nc.data_received(data)
            self.dev.sim.stats["rpcs"] += self.nc.rpc_count - before

    def eof_received(self) -> bool:
        if self.nc is not None and not self.nc.closed:
            self.dev.sim.emit("SESSION-END", self.dev.name, f"{self.nc.session_id} eof")
            self.nc.connection_lost()
        return False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.dev.channels -= 1
        if self.nc is not None and not self.nc.closed:
            self.dev.sim.emit("SESSION-END", self.dev.name, f"{self.nc.session_id} channel_closed")
            self.nc.connection_lost()


class _DeviceServer(asyncssh.SSHServer):
    """asyncssh server policy of one device: authentication and channel admission."""

    def __init__(self, dev: _Device) -> None:
        self.dev = dev
        self.conn: Optional[asyncssh.SSHServerConnection] = None
        self.lost: Optional[Exception] = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.lost = exc

    def begin_auth(self, username: str) -> bool:
        sim = self.dev.sim
        return sim.cfg.password is not None or bool(sim.authorized)

    def password_auth_supported(self) -> bool:
        return self.dev.sim.cfg.password is not None

    def validate_password(self, username: str, password: str) -> bool:
        cfg = self.dev.sim.cfg
        return (
            cfg.password is not None
            and hmac.compare_digest(username.encode(), cfg.user.encode())
            and hmac.compare_digest(password.encode(), cfg.password.encode())
        )

    def public_key_auth_supported(self) -> bool:
        return bool(self.dev.sim.authorized)

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self.dev.sim.cfg.user and key.public_data in self.dev.sim.authorized

    def session_requested(self) -> Any:
        dev = self.dev
        if dev.sim.cfg.single_session and dev.channels >= 1:
            dev.sim.emit("REFUSED", dev.name, "second-channel")
            return False
        dev.channels += 1
        assert self.conn is not None
        return _NetconfChannel(dev, self.conn)


class Simulator:
    """A fleet of devices in this process; drive it with :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        cfg: SimConfig,
        *,
        out: Optional[Callable[[str], None]] = None,
        keys: Optional[dict[str, asyncssh.SSHKey]] = None,
    ) -> None:
        self.cfg = cfg
        self._out = out
        self.events: list[tuple[str, str, str]] = []
        self._keys = keys
        self.devices: dict[str, _Device] = {}
        self.authorized: set[bytes] = set()
        self.stats: dict[str, int] = {
            "connects": 0,
            "disconnects": 0,
            "dial_failures": 0,
            "sessions": 0,
            "rpcs": 0,
        }
        self.stopping = False
        self._sem: Optional[asyncio.Semaphore] = None
        self._listeners: list[asyncssh.SSHAcceptor] = []
        self._big_hello: Optional[bytes] = None
        self._tls_ctx: Optional[ssl.SSLContext] = None
        self._changed = asyncio.Event()
        self.started_at = time.monotonic()

    # -- events ------------------------------------------------------------------------------
    def emit(self, kind: str, name: str, detail: str = "") -> None:
        """Record an event and print it as one line (one write call, so lines never interleave)."""
        line = f"{kind} {name} {detail}".rstrip()
        if self.cfg.verbose_events:
            self.events.append((kind, name, detail))
            self._changed.set()
        if self._out is not None:
            self._out(line)

    def count_events(self, kind: str, name: Optional[str] = None) -> int:
        """How many events of ``kind`` (optionally for one device) were recorded."""
        return sum(1 for k, n, _detail in self.events if k == kind and (name is None or n == name))

    async def wait_for(
        self, kind: str, count: int = 1, *, name: Optional[str] = None, timeout: float = 30.0
    ) -> None:
        """Wait until ``count`` events of ``kind`` were recorded; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while self.count_events(kind, name) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{count} x {kind} {name or ''}: saw {self.count_events(kind, name)}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    def big_hello(self) -> bytes:
        """Built once and shared by every big-hello device."""
        if self._big_hello is None:
            self._big_hello = _big_hello(self.cfg.big_hello_mib)
        return self._big_hello

    def summary(self) -> dict[str, Any]:
        """Counters for the final SUMMARY line."""
        return {
            "devices": len(self.devices),
            "connected": sum(1 for d in self.devices.values() if d.conn is not None),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            **self.stats,
        }

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load keys and authorized keys, start direct listeners and the call-home tasks."""
        cfg = self.cfg
        raise_nofile_limit()
        names = cfg.names()
        keys = self._keys
        if keys is None:
            keys = await asyncio.get_running_loop().run_in_executor(
                None, ensure_keys, cfg.keys_dir, names, cfg.key_type
            )
        if cfg.manifest is not None:
            write_manifest(cfg.manifest, keys)
        if cfg.authorized_keys is not None:
            for k in asyncssh.read_public_key_list(cfg.authorized_keys):
                self.authorized.add(k.public_data)
        if cfg.concurrency > 0:
            self._sem = asyncio.Semaphore(cfg.concurrency)
        for i, name in enumerate(names, start=cfg.first_index):
            self.devices[name] = _Device(self, name, i, keys[name])
        if cfg.direct is not None:
            host, base = cfg.direct
            for dev in self.devices.values():
                acc = await asyncssh.listen(
                    host,
                    base + dev.index - 1,
                    server_factory=self._factory(dev),
                    server_host_keys=[dev.key],
                    encoding=None,
                    login_timeout=cfg.login_timeout,
                    reuse_address=True,
                    server_version="NetconfSim_1.0",
                )
                self._listeners.append(acc)
                self.emit("LISTENING", dev.name, f"{host}:{base + dev.index - 1}")
        if cfg.listener is not None:
            for n, dev in enumerate(self.devices.values()):
                dev.task = asyncio.create_task(self._call_home(dev, n * cfg.stagger))

    async def stop(self) -> dict[str, Any]:
        """Stop dialing, close every connection and listener; return the summary."""
        self.stopping = True
        summary = self.summary()
        tasks = [d.task for d in self.devices.values() if d.task is not None]
        for t in tasks:
            t.cancel()
        for dev in self.devices.values():
            if dev.conn is not None:
                dev.conn.close()
        for acc in self._listeners:
            acc.close()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for acc in self._listeners:
            await acc.wait_closed()
        return summary

    def _factory(self, dev: _Device) -> Callable[[], asyncssh.SSHServer]:
        return lambda: _DeviceServer(dev)

    async def _call_home(self, dev: _Device, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        while not self.stopping:
            try:
                if dev.fault in RAW_FAULTS:
                    reason = await self._raw_fault(dev)
                elif self.cfg.tls_cert is not None:
                    reason = await self._tls_session(dev)
                else:
                    reason = await self._ssh_session(dev)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncssh.Error, asyncio.TimeoutError, ssl.SSLError) as exc:
                self.stats["dial_failures"] += 1
                reason = f"dial-failed:{type(exc).__name__}:{_oneline(exc)}"
            self.emit("DISCONNECTED", dev.name, reason)
            if not self.cfg.reconnect:
                return
            await asyncio.sleep(self.cfg.retry)

    async def _dial_socket(self, dev: _Device) -> socket.socket:
        """Open the TCP connection ourselves (needed for the outbound-ssh preamble)."""
        assert self.cfg.listener is not None
        host, port = self.cfg.listener
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, stype, proto, _canonname, addr = infos[0]
        sock = socket.socket(family, stype, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
            if self.cfg.outbound_ssh_preamble:
                await loop.sock_sendall(sock, self._preamble(dev))
        except BaseException:
            sock.close()
            raise
        return sock

    def _preamble(self, dev: _Device) -> bytes:
        """Junos outbound-ssh DEVICE-CONN-INFO preamble, sent before the SSH banner.

        With a secret, Junos sends ``HOST-KEY: <alg> <base64>`` and ``HMAC:`` the hex HMAC-SHA1
        keyed with the secret over that HOST-KEY text (Juniper's outbound-ssh documentation: "an
        SHA1 hash derived in part from the secret"; Juniper's YAPT provisioning server checks
        ``hmac.new(key=secret, msg=HOST-KEY, digestmod=sha1).hexdigest()``)."""
        lines = ["MSG-ID: DEVICE-CONN-INFO", "MSG-VER: V1", f"DEVICE-ID: {dev.name}"]
        if self.cfg.outbound_ssh_host_key or self.cfg.outbound_ssh_secret:
            announced = dev.key
            if self.cfg.outbound_ssh_announce_keys is not None:
                announced = ensure_keys(self.cfg.outbound_ssh_announce_keys, [dev.name])[dev.name]
            pub = public_line(announced)
            lines.append(f"HOST-KEY: {pub}")
            if self.cfg.outbound_ssh_secret:
                mac = hmac.new(self.cfg.outbound_ssh_secret.encode(), pub.encode(), hashlib.sha1)
                lines.append(f"HMAC: {mac.hexdigest()}")
        return "".join(line + "\r\n" for line in lines).encode()

    async def _ssh_session(self, dev: _Device) -> str:
        cfg = self.cfg
        assert cfg.listener is not None
        server = _DeviceServer(dev)
        kwargs: dict[str, Any] = dict(
            server_factory=lambda: server,
            server_host_keys=[dev.key],
            encoding=None,
            login_timeout=cfg.login_timeout,
            connect_timeout=cfg.connect_timeout,
            server_version="NetconfSim_1.0",
        )
        if cfg.keepalive_interval > 0:
            kwargs["keepalive_interval"] = cfg.keepalive_interval
        if self._sem is not None:
            await self._sem.acquire()
        try:
            if cfg.outbound_ssh_preamble:
                sock = await self._dial_socket(dev)
                conn = await asyncssh.connect_reverse(sock=sock, **kwargs)
            else:
                conn = await asyncssh.connect_reverse(cfg.listener[0], cfg.listener[1], **kwargs)
        finally:
            if self._sem is not None:
                self._sem.release()
        dev.conn = conn
        dev.connects += 1
        self.stats["connects"] += 1
        self.emit("CONNECTED", dev.name)
        try:
            await conn.wait_closed()
        finally:
            dev.conn = None
            self.stats["disconnects"] += 1
        exc = server.lost
        return "closed" if exc is None else f"{type(exc).__name__}:{_oneline(exc)}"

    def _tls_context(self) -> ssl.SSLContext:
        """The devices' TLS server context, built once."""
        if self._tls_ctx is None:
            cfg = self.cfg
            assert cfg.tls_cert is not None
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key) if cfg.tls_key else None)
            if cfg.tls_ca is not None:
                ctx.verify_mode = ssl.CERT_REQUIRED  # RFC 7589: the client (listener) authenticates
                ctx.load_verify_locations(str(cfg.tls_ca))
            self._tls_ctx = ctx
        return self._tls_ctx

    async def _tls_session(self, dev: _Device) -> str:
        """Dial, run TLS as the server on the dialled connection, serve one NETCONF session."""
        cfg = self.cfg
        if self._sem is not None:
            await self._sem.acquire()
        try:
            sock = await self._dial_socket(dev)
            loop = asyncio.get_running_loop()
            ended: asyncio.Future[str] = loop.create_future()
            proto = _TLSNetconf(dev, ended)
            try:
                transport, _proto = await asyncio.wait_for(
                    loop.connect_accepted_socket(
                        lambda: proto, sock=sock, ssl=self._tls_context(), ssl_handshake_timeout=cfg.login_timeout
                    ),
                    cfg.connect_timeout,
                )
            except BaseException:
                sock.close()
                raise
        finally:
            if self._sem is not None:
                self._sem.release()
        dev.conn = transport  # type: ignore[assignment]  # close() is all stop() needs
        dev.connects += 1
        self.stats["connects"] += 1
        self.emit("CONNECTED", dev.name)
        try:
            return await ended
        finally:
            dev.conn = None
            self.stats["disconnects"] += 1

    async def _raw_fault(self, dev: _Device) -> str:
        """garbage / stall / slow-banner: a TCP peer that never completes SSH."""
        if self._sem is not None:
            await self._sem.acquire()
        try:
            sock = await self._dial_socket(dev)
        finally:
            if self._sem is not None:
                self._sem.release()
        reader, writer = await asyncio.open_connection(sock=sock)
        self.emit("TCP-CONNECTED", dev.name, dev.fault or "")
        self.stats["connects"] += 1
        try:
            if dev.fault == "garbage":
                writer.write(os.urandom(4096))
                await writer.drain()
                while await reader.read(65536):
                    pass
            elif dev.fault == "stall":
                while await reader.read(65536):
                    pass
            else:
                banner = b"SSH-2.0-" + b"S" * 1000000
                for i in range(len(banner)):
                    writer.write(banner[i : i + 1])
                    await writer.drain()
                    try:
                        data = await asyncio.wait_for(reader.read(65536), self.cfg.slow_delay)
                    except asyncio.TimeoutError:
                        continue
                    if not data:
                        break
            return f"peer-closed:{dev.fault}"
        except OSError as exc:
            return f"{type(exc).__name__}:{dev.fault}"
        finally:
            self.stats["disconnects"] += 1
            writer.close()


class _TLSNetconf(asyncio.Protocol):
    """One NETCONF session on a TLS connection (RFC 7589), the device's side."""

    def __init__(self, dev: _Device, ended: "asyncio.Future[str]") -> None:
        self.dev = dev
        self.ended = ended
        self.transport: Optional[asyncio.Transport] = None
        self.nc: Optional[NetconfSession] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        dev = self.dev

        def send(data: bytes) -> None:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)

        def close(reason: str) -> None:
            if self.nc is not None:
                dev.sim.emit("SESSION-END", dev.name, f"{self.nc.session_id} {reason.replace(' ', '_')}")
            if self.transport is not None:
                self.transport.close()

        hello: Optional[bytes] = None
        if dev.fault == "big-hello":
            hello = dev.sim.big_hello()
        elif dev.fault == "entity-hello":
            hello = _entity_hello()
        self.nc = NetconfSession(dev.netconf(), send, close, hello_override=hello, on_ready=self._ready)
        self.nc.start()

    def _ready(self, session: NetconfSession) -> None:
        dev = self.dev
        dev.ready_sessions += 1
        dev.sim.stats["sessions"] += 1
        dev.sim.emit("READY", dev.name, str(session.session_id))
        if dev.fault == "drop-after-hello" and self.transport is not None:
            asyncio.get_running_loop().call_later(0.05, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        if self.nc is not None:
            before = self.nc.rpc_count
            self.nc.data_received(data)
            self.dev.sim.stats["rpcs"] += self.nc.rpc_count - before

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.nc is not None and not self.nc.closed:
            self.dev.sim.emit("SESSION-END", self.dev.name, f"{self.nc.session_id} connection_lost")
            self.nc.connection_lost()
        if not self.ended.done():
            self.ended.set_result("closed" if exc is None else f"{type(exc).__name__}:{_oneline(exc)}")


def _oneline(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).replace("\n", " ").replace(" ", "_")[:120]


class SimulatedDevices:
    """``async with SimulatedDevices(listener=(host, port), count=3, keys_dir=...) as sim:``.

    Runs a fleet inside the test's event loop; ``sim`` is the :class:`Simulator` (``wait_for``,
    ``events``, ``devices``). Keyword arguments are :class:`SimConfig` fields.
    """

    def __init__(self, *, out: Optional[Callable[[str], None]] = None, **kwargs: Any) -> None:
        if "faults" in kwargs and isinstance(kwargs["faults"], (list, tuple, str)):
            specs = [kwargs["faults"]] if isinstance(kwargs["faults"], str) else kwargs["faults"]
            kwargs["faults"] = parse_faults(specs)
        for k in ("keys_dir", "manifest", "authorized_keys"):
            if kwargs.get(k) is not None:
                kwargs[k] = Path(kwargs[k])
        self.sim = Simulator(SimConfig(**kwargs), out=out)

    async def __aenter__(self) -> Simulator:
        await self.sim.start()
        return self.sim

    async def __aexit__(self, *exc: object) -> None:
        await self.sim.stop()


# -- subprocess helper --------------------------------------------------------------------------


class SimulatorProcess:
    """A simulator child process whose stdout is drained by a thread (so the pipe never fills)."""

    def __init__(self, args: Sequence[str], *, env: Optional[dict[str, str]] = None) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), *args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, bufsize=1
        )
        self.lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(
                target=self._drain, args=(self.proc.stderr, self.stderr_lines), daemon=True
            ),
        ]
        for t in self._threads:
            t.start()

    def _drain(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._cond:
                sink.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def count(self, kind: str, name: Optional[str] = None) -> int:
        """Number of stdout lines ``KIND [name]`` seen so far."""
        with self._cond:
            return sum(
                1
                for ln in self.lines
                if ln.split(" ", 1)[0] == kind and (name is None or ln.split(" ")[1:2] == [name])
            )

    def wait_for(
        self, kind: str, count: int = 1, *, name: Optional[str] = None, timeout: float = 30.0
    ) -> None:
        """Block until ``count`` lines of ``kind`` appeared; raise TimeoutError with stderr."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                seen = sum(
                    1
                    for ln in self.lines
                    if ln.split(" ", 1)[0] == kind
                    and (name is None or ln.split(" ")[1:2] == [name])
                )
                if seen >= count:
                    return
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._threads[0].is_alive()):
                    raise TimeoutError(
                        f"waited for {count} x {kind}, saw {seen}; rc={self.proc.poll()}; "
                        f"stderr: {' | '.join(self.stderr_lines[-10:])}"
                    )
                self._cond.wait(min(left, 0.5))

    def stop(self, timeout: float = 30.0) -> Optional[dict[str, Any]]:
        """SIGTERM the simulator, wait, and return its parsed SUMMARY (None if absent)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(5)
        for ln in reversed(self.lines):
            if ln.startswith("SUMMARY "):
                return dict(json.loads(ln[len("SUMMARY ") :]))
        return None

    def __enter__(self) -> "SimulatorProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_simulator_process(
    args: Sequence[str],
    *,
    wait_connected: int = 0,
    timeout: float = 60.0,
    env: Optional[dict[str, str]] = None,
) -> SimulatorProcess:
    """Run ``simulator.py args...`` in a child process; optionally wait for N CONNECTED lines.

    The returned object exposes ``.proc`` (the Popen), ``.lines``, ``wait_for`` and ``stop``.
    """
    if "--exit-with-parent" not in args:
        args = [*args, "--exit-with-parent"]
    sp = SimulatorProcess(args, env=env)
    if wait_connected:
        try:
            sp.wait_for("CONNECTED", wait_connected, timeout=timeout)
        except BaseException:
            sp.stop()
            raise
    return sp


# -- CLI -------------------------------------------------------------------------------------------


def _hostport(text: str) -> tuple[str, int]:
    host, _sep, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface (also used to forward arguments to worker processes)."""
    p = argparse.ArgumentParser(
        description="Simulated NETCONF devices calling home over SSH (RFC 8071).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2] if __doc__ else None,
    )
    p.add_argument(
        "--listener", type=_hostport, help="call-home listener HOST:PORT (e.g. 127.0.0.1:4334)"
    )
    p.add_argument("--count", type=int, default=1, help="number of devices (default 1)")
    p.add_argument("--name-prefix", default="sim", help="device name prefix (sim -> sim0001...)")
    p.add_argument(
        "--keys-dir",
        type=Path,
        default=Path("sim-keys"),
        help="host keys: DIR/<name> (OpenSSH private) and DIR/<name>.pub, made once",
    )
    p.add_argument("--key-type", choices=sorted(KEY_ALGS), default="ed25519")
    p.add_argument(
        "--manifest", type=Path, help="write {name: {public_key, fingerprint}} JSON here"
    )
    p.add_argument("--user", default="netconf", help="username the listener must log in as")
    p.add_argument("--password", help="password accepted for --user")
    p.add_argument("--password-file", type=Path, help="read the password from this file")
    p.add_argument("--authorized-keys", type=Path, help="listener public keys accepted for --user")
    p.add_argument(
        "--retry", type=float, default=1.0, help="seconds before re-dialing after a drop"
    )
    p.add_argument("--no-reconnect", action="store_true", help="dial once per device only")
    p.add_argument(
        "--concurrency", type=int, default=0, help="max simultaneous dials (0 = no limit)"
    )
    p.add_argument("--stagger", type=float, default=0.0, help="seconds between device start times")
    p.add_argument(
        "--single-session", action="store_true", help="refuse a second concurrent channel"
    )
    p.add_argument(
        "--direct",
        type=_hostport,
        help="also serve direct SSH: device i listens on HOST:BASEPORT+i-1",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="MODE[=NAME,...]",
        help=f"fault mode for all (or the named) devices: {', '.join(FAULTS)}",
    )
    p.add_argument("--big-hello-mib", type=float, default=16.0, help="size for --fault big-hello")
    p.add_argument("--slow-delay", type=float, default=1.0, help="seconds per byte for slow-banner")
    p.add_argument(
        "--outbound-ssh-preamble",
        action="store_true",
        help="send the Junos outbound-ssh DEVICE-CONN-INFO preamble before SSH",
    )
    p.add_argument(
        "--outbound-ssh-host-key", action="store_true", help="add HOST-KEY to the preamble"
    )
    p.add_argument("--outbound-ssh-secret", help="add HMAC-SHA1(secret, HOST-KEY) to the preamble")
    p.add_argument(
        "--outbound-ssh-announce-keys",
        type=Path,
        help="announce in HOST-KEY the key of the same name from this directory, not the one the "
        "device proves in the SSH handshake",
    )
    p.add_argument(
        "--capability",
        action="append",
        default=None,
        help="capability besides base:1.0/1.1 (repeatable; default candidate, "
        "confirmed-commit:1.1, writable-running)",
    )
    p.add_argument(
        "--tls-cert", type=Path, help="call home over TLS (RFC 7589) with this device certificate (PEM)"
    )
    p.add_argument("--tls-key", type=Path, help="private key of --tls-cert (PEM)")
    p.add_argument(
        "--tls-ca", type=Path, help="CA the listener's client certificate must chain to (default: any)"
    )
    p.add_argument("--login-timeout", type=float, default=120.0)
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--keepalive-interval", type=float, default=0.0)
    p.add_argument(
        "--processes", type=int, default=1, help="split devices across K worker processes"
    )
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the parent process exits (set by start_simulator_process)",
    )
    p.add_argument("--worker-range", help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Turn parsed CLI arguments into a :class:`SimConfig`."""
    password = args.password
    if args.password_file is not None:
        password = args.password_file.read_text().rstrip("\n")
    first, last = 1, None
    if args.worker_range:
        a, _sep, b = args.worker_range.partition(":")
        first, last = int(a), int(b)
    return SimConfig(
        listener=args.listener,
        count=args.count,
        name_prefix=args.name_prefix,
        keys_dir=args.keys_dir,
        key_type=args.key_type,
        manifest=None if args.worker_range else args.manifest,
        user=args.user,
        password=password,
        authorized_keys=args.authorized_keys,
        retry=args.retry,
        concurrency=args.concurrency,
        stagger=args.stagger,
        single_session=args.single_session,
        direct=args.direct,
        faults=parse_faults(args.fault),
        outbound_ssh_preamble=args.outbound_ssh_preamble,
        outbound_ssh_host_key=args.outbound_ssh_host_key,
        outbound_ssh_secret=args.outbound_ssh_secret,
        outbound_ssh_announce_keys=args.outbound_ssh_announce_keys,
        big_hello_mib=args.big_hello_mib,
        slow_delay=args.slow_delay,
        capabilities=(
            tuple(args.capability) if args.capability is not None else DEFAULT_CAPABILITIES
        ),
        login_timeout=args.login_timeout,
        connect_timeout=args.connect_timeout,
        keepalive_interval=args.keepalive_interval,
        reconnect=not args.no_reconnect,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        first_index=first,
        last_index=last,
        verbose_events=False,
    )


def _print_line(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        pass


async def _watch_parent(stop: asyncio.Event) -> None:
    """Stop when the parent process dies, so a crashed test never leaves devices dialing."""
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            stop.set()


async def _run_single(cfg: SimConfig, exit_with_parent: bool = False) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sim = Simulator(cfg, out=_print_line)
    await sim.start()
    # Keys are loaded and every device task exists: benchmarks time the storm from here.
    _print_line(f"STARTED {len(sim.devices)} {time.time():.3f}")
    waits: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
    if exit_with_parent:
        waits.append(asyncio.create_task(_watch_parent(stop)))
    tasks = [d.task for d in sim.devices.values() if d.task is not None]
    if not cfg.reconnect and cfg.direct is None and tasks:
        # --no-reconnect: every device dials once; exit when all of them are done.
        waits.append(asyncio.create_task(asyncio.wait(tasks)))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    summary = await sim.stop()
    tag = "WORKER-SUMMARY" if cfg.last_index is not None else "SUMMARY"
    _print_line(f"{tag} {json.dumps(summary, sort_keys=True)}")
    return 0


async def _run_workers(argv: list[str], cfg: SimConfig, processes: int) -> int:
    """Parent of ``--processes K``: keys and manifest once, then K children; relay their lines."""
    names = cfg.names()
    keys = ensure_keys(cfg.keys_dir, names, cfg.key_type)
    if cfg.manifest is not None:
        write_manifest(cfg.manifest, keys)
    per = -(-cfg.count // processes)
    forward = _strip_processes(argv)
    children: list[asyncio.subprocess.Process] = []
    for w in range(processes):
        first, last = w * per + 1, min(cfg.count, (w + 1) * per)
        if first > last:
            break
        children.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(Path(__file__).resolve()),
                *forward,
                "--worker-range",
                f"{first}:{last}",
                stdout=subprocess.PIPE,
            )
        )
    summaries: list[dict[str, Any]] = []

    async def relay(child: asyncio.subprocess.Process) -> None:
        assert child.stdout is not None
        async for raw in child.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("WORKER-SUMMARY "):
                summaries.append(json.loads(line.split(" ", 1)[1]))
            else:
                _print_line(line)

    loop = asyncio.get_running_loop()

    def forward_signal(sig: int) -> None:
        for c in children:
            if c.returncode is None:
                c.send_signal(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, forward_signal, signal.SIGTERM)
    await asyncio.gather(*(relay(c) for c in children))
    await asyncio.gather(*(c.wait() for c in children))
    total: dict[str, Any] = {"workers": len(summaries)}
    for s in summaries:
        for k, v in s.items():
            if isinstance(v, (int, float)) and k != "uptime_s":
                total[k] = total.get(k, 0) + v
    _print_line(f"SUMMARY {json.dumps(total, sort_keys=True)}")
    return 0


def _strip_processes(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--processes":
            skip = True
            continue
        if a.startswith("--processes="):
            continue
        out.append(a)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.listener is None and args.direct is None:
        build_parser().error("need --listener and/or --direct")
    raise_nofile_limit()
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        build_parser().error(str(exc))
    if args.processes > 1 and not args.worker_range:
        return asyncio.run(_run_workers(argv, cfg, args.processes))
    return asyncio.run(_run_single(cfg, args.exit_with_parent or bool(args.worker_range)))


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: GPL-3.0-or-later
"""Drive ``lnc2-device``, a libnetconf2 (2.0.x or 3.x) NETCONF server that calls home (RFC 8071).

Why: the listener must be tested against a NETCONF implementation nobody here wrote. This module
builds (``make -C tests/peers``) and runs ``tests/peers/bin/lnc2-device`` as a subprocess,
captures its stderr event log, lets a test wait for a log line, and stops it (SIGTERM, then
SIGKILL) so no process outlives the test.

Device command line (see the comment at the top of ``libnetconf2/device.c``)::

    lnc2-device --name NAME --yang-dir DIR [--yang-dir DIR ...] [--verbose]
        [--ssh-ch HOST:PORT --hostkey PRIVKEY [--hostkey ...] --user USER
         (--authorized-key PUBFILE [...] | --password PW)]
        [--tls-ch HOST:PORT --tls-cert PEM --tls-key PEM --tls-ca CA_PEM [...]
         --ctn-fingerprint SHA256_FP [--ctn-user USER]]
        [--direct-ssh HOST:PORT]   (listening NETCONF over SSH, same SSH credentials)
        [--extra-channels accept|silent|refuse]

Extra SSH channels (``extra_channels``, issue 9): a client that already has a NETCONF session
over SSH may open another ``session`` channel with the ``netconf`` subsystem on the same SSH
connection. ``accept`` (default) starts a second NETCONF session on it (hello and all); ``silent``
accepts the channel and the subsystem request but never starts a NETCONF session there (no hello,
no answer; like devices that serve one NETCONF session per SSH connection); ``refuse`` answers the
channel-open request with SSH_MSG_CHANNEL_OPEN_FAILURE. Event lines: ``ch-ssh session N established
on a new channel`` / ``ch-ssh session N extra channel left silent`` (N: the session the channel
belongs to) / ``ssh extra channel refused``. Same on both libnetconf2 generations.

Pushed call-home configuration: the device accepts ``ietf-netconf-server`` XML in the shape of
revision 2023-12-28 (and advertises that revision in its hello) with :candidate,
:confirmed-commit:1.1 and :writable-running, and applies
``/netconf-server/call-home/netconf-client`` of its running datastore to its own call-home clients
whenever running changes. It does not load the ietf-netconf-server YANG modules: it stores that
subtree as XML (libyang opaque nodes) and runs its own checks (see the top comment of
``libnetconf2/device.c``). Its keystore holds the host keys as ``hostkey0``, ``hostkey1``, ...
(``Lnc2Device.hostkey_names``), the TLS key as ``tls-key`` with certificate ``tls-cert``; its
truststore the ``--tls-ca`` certificates as bag ``listener-ca``. Start a device without call home
but with ``direct_port`` and push configuration through :meth:`Lnc2Device.connect_direct`.

Typical use against a listener on 127.0.0.1::

    pki = make_pki(tmp_path / "pki", device_name="dev1")
    with Lnc2Device.from_pki(pki, ssh_port=listener_ssh_port, tls_port=listener_tls_port) as dev:
        dev.wait_for(r"ch-ssh session \\d+ established")

SSH: the listener (SSH client) must log in as ``username`` (default ``netconf``) with the private
key ``pki.listener_ssh_key.private_path`` (or ``password`` if given), and will see one of
``pki.host_keys`` as the device's host key. TLS: the listener (TLS client) must present
``pki.listener_cert`` (signed by ``pki.listener_ca``, which the device trusts, and mapped to
NETCONF user ``ctn_user`` by cert-to-name); the device presents ``pki.device_cert``
(CN = device name, signed by ``pki.device_ca``) or, with ``self_signed=True``,
``pki.device_self_signed``.

Event lines (stderr, one per event, prefix ``lnc2-device: ``): ``started name=.. pid=..``,
``ch-ssh connecting to H:P ...`` (once), ``ch-ssh connect attempt to H:P`` (each TCP attempt,
about once a second while nobody listens), ``ch-ssh tcp connected to H:P``,
``ssh password auth for user=.. accepted|rejected``, ``ch-ssh session N established client=..
user=.. host=.. port=..``, ``session N rpc <name>``, ``ch-ssh session N closed reason=..``, ``stopping``,
``stopped``; ``ch-tls`` likewise; libnetconf2's own warnings/errors as ``libnetconf2 WRN: ..``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peer_availability import PeerUnavailable  # noqa: E402
    from pki import TestPki  # noqa: E402
else:  # pragma: no cover - imported as a package module
    from .peer_availability import PeerUnavailable
    from .pki import TestPki

__all__ = (
    "PEERS_DIR",
    "DEVICE_BINARY",
    "EXTRA_CHANNEL_MODES",
    "PeerBuildError",
    "SshCallHome",
    "TlsCallHome",
    "DirectSsh",
    "Lnc2Device",
    "build_device",
    "default_yang_dirs",
    "free_port",
)

PEERS_DIR = Path(__file__).resolve().parent
# The build's output directory: tests/peers/bin, or CALLHOME_PEERS_BIN (also read by
# tests/peers/Makefile) when a second stack builds its own device (tests/stack2/run.sh).
PEERS_BIN = Path(os.environ.get("CALLHOME_PEERS_BIN") or PEERS_DIR / "bin")
DEVICE_BINARY = PEERS_BIN / "lnc2-device"
#: ``Lnc2Device(extra_channels=...)``: ``--extra-channels`` of the device
EXTRA_CHANNEL_MODES = ("accept", "silent", "refuse")
_REQUIRED_YANG = ("ietf-netconf.yang", "ietf-netconf-monitoring.yang", "ietf-inet-types.yang")


class PeerBuildError(PeerUnavailable):
    """``make -C tests/peers`` failed (for example libnetconf2-dev is missing); the message
    carries make's output so a test can skip with a useful reason (or fail, where peers are
    required: see :mod:`peer_availability`)."""


def build_device(timeout: float = 300.0) -> Path:
    """Build ``lnc2-device`` (idempotent; make only rebuilds on change) and return its path.

    :raises PeerBuildError: when make is missing or the build fails.
    """
    try:
        proc = subprocess.run(
            ["make", "-C", str(PEERS_DIR), f"BIN_DIR={PEERS_BIN}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerBuildError(f"cannot run make for tests/peers: {exc}") from exc
    if proc.returncode != 0 or not DEVICE_BINARY.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise PeerBuildError(f"building lnc2-device failed (rc={proc.returncode}):\n{tail}")
    return DEVICE_BINARY


def default_yang_dirs() -> list[Path]:
    """YANG directories holding ietf-netconf & co.

    Debian's libnetconf2 package ships no ietf-netconf.yang, so use pyang's copies
    (``share/yang/modules/ietf``: ietf-netconf, ietf-netconf-monitoring and their imports), found
    relative to the running interpreter's ``sys.prefix`` (the project venv) rather than a fixed
    path. The device's own module lives next to ``device.c`` and is found by the device itself.

    :raises FileNotFoundError: when pyang's module directory is not there.
    """
    candidates = [
        Path(sys.prefix) / "share" / "yang" / "modules" / "ietf",
        Path(sys.base_prefix) / "share" / "yang" / "modules" / "ietf",
    ]
    for cand in candidates:
        if all((cand / name).is_file() for name in _REQUIRED_YANG):
            return [cand]
    raise FileNotFoundError(
        "no directory with ietf-netconf.yang found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); install pyang into this Python environment"
    )


@dataclass(frozen=True)
class SshCallHome:
    """SSH call-home settings of the device.

    :ivar host: listener address (``127.0.0.1`` or ``::1``).
    :ivar port: listener's SSH call-home port.
    :ivar host_keys: device host key private key files.
    :ivar username: the username the listener must log in with.
    :ivar authorized_keys: public key files accepted for ``username``.
    :ivar password: password accepted for ``username`` (optional, may be combined with keys).
    """

    host: str
    port: int
    host_keys: Sequence[Path]
    username: str = "netconf"
    authorized_keys: Sequence[Path] = ()
    password: str | None = None

    def args(self) -> list[str]:
        """Command-line arguments for lnc2-device."""
        out = ["--ssh-ch", _hostport(self.host, self.port), "--user", self.username]
        for key in self.host_keys:
            out += ["--hostkey", str(key)]
        for pub in self.authorized_keys:
            out += ["--authorized-key", str(pub)]
        if self.password is not None:
            out += ["--password", self.password]
        return out


@dataclass(frozen=True)
class TlsCallHome:
    """TLS call-home settings of the device.

    :ivar host: listener address.
    :ivar port: listener's TLS call-home port.
    :ivar cert: device server certificate (PEM).
    :ivar key: its private key (PEM).
    :ivar trusted_certs: PEM certificates the device trusts for the listener's client
        certificate (normally the listener's CA).
    :ivar ctn_fingerprint: SHA-256 fingerprint (``AB:CD:..``) of the client certificate or of
        its CA, for cert-to-name.
    :ivar ctn_user: NETCONF username for a matching certificate; None maps the client
        certificate's common name.
    """

    host: str
    port: int
    cert: Path
    key: Path
    trusted_certs: Sequence[Path]
    ctn_fingerprint: str
    ctn_user: str | None = "netconf"

    def args(self) -> list[str]:
        """Command-line arguments for lnc2-device."""
        out = [
            "--tls-ch",
            _hostport(self.host, self.port),
            "--tls-cert",
            str(self.cert),
            "--tls-key",
            str(self.key),
            "--ctn-fingerprint",
            self.ctn_fingerprint,
        ]
        for ca in self.trusted_certs:
            out += ["--tls-ca", str(ca)]
        if self.ctn_user is not None:
            out += ["--ctn-user", self.ctn_user]
        return out


@dataclass(frozen=True)
class DirectSsh:
    """The device's listening (non-call-home) NETCONF over SSH endpoint (``--direct-ssh``).

    The SSH credentials are the same as for SSH call home; when the device also has
    :class:`SshCallHome` settings those are used and the ones here are ignored.

    :ivar host: address to listen on (loopback).
    :ivar port: port to listen on (pick one with :func:`free_port`).
    """

    host: str
    port: int
    host_keys: Sequence[Path]
    username: str = "netconf"
    authorized_keys: Sequence[Path] = ()
    password: str | None = None

    def args(self, with_credentials: bool = True) -> list[str]:
        """Command-line arguments for lnc2-device."""
        out = ["--direct-ssh", _hostport(self.host, self.port)]
        if with_credentials:
            out += ["--user", self.username]
            for key in self.host_keys:
                out += ["--hostkey", str(key)]
            for pub in self.authorized_keys:
                out += ["--authorized-key", str(pub)]
            if self.password is not None:
                out += ["--password", self.password]
        return out


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral TCP port that is free right now (for a server that cannot bind port 0 and
    report it, like lnc2-device's --direct-ssh)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class _Log:
    """Lines read from the device's stderr, shared between the reader thread and tests."""

    lines: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False


class Lnc2Device:
    """One running ``lnc2-device`` process; use as a context manager.

    The constructor only records settings; :meth:`start` (or ``with``) builds nothing and
    expects the binary to exist (call :func:`build_device` once per session first).
    """

    def __init__(
        self,
        name: str,
        *,
        ssh: SshCallHome | None = None,
        tls: TlsCallHome | None = None,
        direct: DirectSsh | None = None,
        yang_dirs: Sequence[Path] | None = None,
        verbose: bool = False,
        binary: Path = DEVICE_BINARY,
        log_file: Path | None = None,
        listener_key: Path | None = None,
        extra_channels: str = "accept",
    ) -> None:
        if ssh is None and tls is None and direct is None:
            raise ValueError("give ssh and/or tls call-home settings, or a direct endpoint")
        if extra_channels not in EXTRA_CHANNEL_MODES:
            raise ValueError(f"extra_channels must be one of {', '.join(EXTRA_CHANNEL_MODES)}")
        #: what the device does with further SSH channels of a session (module docstring)
        self.extra_channels = extra_channels
        self.name = name
        self.ssh = ssh
        self.tls = tls
        self.direct = direct
        #: private key that logs in to the direct endpoint (:meth:`connect_direct`)
        self.listener_key = listener_key
        self.yang_dirs = list(yang_dirs) if yang_dirs is not None else default_yang_dirs()
        self.verbose = verbose
        self.binary = binary
        self.log_file = log_file
        #: further command-line arguments (e.g. TLS credentials without --tls-ch)
        self.extra_args: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._log = _Log()

    @classmethod
    def from_pki(
        cls,
        pki: TestPki,
        *,
        host: str = "127.0.0.1",
        ssh_port: int | None = None,
        tls_port: int | None = None,
        username: str = "netconf",
        password: str | None = None,
        use_key: bool = True,
        self_signed: bool = False,
        direct_port: int | None = None,
        tls_credentials: bool = False,
        **kwargs: object,
    ) -> Lnc2Device:
        """A device configured from :func:`pki.make_pki` output.

        Direct (if ``direct_port``): listens for NETCONF over SSH on ``host:direct_port`` with
        the same host keys and credentials. ``tls_credentials`` gives the device its TLS
        certificate, key and trusted CA even without ``tls_port`` (for pushed TLS call home).

        SSH (if ``ssh_port``): all of ``pki.host_keys``; the listener logs in as ``username``
        with ``pki.listener_ssh_key`` (if ``use_key``) and/or ``password``.
        TLS (if ``tls_port``): presents ``pki.device_cert`` (or ``pki.device_self_signed``),
        trusts ``pki.listener_ca`` and maps ``pki.listener_cert`` to ``username``.
        """
        ssh = None
        if ssh_port is not None:
            ssh = SshCallHome(
                host=host,
                port=ssh_port,
                host_keys=[k.private_path for k in pki.host_keys.values()],
                username=username,
                authorized_keys=[pki.listener_ssh_key.public_path] if use_key else [],
                password=password,
            )
        tls = None
        if tls_port is not None:
            cert = pki.device_self_signed if self_signed else pki.device_cert
            tls = TlsCallHome(
                host=host,
                port=tls_port,
                cert=cert.cert_path,
                key=cert.key_path,
                trusted_certs=[pki.listener_ca.cert_path],
                ctn_fingerprint=pki.listener_cert.fingerprint,
                ctn_user=username,
            )
        direct = None
        if direct_port is not None:
            direct = DirectSsh(
                host=host,
                port=direct_port,
                host_keys=[k.private_path for k in pki.host_keys.values()],
                username=username,
                authorized_keys=[pki.listener_ssh_key.public_path] if use_key else [],
                password=password,
            )
        extra: list[str] = []
        if tls_credentials and tls is None:
            cert = pki.device_self_signed if self_signed else pki.device_cert
            extra = ["--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path),
                     "--tls-ca", str(pki.listener_ca.cert_path)]
        dev = cls(
            pki.device_name,
            ssh=ssh,
            tls=tls,
            direct=direct,
            listener_key=pki.listener_ssh_key.private_path if use_key else None,
            **kwargs,  # type: ignore[arg-type]
        )
        dev.extra_args = extra
        return dev

    # ------------------------------------------------------------------ process control

    def command(self) -> list[str]:
        """The full argv the device is started with."""
        argv = [str(self.binary), "--name", self.name]
        for d in self.yang_dirs:
            argv += ["--yang-dir", str(d)]
        if self.verbose:
            argv.append("--verbose")
        if self.ssh is not None:
            argv += self.ssh.args()
        if self.tls is not None:
            argv += self.tls.args()
        if self.direct is not None:
            argv += self.direct.args(with_credentials=self.ssh is None)
        if self.extra_channels != "accept":
            argv += ["--extra-channels", self.extra_channels]
        return argv + list(self.extra_args)

    def start(self, timeout: float = 10.0) -> Lnc2Device:
        """Start the process and wait for its ``started`` line.

        :raises RuntimeError: when it exits or does not report ``started`` in time.
        """
        if self._proc is not None:
            raise RuntimeError("device already started")
        if not self.binary.exists():
            raise FileNotFoundError(f"{self.binary} missing; call build_device() first")
        self._log = _Log()
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # keep terminal signals (Ctrl-C) away from it
        )
        assert self._proc.stderr is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._proc.stderr,), name=f"lnc2-{self.name}", daemon=True
        )
        self._reader.start()
        try:
            self.wait_for(r"^lnc2-device: started ", timeout=timeout)
            if self.direct is not None:
                self.wait_for(r"^lnc2-device: direct-ssh listening on ", timeout=timeout)
        except Exception:
            self.stop()
            raise
        return self

    def _read(self, stream: IO[bytes]) -> None:
        sink = self.log_file.open("a", encoding="utf-8") if self.log_file else None
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if sink is not None:
                    sink.write(line + "\n")
                    sink.flush()
                with self._log.cond:
                    self._log.lines.append(line)
                    self._log.cond.notify_all()
        finally:
            if sink is not None:
                sink.close()
            with self._log.cond:
                self._log.closed = True
                self._log.cond.notify_all()

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        if proc.stderr is not None:
            proc.stderr.close()
        return proc.returncode

    def __enter__(self) -> Lnc2Device:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ direct endpoint

    @property
    def direct_port(self) -> int | None:
        """Port of the listening NETCONF/SSH endpoint, or None without one."""
        return self.direct.port if self.direct is not None else None

    @property
    def hostkey_names(self) -> list[str]:
        """Keystore names of the host keys (``hostkey0``, ...), in ``--hostkey`` order: what
        pushed configuration references as ``central-keystore-reference``."""
        keys = self.ssh.host_keys if self.ssh is not None else self.direct.host_keys if self.direct else []
        return [f"hostkey{i}" for i in range(len(keys))]

    def connect_direct(self, timeout: float = 15.0) -> Any:
        """An ncclient manager on the direct endpoint (the caller closes it).

        Logs in with :attr:`listener_key` (or the password), without checking the host key: the
        device's host keys are test keys made for this run.
        """
        from ncclient import manager  # imported late: only tests that push configuration need it

        if self.direct is None:
            raise RuntimeError("the device has no direct endpoint (direct_port)")
        creds = self.ssh or self.direct
        kwargs: dict[str, Any] = {}
        if self.listener_key is not None:
            kwargs["key_filename"] = str(self.listener_key)
        if creds.password is not None:
            kwargs["password"] = creds.password
        return manager.connect(
            host=self.direct.host,
            port=self.direct.port,
            username=creds.username,
            hostkey_verify=False,
            allow_agent=False,
            look_for_keys=False,
            timeout=timeout,
            **kwargs,
        )

    def running_config(self, source: str = "running", timeout: float = 15.0) -> str:
        """The device's ``source`` datastore (``running`` or ``candidate``) as XML text, read
        over a fresh direct session."""
        with self.connect_direct(timeout) as mgr:
            return str(mgr.get_config(source).data_xml)

    @property
    def pid(self) -> int | None:
        """Process id while running (None before start)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status once the process ended, else None."""
        return self._proc.poll() if self._proc is not None else None

    # ------------------------------------------------------------------ log access

    @property
    def lines(self) -> list[str]:
        """A copy of all log lines so far."""
        with self._log.cond:
            return list(self._log.lines)

    @property
    def log(self) -> str:
        """The whole log so far, for assertion messages."""
        return "\n".join(self.lines)

    def mark(self) -> int:
        """Current number of log lines; pass to :meth:`wait_for` (``since=``) to only look at
        lines logged after this point."""
        with self._log.cond:
            return len(self._log.lines)

    def count(self, pattern: str | re.Pattern[str], since: int = 0) -> int:
        """How many log lines (from index ``since``) match ``pattern`` (``re.search``)."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        return sum(1 for line in self.lines[since:] if rx.search(line))

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float = 10.0, since: int = 0
    ) -> re.Match[str]:
        """Block until a log line at index >= ``since`` matches ``pattern``; return the match.

        :raises TimeoutError: with the log so far, if nothing matched in ``timeout`` seconds
            or the process exited first.
        """
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        idx = since
        with self._log.cond:
            while True:
                while idx < len(self._log.lines):
                    m = rx.search(self._log.lines[idx])
                    idx += 1
                    if m:
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._log.closed:
                    why = "device exited" if self._log.closed else f"{timeout}s timeout"
                    raise TimeoutError(
                        f"no log line matching {rx.pattern!r} ({why}); log:\n"
                        + "\n".join(self._log.lines)
                    )
                self._log.cond.wait(remaining)

    async def await_line(
        self, pattern: str | re.Pattern[str], timeout: float = 10.0, since: int = 0
    ) -> re.Match[str]:
        """:meth:`wait_for` for coroutines: waits in a worker thread so the event loop (and
        the test's own listener running on it) keeps going."""
        return await asyncio.to_thread(self.wait_for, pattern, timeout, since)


if __name__ == "__main__":  # pragma: no cover - manual smoke run
    print(build_device())
    print(os.pathsep.join(str(p) for p in default_yang_dirs()))

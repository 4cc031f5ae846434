# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Client of the listener's control protocol.

Stdlib only: modules, the connection plugin, the inventory plugin
and the ``callhome-listener`` command line all talk to the listener through this.

Protocol: newline-delimited JSON over a Unix socket (mode 0600) or, for remote listeners
(AWX, containers), over TCP with TLS and a bearer token. A request is one line
``{"op": "<name>", ...arguments}``; the answer is one line ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"code", "message", "details"}}``. After a successful ``lease`` answer
the same connection stops carrying JSON and carries the raw NETCONF session (the client sends
its ``<hello>`` first, exactly as over SSH), until either side closes it.
"""

from __future__ import annotations

import errno
import json
import os
import random
import socket
import ssl
import time
import typing as t

from netconf_callhome.control.instance import LOCK_NAME, holder
from netconf_callhome.errors import (
    ControlError,
    ListenerBusyError,
    ListenerUnreachableError,
    error_from_dict,
)

from netconf_callhome.paths import ENV_HOME, default_home

MAX_LINE = 16 * 1024 * 1024
# A listener whose trust store is the shared database (state_url on PostgreSQL) leaves this file
# next to its control socket, holding the database's URL (redacted). A client that finds it and no
# listener answering must not write the trust store file instead: no node would read it.
SHARED_STORE_MARKER = "shared-trust-store"
# Retrying a connection a busy listener did not accept yet: short first, then at most this
# often, with jitter so that a thousand refused clients do not come back in one wave.
_RETRY_FIRST = 0.005
_RETRY_MAX = 0.1
# Operations that may be sent again when a remote listener dropped the connection before any
# answer: reading ones, and those whose half-done effect ends with the connection (a lease, an
# endpoint that idles out). Any operation is retried when the drop came before it was sent.
_RETRY_SAFE = frozenset(("ping", "status", "devices", "device", "pending", "wait", "endpoint", "lease"))


class _Dropped(ControlError):
    """The listener closed or reset the connection before answering. A remote listener does that
    to connections it has not authenticated yet when too many arrive at once
    (``control_tcp.max_unauthenticated``): nothing was run for them."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


def shared_store_of(address: ControlAddress) -> t.Optional[str]:
    """The shared trust store (redacted URL) the listener at a local ``address`` uses, from
    :data:`SHARED_STORE_MARKER` (it stays while that listener is stopped: its store is still the
    database), or None (a single node, a remote address, or no listener ever ran there)."""
    if address.kind != "unix":
        return None
    try:
        with open(os.path.join(os.path.dirname(address.path), SHARED_STORE_MARKER), "r", encoding="utf-8") as handle:
            return handle.read().strip() or "the shared database"
    except OSError:
        return None


def default_control_address() -> str:
    return "unix:" + os.path.join(default_home(), "control.sock")


class ControlAddress(t.NamedTuple):
    kind: str  # "unix" or "tls"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return "unix:%s" % self.path if self.kind == "unix" else "tls://%s:%d" % (self.host, self.port)


def parse_address(address: str) -> ControlAddress:
    """``/path``, ``unix:/path``, or ``tls://host:port`` (``[v6]:port`` for IPv6)."""
    address = address.strip()
    if address.startswith("tls://") or address.startswith("tcp+tls://"):
        hostport = address.split("://", 1)[1].rstrip("/")
        if hostport.startswith("["):
            host, _sep, rest = hostport[1:].partition("]")
            port_s = rest.lstrip(":")
        else:
            host, _sep, port_s = hostport.rpartition(":")
        if not host or not port_s.isdigit():
            raise ControlError("listener address %r must be tls://HOST:PORT" % address)
        return ControlAddress("tls", host=host, port=int(port_s))
    if address.startswith("unix:"):
        address = address[5:]
    if not address.startswith("/"):
        address = os.path.abspath(os.path.expanduser(address))
    return ControlAddress("unix", path=address)


class ControlClient:
    """One request per connection; cheap enough (a local socket) and it keeps failures simple."""

    def __init__(
        self,
        address: t.Optional[str] = None,
        *,
        token: t.Optional[str] = None,
        timeout: float = 30.0,
        tls_ca_file: t.Optional[str] = None,
        tls_verify: bool = True,
    ) -> None:
        self.address = parse_address(address or default_control_address())
        self.token = token
        self.timeout = timeout
        self.tls_ca_file = tls_ca_file
        self.tls_verify = tls_verify

    def _open(self, timeout: float) -> socket.socket:
        try:
            if self.address.kind == "unix":
                return self._open_unix(timeout)
            raw = socket.create_connection((self.address.host, self.address.port), timeout=timeout)
            ctx = ssl.create_default_context(cafile=self.tls_ca_file)
            if not self.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            try:
                return ctx.wrap_socket(raw, server_hostname=self.address.host)
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError) as exc:
                raw.close()  # accepted, then dropped during the handshake: a busy listener
                raise _Dropped("listener at %s dropped the connection during the TLS handshake: %s" % (self.address, exc), sent=False) from None
            except BaseException:
                raw.close()
                raise
        except (OSError, ssl.SSLError) as exc:
            raise ListenerUnreachableError(
                "no call-home listener answers at %s: %s" % (self.address, getattr(exc, "strerror", None) or exc),
                details={"address": str(self.address)},
            ) from None

    def _exchange(
        self, op: str, args: t.Mapping[str, t.Any], wait: float, answer_timeout: t.Callable[[float], float]
    ) -> t.Tuple[socket.socket, t.Any]:
        """Open, send one request, read its answer; the open socket and the result.

        A remote listener's drop before the answer is retried within ``wait`` s (see _Dropped and
        _RETRY_SAFE) and ends as :class:`ListenerBusyError`; ``answer_timeout(remaining)`` is the
        socket timeout while the answer is awaited.
        """
        deadline = time.monotonic() + wait
        delay = _RETRY_FIRST
        attempts = 0
        while True:
            attempts += 1
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                sock = self._open(remaining)
            except _Dropped as exc:
                dropped = exc
            else:
                try:
                    sock.settimeout(answer_timeout(max(deadline - time.monotonic(), 0.001)))
                    return sock, self._request(sock, op, args)
                except _Dropped as exc:
                    sock.close()
                    dropped = exc
                except BaseException:
                    sock.close()
                    raise
            retry = self.address.kind == "tls" and (not dropped.sent or op in _RETRY_SAFE)
            if not retry:
                raise ControlError(dropped.message) from None
            if time.monotonic() + delay >= deadline:
                raise ListenerBusyError(
                    "the call-home listener at %s dropped the connection before answering %r %d times within "
                    "%.1f s (too many unauthenticated connections at once? see its log for "
                    "event=control.unauthenticated_limit); last: %s" % (self.address, op, attempts, wait, dropped.message),
                    details={"address": str(self.address), "attempts": attempts},
                ) from None
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, _RETRY_MAX)

    def _open_unix(self, timeout: float) -> socket.socket:
        """Connect, retrying while a listener holds the socket but does not accept yet.

        A full accept backlog makes a Unix ``connect`` fail at once with EAGAIN (it does not
        wait), and a listener between ``bind`` and ``listen`` refuses: both are a busy listener,
        not a missing one, and end as :class:`ListenerBusyError` when ``timeout`` runs out.
        ECONNREFUSED with nobody holding the home's instance lock is a stale socket file.
        """
        path = self.address.path
        deadline = time.monotonic() + timeout
        delay = _RETRY_FIRST
        attempts = 0
        while True:
            attempts += 1
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                sock.connect(path)
                return sock
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EAGAIN:
                    busy = "its accept backlog is full"
                elif exc.errno == errno.ECONNREFUSED and self._lock_holder() is not None:
                    busy = "it is not accepting connections yet"
                else:
                    raise
            except BaseException:
                sock.close()
                raise
            if time.monotonic() + delay >= deadline:
                owner = self._lock_holder()
                raise ListenerBusyError(
                    "the call-home listener at %s is busy: %s and it did not accept this connection within "
                    "%.1f s (%d attempts)%s; retry later or raise the client's timeout"
                    % (self.address, busy, timeout, attempts, " (pid %d)" % owner.pid if owner and owner.pid else ""),
                    details={"address": str(self.address), "attempts": attempts},
                )
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, _RETRY_MAX)

    def _lock_holder(self) -> t.Any:
        """The listener holding the instance lock next to the socket (its home), if any."""
        return holder(os.path.join(os.path.dirname(self.address.path), LOCK_NAME))

    def _request(self, sock: socket.socket, op: str, args: t.Mapping[str, t.Any]) -> t.Any:
        payload = dict(args)
        payload["op"] = op
        if self.token:
            payload["token"] = self.token
        try:
            sock.sendall(json.dumps(payload).encode("utf-8") + b"\n")
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise _Dropped("listener at %s closed the connection before reading %r: %s" % (self.address, op, exc), sent=False) from None
        try:
            line = _read_line(sock)
        except ConnectionResetError as exc:
            raise _Dropped("listener at %s reset the connection before answering %r: %s" % (self.address, op, exc), sent=True) from None
        try:
            answer = json.loads(line)
        except ValueError:
            raise ControlError("listener sent a malformed answer to %r" % op) from None
        if not answer.get("ok"):
            raise error_from_dict(answer.get("error") or {})
        return answer.get("result")

    def call(self, op: str, *, timeout: t.Optional[float] = None, **args: t.Any) -> t.Any:
        """Run one control operation; ``timeout`` bounds the whole exchange."""
        wait = self.timeout if timeout is None else timeout
        try:
            sock, result = self._exchange(op, args, wait, lambda remaining: remaining)
        except socket.timeout:
            raise ControlError("listener at %s did not answer %r within %.0f s" % (self.address, op, wait)) from None
        except OSError as exc:
            raise ControlError("connection to listener at %s failed during %r: %s" % (self.address, op, exc)) from None
        sock.close()
        return result

    def lease(self, device: str, *, wait: float = 0.0, **args: t.Any) -> t.Tuple[socket.socket, t.Dict[str, t.Any]]:
        """Lease a NETCONF session on ``device``; returns the socket now carrying NETCONF.

        ``wait`` is how long the listener waits for the device to call home first.
        The lease ends when the socket is closed.
        """
        sock, info = self._exchange(
            "lease", dict(args, device=device, wait=wait), self.timeout, lambda _remaining: wait + self.timeout
        )
        sock.settimeout(None)
        return sock, info


def _read_line(sock: socket.socket) -> bytes:
    """Read one newline-terminated line without consuming bytes past it (NETCONF may follow)."""
    chunks = []
    size = 0
    while True:
        byte_run = sock.recv(1) if isinstance(sock, ssl.SSLSocket) else _recv_until_newline(sock)
        if not byte_run:
            if size:
                raise ControlError("listener closed the control connection in the middle of its answer")
            raise _Dropped("listener closed the control connection without an answer", sent=True)
        chunks.append(byte_run)
        size += len(byte_run)
        if byte_run.endswith(b"\n"):
            return b"".join(chunks)
        if size > MAX_LINE:
            raise ControlError("listener answer exceeds %d bytes" % MAX_LINE)


def _recv_until_newline(sock: socket.socket) -> bytes:
    # Peek so that bytes after the newline (the device's hello) stay in the socket for ncclient.
    peek = sock.recv(65536, socket.MSG_PEEK)
    if not peek:
        return b""
    end = peek.find(b"\n")
    return sock.recv(len(peek) if end < 0 else end + 1)


__all__ = (
    "ENV_HOME",
    "MAX_LINE",
    "SHARED_STORE_MARKER",
    "ControlAddress",
    "ControlClient",
    "default_control_address",
    "default_home",
    "parse_address",
    "shared_store_of",
)

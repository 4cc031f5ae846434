# SPDX-License-Identifier: GPL-3.0-or-later
"""What the transports need from the rest of the listener, as narrow interfaces.

The transports (SSH, TLS, outbound-ssh) never hold the service: they ask :class:`Admission`
whether to spend anything on a connection, and report through :class:`TransportEvents`. The
service implements both (it is the composition root); tests can give a transport small fakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Protocol, Sequence

if TYPE_CHECKING:
    import asyncssh

    from netconf_callhome.protocol.session import HeldSession


class Admission(Protocol):
    """Turn peers away before any work: blocked addresses, no free handshake slot."""

    def is_blocked(self, peer_ip: str) -> bool: ...

    def acquire(self, peer: str) -> bool: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class SSHLogin:
    """A verified SSH device and the credentials the listener logs in to it with."""

    device: str
    fingerprint: str
    username: str
    keys: Sequence["asyncssh.SSHKey"]
    read_password: Callable[[], Optional[str]]


@dataclass(frozen=True)
class VerifiedDevice:
    """A device whose certificate the policy accepted."""

    device: str
    fingerprint: str


@dataclass(frozen=True)
class HandshakeFailure:
    """A connection that did not become a held session, classified by the transport.

    ``reason`` is a stable code (``timeout``, ``auth-failed``, ``host-key``, ``protocol``,
    ``connection-lost``, ``handshake``, ...); ``device`` is empty when trust was never decided.
    """

    transport: str
    peer: str
    reason: str
    message: str
    device: str = ""


class TransportEvents(Protocol):
    """Decisions and outcomes the transports hand upward."""

    def ssh_host_key(self, key: "asyncssh.SSHKey", *, peer: str, device_id: str) -> Optional[SSHLogin]:
        """The login for a verified host key; None when refused (already recorded as pending)."""

    def tls_certificate(self, chain: Sequence[bytes], *, peer: str) -> Optional[VerifiedDevice]:
        """The device of a verified certificate chain; None when refused (recorded as pending)."""

    def handshake_failed(self, failure: HandshakeFailure) -> None: ...

    def session_ready(self, held: "HeldSession", *, started: float, auth: str) -> None: ...

    def spawn(self, awaitable: Awaitable[Any]) -> None:
        """Run a task owned by the listener (cancelled when it stops)."""

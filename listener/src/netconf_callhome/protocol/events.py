# SPDX-License-Identifier: GPL-3.0-or-later
"""What the transports need from the rest of the listener, as narrow interfaces.

The transports (SSH, TLS, outbound-ssh) never hold the service: they ask :class:`Admission`
whether to spend anything on a connection, and report through :class:`TransportEvents`. The
service implements both (it is the composition root); tests can give a transport small fakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Protocol, Sequence

from netconf_callhome.errors import CallHomeError, HandshakeError, handshake_error

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


@dataclass(frozen=True, init=False)
class HandshakeFailure:
    """A connection that did not become a held session, classified by the transport.

    ``error`` is the failure in the error hierarchy (an :class:`~netconf_callhome.errors.HandshakeError`
    subclass such as ``AuthFailedError``, or the CallHomeError the session raised); ``reason``
    is its stable code (``timeout``, ``auth-failed``, ``host-key``, ``protocol``,
    ``connection-lost``, ...), the word logs, metrics and address blocking use. ``device`` is
    empty when trust was never decided. A transport gives ``error``, or ``reason`` and
    ``message`` (mapped to the class of that code by :func:`~netconf_callhome.errors.handshake_error`).
    """

    transport: str
    peer: str
    error: CallHomeError
    device: str = ""

    def __init__(
        self,
        transport: str,
        peer: str,
        error: Optional[CallHomeError] = None,
        device: str = "",
        *,
        reason: str = "",
        message: str = "",
    ) -> None:
        if error is None:
            error = handshake_error(reason or HandshakeError.code, message)
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "peer", peer)
        object.__setattr__(self, "error", error)
        object.__setattr__(self, "device", device)

    @property
    def reason(self) -> str:
        return self.error.code

    @property
    def message(self) -> str:
        return self.error.message


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

# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one exception hierarchy of netconf.callhome.

**PRIVATE** to the collection. The listener raises these; the Ansible edge (connection plugin,
modules) maps them to ``AnsibleConnectionFailure`` / ``fail_json``. Every error carries a stable
machine-readable ``code`` (it crosses the control socket as JSON) and optional ``details``.
"""

from __future__ import annotations

import typing as t


class CallHomeError(Exception):
    """Base class: every failure the collection reports on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, details: t.Optional[t.Dict[str, t.Any]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: t.Dict[str, t.Any] = dict(details or {})

    def to_dict(self) -> t.Dict[str, t.Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class ConfigError(CallHomeError):
    """The listener or a module was given a configuration that cannot work."""

    code = "config"


class TrustStoreError(CallHomeError):
    """The trust store file cannot be read, parsed or written."""

    code = "trust-store"


class UnknownKeyError(CallHomeError):
    """A device presented a host key or certificate that is not enrolled."""

    code = "unknown-key"


class KeyMismatchError(CallHomeError):
    """A device presented a key different from the one enrolled for it."""

    code = "key-mismatch"


class HandshakeError(CallHomeError):
    """SSH/TLS/NETCONF hello did not complete (timeout, garbage, protocol error).

    The transports classify every failed call home into this branch (``HandshakeFailure.error``);
    a subclass's ``code`` is the failure's reason in logs, metrics and address blocking
    (``reason=timeout``, ``netconf_callhome_failures_total{reason=...}``), so codes never change.
    """

    code = "handshake"

    def __init__(self, message: str, *, details: t.Optional[t.Dict[str, t.Any]] = None, code: str = "") -> None:
        super().__init__(message, details=details)
        if code:
            # A reason no subclass names yet (a transport's own code, e.g. ``proxy-malformed``):
            # still a HandshakeError, under its own code.
            self.code = code


class AuthFailedError(HandshakeError):
    """The listener could not authenticate to the device with its credentials (SSH user auth
    refused, RESTCONF 401/403)."""

    code = "auth-failed"


class HandshakeTimeoutError(HandshakeError):
    """The call home did not complete within ``handshake_timeout``."""

    code = "timeout"


class ConnectionLostError(HandshakeError):
    """The device closed or reset the connection before a session was held."""

    code = "connection-lost"


class PeerProtocolError(HandshakeError):
    """The device broke its protocol (SSH, HTTP) during the call home."""

    code = "protocol"


class SSHLibraryError(HandshakeError):
    """asyncssh reported an SSH failure none of the other classes describe."""

    code = "ssh-error"


class IdentityRefusedError(HandshakeError):
    """The device's host key or certificate is not trusted (recorded as a pending key)."""

    code = "host-key"


class EnrollFailedError(HandshakeError):
    """A zero-touch enrollment (outbound-ssh secret) did not reach the trust store in time."""

    code = "enroll-failed"


class TransportPinnedError(HandshakeError):
    """A verified device called on a transport other than the one it is pinned to."""

    code = "transport-pinned"


class OutboundSSHPreambleError(HandshakeError):
    """An outbound-ssh device's preamble (MSG-ID/DEVICE-ID/HMAC) was refused."""

    code = "outbound-ssh-preamble"


class HandshakeCancelledError(HandshakeError):
    """The call home was cut short because the listener is stopping."""

    code = "cancelled"


class UnexpectedHandshakeError(HandshakeError):
    """A failure no transport expected (a bug or an unusual OS error): its type is in the message."""

    code = "error"


class SSHBannerError(HandshakeError):
    """The peer answered the listener's ClientHello with an SSH banner: an SSH device where TLS
    was started (on a TLS port, or on the single call-home port after ``callhome_silence``)."""

    code = "ssh-banner"


class FramingError(CallHomeError):
    """A NETCONF message violates RFC 6242 framing or is not acceptable XML."""

    code = "framing"


class MessageTooLargeError(FramingError):
    """A NETCONF message exceeded the configured size limit."""

    code = "message-too-large"


class ControlError(CallHomeError):
    """The control socket request failed (bad request, unknown operation)."""

    code = "control"


class ListenerUnreachableError(ControlError):
    """No listener answers at the configured control address."""

    code = "listener-unreachable"


class ListenerBusyError(ControlError):
    """A listener holds the control socket but did not accept the connection in time (its
    backlog is full or it is still starting): retry later. Not ``ListenerUnreachableError``, so
    nobody starts a second listener because one is busy."""

    code = "listener-busy"


class NodeUnreachableError(ControlError):
    """Scale-out: the node holding a device does not answer on the node-to-node channel
    (control.cluster); the device's session is there, so no other node can serve it until it
    calls another node."""

    code = "node-unreachable"


class RequestTooLargeError(ControlError):
    """A control request line is longer than the endpoint accepts."""

    code = "request-too-large"


class ListenerRunningError(CallHomeError):
    """Another listener holds this state directory (its instance lock), or an address it needs."""

    code = "listener-running"


class StateStoreError(CallHomeError):
    """The state database cannot be opened or has a schema this listener cannot use."""

    code = "state-store"


class NotAuthorizedError(ControlError):
    """The control client did not present a valid token."""

    code = "not-authorized"


class DeviceNotFoundError(ControlError):
    """The listener has never heard of the named device."""

    code = "device-not-found"


class WaitTimeoutError(ControlError):
    """The device did not call home (or was not ready) within the timeout."""

    code = "timeout"


class DeviceNotReadyError(ControlError):
    """The device is known but has no usable session (refused key, auth failure...)."""

    code = "device-not-ready"


class LeaseError(ControlError):
    """A NETCONF session could not be leased or was lost during the lease."""

    code = "lease"


class RestconfError(CallHomeError):
    """RESTCONF call home (RFC 8071 section 3.2): a request to the device did not succeed."""

    code = "restconf"


class RestconfProtocolError(RestconfError):
    """The device broke HTTP/2 or HTTP/1.1 (bad frame, bad header, unexpected bytes); the
    connection is closed."""

    code = "restconf-protocol"


class RestconfConnectionLostError(RestconfError):
    """The device's RESTCONF connection ended (or went away with GOAWAY) before the answer."""

    code = "restconf-connection-lost"


class RestconfTimeoutError(RestconfError):
    """The device did not answer a request (or a ping) within the timeout."""

    code = "restconf-timeout"


class RestconfResponseTooLargeError(RestconfError):
    """A response's header block or body exceeded the configured bound."""

    code = "restconf-too-large"


class RestconfContentError(RestconfError):
    """A response body is not what RESTCONF promises (malformed JSON/XML, missing members)."""

    code = "restconf-content"


class RestconfStatusError(RestconfError):
    """The device answered with an HTTP error status; ``details`` has ``status`` and ``path``."""

    code = "restconf-status"


_E = t.TypeVar("_E", bound=CallHomeError)


def _index(cls: t.Type[_E], by_code: t.Dict[str, t.Type[_E]]) -> None:
    """``cls`` and its subclasses by code into ``by_code`` (the first class of a code stays)."""
    by_code.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub, by_code)


_BY_CODE: t.Dict[str, t.Type[CallHomeError]] = {}
# Control errors first: they cross the control socket, and a handshake reason that shares their
# code (``timeout``, never sent to a client) must not shadow them.
_index(ControlError, _BY_CODE)
_index(CallHomeError, _BY_CODE)

# The handshake reasons by code: how a transport's failure (HandshakeFailure) becomes a class.
_HANDSHAKE_BY_CODE: t.Dict[str, t.Type[HandshakeError]] = {}
_index(HandshakeError, _HANDSHAKE_BY_CODE)


def handshake_error(reason: str, message: str) -> HandshakeError:
    """The HandshakeError for a reason code: its subclass when one names it, else a
    HandshakeError carrying the code (the transports' own reasons, e.g. ``proxy-malformed``)."""
    cls = _HANDSHAKE_BY_CODE.get(reason)
    if cls is not None:
        return cls(message)
    return HandshakeError(message, code=reason)


def error_from_dict(data: t.Mapping[str, t.Any]) -> CallHomeError:
    """Rebuild the error a peer sent as ``{"code", "message", "details"}``."""
    cls = _BY_CODE.get(str(data.get("code", "")), CallHomeError)
    return cls(str(data.get("message", "unknown error")), details=data.get("details") or {})

# SPDX-License-Identifier: GPL-3.0-or-later
"""The transports classify their failures into the error hierarchy (errors.HandshakeError's
branch); the reason code logs, metrics and address blocking use is the class's code."""

from __future__ import annotations

import asyncio
import ssl
from types import SimpleNamespace
from typing import Any, List, Optional

import asyncssh
import pytest

from netconf_callhome import errors
from netconf_callhome.errors import (
    AuthFailedError,
    ConfigError,
    ConnectionLostError,
    HandshakeCancelledError,
    HandshakeError,
    HandshakeTimeoutError,
    IdentityRefusedError,
    PeerProtocolError,
    RestconfConnectionLostError,
    RestconfProtocolError,
    RestconfStatusError,
    RestconfTimeoutError,
    SSHLibraryError,
    UnexpectedHandshakeError,
    WaitTimeoutError,
)
from netconf_callhome.protocol import restconf, ssh
from netconf_callhome.protocol.events import HandshakeFailure


@pytest.mark.parametrize(
    "exc, cls, code",
    [
        (None, ConnectionLostError, "connection-lost"),
        (asyncssh.PermissionDenied("no"), AuthFailedError, "auth-failed"),
        (asyncssh.HostKeyNotVerifiable("no"), IdentityRefusedError, "host-key"),
        (asyncio.TimeoutError(), HandshakeTimeoutError, "timeout"),
        (asyncssh.ProtocolError(asyncssh.DISC_PROTOCOL_ERROR, "bad packet"), PeerProtocolError, "protocol"),
        (asyncssh.ConnectionLost("Connection timeout"), HandshakeTimeoutError, "timeout"),
        (asyncssh.ConnectionLost("reset"), ConnectionLostError, "connection-lost"),
        (ConnectionResetError(104, "reset"), ConnectionLostError, "connection-lost"),
        (asyncssh.KeyExchangeFailed("no kex"), SSHLibraryError, "ssh-error"),
        (ValueError("oops"), UnexpectedHandshakeError, "error"),
    ],
)
def test_ssh_failures_are_handshake_errors(exc: Optional[BaseException], cls: type, code: str) -> None:
    error = ssh.ssh_failure(exc)
    assert error.__class__ is cls and isinstance(error, HandshakeError)
    assert error.code == code and error.message


def test_ssh_classify_keeps_our_own_errors() -> None:
    raised = ConfigError("cannot read the password file")
    assert ssh.classify(raised) is raised
    assert isinstance(ssh.classify(asyncssh.PermissionDenied("no")), AuthFailedError)


@pytest.mark.parametrize(
    "exc, cls, code",
    [
        (RestconfTimeoutError("no answer"), HandshakeTimeoutError, "timeout"),
        (TimeoutError(), HandshakeTimeoutError, "timeout"),
        (RestconfStatusError("HTTP 401", details={"status": 401}), AuthFailedError, "auth-failed"),
        (RestconfStatusError("HTTP 403", details={"status": 403}), AuthFailedError, "auth-failed"),
        (RestconfStatusError("HTTP 500", details={"status": 500}), PeerProtocolError, "protocol"),
        (RestconfConnectionLostError("GOAWAY"), ConnectionLostError, "connection-lost"),
        (RestconfProtocolError("bad frame"), PeerProtocolError, "protocol"),
        (ssl.SSLError("bad cert"), HandshakeError, "handshake"),
        (EOFError(), ConnectionLostError, "connection-lost"),
        (asyncio.CancelledError(), HandshakeCancelledError, "cancelled"),
        (KeyError("x"), UnexpectedHandshakeError, "error"),
    ],
)
def test_restconf_failures_are_handshake_errors(exc: BaseException, cls: type, code: str) -> None:
    error = restconf.classify_error(exc)
    assert error.__class__ is cls and error.code == code


def test_failure_reason_and_message_come_from_the_error() -> None:
    failure = HandshakeFailure(transport="ssh", peer="192.0.2.1:4000", error=AuthFailedError("denied"), device="r1")
    assert (failure.reason, failure.message, failure.device) == ("auth-failed", "denied", "r1")


@pytest.mark.parametrize(
    "reason, cls",
    [("auth-failed", AuthFailedError), ("host-key", IdentityRefusedError), ("timeout", HandshakeTimeoutError)],
)
def test_failure_given_a_reason_gets_the_class_of_that_code(reason: str, cls: type) -> None:
    failure = HandshakeFailure(transport="tls", peer="p", reason=reason, message="m")
    assert failure.error.__class__ is cls and failure.reason == reason and failure.message == "m"


def test_a_transport_reason_without_a_class_is_still_a_handshake_error() -> None:
    failure = HandshakeFailure(transport="callhome", peer="p", reason="proxy-malformed", message="bad header")
    assert failure.error.__class__ is HandshakeError and failure.reason == "proxy-malformed"
    assert HandshakeError.code == "handshake"  # the instance's code did not leak into the class


def test_handshake_codes_do_not_shadow_control_errors_on_the_wire() -> None:
    # HandshakeTimeoutError shares "timeout" with WaitTimeoutError; a client must still get the latter.
    rebuilt = errors.error_from_dict({"code": "timeout", "message": "waited"})
    assert rebuilt.__class__ is WaitTimeoutError
    assert errors.error_from_dict({"code": "auth-failed", "message": "x"}).__class__ is AuthFailedError


class _Events:
    def __init__(self) -> None:
        self.failures: List[HandshakeFailure] = []

    def handshake_failed(self, failure: HandshakeFailure) -> None:
        self.failures.append(failure)


def _conn(client: Any, server_version: Optional[bytes]) -> Any:
    conn = SimpleNamespace(get_owner=lambda: client)
    if server_version is not None:
        conn._server_version = server_version  # pylint: disable=protected-access
    return conn


def _client(**kw: Any) -> Any:
    base = dict(release_slot=lambda: None, turned_away=False, refused=False, login=None, peer="192.0.2.9:5000")
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("exc, code", [(asyncio.TimeoutError(), "timeout"), (None, "connection-lost")])
def test_ssh_failure_after_a_banner_keeps_its_class_under_its_own_reason(exc: Optional[BaseException], code: str) -> None:
    events = _Events()
    transport = SimpleNamespace(events=events)
    ssh.SSHTransport._failed(transport, _conn(_client(), b"SSH-2.0-dev"), exc)  # type: ignore[arg-type]
    ssh.SSHTransport._failed(transport, _conn(_client(), None), exc)  # type: ignore[arg-type]
    after, before = events.failures
    assert after.reason == code + "-after-banner" and before.reason == code
    assert after.error.__class__ is type(before.error)


def test_ssh_refused_key_is_an_identity_refusal_or_the_outbound_reason() -> None:
    events = _Events()
    transport = SimpleNamespace(events=events)
    plain = _client(refused=True, refused_reason="", refused_message="")
    secret = _client(refused=True, refused_reason="hmac-failed", refused_message="HMAC does not verify")
    ssh.SSHTransport._failed(transport, _conn(plain, None), asyncssh.HostKeyNotVerifiable("x"))  # type: ignore[arg-type]
    ssh.SSHTransport._failed(transport, _conn(secret, None), asyncssh.HostKeyNotVerifiable("x"))  # type: ignore[arg-type]
    first, second = events.failures
    assert isinstance(first.error, IdentityRefusedError) and first.reason == "host-key"
    assert isinstance(second.error, HandshakeError) and (second.reason, second.message) == ("hmac-failed", "HMAC does not verify")

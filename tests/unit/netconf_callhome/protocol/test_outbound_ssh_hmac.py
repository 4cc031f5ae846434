# SPDX-License-Identifier: GPL-3.0-or-later
"""The outbound-ssh preamble's HOST-KEY and HMAC (issue 11 item 4): parsing and verification.

Junos sends ``HMAC: hex(HMAC-SHA1(key=secret, msg=HOST-KEY text))``. The reference vectors are
RFC 2202's HMAC-SHA1 test cases, so the check does not only agree with itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from types import SimpleNamespace
from typing import Any, List

import asyncssh
import pytest

from netconf_callhome.protocol.events import SSHLogin
from netconf_callhome.protocol.outbound_ssh import (
    HMAC_FAILED,
    HMAC_MISSING,
    HostKeyRefusal,
    HMACError,
    OutboundSSHTransport,
    Preamble,
    host_key_hmac,
    parse_host_key,
    verify_hmac,
)

# RFC 2202 section 3, test cases 1 and 2.
RFC2202 = [
    (b"\x0b" * 20, "Hi There", "b617318655057264e28bc0b6fb378c8ef146be00"),
    (b"Jefe", "what do ya want for nothing?", "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
]


@pytest.mark.parametrize("secret, text, digest", RFC2202)
def test_hmac_is_hmac_sha1_keyed_with_the_secret_over_the_host_key(secret: bytes, text: str, digest: str) -> None:
    assert host_key_hmac(secret, text) == digest
    verify_hmac(secret, text, digest)
    verify_hmac(secret, text, digest.upper())
    verify_hmac(secret, text, " %s " % digest)
    with pytest.raises(HMACError) as err:
        verify_hmac(secret + b"x", text, digest)
    assert err.value.reason == HMAC_FAILED


@pytest.mark.parametrize(
    "host_key, received, reason, text",
    [
        ("", "ab" * 20, HMAC_MISSING, "no HOST-KEY"),
        ("ssh-ed25519 AAAA", "", HMAC_MISSING, "no HMAC"),
        ("ssh-ed25519 AAAA", "ab" * 19, HMAC_FAILED, "38 characters"),
        ("ssh-ed25519 AAAA", "ab" * 21, HMAC_FAILED, "42 characters"),
        ("ssh-ed25519 AAAA", "a" * 4000, HMAC_FAILED, "4000 characters"),
        ("ssh-ed25519 AAAA", "g" * 40, HMAC_FAILED, "not hexadecimal"),
        ("ssh-ed25519 AAAA", "0x" + "a" * 38, HMAC_FAILED, "not hexadecimal"),
        # SHA-256 is not what Junos sends: refused, not silently accepted as another algorithm
        ("ssh-ed25519 AAAA", hmac.new(b"s", b"ssh-ed25519 AAAA", hashlib.sha256).hexdigest(), HMAC_FAILED, "64 characters"),
    ],
)
def test_missing_malformed_and_oversized_hmacs_are_refused(host_key: str, received: str, reason: str, text: str) -> None:
    with pytest.raises(HMACError) as err:
        verify_hmac(b"s", host_key, received)
    assert err.value.reason == reason and text in str(err.value)


def test_the_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Any] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with pytest.raises(HMACError):
        verify_hmac(b"s", "k", "00" * 20)
    assert len(calls) == 1 and all(isinstance(x, bytes) and len(x) == 20 for x in calls[0])


def test_preamble_fields_and_host_key_forms() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    line = " ".join(key.export_public_key("openssh").decode().split()[:2])
    fp = key.get_fingerprint("sha256")
    p = Preamble.from_fields({"DEVICE-ID": "r1", "MSG-VER": "V1", "HOST-KEY": line + "\x00", "HMAC": "ab"})
    # the NUL Junos may append is not part of what the HMAC covers
    assert (p.device_id, p.msg_ver, p.host_key, p.hmac, p.host_key_fingerprint) == ("r1", "V1", line, "ab", fp)
    bare = Preamble.from_fields({"DEVICE-ID": "r1", "HOST-KEY": line.split()[1]})
    assert bare.host_key_fingerprint == fp
    with_comment = Preamble.from_fields({"DEVICE-ID": "r1", "HOST-KEY": line + " r1@junos"})
    assert with_comment.host_key_fingerprint == fp and with_comment.host_key == line + " r1@junos"
    bad = Preamble.from_fields({"DEVICE-ID": "r1", "HOST-KEY": "not a key"})
    assert bad.host_key_fingerprint == "" and "not an SSH public key" in bad.host_key_error
    none = Preamble.from_fields({"DEVICE-ID": "r1"})
    assert none.host_key == none.hmac == none.host_key_fingerprint == none.host_key_error == ""
    with pytest.raises(ValueError):
        parse_host_key(base64.b64encode(b"\x00\x00\x00\x07garbage").decode())


class _Events:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: List[Any] = []

    def outbound_ssh_host_key(self, key: Any, *, peer: str, preamble: Preamble) -> Any:
        self.asked.append((key, peer, preamble))
        return self.answer


def test_the_transport_passes_the_preamble_and_a_refusal_reason_to_the_ssh_client() -> None:
    preamble = Preamble.from_fields({"DEVICE-ID": "r1"})
    client = SimpleNamespace(peer="192.0.2.1:4000", refused_reason="", refused_message="")
    refusing = OutboundSSHTransport(None, handshake_timeout=1, events=_Events(HostKeyRefusal(HMAC_FAILED, "no")))  # type: ignore[arg-type]
    assert refusing._host_key(preamble, client, "KEY") is None  # type: ignore[arg-type]  # pylint: disable=protected-access
    assert (client.refused_reason, client.refused_message) == (HMAC_FAILED, "no")
    login = SSHLogin(device="r1", fingerprint="SHA256:x", username="u", keys=[], read_password=lambda: None)
    events = _Events(login)
    accepting = OutboundSSHTransport(None, handshake_timeout=1, events=events)  # type: ignore[arg-type]
    assert accepting._host_key(preamble, client, "KEY") is login  # type: ignore[arg-type]  # pylint: disable=protected-access
    assert events.asked == [("KEY", "192.0.2.1:4000", preamble)]


def test_a_gated_session_waits_for_the_enrollment_and_is_refused_when_it_fails() -> None:
    """The SSH side of zero-touch: the NETCONF session opens only once the key is written."""
    import asyncio
    import time

    from netconf_callhome.config import ListenerConfig
    from netconf_callhome.protocol.ssh import SSHTransport

    failures: List[Any] = []
    events = SimpleNamespace(handshake_failed=failures.append)
    ssh = SSHTransport(ListenerConfig(handshake_timeout=0.5), admission=None, events=events)  # type: ignore[arg-type]
    login = SSHLogin(device="r1", fingerprint="SHA256:x", username="u", keys=[], read_password=lambda: None)

    class _Conn:
        closed = False

        def close(self) -> None:
            self.closed = True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for outcome, opened in (("", True), ("zero-touch enrollment of r1 failed: disk full", False), (None, False)):
            gate: "asyncio.Future[str]" = loop.create_future()
            if outcome is not None:
                loop.call_later(0.05, gate.set_result, outcome)
            client = SimpleNamespace(login=login, peer="192.0.2.1:1", started=time.monotonic())
            conn = _Conn()
            assert await ssh._gate_open(conn, client, gate) is opened  # type: ignore[arg-type]  # pylint: disable=protected-access
            assert conn.closed is not opened

    asyncio.run(main())
    assert [(f.reason, f.message) for f in failures] == [
        ("enroll-failed", "zero-touch enrollment of r1 failed: disk full"),
        ("enroll-failed", "the trust store write did not complete within handshake_timeout"),
    ]

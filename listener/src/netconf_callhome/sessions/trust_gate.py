# SPDX-License-Identifier: GPL-3.0-or-later
"""Sessions layer: the trust decisions the transports ask for, and what a refusal records.

The decision half of the transports' events (:class:`~netconf_callhome.protocol.events.TransportEvents`,
``OutboundSSHEvents``, ``RestconfEvents``): a device's SSH host key or certificate chain is judged
by :class:`~netconf_callhome.policy.verdicts.TrustPolicy` (with the address hint of
:class:`~netconf_callhome.sessions.devices.LiveDevices`); an accepted one gets its login (the
device's credentials), a refused one becomes a pending entry (never authenticated, never handed
out) and, when it claims a device with no verified session, that device's ``key-mismatch``
record. Outbound-ssh devices with a secret are enrolled here without an operator (zero-touch).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any, Awaitable, Callable, Optional, Sequence

import asyncssh

from netconf_callhome.errors import CallHomeError, ConfigError
from netconf_callhome.policy.verdicts import ACCEPTED, MISMATCH, TrustPolicy, Verdict, refusal
from netconf_callhome.policy.zero_touch import EnrollmentWriter
from netconf_callhome.netutil import peer_ip
from netconf_callhome.protocol.events import SSHLogin, VerifiedDevice
from netconf_callhome.protocol.outbound_ssh import GatedLogin, HostKeyRefusal, Preamble
from netconf_callhome.protocol.restconf import BasicCredentials
from netconf_callhome.protocol.ssh import PrivateKeyCache
from netconf_callhome.sessions.devices import LiveDevices
from netconf_callhome.sessions.trust_edits import TrustEdits
from netconf_callhome.state.registry import KEY_MISMATCH, PendingKey, Registry

log = logging.getLogger("netconf_callhome.listener")


class TrustGate:
    """Verdicts on the keys and certificates devices present; refusals recorded as pending."""

    def __init__(
        self,
        policy: TrustPolicy,
        *,
        registry: Registry,
        devices: LiveDevices,
        trust: TrustEdits,
        enrollments: EnrollmentWriter,
        spawn: Callable[[Awaitable[Any]], None],
    ) -> None:
        self.policy = policy
        self.registry = registry
        self.devices = devices
        self.trust = trust  # a zero-touch enrollment is a trust change like an operator's
        self.enrollments = enrollments
        self.spawn = spawn
        self._keys = PrivateKeyCache()

    def ssh_host_key(self, key: asyncssh.SSHKey, *, peer: str, device_id: str) -> Optional[SSHLogin]:
        fingerprint = key.get_fingerprint("sha256")
        verdict = self.policy.ssh_verdict(fingerprint, hint=self.devices.hint_for(peer_ip(peer), "ssh"), device_id=device_id)
        if not verdict.accepted:
            public_line = key.export_public_key("openssh").decode("ascii").strip()
            self._refused(verdict, transport="ssh", peer=peer, key_type=key.get_algorithm(), public_key=public_line)
            return None
        return self._ssh_login(verdict)

    def outbound_ssh_host_key(
        self, key: asyncssh.SSHKey, *, peer: str, preamble: Preamble
    ) -> "SSHLogin | GatedLogin | HostKeyRefusal | None":
        """OutboundSSHEvents: a Junos device's proved host key, judged with its preamble. No secret
        for its DEVICE-ID: as on 4334. A secret: the HMAC must verify for the key the handshake
        proved (policy.outbound_ssh_check); then an enrolled key is accepted, and an unknown one
        is enrolled under the DEVICE-ID without an operator (zero-touch), unless that device
        already has another key and its secret does not allow rotation."""
        fingerprint = key.get_fingerprint("sha256")
        check = self.policy.outbound_ssh_check(preamble, fingerprint)
        if check.binding is None and not check.refused:
            return self.ssh_host_key(key, peer=peer, device_id=preamble.device_id)
        public_line = key.export_public_key("openssh").decode("ascii").strip()
        if check.refused:
            # Recorded with the proved key, so an operator who decides the device is genuine (its
            # secret was mistyped) can approve it; the DEVICE-ID stays a claim (claim_source).
            pending = self.registry.record_pending(
                PendingKey(
                    fingerprint=fingerprint,
                    key_type=key.get_algorithm(),
                    transport="ssh",
                    public_key=public_line,
                    peer=peer,
                    reason=check.refused,
                    claimed_device=preamble.device_id,
                    claim_source="device-id" if preamble.device_id else "",
                )
            )
            log_fn = log.error if check.refused == "secret-unavailable" else log.warning
            log_fn(
                "event=outbound_ssh.refused device_id=%s peer=%s fingerprint=%s reason=%s count=%d msg=%r",
                preamble.device_id,
                peer,
                fingerprint,
                check.refused,
                pending.count,
                check.message,
            )
            return HostKeyRefusal(check.refused, check.message)
        assert check.binding is not None
        verdict = self.policy.ssh_verdict(fingerprint, device_id=preamble.device_id)
        if verdict.accepted:
            return self._ssh_login(verdict)
        device = preamble.device_id
        rotate = verdict.outcome == MISMATCH
        if rotate and not check.binding.allow_rotation:
            # The secret proves the caller knows it, not that it is the device whose key is pinned:
            # a group secret sits on every device of the group. Re-keying is the operator's call.
            self._refused(verdict, transport="ssh", peer=peer, key_type=key.get_algorithm(), public_key=public_line)
            message = (
                "HMAC verified (secret of %s), but %s has another host key enrolled and its secret does not "
                "allow rotation; approve the new key (callhome-listener approve %s --device %s --replace) if "
                "the device was really re-keyed" % (check.binding.source, device, fingerprint, device)
            )
            log.warning(
                "event=outbound_ssh.rotation_refused device=%s peer=%s fingerprint=%s msg=%r",
                device,
                peer,
                fingerprint,
                message,
            )
            return HostKeyRefusal("host-key", message)
        # Zero-touch: the key goes to the trust store off the loop, batched with other devices'
        # (policy.zero_touch); the SSH login goes on meanwhile, the session waits for the write.
        gate: "asyncio.Future[str]" = asyncio.get_running_loop().create_future()
        self.spawn(
            self._zero_touch(gate, verdict, public_line, key.get_algorithm(), peer, rotate, check.binding.source)
        )
        return GatedLogin(self._ssh_login(Verdict(ACCEPTED, device, fingerprint)), gate)

    async def _zero_touch(
        self,
        gate: "asyncio.Future[str]",
        verdict: Verdict,
        public_line: str,
        key_type: str,
        peer: str,
        rotate: bool,
        source: str,
    ) -> None:
        """Write a verified outbound-ssh device's key, then open its session's gate."""
        device, fingerprint = verdict.device, verdict.fingerprint
        try:
            outcome = await self.enrollments.enroll(device, public_line, replace=rotate)
        except BaseException:
            if not gate.done():
                gate.set_result("the listener is stopping")
            raise
        if isinstance(outcome, CallHomeError):
            self._refused(verdict, transport="ssh", peer=peer, key_type=key_type, public_key=public_line)
            log.error(
                "event=outbound_ssh.enroll_failed device=%s peer=%s fingerprint=%s error=%r",
                device,
                peer,
                fingerprint,
                outcome.message,
            )
            gate.set_result("zero-touch enrollment of %s failed: %s" % (device, outcome.message))
            return
        self.registry.drop_pending(fingerprint)
        self.trust.changed(device, "key replaced")  # one real reload per written batch (same file after)
        log.info(
            "event=device.enrolled device=%s fingerprint=%s peer=%s via=outbound-ssh-secret secret=%s replaced=%s",
            device,
            fingerprint,
            peer,
            source,
            ",".join(outcome.replaced) or "-",
        )
        trusted = self.policy.still_trusts(device, "ssh", fingerprint)
        gate.set_result("" if trusted else "%s was enrolled for %s but is not trusted after the reload" % (fingerprint, device))

    def _ssh_login(self, verdict: Verdict) -> SSHLogin:
        """The login for an accepted SSH key: the device's credentials, read once per file change."""
        creds = self.policy.credentials_for(verdict.device)
        try:
            keys = self._keys.keys(creds.private_key_file)
        except ConfigError as exc:
            log.error("event=credentials.error device=%s error=%r", verdict.device, exc.message)
            keys = []
        return SSHLogin(
            device=verdict.device,
            fingerprint=verdict.fingerprint,
            username=creds.username,
            keys=keys,
            read_password=creds.read_password,
        )

    def tls_certificate(self, chain: Sequence[bytes], *, peer: str, transport: str = "tls") -> Optional[VerifiedDevice]:
        """The verdict on a device certificate, for NETCONF over TLS and (``transport``
        ``restconf``) RESTCONF alike: pending entries and address hints name the transport."""
        verdict = self.policy.tls_verdict(chain, hint=self.devices.hint_for(peer_ip(peer), transport))
        if not verdict.accepted:
            pem = ssl.DER_cert_to_PEM_cert(chain[0])
            self._refused(verdict, transport=transport, peer=peer, key_type="x509", public_key=pem)
            return None
        self.devices.accepted(verdict.fingerprint, verdict.identities)
        return VerifiedDevice(device=verdict.device, fingerprint=verdict.fingerprint)

    def _refused(self, verdict: Verdict, *, transport: str, peer: str, key_type: str, public_key: str) -> None:
        """An unenrolled or mismatched key: record it, never authenticate, never hand it out.

        The claim (which device it says it is) goes on the pending entry; the claimed device's
        own record changes only when that device holds no verified session (verdicts.refusal).
        """
        outcome = refusal(
            verdict, key_type=key_type, peer=peer, device_connected=bool(verdict.device) and self.devices.connected(verdict.device)
        )
        pending = self.registry.record_pending(
            PendingKey(
                fingerprint=verdict.fingerprint,
                key_type=key_type,
                transport=transport,
                public_key=public_key,
                peer=peer,
                reason=verdict.outcome,
                claimed_device=verdict.device,
                claim_source=verdict.claim_source,
                identities=list(verdict.identities),
            )
        )
        if outcome.mark_device:
            self.registry.update(verdict.device, status=KEY_MISMATCH, last_seen=time.time(), last_error=outcome.message)
        if verdict.device:
            log.warning(
                "event=%s device=%s peer=%s transport=%s fingerprint=%s key_type=%s claim_source=%s count=%d msg=%r",
                outcome.event,
                verdict.device,
                peer,
                transport,
                verdict.fingerprint,
                key_type,
                verdict.claim_source,
                pending.count,
                outcome.message,
            )
        else:
            log.warning(
                "event=device.unknown_key peer=%s transport=%s fingerprint=%s key_type=%s count=%d",
                peer,
                transport,
                verdict.fingerprint,
                key_type,
                pending.count,
            )

    def restconf_credentials(self, device: str) -> Optional[BasicCredentials]:
        """HTTP basic credentials when the device's credentials (trust store, else the listener's
        defaults) name a password; else None: the listener's client certificate alone. An
        unreadable password reference is a ConfigError, which fails this call home with it."""
        creds = self.policy.credentials_for(device)
        if not (creds.password_file or creds.password_env):
            return None
        password = creds.read_password()
        return None if password is None else BasicCredentials(creds.username, password)

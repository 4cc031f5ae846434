# SPDX-License-Identifier: GPL-3.0-or-later
"""Policy layer: who may call home, and with which credentials the listener answers.

A device is identified by its SSH host key or TLS certificate, never by its address (RFC 8071
section 3.1 C5-C7). The peer address is used only as a *hint* to say which known device an
unknown key probably belongs to, so that a changed key is reported as a key mismatch.

A TLS certificate is trusted when its fingerprint is pinned, or when it names an enrolled identity
(``serial:``, ``cn:``...) and chains to a configured device CA; that path validation is
:func:`netconf_callhome.policy.verify.verify_chain` (``cryptography.x509.verification``).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from cryptography import x509
from cryptography.x509.oid import NameOID

from netconf_callhome.errors import ConfigError, TrustStoreError
from netconf_callhome.fingerprints import cert_fingerprint_of_der
from netconf_callhome.config import Credentials, TLSOptions
from netconf_callhome.policy.secrets import SecretBinding, SecretUnavailableError, binding_for, resolve
from netconf_callhome.policy.trust_store import TrustIndex, TrustStore
from netconf_callhome.policy.verify import ChainRejectedError, verify_chain
from netconf_callhome.protocol.outbound_ssh import (
    HOST_KEY_DIFFERS,
    SECRET_UNAVAILABLE,
    HMACError,
    Preamble,
    verify_hmac,
)

log = logging.getLogger("netconf_callhome.policy")

ACCEPTED = "accepted"
UNKNOWN = "unknown-key"
MISMATCH = "key-mismatch"
# Transports whose devices present certificates (NETCONF over TLS, RESTCONF): the same trust
# store lists and rules; every other transport is SSH (host keys).
CERTIFICATE_TRANSPORTS = frozenset({"tls", "restconf"})
# A DEVICE-ID a verified secret may enroll under: it becomes a trust-store key, an inventory name
# and a word in log lines, so no spaces, slashes or control characters.
DEVICE_ID_INVALID = "device-id-invalid"
_ENROLLABLE_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,252}$")


@dataclass
class Verdict:
    outcome: str
    device: str = ""  # the owner when accepted, the claimed/suspected owner otherwise
    fingerprint: str = ""
    # What names the suspected owner of a refused key: "identity" (the certificate names an
    # enrolled device) is a claim; "address" (last device seen at that IP) is only a hint,
    # since many devices may share one NAT address.
    claim_source: str = ""
    identities: List[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.outcome == ACCEPTED


@dataclass(frozen=True)
class Refusal:
    """What a refused key does to the records, decided here so that every transport follows the
    same rule (RFC 8071 C5-C7: an unauthenticated peer's words are a claim, never trust).

    ``mark_device``: whether the claimed device's own record may say ``key-mismatch``. Never for
    a device that holds a verified session: the claim is anyone's (a ``DEVICE-ID`` preamble, a
    certificate subject, an address), and letting it flip a live device's status would let
    any peer make inventories filtered on ``connected`` drop that device, and tell the operator
    to approve the intruder's key. The claim is kept on the pending entry either way.
    """

    mark_device: bool
    event: str  # the log event: device.key_mismatch, device.claim_refused or device.unknown_key
    message: str  # the operator's sentence: what happened and what (not) to do


def refusal(verdict: Verdict, *, key_type: str, peer: str, device_connected: bool) -> Refusal:
    """How the service records a refused ``verdict`` (see :class:`Refusal`)."""
    presented = "presented %s %s" % (key_type, verdict.fingerprint)
    if verdict.outcome != MISMATCH or not verdict.device:
        return Refusal(False, "device.unknown_key", "%s from %s, which is not enrolled" % (presented, peer))
    if device_connected:
        return Refusal(
            False,
            "device.claim_refused",
            "a peer at %s %s claiming to be %r (by %s), which holds a verified session with its enrolled "
            "identity; refused and recorded as pending only. Do not approve this key for %r unless the "
            "device was really replaced"
            % (peer, presented, verdict.device, verdict.claim_source or "?", verdict.device),
        )
    return Refusal(True, "device.key_mismatch", "%s, which is not enrolled for it (from %s)" % (presented, peer))


class TrustPolicy:
    def __init__(self, store: TrustStore, tls: TLSOptions, default_credentials: Credentials) -> None:
        self.store = store
        self.default_credentials = default_credentials
        self._signature: object = object()
        self.index = TrustIndex({"devices": {}})
        self._cas: List[x509.Certificate] = []
        for path in tls.device_cas:
            self._cas.extend(_load_pem_certs(path))
        self.reload()

    # -- trust store ---------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the trust store if the file changed; keep the old index if the new one is bad."""
        signature = self.store.stat_signature()
        if signature == self._signature:
            return False
        try:
            data = self.store.load()
            index = TrustIndex(data)
        except TrustStoreError as exc:
            log.error("event=trust.reload_failed error=%r (keeping the previous trust store)", exc.message)
            return False
        self.index = index
        self._signature = signature
        log.info("event=trust.loaded devices=%d path=%s", len(index.devices), self.store.path)
        return True

    # -- trust of what was accepted before ---------------------------------------------------

    def still_trusts(self, device: str, transport: str, fingerprint: str, identities: Sequence[str] = ()) -> bool:
        """Whether a session accepted earlier for ``device`` would still be accepted after a
        trust-store change: its pinned key/certificate, or (TLS) the certificate identity it was
        accepted under, is still enrolled for that device. The CA check of an identity was done
        at the handshake, and the device CAs do not change while the listener runs."""
        if transport not in CERTIFICATE_TRANSPORTS:
            return self.index.ssh.get(fingerprint) == device
        if self.index.tls.get(fingerprint) == device:
            return True
        claimed = _claimed(self.index.identities, identities)
        return claimed == device

    def enrolled_pending(self, transport: str, fingerprint: str, public_key: str, identities: Sequence[str]) -> bool:
        """Whether a pending key would now be accepted: it was enrolled some other way (a file
        edit, the enroll module, another device name's identity), so its entry is stale."""
        if transport not in CERTIFICATE_TRANSPORTS:
            return fingerprint in self.index.ssh
        if fingerprint in self.index.tls:
            return True
        if not _claimed(self.index.identities, identities) or not self._cas:
            return False
        # The entry holds the leaf only: a leaf issued by a configured CA is accepted now; one that
        # needs intermediates is left for the device's next call (and a forged claim stays pending).
        try:
            leaf = x509.load_pem_x509_certificate(public_key.encode("ascii"))
            verify_chain(leaf, [], self._cas, datetime.datetime.now(datetime.timezone.utc))
        except (ValueError, ChainRejectedError):
            return False
        return True

    def credentials_for(self, device: str) -> Credentials:
        base = self.default_credentials
        own = self.index.devices.get(device, {}).get("credentials", {})
        return Credentials(
            username=own.get("username") or base.username,
            private_key_file=own.get("private_key_file", base.private_key_file if not own else ""),
            password_file=own.get("password_file", base.password_file if not own else ""),
            password_env=own.get("password_env", base.password_env if not own else ""),
        )

    # -- SSH -----------------------------------------------------------------------------------

    def ssh_verdict(self, fingerprint: str, hint: str = "", device_id: str = "") -> Verdict:
        """``device_id`` is what a Junos outbound-ssh preamble says; like the address, it is the
        device's own assertion, so it can name a suspect but never grant trust."""
        owner = self.index.ssh.get(fingerprint)
        if owner is not None:
            if device_id and device_id != owner:
                log.warning(
                    "event=device.id_differs device=%s device_id=%s fingerprint=%s", owner, device_id, fingerprint
                )
            return Verdict(ACCEPTED, owner, fingerprint)
        if device_id:
            outcome = MISMATCH if self.index.has_ssh_identity(device_id) else UNKNOWN
            return Verdict(outcome, device_id, fingerprint, claim_source="device-id")
        if hint and self.index.has_ssh_identity(hint):
            return Verdict(MISMATCH, hint, fingerprint, claim_source="address")
        return Verdict(UNKNOWN, "", fingerprint)

    # -- outbound-ssh secrets ------------------------------------------------------------------

    def outbound_ssh_check(self, preamble: Preamble, fingerprint: str) -> "SecretCheck":
        """Check a Junos outbound-ssh preamble against the secret that applies to its DEVICE-ID,
        once the SSH handshake proved the host key ``fingerprint``.

        No secret applies: the preamble is a label (``binding`` None), trust is the host key's
        as on 4334. A secret applies: it is *required*, for an enrolled key too (a device whose
        secret differs from the operator's, or someone else using its DEVICE-ID, is a problem to
        surface, not to ignore): HOST-KEY and HMAC present, the HMAC verifies, and HOST-KEY is the
        key the handshake proved (the HMAC alone can be replayed from one captured preamble).
        """
        try:
            binding = binding_for(preamble.device_id, self.index.devices, self.index.outbound_ssh_groups)
        except SecretUnavailableError as exc:
            return SecretCheck(None, SECRET_UNAVAILABLE, exc.message)
        if binding is None:
            return SecretCheck(None)
        if not _ENROLLABLE_DEVICE_ID.match(preamble.device_id):
            return SecretCheck(
                binding,
                DEVICE_ID_INVALID,
                "DEVICE-ID %r is not a usable device name (letters, digits, . _ : @ + -)" % preamble.device_id,
            )
        try:
            secret = resolve(binding.reference)
        except SecretUnavailableError as exc:
            return SecretCheck(binding, SECRET_UNAVAILABLE, exc.message)
        try:
            verify_hmac(secret.reveal(), preamble.host_key, preamble.hmac)
        except HMACError as exc:
            return SecretCheck(binding, exc.reason, "%s (secret of %s)" % (exc, binding.source))
        if preamble.host_key_fingerprint != fingerprint:
            announced = preamble.host_key_fingerprint or "an unparsable key (%s)" % preamble.host_key_error
            return SecretCheck(
                binding,
                HOST_KEY_DIFFERS,
                "the HMAC verifies for HOST-KEY %s, but the SSH handshake proved %s" % (announced, fingerprint),
            )
        return SecretCheck(binding)

    # -- TLS -----------------------------------------------------------------------------------

    def tls_verdict(self, chain_der: Sequence[bytes], hint: str = "") -> Verdict:
        """``chain_der[0]`` is the device's certificate, the rest what it sent as intermediates."""
        leaf_der = chain_der[0]
        fingerprint = cert_fingerprint_of_der(leaf_der)
        owner = self.index.tls.get(fingerprint)
        leaf = x509.load_der_x509_certificate(leaf_der)
        identities = certificate_identities(leaf)
        if owner is not None:
            return Verdict(ACCEPTED, owner, fingerprint, identities=identities)
        claimed = _claimed(self.index.identities, identities)
        if claimed:
            # An identity is a claim anyone can write into a certificate; only a valid path to a
            # configured device CA turns it into trust.
            intermediates = [x509.load_der_x509_certificate(d) for d in chain_der[1:]]
            try:
                verify_chain(leaf, intermediates, self._cas, datetime.datetime.now(datetime.timezone.utc))
            except ChainRejectedError as exc:
                log.warning(
                    "event=tls.chain_rejected device=%s fingerprint=%s reason=%r",
                    claimed,
                    fingerprint,
                    exc.details.get("reason", exc.message),
                )
                return Verdict(MISMATCH, claimed, fingerprint, claim_source="identity", identities=identities)
            return Verdict(ACCEPTED, claimed, fingerprint, identities=identities)
        if hint and self.index.has_tls_identity(hint):
            return Verdict(MISMATCH, hint, fingerprint, claim_source="address", identities=identities)
        return Verdict(UNKNOWN, "", fingerprint, identities=identities)


@dataclass(frozen=True)
class SecretCheck:
    """The outcome of :meth:`TrustPolicy.outbound_ssh_check`.

    ``binding`` None and no ``refused``: no secret applies. ``refused`` set: the reason code
    (``hmac-missing``, ``hmac-failed``, ``host-key-differs``, ``secret-unavailable``,
    ``device-id-invalid``) and ``message`` for the operator (never the secret). Otherwise the
    secret of ``binding`` verified the proved key: :attr:`verified`.
    """

    binding: Optional[SecretBinding]
    refused: str = ""
    message: str = ""

    @property
    def verified(self) -> bool:
        return self.binding is not None and not self.refused


def _claimed(enrolled: "dict[str, str]", identities: Sequence[str]) -> str:
    """The device the first enrolled identity of a certificate names ('' when none)."""
    for ident in identities:
        owner: Optional[str] = enrolled.get(ident)
        if owner:
            return owner
    return ""


def certificate_identities(cert: x509.Certificate) -> List[str]:
    """Identities as the trust store writes them: ``cn:``, ``serial:``, ``dns:``, ``uri:``, ``ip:``."""
    out: List[str] = []
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        out.append("cn:%s" % _text(attr.value))
    for attr in cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER):
        out.append("serial:%s" % _text(attr.value))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        out.extend("dns:%s" % v for v in san.get_values_for_type(x509.DNSName))
        out.extend("uri:%s" % v for v in san.get_values_for_type(x509.UniformResourceIdentifier))
        out.extend("ip:%s" % v for v in san.get_values_for_type(x509.IPAddress))
    return out


def _text(value: "str | bytes") -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _load_pem_certs(path: str) -> List[x509.Certificate]:
    try:
        with open(os.path.expanduser(path), "rb") as handle:
            certs = x509.load_pem_x509_certificates(handle.read())
    except OSError as exc:
        raise ConfigError("cannot read device CA file %s: %s" % (path, exc.strerror)) from None
    except ValueError as exc:
        raise ConfigError("device CA file %s holds no valid PEM certificate: %s" % (path, exc)) from None
    return certs

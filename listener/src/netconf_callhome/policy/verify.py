# SPDX-License-Identifier: GPL-3.0-or-later
"""Certificate path validation for devices that call home over TLS (RFC 7589, RFC 8071 C5).

A device enrolled by certificate *identity* (``serial:``, ``cn:``, ``dns:``, ``uri:``, ``ip:``)
is trusted only when its certificate chains to one of the configured device CAs. This module
is that check, done by ``cryptography.x509.verification`` (the Rust WebPKI path builder), not
by hand: signatures, validity at ``now``, basicConstraints and pathLenConstraint, keyCertSign on
every issuer, name constraints, the chain depth, and the extended key usage.

Profile, and why it differs from the WebPKI defaults:

* In call home the device is the TLS **server** (the listener dials nothing but runs the TLS
  client on the accepted socket, see ``protocol/tls.py``), so the leaf must carry EKU
  ``id-kp-serverAuth``. cryptography's server verifier would also match a DNS name or IP
  address against the SAN, but RFC 7589 names devices by cert-to-name (the identity the trust
  store holds), not by host name, and a device's address means nothing here. So the client
  verifier (which matches no name) is used with an extension policy whose EKU rule demands
  serverAuth instead of the client verifier's clientAuth.
* subjectAltName may be absent: ``serial:`` and ``cn:`` identities live in the subject.
* authorityKeyIdentifier may be absent: it only helps path building, and private device PKIs
  (and this collection's test PKI) often omit it. Signatures are still checked.
* An issuing CA that carries an EKU must allow serverAuth (or anyExtendedKeyUsage), as
  browsers and OpenSSL's purpose checks do; a CA limited to clientAuth cannot vouch for a server.

Everything else is the WebPKI profile as cryptography implements it; notably only RSA
(>= 2048 bits), ECDSA P-256/P-384/P-521 and RSA-PSS signatures are accepted (no Ed25519, no
SHA-1), and certificates must be X.509 v3 with positive serial numbers of at most 20 bytes.
"""

from __future__ import annotations

import datetime
from typing import Optional, Sequence

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from netconf_callhome.errors import KeyMismatchError

# cryptography's default (and our) limit: leaf, up to 6 intermediates, anchor.
MAX_CHAIN_DEPTH = 8


class ChainRejectedError(KeyMismatchError):
    """The certificate names an enrolled identity but does not chain to a device CA.

    A :class:`KeyMismatchError` because that is what the listener reports for it: the device
    claims an identity it cannot prove.
    """


def _require_server_auth(policy: Policy, cert: x509.Certificate, eku: Optional[x509.ExtendedKeyUsage]) -> None:
    """Leaf rule: EKU present and naming serverAuth (the device is the TLS server)."""
    if eku is None:
        raise ValueError("the device certificate has no extended key usage (it needs serverAuth)")
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        raise ValueError("the device certificate's extended key usage does not include serverAuth")


def _ca_allows_server_auth(policy: Policy, cert: x509.Certificate, eku: Optional[x509.ExtendedKeyUsage]) -> None:
    """Issuer rule: no EKU (unrestricted), or one that allows serverAuth."""
    if eku is None:
        return
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        raise ValueError("an issuing CA's extended key usage does not allow serverAuth")


def _ee_policy() -> ExtensionPolicy:
    return (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _require_server_auth)
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
        .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
    )


def _ca_policy() -> ExtensionPolicy:
    return (
        ExtensionPolicy.webpki_defaults_ca()
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _ca_allows_server_auth)
        .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
    )


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    cas: Sequence[x509.Certificate],
    now: datetime.datetime,
) -> None:
    """Raise :class:`ChainRejectedError` unless ``leaf`` is a valid device (TLS server)
    certificate at ``now``, issued through ``intermediates`` (what the device sent, in any
    order, possibly with extras) by one of ``cas`` (the trust anchors)."""
    if not cas:
        raise ChainRejectedError("no device CA is configured (--device-ca / tls.device_cas)")
    if now.tzinfo is None:
        # cryptography compares in UTC; a naive time would silently mean local time elsewhere.
        raise ValueError("verify_chain needs an aware datetime")
    verifier = (
        PolicyBuilder()
        .store(Store(list(cas)))
        .time(now)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=_ca_policy(), ee_policy=_ee_policy())
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, list(intermediates))
    except VerificationError as exc:
        raise ChainRejectedError(
            "certificate %s does not chain to a device CA: %s" % (leaf.subject.rfc4514_string(), exc),
            details={"reason": str(exc)},
        ) from None


def chain_is_valid(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    cas: Sequence[x509.Certificate],
    now: datetime.datetime,
) -> bool:
    """:func:`verify_chain` as a predicate."""
    try:
        verify_chain(leaf, intermediates, cas, now)
    except ChainRejectedError:
        return False
    return True


__all__ = ("MAX_CHAIN_DEPTH", "ChainRejectedError", "chain_is_valid", "verify_chain")

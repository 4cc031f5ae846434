# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Canonical fingerprints for SSH host keys and TLS certificates.

**PRIVATE** to the collection. Stdlib only, so modules can use it on any controller.
SSH fingerprints use OpenSSH's form (``SHA256:`` + unpadded base64 of the key blob), which is
what ``ssh-keygen -lf`` and device CLIs print. TLS certificate fingerprints use one notation only:
the SHA-256 of the DER certificate as upper-case hex pairs joined by colons (``1F:A3:...``, 32
pairs), as ``openssl x509 -noout -fingerprint -sha256`` prints it after ``Fingerprint=``. The two
kinds cannot be confused: one is prefixed base64, the other bare hex pairs.

Earlier releases wrote TLS fingerprints as ``SHA256:1F:A3:...`` (OpenSSH's prefix on OpenSSL's
hex): still accepted on input, never written. The RFC 7407 ``tls-fingerprint`` a device's
``cert-to-name`` entry needs (the hash algorithm's TLS code ``04`` for SHA-256, then the hex
pairs: ``04:1F:A3:...``) is accepted on input too, and :func:`cert_to_name_fingerprint` writes it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import typing as t

from netconf_callhome.errors import ConfigError

SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "ssh-ed448",
)

# Hex pairs, colons optional; the old ``SHA256:`` prefix, openssl's ``sha256 Fingerprint=`` and
# RFC 7407's hash-algorithm octet ``04:`` (SHA-256, RFC 5246 7.4.1.4.1) are accepted in front.
_HEX_FP = re.compile(
    r"^(?:sha256:|sha256fingerprint=|(?P<tls_hash>04):?)?(?P<hex>(?:[0-9a-f]{2}:?){31}[0-9a-f]{2})$",
    re.IGNORECASE,
)
# The TLS HashAlgorithm code of SHA-256, the first octet of an RFC 7407 tls-fingerprint.
CERT_TO_NAME_SHA256 = "04"


def ssh_fingerprint_of_blob(blob: bytes) -> str:
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def parse_ssh_public_key(line: str) -> t.Tuple[str, bytes]:
    """Return ``(key_type, blob)`` from an OpenSSH public key line ``type base64 [comment]``."""
    parts = line.strip().split()
    if len(parts) < 2:
        raise ConfigError("not an OpenSSH public key line: %r" % line[:60])
    key_type, b64 = parts[0], parts[1]
    if key_type not in SSH_KEY_TYPES:
        raise ConfigError("unsupported SSH key type %r (supported: %s)" % (key_type, ", ".join(SSH_KEY_TYPES)))
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("SSH public key of type %s is not valid base64" % key_type) from None
    # The blob starts with its own type string; a mismatch means a pasted wrong key.
    if len(blob) < 4 or blob[4 : 4 + int.from_bytes(blob[:4], "big")].decode("ascii", "replace") != key_type:
        raise ConfigError("SSH public key blob does not match its declared type %s" % key_type)
    return key_type, blob


def ssh_fingerprint(line: str) -> str:
    return ssh_fingerprint_of_blob(parse_ssh_public_key(line)[1])


def normalize_ssh_fingerprint(value: str) -> str:
    """Accept ``SHA256:xxx`` (OpenSSH) and return it with the canonical prefix."""
    value = value.strip()
    if not value.upper().startswith("SHA256:"):
        raise ConfigError("SSH fingerprint must look like 'SHA256:<base64>' (as ssh-keygen -l prints): %r" % value)
    body = value[7:].rstrip("=")
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("SSH fingerprint is not valid base64: %r" % value) from None
    if len(raw) != 32:
        raise ConfigError("SSH SHA256 fingerprint must encode 32 bytes: %r" % value)
    return "SHA256:" + body


def _hex_pairs(digest: str) -> str:
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def cert_fingerprint_of_der(der: bytes) -> str:
    """``1F:A3:..``: SHA-256 of the DER certificate, the one notation the listener writes."""
    return _hex_pairs(hashlib.sha256(der).hexdigest().upper())


def normalize_cert_fingerprint(value: str) -> str:
    """Accept ``AB:CD:..``, ``abcd..``, ``SHA256:AB:..`` (old notation) or ``04:AB:..`` (RFC 7407)
    and return ``AB:CD:..``."""
    # 32 pairs that happen to start with 04 are a bare fingerprint (the regex backtracks); only
    # 33 pairs starting with 04 are the RFC 7407 form.
    match = _HEX_FP.match(value.strip().replace(" ", ""))
    if not match:
        raise ConfigError(
            "certificate fingerprint must be the SHA-256 of the certificate as 32 hex byte pairs, "
            "'AB:CD:...' (as 'openssl x509 -noout -fingerprint -sha256' prints it), or RFC 7407's "
            "'04:AB:CD:...'; got %r" % value
        )
    return _hex_pairs(match.group("hex").replace(":", "").upper())


def cert_fingerprint_spellings(value: str) -> t.List[str]:
    """The ways a certificate fingerprint may be stored: the one written now and the old
    ``SHA256:``-prefixed one (pending entries and records of earlier versions); ``[]`` when
    ``value`` is no certificate fingerprint."""
    try:
        canonical = normalize_cert_fingerprint(value)
    except ConfigError:
        return []
    return [canonical, "SHA256:" + canonical]


def cert_to_name_fingerprint(value: str) -> str:
    """The RFC 7407 ``tls-fingerprint`` of a certificate fingerprint (any accepted notation):
    ``04:AB:CD:..``, what a device's ``cert-to-name`` entry for the listener's certificate needs."""
    return CERT_TO_NAME_SHA256 + ":" + normalize_cert_fingerprint(value)


def cert_to_name_fingerprint_of_der(der: bytes) -> str:
    return CERT_TO_NAME_SHA256 + ":" + cert_fingerprint_of_der(der)


def pem_to_der(pem: str) -> bytes:
    body = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
    if not body:
        raise ConfigError("no PEM certificate found")
    return base64.b64decode("".join(body.group(1).split()))

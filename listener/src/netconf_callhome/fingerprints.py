# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Canonical fingerprints for SSH host keys and TLS certificates.

**PRIVATE** to the collection. Stdlib only, so modules can use it on any controller.
SSH fingerprints use OpenSSH's form (``SHA256:`` + unpadded base64 of the key blob), which is
what ``ssh-keygen -lf`` and device CLIs print. TLS fingerprints use the form
``openssl x509 -fingerprint -sha256`` prints (upper-case hex pairs joined by colons) with a
``SHA256:`` prefix so the two kinds are never confused with each other's encoding.
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

_HEX_FP = re.compile(r"^(?:sha256:)?((?:[0-9a-f]{2}:?){32})$", re.IGNORECASE)


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


def cert_fingerprint_of_der(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def normalize_cert_fingerprint(value: str) -> str:
    """Accept ``AB:CD:..``, ``abcd..`` or ``SHA256:AB:..`` and return ``SHA256:AB:CD:..``."""
    match = _HEX_FP.match(value.strip().replace(" ", ""))
    if not match:
        raise ConfigError(
            "certificate fingerprint must be 32 hex byte pairs (as 'openssl x509 -fingerprint -sha256' prints): %r"
            % value
        )
    digest = match.group(1).replace(":", "").upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def pem_to_der(pem: str) -> bytes:
    body = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
    if not body:
        raise ConfigError("no PEM certificate found")
    return base64.b64decode("".join(body.group(1).split()))

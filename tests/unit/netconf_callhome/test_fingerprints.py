# SPDX-License-Identifier: GPL-3.0-or-later
"""TLS certificate fingerprints: one notation written, the old and RFC 7407 notations read."""

from __future__ import annotations

import hashlib

import pytest

from netconf_callhome.errors import ConfigError
from netconf_callhome.fingerprints import (
    cert_fingerprint_of_der,
    cert_to_name_fingerprint,
    cert_to_name_fingerprint_of_der,
    normalize_cert_fingerprint,
)

DER = b"0\x82 not really a certificate, the hash is all that matters"
HEX = hashlib.sha256(DER).hexdigest().upper()
PAIRS = ":".join(HEX[i : i + 2] for i in range(0, 64, 2))


def test_written_notation_is_bare_hex_pairs() -> None:
    """Issue 10 defect 13: 'SHA256:1F:A3:..' mixed OpenSSH's prefix with OpenSSL's hex."""
    fp = cert_fingerprint_of_der(DER)
    assert fp == PAIRS
    assert not fp.upper().startswith("SHA256")
    assert len(fp.split(":")) == 32


@pytest.mark.parametrize(
    "written",
    [
        PAIRS,
        PAIRS.lower(),
        HEX,
        HEX.lower(),
        "SHA256:" + PAIRS,  # the old notation, as older trust stores and registries hold it
        "sha256:" + HEX.lower(),
        "sha256 Fingerprint=" + PAIRS,  # openssl x509 -noout -fingerprint -sha256
        "SHA256 Fingerprint=" + PAIRS,
        "04:" + PAIRS,  # RFC 7407 tls-fingerprint (hash algorithm 4 = SHA-256)
        "04" + HEX,
        "  " + PAIRS + "\n",
    ],
)
def test_every_accepted_notation_normalizes_to_the_one_written(written: str) -> None:
    assert normalize_cert_fingerprint(written) == PAIRS


def test_a_fingerprint_starting_with_04_is_not_taken_for_the_rfc7407_prefix() -> None:
    fp = "04:" + ":".join(["AB"] * 31)
    assert normalize_cert_fingerprint(fp) == fp


@pytest.mark.parametrize(
    "bad",
    [
        "AB" * 31,  # too short
        "AB" * 33,  # too long and no 04 prefix
        "05:" + PAIRS,  # another hash algorithm's code: not SHA-256
        "SHA1:" + PAIRS,
        "SHA256:" + "A" * 43,  # an SSH fingerprint
        "ZZ" * 32,
        "",
    ],
)
def test_anything_else_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="32 hex byte pairs"):
        normalize_cert_fingerprint(bad)


def test_cert_to_name_form_for_the_device() -> None:
    assert cert_to_name_fingerprint_of_der(DER) == "04:" + PAIRS
    assert cert_to_name_fingerprint("SHA256:" + PAIRS) == "04:" + PAIRS
    assert cert_to_name_fingerprint("04:" + PAIRS) == "04:" + PAIRS


def test_spellings_find_entries_stored_by_earlier_versions() -> None:
    from netconf_callhome.fingerprints import cert_fingerprint_spellings

    assert cert_fingerprint_spellings("04:" + PAIRS.lower()) == [PAIRS, "SHA256:" + PAIRS]
    assert cert_fingerprint_spellings("SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU") == []

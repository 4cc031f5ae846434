# SPDX-License-Identifier: GPL-3.0-or-later
"""Verdict tables of the trust policy: who is accepted, refused as unknown, or refused as a mismatch.

SSH: by host key fingerprint, with the peer address and a Junos device-id only as hints. TLS: a
pinned certificate fingerprint, or an enrolled identity (``serial:``/``cn:``/``dns:``/``uri:``/
``ip:``) proven by a chain to a device CA, checked by ``cryptography.x509.verification``
(expired, wrong CA, missing intermediate, pathLenConstraint, keyCertSign, basicConstraints, EKU).
Certificates come from ``trustme`` and, where a test needs an extension trustme does not let one
shape, from ``cryptography`` directly.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import sys
import typing as t
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from netconf_callhome.config import Credentials, TLSOptions
from netconf_callhome.fingerprints import cert_fingerprint_of_der, ssh_fingerprint
from netconf_callhome.policy.trust_store import TrustStore
from netconf_callhome.policy.verdicts import (
    ACCEPTED,
    MISMATCH,
    UNKNOWN,
    TrustPolicy,
    Verdict,
    certificate_identities,
)
from netconf_callhome.policy.verify import ChainRejectedError, chain_is_valid, verify_chain

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)
SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH


# -- a small PKI, every extension under the test's control ---------------------------------------


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def issue(
    cn: str,
    issuer: t.Optional[Issued] = None,
    *,
    ca: bool = False,
    path_length: t.Optional[int] = None,
    key_cert_sign: bool = True,
    basic_constraints: bool = True,
    eku: t.Union[str, t.Sequence[x509.ObjectIdentifier], None] = "default",
    serial: t.Optional[str] = None,
    sans: t.Sequence[x509.GeneralName] = (),
    not_before: datetime.datetime = NOW - DAY,
    not_after: datetime.datetime = NOW + 30 * DAY,
) -> Issued:
    """A certificate signed by ``issuer`` (self-signed without one). By default leaves get EKU
    serverAuth and CAs no EKU; ``eku=None`` leaves it out, a list sets it."""
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if serial:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    subject = x509.Name(attrs)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), True)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if eku == "default":
        eku = None if ca else (SERVER,)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def ssh_key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()


KEY_R1, KEY_OTHER = ssh_key(), ssh_key()
FP_R1, FP_OTHER = ssh_fingerprint(KEY_R1), ssh_fingerprint(KEY_OTHER)


def make_policy(tmp_path: Path, devices: t.Dict[str, t.Any], cas: t.Sequence[bytes] = ()) -> TrustPolicy:
    store = tmp_path / "trust.json"
    store.write_text(json.dumps({"version": 1, "devices": devices}))
    ca_paths = []
    for number, pem in enumerate(cas):
        path = tmp_path / ("ca%d.pem" % number)
        path.write_bytes(pem)
        ca_paths.append(str(path))
    return TrustPolicy(TrustStore(str(store)), TLSOptions(device_cas=ca_paths), Credentials())


def outcome(verdict: Verdict) -> t.Tuple[str, str, str]:
    return verdict.outcome, verdict.device, verdict.claim_source


# -- SSH --------------------------------------------------------------------------------------------

SSH_DEVICES = {
    "r1": {"ssh_host_keys": [KEY_R1]},
    "t1": {"tls_identities": ["serial:T1"]},  # a TLS-only device: no SSH key to mismatch with
}

SSH_TABLE = [
    # (fingerprint, address hint, device-id, expected (outcome, device, claim_source))
    pytest.param(FP_R1, "", "", (ACCEPTED, "r1", ""), id="enrolled"),
    pytest.param(FP_R1, "t1", "", (ACCEPTED, "r1", ""), id="enrolled-key-wins-over-hint"),
    pytest.param(FP_R1, "", "r9", (ACCEPTED, "r1", ""), id="enrolled-key-wins-over-device-id"),
    pytest.param(FP_OTHER, "", "", (UNKNOWN, "", ""), id="unknown"),
    pytest.param(FP_OTHER, "r1", "", (MISMATCH, "r1", "address"), id="unknown-from-r1-address"),
    pytest.param(FP_OTHER, "t1", "", (UNKNOWN, "", ""), id="hint-without-ssh-identity"),
    pytest.param(FP_OTHER, "nobody", "", (UNKNOWN, "", ""), id="hint-not-enrolled"),
    pytest.param(FP_OTHER, "", "r1", (MISMATCH, "r1", "device-id"), id="device-id-of-enrolled"),
    pytest.param(FP_OTHER, "t1", "r1", (MISMATCH, "r1", "device-id"), id="device-id-beats-hint"),
    pytest.param(FP_OTHER, "", "new1", (UNKNOWN, "new1", "device-id"), id="device-id-not-enrolled"),
]


@pytest.mark.parametrize("fingerprint, hint, device_id, expected", SSH_TABLE)
def test_ssh_verdicts(
    tmp_path: Path, fingerprint: str, hint: str, device_id: str, expected: t.Tuple[str, str, str]
) -> None:
    policy = make_policy(tmp_path, SSH_DEVICES)
    verdict = policy.ssh_verdict(fingerprint, hint=hint, device_id=device_id)
    assert outcome(verdict) == expected
    assert verdict.fingerprint == fingerprint
    assert verdict.accepted is (expected[0] == ACCEPTED)


# -- TLS: pinned fingerprints and the address hint ------------------------------------------------


def test_pinned_certificate_is_accepted_without_any_chain(tmp_path: Path) -> None:
    # Pinning trusts the exact certificate: self-signed, no CA configured, even expired.
    leaf = issue("r1", serial="R1", not_after=NOW - DAY, not_before=NOW - 3 * DAY)
    fp = cert_fingerprint_of_der(leaf.der)
    policy = make_policy(tmp_path, {"r1": {"tls_fingerprints": [fp]}})
    verdict = policy.tls_verdict([leaf.der], hint="")
    assert outcome(verdict) == (ACCEPTED, "r1", "")
    assert verdict.fingerprint == fp and verdict.identities == ["cn:r1", "serial:R1"]


def test_unknown_certificate_and_address_hint(tmp_path: Path) -> None:
    pinned = issue("r1")
    stranger = issue("stranger")
    policy = make_policy(
        tmp_path,
        {"r1": {"tls_fingerprints": [cert_fingerprint_of_der(pinned.der)]}, "s1": {"ssh_host_keys": [KEY_R1]}},
    )
    assert outcome(policy.tls_verdict([stranger.der])) == (UNKNOWN, "", "")
    assert outcome(policy.tls_verdict([stranger.der], hint="r1")) == (MISMATCH, "r1", "address")
    # s1 has no TLS identity, so a TLS key from its address mismatches nothing
    assert outcome(policy.tls_verdict([stranger.der], hint="s1")) == (UNKNOWN, "", "")


# -- TLS: identity claims proven by a chain ---------------------------------------------------------


@pytest.fixture(scope="module")
def root() -> Issued:
    return issue("device-root", ca=True, path_length=None)


ENROLLED_IDENTITY = [
    pytest.param("serial:FOC1234X", dict(serial="FOC1234X"), id="serial"),
    pytest.param("cn:r1.example.net", dict(), id="cn"),
    pytest.param("dns:r1.mgmt.example.net", dict(sans=[x509.DNSName("r1.mgmt.example.net")]), id="dns"),
    pytest.param(
        "uri:urn:example:device:r1",
        dict(sans=[x509.UniformResourceIdentifier("urn:example:device:r1")]),
        id="uri",
    ),
    pytest.param("ip:192.0.2.7", dict(sans=[x509.IPAddress(ipaddress.ip_address("192.0.2.7"))]), id="ip"),
]


@pytest.mark.parametrize("identity, leaf_args", ENROLLED_IDENTITY)
def test_enrolled_identity_with_a_valid_chain_is_accepted(
    tmp_path: Path, root: Issued, identity: str, leaf_args: t.Dict[str, t.Any]
) -> None:
    leaf = issue("r1.example.net", root, **leaf_args)
    policy = make_policy(tmp_path, {"r1": {"tls_identities": [identity]}}, [root.pem])
    verdict = policy.tls_verdict([leaf.der])
    assert outcome(verdict) == (ACCEPTED, "r1", "")
    assert identity in verdict.identities


def test_identity_claim_beats_the_address_hint(tmp_path: Path, root: Issued) -> None:
    other_root = issue("other-root", ca=True)
    good = issue("r1", root, serial="R1")
    forged = issue("r1", other_root, serial="R1")
    devices = {"r1": {"tls_identities": ["serial:R1"]}, "r2": {"tls_identities": ["serial:R2"]}}
    policy = make_policy(tmp_path, devices, [root.pem])
    # the certificate names r1; that it comes from r2's last address changes nothing
    assert outcome(policy.tls_verdict([good.der], hint="r2")) == (ACCEPTED, "r1", "")
    assert outcome(policy.tls_verdict([forged.der], hint="r2")) == (MISMATCH, "r1", "identity")


def _refused(policy: TrustPolicy, chain: t.Sequence[Issued]) -> t.Tuple[str, str, str]:
    return outcome(policy.tls_verdict([c.der for c in chain]))


CLAIMED_MISMATCH = (MISMATCH, "r1", "identity")


def test_chain_table(tmp_path: Path, root: Issued) -> None:
    """Each row: a chain presented by a device whose certificate names r1 (serial:R1)."""
    inter = issue("inter", root, ca=True, path_length=0)
    inter_pathlen0_root = issue("pathlen0-root", ca=True, path_length=0)
    inter_under_pathlen0 = issue("inter-under-pathlen0", inter_pathlen0_root, ca=True)
    inter_no_certsign = issue("inter-no-certsign", root, ca=True, key_cert_sign=False)
    inter_not_ca = issue("inter-not-ca", root, ca=False)
    inter_no_bc = issue("inter-no-bc", root, ca=False, basic_constraints=False)
    inter_expired = issue("inter-expired", root, ca=True, not_before=NOW - 9 * DAY, not_after=NOW - DAY)
    inter_client_only = issue("inter-client-only", root, ca=True, eku=(CLIENT,))
    inter_server = issue("inter-server", root, ca=True, eku=(SERVER, CLIENT))
    wrong_root = issue("wrong-root", ca=True)
    root_no_certsign = issue("root-no-certsign", ca=True, key_cert_sign=False)

    def leaf(issuer: Issued, **kw: t.Any) -> Issued:
        return issue("r1", issuer, serial="R1", **kw)

    # (row, chain the device sends, verdict, why verify_chain refuses it: the reason must be the
    # rule the row is about, not some other defect of the test certificate)
    table: t.List[t.Tuple[str, t.Sequence[Issued], t.Tuple[str, str, str], str]] = [
        ("direct", [leaf(root)], (ACCEPTED, "r1", ""), ""),
        ("via intermediate", [leaf(inter), inter], (ACCEPTED, "r1", ""), ""),
        ("intermediate not sent", [leaf(inter)], CLAIMED_MISMATCH, "candidates exhausted"),
        ("wrong CA", [leaf(wrong_root)], CLAIMED_MISMATCH, "candidates exhausted"),
        ("self-signed", [issue("r1", serial="R1")], CLAIMED_MISMATCH, "candidates exhausted"),
        (
            "leaf expired",
            [leaf(root, not_before=NOW - 9 * DAY, not_after=NOW - DAY)],
            CLAIMED_MISMATCH,
            "not valid at validation time",
        ),
        (
            "leaf not yet valid",
            [leaf(root, not_before=NOW + DAY, not_after=NOW + 9 * DAY)],
            CLAIMED_MISMATCH,
            "not valid at validation time",
        ),
        ("intermediate expired", [leaf(inter_expired), inter_expired], CLAIMED_MISMATCH, "not valid at validation"),
        (
            "pathLenConstraint 0 exceeded",
            [leaf(inter_under_pathlen0), inter_under_pathlen0],
            CLAIMED_MISMATCH,
            "path length constraint violated",
        ),
        (
            "intermediate without keyCertSign",
            [leaf(inter_no_certsign), inter_no_certsign],
            CLAIMED_MISMATCH,
            "keyUsage.keyCertSign must be asserted",
        ),
        (
            "intermediate with cA false",
            [leaf(inter_not_ca), inter_not_ca],
            CLAIMED_MISMATCH,
            "basicConstraints.cA must be asserted",
        ),
        (
            "intermediate without basicConstraints",
            [leaf(inter_no_bc), inter_no_bc],
            CLAIMED_MISMATCH,
            "no basicConstraints",
        ),
        ("EKU missing", [leaf(root, eku=None)], CLAIMED_MISMATCH, "no extended key usage"),
        ("EKU clientAuth only", [leaf(root, eku=(CLIENT,))], CLAIMED_MISMATCH, "does not include serverAuth"),
        ("EKU clientAuth and serverAuth", [leaf(root, eku=(CLIENT, SERVER))], (ACCEPTED, "r1", ""), ""),
        (
            "issuer EKU clientAuth only",
            [leaf(inter_client_only), inter_client_only],
            CLAIMED_MISMATCH,
            "does not allow serverAuth",
        ),
        ("issuer EKU allows serverAuth", [leaf(inter_server), inter_server], (ACCEPTED, "r1", ""), ""),
        ("leaf is a CA", [leaf(root, ca=True, eku=(SERVER,))], CLAIMED_MISMATCH, "cA must not be asserted in an EE"),
    ]
    anchors = [root, inter_pathlen0_root, root_no_certsign]
    policy = make_policy(tmp_path, {"r1": {"tls_identities": ["serial:R1"]}}, [a.pem for a in anchors])
    results = {row[0]: _refused(policy, row[1]) for row in table}
    assert results == {row[0]: row[2] for row in table}

    def reason(chain: t.Sequence[Issued]) -> str:
        try:
            verify_chain(chain[0].cert, [c.cert for c in chain[1:]], [a.cert for a in anchors], NOW)
        except ChainRejectedError as exc:
            return str(exc.details["reason"])
        return ""

    reasons = {row[0]: reason(row[1]) for row in table}
    assert {row[0]: row[3] in reasons[row[0]] and bool(row[3]) == bool(reasons[row[0]]) for row in table} == {
        row[0]: True for row in table
    }, reasons
    # a trust anchor that may not sign certificates anchors nothing
    (tmp_path / "bad").mkdir()
    only_bad_root = make_policy(tmp_path / "bad", {"r1": {"tls_identities": ["serial:R1"]}}, [root_no_certsign.pem])
    assert _refused(only_bad_root, [leaf(root_no_certsign)]) == CLAIMED_MISMATCH


def test_identity_claim_without_any_device_ca_is_a_mismatch(tmp_path: Path, root: Issued) -> None:
    policy = make_policy(tmp_path, {"r1": {"tls_identities": ["serial:R1"]}})
    assert _refused(policy, [issue("r1", root, serial="R1")]) == CLAIMED_MISMATCH


def test_trustme_chains(tmp_path: Path) -> None:
    """Certificates as most test suites make them: trustme root, intermediate, server leaf."""
    ca = trustme.CA()
    child = ca.create_child_ca()
    direct = ca.issue_cert("r1.example.net")
    via_child = child.issue_cert("r2.example.net", "192.0.2.9")
    expired = ca.issue_cert("r3.example.net", not_before=NOW - 9 * DAY, not_after=NOW - DAY)
    narrow_root = trustme.CA(path_length=0)
    # trustme's create_child_ca refuses to break pathLenConstraint; its constructor does not check
    too_deep = trustme.CA(parent_cert=narrow_root).issue_cert("r4.example.net")
    devices = {
        "r1": {"tls_identities": ["dns:r1.example.net"]},
        "r2": {"tls_identities": ["ip:192.0.2.9"]},
        "r3": {"tls_identities": ["dns:r3.example.net"]},
        "r4": {"tls_identities": ["dns:r4.example.net"]},
    }
    policy = make_policy(tmp_path, devices, [ca.cert_pem.bytes(), narrow_root.cert_pem.bytes()])

    def der_chain(leaf: trustme.LeafCert) -> t.List[bytes]:
        return [x509.load_pem_x509_certificate(b.bytes()).public_bytes(serialization.Encoding.DER)
                for b in leaf.cert_chain_pems]

    assert outcome(policy.tls_verdict(der_chain(direct))) == (ACCEPTED, "r1", "")
    assert outcome(policy.tls_verdict(der_chain(via_child))) == (ACCEPTED, "r2", "")
    assert outcome(policy.tls_verdict(der_chain(via_child)[:1])) == (MISMATCH, "r2", "identity")
    assert outcome(policy.tls_verdict(der_chain(expired))) == (MISMATCH, "r3", "identity")
    assert outcome(policy.tls_verdict(der_chain(too_deep))) == (MISMATCH, "r4", "identity")


# -- verify_chain itself ----------------------------------------------------------------------------


def test_verify_chain_says_why(root: Issued) -> None:
    good = issue("r1", root)
    verify_chain(good.cert, [], [root.cert], NOW)  # no exception: valid
    assert chain_is_valid(good.cert, [], [root.cert], NOW)
    with pytest.raises(ChainRejectedError, match="not valid at validation time") as info:
        verify_chain(good.cert, [], [root.cert], NOW + 60 * DAY)
    assert info.value.code == "key-mismatch" and "validation time" in info.value.details["reason"]
    with pytest.raises(ChainRejectedError, match="serverAuth"):
        verify_chain(issue("r1", root, eku=(CLIENT,)).cert, [], [root.cert], NOW)
    with pytest.raises(ChainRejectedError, match="no device CA"):
        verify_chain(good.cert, [], [], NOW)
    with pytest.raises(ValueError, match="aware"):
        verify_chain(good.cert, [], [root.cert], NOW.replace(tzinfo=None))
    assert not chain_is_valid(good.cert, [], [issue("other", ca=True).cert], NOW)


def test_device_certificate_from_the_test_pki_verifies(tmp_path: Path) -> None:
    """tests/peers/pki.py makes the certificates real devices present in the integration tests
    (serverAuth, no authorityKeyIdentifier): they must pass, and its client certificate must not."""
    peers = str(Path(__file__).resolve().parents[3] / "peers")
    if peers not in sys.path:
        sys.path.insert(0, peers)
    import pki  # tests/peers/pki.py

    made = pki.make_pki(tmp_path, device_name="lnc2-dev1", serial_number="SN-0001")
    device_ca = x509.load_pem_x509_certificate(made.device_ca.cert_path.read_bytes())
    device = x509.load_pem_x509_certificate(made.device_cert.cert_path.read_bytes())
    client = x509.load_pem_x509_certificate(made.listener_cert.cert_path.read_bytes())
    listener_ca = x509.load_pem_x509_certificate(made.listener_ca.cert_path.read_bytes())
    assert chain_is_valid(device, [], [device_ca], NOW)
    assert not chain_is_valid(client, [], [listener_ca], NOW)


# -- identities, credentials, reload ----------------------------------------------------------------


def test_certificate_identities_in_trust_store_spelling(root: Issued) -> None:
    leaf = issue(
        "r1.example.net",
        root,
        serial="FOC1",
        sans=[
            x509.DNSName("r1.example.net"),
            x509.UniformResourceIdentifier("urn:dev:r1"),
            x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
        ],
    )
    assert certificate_identities(leaf.cert) == [
        "cn:r1.example.net",
        "serial:FOC1",
        "dns:r1.example.net",
        "uri:urn:dev:r1",
        "ip:2001:db8::1",
    ]


def test_credentials_for_device_and_defaults(tmp_path: Path) -> None:
    store = tmp_path / "trust.json"
    store.write_text(
        json.dumps(
            {"devices": {"r1": {"ssh_host_keys": [KEY_R1], "credentials": {"username": "admin", "password_env": "PW"}}}}
        )
    )
    defaults = Credentials(username="netconf", private_key_file="/keys/id")
    policy = TrustPolicy(TrustStore(str(store)), TLSOptions(), defaults)
    own = policy.credentials_for("r1")
    # a device's own credentials replace the defaults as a whole (no default key next to its password)
    assert (own.username, own.password_env, own.private_key_file) == ("admin", "PW", "")
    other = policy.credentials_for("r2")
    assert (other.username, other.private_key_file) == ("netconf", "/keys/id")


def test_reload_picks_up_changes_and_keeps_the_last_good_store(tmp_path: Path) -> None:
    policy = make_policy(tmp_path, {"r1": {"ssh_host_keys": [KEY_R1]}})
    assert policy.reload() is False  # unchanged file: nothing to do
    store = tmp_path / "trust.json"
    store.write_text(json.dumps({"devices": {"r2": {"ssh_host_keys": [KEY_OTHER]}}}))
    assert policy.reload() is True
    assert policy.ssh_verdict(FP_OTHER).device == "r2" and not policy.ssh_verdict(FP_R1).accepted
    store.write_text("{broken")
    assert policy.reload() is False
    assert policy.ssh_verdict(FP_OTHER).device == "r2"

# SPDX-License-Identifier: GPL-3.0-or-later
"""Throw-away credentials for call-home tests: SSH keys and a small TLS PKI.

Why this exists: the tests run real NETCONF devices (libnetconf2's ``lnc2-device``, asyncssh
simulators) against the call-home listener. Both sides need keys that *both* libssh (C, the
device) and asyncssh (Python, the listener) can read, and certificates whose fingerprints the
tests can pin. Everything is generated with ``cryptography`` into a directory the caller owns
(normally pytest's ``tmp_path``), and every helper returns paths plus SHA-256 fingerprints in
small frozen dataclasses, so tests never have to re-derive them.

Formats (chosen because both libssh 0.10 and asyncssh read them):

* SSH ed25519 private keys: OpenSSH format (``-----BEGIN OPENSSH PRIVATE KEY-----``).
* SSH ecdsa (nistp256) / rsa (3072) private keys: traditional PEM
  (``-----BEGIN EC PRIVATE KEY-----`` / ``-----BEGIN RSA PRIVATE KEY-----``).
* SSH public keys: one OpenSSH line ``<type> <base64> <comment>`` in ``<name>.pub``.
* TLS: PEM certificates, PKCS#8 PEM private keys (EC P-256), mode 0600.

Fingerprint spellings:

* :attr:`SshKey.fingerprint` is OpenSSH's ``SHA256:<base64 without padding>`` (what
  ``ssh-keygen -lf`` and asyncssh's ``SSHKey.get_fingerprint()`` print).
* :attr:`TlsCert.fingerprint` is SHA-256 of the DER certificate as colon-separated upper-case
  hex (``AB:CD:...``); ``lnc2-device --ctn-fingerprint`` accepts it as is.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = (
    "SshAlgorithm",
    "SshKey",
    "TlsCa",
    "TlsCert",
    "TestPki",
    "make_ssh_key",
    "make_host_keys",
    "make_ca",
    "make_device_cert",
    "make_self_signed_device_cert",
    "make_client_cert",
    "make_pki",
    "ssh_fingerprint",
    "cert_fingerprint",
)

SshAlgorithm = Literal["ed25519", "ecdsa", "rsa"]
_VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class SshKey:
    """An SSH keypair on disk.

    :ivar algorithm: ``ed25519``, ``ecdsa`` (nistp256) or ``rsa`` (3072 bits).
    :ivar private_path: private key file (see module docstring for the format), mode 0600.
    :ivar public_path: ``<private_path>.pub``, one OpenSSH public key line.
    :ivar public_line: that line without the trailing newline.
    :ivar fingerprint: ``SHA256:<base64>`` of the public key blob, as OpenSSH prints it.
    """

    algorithm: SshAlgorithm
    private_path: Path
    public_path: Path
    public_line: str
    fingerprint: str


@dataclass(frozen=True)
class TlsCert:
    """A certificate and its private key on disk.

    :ivar cert_path: PEM certificate.
    :ivar key_path: PKCS#8 PEM private key, mode 0600.
    :ivar fingerprint: SHA-256 of the DER certificate, ``AB:CD:...`` (upper-case, colons).
    :ivar common_name: subject CN.
    :ivar serial_number: subject ``serialNumber`` attribute (e.g. an IDevID serial), if any.
    """

    cert_path: Path
    key_path: Path
    fingerprint: str
    common_name: str
    serial_number: str | None = None

    @property
    def fingerprint_hex(self) -> str:
        """The fingerprint as plain lower-case hex (no colons), for comparisons."""
        return self.fingerprint.replace(":", "").lower()


@dataclass(frozen=True)
class TlsCa(TlsCert):
    """A self-signed CA certificate that can sign others (see :func:`make_ca`)."""


@dataclass(frozen=True)
class TestPki:
    """Everything one device + one listener need for SSH and TLS call home.

    :ivar device_name: the device's name; the CN of its certificates.
    :ivar host_keys: the device's SSH host keys by algorithm.
    :ivar listener_ssh_key: the keypair the listener authenticates with (publickey auth).
    :ivar device_ca: CA that signed :attr:`device_cert`; the listener trusts it.
    :ivar device_cert: the device's TLS server certificate (CN = device name, serialNumber).
    :ivar device_self_signed: a self-signed device certificate, for pinned-fingerprint trust.
    :ivar listener_ca: CA that signed :attr:`listener_cert`; the device trusts it (``--tls-ca``).
    :ivar listener_cert: the listener's TLS client certificate.
    """

    __test__ = False  # not a pytest test class, despite the name

    device_name: str
    host_keys: dict[SshAlgorithm, SshKey]
    listener_ssh_key: SshKey
    device_ca: TlsCa
    device_cert: TlsCert
    device_self_signed: TlsCert
    listener_ca: TlsCa
    listener_cert: TlsCert


def _write_private(path: Path, data: bytes) -> None:
    """Write key material readable only by the owner (libssh refuses nothing, but be tidy)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def ssh_fingerprint(public_line: str) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of an OpenSSH public key line."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def cert_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of a certificate's DER encoding as ``AB:CD:...``."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def make_ssh_key(
    directory: Path, name: str, algorithm: SshAlgorithm = "ed25519", comment: str | None = None
) -> SshKey:
    """Generate an SSH keypair as ``directory/name`` and ``directory/name.pub``.

    Used for device host keys (``lnc2-device --hostkey``) and for the listener's client key
    (whose ``.pub`` goes to ``lnc2-device --authorized-key``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        private_format = serialization.PrivateFormat.OpenSSH
    elif algorithm == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
        private_format = serialization.PrivateFormat.TraditionalOpenSSL
    elif algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        private_format = serialization.PrivateFormat.TraditionalOpenSSL
    else:  # pragma: no cover - guarded by the Literal type
        raise ValueError(f"unsupported SSH key algorithm {algorithm!r}")
    private_path = directory / name
    public_path = directory / f"{name}.pub"
    _write_private(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM, private_format, serialization.NoEncryption()
        ),
    )
    public_raw = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public_line = f"{public_raw.decode()} {comment or name}"
    public_path.write_text(public_line + "\n")
    return SshKey(
        algorithm=algorithm,
        private_path=private_path,
        public_path=public_path,
        public_line=public_line,
        fingerprint=ssh_fingerprint(public_line),
    )


def make_host_keys(
    directory: Path, algorithms: tuple[SshAlgorithm, ...] = ("ed25519", "ecdsa", "rsa")
) -> dict[SshAlgorithm, SshKey]:
    """One device host key per algorithm, named ``ssh_host_<algorithm>_key``."""
    return {alg: make_ssh_key(directory, f"ssh_host_{alg}_key", alg) for alg in algorithms}


def _name(common_name: str, serial_number: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if serial_number is not None:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number))
    attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "netconf.callhome tests"))
    return x509.Name(attrs)


def _save_cert(
    directory: Path,
    stem: str,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    serial_number: str | None,
    cls: type[TlsCert] = TlsCert,
) -> TlsCert:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return cls(
        cert_path=cert_path,
        key_path=key_path,
        fingerprint=cert_fingerprint(cert),
        common_name=common_name,
        serial_number=serial_number,
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
    )


def _load_ca_key(ca: TlsCa) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):  # pragma: no cover - we made it
        raise TypeError("CA key is not an EC key")
    return key


def make_ca(directory: Path, common_name: str = "callhome-test-ca") -> TlsCa:
    """A self-signed CA (``<common_name>.crt``/``.key``) able to sign leaf certificates."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    result = _save_cert(directory, common_name, cert, key, common_name, None, TlsCa)
    assert isinstance(result, TlsCa)
    return result


def _leaf(
    directory: Path,
    stem: str,
    common_name: str,
    serial_number: str | None,
    usage: x509.ObjectIdentifier,
    issuer: TlsCa | None,
    san_dns: tuple[str, ...],
) -> TlsCert:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name, serial_number)
    if issuer is None:
        issuer_name, signing_key = subject, key
    else:
        issuer_cert = x509.load_pem_x509_certificate(issuer.cert_path.read_bytes())
        issuer_name, signing_key = issuer_cert.subject, _load_ca_key(issuer)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in san_dns]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    builder = (
        _builder(subject, issuer_name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    cert = builder.sign(signing_key, hashes.SHA256())
    return _save_cert(directory, stem, cert, key, common_name, serial_number)


def make_device_cert(
    directory: Path, ca: TlsCa, device_name: str, serial_number: str = "SN-0001"
) -> TlsCert:
    """Device TLS server certificate signed by ``ca``: CN and DNS SAN = ``device_name``,
    subject ``serialNumber`` = ``serial_number``, IP SAN 127.0.0.1, EKU serverAuth."""
    return _leaf(
        directory,
        f"{device_name}-server",
        device_name,
        serial_number,
        ExtendedKeyUsageOID.SERVER_AUTH,
        ca,
        (device_name,),
    )


def make_self_signed_device_cert(
    directory: Path, device_name: str, serial_number: str = "SN-0001"
) -> TlsCert:
    """Self-signed device server certificate, for listeners that pin a fingerprint instead
    of validating a chain (RFC 8071 C5 allows either)."""
    return _leaf(
        directory,
        f"{device_name}-selfsigned",
        device_name,
        serial_number,
        ExtendedKeyUsageOID.SERVER_AUTH,
        None,
        (device_name,),
    )


def make_client_cert(directory: Path, ca: TlsCa, common_name: str = "listener") -> TlsCert:
    """The listener's TLS client certificate signed by ``ca`` (EKU clientAuth)."""
    return _leaf(
        directory,
        f"{common_name}-client",
        common_name,
        None,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ca,
        (common_name,),
    )


def make_pki(
    directory: Path,
    device_name: str = "lnc2-dev1",
    serial_number: str = "SN-0001",
    host_key_algorithms: tuple[SshAlgorithm, ...] = ("ed25519", "ecdsa", "rsa"),
) -> TestPki:
    """Create a complete set of credentials for one device and one listener in ``directory``.

    Two separate CAs keep the trust directions apart: the listener trusts ``device_ca``, the
    device trusts ``listener_ca``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    device_ca = make_ca(directory, "device-ca")
    listener_ca = make_ca(directory, "listener-ca")
    return TestPki(
        device_name=device_name,
        host_keys=make_host_keys(directory, host_key_algorithms),
        listener_ssh_key=make_ssh_key(directory, "listener_id_ed25519", "ed25519", "listener"),
        device_ca=device_ca,
        device_cert=make_device_cert(directory, device_ca, device_name, serial_number),
        device_self_signed=make_self_signed_device_cert(directory, device_name, serial_number),
        listener_ca=listener_ca,
        listener_cert=make_client_cert(directory, listener_ca, "listener"),
    )

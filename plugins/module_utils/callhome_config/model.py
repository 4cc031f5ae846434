# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Typed description of one call-home client (the listener, as the device sees it).

**PRIVATE** to the collection. The module's parameters are turned into a :class:`CallHomeClient`
once, validated here (so every dialect refuses the same mistakes with the same words), and the
XML builders only translate it.
"""

from __future__ import annotations

import re
import typing as t
from dataclasses import dataclass, field

from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import NetconfCallhomeMissing

try:
    from netconf_callhome.errors import ConfigError
except ImportError:  # the module using this reports it (HAS_NETCONF_CALLHOME)
    ConfigError = NetconfCallhomeMissing  # type: ignore[misc,assignment]

#: Call-home protocols: which server module the entry goes to (ietf-netconf-server's
#: ``netconf-client`` list, or ietf-restconf-server's ``restconf-client`` list).
PROTOCOLS = ("netconf", "restconf")
#: Transports per protocol, as the YANG names them (ssh / tls cases of netconf-server's endpoint,
#: the https case of restconf-server's endpoint).
TRANSPORTS_OF = {"netconf": ("ssh", "tls"), "restconf": ("https",)}
TRANSPORTS = ("ssh", "tls", "https")
START_WITH = ("first-listed", "last-connected", "random-selection")
CONNECTION_TYPES = ("persistent", "periodic")
#: IANA call-home ports (RFC 8071 section 6): netconf-ch-ssh, netconf-ch-tls, restconf-ch-tls.
DEFAULT_PORTS = {"ssh": 4334, "tls": 4335, "https": 4336}
# iana-crypt-hash's crypt-hash pattern (RFC 7317): $0$ clear text, MD5, SHA-256, SHA-512 crypt.
_CRYPT_HASH = re.compile(
    r"^(\$0\$.*"
    r"|\$1\$[a-zA-Z0-9./]{1,8}\$[a-zA-Z0-9./]{22}"
    r"|\$5\$(rounds=\d+\$)?[a-zA-Z0-9./]{1,16}\$[a-zA-Z0-9./]{43}"
    r"|\$6\$(rounds=\d+\$)?[a-zA-Z0-9./]{1,16}\$[a-zA-Z0-9./]{86})$"
)
# yang:date-and-time restricted to minute granularity by ietf-netconf-server and
# ietf-restconf-server: seconds are written and must be ":00", the time zone is required
# (yang:date-and-time's own pattern). Given without seconds, ":00" is added.
_ANCHOR = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})(:00)?(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class TcpKeepalives:
    """ietf-tcp-common keepalives: RFC 9643 (idle-time, max-probes, probe-interval)."""

    idle_time: int
    max_probes: int
    probe_interval: int


@dataclass(frozen=True)
class Endpoint:
    """One listener address the device dials, in the order the device tries them."""

    name: str
    transport: str
    address: str
    port: int
    tcp_keepalives: t.Optional[TcpKeepalives] = None


@dataclass(frozen=True)
class ClientKey:
    """A public key the device accepts from the listener when it logs in (SSH user auth)."""

    name: str
    algorithm: str
    base64: str

    @classmethod
    def from_line(cls, name: str, line: str) -> "ClientKey":
        parts = line.strip().split()
        if len(parts) < 2:
            raise ConfigError("ssh.client_public_keys: %r is not an OpenSSH public key line" % line[:60])
        return cls(name=name, algorithm=parts[0], base64=parts[1])


@dataclass(frozen=True)
class SshParams:
    """What the device needs to run SSH towards the listener (it is the SSH *server*)."""

    host_key_name: str
    host_key_reference: str  # name of an asymmetric key in the device's keystore
    username: str
    client_keys: t.Tuple[ClientKey, ...] = ()
    keepalive_max_wait: t.Optional[int] = None
    keepalive_max_attempts: t.Optional[int] = None


@dataclass(frozen=True)
class CertToName:
    """RFC 7407 cert-to-name entry: which listener certificate maps to which NETCONF user."""

    id: int
    # tls-fingerprint as the YANG wants it: "04:AB:..." (hash id + hex). Mandatory in NETCONF's
    # mappings (RFC 7407); optional in RESTCONF's, where an entry without one matches any certificate.
    fingerprint: t.Optional[str]
    map_type: str  # specified, san-rfc822-name, san-dns-name, san-ip-address, san-any, common-name
    name: t.Optional[str] = None


@dataclass(frozen=True)
class TlsParams:
    server_key_reference: str  # keystore asymmetric-key holding the device certificate
    server_certificate_reference: str  # the certificate under that key
    ca_certs_reference: t.Optional[str] = None  # truststore certificate-bag with the listener's CA
    ee_certs_reference: t.Optional[str] = None  # or a bag with the listener's own certificate
    cert_to_name: t.Tuple[CertToName, ...] = ()


@dataclass(frozen=True)
class HttpUser:
    """A local user of the device's HTTP server (ietf-http-server ``client-authentication``):
    what the listener's HTTP basic credentials are checked against."""

    user_id: str
    username: t.Optional[str] = None
    hashed_password: t.Optional[str] = field(default=None, repr=False)  # crypt-hash, never logged


@dataclass(frozen=True)
class RestconfParams:
    """ietf-http-server parameters of a RESTCONF call-home endpoint (``http-server-parameters``)."""

    server_name: t.Optional[str] = None
    users: t.Tuple[HttpUser, ...] = ()


@dataclass(frozen=True)
class JunosParams:
    """Junos ``system services outbound-ssh client`` specifics."""

    device_id: str
    secret: t.Optional[str] = None
    keep_alive_retry: t.Optional[int] = None
    keep_alive_timeout: t.Optional[int] = None
    reconnect_strategy: t.Optional[str] = None  # sticky | in-order


@dataclass(frozen=True)
class CallHomeClient:
    """``/netconf-server/call-home/netconf-client[name]`` (protocol netconf) or
    ``/restconf-server/call-home/restconf-client[name]`` (protocol restconf) in typed form."""

    name: str
    endpoints: t.Tuple[Endpoint, ...]
    connection_type: str = "persistent"
    period: t.Optional[int] = None
    anchor_time: t.Optional[str] = None
    idle_timeout: t.Optional[int] = None
    start_with: t.Optional[str] = None
    max_wait: t.Optional[int] = None
    max_attempts: t.Optional[int] = None
    ssh: t.Optional[SshParams] = None
    tls: t.Optional[TlsParams] = None
    junos: t.Optional[JunosParams] = field(default=None, compare=False)
    protocol: str = "netconf"
    restconf: t.Optional[RestconfParams] = None

    @property
    def transports(self) -> t.Set[str]:
        return {e.transport for e in self.endpoints}


def tls_fingerprint_for_yang(value: str) -> str:
    """``SHA256:AB:CD..`` / ``AB:CD..`` / ``04:AB:..`` -> ``04:AB:CD..`` (RFC 7407 tls-fingerprint).

    The first octet names the hash (4 = sha256, as in the TLS HashAlgorithm registry).
    """
    raw = value.strip()
    if raw.upper().startswith("SHA256:"):
        raw = raw[7:]
    octets = [o for o in re.split(r"[:\s]", raw) if o]
    if len(octets) == 1 and len(octets[0]) in (64, 66):
        octets = [octets[0][i : i + 2] for i in range(0, len(octets[0]), 2)]
    if not all(re.fullmatch(r"[0-9A-Fa-f]{2}", o) for o in octets):
        raise ConfigError("cert_to_name fingerprint %r is not hex octets" % value)
    if len(octets) == 32:
        octets = ["04"] + octets
    if len(octets) != 33 or octets[0] != "04":
        raise ConfigError("cert_to_name fingerprint %r must be a SHA-256 fingerprint (32 octets)" % value)
    return ":".join(o.upper() for o in octets)


def _int(value: t.Any, where: str, low: int, high: int) -> t.Optional[int]:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError("%s must be an integer, got %r" % (where, value)) from None
    if not low <= number <= high:
        raise ConfigError("%s must be between %d and %d, got %d" % (where, low, high, number))
    return number


def from_params(params: t.Mapping[str, t.Any]) -> CallHomeClient:
    """Build and validate the model from the module's parameters (same names as the argspec)."""
    name = str(params.get("name") or "").strip()
    if not name:
        raise ConfigError("name (the netconf-client entry on the device) is required")
    protocol = params.get("protocol") or "netconf"
    if protocol not in PROTOCOLS:
        raise ConfigError("protocol must be netconf or restconf, got %r" % protocol)
    allowed = TRANSPORTS_OF[protocol]
    # The listener's single call-home port (callhome_binds): every endpoint without a port of its
    # own dials it, whatever its transport, instead of the transport's IANA port.
    single_port = _int(params.get("callhome_port"), "callhome_port", 1, 65535)
    raw_eps = params.get("endpoints") or []
    if not raw_eps:
        raise ConfigError("at least one endpoint is required (the listener's address)")
    endpoints = []
    seen: t.Set[str] = set()
    for i, ep in enumerate(raw_eps):
        transport = ep.get("transport") or allowed[0]
        if transport not in allowed:
            hint = (" (https is RESTCONF call home: set protocol: restconf)" if transport == "https" else
                    " (RESTCONF call home runs over https only)" if protocol == "restconf" else "")
            raise ConfigError("endpoints[%d].transport must be %s for protocol %s, got %r%s"
                              % (i, " or ".join(allowed), protocol, transport, hint))
        ep_name = str(ep.get("name") or "%s-%d" % (transport, i + 1))
        if ep_name in seen:
            raise ConfigError("endpoint name %r is used twice" % ep_name)
        seen.add(ep_name)
        address = str(ep.get("address") or "").strip()
        if not address:
            raise ConfigError("endpoints[%d].address is required" % i)
        port = _int(ep.get("port"), "endpoints[%d].port" % i, 1, 65535) or single_port or DEFAULT_PORTS[transport]
        ka = ep.get("tcp_keepalives")
        tcp_ka = None
        if ka:
            tcp_ka = TcpKeepalives(
                idle_time=_int(ka.get("idle_time", 15), "tcp_keepalives.idle_time", 1, 65535) or 15,
                max_probes=_int(ka.get("max_probes", 3), "tcp_keepalives.max_probes", 1, 65535) or 3,
                probe_interval=_int(ka.get("probe_interval", 5), "tcp_keepalives.probe_interval", 1, 65535) or 5,
            )
        endpoints.append(Endpoint(ep_name, transport, address, port, tcp_ka))

    connection = params.get("connection_type") or "persistent"
    if connection not in CONNECTION_TYPES:
        raise ConfigError("connection_type must be persistent or periodic")
    period = _int(params.get("period"), "period", 1, 65535)
    idle_timeout = _int(params.get("idle_timeout"), "idle_timeout", 0, 65535)
    anchor = params.get("anchor_time")
    if connection == "persistent" and (period is not None or anchor or idle_timeout is not None):
        raise ConfigError("period, anchor_time and idle_timeout only apply to connection_type: periodic")
    if anchor:
        match = _ANCHOR.match(str(anchor))
        if not match:
            raise ConfigError("anchor_time must look like 2025-01-01T00:15:00Z or 2025-01-01T00:15Z (minute "
                              "granularity, with a time zone), got %r" % anchor)
        anchor = "%s:00%s" % (match.group(1), match.group(3))
    start_with = params.get("start_with")
    if start_with is not None and start_with not in START_WITH:
        raise ConfigError("start_with must be one of %s" % ", ".join(START_WITH))

    ssh = None
    transports = {e.transport for e in endpoints}
    raw_ssh = params.get("ssh") or {}
    if "ssh" in transports:
        keys = tuple(
            ClientKey.from_line("%s-%d" % (raw_ssh.get("username") or "key", i + 1), line)
            for i, line in enumerate(raw_ssh.get("client_public_keys") or [])
        )
        ssh = SshParams(
            host_key_name=str(raw_ssh.get("host_key_name") or "default-key"),
            host_key_reference=str(raw_ssh.get("host_key_reference") or ""),
            username=str(raw_ssh.get("username") or ""),
            client_keys=keys,
            keepalive_max_wait=_int(raw_ssh.get("keepalive_max_wait"), "ssh.keepalive_max_wait", 1, 65535),
            keepalive_max_attempts=_int(raw_ssh.get("keepalive_max_attempts"), "ssh.keepalive_max_attempts", 0, 255),
        )
        if not ssh.host_key_reference:
            raise ConfigError("ssh.host_key_reference (the device's host key in its keystore) is required for SSH endpoints")
        if not ssh.username:
            raise ConfigError("ssh.username (the user the listener logs in as) is required for SSH endpoints")
    tls = None
    raw_tls = params.get("tls") or {}
    if transports & {"tls", "https"}:
        for i, m in enumerate(raw_tls.get("cert_to_name") or []):
            if not m.get("fingerprint") and protocol == "netconf":
                raise ConfigError("tls.cert_to_name[%d].fingerprint is required for NETCONF (RFC 7407 makes it "
                                  "mandatory; only RESTCONF's mappings may omit it)" % i)
        ctn = tuple(
            CertToName(
                id=_int(m.get("id") or i + 1, "tls.cert_to_name.id", 1, 2**32 - 1) or i + 1,
                fingerprint=tls_fingerprint_for_yang(str(m["fingerprint"])) if m.get("fingerprint") else None,
                map_type=str(m.get("map_type") or "specified"),
                name=m.get("name"),
            )
            for i, m in enumerate(raw_tls.get("cert_to_name") or [])
        )
        tls = TlsParams(
            server_key_reference=str(raw_tls.get("server_key_reference") or ""),
            server_certificate_reference=str(raw_tls.get("server_certificate_reference") or ""),
            ca_certs_reference=raw_tls.get("ca_certs_reference"),
            ee_certs_reference=raw_tls.get("ee_certs_reference"),
            cert_to_name=ctn,
        )
        if not (tls.server_key_reference and tls.server_certificate_reference):
            raise ConfigError("tls.server_key_reference and tls.server_certificate_reference are required for TLS "
                              "and HTTPS endpoints")
        if not (tls.ca_certs_reference or tls.ee_certs_reference):
            raise ConfigError("tls needs ca_certs_reference or ee_certs_reference (how the device checks the listener)")
        if not ctn:
            raise ConfigError("tls.cert_to_name needs at least one entry (RFC 7589 and RFC 8040 section 2.5: the "
                              "device maps the listener's certificate to a user, and refuses it without a mapping)")
        for m in ctn:
            if m.map_type == "specified" and not m.name:
                raise ConfigError("cert_to_name entry %d has map_type specified but no name" % m.id)

    restconf = None
    raw_restconf = params.get("restconf") or {}
    if raw_restconf and protocol != "restconf":
        raise ConfigError("restconf (HTTP server settings) only applies to protocol: restconf")
    if protocol == "restconf":
        users = []
        for i, u in enumerate(raw_restconf.get("users") or []):
            user_id = str(u.get("user_id") or "").strip()
            if not user_id:
                raise ConfigError("restconf.users[%d].user_id is required" % i)
            hashed = u.get("hashed_password")
            if hashed is not None and not _CRYPT_HASH.match(str(hashed)):
                raise ConfigError(
                    "restconf.users[%d].hashed_password is not an iana-crypt-hash value ($0$clear, $1$, $5$ or $6$ "
                    "crypt format, as mkpasswd prints)" % i
                )
            users.append(HttpUser(user_id=user_id, username=u.get("username"),
                                  hashed_password=str(hashed) if hashed is not None else None))
        restconf = RestconfParams(server_name=raw_restconf.get("server_name"), users=tuple(users))

    junos = None
    raw_junos = params.get("junos") or {}
    if raw_junos:
        strategy = raw_junos.get("reconnect_strategy")
        if strategy is not None and strategy not in ("sticky", "in-order"):
            raise ConfigError("junos.reconnect_strategy must be sticky or in-order")
        junos = JunosParams(
            device_id=str(raw_junos.get("device_id") or ""),
            secret=raw_junos.get("secret"),
            keep_alive_retry=_int(raw_junos.get("keep_alive_retry"), "junos.keep_alive_retry", 0, 255),
            keep_alive_timeout=_int(raw_junos.get("keep_alive_timeout"), "junos.keep_alive_timeout", 1, 3600),
            reconnect_strategy=strategy,
        )

    return CallHomeClient(
        name=name,
        endpoints=tuple(endpoints),
        connection_type=connection,
        period=period,
        anchor_time=str(anchor) if anchor else None,
        idle_timeout=idle_timeout,
        start_with=start_with,
        max_wait=_int(params.get("max_wait"), "max_wait", 1, 65535),
        max_attempts=_int(params.get("max_attempts"), "max_attempts", 1, 255),
        ssh=ssh,
        tls=tls,
        junos=junos,
        protocol=protocol,
        restconf=restconf,
    )


__all__ = (
    "CallHomeClient",
    "CertToName",
    "ClientKey",
    "Endpoint",
    "HttpUser",
    "JunosParams",
    "RestconfParams",
    "SshParams",
    "TcpKeepalives",
    "TlsParams",
    "from_params",
    "tls_fingerprint_for_yang",
)

# SPDX-License-Identifier: GPL-3.0-or-later
"""Listener options: one typed object, loaded from a YAML file and/or command-line overrides.

Unknown keys are errors (a typo in ``keepalive_intervall`` must not silently keep the default).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from netconf_callhome.paths import default_home
from netconf_callhome.errors import ConfigError

PORT_SSH = 4334
PORT_TLS = 4335
PORT_RESTCONF = 4336  # RFC 8071 section 3.2: RESTCONF call home
# How a device's session is leased (protocol.session): decided by the listener, or pinned.
SESSION_MODES = ("auto", "channel", "shared")
# What a device may be pinned to on the single call-home port (callhome_transports).
CALLHOME_PINS = ("tls", "restconf")


def parse_bind(value: str, default_port: int) -> Tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or ``:port``."""
    value = str(value).strip()
    if value.startswith("["):
        host, _sep, rest = value[1:].partition("]")
        port = rest.lstrip(":") or str(default_port)
    elif value.count(":") > 1:  # bare IPv6 address
        host, port = value, str(default_port)
    else:
        host, _sep, port = value.partition(":")
        port = port or str(default_port)
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("invalid bind address %r: port must be 0-65535" % value)
    return host, int(port)


def _has_port(bind: str) -> bool:
    """Whether a bind names its port (``host:port``, ``[v6]:port``, ``:port``); invalid ones fail
    in parse_bind with its own message."""
    value = str(bind).strip()
    if value.startswith("["):
        return bool(value.partition("]")[2].lstrip(":"))
    return value.count(":") == 1 and bool(value.partition(":")[2]) and parse_bind(value, 0) is not None


def _check_state_passfile(url: str) -> None:
    """A ``passfile=`` in a PostgreSQL ``state_url`` (the password in a libpq password file, as
    the listener role writes it, docs/scale-out.md) must be usable at start-up: the driver
    (asyncpg, like libpq) only warns and connects without a password when the file is missing or
    readable by others, and the operator would then see an authentication failure instead."""
    if not url.startswith(("postgresql://", "postgres://")):
        return
    try:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    except ValueError:
        return  # the store names the bad URL (redacted) when it opens it
    for path in query.get("passfile", []):
        if not os.path.isabs(path):
            raise ConfigError("state_url: passfile %r must be an absolute path" % path)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ConfigError("state_url: cannot read the passfile %s: %s" % (path, exc.strerror)) from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("state_url: the passfile %s is not a regular file" % path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                "state_url: the passfile %s has mode %04o; PostgreSQL clients ignore a password file that group "
                "or others can read: chmod 600 it" % (path, stat.S_IMODE(st.st_mode))
            )
        if not os.access(path, os.R_OK):
            raise ConfigError("state_url: cannot read the passfile %s: permission denied" % path)


@dataclass
class Credentials:
    """How the listener authenticates to devices (references only; secrets are read on use)."""

    username: str = "netconf"
    private_key_file: str = ""
    password_file: str = ""
    password_env: str = ""

    def read_password(self) -> Optional[str]:
        if self.password_file:
            try:
                with open(self.password_file, "r", encoding="utf-8") as handle:
                    return handle.read().rstrip("\r\n")
            except OSError as exc:
                raise ConfigError("cannot read password file %s: %s" % (self.password_file, exc.strerror)) from None
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError("password environment variable %s is not set" % self.password_env)
            return value
        return None


@dataclass
class TLSOptions:
    client_cert: str = ""  # the listener's certificate, presented to devices (cert-to-name on the device)
    client_key: str = ""
    device_cas: List[str] = field(default_factory=list)  # CAs for devices enrolled by identity


@dataclass
class RestconfOptions:
    """The ``restconf:`` section: bounds on a RESTCONF device's connection (protocol.restconf.
    RestconfLimits, which checks them; the names and defaults are the same, a unit test keeps
    them so). Keepalive is ``liveness_interval`` / ``liveness_timeout``, as for TLS sessions."""

    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 64 * 1024 * 1024
    request_timeout: float = 60.0
    ping_timeout: float = 10.0
    max_concurrent_streams: int = 100
    h2_stream_window: int = 1024 * 1024
    h2_connection_window: int = 4 * 1024 * 1024
    max_buffered_bytes: int = 128 * 1024 * 1024


@dataclass
class ControlTCPOptions:
    """Remote control/lease access for AWX and containers: TLS plus a bearer token."""

    bind: str = ""
    cert: str = ""
    key: str = ""
    token_file: str = ""
    token_env: str = ""
    # Before its token is checked a remote client is a stranger: it gets auth_timeout seconds from
    # the TCP accept to finish TLS and send its request line, at most max_request_bytes for that
    # line, and at most max_unauthenticated such connections exist at once (the oldest is closed
    # to make room, so a flood cannot lock out a client that authenticates promptly).
    auth_timeout: float = 5.0
    max_request_bytes: int = 64 * 1024
    max_unauthenticated: int = 64


@dataclass
class ClusterOptions:
    """The node-to-node channel of a scale-out cluster (docs/scale-out.md, control.cluster):
    mutual TLS, only peers with a certificate from ``ca`` (the cluster CA) are accepted. A node
    forwards a client's request for a device held by another node to that node's ``advertise``
    address (recorded in the shared database's ``nodes`` table). Off unless ``bind`` is set; needs
    ``state_url`` on PostgreSQL. The bounds are those of control_tcp, for peers not verified yet."""

    bind: str = ""
    advertise: str = ""  # HOST:PORT the other nodes dial; "" = the bound address
    cert: str = ""
    key: str = ""
    ca: str = ""
    auth_timeout: float = 5.0
    max_request_bytes: int = 1024 * 1024
    max_unauthenticated: int = 64
    connect_timeout: float = 5.0
    # Verified connections kept open to each peer node and reused for forwarded requests (one
    # request at a time on each); closed after pool_idle s unused. A node keeps a peer's idle
    # connection open at most 2 x its own pool_idle. 0 = a new connection per request.
    pool_size: int = 8
    pool_idle: float = 30.0


@dataclass
class ListenerConfig:
    home: str = field(default_factory=default_home)
    ssh_binds: List[str] = field(default_factory=lambda: ["0.0.0.0:%d" % PORT_SSH, "[::]:%d" % PORT_SSH])
    tls_binds: List[str] = field(default_factory=lambda: ["0.0.0.0:%d" % PORT_TLS, "[::]:%d" % PORT_TLS])
    outbound_ssh_binds: List[str] = field(default_factory=list)  # Junos outbound-ssh (preamble first)
    # RESTCONF call home (IANA port 4336); off unless set, it needs tls.client_cert/client_key.
    restconf_binds: List[str] = field(default_factory=list)
    restconf: RestconfOptions = field(default_factory=RestconfOptions)
    # One call-home port for every transport (docs/single-port.md), beside the IANA ports; off
    # unless set. There is no IANA port for it, so every entry names its port. The first bytes
    # tell SSH and outbound-ssh; a peer silent for callhome_silence s is taken for a TLS device
    # (it waits for the listener's ClientHello), so each TLS device's call home takes that much
    # longer; a peer still undecided after callhome_detect_timeout s is refused.
    callhome_binds: List[str] = field(default_factory=list)
    callhome_silence: float = 1.0
    callhome_detect_timeout: float = 10.0
    # device -> tls | restconf: on the single port a verified device that negotiated the other
    # TLS protocol (ALPN) is refused (reason transport-pinned).
    callhome_transports: Dict[str, str] = field(default_factory=dict)
    trust_store: str = ""
    registry: str = ""
    # Where the registry lives: "" (the SQLite file `registry`), sqlite:///PATH, or
    # postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE shared by several listener nodes
    # (docs/scale-out.md; needs the 'postgresql' extra). Logged with the password as ***.
    state_url: str = ""
    # The password of state_url's user, in a file (its first line) the node reads when it opens
    # the database and merges into the URL then, so that listener.yaml holds no secret (the
    # listener role writes it 0600). Never logged; state_url itself must then carry no password.
    state_password_file: str = ""
    # This node's name in a shared database (the devices.node column, the event history);
    # "" means the host name.
    node_name: str = ""
    control_socket: str = ""
    control_socket_mode: int = 0o600
    control_tcp: ControlTCPOptions = field(default_factory=ControlTCPOptions)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    credentials: Credentials = field(default_factory=Credentials)
    tls: TLSOptions = field(default_factory=TLSOptions)
    handshake_timeout: float = 30.0
    max_handshakes: int = 2000
    # Dead-peer detection has two layers. Kernel TCP keepalives find a dead host or path for no
    # process CPU; SSH keepalives (an encrypted round trip, ~0.2 ms of CPU each) also find a hung
    # device process. At 10,000 devices a 30 s SSH interval would cost ~8% of a core, so the SSH
    # layer runs slowly by default and the TCP layer quickly.
    keepalive_interval: float = 300.0  # SSH keepalive@openssh.com interval; 0 disables
    keepalive_count_max: int = 3
    tcp_keepalive_idle: float = 30.0
    tcp_keepalive_interval: float = 10.0
    tcp_keepalive_count: int = 3
    # TLS sessions have no keepalive of their own (RFC 8071 3.1 S7 asks for liveness checks): a
    # held TLS session the device has been silent on for liveness_interval s gets a <get-config>
    # of nothing through the multiplexer; no byte back within liveness_timeout s and the device
    # is declared dead (event=device.unresponsive, session closed). 0 turns the check off.
    liveness_interval: float = 60.0
    liveness_timeout: float = 10.0
    # A device that accepts a new ``netconf`` channel but sends no hello on it within this many
    # seconds serves one NETCONF session per connection: it is leased over its held session.
    channel_hello_timeout: float = 5.0
    session_modes: Dict[str, str] = field(default_factory=dict)  # device -> auto | channel | shared
    max_hello_bytes: int = 1024 * 1024
    max_message_bytes: int = 256 * 1024 * 1024
    block_failures: int = 50  # failed handshakes from one address within block_window...
    block_window: float = 60.0
    block_seconds: float = 60.0  # ...block it this long (RFC 8071 section 4)
    # A blocked address is rate-limited, not cut off: this many handshakes per second are still
    # admitted from it, so an enrolled device behind the same address gets in (0: hard block).
    block_admit_rate: float = 1.0
    metrics_bind: str = ""
    # PROXY protocol (v1/v2) from load balancers (docs/scale-out.md): a connection from one of
    # these networks (CIDR or address) must start with a PROXY header within
    # proxy_protocol_timeout s, and the device address in it is the peer everywhere (logs,
    # blocking, registry). Empty: off, and no header is ever trusted.
    proxy_protocol_from: List[str] = field(default_factory=list)
    proxy_protocol_timeout: float = 5.0
    # Collections paths for the Ansible endpoint's plugin loader (netconf sub-plugins); when set,
    # used instead of the paths the first client sends (the role installs them, docs/listener.md).
    collections_paths: List[str] = field(default_factory=list)
    idle_exit: float = 0.0  # embedded mode: exit after this long with no control activity/leases
    log_format: str = "text"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        self.home = os.path.abspath(os.path.expanduser(self.home))
        self.trust_store = self.trust_store or os.path.join(self.home, "trust.json")
        self.registry = self.registry or os.path.join(self.home, "registry.sqlite")
        self.control_socket = self.control_socket or os.path.join(self.home, "control.sock")

    def state_dsn(self) -> str:
        """``state_url`` with the password of ``state_password_file`` in it: for the store's
        connection only (the store logs and reports the URL redacted); ``state_url`` when no file."""
        if not self.state_password_file:
            return self.state_url
        path = self.state_password_file
        try:
            if os.stat(path).st_mode & stat.S_IRWXO:
                raise ConfigError("state_password_file %s can be read by others: chmod 600 it" % path)
            with open(path, "r", encoding="utf-8") as handle:
                password = handle.readline().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError("cannot read state_password_file %s: %s" % (path, exc.strerror)) from None
        if not password:
            raise ConfigError("state_password_file %s is empty" % path)
        parts = urllib.parse.urlsplit(self.state_url)
        userinfo, _at, hostinfo = parts.netloc.rpartition("@")
        netloc = "%s:%s@%s" % (userinfo, urllib.parse.quote(password, safe=""), hostinfo)
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def validate(self) -> "ListenerConfig":
        for bind in self.ssh_binds:
            parse_bind(bind, PORT_SSH)
        for bind in self.tls_binds:
            parse_bind(bind, PORT_TLS)
        for bind in self.outbound_ssh_binds:
            parse_bind(bind, PORT_SSH)
        for bind in self.restconf_binds:
            parse_bind(bind, PORT_RESTCONF)
        for bind in self.callhome_binds:
            if not _has_port(bind):
                raise ConfigError(
                    "callhome_binds: %r needs a port (host:port, [v6]:port or :port): the single call-home "
                    "port has no IANA number" % bind
                )
        if not 0 < self.callhome_silence < self.callhome_detect_timeout:
            raise ConfigError("callhome_silence must be positive and below callhome_detect_timeout")
        for device, transport in self.callhome_transports.items():
            if transport not in CALLHOME_PINS:
                raise ConfigError(
                    "callhome_transports.%s: %r is not a TLS call-home transport (one of %s)"
                    % (device, transport, ", ".join(CALLHOME_PINS))
                )
        if self.restconf_binds and not (self.tls.client_cert and self.tls.client_key):
            # Unlike tls_binds (on by default, off without a certificate), RESTCONF is asked for
            # explicitly: silently not listening would leave the operator guessing.
            raise ConfigError(
                "RESTCONF call home (restconf_binds) needs tls.client_cert and tls.client_key (the listener's certificate)"
            )
        if self.tls_binds and self.tls_enabled and not (self.tls.client_cert and self.tls.client_key):
            raise ConfigError("TLS call home needs tls.client_cert and tls.client_key (the listener's certificate)")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log_format must be 'text' or 'json'")
        if self.state_url and not self.state_url.startswith(("sqlite:", "postgresql://", "postgres://")):
            # Only the scheme is shown: the rest may hold a password.
            raise ConfigError(
                "state_url: unsupported scheme %r (sqlite:///PATH or postgresql://USER@HOST[:PORT]/DATABASE)"
                % self.state_url.split(":", 1)[0]
            )
        _check_state_passfile(self.state_url)
        if self.state_password_file:
            if not self.state_url.startswith(("postgresql://", "postgres://")):
                raise ConfigError("state_password_file needs a postgresql:// state_url (the shared database)")
            userinfo = urllib.parse.urlsplit(self.state_url).netloc.rpartition("@")[0]
            if not userinfo or ":" in userinfo:
                raise ConfigError(
                    "state_password_file: state_url must name its user and no password "
                    "(postgresql://USER@HOST[:PORT]/DATABASE)"
                )
            self.state_dsn()  # unreadable or world-readable: refused at start-up, not at the first write
        for device, mode in self.session_modes.items():
            if mode not in SESSION_MODES:
                raise ConfigError(
                    "session_modes.%s: %r is not a session mode (one of %s)" % (device, mode, ", ".join(SESSION_MODES))
                )
        for name in ("handshake_timeout", "tcp_keepalive_idle", "tcp_keepalive_interval", "channel_hello_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError("%s must be positive" % name)
        if self.keepalive_interval < 0:
            raise ConfigError("keepalive_interval must be 0 (off) or positive")
        if self.liveness_interval < 0:
            raise ConfigError("liveness_interval must be 0 (off) or positive")
        if self.liveness_timeout <= 0:
            raise ConfigError("liveness_timeout must be positive")
        if self.block_admit_rate < 0:
            raise ConfigError("block_admit_rate must be 0 (hard block) or positive (handshakes per second)")
        for network in self.proxy_protocol_from:
            try:
                ipaddress.ip_network(network, strict=True)
            except ValueError as exc:
                raise ConfigError("proxy_protocol_from: %r is not an address or network (CIDR): %s" % (network, exc)) from None
        if self.proxy_protocol_timeout <= 0:
            raise ConfigError("proxy_protocol_timeout must be positive")
        if self.control_tcp.bind and not (
            self.control_tcp.cert
            and self.control_tcp.key
            and (self.control_tcp.token_file or self.control_tcp.token_env)
        ):
            raise ConfigError("control_tcp needs cert, key and token_file or token_env: remote access is never open")
        if self.control_tcp.auth_timeout <= 0:
            raise ConfigError("control_tcp.auth_timeout must be positive")
        if self.control_tcp.max_request_bytes < 1024:
            raise ConfigError("control_tcp.max_request_bytes must be at least 1024")
        if self.control_tcp.max_unauthenticated < 1:
            raise ConfigError("control_tcp.max_unauthenticated must be at least 1")
        cluster = self.cluster
        if cluster.bind:
            if not (cluster.cert and cluster.key and cluster.ca):
                raise ConfigError("cluster needs cert, key and ca: the node-to-node channel is mutual TLS, never open")
            if not self.state_url.startswith(("postgresql://", "postgres://")):
                raise ConfigError("cluster needs state_url on PostgreSQL: the nodes find each other in the shared database")
        if cluster.auth_timeout <= 0 or cluster.connect_timeout <= 0:
            raise ConfigError("cluster.auth_timeout and cluster.connect_timeout must be positive")
        if cluster.max_request_bytes < 1024:
            raise ConfigError("cluster.max_request_bytes must be at least 1024")
        if cluster.max_unauthenticated < 1:
            raise ConfigError("cluster.max_unauthenticated must be at least 1")
        if not 0 <= cluster.pool_size <= 1024:
            raise ConfigError("cluster.pool_size must be 0 (no pool) to 1024 connections per peer node")
        if cluster.pool_idle <= 0:
            raise ConfigError("cluster.pool_idle must be positive (seconds)")
        return self

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls.client_cert)

    @property
    def dead_peer_seconds(self) -> float:
        """Worst case until a silent peer is declared dead (by whichever layer is faster)."""
        tcp = self.tcp_keepalive_idle + self.tcp_keepalive_interval * self.tcp_keepalive_count
        ssh = self.keepalive_interval * self.keepalive_count_max
        return min(tcp, ssh) if ssh else tcp


def _build(cls: Any, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError("%s must be a mapping" % where)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            "%s: unknown option(s) %s (known: %s)" % (where, ", ".join(unknown), ", ".join(sorted(known)))
        )
    kwargs: Dict[str, Any] = {}
    for name, value in data.items():
        spec = known[name]
        default = spec.default_factory() if callable(spec.default_factory) else spec.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, "%s.%s" % (where, name))
        elif isinstance(default, dict):
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError("%s.%s must be a mapping" % (where, name))
            kwargs[name] = {str(k): "" if v is None else str(v) for k, v in value.items()}
        elif isinstance(default, list):
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list):
                raise ConfigError("%s.%s must be a list" % (where, name))
            kwargs[name] = [str(v) for v in value]
        elif isinstance(default, bool):
            kwargs[name] = bool(value)
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                kwargs[name] = type(default)(
                    int(value, 8) if isinstance(value, str) and name.endswith("_mode") else value
                )
            except (TypeError, ValueError):
                raise ConfigError("%s.%s must be a number, got %r" % (where, name, value)) from None
        else:
            kwargs[name] = "" if value is None else str(value)
    return cls(**kwargs)


def load_config(path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None) -> ListenerConfig:
    data: Dict[str, Any] = {}
    if path:
        import yaml  # PyYAML comes with ansible-core; imported here so the module imports without it

        try:
            with open(path, "r", encoding="utf-8") as handle:
                loaded = yaml.safe_load(handle) or {}
        except OSError as exc:
            raise ConfigError("cannot read listener configuration %s: %s" % (path, exc.strerror)) from None
        except yaml.YAMLError as exc:
            raise ConfigError("listener configuration %s is not valid YAML: %s" % (path, exc)) from None
        if not isinstance(loaded, dict):
            raise ConfigError("listener configuration %s must be a mapping" % path)
        data.update(loaded)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = dict(data[key], **value)  # command-line fields refine the file's section
        else:
            data[key] = value
    return _build(ListenerConfig, data, path or "listener configuration").validate()

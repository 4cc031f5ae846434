# SPDX-License-Identifier: GPL-3.0-or-later
"""Sockets and addresses, generic: listening sockets, TCP keepalives, peer notation.

Nothing here knows about devices, trust or NETCONF; every layer may import it.
"""

from __future__ import annotations

import socket
from typing import Any, Optional, Sequence

from netconf_callhome.config import ListenerConfig


def make_listening_socket(host: str, port: int) -> socket.socket:
    """Bind one address; IPv6 sockets are v6-only so '0.0.0.0' and '::' can both be listed."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, addr = infos[0][0], infos[0][4]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(4096)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def set_tcp_keepalive(sock: Optional[socket.socket], cfg: ListenerConfig) -> None:
    """Kernel keepalives: the cheap dead-peer detector (see ListenerConfig)."""
    if sock is None:
        return
    idle = max(1, int(cfg.tcp_keepalive_idle))
    interval = max(1, int(cfg.tcp_keepalive_interval))
    count = max(1, cfg.tcp_keepalive_count)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        # Unacknowledged data must not keep a dead peer "connected" for the kernel's 15 minutes.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, (idle + interval * count) * 1000)


def format_peer(peer: Sequence[Any]) -> str:
    """``ip:port``, or ``[v6]:port`` for IPv6: the one notation of a peer in logs and the registry."""
    host, port = peer[0], peer[1]
    return "[%s]:%s" % (host, port) if ":" in str(host) else "%s:%s" % (host, port)


def describe_peer(peer: Any) -> str:
    """A connection's ``peername`` for a log line: :func:`format_peer` for an address, the value
    as text otherwise (a Unix socket's empty name, None after the peer left)."""
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        return format_peer(peer)
    return str(peer)


def peer_ip(peer: str) -> str:
    """The address part of a peer written by :func:`format_peer`."""
    return peer.rsplit(":", 1)[0].strip("[]")


def format_binds(bound: Sequence[Sequence[Any]]) -> str:
    return ",".join(format_peer(b) for b in bound)

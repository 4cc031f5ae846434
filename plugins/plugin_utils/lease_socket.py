# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Turn a leased control connection into something ncclient's Unix-socket session can read.

**PRIVATE** to the collection. ncclient's ``UnixSocketSession`` waits on the socket with a
selector and then calls ``recv``. That is right for a plain socket (Unix or TCP) but not for an
``SSLSocket``: TLS records already decrypted into the SSL buffer do not make the socket readable,
so the session could sit on a reply that has arrived. For a remote (``tls://``) listener the lease
is bridged through a local ``socketpair`` by one thread that owns the TLS socket (OpenSSL objects
must not be read and written from two threads at once); ncclient gets the plain end.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import threading

_CHUNK = 65536
_HIGH_WATER = 4 * 1024 * 1024  # stop reading a side while this much waits for the other


def adoptable(sock: socket.socket) -> socket.socket:
    """A plain stream socket carrying the same bytes as ``sock`` (``sock`` itself if plain)."""
    if not isinstance(sock, ssl.SSLSocket):
        return sock
    inner, outer = socket.socketpair()
    threading.Thread(target=_bridge, args=(sock, outer), name="callhome-tls-bridge", daemon=True).start()
    return inner


def _bridge(tls: ssl.SSLSocket, plain: socket.socket) -> None:
    """Copy bytes both ways until either side ends; then close both (ncclient sees EOF)."""
    tls.setblocking(False)
    plain.setblocking(False)
    to_tls = bytearray()
    to_plain = bytearray()
    sel = selectors.DefaultSelector()
    try:
        while True:
            tls_ev = (selectors.EVENT_READ if len(to_plain) < _HIGH_WATER else 0) | (
                selectors.EVENT_WRITE if to_tls else 0
            )
            plain_ev = (selectors.EVENT_READ if len(to_tls) < _HIGH_WATER else 0) | (
                selectors.EVENT_WRITE if to_plain else 0
            )
            for fileobj, events in ((tls, tls_ev), (plain, plain_ev)):
                try:
                    sel.unregister(fileobj)
                except KeyError:
                    pass
                if events:
                    sel.register(fileobj, events)
            ready = {key.fileobj: mask for key, mask in sel.select(0 if tls.pending() else 30.0)}
            if tls.pending() or ready.get(tls, 0) & selectors.EVENT_READ:
                try:
                    data = tls.recv(_CHUNK)
                    if not data:
                        _flush(plain, to_plain)
                        return
                    to_plain += data
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
            if ready.get(plain, 0) & selectors.EVENT_READ:
                try:
                    data = plain.recv(_CHUNK)
                    if not data:
                        _flush(tls, to_tls)
                        return
                    to_tls += data
                except BlockingIOError:
                    pass
            if to_tls:
                try:
                    sent = tls.send(bytes(to_tls[:_CHUNK]))
                    del to_tls[:sent]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    pass
            if to_plain:
                try:
                    sent = plain.send(bytes(to_plain[:_CHUNK]))
                    del to_plain[:sent]
                except BlockingIOError:
                    pass
    except (OSError, ValueError):
        return
    finally:
        sel.close()
        for s in (plain, tls):
            try:
                s.close()
            except OSError:
                pass


def _flush(sock: socket.socket, pending: bytearray) -> None:
    """Deliver what was already read before closing, so no reply is lost at the end."""
    if pending:
        sock.settimeout(10.0)
        sock.sendall(bytes(pending))


__all__ = ("adoptable",)

# SPDX-License-Identifier: GPL-3.0-or-later
"""A TLS call-home device in a thread (RFC 8071 TLS: the device dials, then serves TLS and
NETCONF), on the test peers' NETCONF core: enough to hold a session with a given certificate."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import List, Optional

from netconf_server import NetconfDevice, NetconfSession  # tests/peers


class TLSDevice:
    """One call: connect, TLS with ``cert``/``key``, NETCONF until the listener closes or
    :meth:`stop`. ``ended`` is set when the connection is gone, ``why`` says how."""

    def __init__(self, name: str, port: int, cert: Path, key: Path) -> None:
        self.name = name
        self.port = port
        self.cert = cert
        self.key = key
        self.ended = threading.Event()
        self.why = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "TLSDevice":
        self._thread = threading.Thread(target=self._run, name="tls-device-" + self.name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert), str(self.key))
        closed: List[str] = []
        try:
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            with ctx.wrap_socket(raw, server_side=True) as tls:
                tls.settimeout(0.2)
                session = NetconfSession(NetconfDevice(self.name), tls.sendall, closed.append)
                session.start()
                while not self._stop.is_set() and not closed:
                    try:
                        data = tls.recv(65536)
                    except socket.timeout:
                        continue
                    if not data:
                        self.why = "closed by the listener"
                        break
                    session.data_received(data)
                else:
                    self.why = closed[0] if closed else "stopped"
        except (OSError, ssl.SSLError) as exc:
            self.why = "%s: %s" % (type(exc).__name__, exc)
        finally:
            self.ended.set()

# SPDX-License-Identifier: GPL-3.0-or-later
"""Devices the attack suite runs in their own processes (so they can be SIGSTOPped, and their
CPU is not the listener's nor the test's).

``tls``   a NETCONF-over-TLS call-home device (RFC 7589): dials the listener, runs the TLS *server*
          side with its certificate, then serves NETCONF with the sans-IO core of
          ``tests/peers/netconf_server.py``. With ``--retry`` it dials again after a drop.
``ssh``   a misbehaving SSH call-home device (asyncssh ``connect_reverse``), enrolled or not:
          ``--mode endless-reply``  hello with base:1.0 only, then answers the first ``<rpc>``
                                    with an ``<rpc-reply>`` that never ends (no ``]]>]]>``)
          ``--mode endless-hello``  a hello that never ends
          ``--mode utf16-dtd``      a hello in UTF-16 carrying an internal DTD entity whose
                                    expansion (``--marker``) would land in the capabilities

``restconf`` a RESTCONF call-home device (RFC 8071 section 3.2): dials the listener, runs the TLS
          server side (ALPN ``h2``), then HTTP/2 with ``h2``; ``--mode``:
          ``good``            host-meta (root ``/restconf``) and the YANG library; stays connected
          ``stall-tls``       never answers the listener's ClientHello
          ``stall-http``      TLS, then silence: no SETTINGS, no answer
          ``endless-body``    host-meta answered with a body that never ends (within flow control)
          ``oversized``       a YANG library of ``--size`` bytes with its content-length
          ``malformed-json``  a YANG library that is not JSON
          ``malformed-xml``   a host-meta that is not XML

Progress on stdout, one line per event: ``CONNECTED``, ``READY``, ``STREAMING``,
``STREAMED <bytes>``, ``DISCONNECTED <reason>``. Every mode exits when its parent dies.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
PEERS = HERE.parent / "peers"
if str(PEERS) not in sys.path:
    sys.path.insert(0, str(PEERS))

BASE_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
BASE_10 = "urn:ietf:params:netconf:base:1.0"
EOM = b"]]>]]>"


def say(*words: object) -> None:
    try:
        sys.stdout.write(" ".join(str(w) for w in words) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass


def _exit_with_parent() -> None:
    """A crashed test never leaves a device dialing: watch the parent, exit when it is gone."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _hostport(text: str) -> "tuple[str, int]":
    host, _sep, port = text.rpartition(":")
    return host.strip("[]"), int(port)


# -- TLS device ---------------------------------------------------------------------------------


def run_tls(args: argparse.Namespace) -> int:
    from netconf_server import NetconfDevice, NetconfSession  # tests/peers

    host, port = _hostport(args.listener)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    device = NetconfDevice(args.name)
    while True:
        reason = "?"
        try:
            raw = socket.create_connection((host, port), timeout=10)
            raw.settimeout(None)
            tls = ctx.wrap_socket(raw, server_side=True)
            say("CONNECTED", args.name)
            closed: List[str] = []

            def send(data: bytes) -> None:
                tls.sendall(data)

            def close(why: str) -> None:
                closed.append(why)

            session = NetconfSession(
                device, send, close, on_ready=lambda s: say("READY", args.name, s.session_id)
            )
            session.start()
            while not closed:
                data = tls.recv(65536)
                if not data:
                    reason = "eof"
                    break
                session.data_received(data)
            else:
                reason = closed[0].replace(" ", "_")
            session.connection_lost()
            tls.close()
        except (OSError, ssl.SSLError) as exc:
            reason = "%s:%s" % (type(exc).__name__, str(exc).replace(" ", "_")[:80])
        say("DISCONNECTED", args.name, reason)
        if args.retry <= 0:
            return 0
        time.sleep(args.retry)


# -- RESTCONF device (HTTP/2), good or misbehaving ------------------------------------------------

_HOST_META = b"<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'><Link rel='restconf' href='/restconf'/></XRD>"
_YANG_LIBRARY = (
    b'{"ietf-yang-library:yang-library": {"content-id": "1", "module-set": [{"name": "complete", "module": '
    b'[{"name": "ietf-interfaces", "revision": "2018-02-20", "namespace": '
    b'"urn:ietf:params:xml:ns:yang:ietf-interfaces"}]}]}}'
)


def _restconf_answer(mode: str, path: str, size: int) -> "tuple[int, str, Optional[bytes]]":
    """(status, content type, body; None = a body that never ends) for a request path."""
    if path == "/.well-known/host-meta":
        if mode == "endless-body":
            return 200, "application/xrd+xml", None
        if mode == "malformed-xml":
            return 200, "application/xrd+xml", b"<XRD><Link rel='restconf' href='/restconf'"
        return 200, "application/xrd+xml", _HOST_META
    if path.endswith("/data/ietf-yang-library:yang-library"):
        if mode == "oversized":
            return 200, "application/yang-data+json", b"{" + b" " * max(0, size - 2) + b"}"
        if mode == "malformed-json":
            return 200, "application/yang-data+json", b'{"ietf-yang-library:yang-library": [1, 2'
        return 200, "application/yang-data+json", _YANG_LIBRARY
    return 404, "application/yang-data+json", b""


def run_restconf(args: argparse.Namespace) -> int:
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    host, port = _hostport(args.listener)
    raw = socket.create_connection((host, port), timeout=10)
    raw.settimeout(None)
    say("CONNECTED", args.name)
    if args.mode == "stall-tls":
        while raw.recv(65536):  # the ClientHello, never answered
            pass
        say("DISCONNECTED", args.name, "eof")
        return 0
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(raw, server_side=True)
    if args.mode == "stall-http":
        while tls.recv(65536):
            pass
        say("DISCONNECTED", args.name, "eof")
        return 0
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    paths: "dict[int, str]" = {}
    outgoing: "dict[int, Optional[memoryview]]" = {}  # stream -> body left to send (None: endless)
    streamed = 0
    reason = "eof"
    chunk = memoryview(b"x" * 16384)
    try:
        while True:
            # bodies go out as fast as the listener's flow-control windows let them
            for sid, left in list(outgoing.items()):
                while True:
                    piece = chunk if left is None else left
                    room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(piece))
                    if room <= 0:
                        break
                    last = left is not None and room == len(left)
                    conn.send_data(sid, piece[:room].tobytes(), end_stream=last)
                    streamed += room
                    if left is not None:
                        left = outgoing[sid] = left[room:]
                        if last:
                            del outgoing[sid]
                            break
            tls.sendall(conn.data_to_send())
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    paths[event.stream_id] = dict(event.headers)[":path"]
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id in paths:
                    sid = event.stream_id
                    status, ctype, body = _restconf_answer(args.mode, paths.pop(sid), args.size)
                    headers = [(":status", str(status)), ("content-type", ctype)]
                    if body is None:
                        say("STREAMING", args.name)
                    else:
                        headers.append(("content-length", str(len(body))))
                    conn.send_headers(sid, headers, end_stream=(body == b""))
                    if body != b"":
                        outgoing[sid] = None if body is None else memoryview(body)
                    if args.mode == "good" and paths == {} and status == 200 and ctype.endswith("json"):
                        say("READY", args.name)
                elif isinstance(event, h2.events.StreamReset):
                    outgoing.pop(event.stream_id, None)
                    say("RESET", args.name, event.stream_id, streamed)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    reason = "goaway"
    except (OSError, ssl.SSLError, h2.exceptions.H2Error) as exc:
        reason = "%s:%s" % (type(exc).__name__, str(exc).replace(" ", "_")[:80])
    say("DISCONNECTED", args.name, reason)
    return 0


# -- misbehaving SSH device ---------------------------------------------------------------------


def utf16_dtd_hello(marker: str, encoding: str) -> bytes:
    """A hello whose internal entity expands to ``marker`` inside a capability. The encoding
    declaration and a BOM make any XML parser read it, while a byte regex looking for
    ``<!DOCTYPE`` sees ``<\\0!\\0D\\0...`` and nothing else."""
    text = (
        '<?xml version="1.0" encoding="UTF-16"?>'
        '<!DOCTYPE hello [<!ENTITY cap "%s">]>'
        '<hello xmlns="%s"><capabilities><capability>%s</capability>'
        "<capability>&cap;</capability></capabilities><session-id>7</session-id></hello>"
        % (marker, BASE_NS, BASE_10)
    )
    bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}[encoding]
    return bom + text.encode(encoding)


async def run_ssh(args: argparse.Namespace) -> int:
    import asyncssh

    host, port = _hostport(args.listener)
    key = asyncssh.read_private_key(args.key)
    done = asyncio.get_running_loop().create_future()

    class Channel(asyncssh.SSHServerSession):  # type: ignore[type-arg]
        def __init__(self) -> None:
            self.chan: Any = None
            self.buf = bytearray()
            self.messages = 0
            self.streaming = False
            self.closed = False
            self.sent = 0
            self.can_write = asyncio.Event()
            self.can_write.set()

        def connection_made(self, chan: Any) -> None:
            self.chan = chan

        def subsystem_requested(self, subsystem: str) -> bool:
            return subsystem == "netconf"

        def session_started(self) -> None:
            if args.mode == "endless-hello":
                self.streaming = True
                prefix = '<hello xmlns="%s"><capabilities><capability>%s</capability><capability>' % (BASE_NS, BASE_10)
                asyncio.ensure_future(self.stream(prefix.encode()))
                return
            if args.mode == "utf16-dtd":
                self.chan.write(utf16_dtd_hello(args.marker, args.encoding) + EOM)
            else:
                hello = (
                    '<?xml version="1.0" encoding="UTF-8"?><hello xmlns="%s"><capabilities>'
                    "<capability>%s</capability></capabilities><session-id>9</session-id></hello>"
                    % (BASE_NS, BASE_10)
                )
                self.chan.write(hello.encode() + EOM)
            say("READY", args.name)

        def data_received(self, data: bytes, datatype: Any) -> None:
            self.buf += data
            while True:
                end = self.buf.find(EOM)
                if end < 0:
                    return
                msg = bytes(self.buf[:end])
                del self.buf[: end + len(EOM)]
                self.messages += 1
                if args.mode == "endless-reply" and b"<rpc" in msg and not self.streaming:
                    self.streaming = True
                    asyncio.ensure_future(
                        self.stream(b'<rpc-reply xmlns="%s" message-id="1"><data><blob>' % BASE_NS.encode())
                    )

        def pause_writing(self) -> None:
            self.can_write.clear()

        def resume_writing(self) -> None:
            self.can_write.set()

        async def stream(self, prefix: bytes) -> None:
            """A message that never ends, as fast as the listener takes it."""
            say("STREAMING", args.name)
            self.chan.write(prefix)
            block = b"x" * 32768
            try:
                while not self.closed and self.sent < args.max_bytes:
                    await self.can_write.wait()
                    if self.closed:
                        break
                    self.chan.write(block)
                    self.sent += len(block)
                    if self.sent % (1 << 20) == 0:
                        await asyncio.sleep(0)  # let the window updates in
            except (OSError, asyncssh.Error):
                pass

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self.closed = True
            self.can_write.set()
            if self.streaming:
                say("STREAMED", args.name, self.sent)
            if not done.done():
                done.set_result("channel closed: %s" % (exc or "eof"))

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True

        def password_auth_supported(self) -> bool:
            return True

        def validate_password(self, username: str, password: str) -> bool:
            return password == args.password

        def session_requested(self) -> Any:
            return Channel()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            if not done.done():
                done.set_result("connection lost: %s" % (exc or "closed"))

    try:
        conn = await asyncssh.connect_reverse(
            host,
            port,
            server_factory=Server,
            server_host_keys=[key],
            encoding=None,
            login_timeout=30,
            server_version="AttackDevice_1.0",
        )
    except (OSError, asyncssh.Error) as exc:
        say("DISCONNECTED", args.name, "dial:%s" % type(exc).__name__)
        return 0
    say("CONNECTED", args.name)
    reason = await done
    conn.close()
    say("DISCONNECTED", args.name, reason.replace(" ", "_"))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="kind", required=True)
    tls = sub.add_parser("tls")
    tls.add_argument("--listener", required=True)
    tls.add_argument("--name", required=True)
    tls.add_argument("--cert", required=True)
    tls.add_argument("--key", required=True)
    tls.add_argument("--retry", type=float, default=0.0, help="dial again after a drop (0: once)")
    rc = sub.add_parser("restconf")
    rc.add_argument("--listener", required=True)
    rc.add_argument("--name", required=True)
    rc.add_argument("--cert", required=True)
    rc.add_argument("--key", required=True)
    rc.add_argument("--mode", required=True, choices=(
        "good", "stall-tls", "stall-http", "endless-body", "oversized", "malformed-json", "malformed-xml"))
    rc.add_argument("--size", type=int, default=4 << 20, help="oversized: the YANG library's size")
    ssh = sub.add_parser("ssh")
    ssh.add_argument("--listener", required=True)
    ssh.add_argument("--name", required=True)
    ssh.add_argument("--key", required=True, help="host key (OpenSSH private key file)")
    ssh.add_argument("--password", required=True, help="the password the listener logs in with")
    ssh.add_argument("--mode", choices=("endless-reply", "endless-hello", "utf16-dtd"), required=True)
    ssh.add_argument("--marker", default="EXPANDED-ENTITY")
    ssh.add_argument("--encoding", choices=("utf-16-le", "utf-16-be"), default="utf-16-le")
    ssh.add_argument("--max-bytes", type=int, default=1 << 30, help="stop streaming after this much")
    args = parser.parse_args(argv)
    _exit_with_parent()
    if args.kind == "tls":
        return run_tls(args)
    if args.kind == "restconf":
        return run_restconf(args)
    return asyncio.run(run_ssh(args))


class DeviceProcess:
    """One device of this module in a child process; stdout lines collected by a thread."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: List[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for ln in self.lines if ln.split(" ", 1)[0] == kind)

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines[-40:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a SIGSTOPped device must be able to die
            except ProcessLookupError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


if __name__ == "__main__":
    sys.exit(main())

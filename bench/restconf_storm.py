# SPDX-License-Identifier: GPL-3.0-or-later
"""RESTCONF call home (issue 11): N devices call at once; listener CPU per device and RSS per
held connection, against a bare TLS handshake floor, in one run.

Variants (each against the same device process, one after the other):

``tls``       the floor: the listener side accepts, runs the TLS client (``open_tls``) and holds
              the link; no HTTP
``h2``        :class:`RestconfTransport` end to end: TLS, the verdict (a fake policy accepting
              every chain), HTTP/2 preface, root discovery (host-meta), ietf-yang-library read;
              the connection held
``http1.1``   the same over HTTP/1.1

The listener side runs in a child process (its CPU time and ``VmRSS`` from ``/proc`` are what
is measured); the devices (TLS servers with ALPN, HTTP/2 via h2 or HTTP/1.1 via h11, static
answers) run in this process. Reported per variant: seconds until all N are ready, listener CPU
ms per device, RSS KiB per held connection (after a warm-up of 10), and the ratios to ``tls``.
Issue 11's targets: CPU per device at most 1.5x the floor, under 64 KiB per held connection.

    .venv/bin/python bench/restconf_storm.py --devices 1000 --json .cache/bench/restconf_storm.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import h11
import h2.config
import h2.connection
import h2.events
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import PYTHON, cpu_seconds, env, log, raise_nofile, rss_kib, write_json  # noqa: E402

WARMUP = 10

CHILD = textwrap.dedent(
    """
    import asyncio, gc, socket, sys
    from netconf_callhome.config import ListenerConfig, TLSOptions
    from netconf_callhome.fingerprints import cert_fingerprint_of_der
    from netconf_callhome.protocol.events import VerifiedDevice
    from netconf_callhome.protocol.restconf import RestconfTransport, open_tls, restconf_client_context

    mode, home, cert, key = sys.argv[1:5]
    held = []

    class Slots:
        def is_blocked(self, ip): return False
        def acquire(self, peer): return True
        def release(self): pass

    class Events:
        def tls_certificate(self, chain, *, peer):
            return VerifiedDevice(device=peer, fingerprint=cert_fingerprint_of_der(chain[0]))
        def restconf_credentials(self, device): return None
        def handshake_failed(self, failure): print("failed", failure.reason, failure.message, flush=True)
        def restconf_ready(self, conn, *, started):
            held.append(conn)
            print("ready", len(held), flush=True)

    async def floor(sock, ctx):
        link = await open_tls(sock, ctx, timeout=300)
        held.append(link)
        print("ready", len(held), flush=True)

    async def main():
        cfg = ListenerConfig(home=home, tls=TLSOptions(client_cert=cert, client_key=key), handshake_timeout=300)
        transport = RestconfTransport(cfg, admission=Slots(), events=Events())
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4096)
        lsock.setblocking(False)
        print(lsock.getsockname()[1], flush=True)
        loop = asyncio.get_running_loop()
        tasks = set()
        while True:
            sock, addr = await loop.sock_accept(lsock)
            coro = floor(sock, transport.context) if mode == "tls" else transport.handle(sock, addr)
            task = asyncio.ensure_future(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    asyncio.run(main())
    """
)

HOST_META = b"<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'><Link rel='restconf' href='/restconf'/></XRD>"
YANG_LIBRARY = json.dumps(
    {
        "ietf-yang-library:yang-library": {
            "content-id": "1",
            "module-set": [
                {
                    "name": "complete",
                    "module": [
                        {"name": "ietf-interfaces", "revision": "2018-02-20",
                         "namespace": "urn:ietf:params:xml:ns:yang:ietf-interfaces"},
                        {"name": "ietf-ip", "revision": "2018-02-22", "namespace": "urn:ietf:params:xml:ns:yang:ietf-ip"},
                    ],
                }
            ],
        }
    }
).encode()


def answer(path: str) -> tuple:
    if path == "/.well-known/host-meta":
        return 200, "application/xrd+xml", HOST_META
    if path.endswith("ietf-yang-library:yang-library"):
        return 200, "application/yang-data+json", YANG_LIBRARY
    return 404, "application/yang-data+json", b""


class H2Device(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.paths: Dict[int, str] = {}
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.paths[event.stream_id] = dict(event.headers)[":path"]
            elif isinstance(event, h2.events.StreamEnded):
                status, ctype, body = answer(self.paths.pop(event.stream_id))
                self.conn.send_headers(event.stream_id, [(":status", str(status)), ("content-type", ctype),
                                                         ("content-length", str(len(body)))], end_stream=not body)
                if body:
                    self.conn.send_data(event.stream_id, body, end_stream=True)
        self.transport.write(self.conn.data_to_send())


class H11Device(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conn = h11.Connection(h11.SERVER)
        self.path = ""

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.path = event.target.decode()
            elif isinstance(event, h11.EndOfMessage):
                status, ctype, body = answer(self.path)
                out = self.conn.send(h11.Response(status_code=status, headers=[
                    ("content-type", ctype), ("content-length", str(len(body)))]))
                out += self.conn.send(h11.Data(data=body)) if body else b""
                out += self.conn.send(h11.EndOfMessage())
                self.transport.write(out)
                self.conn.start_next_cycle()


async def dial(port: int, count: int, ctx: ssl.SSLContext, alpn: str, held: List[Any]) -> None:
    loop = asyncio.get_running_loop()
    factory = H2Device if alpn == "h2" else H11Device
    gate = asyncio.Semaphore(200)  # dialing pace only: all of them are held at the end

    async def one() -> None:
        async with gate:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            transport, _proto = await loop.connect_accepted_socket(factory, sock=sock, ssl=ctx)
            held.append(transport)

    await asyncio.gather(*(one() for _unused in range(count)))


def run_variant(mode: str, count: int, pki: Dict[str, Any], tmp: Path) -> Dict[str, Any]:
    child = subprocess.Popen(
        [PYTHON, "-c", CHILD, mode, str(tmp), pki["cert"], pki["key"]],
        stdout=subprocess.PIPE, text=True, env=env(),
    )
    assert child.stdout is not None
    port = int(child.stdout.readline())
    alpn = "h2" if mode in ("tls", "h2") else "http/1.1"
    ctx = pki["device_context"](alpn)
    loop = asyncio.new_event_loop()
    devices: List[Any] = []

    def until_ready(n: int) -> None:
        assert child.stdout is not None
        while True:
            line = child.stdout.readline()
            if not line:
                raise RuntimeError("listener child exited")
            if line.startswith("failed"):
                raise RuntimeError("a device failed: " + line.strip())
            if line.startswith("ready") and int(line.split()[1]) >= n:
                return

    async def phase(n: int, ready: int) -> None:
        """Dial n more devices; return once the listener has ``ready`` connections held."""
        dialing = asyncio.ensure_future(dial(port, n, ctx, alpn, devices))
        await asyncio.to_thread(until_ready, ready)
        await dialing

    try:
        loop.run_until_complete(phase(WARMUP, WARMUP))
        time.sleep(0.5)
        rss_before, cpu_before = rss_kib(child.pid), cpu_seconds(child.pid)
        started = time.monotonic()
        loop.run_until_complete(phase(count, WARMUP + count))
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(child.pid) - cpu_before
        time.sleep(0.5)
        rss_after = rss_kib(child.pid)
        result = {
            "variant": mode,
            "devices": count,
            "seconds_to_ready": round(elapsed, 2),
            "cpu_ms_per_device": round(cpu * 1000 / count, 3),
            "rss_kib_per_connection": round((rss_after - rss_before) / count, 1),
        }
        log("restconf_storm %s" % json.dumps(result))
        return result
    finally:
        child.kill()
        child.wait()
        for transport in devices:
            transport.abort()
        loop.run_until_complete(asyncio.sleep(0.1))
        loop.close()


def make_pki(tmp: Path) -> Dict[str, Any]:
    ca = trustme.CA()
    listener = ca.issue_cert("listener.example.net")
    listener.cert_chain_pems[0].write_to_path(str(tmp / "l.crt"))
    listener.private_key_pem.write_to_path(str(tmp / "l.key"))
    device = ca.issue_cert("device.example.net")

    def device_context(alpn: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        device.configure_cert(ctx)
        ctx.set_alpn_protocols([alpn])
        return ctx

    return {"cert": str(tmp / "l.crt"), "key": str(tmp / "l.key"), "device_context": device_context}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--variants", nargs="+", default=["tls", "h2", "http1.1"], choices=["tls", "h2", "http1.1"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="restconf-storm-") as tmpdir:
        tmp = Path(tmpdir)
        pki = make_pki(tmp)
        results = [run_variant(mode, args.devices, pki, tmp) for mode in args.variants]
    floor = next((r for r in results if r["variant"] == "tls"), None)
    if floor is not None:
        for r in results:
            r["cpu_vs_tls_floor"] = round(r["cpu_ms_per_device"] / max(floor["cpu_ms_per_device"], 1e-9), 2)
    print(json.dumps(results, indent=1))
    if args.json:
        write_json(args.json, {"restconf_storm": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

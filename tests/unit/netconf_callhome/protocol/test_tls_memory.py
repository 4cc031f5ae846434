# SPDX-License-Identifier: GPL-3.0-or-later
"""Issue 10, defect 7: a pending TLS handshake must cost at most 64 KiB, and the memory must come
back after a flood. Before the fix asyncio's SSLProtocol allocated a 256 KiB read buffer per
connection (~300 KiB per pending handshake measured, bench/tls_flood.py) and RSS stayed up.

The transport runs in a child process (its RSS is what is measured, nothing else of the test's
in it); the test holds 300 connections that received the ClientHello and never answer.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, List

import pytest
import trustme

pytestmark = pytest.mark.timeout(120)

CONNECTIONS = 300
# Issue 10's bound, with OpenSSL 3.0 (Debian 12): 46 KiB measured. OpenSSL 3.5 (Debian 13, the
# second stack) offers two key shares in every ClientHello by default, the post-quantum hybrid
# X25519MLKEM768 and X25519, and holds the ML-KEM key state while the device does not answer: the
# same listener code (8d369bc) measured 63.4 KiB there against 46 KiB on OpenSSL 3.0. That is
# OpenSSL's per-handshake state, not ours; what this test guards is that our part stays small.
MAX_KIB_PER_HANDSHAKE = 64 if ssl.OPENSSL_VERSION_INFO < (3, 5) else 72

CHILD = textwrap.dedent(
    """
    import asyncio, socket, sys
    from netconf_callhome.config import ListenerConfig, TLSOptions
    from netconf_callhome.protocol.tls import TLSTransport

    class Slots:
        def is_blocked(self, ip): return False
        def acquire(self, peer): return True
        def release(self): pass

    class Events:
        def tls_certificate(self, chain, *, peer): return None
        def handshake_failed(self, failure): pass
        def session_ready(self, held, *, started, auth): pass
        def ssh_host_key(self, *a, **k): return None
        def spawn(self, aw): asyncio.ensure_future(aw)

    async def main():
        cfg = ListenerConfig(home=sys.argv[1], tls=TLSOptions(client_cert=sys.argv[2], client_key=sys.argv[3]),
                             handshake_timeout=300)
        transport = TLSTransport(cfg, admission=Slots(), events=Events())
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4096)
        lsock.setblocking(False)
        print(lsock.getsockname()[1], flush=True)
        loop = asyncio.get_running_loop()
        tasks = set()
        while True:
            sock, addr = await loop.sock_accept(lsock)
            task = asyncio.ensure_future(transport.handle(sock, addr))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    asyncio.run(main())
    """
)


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def poll(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def settled(pid: int, tolerance_kib: int = 128) -> int:
    """RSS once two readings 0.3 s apart agree within ``tolerance_kib``."""
    readings = [rss_kib(pid)]

    def steady() -> bool:
        readings.append(rss_kib(pid))
        return abs(readings[-1] - readings[-2]) < tolerance_kib

    poll(steady, 20, "the RSS to settle", interval=0.3)
    return readings[-1]


def half_open(port: int, count: int) -> List[socket.socket]:
    """``count`` connections that each received the listener's ClientHello and never answer."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _i in range(count)]
    waiting = {s.fileno(): s for s in socks}
    deadline = time.monotonic() + 30
    while waiting:
        assert time.monotonic() < deadline, "%d connections got no ClientHello" % len(waiting)
        ready, _w, _x = select.select(list(waiting), [], [], 0.5)
        for fd in ready:
            assert waiting.pop(fd).recv(65536), "the transport hung up a pending handshake"
    return socks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS from /proc")
def test_pending_handshakes_are_small_and_their_memory_comes_back(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("listener.example.net")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "l.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "l.key"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), str(tmp_path / "l.crt"), str(tmp_path / "l.key")],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        for s in half_open(port, 10):  # warm-up: imports and first-use allocations are not per handshake
            s.close()
        time.sleep(0.5)
        before = settled(child.pid)
        socks = half_open(port, CONNECTIONS)
        during = settled(child.pid)
        per = (during - before) / CONNECTIONS
        assert per <= MAX_KIB_PER_HANDSHAKE, "%.1f KiB per pending TLS handshake (bound %d)" % (
            per, MAX_KIB_PER_HANDSHAKE)
        for s in socks:
            s.close()
        # Back within a quarter of what the flood took (the rest is allocator and interpreter
        # high-water marks), well inside the minute the issue allows.
        bound = before + (during - before) // 4
        poll(lambda: rss_kib(child.pid) <= bound, 60, "RSS back to <= %d KiB (before %d, during %d)" % (
            bound, before, during))
    finally:
        child.kill()
        child.wait()

# SPDX-License-Identifier: GPL-3.0-or-later
"""Floods (issue 10, defects 7-9): half-open TLS handshakes, unauthenticated remote control
connections that never end their line, a thousand control requests at once."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import pytest

from attacklib import MIB, AttackListener, CanaryLoop, proc_fds, tls_options, verdict
from harness import wait_until
from netconf_callhome.control.client import ControlClient
from netconf_callhome.errors import CallHomeError

pytestmark = pytest.mark.timeout(300)  # conftest.TEST_TIMEOUT: a hung attack fails, it does not stall make test

# Issue 10's flood: 2,000 half-open connections. Descriptors: the listener raises its soft
# RLIMIT_NOFILE to the hard limit at start (20,000 here) and the test process does so with
# ``many_fds``; max_handshakes is set above the flood so that every connection is pending.
HALF_OPEN = 2000
# Issue 10: at most 64 KiB per pending handshake (it was ~280 KB); 46 KiB measured with OpenSSL
# 3.0, the machine this suite runs on (Debian 12). OpenSSL 3.5 (Debian 13) sends a second key
# share, the post-quantum hybrid X25519MLKEM768, in every ClientHello by default and holds its
# key state while the device is silent: 64.2-64.5 KiB there, a miss the listener accepts
# (docs/security.md, "Memory of a pending TLS handshake"); the unit test
# tests/unit/netconf_callhome/protocol/test_tls_memory.py allows 72 KiB there, and so does this.
PER_HANDSHAKE = (64 if ssl.OPENSSL_VERSION_INFO < (3, 5) else 72) * 1024


def _connect_from(source: str, port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))  # a flood from its own address: the canaries' 127.0.0.1 is not blamed
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


@pytest.mark.usefixtures("many_fds")
def test_half_open_tls_handshakes_memory_bounded_and_returned(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
    tls_pki: Any,
) -> None:
    """Defect 7: 2,000 TCP connections to the TLS port that never answer the listener's
    ClientHello cost at most 64 KiB each while pending, and the memory is given back within a
    minute after they are gone (2,000 took the listener from 88 to 645 MB, and it stayed there)."""
    # pending for the whole flood, and none turned away by the handshake bound
    lp = attack_listener(handshake_timeout=60, max_handshakes=HALF_OPEN + 100, **tls_options(tls_pki))
    loop = canaries(lp)
    assert lp.sampler is not None
    fds = proc_fds(lp.pid)
    mark = lp.sampler.mark()
    socks: List[socket.socket] = []
    try:
        for _n in range(HALF_OPEN):
            socks.append(_connect_from("127.0.0.2", lp.tls_port))
        # Every connection accepted and its handshake started (or turned away by a bound).
        wait_until(
            lambda: proc_fds(lp.pid) - fds >= 0.95 * HALF_OPEN or lp.events("handshake.limit"),
            60, "the listener to take the half-open connections",
            detail=lambda: "%d fds over %d" % (proc_fds(lp.pid) - fds, fds),
        )
        pending = proc_fds(lp.pid) - fds
        loop.wait_more(len(loop.devices))  # served while the flood is pending; RSS sampled meanwhile
        peak = lp.sampler.peak_rss_since(mark) - mark.rss
    finally:
        for sock in socks:
            sock.close()
    print("half-open TLS: %d pending, +%.1f MiB peak (%.1f KiB each); %s"
          % (pending, peak / MIB, peak / 1024 / max(1, pending), lp.sampler.describe(mark)))
    assert peak <= PER_HANDSHAKE * HALF_OPEN, "pending handshakes cost %.0f KiB each: %s" % (
        peak / 1024 / HALF_OPEN, lp.sampler.describe(mark))
    slack = 16 * MIB
    wait_until(lambda: lp.sampler.rss() <= mark.rss + slack, 60, "the listener's memory to come back",
               detail=lambda: lp.sampler.describe(mark))
    verdict(lp, loop, rss_growth=PER_HANDSHAKE * HALF_OPEN + slack)


async def _unauthenticated(host: str, port: int, count: int, size: int, bound: float) -> List[Optional[float]]:
    """``count`` TLS connections each sending ``size`` bytes without a newline; for each, the
    seconds until the listener closed it (None: still open after ``bound``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    started = time.monotonic()
    payload = b"{" + b"x" * (size - 1)

    async def one() -> Optional[float]:
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx, local_addr=("127.0.0.2", 0))
        except (OSError, ssl.SSLError):
            return time.monotonic() - started  # refused or cut during TLS: closed
        try:
            async with asyncio.timeout(bound):
                try:
                    writer.write(payload)
                    await writer.drain()
                    while await reader.read(65536):
                        pass
                except (OSError, ssl.SSLError):
                    pass
            return time.monotonic() - started
        except TimeoutError:
            return None
        finally:
            writer.close()

    return list(await asyncio.gather(*(one() for _n in range(count))))


def test_remote_control_unauthenticated_flood_closed_within_auth_bound(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
    tls_pki: Any,
    tmp_path: Path,
) -> None:
    """Defect 8: 150 unauthenticated connections to the remote control port each send 1 MB
    without a newline. The listener closes all of them within its authentication bound, holds
    no megabyte per connection meanwhile, and a client with the token still gets its answer."""
    import pki  # tests/peers

    server = pki.make_device_cert(tmp_path / "control-tls", tls_pki.device_ca, "control", "SN-CTL")
    token = tmp_path / "control-token"
    token.write_text("attack-suite-token-0123456789abcdef\n")
    token.chmod(0o600)
    auth_timeout = 3.0
    lp = attack_listener(control_tcp=dict(
        bind="127.0.0.1:0", cert=str(server.cert_path), key=str(server.key_path), token_file=str(token),
        auth_timeout=auth_timeout,
    ))
    loop = canaries(lp)
    remote = str(lp.call("status")["control_tcp"])
    host, port = remote[len("tls://"):].rsplit(":", 1)
    assert lp.sampler is not None
    fds = proc_fds(lp.pid)
    mark = lp.sampler.mark()
    bound = auth_timeout + 7.0  # the bound, plus TLS set-up of 150 connections on a loaded machine
    results: List[Optional[float]] = []
    flood = threading.Thread(target=lambda: results.extend(asyncio.run(
        _unauthenticated(host, int(port), 150, 1_000_000, bound + 10))))
    flood.start()
    try:
        wait_until(lambda: proc_fds(lp.pid) - fds >= 100 or not flood.is_alive(), 20, "the flood to connect")
        client = ControlClient(remote, token=token.read_text().strip(), timeout=20, tls_verify=False)
        assert client.call("status")["pid"] == lp.pid  # the operator is not locked out
    finally:
        flood.join(bound + 30)
    still_open = [r for r in results if r is None]
    slowest = max((r for r in results if r is not None), default=0.0)
    print("remote control flood: %d closed (slowest %.1f s), %d still open; %s"
          % (len(results) - len(still_open), slowest, len(still_open), lp.sampler.describe(mark)))
    assert len(results) == 150
    assert not still_open, "%d of 150 unauthenticated connections still open after %.0f s" % (
        len(still_open), bound + 10)
    assert slowest <= bound, "closed only after %.1f s (auth bound %.0f s)" % (slowest, auth_timeout)
    assert lp.sampler.peak_rss_since(mark) - mark.rss <= 100 * MIB, lp.sampler.describe(mark)
    verdict(lp, loop, rss_growth=100 * MIB)


def _concurrently(count: int, call: Callable[[], Any]) -> List[Tuple[str, str]]:
    """Run ``call`` from ``count`` threads released at once; (outcome, detail) per call."""
    barrier = threading.Barrier(count)

    def one(_i: int) -> Tuple[str, str]:
        barrier.wait(60)
        try:
            call()
            return "ok", ""
        except CallHomeError as exc:
            return exc.code, exc.message
        except Exception as exc:  # a broken answer is a finding, not a crash of the test
            return type(exc).__name__, str(exc)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.usefixtures("many_fds")
@pytest.mark.parametrize("op", ["status", "lease"])
def test_thousand_concurrent_control_requests_served_or_busy(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
    op: str,
) -> None:
    """Defect 9: 1,000 control requests at once (status; leases of the canaries). Each is served
    or answered with an honest "busy" error, never "no call-home listener answers" (EAGAIN from
    a full Unix socket backlog: 11 of 200 concurrent leases)."""
    lp = attack_listener()
    loop = canaries(lp)
    devices = list(loop.devices)
    counter = iter(range(1_000_000))
    lock = threading.Lock()

    def request() -> None:
        client = ControlClient(lp.address, timeout=60)
        if op == "status":
            client.call("status")
            return
        with lock:
            device = devices[next(counter) % len(devices)]
        sock, _info = client.lease(device, wait=10)
        sock.close()

    started = time.monotonic()
    outcomes = _concurrently(1000, request)
    elapsed = time.monotonic() - started
    codes = [code for code, _detail in outcomes]
    served = codes.count("ok")
    busy = codes.count("listener-busy")
    other = [(code, detail) for code, detail in outcomes if code not in ("ok", "listener-busy")]
    print("1000 concurrent %s: %d served, %d busy, %d other in %.1f s" % (op, served, busy, len(other), elapsed))
    assert not other, "%d requests neither served nor told busy, e.g. %s" % (len(other), other[:3])
    assert served >= 1, "nothing served"
    verdict(lp, loop)

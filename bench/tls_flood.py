# SPDX-License-Identifier: GPL-3.0-or-later
"""Memory of pending TLS handshakes (issue 10, defect 7): N half-open TLS call-home connections.

Each flood connection connects to the listener's TLS port like a device, lets the listener (the
TLS *client*, RFC 7589) send its ClientHello, reads it, and never answers: a handshake that
stalls. The listener's RSS (``VmRSS`` of its process) is read before, while all N are pending
(once it stops growing), and for ``--after`` seconds after the flood hangs up.

Reported: KiB per pending handshake ((during - before) / N) and the RSS after ``--after`` s
(and when it first came back within ``--back-within`` KiB of where it started). Target: at most
64 KiB per handshake, RSS back within a minute.

    .venv/bin/python bench/tls_flood.py --connections 2000 --json .cache/bench/tls_flood.json
"""

from __future__ import annotations

import argparse
import json
import select
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import PYTHON, env, log, raise_nofile, rss_kib, write_json  # noqa: E402


def start_listener(home: Path, connections: int, handshake_timeout: float) -> Any:
    import subprocess

    import pki  # tests/peers, on sys.path through benchlib

    creds = pki.make_pki(home / "pki", device_name="flood")
    cmd = [
        PYTHON, "-m", "netconf_callhome", "serve", "--home", str(home / "home"),
        "--ssh", "127.0.0.1:0", "--tls", "127.0.0.1:0",
        "--tls-client-cert", str(creds.listener_cert.cert_path),
        "--tls-client-key", str(creds.listener_cert.key_path),
        "--handshake-timeout", str(handshake_timeout),
        "--max-handshakes", str(connections + 100),
        "--log-level", "WARNING",
    ]
    (home / "home").mkdir(parents=True, exist_ok=True)
    # The flood hangs up N connections from 127.0.0.1 at once; that must not be what is measured.
    (home / "home" / "listener.yml").write_text("block_failures: %d\n" % (connections * 10))
    logf = open(home / "listener.log", "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=logf, env=env())
    from netconf_callhome.control.client import ControlClient

    client = ControlClient("unix:%s" % (home / "home" / "control.sock"), timeout=30)
    deadline = time.monotonic() + 30
    while True:
        try:
            pid = int(client.call("ping", timeout=2)["pid"])
            port = int(client.call("status", timeout=5)["tls"][0].rsplit(":", 1)[1])
            return proc, pid, port, cmd
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("listener did not start: %s" % (home / "listener.log").read_text()[-2000:])
            time.sleep(0.05)


def settle(pid: int, timeout: float = 20.0, tolerance_kib: int = 256) -> int:
    """RSS once two samples 0.5 s apart differ by less than ``tolerance_kib``."""
    last = rss_kib(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_kib(pid)
        if abs(now - last) < tolerance_kib:
            return now
        last = now
    return last


def open_flood(port: int, count: int, timeout: float = 60.0) -> List[socket.socket]:
    """``count`` connections, each holding until the listener's ClientHello arrived on it."""
    socks: List[socket.socket] = []
    waiting: Dict[int, socket.socket] = {}
    for _i in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
        waiting[s.fileno()] = s
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        for fd, _ev in poller.poll(500):
            s = waiting.pop(fd)
            try:
                if not s.recv(65536):  # the listener hung up: no longer pending
                    continue
            except BlockingIOError:
                waiting[fd] = s
    if waiting:
        raise RuntimeError("%d of %d connections never got a ClientHello" % (len(waiting), count))
    return socks


def flood_round(
    pid: int, port: int, connections: int, after: float, back_within: int, before: int, rnd: int
) -> Dict[str, Any]:
    start_rss = rss_kib(pid)
    log("round %d: RSS %d KiB (%d before the first); opening %d half-open TLS connections"
        % (rnd, start_rss, before, connections))
    started = time.monotonic()
    socks = open_flood(port, connections)
    opened_s = time.monotonic() - started
    during = settle(pid)
    per = (during - start_rss) / connections
    log("RSS during %d KiB: %.1f KiB per pending handshake" % (during, per))
    for s in socks:
        s.close()
    closed_at = time.monotonic()
    samples = []
    back_after: Optional[float] = None
    while time.monotonic() - closed_at < after:
        time.sleep(1.0)
        rss = rss_kib(pid)
        elapsed = round(time.monotonic() - closed_at, 1)
        samples.append((elapsed, rss))
        if back_after is None and rss <= before + back_within:
            back_after = elapsed
    final = rss_kib(pid)
    log("RSS %d KiB %.0f s after the flood (back within %d KiB of the first start after %s s)"
        % (final, after, back_within, back_after))
    return {
        "round": rnd,
        "open_seconds": round(opened_s, 2),
        "rss_start_kib": start_rss,
        "rss_during_kib": during,
        "kib_per_pending_handshake": round(per, 1),
        "rss_after_kib": final,
        "back_after_seconds": back_after,
        "samples": samples,
    }


def run(connections: int, after: float, back_within: int, handshake_timeout: float, rounds: int = 1) -> Dict[str, Any]:
    raise_nofile()
    home = Path(tempfile.mkdtemp(prefix="bench-tls-flood-"))
    proc, pid, port, cmd = start_listener(home, connections, handshake_timeout)
    try:
        # warm up the TLS path once (imports, the shared context) so it is not counted per handshake
        for s in open_flood(port, 5):
            s.close()
        time.sleep(1.0)
        before = settle(pid)
        rounds_out: List[Dict[str, Any]] = []
        for rnd in range(1, rounds + 1):
            rounds_out.append(flood_round(pid, port, connections, after, back_within, before, rnd))
        first = rounds_out[0]
        return {
            "connections": connections,
            "rss_before_kib": before,
            **{k: first[k] for k in ("open_seconds", "rss_during_kib", "kib_per_pending_handshake", "rss_after_kib",
                                     "back_after_seconds", "samples")},
            "after_seconds": after,
            "back_within_kib": back_within,
            "rounds": [{k: v for k, v in r.items() if k != "samples"} for r in rounds_out],
            "command": cmd,
            "python": sys.version.split()[0],
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except Exception:  # noqa: BLE001
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)  # the listener's home: keys, sockets, logs


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--after", type=float, default=60.0, help="seconds to watch RSS after the flood")
    p.add_argument("--back-within", type=int, default=16384, help="KiB above the start that count as back (allocator and interpreter high-water marks stay)")
    p.add_argument("--handshake-timeout", type=float, default=300.0, help="long: the flood must stay pending")
    p.add_argument("--rounds", type=int, default=1, help="floods one after the other (does the residue grow?)")
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    res = run(args.connections, args.after, args.back_within, args.handshake_timeout, args.rounds)
    print(json.dumps({k: v for k, v in res.items() if k not in ("samples", "command")}, indent=1))
    if args.json:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: GPL-3.0-or-later
"""Held sessions: the listener's resident memory per idle session and its idle CPU with keepalives.

For each fleet size N and each variant (server and SSH keepalive interval: ``listener:default``
runs the listener without ``--keepalive-interval``, i.e. its configured default; ``listener:30`` and
``bare-ssh:30`` set 30 s, the bare asyncssh server being the floor): read VmRSS when idle, let N devices call home (the simulator in its own
process(es), no keepalives of its own), wait until N sessions are held and a settle delay passed,
read VmRSS again: per session = (after - before) / N. Then read utime+stime over an idle window
(make it at least twice the keepalive interval for the keepalives to show). ``--tracemalloc N`` instead runs
the listener inside this process to say where the memory goes (snapshot diff by line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as b  # noqa: E402
from storm import BareServer  # noqa: E402


def listener_default_keepalive() -> float:
    """The listener's own default SSH keepalive interval (what ``listener:default`` runs with)."""
    from netconf_callhome.config import ListenerConfig

    return float(ListenerConfig.keepalive_interval)


def parse_variant(text: str) -> Tuple[str, Optional[float]]:
    """``listener:default`` -> ("listener", None); ``bare-ssh:30`` -> ("bare-ssh", 30.0)."""
    kind, _sep, interval = text.partition(":")
    if kind not in ("listener", "bare-ssh"):
        raise ValueError("unknown server %r (listener, bare-ssh)" % kind)
    if interval in ("", "default"):
        if kind != "listener":
            raise ValueError("bare-ssh needs an explicit keepalive interval (bare-ssh:30)")
        return kind, None
    return kind, float(interval)


def held_once(kind: str, n: int, manifest: Dict[str, Dict[str, str]], *, keepalive: Optional[float],
              window: float, settle: float, sim_processes: int, timeout: float) -> Dict[str, Any]:
    """One server, ``n`` held sessions; ``keepalive`` None = the listener's default (no flag)."""
    server: Any = (
        b.Listener(manifest, keepalive=keepalive) if kind == "listener" else BareServer("ssh", keepalive or 0.0)
    )
    sim = None
    try:
        time.sleep(0.5)
        rss0 = b.rss_kib(server.pid)
        # At most 400 handshakes in flight per simulator process: 10,000 at once would outlast the
        # listener's 30 s handshake timeout, and timeouts from one address trip its block list.
        sim = b.start_simulator(listener=server.port, count=n, processes=sim_processes, retry=2.0,
                                extra=["--concurrency", "400"])
        count = server.sessions if kind == "listener" else server.ready
        ok = b.wait_until(lambda: count() >= n, timeout, interval=0.5)
        held = count()
        time.sleep(settle)
        rss1 = b.rss_kib(server.pid)
        fds = b.open_fds(server.pid)
        cpu0, t0 = b.cpu_seconds(server.pid), time.monotonic()
        sim_cpu0 = b.process_tree_cpu(sim.pid)
        time.sleep(window)
        cpu1, t1 = b.cpu_seconds(server.pid), time.monotonic()
        sim_cpu1 = b.process_tree_cpu(sim.pid)
        held_after = count()
        res: Dict[str, Any] = {
            "server": kind,
            "devices": n,
            "held": held,
            "complete": ok,
            "held_after_window": held_after,
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "kib_per_session": round((rss1 - rss0) / max(1, held), 2),
            "open_fds": fds,
            "idle_window_s": round(t1 - t0, 2),
            "idle_cpu_pct_of_core": round((cpu1 - cpu0) / (t1 - t0) * 100, 3),
            "idle_cpu_s": round(cpu1 - cpu0, 3),
            "simulator_cpu_pct_in_window": round((sim_cpu1 - sim_cpu0) / (t1 - t0) * 100, 2),
            "simulator_disconnects": sim.count("DISCONNECTED"),
        }
        interval = listener_default_keepalive() if keepalive is None else keepalive
        res["keepalive_interval_s"] = interval
        res["keepalive_is_default"] = keepalive is None
        res["command"] = " ".join(server.cmd if kind == "listener" else server.lp.cmd)
        if interval > 0:
            # asyncssh sends a keepalive after ``interval`` s without traffic: in a window shorter
            # than the interval that starts right after the storm, no session sends one.
            res["keepalives_expected_in_window"] = int(held * (t1 - t0) / interval) if t1 - t0 >= interval else 0
            if res["keepalives_expected_in_window"]:
                res["cpu_us_per_keepalive"] = round((cpu1 - cpu0) / res["keepalives_expected_in_window"] * 1e6, 1)
        return res
    finally:
        if sim is not None:
            sim.stop(60)
        server.stop()


def _short(where: str) -> str:
    """A traced file name without the site-packages or repository prefix."""
    return where.rsplit("site-packages/", maxsplit=1)[-1].rsplit("/work/main/", maxsplit=1)[-1]


async def _tracemalloc_inproc(n: int, manifest: Dict[str, Dict[str, str]], top: int) -> Dict[str, Any]:
    """The listener in this process; tracemalloc snapshots before and after N sessions."""
    import tempfile
    import tracemalloc

    from netconf_callhome.config import load_config
    from netconf_callhome.service import CallHomeListener

    home = Path(tempfile.mkdtemp(prefix="bench-tm-"))
    b.write_trust_store(home / "trust.json", manifest)
    port = b.free_port()
    cfg = load_config(None, {
        "home": str(home), "ssh_binds": ["127.0.0.1:%d" % port], "tls_binds": [],
        "credentials": {"username": b.USER, "password_file": str(b.password_file())}, "log_level": "WARNING",
    })
    listener = CallHomeListener(cfg)
    await listener.start()
    tracemalloc.start(1)
    snap0 = tracemalloc.take_snapshot()
    loop = asyncio.get_running_loop()
    sim = await loop.run_in_executor(None, lambda: b.start_simulator(listener=port, count=n))
    try:
        deadline = time.monotonic() + 300
        while len(listener.devices.sessions) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        snap1 = tracemalloc.take_snapshot()
        held = len(listener.devices.sessions)
        stats = snap1.compare_to(snap0, "lineno")
        total = sum(s.size_diff for s in stats)
        by_file: Dict[str, int] = {}
        for s in stats:
            fname = s.traceback[0].filename
            key = _short(fname)
            by_file[key] = by_file.get(key, 0) + s.size_diff
        return {
            "devices": n,
            "held": held,
            "traced_bytes_per_session": round(total / max(1, held)),
            "top_lines_bytes_per_session": [
                [_short(str(s.traceback[0])), round(s.size_diff / max(1, held))]
                for s in stats[:top]
            ],
            "top_files_bytes_per_session": [
                [k, round(v / max(1, held))] for k, v in sorted(by_file.items(), key=lambda kv: -kv[1])[:top]
            ],
        }
    finally:
        tracemalloc.stop()
        await loop.run_in_executor(None, sim.stop)
        await listener.stop()
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def run(ns: List[int], *, variants: Sequence[str], window: float, settle: float, timeout: float,
        tracemalloc_n: int = 0) -> Dict[str, Any]:
    manifest_all = b.ensure_fleet(max(ns + [tracemalloc_n]))
    out: Dict[str, Any] = {"runs": []}
    parsed = [parse_variant(v) for v in variants]
    for n in ns:
        manifest = {k: v for i, (k, v) in enumerate(sorted(manifest_all.items())) if i < n}
        procs = 1 if n <= 2000 else 2  # one process holds at most ~10,000 sockets under a 20,000 fd limit
        for kind, keepalive in parsed:
            b.log("held: %s with %d devices (keepalive %s, window %.0f s)"
                  % (kind, n, "default" if keepalive is None else "%.0f s" % keepalive, window))
            res = held_once(kind, n, manifest, keepalive=keepalive, window=window, settle=settle,
                            sim_processes=procs, timeout=timeout)
            b.log("  -> %s" % json.dumps(res, sort_keys=True))
            out["runs"].append(res)
    if tracemalloc_n:
        manifest = {k: v for i, (k, v) in enumerate(sorted(manifest_all.items())) if i < tracemalloc_n}
        b.log("held: tracemalloc experiment, listener in-process, %d devices" % tracemalloc_n)
        out["tracemalloc"] = asyncio.run(_tracemalloc_inproc(tracemalloc_n, manifest, 15))
        b.log("  -> %s" % json.dumps(out["tracemalloc"], sort_keys=True))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--variants", nargs="+", default=["listener:default", "listener:30", "bare-ssh:30"],
                   help="SERVER:KEEPALIVE, SERVER listener or bare-ssh, KEEPALIVE seconds or 'default'")
    p.add_argument("--window", type=float, default=60.0, help="idle CPU window (s)")
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--tracemalloc", type=int, default=0, help="also run the in-process memory experiment")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    b.raise_nofile()
    res = run(a.devices, variants=a.variants, window=a.window, settle=a.settle, timeout=a.timeout,
              tracemalloc_n=a.tracemalloc)
    return b.report(res, a.json)


if __name__ == "__main__":
    sys.exit(main())

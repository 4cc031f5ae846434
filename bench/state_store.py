# SPDX-License-Identifier: GPL-3.0-or-later
"""One listener node with its state in PostgreSQL against the same node on SQLite: the same
call-home storm, side by side in one run (issue 12, target: PostgreSQL at most 1.2x SQLite's
listener CPU per device).

For each fleet size N and each round, both stores are run one after the other (the order
alternates between rounds, so neither always runs on the warmer machine), each with a fresh
listener, a fresh store and a fresh simulator fleet of N SSH devices (tests/peers/simulator.py)
dialing at once:

* ``sqlite``      the default: ``registry.sqlite`` and ``trust.json`` in the listener's home
* ``postgresql``  ``state_url: postgresql://...`` on a fresh database of a PostgreSQL started for
                  the run (tests/peers/postgres_peer.py: Debian's server, a temporary data
                  directory, SCRAM password over TCP on loopback); the trust store is the shared
                  tables, seeded from the same trust.json at start-up

Figures per run:

* ``listener_cpu_ms_per_device``: utime+stime of the listener process (/proc) from "idle, before
  the fleet starts" to "all N ready" (polled through the control socket, as bench/storm.py), and
  ``..._incl_settle`` to ``--settle`` s later (the registry's last flushes; the status polls' own
  cost is measured and taken out, as in bench/storm.py)
* ``registry_rows_written`` / ``registry_rows_per_s``: rows the store received (device upserts +
  history events + pending keys) over the storm, up to the end of the settle time.
  PostgreSQL: ``pg_stat_user_tables`` (n_tup_ins + n_tup_upd; also the commits of the database,
  ``pg_stat_database.xact_commit``, i.e. flushes and the trust poller's reads). SQLite: counting
  triggers the benchmark adds to the listener's file before the storm (a trigger runs in the
  listener's writer thread: a few microseconds per row, charged to SQLite)
* ``postgres_cpu_s``: CPU of the PostgreSQL server's processes (postmaster and its backends) over
  the same interval, so the database's share is visible beside the listener's

    .venv/bin/python bench/state_store.py --devices 1000 3000 --rounds 2 --json .cache/bench/state_store.json

The fleet dials with ``--concurrency 300`` by default (at most 300 dials at once, each device
calling as soon as a slot is free): on the shared 2-core machine an unbounded 3,000-device storm
ran into handshake timeouts and a 60 s block of the simulator's address, which then dominated
the figures of whichever store it hit. ``--concurrency 0`` gives the unbounded storm.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as b  # noqa: E402

COUNTED_TABLES = ("devices", "events", "pending")  # SQLite's names
PG_TABLES = ("devices", "events", "pending_keys")


def sqlite_counters(path: Path) -> None:
    """A row counter on each registry table of the listener's SQLite file (made at its start)."""
    db = sqlite3.connect(str(path), timeout=30)
    with db:
        db.execute("CREATE TABLE IF NOT EXISTS bench_rows (n INTEGER NOT NULL)")
        db.execute("INSERT INTO bench_rows VALUES (0)")
        for table in COUNTED_TABLES:
            for op in ("INSERT", "UPDATE"):
                db.execute(
                    "CREATE TRIGGER IF NOT EXISTS bench_%s_%s AFTER %s ON %s BEGIN "
                    "UPDATE bench_rows SET n = n + 1; END" % (table, op.lower(), op, table)
                )
    db.close()


def sqlite_rows(path: Path) -> int:
    db = sqlite3.connect(str(path), timeout=30)
    try:
        return int(db.execute("SELECT n FROM bench_rows").fetchone()[0])
    finally:
        db.close()


def pg_rows(peer: Any, database: str) -> Dict[str, int]:
    rows = peer.psql(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables WHERE relname IN (%s)"
        % ", ".join("'%s'" % t for t in PG_TABLES),
        database,
    )
    commits = peer.psql("SELECT xact_commit FROM pg_stat_database WHERE datname = '%s'" % database, database)
    return {"rows": int(rows[0][0]), "commits": int(commits[0][0])}


def postmaster_pid(peer: Any) -> int:
    with open(os.path.join(peer.datadir, "postmaster.pid"), encoding="ascii") as handle:
        return int(handle.readline())


def storm_once(store: str, n: int, manifest: Dict[str, Dict[str, str]], *, peer: Any, index: int,
               timeout: float, settle: float, sim_processes: int, concurrency: int,
               profile: Optional[str]) -> Dict[str, Any]:
    database = ""
    extra: List[str] = []
    cfg_dir = Path(b.CACHE) / "state_store"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    if store == "postgresql":
        database = "bench_%d_%d" % (n, index)
        url = peer.create_database(database)
        cfg = cfg_dir / ("%s.yaml" % database)
        cfg.write_text(json.dumps({"state_url": url, "node_name": "bench-node"}))
        os.chmod(cfg, 0o600)
        extra = ["--config", str(cfg)]
    prefix = None
    if profile:
        spy = Path(b.PYTHON).parent / "py-spy"
        # --gil: only samples of the thread holding the GIL, i.e. Python work, not threads waiting
        # for it or in epoll (the store's own loop threads would otherwise look busy)
        prefix = [str(spy) if spy.exists() else "py-spy", "record", "--rate", "250", "--gil", "--format", "raw",
                  "--output", profile, "--"]
    server = b.Listener(manifest, extra=extra, prefix=prefix)
    sim = None
    try:
        registry = server.home / "registry.sqlite"
        if store == "sqlite":
            sqlite_counters(registry)
        time.sleep(0.3)  # the start-up work settles before the "idle" reading
        pg_pid = postmaster_pid(peer)
        rows0 = sqlite_rows(registry) if store == "sqlite" else pg_rows(peer, database)
        pg_cpu0 = b.process_tree_cpu(pg_pid)
        cpu0 = b.cpu_seconds(server.pid)
        sim = b.start_simulator(listener=server.port, count=n, processes=sim_processes,
                                extra=["--concurrency", str(concurrency)] if concurrency else [])
        if not sim.wait_for("STARTED", 1, 300):
            raise RuntimeError("simulator did not start: %s" % sim.tail())
        t0 = float(sim.first["STARTED"].split()[1])
        deadline = time.monotonic() + timeout
        ready = polls = 0
        t_ready: Optional[float] = None
        while time.monotonic() < deadline:
            polls += 1
            ready = server.sessions()
            if ready >= n:
                t_ready = time.time()
                break
            time.sleep(0.025)
        cpu1 = b.cpu_seconds(server.pid)
        c0 = b.cpu_seconds(server.pid)
        for _poll in range(20):
            server.sessions()
        per_poll = (b.cpu_seconds(server.pid) - c0) / 20
        poll_cpu = min(cpu1 - cpu0, per_poll * polls)
        probe_cpu = b.cpu_seconds(server.pid) - c0
        time.sleep(settle)
        cpu2 = b.cpu_seconds(server.pid)
        pg_cpu = b.process_tree_cpu(pg_pid) - pg_cpu0
        if store == "sqlite":
            rows = sqlite_rows(registry) - int(rows0)  # type: ignore[arg-type]
            commits: Optional[int] = None
            table_bytes: Dict[str, Any] = {}
        else:
            # PostgreSQL's statistics reach pg_stat_* up to a second after a backend's commit
            time.sleep(1.5)
            after = pg_rows(peer, database)
            rows = after["rows"] - rows0["rows"]  # type: ignore[index]
            commits = after["commits"] - rows0["commits"]  # type: ignore[index]
            sizes = peer.psql(
                "SELECT relname, n_live_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables "
                "WHERE relname IN ('devices', 'events')", database)
            table_bytes = {name: {"rows": int(live), "bytes": int(size)} for name, live, size in sizes}
        got = ready if t_ready is None else n
        storm_s = (t_ready - t0) if t_ready is not None else timeout
        span = storm_s + settle
        res: Dict[str, Any] = {
            "store": store,
            "devices": n,
            "round": index,
            "ready": got,
            "complete": t_ready is not None,
            "seconds_to_ready": round(storm_s, 3) if t_ready is not None else None,
            "listener_cpu_s": round(cpu1 - cpu0, 3),
            "listener_cpu_ms_per_device": round((cpu1 - cpu0) / max(1, got) * 1000, 3),
            "listener_cpu_ms_per_device_excl_polls": round((cpu1 - cpu0 - poll_cpu) / max(1, got) * 1000, 3),
            "listener_cpu_ms_per_device_incl_settle": round((cpu2 - cpu0 - probe_cpu - poll_cpu) / max(1, got) * 1000, 3),
            "status_polls": polls,
            "registry_rows_written": rows,
            "registry_rows_per_s": round(rows / span, 1),
            "postgres_commits": commits,
            "postgres_commits_per_s": round(commits / span, 1) if commits is not None else None,
            "postgres_cpu_s": round(pg_cpu, 3) if store == "postgresql" else None,
            "postgres_tables": table_bytes,
            "simulator_ready_lines": sim.count("READY"),
            "simulator_disconnects": sim.count("DISCONNECTED"),
            "listener_log": {k: v for k, v in server.log_counts().items() if k != "samples" and v},
            "command": " ".join(server.cmd).replace(str(b.ROOT) + "/", ""),
        }
        return res
    finally:
        if sim is not None:
            sim.stop()
        if profile:
            import signal
            import subprocess

            os.kill(server.pid, signal.SIGTERM)  # the listener itself; py-spy then writes its file
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(60)
        server.stop()


def ratios(runs: List[Dict[str, Any]], n: int) -> Dict[str, Any]:
    """PostgreSQL over SQLite, on the medians of the rounds at size ``n``."""
    import statistics

    def med(store: str, key: str) -> Optional[float]:
        vals = [r[key] for r in runs if r["devices"] == n and r["store"] == store and r.get(key) is not None]
        return statistics.median(vals) if vals else None

    out: Dict[str, Any] = {}
    for key in ("listener_cpu_ms_per_device", "listener_cpu_ms_per_device_excl_polls",
                "listener_cpu_ms_per_device_incl_settle", "seconds_to_ready", "registry_rows_per_s"):
        pg, lite = med("postgresql", key), med("sqlite", key)
        out[key] = {"sqlite": lite, "postgresql": pg,
                    "postgresql_over_sqlite": round(pg / lite, 2) if pg and lite else None}
    cpu = out["listener_cpu_ms_per_device_excl_polls"]["postgresql_over_sqlite"]
    out["target_cpu_per_device_at_most_1.2x"] = None if cpu is None else cpu <= 1.2
    out["postgres_server_cpu_ms_per_device"] = (
        round(med("postgresql", "postgres_cpu_s") / n * 1000, 3) if med("postgresql", "postgres_cpu_s") is not None else None
    )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[1000, 3000])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout", type=float, default=240.0)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--sim-processes", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=300,
                   help="simultaneous dials of the fleet (0: all at once); on a shared 2-core machine an "
                        "unbounded 3,000-device storm runs into handshake timeouts and an address block, "
                        "which then dominate both stores' figures")
    p.add_argument("--profile", choices=["postgresql", "sqlite"], help="py-spy the listener on this store (once, largest N)")
    p.add_argument("--json", type=Path, help="write results here")
    a = p.parse_args()
    b.raise_nofile()
    from postgres_peer import PostgresPeer  # tests/peers

    manifest_all = b.ensure_fleet(max(a.devices))
    out: Dict[str, Any] = {"runs": [], "ratios": {}, "loadavg_before": os.getloadavg(),
                           "argv": sys.argv[1:]}
    with PostgresPeer() as peer:
        out["postgresql"] = peer.psql("SHOW server_version")[0][0]
        for n in a.devices:
            manifest = {k: v for i, (k, v) in enumerate(sorted(manifest_all.items())) if i < n}
            for rnd in range(a.rounds):
                order = ["sqlite", "postgresql"] if rnd % 2 == 0 else ["postgresql", "sqlite"]
                for store in order:
                    b.log("state_store: %s, %d devices, round %d (load %.2f)" % (store, n, rnd, os.getloadavg()[0]))
                    res = storm_once(store, n, manifest, peer=peer, index=rnd, timeout=a.timeout,
                                     settle=a.settle, sim_processes=a.sim_processes,
                                     concurrency=a.concurrency, profile=None)
                    res["loadavg_1m"] = round(os.getloadavg()[0], 2)
                    b.log("  -> %s" % json.dumps(res, sort_keys=True))
                    out["runs"].append(res)
            out["ratios"][str(n)] = ratios(out["runs"], n)
        if a.profile:
            n = max(a.devices)
            manifest = {k: v for i, (k, v) in enumerate(sorted(manifest_all.items())) if i < n}
            prof = str(b.CACHE / ("state-store-profile-%s-%d.txt" % (a.profile, n)))
            b.log("state_store: profiling the listener on %s with %d devices -> %s" % (a.profile, n, prof))
            out["profile_run"] = storm_once(a.profile, n, manifest, peer=peer, index=99, timeout=a.timeout,
                                            settle=a.settle, sim_processes=a.sim_processes,
                                            concurrency=a.concurrency, profile=prof)
            from storm import summarize_profile

            try:
                out["profile"] = summarize_profile(prof)
            except OSError as exc:
                out["profile"] = {"error": "no profile written (is py-spy installed?): %s" % exc}
    out["loadavg_after"] = os.getloadavg()
    return b.report(out, a.json)


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: GPL-3.0-or-later
"""Scale-out: N devices calling through HAProxy to three listener nodes against the same storm on
one node without HAProxy, side by side in one run (issue 12, benchmarks).

Both setups keep their state in PostgreSQL (one server for the run, tests/peers/postgres_peer.py,
a fresh database per storm), so the difference measured is the scale-out itself (three nodes,
HAProxy, PROXY headers, three writers on one database), not the store (bench/state_store.py
compares the stores). For each round both run one after the other, the order alternating:

* ``one_node``     one listener, devices dial it directly
* ``three_nodes``  three listeners (``node-a``..``node-c``) on one database, Debian's HAProxy in
                   front (tests/peers/haproxy_peer.py: TCP mode, round robin, ``send-proxy-v2``,
                   health checks every 300 ms, connecting from 127.0.0.2 which every node lists
                   in ``proxy_protocol_from``); devices dial HAProxy

The fleet is the same N simulated SSH devices (tests/peers/simulator.py), at most
``--concurrency`` dials at once (300 by default, as bench/state_store.py: an unbounded storm on
this 2-core machine runs into handshake timeouts and address blocks which then dominate).

Figures per storm:

* ``seconds_to_ready``: from the simulator's start to every device held (the nodes' ``sessions``
  summed, polled through their control sockets every 25 ms)
* ``nodes``: per node, the devices it holds and its CPU (utime+stime, /proc) from idle to all
  ready, per device it holds: ``cpu_ms_per_device``; ``cpu_ms_per_device_total`` is every
  node's CPU over N (what the storm costs the cluster per device)
* ``idle_cpu_pct`` per node: its CPU over ``--idle`` s before the storm (its background work: trust
  poll, ownership reconcile, heartbeat); ``cpu_ms_per_device_total_excl_idle`` takes that rate over
  the storm's duration out (three nodes pay it three times, for longer)
* ``listen_backends``: the nodes' LISTEN connections in ``pg_stat_activity`` before the storm (one
  per node: ``state.pg_listen``)
* ``haproxy_cpu_s``, ``postgres_cpu_s``: the balancer's and the database server's processes
* ``registry_rows_per_s`` / ``postgres_commits_per_s``: rows written to ``devices``, ``events``,
  ``pending_keys`` and ``device_owners`` (``pg_stat_user_tables``: n_tup_ins + n_tup_upd) and the
  database's commits, from the start of the storm to ``--settle`` s after all ready, over that span

    .venv/bin/python bench/scale_out.py --devices 3000 --rounds 2 --json .cache/bench/scale_out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib as b  # noqa: E402

sys.path.insert(0, str(b.PEERS))

from state_store import pg_rows, postmaster_pid  # noqa: E402

BALANCER = "127.0.0.2"
TABLES = ("devices", "events", "pending_keys", "device_owners")
NODES = ("node-a", "node-b", "node-c")


def registry_rows(peer: Any, database: str) -> int:
    rows = peer.psql(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables WHERE relname IN (%s)"
        % ", ".join("'%s'" % t for t in TABLES), database)
    return int(rows[0][0])


def statements_enable(peer: Any) -> None:
    """pg_stat_statements on the run's server (a restart: it must be preloaded), to count the
    statements, and so the commits, of a storm by what sent them."""
    peer.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    peer.restart()
    peer.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


def statements_top(peer: Any, database: str, limit: int = 25) -> List[Dict[str, Any]]:
    """The storm's statements on ``database`` by number of calls (BEGIN / COMMIT included: a
    COMMIT is an explicit transaction; any other statement outside one is a commit of its own)."""
    rows = peer.psql(
        "SELECT calls, rows, regexp_replace(left(query, 160), '\\s+', ' ', 'g') FROM pg_stat_statements "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '%s') ORDER BY calls DESC LIMIT %d"
        % (database, limit))
    return [{"calls": int(calls), "rows": int(nrows), "query": query} for calls, nrows, query in rows]


def start_nodes(setup: str, manifest: Dict[str, Dict[str, str]], peer: Any, database: str) -> List[Any]:
    url = peer.create_database(database)
    cfg_dir = Path(b.CACHE) / "scale_out"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    names = NODES if setup == "three_nodes" else ("node-a",)
    nodes = []
    for name in names:  # one after the other: the first seeds the shared trust store
        config: Dict[str, Any] = {"state_url": url, "node_name": name}
        if setup == "three_nodes":
            config["proxy_protocol_from"] = ["%s/32" % BALANCER]
        path = cfg_dir / ("%s-%s.yaml" % (database, name))
        path.write_text(json.dumps(config))
        os.chmod(path, 0o600)  # the database password
        node = b.Listener(manifest, extra=["--config", str(path)])
        node.name = name
        nodes.append(node)
    return nodes


def storm_once(setup: str, n: int, manifest: Dict[str, Dict[str, str]], *, peer: Any, index: int, timeout: float,
               settle: float, concurrency: int, sim_processes: int, idle: float,
               statements: bool = False) -> Dict[str, Any]:
    from haproxy_peer import HAProxyPeer  # tests/peers

    database = "scale_%s_%d_%d" % (setup, n, index)
    nodes: List[Any] = []
    lb: Optional[Any] = None
    sim = None
    try:
        nodes = start_nodes(setup, manifest, peer, database)
        port = nodes[0].port
        if setup == "three_nodes":
            lb = HAProxyPeer([("127.0.0.1", node.port) for node in nodes], source=BALANCER).start()
            lb.wait_up()
            port = lb.port
        time.sleep(0.5)  # start-up work settles before the "idle" reading
        # each node's own background work (trust poll, ownership reconcile, heartbeat), idle
        idle0 = {node.name: b.cpu_seconds(node.pid) for node in nodes}
        time.sleep(idle)
        idle_rate = {node.name: (b.cpu_seconds(node.pid) - idle0[node.name]) / idle for node in nodes}
        pg_pid = postmaster_pid(peer)
        # the nodes' LISTEN connections (state.pg_listen names them): each is woken, a transaction,
        # by every notifying commit
        listen_backends = int(peer.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND application_name LIKE '%% listen'"
            % database)[0][0])
        if statements:
            peer.psql("SELECT pg_stat_statements_reset()")
        rows0, commits0 = registry_rows(peer, database), pg_rows(peer, database)["commits"]
        pg_cpu0 = b.process_tree_cpu(pg_pid)
        lb_cpu0 = b.cpu_seconds(lb.proc.pid) if lb is not None else 0.0
        cpu0 = {node.name: b.cpu_seconds(node.pid) for node in nodes}
        sim = b.start_simulator(listener=port, count=n, processes=sim_processes,
                                extra=["--concurrency", str(concurrency)] if concurrency else [])
        if not sim.wait_for("STARTED", 1, 300):
            raise RuntimeError("simulator did not start: %s" % sim.tail())
        t0 = float(sim.first["STARTED"].split()[1])
        deadline = time.monotonic() + timeout
        held: Dict[str, int] = {}
        t_ready: Optional[float] = None
        while time.monotonic() < deadline:
            held = {node.name: node.sessions() for node in nodes}
            if sum(held.values()) >= n:
                t_ready = time.time()
                break
            time.sleep(0.025)
        cpu1 = {node.name: b.cpu_seconds(node.pid) for node in nodes}
        lb_cpu = (b.cpu_seconds(lb.proc.pid) - lb_cpu0) if lb is not None else None
        time.sleep(settle)
        time.sleep(1.5)  # PostgreSQL's statistics reach pg_stat_* up to a second after a commit
        rows = registry_rows(peer, database) - rows0
        commits = pg_rows(peer, database)["commits"] - commits0
        pg_cpu = b.process_tree_cpu(pg_pid) - pg_cpu0
        storm_s = (t_ready - t0) if t_ready is not None else timeout
        span = storm_s + settle
        per_node = {
            name: {"held": held.get(name, 0), "cpu_s": round(cpu1[name] - cpu0[name], 3),
                   "cpu_ms_per_device": round((cpu1[name] - cpu0[name]) / max(1, held.get(name, 0)) * 1000, 3),
                   "idle_cpu_pct": round(idle_rate[name] * 100, 2)}
            for name in cpu0
        }
        total_cpu = sum(cpu1[name] - cpu0[name] for name in cpu0)
        idle_cpu = sum(idle_rate.values()) * storm_s  # what the nodes would have spent anyway
        got = sum(held.values())
        top = statements_top(peer, database) if statements else None
        return {
            "statements": top,
            "setup": setup,
            "devices": n,
            "round": index,
            "ready": got,
            "complete": t_ready is not None,
            "seconds_to_ready": round(storm_s, 3) if t_ready is not None else None,
            "nodes": per_node,
            "cpu_ms_per_device_total": round(total_cpu / max(1, got) * 1000, 3),
            "cpu_ms_per_device_max_node": max(v["cpu_ms_per_device"] for v in per_node.values()),
            "cpu_ms_per_device_total_excl_idle": round((total_cpu - idle_cpu) / max(1, got) * 1000, 3),
            "postgres_commits_per_device": round(commits / max(1, got), 2),
            "listen_backends": listen_backends,
            "haproxy_cpu_s": round(lb_cpu, 3) if lb_cpu is not None else None,
            "postgres_cpu_s": round(pg_cpu, 3),
            "registry_rows_written": rows,
            "registry_rows_per_s": round(rows / span, 1),
            "postgres_commits": commits,
            "postgres_commits_per_s": round(commits / span, 1),
            "simulator_disconnects": sim.count("DISCONNECTED"),
            "listener_log": {node.name: {k: v for k, v in node.log_counts().items() if k != "samples" and v}
                             for node in nodes},
        }
    finally:
        if sim is not None:
            sim.stop()
        if lb is not None:
            lb.stop()
        for node in nodes:
            node.stop()


def compare(runs: List[Dict[str, Any]], n: int) -> Dict[str, Any]:
    """three_nodes over one_node, on the medians of the rounds at size ``n``."""

    def med(setup: str, key: str) -> Optional[float]:
        vals = [r[key] for r in runs if r["devices"] == n and r["setup"] == setup and r.get(key) is not None]
        return statistics.median(vals) if vals else None

    out: Dict[str, Any] = {}
    for key in ("seconds_to_ready", "cpu_ms_per_device_total", "cpu_ms_per_device_total_excl_idle",
                "cpu_ms_per_device_max_node", "registry_rows_per_s", "postgres_commits_per_s",
                "postgres_commits_per_device", "postgres_cpu_s"):
        one, three = med("one_node", key), med("three_nodes", key)
        out[key] = {"one_node": one, "three_nodes": three,
                    "three_over_one": round(three / one, 2) if one and three else None}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[3000])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--idle", type=float, default=5.0, help="seconds of each node's idle CPU read before the storm")
    p.add_argument("--sim-processes", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=300, help="simultaneous dials of the fleet (0: all at once)")
    p.add_argument("--statements", action="store_true",
                   help="count each storm's statements by text (pg_stat_statements, preloaded with a restart "
                        "of the run's server): what the commits are")
    p.add_argument("--json", type=Path, help="write results here")
    a = p.parse_args()
    b.raise_nofile()
    from postgres_peer import PostgresPeer  # tests/peers

    manifest_all = b.ensure_fleet(max(a.devices))
    out: Dict[str, Any] = {"runs": [], "compare": {}, "loadavg_before": os.getloadavg(), "argv": sys.argv[1:],
                           "cpus": os.cpu_count()}
    with PostgresPeer() as peer:
        out["postgresql"] = peer.psql("SHOW server_version")[0][0]
        if a.statements:
            statements_enable(peer)
        for n in a.devices:
            manifest = {k: v for i, (k, v) in enumerate(sorted(manifest_all.items())) if i < n}
            for rnd in range(a.rounds):
                order = ["one_node", "three_nodes"] if rnd % 2 == 0 else ["three_nodes", "one_node"]
                for setup in order:
                    b.log("scale_out: %s, %d devices, round %d (load %.2f)" % (setup, n, rnd, os.getloadavg()[0]))
                    res = storm_once(setup, n, manifest, peer=peer, index=rnd, timeout=a.timeout, settle=a.settle,
                                     concurrency=a.concurrency, sim_processes=a.sim_processes, idle=a.idle,
                                     statements=a.statements)
                    res["loadavg_1m"] = round(os.getloadavg()[0], 2)
                    b.log("  -> %s" % json.dumps(res, sort_keys=True))
                    out["runs"].append(res)
            out["compare"][str(n)] = compare(out["runs"], n)
    out["loadavg_after"] = os.getloadavg()
    return b.report(out, a.json)


if __name__ == "__main__":
    sys.exit(main())

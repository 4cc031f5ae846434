# SPDX-License-Identifier: GPL-3.0-or-later
"""Hand-off routed to another node against a local one (issue 12).

Two listener nodes share a real PostgreSQL (``tests/peers/postgres_peer.py``) and a cluster CA
(the node-to-node channel, mutual TLS). One simulated device calls node-b. Per iteration, timed
with ``time.perf_counter`` in this process, alternating so noise hits both alike:

* ``local``   what the connection plugin and a module do against the node holding the device:
              control op ``endpoint`` on node-b, then the module's first JSON-RPC through
              ``ansible.module_utils.connection.Connection(socket_path).get_capabilities()``
* ``routed``  the same asked of node-a, which forwards the endpoint to node-b (a local proxy
              socket whose JSON-RPC goes to node-b's endpoint)
* ``wait-local`` / ``wait-routed``  control op ``wait`` alone (the owner lookup included)

Each path is a reused endpoint (a later task of the same host: the common case) and, with
``--new``, also a new one per iteration (the first task of a host). Reported: median, p95, p99.
``--pool-size N`` sets the nodes' ``cluster.pool_size`` (default: the listener's, 8; 0 = a new
TLS connection per forwarded request, as before the pool), for an A/B of the same code.

    .venv/bin/python bench/handoff_routed.py --iterations 300 --json .cache/bench/issue12/handoff_routed.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "peers"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

import benchlib as b  # noqa: E402

COLLECTIONS_PATHS = [str(b.ROOT / ".collections"), str(b.ROOT / ".deps")]


def _summary(values: List[float]) -> Dict[str, float]:
    out = b.summary_ms(values)
    out["p99_ms"] = round(b.pct(values, 99) * 1000, 2)
    return out


def run(iterations: int, warmup: int, new: bool, pool_size: Optional[int] = None) -> Dict[str, Any]:
    from ansible.module_utils.connection import Connection
    from harness import cluster_certs  # tests/integration: the tests' cluster CA and node certificates
    from postgres_peer import PostgresPeer

    manifest = b.ensure_fleet(1)
    peer = PostgresPeer().start()
    nodes: Dict[str, b.Listener] = {}
    sim = None
    try:
        url = peer.create_database("handoff_routed")
        work = Path(tempfile.mkdtemp(prefix="bench-routed-"))
        certs = cluster_certs(work, ["node-a", "node-b"])
        for name in ("node-b", "node-a"):  # node-b first: its trust.json seeds the shared store
            config = work / ("%s.yml" % name)
            cluster: Dict[str, Any] = dict(certs[name], bind="127.0.0.1:0")
            if pool_size is not None:
                cluster["pool_size"] = pool_size
            config.write_text(json.dumps({"state_url": url, "node_name": name, "cluster": cluster}))
            os.chmod(config, 0o600)
            nodes[name] = b.Listener(manifest, extra=["--config", str(config)])
        sim = b.start_simulator(listener=nodes["node-b"].port, count=1)
        clients = {name: node.client for name, node in nodes.items()}

        def seen_everywhere() -> bool:
            try:
                return all(c.call("wait", device="sim0001", wait=1)["status"] == "connected" for c in clients.values())
            except Exception:  # noqa: BLE001 - not yet
                return False

        if not b.wait_until(seen_everywhere, 60):
            raise RuntimeError("sim0001 not reachable from both nodes: %s" % nodes["node-a"].log_tail())

        count = [0]

        def endpoint(node: str, reused: bool) -> Callable[[], None]:
            def go() -> None:
                count[0] += 1
                client = "bench-%s/%s" % (node, "reused" if reused else count[0])
                info = clients[node].call(
                    "endpoint", device="sim0001", wait=5, network_os="ansible.netcommon.default",
                    command_timeout=30, collections_paths=COLLECTIONS_PATHS, client=client,
                )
                caps = Connection(info["socket_path"]).get_capabilities()
                if "urn:ietf:params:netconf:base:1.0" not in str(caps):
                    raise RuntimeError("unexpected get_capabilities answer: %r" % (caps,)[:200])
            return go

        def wait(node: str) -> Callable[[], None]:
            return lambda: clients[node].call("wait", device="sim0001", wait=5)

        variants: Dict[str, Callable[[], None]] = {
            "local": endpoint("node-b", True),
            "routed": endpoint("node-a", True),
            "wait-local": wait("node-b"),
            "wait-routed": wait("node-a"),
        }
        if new:
            variants["local-new"] = endpoint("node-b", False)
            variants["routed-new"] = endpoint("node-a", False)
        times: Dict[str, List[float]] = {k: [] for k in variants}
        for i in range(warmup + iterations):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
        res: Dict[str, Any] = {k: _summary(v) for k, v in times.items()}
        res["ratio_median_routed_vs_local"] = round(res["routed"]["median_ms"] / res["local"]["median_ms"], 2)
        res["iterations"] = iterations
        res["pool_size"] = pool_size if pool_size is not None else "default"
        res["load_average"] = os.getloadavg()
        return res
    finally:
        if sim is not None:
            sim.stop()
        for node in nodes.values():
            node.stop()
        peer.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--new", action="store_true", help="also a new endpoint per iteration on each path")
    p.add_argument("--pool-size", type=int, default=None,
                   help="cluster.pool_size of both nodes (default: the listener's; 0 = no pool)")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    res = run(a.iterations, a.warmup, a.new, a.pool_size)
    print(json.dumps(res, indent=1))
    if a.json:
        b.write_json(a.json, {"handoff_routed": res})
    return 0


if __name__ == "__main__":
    sys.exit(main())

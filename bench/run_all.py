# SPDX-License-Identifier: GPL-3.0-or-later
"""All benchmarks in one run (``make bench``); ``--quick`` for a short run (a few minutes).

Phases run one after the other (never concurrently: the machine has 2 cores and every figure is
a process's own CPU/RSS reading). Results go to ``.cache/bench/results[-quick].json`` and a
summary table with the key ratios is printed at the end (what docs/performance.md quotes).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as b  # noqa: E402
import handoff  # noqa: E402
import held_sessions  # noqa: E402
import playbook  # noqa: E402
import storm  # noqa: E402

FULL: Dict[str, Any] = {
    "storm": dict(ns=[100, 1000, 5000], ncclient_n=5, ncclient_budget=70.0, profile_n=1000),
    # 10,000 devices dialing at once (two simulator processes): does the listener converge?
    "storm10k": dict(ns=[10000], kinds=["listener", "bare-ssh"], sim_processes=2, timeout=240.0),
    # The listener at its default SSH keepalive interval, and at 30 s next to the bare floor at 30 s.
    "held": dict(ns=[1000, 10000], variants=["listener:default", "listener:30", "bare-ssh:30"], window=60.0,
                 tracemalloc_n=1000),
    "handoff": dict(iterations=200),
    "playbook": dict(ns=[20, 50], forks=10, repeat=3),
}
QUICK: Dict[str, Any] = {
    "storm": dict(ns=[100, 1000], ncclient_n=3, ncclient_budget=5.0, profile_n=0),
    "storm10k": dict(ns=[2000], kinds=["listener"], sim_processes=2, timeout=120.0),
    "held": dict(ns=[1000], variants=["listener:default", "listener:5", "bare-ssh:5"], window=10.0, tracemalloc_n=0),
    "handoff": dict(iterations=50),
    "playbook": dict(ns=[20], forks=10, repeat=1),
}
PHASES = ["storm", "storm10k", "held", "handoff", "playbook"]


def machine() -> Dict[str, Any]:
    import os

    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=str(b.ROOT), capture_output=True, text=True, timeout=10,
                                  check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release(), "nofile_limit": b.raise_nofile(), "load_average_at_start": load,
            "git_head": git("rev-parse", "--short", "HEAD"),
            "listener_uncommitted_changes": bool(git("status", "--porcelain", "--", "listener", "plugins"))}


def table(res: Dict[str, Any]) -> List[str]:
    """The key figures and ratios, one line each."""
    out: List[str] = []
    st = res.get("storm", {})
    for r in st.get("runs", []) + res.get("storm10k", {}).get("runs", []):
        out.append("storm %-12s N=%-5d ready %s/%d in %s s, server CPU %.3f ms/device%s" % (
            r["server"], r["devices"], r["ready"], r["devices"], r["seconds_to_ready"], r["server_cpu_ms_per_device"],
            ", log %s" % json.dumps(r["listener_log"], sort_keys=True) if "listener_log" in r else ""))
    ratios = dict(st.get("ratios", {}), **res.get("storm10k", {}).get("ratios", {}))
    for n, ratio in ratios.items():
        out.append("storm N=%s ratios: %s" % (n, json.dumps(ratio, sort_keys=True)))
    if "ncclient" in st:
        nc = st["ncclient"]
        out.append("ncclient call_home: hold-second=%r; sequential %s sessions in %s s (bind failures %s)" % (
            nc.get("hold_second"), nc.get("sequential_sessions"), nc.get("sequential_wall_s"), nc.get("bind_failures")))
    if "profile" in st:
        out.append("listener profile (leaf package share %%): %s" % st["profile"].get("leaf_package_pct"))
    for r in res.get("held", {}).get("runs", []):
        out.append("held %-9s N=%-5d %s KiB/session, idle CPU %.2f%% of a core (window %ss, keepalive %ss%s)" % (
            r["server"], r["devices"], r["kib_per_session"], r["idle_cpu_pct_of_core"], r["idle_window_s"],
            r["keepalive_interval_s"], " = default" if r.get("keepalive_is_default") else ""))
    ho = res.get("handoff")
    if ho and "direct" in ho:
        for k in ("lease-adopt", "lease-uds", "direct", "endpoint-new", "endpoint-reused"):
            if k not in ho:
                continue
            out.append("handoff %-15s median %.2f ms, p95 %.2f ms" % (k, ho[k]["median_ms"], ho[k]["p95_ms"]))
        out.append("handoff ratio lease-adopt/direct (median): %s" % ho["ratio_median_lease_adopt_vs_direct"])
    pb = res.get("playbook", {})
    if pb.get("skipped_callhome"):
        out.append("playbook: call home SKIPPED: %s" % pb["skipped_callhome"])
    for n, s in pb.get("summary", {}).items():
        out.append("playbook N=%s: %s" % (n, json.dumps(s, sort_keys=True)))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="+", choices=PHASES)
    p.add_argument("--ncclient", type=int, help="ncclient baseline fleet size (0: skip; default per mode)")
    p.add_argument("--profile", type=int, help="py-spy profile of the listener at this storm size (0: skip)")
    p.add_argument("--output", type=Path, help="results file (default .cache/bench/results[-quick].json)")
    a = p.parse_args()
    cfg = QUICK if a.quick else FULL
    if a.ncclient is not None:
        cfg["storm"]["ncclient_n"] = a.ncclient
    if a.profile is not None:
        cfg["storm"]["profile_n"] = a.profile
    phases = a.only or PHASES
    res: Dict[str, Any] = {"mode": "quick" if a.quick else "full", "machine": machine(), "argv": sys.argv[1:],
                           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    t0 = time.monotonic()
    out_path = a.output or b.CACHE / ("results%s.json" % ("-quick" if a.quick else ""))
    for phase in phases:
        b.log("=== %s ===" % phase)
        t = time.monotonic()
        try:
            if phase == "storm":
                c = cfg["storm"]
                res["storm"] = storm.run(c["ns"], timeout=180.0, settle=1.5, sim_processes=1,
                                         ncclient_n=c["ncclient_n"], ncclient_budget=c["ncclient_budget"],
                                         kinds=["bare-ssh", "bare-netconf", "listener"],
                                         profile_n=c["profile_n"] or None)
            elif phase == "storm10k":
                c = cfg["storm10k"]
                res["storm10k"] = storm.run(c["ns"], timeout=c["timeout"], settle=1.5,
                                            sim_processes=c["sim_processes"], ncclient_n=0, ncclient_budget=0.0,
                                            kinds=c["kinds"])
            elif phase == "held":
                c = cfg["held"]
                res["held"] = held_sessions.run(c["ns"], variants=c["variants"], window=c["window"], settle=3.0,
                                                timeout=300.0, tracemalloc_n=c["tracemalloc_n"])
            elif phase == "handoff":
                res["handoff"] = handoff.run(cfg["handoff"]["iterations"])
            elif phase == "playbook":
                c = cfg["playbook"]
                res["playbook"] = playbook.run(c["ns"], forks=c["forks"], repeat=c["repeat"])
        except Exception as exc:  # noqa: BLE001 - one broken phase must not hide the others
            b.log("phase %s failed: %s: %s" % (phase, type(exc).__name__, exc))
            res[phase] = {"error": "%s: %s" % (type(exc).__name__, exc)}
        res.setdefault("phase_seconds", {})[phase] = round(time.monotonic() - t, 1)
        b.write_json(out_path, res)
    res["total_seconds"] = round(time.monotonic() - t0, 1)
    b.write_json(out_path, res)
    print("\n".join(["", "== netconf.callhome benchmarks (%s, %.0f s) ==" % (res["mode"], res["total_seconds"])]
                    + table(res) + ["results: %s" % out_path]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

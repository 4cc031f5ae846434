# SPDX-License-Identifier: GPL-3.0-or-later
"""Call-home storm: N simulated devices call at once; time until all are NETCONF-ready, and the
server's CPU per device, for the listener and for baselines on the same devices in the same run.

Servers compared, each in its own process, one after the other, each with a fresh fleet process:

* ``bare-ssh``      bench/bare_asyncssh_listener.py --mode ssh: SSH handshake + auth only (floor)
* ``bare-netconf``  the same plus ``netconf`` channel + hello exchange (protocol minimum)
* ``listener``      the real listener (trust store, registry, control socket), WARNING logging
* ``ncclient``      manager.call_home, one device per call (bench/ncclient_callhome.py)

Time runs from the simulator's ``STARTED`` line (keys loaded, every device task created) to the
moment the server counts N ready devices: the bare servers print a timestamp per device, the
listener is polled through its control socket (``status`` -> ``sessions``) every 25 ms.
CPU is utime+stime of the server process from /proc between "idle, before the fleet starts" and
"all ready" (and again after a settle delay, which adds deferred work such as registry flushes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as b  # noqa: E402

BENCH = Path(__file__).resolve().parent


class BareServer:
    """bench/bare_asyncssh_listener.py in its own process."""

    def __init__(self, mode: str, keepalive: float = 0.0) -> None:
        self.lp = b.LineProcess([
            b.PYTHON, str(BENCH / "bare_asyncssh_listener.py"), "--mode", mode,
            "--password-file", str(b.password_file()), "--username", b.USER,
            "--keepalive-interval", str(keepalive),
        ])
        if not self.lp.wait_for("LISTENING", 1, 30):
            raise RuntimeError("bare listener did not start: %s" % self.lp.tail())
        self.port = int(self.lp.first["LISTENING"])
        self.pid = self.lp.pid

    def ready(self) -> int:
        return self.lp.count("UP")

    def ready_time(self) -> Optional[float]:
        last = self.lp.last.get("UP")
        return float(last) if last else None

    def stop(self) -> None:
        self.lp.stop()


def storm_once(kind: str, n: int, manifest: Dict[str, Dict[str, str]], *, timeout: float, settle: float,
               sim_processes: int, profile: Optional[str] = None) -> Dict[str, Any]:
    """One server, one fleet of ``n`` devices dialing at once."""
    server: Any
    prefix = None
    if profile:
        spy = Path(b.PYTHON).parent / "py-spy"
        prefix = [str(spy) if spy.exists() else "py-spy", "record", "--rate", "250", "--format", "raw", "--output", profile, "--"]
    if kind == "listener":
        server = b.Listener(manifest, prefix=prefix)
    else:
        server = BareServer(kind.split("-", 1)[1])
    sim = None
    try:
        time.sleep(0.3)  # let the server's start-up work settle before the "idle" reading
        cpu0, rss0 = b.cpu_seconds(server.pid), b.rss_kib(server.pid)
        sim = b.start_simulator(listener=server.port, count=n, processes=sim_processes)
        if not sim.wait_for("STARTED", 1, 300):
            raise RuntimeError("simulator did not start: %s" % sim.tail())
        t0 = float(sim.first["STARTED"].split()[1])
        deadline = time.monotonic() + timeout
        ready = polls = 0
        t_ready: Optional[float] = None
        progress: List[List[float]] = []  # [seconds since STARTED, ready], about every 2 s
        next_mark = 0.0
        while time.monotonic() < deadline:
            polls += 1
            ready = server.sessions() if kind == "listener" else server.ready()
            if ready >= n:
                t_ready = time.time() if kind == "listener" else server.ready_time()
                break
            if time.time() - t0 >= next_mark:
                progress.append([round(time.time() - t0, 1), ready])
                next_mark += 2.0
            time.sleep(0.025)
        cpu1, rss1 = b.cpu_seconds(server.pid), b.rss_kib(server.pid)
        sim_cpu = b.process_tree_cpu(sim.pid)
        poll_cpu = probe_cpu = 0.0
        if kind == "listener":
            # The status op walks every record: measure what the polls above cost the listener
            # (at the final size, an upper bound) so it can be read apart from the handshakes.
            c0 = b.cpu_seconds(server.pid)
            for _poll in range(20):
                server.sessions()
            per_poll = (b.cpu_seconds(server.pid) - c0) / 20
            poll_cpu = min(cpu1 - cpu0, per_poll * polls)
            probe_cpu = b.cpu_seconds(server.pid) - c0  # kept out of the settle figure below
        time.sleep(settle)
        cpu2 = b.cpu_seconds(server.pid)
        got = ready if t_ready is None else n
        res: Dict[str, Any] = {
            "server": kind,
            "devices": n,
            "ready": got,
            "complete": t_ready is not None,
            "seconds_to_ready": round(t_ready - t0, 3) if t_ready is not None else None,
            "server_cpu_s": round(cpu1 - cpu0, 3),
            "server_cpu_ms_per_device": round((cpu1 - cpu0) / max(1, got) * 1000, 3),
            "server_cpu_ms_per_device_incl_settle": round((cpu2 - cpu0 - probe_cpu) / max(1, got) * 1000, 3),
            "status_polls": polls if kind == "listener" else 0,
            "status_poll_cpu_s_upper_bound": round(poll_cpu, 3),
            "server_cpu_ms_per_device_excl_polls": round((cpu1 - cpu0 - poll_cpu) / max(1, got) * 1000, 3),
            "server_rss_kib_delta": rss1 - rss0,
            "simulator_cpu_s": round(sim_cpu, 3),
            "simulator_ready_lines": sim.count("READY"),
            "simulator_connected_lines": sim.count("CONNECTED"),
            "simulator_disconnects": sim.count("DISCONNECTED"),
            "progress": progress,
        }
        if kind == "listener":
            st = server.status()
            res["listener_devices"] = st.get("devices")
            res["listener_log"] = server.log_counts()
            res["command"] = " ".join(server.cmd)
        else:
            res["command"] = " ".join(server.lp.cmd)
            res["server_failures"] = server.lp.count("FAILED")
        res["simulator_command"] = " ".join(sim.cmd)
        return res
    finally:
        if sim is not None:
            sim.stop()
        if profile and kind == "listener":
            import os
            import signal

            os.kill(server.pid, signal.SIGTERM)  # the listener itself; py-spy then writes its file
            try:
                server.proc.wait(60)
            except subprocess.TimeoutExpired:
                server.proc.kill()
        server.stop()


def ncclient_baseline(n: int, budget: float) -> Dict[str, Any]:
    """manager.call_home against a fleet of ``n`` devices dialing one port (retrying every 0.2 s)."""
    port = b.free_port()
    sim = b.start_simulator(listener=port, count=n, retry=0.2)
    try:
        lp = b.LineProcess([
            b.PYTHON, str(BENCH / "ncclient_callhome.py"), "--port", str(port), "--count", str(n),
            "--password-file", str(b.password_file()), "--budget", str(budget),
        ])
        lp.proc.wait(budget + 120)
        lp.stop()
        if "RESULT" not in lp.last:
            return {"server": "ncclient", "error": lp.tail()}
        res = json.loads(lp.last["RESULT"])
        res.update(server="ncclient", devices=n)
        return res
    finally:
        sim.stop()


def summarize_profile(path: str, top: int = 25) -> Dict[str, Any]:
    """Collapsed py-spy stacks -> self and inclusive sample shares per function and per package."""
    self_counts: Dict[str, int] = {}
    incl: Dict[str, int] = {}
    pkg: Dict[str, int] = {}
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _sep, count_s = line.rpartition(" ")
        if not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        self_counts[leaf] = self_counts.get(leaf, 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count
        where = "other"
        for f in reversed(frames):
            if "netconf/callhome" in f or "callhome/listener" in f:
                where = "listener code"
                break
            if "asyncssh" in f:
                where = "asyncssh"
                break
            if "sqlite" in f or "registry" in f:
                where = "registry"
                break
        pkg[where] = pkg.get(where, 0) + count

    def share(d: Dict[str, int]) -> List[List[Any]]:
        return [[k, round(v / total * 100, 1)] for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "self_pct": share(self_counts), "inclusive_pct": share(incl),
            "leaf_package_pct": share(pkg)}


def run(ns: List[int], *, timeout: float, settle: float, sim_processes: int, ncclient_n: int,
        ncclient_budget: float, kinds: List[str], profile_n: Optional[int] = None) -> Dict[str, Any]:
    manifest_all = b.ensure_fleet(max(ns + [ncclient_n]))
    out: Dict[str, Any] = {"runs": [], "ratios": {}}
    for n in ns:
        manifest = {k: v for i, (k, v) in enumerate(sorted(manifest_all.items())) if i < n}
        for kind in kinds:
            b.log("storm: %s with %d devices" % (kind, n))
            res = storm_once(kind, n, manifest, timeout=timeout, settle=settle, sim_processes=sim_processes)
            b.log("  -> %s" % json.dumps(res, sort_keys=True))
            out["runs"].append(res)
        by = {r["server"]: r for r in out["runs"] if r["devices"] == n}
        if "listener" in by and "bare-ssh" in by:
            floor = by["bare-ssh"]["server_cpu_ms_per_device"]
            out["ratios"][str(n)] = {
                "listener_cpu_vs_bare_ssh": round(by["listener"]["server_cpu_ms_per_device"] / floor, 2) if floor else None,
                "listener_cpu_vs_bare_netconf": (
                    round(by["listener"]["server_cpu_ms_per_device"] / by["bare-netconf"]["server_cpu_ms_per_device"], 2)
                    if "bare-netconf" in by and by["bare-netconf"]["server_cpu_ms_per_device"] else None
                ),
                "listener_cpu_excl_polls_vs_bare_ssh": (
                    round(by["listener"]["server_cpu_ms_per_device_excl_polls"] / floor, 2) if floor else None
                ),
                "listener_time_vs_bare_ssh": (
                    round(by["listener"]["seconds_to_ready"] / by["bare-ssh"]["seconds_to_ready"], 2)
                    if by["listener"]["seconds_to_ready"] and by["bare-ssh"]["seconds_to_ready"] else None
                ),
            }
    if ncclient_n:
        b.log("storm: ncclient manager.call_home with %d devices dialing one port" % ncclient_n)
        res = ncclient_baseline(ncclient_n, ncclient_budget)
        b.log("  -> %s" % json.dumps(res, sort_keys=True))
        out["ncclient"] = res
    if profile_n:
        prof = str(b.CACHE / ("storm-profile-%d.txt" % profile_n))
        b.log("storm: profiling the listener (py-spy) with %d devices -> %s" % (profile_n, prof))
        manifest = {k: v for i, (k, v) in enumerate(sorted(manifest_all.items())) if i < profile_n}
        res = storm_once("listener", profile_n, manifest, timeout=timeout, settle=settle,
                         sim_processes=sim_processes, profile=prof)
        out["profile_run"] = res
        try:
            out["profile"] = summarize_profile(prof)
        except OSError as exc:
            out["profile"] = {"error": "no profile written (is py-spy installed?): %s" % exc}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[100, 1000, 5000])
    p.add_argument("--servers", nargs="+", default=["bare-ssh", "bare-netconf", "listener"])
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--settle", type=float, default=1.5)
    p.add_argument("--sim-processes", type=int, default=1)
    p.add_argument("--ncclient", type=int, default=5, help="fleet size for the ncclient baseline (0: skip)")
    p.add_argument("--ncclient-budget", type=float, default=70.0)
    p.add_argument("--profile", type=int, default=0, help="also profile the listener at this fleet size")
    p.add_argument("--json", type=Path, help="write results here")
    a = p.parse_args()
    b.raise_nofile()
    res = run(a.devices, timeout=a.timeout, settle=a.settle, sim_processes=a.sim_processes,
              ncclient_n=a.ncclient, ncclient_budget=a.ncclient_budget, kinds=a.servers,
              profile_n=a.profile or None)
    return b.report(res, a.json)


if __name__ == "__main__":
    sys.exit(main())

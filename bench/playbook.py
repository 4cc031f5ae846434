# SPDX-License-Identifier: GPL-3.0-or-later
"""Playbook wall time: ``ansible.netcommon.netconf_get`` on N hosts, call home versus direct.

The same N simulated devices call home to a listener AND serve direct NETCONF over SSH
(``--direct``, device i on BASE+i-1). One inventory, two groups with the same hosts' devices:

* ``callhome``  ansible_connection=netconf.callhome.netconf with a local listener: since issue 9
                not persistent (no ``ansible-connection``); each host's task asks the listener
                (control op ``endpoint``) for a JSON-RPC socket served inside the listener
* ``direct``    ansible_connection=ansible.netcommon.netconf to 127.0.0.1:BASE+i-1, password auth

Both use ansible_network_os=ansible.netcommon.default and the same forks. Runs alternate
(direct, call home, direct, call home, ...); each run gets its own persistent-connection
directory so no run reuses another's ``ansible-connection`` processes. Reported: median wall
time per mode and the ratio call home / direct; a run counts only if every host was ok.

Controller CPU: ``resource.getrusage(RUSAGE_CHILDREN)`` of this process around each
``ansible-playbook`` run. It covers ansible-playbook, its forked workers and the modules they run
(each reaped by its parent). ``ansible-connection`` daemonizes (double fork), so its CPU would
escape that count: this process makes itself a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``)
so that the orphaned ``ansible-connection`` processes become its children, and reaps them after
the run (killing any still alive after ``--reap-timeout`` seconds, which is reported). The
listener's own CPU (``/proc/<pid>/stat`` around the run) is reported separately and added in the
``*_incl_listener`` figures; the simulated devices' CPU is reported but is no controller's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as b  # noqa: E402

PLAY = """\
- name: netconf_get on every host
  hosts: all
  gather_facts: false
  tasks:
    - name: Get the running configuration
      ansible.netcommon.netconf_get:
        source: running
"""
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def plugin_available() -> str:
    """Empty when the call-home connection plugin can be used; otherwise why not."""
    path = b.ROOT / "plugins" / "connection" / "netconf.py"
    if not path.exists():
        return "plugins/connection/netconf.py does not exist yet"
    text = path.read_text()
    if "def _connect" not in text:
        return "plugins/connection/netconf.py has no _connect yet"
    return ""


def write_inventory(path: Path, n: int, base: int, control: str) -> None:
    lines = ["all:", "  children:", "    callhome:", "      vars:",
             "        ansible_connection: netconf.callhome.netconf",
             "        ansible_callhome_listener: unix:%s" % control,
             "        ansible_callhome_timeout: 60",
             "        ansible_callhome_embedded: false",
             "        ansible_network_os: ansible.netcommon.default",
             "      hosts:"]
    for i in range(1, n + 1):
        lines.append("        sim%04d: {}" % i)
    lines += ["    direct:", "      vars:",
              "        ansible_connection: ansible.netcommon.netconf",
              "        ansible_network_os: ansible.netcommon.default",
              "        ansible_user: %s" % b.USER,
              "        ansible_password: %s" % b.PASSWORD,
              "        ansible_host: 127.0.0.1",
              "        ansible_host_key_checking: false",
              "        ansible_netconf_look_for_keys: false",
              "      hosts:"]
    for i in range(1, n + 1):
        lines.append("        direct%04d: {ansible_port: %d}" % (i, base + i - 1))
    path.write_text("\n".join(lines) + "\n")


def set_subreaper() -> bool:
    """Orphaned descendants (daemonized ``ansible-connection``) become this process's children."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER


def own_children() -> List[int]:
    pids: List[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/children" % tid) as handle:
                pids += [int(x) for x in handle.read().split()]
        except OSError:
            pass
    return pids


def reap_orphans(keep: Sequence[int], timeout: float) -> Dict[str, int]:
    """Wait for (then kill) every child of this process not in ``keep``; their CPU joins RUSAGE_CHILDREN."""
    reaped = killed = 0
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in own_children() if p not in keep]
        if not left:
            break
        for pid in left:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if done:
                reaped += 1
        if time.monotonic() > deadline:
            for pid in [p for p in own_children() if p not in keep]:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    killed += 1
            break
        time.sleep(0.05)
    return {"reaped": reaped, "killed": killed}


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_playbook(workdir: Path, group: str, forks: int, n: int, *, listener_pid: Optional[int] = None,
                 sim_pid: Optional[int] = None, keep: Sequence[int] = (), reap_timeout: float = 20.0,
                 play: str = "play.yml", tasks_per_host: int = 1) -> Dict[str, Any]:
    control_dir = Path(tempfile.mkdtemp(prefix="pc-", dir=workdir))
    e = b.env()
    e.update({
        "ANSIBLE_CONFIG": str(b.ROOT / "ansible.cfg"),
        "ANSIBLE_PERSISTENT_CONTROL_PATH_DIR": str(control_dir),
        "ANSIBLE_LOCAL_TEMP": str(workdir / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "PATH": str(Path(b.PYTHON).parent) + os.pathsep + e.get("PATH", ""),
    })
    cmd = [str(Path(b.PYTHON).parent / "ansible-playbook"), "-i", str(workdir / "inventory.yml"),
           "-l", group, "-f", str(forks), str(workdir / play)]
    lcpu0 = b.cpu_seconds(listener_pid) if listener_pid else 0.0
    scpu0 = b.process_tree_cpu(sim_pid) if sim_pid else 0.0
    ccpu0 = children_cpu()
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=str(b.ROOT), env=e, capture_output=True, text=True, timeout=1200,
                          check=False)  # a failed run is reported, not raised
    wall = time.monotonic() - t0
    reap = reap_orphans(keep, reap_timeout)
    ccpu = children_cpu() - ccpu0
    lcpu = (b.cpu_seconds(listener_pid) - lcpu0) if listener_pid else 0.0
    scpu = (b.process_tree_cpu(sim_pid) - scpu0) if sim_pid else 0.0
    recap = RECAP.findall(proc.stdout)
    good = sum(1 for _h, ok, unreach, failed in recap
               if int(ok) >= tasks_per_host and unreach == "0" and failed == "0")
    leftover = sorted(os.listdir(control_dir)) if control_dir.exists() else []
    shutil.rmtree(control_dir, ignore_errors=True)
    res: Dict[str, Any] = {"group": group, "hosts": n, "wall_s": round(wall, 3), "hosts_ok": good,
                           "rc": proc.returncode, "command": " ".join(cmd),
                           "controller_cpu_s": round(ccpu, 3), "listener_cpu_s": round(lcpu, 3),
                           "simulator_cpu_s": round(scpu, 3),
                           "cpu_ms_per_host": round(ccpu / n * 1000, 1),
                           "cpu_ms_per_host_incl_listener": round((ccpu + lcpu) / n * 1000, 1),
                           "orphans": reap, "persistent_sockets_left": len(leftover),
                           "load_average": [round(x, 2) for x in os.getloadavg()]}
    if good != n:
        tail = [ln for ln in proc.stdout.splitlines() if "fatal" in ln or "FAILED" in ln or "UNREACHABLE" in ln]
        res["error"] = (tail[:3] or proc.stdout.splitlines()[-5:]) + proc.stderr.splitlines()[-3:]
    return res


def run(ns: List[int], *, forks: int, repeat: int, reap_timeout: float = 20.0) -> Dict[str, Any]:
    why = plugin_available()
    out: Dict[str, Any] = {"runs": [], "summary": {}, "forks": forks, "subreaper": set_subreaper(),
                           "load_average_start": [round(x, 2) for x in os.getloadavg()],
                           "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    if why:
        out["skipped_callhome"] = why
        b.log("playbook: call-home plugin not usable (%s); measuring direct only" % why)
    manifest_all = b.ensure_fleet(max(ns))
    for n in ns:
        manifest = {k: v for i, (k, v) in enumerate(sorted(manifest_all.items())) if i < n}
        workdir = Path(tempfile.mkdtemp(prefix="bench-play-"))
        (workdir / "tmp").mkdir()
        listener = b.Listener(manifest)
        base = b.free_port_block(n)
        sim = b.start_simulator(listener=listener.port, count=n, direct=base)
        try:
            if not b.wait_until(lambda: listener.sessions() >= n, 120):
                raise RuntimeError("only %d of %d devices called home" % (listener.sessions(), n))
            if not sim.wait_for("LISTENING", n, 60):
                raise RuntimeError("direct endpoints not up: %s" % sim.tail())
            write_inventory(workdir / "inventory.yml", n, base, listener.control_path)
            (workdir / "play.yml").write_text(PLAY)
            groups = ["direct"] + ([] if why else ["callhome"])
            for r in range(repeat):
                for g in groups:
                    b.log("playbook: %s, %d hosts, run %d" % (g, n, r + 1))
                    res = run_playbook(workdir, g, forks, n, listener_pid=listener.pid, sim_pid=sim.pid,
                                       keep=(listener.proc.pid, sim.pid), reap_timeout=reap_timeout)
                    b.log("  -> %s" % json.dumps({k: v for k, v in res.items() if k != "command"}))
                    out["runs"].append(res)
            out["command_example"] = res["command"]
            summ: Dict[str, Any] = {}
            for g in groups:
                good = [r for r in out["runs"] if r["hosts"] == n and r["group"] == g and r["hosts_ok"] == n]
                walls = [r["wall_s"] for r in good]
                summ[g + "_median_s"] = round(statistics.median(walls), 3) if walls else None
                summ[g + "_good_runs"] = len(walls)
                for key in ("cpu_ms_per_host", "cpu_ms_per_host_incl_listener"):
                    vals = [r[key] for r in good]
                    summ[g + "_" + key] = round(statistics.median(vals), 1) if vals else None
            if summ.get("callhome_median_s") and summ.get("direct_median_s"):
                summ["ratio_callhome_vs_direct"] = round(summ["callhome_median_s"] / summ["direct_median_s"], 3)
                # same-repeat pairs, then their median (noise hits each pair alike)
                pairs = []
                for r in range(repeat):
                    d = [x for x in out["runs"] if x["hosts"] == n and x["group"] == "direct"][r]
                    c = [x for x in out["runs"] if x["hosts"] == n and x["group"] == "callhome"][r]
                    if d["hosts_ok"] == n and c["hosts_ok"] == n:
                        pairs.append((c["wall_s"] / d["wall_s"], c["cpu_ms_per_host"] / d["cpu_ms_per_host"],
                                      c["cpu_ms_per_host_incl_listener"] / d["cpu_ms_per_host_incl_listener"]))
                if pairs:
                    summ["paired_wall_ratios"] = [round(p[0], 3) for p in pairs]
                    summ["paired_cpu_ratios"] = [round(p[1], 3) for p in pairs]
                    summ["paired_cpu_ratios_incl_listener"] = [round(p[2], 3) for p in pairs]
                for key in ("cpu_ms_per_host", "cpu_ms_per_host_incl_listener"):
                    if summ.get("callhome_" + key) and summ.get("direct_" + key):
                        summ["cpu_ratio" + key[len("cpu_ms_per_host"):]] = round(
                            summ["callhome_" + key] / summ["direct_" + key], 3)
            out["summary"][str(n)] = summ
        finally:
            sim.stop()
            listener.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, nargs="+", default=[20, 50])
    p.add_argument("--forks", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--reap-timeout", type=float, default=20.0,
                   help="seconds to wait for daemonized ansible-connection processes after a run")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    b.raise_nofile()
    res = run(a.hosts, forks=a.forks, repeat=a.repeat, reap_timeout=a.reap_timeout)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    res["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return b.report(res, a.json)


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: GPL-3.0-or-later
"""Ten forks on one device: tasks per second, one-session device versus a channel per client.

Two simulated devices call home to one listener (each in its own simulator process):

* ``one0001``  ``tests/peers/simulator.py --single-session``: refuses a second concurrent
               ``netconf`` channel, so the listener serves its clients through the multiplexer
               (``sessions/mux.py``, lease mode ``shared``)
* ``sim0001``  the simulator's default: a channel per client (lease mode ``exclusive``/own channel)

One inventory, two groups of ``--hosts`` (default 10) inventory hosts each, every host mapped to
its group's device with ``ansible_callhome_device``; connection ``netconf.callhome.netconf`` with
the local listener (issue 9: each host gets its own endpoint in the listener, no
``ansible-connection``). The play runs ``ansible.netcommon.netconf_get`` ``T`` times per host with
``-f 10``. Two plays are run per group and repeat, alternating groups: ``T = 1`` and ``T =
--tasks``; reported are

* ``tasks_per_s_wall``      hosts x T / wall time of the ``T`` run (includes ansible-playbook's start)
* ``tasks_per_s_marginal``  hosts x (T - 1) / (wall(T) - wall(1)): the steady-state rate, with the
                            playbook's fixed start-up cost and the first hand-off subtracted

and the ratio one-session / channel-per-client of the medians. The listener runs at
``--log-level INFO`` so that the lease modes of the endpoints (``event=endpoint.start ... mode=``)
can be counted per device.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as b  # noqa: E402
import playbook as pb  # noqa: E402


def play_text(tasks: int) -> str:
    """``tasks`` separate netconf_get tasks (not a loop: the recap then counts ok=tasks)."""
    text = "- name: netconf_get, %d per host\n  hosts: all\n  gather_facts: false\n  tasks:\n" % tasks
    for i in range(1, tasks + 1):
        text += ("    - name: Get the running configuration %d\n"
                 "      ansible.netcommon.netconf_get:\n        source: running\n" % i)
    return text


def write_inventory(path: Path, hosts: int, control: str) -> None:
    lines = ["all:", "  vars:",
             "    ansible_connection: netconf.callhome.netconf",
             "    ansible_callhome_listener: unix:%s" % control,
             "    ansible_callhome_timeout: 60",
             "    ansible_callhome_embedded: false",
             "    ansible_network_os: ansible.netcommon.default",
             "  children:"]
    for group, device in (("single", "one0001"), ("multi", "sim0001")):
        lines += ["    %s:" % group, "      vars:", "        ansible_callhome_device: %s" % device, "      hosts:"]
        lines += ["        %s%02d: {}" % (group, i) for i in range(1, hosts + 1)]
    path.write_text("\n".join(lines) + "\n")


def manifest_for(names: List[str]) -> Dict[str, Dict[str, str]]:
    from simulator import ensure_keys, public_line  # tests/peers/simulator.py

    b.KEYS_DIR.mkdir(parents=True, exist_ok=True)
    keys = ensure_keys(b.KEYS_DIR, names)
    return {n: {"public_key": public_line(k), "fingerprint": k.get_fingerprint("sha256")} for n, k in keys.items()}


def endpoint_modes(listener: b.Listener) -> Dict[str, Dict[str, int]]:
    modes: Dict[str, Dict[str, int]] = {}
    pat = re.compile(r"event=endpoint\.start device=(\S+) client=\S+ mode=(\S+)")
    try:
        text = (listener.home / "listener.log").read_text(errors="replace")
    except OSError:
        return modes
    for dev, mode in pat.findall(text):
        modes.setdefault(dev, {})
        modes[dev][mode] = modes[dev].get(mode, 0) + 1
    return modes


def run(hosts: int, tasks: int, forks: int, repeat: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {"runs": [], "hosts": hosts, "tasks": tasks, "forks": forks,
                           "subreaper": pb.set_subreaper(),
                           "load_average_start": [round(x, 2) for x in os.getloadavg()],
                           "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    manifest = manifest_for(["one0001"])
    manifest.update(b.ensure_fleet(1))
    workdir = Path(tempfile.mkdtemp(prefix="bench-forks-"))
    (workdir / "tmp").mkdir()
    listener = b.Listener(manifest, log_level="INFO")
    sim_multi = b.start_simulator(listener=listener.port, count=1)
    sim_single = b.start_simulator(listener=listener.port, count=1, extra=["--single-session", "--name-prefix", "one"])
    out["listener_command"] = " ".join(listener.cmd)
    out["simulator_commands"] = [" ".join(sim_multi.cmd), " ".join(sim_single.cmd)]
    try:
        if not b.wait_until(lambda: listener.sessions() >= 2, 60):
            raise RuntimeError("devices did not call home: %s" % listener.log_tail())
        write_inventory(workdir / "inventory.yml", hosts, listener.control_path)
        (workdir / "play1.yml").write_text(play_text(1))
        (workdir / "playT.yml").write_text(play_text(tasks))
        keep = (listener.proc.pid, sim_multi.pid, sim_single.pid)
        for r in range(repeat):
            for group in ("single", "multi"):
                for play, t in (("play1.yml", 1), ("playT.yml", tasks)):
                    b.log("forks: %s, T=%d, run %d" % (group, t, r + 1))
                    res = pb.run_playbook(workdir, group, forks, hosts, listener_pid=listener.pid, keep=keep,
                                          play=play, tasks_per_host=t)
                    res["tasks_per_host"] = t
                    res["repeat"] = r
                    b.log("  -> %s" % json.dumps({k: res[k] for k in ("wall_s", "hosts_ok", "listener_cpu_s",
                                                                      "controller_cpu_s")}))
                    out["runs"].append(res)
        out["command_example"] = out["runs"][-1]["command"]
        summ: Dict[str, Any] = {}
        for group in ("single", "multi"):
            wall_rates, marg_rates = [], []
            for r in range(repeat):
                one = [x for x in out["runs"] if x["group"] == group and x["repeat"] == r and x["tasks_per_host"] == 1][0]
                big = [x for x in out["runs"] if x["group"] == group and x["repeat"] == r and x["tasks_per_host"] == tasks][0]
                if one["hosts_ok"] != hosts or big["hosts_ok"] != hosts:
                    continue
                wall_rates.append(hosts * tasks / big["wall_s"])
                if big["wall_s"] > one["wall_s"]:
                    marg_rates.append(hosts * (tasks - 1) / (big["wall_s"] - one["wall_s"]))
            summ[group] = {
                "good_repeats": len(wall_rates),
                "tasks_per_s_wall": [round(x, 2) for x in wall_rates],
                "tasks_per_s_marginal": [round(x, 2) for x in marg_rates],
                "median_tasks_per_s_wall": round(statistics.median(wall_rates), 2) if wall_rates else None,
                "median_tasks_per_s_marginal": round(statistics.median(marg_rates), 2) if marg_rates else None,
            }
        for k in ("median_tasks_per_s_wall", "median_tasks_per_s_marginal"):
            if summ["single"].get(k) and summ["multi"].get(k):
                summ["ratio_single_vs_multi_" + k[len("median_"):]] = round(summ["single"][k] / summ["multi"][k], 3)
        out["summary"] = summ
        out["endpoint_modes"] = endpoint_modes(listener)
        out["listener_log_counts"] = {k: v for k, v in listener.log_counts().items() if k != "samples"}
    finally:
        sim_single.stop()
        sim_multi.stop()
        listener.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    out["finished"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    out["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=10, help="inventory hosts per device (default 10)")
    p.add_argument("--tasks", type=int, default=6, help="netconf_get tasks per host in the long play")
    p.add_argument("--forks", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    b.raise_nofile()
    return b.report(run(a.hosts, a.tasks, a.forks, a.repeat), a.json)


if __name__ == "__main__":
    sys.exit(main())

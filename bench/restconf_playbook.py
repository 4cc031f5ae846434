# SPDX-License-Identifier: GPL-3.0-or-later
"""Playbook wall time: ``ansible.netcommon.restconf_get`` on N hosts, RESTCONF call home versus direct.

Issue 11's target: the playbook over call home (``netconf.callhome.httpapi``) at most 0.6x the wall
time of ``ansible.netcommon.httpapi`` direct to the same devices, side by side in one run.

The devices: N nginx instances (``tests/peers/nginx_peer.py``: Debian's nginx, the same
configuration for both paths: TLS with client-certificate verification, HTTP/2, host-meta, YANG
library, data). Each listens on a loopback port, which is what the direct path connects to (the
devices "listen for inbound HTTPS"); each also calls home through socat to the listener's
``--restconf`` port, bridged to that same nginx port. One inventory, two groups with the same N
devices:

* ``callhome``  ansible_connection=netconf.callhome.httpapi, a local listener (control socket
                given, no embedded start): no ``ansible-connection``; each host's task asks the
                listener for the device's RESTCONF endpoint, whose requests go over the held
                HTTP/2 connection
* ``direct``    ansible_connection=ansible.netcommon.httpapi to 127.0.0.1:PORT over HTTPS with the
                listener's client certificate (nginx requires one), ``validate_certs: false`` (the
                device certificates name the devices, not 127.0.0.1; the call-home side pins them)

Both use ansible_network_os=ansible.netcommon.restconf and the same forks. Runs alternate
(direct, call home, ...), each with its own persistent-connection directory; a run counts only if
every host was ok. Controller CPU and the reaping of daemonized ``ansible-connection`` processes
as in ``bench/playbook.py`` (its ``run_playbook``): ``RUSAGE_CHILDREN`` of this process, a child
subreaper; the listener's CPU separately.

    .venv/bin/python bench/restconf_playbook.py --hosts 20 --forks 10 --repeat 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
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

sys.path.insert(0, str(b.ROOT / "tests" / "integration"))
sys.path.insert(0, str(b.PEERS))

PLAY = """\
- name: restconf_get on every host
  hosts: all
  gather_facts: false
  tasks:
    - name: Read the interfaces
      ansible.netcommon.restconf_get:
        path: /data/ietf-interfaces:interfaces
"""


def write_inventory(path: Path, names: List[str], ports: Dict[str, int], control: str, cert: Path, key: Path) -> None:
    common = ["        ansible_network_os: ansible.netcommon.restconf",
              "        ansible_python_interpreter: %s" % b.PYTHON]
    lines = ["all:", "  children:", "    callhome:", "      vars:",
             "        ansible_connection: netconf.callhome.httpapi",
             "        ansible_callhome_listener: unix:%s" % control,
             "        ansible_callhome_timeout: 60",
             "        ansible_callhome_embedded: false"] + common + ["      hosts:"]
    lines += ["        %s: {}" % name for name in names]
    lines += ["    direct:", "      vars:",
              "        ansible_connection: ansible.netcommon.httpapi",
              "        ansible_host: 127.0.0.1",
              "        ansible_httpapi_use_ssl: true",
              "        ansible_httpapi_validate_certs: false",
              "        ansible_httpapi_client_cert: %s" % cert,
              "        ansible_httpapi_client_key: %s" % key] + common + ["      hosts:"]
    lines += ["        direct-%s: {ansible_httpapi_port: %d}" % (name, ports[name]) for name in names]
    path.write_text("\n".join(lines) + "\n")


def run(n: int, *, forks: int, repeat: int, reap_timeout: float) -> Dict[str, Any]:
    from harness import ListenerProcess, enroll
    from nginx_peer import NginxPeer
    from pki import make_device_cert, make_pki

    out: Dict[str, Any] = {"runs": [], "hosts": n, "forks": forks, "subreaper": pb.set_subreaper(),
                           "load_average_start": [round(x, 2) for x in os.getloadavg()],
                           "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    workdir = Path(tempfile.mkdtemp(prefix="bench-restconf-play-"))
    workdir.chmod(0o700)
    (workdir / "tmp").mkdir()
    names = ["rc%02d" % i for i in range(1, n + 1)]
    pki = make_pki(workdir / "pki", device_name=names[0])
    certs = {names[0]: pki.device_cert}
    for i, name in enumerate(names[1:], start=2):
        certs[name] = make_device_cert(workdir / "pki", pki.device_ca, name, "SN-%04d" % i)
    home = workdir / "home"
    home.mkdir()
    for name in names:
        enroll(home, name, tls_fp=certs[name].fingerprint)
    listener = ListenerProcess(home, [
        "--ssh", "127.0.0.1:0", "--tls", "127.0.0.1:0", "--restconf", "127.0.0.1:0",
        "--tls-client-cert", str(pki.listener_cert.cert_path), "--tls-client-key", str(pki.listener_cert.key_path),
        "--handshake-timeout", "20", "--log-level", "WARNING",
    ])
    peers: List[Any] = []
    try:
        listener.start()
        port = int(listener.call("status")["restconf"][0].rsplit(":", 1)[1])
        for name in names:
            peer = NginxPeer(("127.0.0.1", port), server_cert=certs[name].cert_path, server_key=certs[name].key_path,
                             client_ca=pki.listener_ca.cert_path)
            peer.__enter__()
            peers.append(peer)
            peer.start_dialing()
        for name in names:
            listener.call("wait", device=name, wait=60, timeout=70)
        b.log("restconf playbook: %d nginx devices called home (HTTP/2) and listen for direct HTTPS" % n)
        ports = {name: peer.port for name, peer in zip(names, peers)}
        write_inventory(workdir / "inventory.yml", names, ports, str(home / "control.sock"),
                        pki.listener_cert.cert_path, pki.listener_cert.key_path)
        (workdir / "play.yml").write_text(PLAY)
        keep = [listener.proc.pid] if listener.proc else []
        for peer in peers:
            keep += [p.pid for p in (peer._nginx, peer._socat) if p is not None]
        assert listener.proc is not None
        for r in range(repeat):
            for group in ("direct", "callhome"):
                b.log("restconf playbook: %s, %d hosts, run %d" % (group, n, r + 1))
                res = pb.run_playbook(workdir, group, forks, n, listener_pid=listener.proc.pid, keep=keep,
                                      reap_timeout=reap_timeout)
                b.log("  -> %s" % json.dumps({k: v for k, v in res.items() if k != "command"}))
                out["runs"].append(res)
        out["command_example"] = res["command"]
        out["summary"] = summarize(out["runs"], n, repeat)
        out["device_connections"] = {name: listener.call("device", device=name)["connect_count"] for name in names}
    finally:
        for peer in peers:
            peer.__exit__()
        listener.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def summarize(runs: List[Dict[str, Any]], n: int, repeat: int) -> Dict[str, Any]:
    summ: Dict[str, Any] = {}
    for group in ("direct", "callhome"):
        good = [r for r in runs if r["group"] == group and r["hosts_ok"] == n]
        summ[group + "_good_runs"] = len(good)
        walls = [r["wall_s"] for r in good]
        summ[group + "_median_s"] = round(statistics.median(walls), 3) if walls else None
        for key in ("cpu_ms_per_host", "cpu_ms_per_host_incl_listener"):
            vals = [r[key] for r in good]
            summ[group + "_" + key] = round(statistics.median(vals), 1) if vals else None
    if summ["callhome_median_s"] and summ["direct_median_s"]:
        summ["ratio_callhome_vs_direct"] = round(summ["callhome_median_s"] / summ["direct_median_s"], 3)
        pairs = []
        for r in range(repeat):
            d = [x for x in runs if x["group"] == "direct"][r]
            c = [x for x in runs if x["group"] == "callhome"][r]
            if d["hosts_ok"] == n and c["hosts_ok"] == n:
                pairs.append((round(c["wall_s"] / d["wall_s"], 3),
                              round(c["cpu_ms_per_host_incl_listener"] / d["cpu_ms_per_host_incl_listener"], 3)))
        summ["paired_wall_ratios"] = [p[0] for p in pairs]
        summ["paired_cpu_ratios_incl_listener"] = [p[1] for p in pairs]
        summ["target_wall_ratio"] = 0.6
        summ["met"] = summ["ratio_callhome_vs_direct"] <= 0.6
    return summ


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=20)
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

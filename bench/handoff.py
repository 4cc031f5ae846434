# SPDX-License-Identifier: GPL-3.0-or-later
"""Hand-off: lease request to a ready ncclient manager, versus a direct ncclient SSH connect.

One simulated device calls home to the listener and also serves direct NETCONF over SSH
(``--direct``). Per iteration, timed with ``time.perf_counter`` in this process:

* ``lease-adopt``  ControlClient.lease(device) -> socket carrying NETCONF; adopt it in an
                   ncclient ``UnixSocketSession`` (hello exchange included) -> Manager
* ``lease-uds``    control op ``lease`` with ``listen=True`` -> one-shot Unix socket path;
                   ``manager.connect_uds(path)`` (what plain ncclient users would do)
* ``direct``       ``manager.connect`` over SSH (TCP, key exchange, password auth, channel, hello)
* ``endpoint-new``     what the connection plugin does with a local listener (issue 9): control op
                       ``endpoint`` for a client the listener has not seen (a new endpoint: lease,
                       ncclient manager, Unix socket), then a module's first RPC through
                       ``ansible.module_utils.connection.Connection(socket_path).get_capabilities()``
* ``endpoint-reused``  the same for a client whose endpoint exists (a later task of the same host)

The endpoint variants include a JSON-RPC answer (get_capabilities, answered from the manager's
hello), so they measure "plugin's request -> module's first RPC answered". ``--profile`` runs the
listener under py-spy during the endpoint-new iterations only (a separate pass after the timed one).

The session is closed outside the timed region. Variants alternate per iteration so that noise
hits them alike; a few warm-up iterations are discarded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as b  # noqa: E402


def _adopt(sock: Any) -> Any:
    from ncclient import manager
    from ncclient.devices.default import DefaultDeviceHandler
    from ncclient.transport import UnixSocketSession

    handler = DefaultDeviceHandler({"name": "default"})
    session = UnixSocketSession(handler)
    session._socket = sock  # pylint: disable=protected-access
    session._connected = True  # pylint: disable=protected-access
    session._post_connect()  # pylint: disable=protected-access  # hello exchange
    return manager.Manager(session, handler, timeout=30)


COLLECTIONS_PATHS = [str(b.ROOT / ".collections"), str(b.ROOT / ".deps")]


def run(iterations: int, warmup: int = 5, endpoints: bool = True, profile: Optional[Path] = None,
        profile_iterations: int = 100, only: Sequence[str] = (), profile_idle: bool = False,
        listener_src: Optional[str] = None) -> Dict[str, Any]:
    from ncclient import manager

    from netconf_callhome.control.client import ControlClient

    manifest = b.ensure_fleet(1)
    listener = b.Listener(manifest, listener_src=listener_src)
    base = b.free_port_block(1)
    sim = b.start_simulator(listener=listener.port, count=1, direct=base)
    try:
        if not b.wait_until(lambda: listener.sessions() >= 1, 30):
            raise RuntimeError("device did not call home: %s" % listener.log_tail())
        client = ControlClient("unix:" + listener.control_path, timeout=30)

        def lease_adopt() -> Callable[[], None]:
            sock, _info = client.lease("sim0001", wait=5)
            m = _adopt(sock)
            return lambda: (m.close_session(), sock.close())

        def lease_uds() -> Callable[[], None]:
            info = client.call("lease", device="sim0001", wait=5, listen=True)
            m = manager.connect_uds(path=info["path"], device_params={"name": "default"})
            return m.close_session

        def direct() -> Callable[[], None]:
            m = manager.connect(
                host="127.0.0.1", port=base, username=b.USER, password=b.PASSWORD, hostkey_verify=False,
                look_for_keys=False, allow_agent=False, device_params={"name": "default"}, timeout=30,
            )
            return m.close_session

        new_count = [0]

        def endpoint(client_name: str, real_rpc: bool = False) -> Callable[[], None]:
            from ansible.module_utils.connection import Connection

            t0 = time.perf_counter()
            info = client.call(
                "endpoint", device="sim0001", wait=0, network_os="ansible.netcommon.default",
                command_timeout=30, collections_paths=COLLECTIONS_PATHS, client=client_name,
            )
            t1 = time.perf_counter()
            if real_rpc:  # a <get-config> to the device (through ncclient's session thread)
                caps = Connection(info["socket_path"]).get_config(source="running")
                caps = "urn:ietf:params:netconf:base:1.0" if "data" in str(caps) else caps
            else:
                caps = Connection(info["socket_path"]).get_capabilities()
            split.setdefault(client_name.split("/")[0], []).append((t1 - t0, time.perf_counter() - t1))
            if "urn:ietf:params:netconf:base:1.0" not in str(caps):
                raise RuntimeError("unexpected get_capabilities answer: %r" % (caps,)[:200])
            created.append(bool(info.get("created")))
            listener_seconds.setdefault(client_name.split("/")[0], []).append(float(info.get("seconds") or 0.0))
            return lambda: None

        created: List[bool] = []
        split: Dict[str, List[Any]] = {}
        listener_seconds: Dict[str, List[float]] = {}

        def endpoint_new() -> Callable[[], None]:
            new_count[0] += 1
            return endpoint("bench-new/%d" % new_count[0])

        def endpoint_reused() -> Callable[[], None]:
            return endpoint("bench-reused/1")

        def endpoint_reused_get() -> Callable[[], None]:
            return endpoint("bench-get/1", real_rpc=True)

        variants: Dict[str, Callable[[], Callable[[], None]]] = {
            "lease-adopt": lease_adopt, "lease-uds": lease_uds, "direct": direct}
        if endpoints:
            variants["endpoint-new"] = endpoint_new
            variants["endpoint-reused"] = endpoint_reused
        if only:
            variants["endpoint-reused-get"] = endpoint_reused_get  # only on request
            variants = {k: v for k, v in variants.items() if k in only}
        times: Dict[str, List[float]] = {k: [] for k in variants}
        cpu: Dict[str, float] = {k: 0.0 for k in variants}
        cpu0 = b.cpu_seconds(listener.pid)
        for i in range(warmup + iterations):
            for name, fn in variants.items():
                c0 = b.cpu_seconds(listener.pid)
                t0 = time.perf_counter()
                closer = fn()
                dt = time.perf_counter() - t0
                closer()
                if i >= warmup:
                    times[name].append(dt)
                    cpu[name] += b.cpu_seconds(listener.pid) - c0  # includes the close (10 ms ticks)
        listener_cpu = b.cpu_seconds(listener.pid) - cpu0
        res: Dict[str, Any] = {k: b.summary_ms(v) for k, v in times.items()}
        res["iterations"] = iterations
        res["load_average"] = os.getloadavg()
        res["listener_cpu_ms_per_call"] = {k: round(v / iterations * 1000, 2) for k, v in cpu.items()}
        res["listener_cpu_s_total"] = round(listener_cpu, 2)
        if "lease-adopt" in res and "direct" in res:
            res["ratio_median_lease_adopt_vs_direct"] = round(
                res["lease-adopt"]["median_ms"] / res["direct"]["median_ms"], 3)
        if endpoints:
            # endpoint-new calls per iteration: created must be True; endpoint-reused: False after the first
            res["endpoint_created_flags"] = {"true": created.count(True), "false": created.count(False)}
            # per path: the control op 'endpoint' alone, then the first JSON-RPC call alone (medians)
            res["endpoint_split_ms"] = {
                k: {"endpoint_op_median_ms": round(statistics.median(x[0] for x in v[warmup:]) * 1000, 2),
                    "first_rpc_median_ms": round(statistics.median(x[1] for x in v[warmup:]) * 1000, 2)}
                for k, v in split.items()}
            # the listener's own timing of AnsibleEndpoints.open (the 'seconds' field of the answer)
            res["endpoint_open_in_listener_median_ms"] = {
                k: round(statistics.median(v[warmup:]) * 1000, 2) for k, v in listener_seconds.items()}
        if endpoints and profile is not None:
            res["profile"] = _profile(listener.pid, profile, profile_iterations, endpoint_new, profile_idle)
        return res
    finally:
        sim.stop()
        listener.stop()


def _profile(pid: int, out: Path, n: int, fn: Callable[[], Callable[[], None]], idle: bool = False) -> Dict[str, Any]:
    """py-spy (raw, all threads, idle samples dropped) on the listener during ``n`` endpoint-new calls."""
    import subprocess

    pyspy = str(Path(b.PYTHON).parent / "py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [pyspy, "record", "--pid", str(pid), "--rate", "1000", "--format", "raw", "--threads",
           "--output", str(out), "--nonblocking"] + (["--idle"] if idle else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    times = []
    import cProfile
    import pstats
    prof = cProfile.Profile()
    for _i in range(n):
        t0 = time.perf_counter()
        prof.enable()
        fn()
        prof.disable()
        times.append(time.perf_counter() - t0)
    time.sleep(0.5)
    proc.send_signal(2)  # SIGINT: py-spy writes its output
    try:
        _o, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _o, err = proc.communicate()
    stats_path = out.with_suffix(".client.txt")
    with open(stats_path, "w") as handle:
        pstats.Stats(prof, stream=handle).sort_stats("cumulative").print_stats(40)
    return {"command": " ".join(cmd), "iterations": n, "timed_under_profile": b.summary_ms(times),
            "raw": str(out), "client_cprofile": str(stats_path), "py_spy_stderr": err[-500:]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--repeat", type=int, default=1,
                   help="independent runs (fresh listener and device each); medians of medians reported")
    p.add_argument("--no-endpoints", action="store_true", help="only the lease and direct paths")
    p.add_argument("--profile", type=Path, help="py-spy raw output for the endpoint-new path (listener side)")
    p.add_argument("--profile-iterations", type=int, default=100)
    p.add_argument("--profile-idle", action="store_true", help="py-spy --idle: wall time, waits included")
    p.add_argument("--variants", nargs="+", default=[],
                   help="only these (lease-adopt lease-uds direct endpoint-new endpoint-reused; "
                        "endpoint-reused-get: a real <get-config> as the first RPC)")
    p.add_argument("--compare-src", metavar="DIR",
                   help="A/B: also run a listener whose netconf_callhome comes from DIR (e.g. "
                        "'git worktree add /tmp/old HEAD~1' then /tmp/old/listener/src); the two "
                        "alternate run by run, and their medians are reported side by side")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    if a.compare_src:
        return b.report(_compare(a), a.json)
    runs = []
    for r in range(a.repeat):
        b.log("handoff: run %d of %d" % (r + 1, a.repeat))
        runs.append(run(a.iterations, endpoints=not a.no_endpoints,
                        profile=a.profile if r == a.repeat - 1 else None,
                        profile_iterations=a.profile_iterations, only=a.variants,
                        profile_idle=a.profile_idle))
    if a.repeat == 1:
        res = runs[0]
    else:
        import statistics
        res = {"runs": runs, "load_average_start": os.getloadavg(), "median_of_medians_ms": {
            k: round(statistics.median(r[k]["median_ms"] for r in runs), 2)
            for k in runs[0] if isinstance(runs[0][k], dict) and "median_ms" in runs[0][k]}}
    return b.report(res, a.json)


def _compare(a: argparse.Namespace) -> Dict[str, Any]:
    """This tree's listener and the one from ``--compare-src``, alternating run by run."""
    import statistics

    sides: Dict[str, List[Dict[str, Any]]] = {"this": [], "compare": []}
    for r in range(a.repeat):
        for side, src in (("this", None), ("compare", a.compare_src)) if r % 2 == 0 else (
                ("compare", a.compare_src), ("this", None)):
            b.log("handoff: run %d of %d, %s" % (r + 1, a.repeat, side))
            sides[side].append(run(a.iterations, endpoints=not a.no_endpoints, only=a.variants, listener_src=src))
    res: Dict[str, Any] = {"compare_src": a.compare_src, "runs": sides, "load_average_end": os.getloadavg()}
    medians: Dict[str, Dict[str, float]] = {}
    for side, runs in sides.items():
        medians[side] = {k: round(statistics.median(r[k]["median_ms"] for r in runs), 2)
                         for k in runs[0] if isinstance(runs[0][k], dict) and "median_ms" in runs[0][k]}
    res["median_of_medians_ms"] = medians
    res["ratio_this_vs_compare"] = {k: round(medians["this"][k] / medians["compare"][k], 3)
                                    for k in medians["this"] if medians["compare"].get(k)}
    return res


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: GPL-3.0-or-later
"""Hand-off: lease request to a ready ncclient manager, versus a direct ncclient SSH connect.

One simulated device calls home to the listener and also serves direct NETCONF over SSH
(``--direct``). Per iteration, timed with ``time.perf_counter`` in this process:

* ``lease-adopt``  ControlClient.lease(device) -> socket carrying NETCONF; adopt it in an
                   ncclient ``UnixSocketSession`` (hello exchange included) -> Manager
* ``lease-uds``    control op ``lease`` with ``listen=True`` -> one-shot Unix socket path;
                   ``manager.connect_uds(path)`` (what plain ncclient users would do)
* ``direct``       ``manager.connect`` over SSH (TCP, key exchange, password auth, channel, hello)

The session is closed outside the timed region. Variants alternate per iteration so that noise
hits them alike; a few warm-up iterations are discarded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

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


def run(iterations: int, warmup: int = 5) -> Dict[str, Any]:
    from ncclient import manager

    from netconf_callhome.control.client import ControlClient

    manifest = b.ensure_fleet(1)
    listener = b.Listener(manifest)
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

        variants = {"lease-adopt": lease_adopt, "lease-uds": lease_uds, "direct": direct}
        times: Dict[str, List[float]] = {k: [] for k in variants}
        cpu0 = b.cpu_seconds(listener.pid)
        for i in range(warmup + iterations):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                closer = fn()
                dt = time.perf_counter() - t0
                closer()
                if i >= warmup:
                    times[name].append(dt)
        listener_cpu = b.cpu_seconds(listener.pid) - cpu0
        res: Dict[str, Any] = {k: b.summary_ms(v) for k, v in times.items()}
        res["iterations"] = iterations
        res["listener_cpu_ms_per_lease"] = round(listener_cpu / (2 * (warmup + iterations)) * 1000, 2)
        res["ratio_median_lease_adopt_vs_direct"] = round(
            res["lease-adopt"]["median_ms"] / res["direct"]["median_ms"], 3)
        return res
    finally:
        sim.stop()
        listener.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    res = run(a.iterations)
    return b.report(res, a.json)


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: GPL-3.0-or-later
"""Baseline: what ncclient's ``manager.call_home`` can do with a fleet dialing one port.

Why a separate process: its CPU (paramiko, ncclient threads) is read from its own rusage, apart
from the simulated devices. ``call_home`` binds the port, accepts ONE connection and returns a
manager; the listening socket is neither SO_REUSEADDR nor kept. Two questions, answered on stdout
as one ``RESULT {json}`` line:

1. hold: with one session held, can a second ``call_home`` on the same port take the next device?
2. sequential: call_home, NETCONF hello, close, repeat: devices per second and CPU per device, and
   how many binds failed (the port is busy while the previous connection lingers).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any, Dict, List

from ncclient import manager


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--username", default="netconf")
    p.add_argument("--password-file", required=True)
    p.add_argument("--budget", type=float, default=60.0, help="seconds for the sequential part")
    args = p.parse_args()
    password = open(args.password_file, encoding="utf-8").read().rstrip("\r\n")
    kw: Dict[str, Any] = dict(
        host="127.0.0.1", port=args.port, username=args.username, password=password, hostkey_verify=False,
        look_for_keys=False, allow_agent=False, device_params={"name": "default"}, timeout=10,
    )
    result: Dict[str, Any] = {}

    # 1. hold one session, try to take the next device on the same port.
    t0, c0 = time.monotonic(), _cpu()
    first = manager.call_home(**kw)
    result["first_session_s"] = round(time.monotonic() - t0, 4)
    result["first_session_cpu_ms"] = round((_cpu() - c0) * 1000, 1)
    try:
        second = manager.call_home(**dict(kw, timeout=5))
        result["hold_second"] = "accepted a second device while holding the first"
        second.close_session()
    except Exception as exc:  # noqa: BLE001 - the point is to report what happens
        result["hold_second"] = "%s: %s" % (type(exc).__name__, exc)
    first.close_session()

    # 2. sequential: one device per call.
    times: List[float] = []
    bind_failures: List[str] = []
    first_bind_failure_after = None
    cpu0 = _cpu()
    start = time.monotonic()
    while len(times) < args.count and time.monotonic() - start < args.budget:
        t = time.monotonic()
        try:
            m = manager.call_home(**kw)
        except OSError as exc:
            if first_bind_failure_after is None:
                first_bind_failure_after = len(times)
            bind_failures.append("%s" % exc)
            time.sleep(0.25)
            continue
        times.append(time.monotonic() - t)
        m.close_session()
    wall = time.monotonic() - start
    cpu = _cpu() - cpu0
    result.update({
        "sequential_sessions": len(times),
        "sequential_wall_s": round(wall, 3),
        "sessions_per_s": round(len(times) / wall, 2) if wall else None,
        "cpu_ms_per_session": round(cpu / len(times) * 1000, 2) if times else None,
        "median_call_home_ms": round(sorted(times)[len(times) // 2] * 1000, 1) if times else None,
        "bind_failures": len(bind_failures),
        "bind_failure_example": bind_failures[0] if bind_failures else "",
        "first_bind_failure_after_sessions": first_bind_failure_after,
    })
    sys.stdout.write("RESULT " + json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

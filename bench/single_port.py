# SPDX-License-Identifier: GPL-3.0-or-later
"""The single call-home port (issue 11, item 3) against the dedicated ports, side by side.

One listener process serves the IANA-style dedicated ports (SSH, outbound-ssh, TLS, RESTCONF)
and one ``callhome_binds`` port. For each transport, N devices call the dedicated port, then N
call the single port (``--rounds`` alternates them again), one phase after the other (2 cores:
never concurrently). Per phase: seconds from the first dial until the listener counts N more
successful handshakes of that transport (its metrics), the mean of its ``handshake_seconds``
(accept to ready, per device: for TLS and RESTCONF it includes the detection's silence), and
the listener's CPU ms per device (``/proc``). Ratios single/dedicated per transport.

Devices: ``tests/peers/simulator.py`` for SSH, outbound-ssh (``--outbound-ssh-preamble``) and
NETCONF over TLS (``--tls-cert``); the HTTP/2 RESTCONF device of ``bench/restconf_storm.py``
(h2 over TLS with ALPN, static host-meta and YANG library) for RESTCONF. The TLS and RESTCONF
devices share one certificate each, so each call replaces the previous one's session (the same
work on both ports; the simulator does not redial).

    .venv/bin/python bench/single_port.py --devices 200 --json .cache/bench/single_port.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import trustme
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "peers"))

from benchlib import (  # noqa: E402
    Listener,
    cpu_seconds,
    ensure_fleet,
    free_port,
    log,
    raise_nofile,
    start_simulator,
    write_json,
)
from restconf_storm import dial as restconf_dial  # noqa: E402  the h2 RESTCONF device

TRANSPORTS = ("ssh", "outbound-ssh", "tls", "restconf")
# The registry/metrics transport of each (outbound-ssh sessions are SSH sessions).
LABEL = {"ssh": "ssh", "outbound-ssh": "ssh", "tls": "tls", "restconf": "restconf"}
STATUS_KEY = {"ssh": "ssh", "outbound-ssh": "outbound_ssh", "tls": "tls", "restconf": "restconf"}


class Metrics:
    """The listener's Prometheus text, read per phase."""

    def __init__(self, port: int) -> None:
        self.url = "http://127.0.0.1:%d/metrics" % port

    def read(self) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        body = urllib.request.urlopen(self.url, timeout=10).read().decode()
        out: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    @staticmethod
    def get(values: Dict[Any, float], name: str, **labels: str) -> float:
        return values.get((name, tuple(sorted(labels.items()))), 0.0)


class Pki:
    def __init__(self, tmp: Path) -> None:
        ca = trustme.CA()
        self.ca_path = tmp / "ca.crt"
        ca.cert_pem.write_to_path(str(self.ca_path))
        listener = ca.issue_cert("listener.example.net")
        self.listener_cert, self.listener_key = tmp / "l.crt", tmp / "l.key"
        listener.cert_chain_pems[0].write_to_path(str(self.listener_cert))
        listener.private_key_pem.write_to_path(str(self.listener_key))
        self.tls_device = ca.issue_cert("tls-dev.example.net")
        self.tls_cert, self.tls_key = tmp / "tls-dev.crt", tmp / "tls-dev.key"
        self.tls_device.cert_chain_pems[0].write_to_path(str(self.tls_cert))
        self.tls_device.private_key_pem.write_to_path(str(self.tls_key))
        self.rc_device = ca.issue_cert("rc-dev.example.net")

    def rc_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.rc_device.configure_cert(ctx)
        ctx.set_alpn_protocols(["h2"])
        return ctx

    @staticmethod
    def fingerprint(cert: trustme.LeafCert) -> str:
        from netconf_callhome.fingerprints import cert_fingerprint_of_der

        return cert_fingerprint_of_der(ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode()))


class RestconfDevices:
    """h2 RESTCONF devices (restconf_storm's) on an event loop thread of this process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.held: List[Any] = []

    def dial(self, port: int, count: int, ctx: ssl.SSLContext) -> None:
        asyncio.run_coroutine_threadsafe(restconf_dial(port, count, ctx, "h2", self.held), self.loop).result(120)

    def hang_up(self) -> None:
        async def abort() -> None:
            for transport in self.held:
                transport.abort()
            self.held.clear()

        asyncio.run_coroutine_threadsafe(abort(), self.loop).result(30)

    def close(self) -> None:
        self.hang_up()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def phase(
    lst: Listener, metrics: Metrics, pki: Pki, rc: RestconfDevices, transport: str, port: int, n: int, where: str,
    pace: float = 0.0,
) -> Dict[str, Any]:
    """N devices of one transport call ``port``: all at once (``pace`` 0, a storm: the figures
    include queueing), or one every ``pace`` s (each device alone: its time to ready is the
    transport's plus the detection's)."""
    label = LABEL[transport]
    before = metrics.read()
    ok0 = Metrics.get(before, "callhome_handshakes_total", transport=label, result="ok")
    sum0 = Metrics.get(before, "callhome_handshake_seconds_sum", transport=label)
    cnt0 = Metrics.get(before, "callhome_handshake_seconds_count", transport=label)
    cpu0 = cpu_seconds(lst.pid)
    started = time.monotonic()
    sim = None
    if transport == "restconf":
        for _i in range(n if pace else 1):
            rc.dial(port, 1 if pace else n, pki.rc_context())
            time.sleep(pace)
    else:
        extra: List[str] = []
        if transport == "outbound-ssh":
            extra = ["--outbound-ssh-preamble"]
        elif transport == "tls":
            extra = ["--tls-cert", str(pki.tls_cert), "--tls-key", str(pki.tls_key), "--no-reconnect"]
        if pace:
            extra += ["--stagger", str(pace)]
        sim = start_simulator(listener=port, count=n, retry=0.5, extra=extra)
    values = before
    deadline = time.monotonic() + 180
    while Metrics.get(values, "callhome_handshakes_total", transport=label, result="ok") - ok0 < n:
        if time.monotonic() > deadline:
            raise RuntimeError("%s via %s: only %d of %d ready; listener: %s" % (
                transport, where, Metrics.get(values, "callhome_handshakes_total", transport=label, result="ok") - ok0,
                n, lst.log_tail()))
        time.sleep(0.05)
        values = metrics.read()
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(lst.pid) - cpu0
    hs_mean = (Metrics.get(values, "callhome_handshake_seconds_sum", transport=label) - sum0) / max(
        1.0, Metrics.get(values, "callhome_handshake_seconds_count", transport=label) - cnt0
    )
    failures = {
        "%s/%s" % (dict(labels)["transport"], dict(labels)["reason"]): int(v - before.get((name, labels), 0.0))
        for (name, labels), v in values.items()
        if name == "callhome_failures_total" and v > before.get((name, labels), 0.0)
    }
    if sim is not None:
        sim.stop()
    rc.hang_up()
    deadline = time.monotonic() + 60
    while lst.sessions() and time.monotonic() < deadline:  # the next phase starts from nothing held
        time.sleep(0.1)
    result = {
        "transport": transport,
        "port": where,
        "mode": "paced %g s" % pace if pace else "storm",
        "devices": n,
        "seconds_to_ready": round(elapsed, 3),
        "handshake_ms_mean": round(hs_mean * 1000, 1),
        "cpu_ms_per_device": round(cpu * 1000 / n, 3),
        "failures": failures,  # transport/reason -> count, from the listener's metrics
    }
    log("single_port %s" % json.dumps(result))
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1, help="dedicated/single alternations per transport")
    parser.add_argument("--transports", nargs="+", default=list(TRANSPORTS), choices=TRANSPORTS)
    parser.add_argument("--silence", type=float, default=1.0, help="callhome_silence (the default is 1.0 s)")
    parser.add_argument("--paced", type=int, default=20, help="devices called one at a time per phase (0: none)")
    parser.add_argument("--pace", type=float, default=0.3, help="seconds between paced devices")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    raise_nofile()
    load = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: read figures with it
    manifest = ensure_fleet(args.devices)
    with tempfile.TemporaryDirectory(prefix="bench-single-port-") as tmpdir:
        tmp = Path(tmpdir)
        pki = Pki(tmp)
        config = tmp / "listener.yml"
        config.write_text(yaml.safe_dump({"callhome_binds": ["127.0.0.1:0"], "callhome_silence": args.silence}))
        metrics_port = free_port()
        lst = Listener(manifest, extra=[
            "--config", str(config),
            "--outbound-ssh", "127.0.0.1:0", "--tls", "127.0.0.1:0", "--restconf", "127.0.0.1:0",
            "--tls-client-cert", str(pki.listener_cert), "--tls-client-key", str(pki.listener_key),
            "--metrics", "127.0.0.1:%d" % metrics_port, "--handshake-timeout", "60",
        ])
        rc = RestconfDevices()
        results: List[Dict[str, Any]] = []
        try:
            from netconf_callhome.policy.trust_store import TrustStore, add_identity

            def enroll(data: Dict[str, Any]) -> None:
                add_identity(data, "tls-dev", kind="tls_fingerprints", value=Pki.fingerprint(pki.tls_device))
                add_identity(data, "rc-dev", kind="tls_fingerprints", value=Pki.fingerprint(pki.rc_device))

            TrustStore(str(lst.home / "trust.json")).update(enroll)
            lst.client.call("reload", timeout=30)
            status = lst.status()
            single = int(status["callhome"][0].rsplit(":", 1)[1])
            metrics = Metrics(metrics_port)
            for transport in args.transports:
                dedicated = lst.port if transport == "ssh" else int(status[STATUS_KEY[transport]][0].rsplit(":", 1)[1])
                for _round in range(args.rounds):
                    results.append(phase(lst, metrics, pki, rc, transport, dedicated, args.devices, "dedicated"))
                    results.append(phase(lst, metrics, pki, rc, transport, single, args.devices, "single"))
                if args.paced:
                    for where, where_port in (("dedicated", dedicated), ("single", single)):
                        results.append(phase(lst, metrics, pki, rc, transport, where_port, args.paced, where, args.pace))
            command = lst.cmd
        finally:
            rc.close()
            lst.stop()
    summary = []
    for transport, mode in [(t, m) for t in args.transports for m in sorted({r["mode"] for r in results})]:
        rows = {
            where: [r for r in results if r["transport"] == transport and r["port"] == where and r["mode"] == mode]
            for where in ("dedicated", "single")
        }
        med = {
            where: {key: statistics.median(r[key] for r in rs) for key in ("seconds_to_ready", "handshake_ms_mean", "cpu_ms_per_device")}
            for where, rs in rows.items()
        }
        summary.append({
            "transport": transport,
            "mode": mode,
            "dedicated": med["dedicated"],
            "single": med["single"],
            "cpu_ratio": round(med["single"]["cpu_ms_per_device"] / max(med["dedicated"]["cpu_ms_per_device"], 1e-9), 2),
            "ready_ratio": round(med["single"]["seconds_to_ready"] / max(med["dedicated"]["seconds_to_ready"], 1e-9), 2),
            "handshake_ms_added": round(med["single"]["handshake_ms_mean"] - med["dedicated"]["handshake_ms_mean"], 1),
        })
    out = {"single_port": {
        "devices": args.devices, "silence": args.silence, "load_at_start": load, "command": command,
        "phases": results, "summary": summary,
    }}
    print(json.dumps(out, indent=1))
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

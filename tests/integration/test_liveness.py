# SPDX-License-Identifier: GPL-3.0-or-later
"""Issue 10, defect 10: a hung TLS device must not stay ``connected``.

Before: a SIGSTOPped TLS device stayed ``connected`` (TLS has no keepalive; TCP keepalives are
answered by the device's kernel), and the next task waited 30 s and failed. Now a held TLS
session the device has been silent on for ``liveness_interval`` s gets a ``<get-config>`` of
nothing through the multiplexer; with no answer within ``liveness_timeout`` s the device is
declared dead: ``event=device.unresponsive``, session closed, registry ``disconnected``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from harness import enroll, ncclient_over_lease, running, wait_until

INTERVAL = 1.0
TIMEOUT = 1.0


def _tls_listener(listener_factory, tmp_path: Path):
    import pki  # tests/peers

    creds = pki.make_pki(tmp_path / "pki", device_name="sim0001")
    config = tmp_path / "liveness.yml"
    config.write_text("liveness_interval: %g\nliveness_timeout: %g\n" % (INTERVAL, TIMEOUT))
    lst = listener_factory(
        "--config", str(config), "--tls", "127.0.0.1:0",
        "--tls-client-cert", str(creds.listener_cert.cert_path),
        "--tls-client-key", str(creds.listener_cert.key_path),
    )
    enroll(lst.home, "sim0001", tls_fp=creds.device_self_signed.fingerprint)
    return lst.start(), creds


def test_a_sigstopped_tls_device_is_declared_dead_within_the_bound(listener_factory, fleet, tmp_path):
    lst, creds = _tls_listener(listener_factory, tmp_path)
    tls = ["--tls-cert", str(creds.device_self_signed.cert_path), "--tls-key", str(creds.device_self_signed.key_path),
           "--tls-ca", str(creds.listener_ca.cert_path)]
    with running(fleet.simulator(lst.tls_port, 1, *tls, "--retry", "30")) as sim:
        rec = lst.wait_device("sim0001", "connected", timeout=20)
        assert rec["transport"] == "tls"
        # Several intervals of an idle but healthy device: probed and answered, never dropped;
        # a client lease on the same session works meanwhile (the probes' ids never collide).
        mgr, _info = ncclient_over_lease(lst.control, "sim0001")
        try:
            wait_until(lambda: sim.count("READY") >= 1, 10, "the device's session")
            deadline = time.monotonic() + 4 * (INTERVAL + TIMEOUT)
            while time.monotonic() < deadline:
                assert mgr.get_config(source="running").ok
                time.sleep(INTERVAL)
        finally:
            mgr.close_session()
        time.sleep(3 * (INTERVAL + TIMEOUT))  # idle now: only the probes keep it
        assert lst.call("device", device="sim0001")["status"] == "connected"
        assert "event=device.unresponsive" not in lst.log()

        os.kill(sim.proc.pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            rec = lst.wait_device("sim0001", "disconnected", timeout=INTERVAL + TIMEOUT + 5)
            took = time.monotonic() - stopped
        finally:
            os.kill(sim.proc.pid, signal.SIGCONT)
    assert took <= INTERVAL + TIMEOUT + 2, took
    assert "liveness check" in rec["last_error"]
    assert "event=device.unresponsive device=sim0001" in lst.log()


def test_liveness_zero_turns_the_check_off(listener_factory, fleet, tmp_path):
    import pki  # tests/peers

    creds = pki.make_pki(tmp_path / "pki", device_name="sim0001")
    config = tmp_path / "liveness.yml"
    config.write_text("liveness_interval: 0\n")
    lst = listener_factory(
        "--config", str(config), "--tls", "127.0.0.1:0",
        "--tls-client-cert", str(creds.listener_cert.cert_path),
        "--tls-client-key", str(creds.listener_cert.key_path),
    )
    enroll(lst.home, "sim0001", tls_fp=creds.device_self_signed.fingerprint)
    lst.start()
    tls = ["--tls-cert", str(creds.device_self_signed.cert_path), "--tls-key", str(creds.device_self_signed.key_path)]
    with running(fleet.simulator(lst.tls_port, 1, *tls, "--retry", "30")) as sim:
        lst.wait_device("sim0001", "connected", timeout=20)
        os.kill(sim.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(3.0)
            assert lst.call("device", device="sim0001")["status"] == "connected"
        finally:
            os.kill(sim.proc.pid, signal.SIGCONT)

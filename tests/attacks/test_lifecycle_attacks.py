# SPDX-License-Identifier: GPL-3.0-or-later
"""Attacks on liveness and ownership (issue 10, defects 10-12): a hung TLS device, a second
``serve`` on a home in use, a garbage flood from the address enrolled devices call from."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from attacklib import AttackListener, CanaryLoop, known_options, ssh_identity, tls_options, verdict
from harness import LISTENER_CMD, child_env, free_port, wait_until
from netconf_callhome.config import ListenerConfig
from netconf_callhome.errors import CallHomeError

# The TLS liveness check, small for the test: a session idle this long gets a cheap request, and a
# device that does not answer within the timeout is declared dead.
LIVENESS: Dict[str, float] = {"liveness_interval": 2.0, "liveness_timeout": 2.0}
LIVENESS_BOUND = 15.0  # interval + timeout + scheduling slack on a loaded machine


def test_hung_tls_device_declared_dead(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
    device_process: Callable[..., Any],
    tls_pki: Any,
) -> None:
    """Defect 10: a TLS device stops (SIGSTOP: its kernel still ACKs, so TCP keepalives see
    nothing). The listener declares it dead within the liveness bound, and the next lease of it
    fails at once instead of waiting 30 s."""
    lp = attack_listener(**tls_options(tls_pki), **known_options(ListenerConfig, **LIVENESS))
    lp.call("enroll", device="tlsdev1", kind="tls_fingerprints", value=tls_pki.device_cert.fingerprint)
    lp.allow("tlsdev1", tls_pki.device_cert.fingerprint)
    dev = device_process("tls", "--listener", "127.0.0.1:%d" % lp.tls_port, "--name", "tlsdev1",
                         "--cert", str(tls_pki.device_cert.cert_path), "--key", str(tls_pki.device_cert.key_path))
    lp.wait_device("tlsdev1", "connected", timeout=30)
    loop = canaries(lp)
    loop.lease_once("tlsdev1")  # a working device first
    os.kill(dev.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        def dead() -> Dict[str, Any]:
            rec = lp.record("tlsdev1")
            return rec if rec["status"] != "connected" else {}

        record = wait_until(dead, LIVENESS_BOUND + 30, "the hung TLS device to be declared dead")
        took = time.monotonic() - stopped
        started = time.monotonic()
        with pytest.raises(CallHomeError):
            loop.lease_once("tlsdev1")
        refused_in = time.monotonic() - started
    finally:
        os.kill(dev.pid, signal.SIGCONT)
    print("hung TLS device: declared %s after %.1f s (%s); next lease refused in %.1f s"
          % (record["status"], took, record.get("last_error"), refused_in))
    assert took <= LIVENESS_BOUND, "declared dead only after %.1f s" % took
    assert refused_in <= 5.0, "a lease of the dead device took %.1f s to fail" % refused_in
    verdict(lp, loop)


def _second_serve(home: Path, config: Path) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        LISTENER_CMD + ["serve", "--home", str(home), "--config", str(config)],
        capture_output=True, text=True, timeout=30, env=child_env(), check=False,
    )


@pytest.mark.parametrize("holder,ports", [("service", "same"), ("service", "other"), ("embedded", "same")])
def test_second_serve_on_same_home_names_holder(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
    tmp_path: Path,
    holder: str,
    ports: str,
) -> None:
    """Defect 11: a second ``serve`` on a home where a listener runs (a service, or an embedded
    one: idle_exit set, as the connection plugin starts it; with its ports, or with others) fails
    with an error naming the holder's pid, and takes nothing from it: the control socket, the
    ports and the devices stay with the first one."""
    ssh_port = free_port()
    embedded = {"idle_exit": 600} if holder == "embedded" else {}
    lp = attack_listener(ssh_binds=["127.0.0.1:%d" % ssh_port], **embedded)
    loop = canaries(lp)
    config = lp.config_path
    if ports == "other":
        options = dict(lp.options, ssh_binds=["127.0.0.1:0"])
        config = tmp_path / "second.yml"
        config.write_text(json.dumps(options))
    try:
        second = _second_serve(lp.home, config)
    except subprocess.TimeoutExpired:
        pytest.fail("a second serve on the home of pid %d is still running after 30 s" % lp.pid)
    output = second.stdout + second.stderr
    print("second serve (%s ports): rc=%d %s" % (ports, second.returncode, output.strip()[-400:]))
    assert second.returncode != 0, output
    assert str(lp.pid) in output, "the error does not name the holder (pid %d): %s" % (lp.pid, output)
    assert "Traceback" not in output, output
    status = lp.call("status")  # the control socket still leads to the first listener
    assert status["pid"] == lp.pid
    assert status["ssh"] == ["127.0.0.1:%d" % ssh_port]
    with socket.create_connection(("127.0.0.1", ssh_port), timeout=10) as sock:
        sock.settimeout(10)
        assert sock.recv(64).startswith(b"SSH-"), "the first listener lost its SSH port"
    loop.wait_more(len(loop.devices))
    verdict(lp, loop)


def test_garbage_flood_does_not_lock_out_enrolled_device(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
    tmp_path: Path,
) -> None:
    """Defect 12: garbage from 127.0.0.1 pushes the address over the failure limit; an enrolled
    device calling from 127.0.0.1 right after still gets its session within a few seconds."""
    import simulator  # tests/peers

    lp = attack_listener()
    loop = canaries(lp)
    sent = 0
    deadline = time.monotonic() + 60
    # A version line, then bytes that are no SSH packet: each connection fails at once.
    garbage = b"SSH-2.0-garbage\r\n" + b"\xff" * 4096
    while not lp.events("peer.blocked") and time.monotonic() < deadline:
        batch = [socket.create_connection(("127.0.0.1", lp.ssh_port), timeout=10) for _n in range(20)]
        for sock in batch:
            try:
                sock.sendall(garbage)
            except ConnectionError:
                pass
        for sock in batch:
            with sock:
                try:
                    while sock.recv(4096):
                        pass
                except (ConnectionError, socket.timeout):
                    pass
        sent += len(batch)
        wait_until(lambda: len(lp.events("handshake.failed")) >= sent or lp.events("peer.blocked"), 15,
                   "the listener to log the garbage", detail=lambda: lp.log()[-1500:])
    assert lp.events("peer.blocked"), "127.0.0.1 never went over the failure limit (%d connections)" % sent
    keys = tmp_path / "late-keys"
    _path, public_line, fingerprint = ssh_identity(keys, "late0001")
    lp.enroll_ssh("late0001", public_line, fingerprint)
    started = time.monotonic()
    late = simulator.start_simulator_process(
        ["--listener", "127.0.0.1:%d" % lp.ssh_port, "--count", "1", "--name-prefix", "late", "--keys-dir", str(keys),
         "--user", "netconf", "--password", "sim-secret", "--retry", "0.5"],
        env=child_env(),
    )
    try:
        lp.wait_device("late0001", "connected", timeout=30)
        took = time.monotonic() - started
    finally:
        late.stop()
    print("garbage flood: %d connections, blocked; enrolled device from 127.0.0.1 connected after %.1f s"
          % (sent, took))
    assert took <= 8.0, "the enrolled device got its session only after %.1f s" % took
    verdict(lp, loop)

# SPDX-License-Identifier: GPL-3.0-or-later
"""Attacks on the device-facing protocol (issue 10, defects 1-3): an endless reply, a hello whose
DTD hides in UTF-16, an outbound-ssh preamble that never ends its line."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from attacklib import (
    GET_CONFIG,
    MAX_MESSAGE,
    MIB,
    AttackListener,
    CanaryLoop,
    SyncNetconf,
    ssh_identity,
    verdict,
)
from harness import wait_until
from netconf_callhome.control.client import ControlClient

pytestmark = pytest.mark.timeout(300)  # conftest.TEST_TIMEOUT: a hung attack fails, it does not stall make test

SIM_PASSWORD = "sim-secret"  # tests/conftest.py: what the listener logs in to devices with


def _rogue(
    lp: AttackListener, device_process: Callable[..., Any], keys: Path, name: str, *mode: str, enroll: bool = True
) -> Any:
    key_path, public_line, fingerprint = ssh_identity(keys, name)
    if enroll:
        lp.enroll_ssh(name, public_line, fingerprint)
    return device_process(
        "ssh",
        "--listener",
        "127.0.0.1:%d" % lp.ssh_port,
        "--name",
        name,
        "--key",
        str(key_path),
        "--password",
        SIM_PASSWORD,
        *mode,
    )


def test_endless_base10_reply_is_cut_at_max_message(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
    device_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Defect 1: an enrolled device answers a lease's RPC with a base:1.0 reply that never ends.
    The listener cuts it at max_message_bytes with work linear in the bytes (the quadratic
    framing spent ~15 s of CPU on 32 MiB), memory bounded by the message limit, canaries served."""
    lp = attack_listener(session_modes={"rogue1": "shared"})  # the framer of the held session reads it
    loop = canaries(lp)
    rogue = _rogue(lp, device_process, tmp_path / "rogue-keys", "rogue1", "--mode", "endless-reply")
    lp.wait_device("rogue1", "connected", timeout=30)
    assert lp.sampler is not None
    mark = lp.sampler.mark()

    sock, info = ControlClient(lp.address, timeout=30).lease("rogue1", wait=5)
    ended = ""
    with sock:
        sock.settimeout(90)
        nc = SyncNetconf(sock)
        nc.hello(base11=False)
        nc.send_rpc(GET_CONFIG)
        try:
            reply = nc.recv()  # the reply never completes: the lease must end instead
            ended = "got a reply of %d bytes" % len(reply)
        except (EOFError, ConnectionError) as exc:
            ended = str(exc)
        except socket.timeout:
            pytest.fail("the lease still runs 90 s into an endless reply; " + lp.sampler.describe(mark))
    elapsed = time.monotonic() - mark.at
    cpu = lp.sampler.cpu_since(mark)
    peak = lp.sampler.peak_rss_since(mark) - mark.rss
    record = lp.wait_device("rogue1", "error", timeout=20)
    wait_until(lambda: rogue.count("STREAMED"), 20, "the rogue device to see its connection end", detail=rogue.output)
    streamed = int([ln for ln in rogue.lines if ln.startswith("STREAMED")][0].split()[-1])

    print("endless reply: %s; streamed %d bytes; %s" % (ended, streamed, lp.sampler.describe(mark)))
    assert "got a reply" not in ended, ended
    assert "exceed" in record.get("last_error", "").lower(), record
    # The cut comes at the limit: what the device got out is the limit plus the SSH window in flight.
    assert MAX_MESSAGE <= streamed <= MAX_MESSAGE + 8 * MIB, "device sent %d bytes before the cut" % streamed
    # Linear framing: SSH decryption of 32 MiB plus the canaries' leases, far from 15 s.
    assert cpu <= 4.0 + 0.3 * elapsed, "framing an endless reply cost too much CPU: " + lp.sampler.describe(mark)
    assert peak <= 3 * MAX_MESSAGE + 64 * MIB, "memory beyond the message bound: " + lp.sampler.describe(mark)
    verdict(lp, loop, rss_growth=3 * MAX_MESSAGE + 64 * MIB)


def test_endless_hello_is_cut_at_max_hello(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
    device_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Defect 1, before the session exists: an enrolled device's hello never ends. It is cut at
    max_hello_bytes, cheaply, and the device gets no session."""
    max_hello = 24 * MIB  # large enough that a framing cost quadratic in it shows (~8 s of CPU)
    lp = attack_listener(max_hello_bytes=max_hello)
    loop = canaries(lp)
    assert lp.sampler is not None
    mark = lp.sampler.mark()
    rogue = _rogue(lp, device_process, tmp_path / "rogue-keys", "rogue2", "--mode", "endless-hello")
    wait_until(lambda: rogue.count("STREAMED"), 60, "the listener to cut the endless hello",
               detail=lambda: rogue.output() + "\n" + lp.sampler.describe(mark))
    streamed = int([ln for ln in rogue.lines if ln.startswith("STREAMED")][0].split()[-1])
    elapsed = time.monotonic() - mark.at
    cpu = lp.sampler.cpu_since(mark)
    record = lp.wait_device("rogue2", "error", timeout=20)
    print("endless hello: streamed %d bytes; %s; %s" % (streamed, record.get("last_error"), lp.sampler.describe(mark)))
    assert not [ev for ev in lp.events("device.connected") if ev.get("device") == "rogue2"]
    assert max_hello <= streamed <= max_hello + 8 * MIB, "device sent %d bytes before the cut" % streamed
    assert cpu <= 2.0 + 0.3 * elapsed, "an endless hello cost too much CPU: " + lp.sampler.describe(mark)
    assert lp.sampler.peak_rss_since(mark) - mark.rss <= 3 * max_hello + 64 * MIB, lp.sampler.describe(mark)
    verdict(lp, loop, rss_growth=3 * max_hello + 64 * MIB)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_dtd_hello_in_utf16_is_refused(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
    device_process: Callable[..., Any],
    tmp_path: Path,
    encoding: str,
) -> None:
    """Defect 2: an enrolled device's hello declares an internal entity, in UTF-16 so that a
    byte-level DTD check does not see it. It is refused and the expansion is stored nowhere."""
    marker = "EXPANDED-BY-THE-LISTENER-%s" % encoding
    lp = attack_listener()
    loop = canaries(lp)
    rogue = _rogue(
        lp, device_process, tmp_path / "rogue-keys", "dtd1", "--mode", "utf16-dtd", "--marker", marker,
        "--encoding", encoding,
    )

    def accepted() -> List[Dict[str, Any]]:
        return [ev for ev in lp.events("device.connected") if ev.get("device") == "dtd1"]

    wait_until(lambda: rogue.count("DISCONNECTED") or accepted(), 30, "the listener to decide on the DTD hello",
               detail=lambda: rogue.output() + "\n" + lp.log()[-2000:])
    assert not accepted(), "the DTD hello was accepted as a session: %s; stored capabilities: %s" % (
        accepted(), lp.record("dtd1").get("capabilities"))
    record = lp.wait_device("dtd1", "error", timeout=20)
    assert marker not in repr(record), "the expanded entity was stored: %s" % record

    def flushed() -> List[str]:
        with sqlite3.connect("file:%s?mode=ro" % (lp.home / "registry.sqlite"), uri=True, timeout=5) as db:
            docs = [doc for (doc,) in db.execute("SELECT doc FROM devices")]
        return [d for d in docs if '"dtd1"' in d and '"error"' in d] and docs

    docs = wait_until(flushed, 20, "the DTD device's record in the registry file")
    assert not any(marker in doc for doc in docs), "the expanded entity reached the registry file"
    verdict(lp, loop)


def test_outbound_ssh_preamble_without_newline(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
) -> None:
    """Defect 3: connections to the outbound-ssh port send a preamble line and never its newline.
    Each is closed within the handshake timeout, and waiting for it costs no CPU (the reader
    spun on the peeked bytes: 8% -> 65% CPU for one connection; here 20 of them for 6 s)."""
    lp = attack_listener(outbound_ssh_binds=["127.0.0.1:0"], handshake_timeout=6)
    loop = canaries(lp)
    assert lp.sampler is not None
    mark = lp.sampler.mark()
    socks: List[socket.socket] = []
    try:
        for _n in range(20):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))  # not the canaries' address
            sock.settimeout(30)
            sock.connect(("127.0.0.1", lp.outbound_ssh_port))
            sock.sendall(b"MSG-ID: DEVICE-CONN-INFO")
            socks.append(sock)
        for sock in socks:
            try:
                data = sock.recv(4096)
            except (ConnectionError, socket.timeout) as exc:
                data = b"" if isinstance(exc, ConnectionError) else b"timeout"
            assert data == b"", "an outbound-ssh connection without a preamble line stayed open 30 s"
    finally:
        for sock in socks:
            sock.close()
    elapsed = time.monotonic() - mark.at
    cpu = lp.sampler.cpu_since(mark)
    print("outbound-ssh preamble: all closed after %.1f s; %s" % (elapsed, lp.sampler.describe(mark)))
    assert elapsed <= 6 + 6, "closed after %.1f s, handshake_timeout is 6 s" % elapsed
    assert cpu <= 0.5 + 0.2 * elapsed, "waiting for a preamble line burnt CPU: " + lp.sampler.describe(mark)
    verdict(lp, loop)

# SPDX-License-Identifier: GPL-3.0-or-later
"""Issue 11, bad input from RESTCONF devices at the listener's level: enrolled devices (their
certificates verify, so they reach the HTTP layer) that stall in TLS or HTTP, send a body that
never ends or is oversized, or answer with malformed JSON or XML, all calling home at once while
a good RESTCONF device and the SSH canaries are held and leased. Each bad one ends with a clear
reason on its record, within the handshake bound; nothing else is disturbed; memory stays bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from attacklib import MIB, AttackListener, CanaryLoop, tls_options, verdict
from harness import wait_until

pytestmark = pytest.mark.timeout(300)

BODY_LIMIT = 1 * MIB
# mode -> words the device's last_error must contain (what the operator reads in `device NAME`)
BAD: Dict[str, str] = {
    "stall-http": "in time",
    "endless-body": "over the limit",
    "oversized": "over the limit",
    "malformed-json": "JSON",
    "malformed-xml": "XML",
}


def _restconf_options(tls_pki: Any) -> Dict[str, Any]:
    options = tls_options(tls_pki)
    options.pop("tls_binds")
    options.update(restconf_binds=["127.0.0.1:0"], restconf={"max_body_bytes": BODY_LIMIT}, liveness_interval=0)
    return options


def test_bad_restconf_devices_fail_clearly_and_disturb_nobody(
    attack_listener: Callable[..., AttackListener],
    canaries: Callable[..., CanaryLoop],
    device_process: Callable[..., Any],
    tls_pki: Any,
    tmp_path: Path,
) -> None:
    import pki  # tests/peers

    lp = attack_listener(**_restconf_options(tls_pki))
    address = "127.0.0.1:%d" % lp.restconf_port

    def device(name: str, mode: str) -> Any:
        cert = pki.make_device_cert(tmp_path / "certs", tls_pki.device_ca, name)
        lp.call("enroll", device=name, kind="tls_identities", value="cn:%s" % name)
        lp.allow(name, cert.fingerprint)
        return device_process("restconf", "--listener", address, "--name", name, "--mode", mode,
                              "--cert", str(cert.cert_path), "--key", str(cert.key_path))

    good = device("rc-good", "good")
    lp.wait_device("rc-good", "connected", timeout=30)
    loop = canaries(lp, extra_drops=[lambda: good.count("DISCONNECTED")])
    before = lp.record("rc-good")
    assert lp.sampler is not None
    mark = lp.sampler.mark()

    bad = {mode: device("rc-%s" % mode, mode) for mode in list(BAD) + ["stall-tls"]}
    # A device silent in TLS never showed its certificate: the failure is the address's, not a device's.
    stalled = wait_until(
        lambda: [ev for ev in lp.events("handshake.failed") if ev.get("transport") == "restconf"],
        30,
        "the TLS staller's handshake to time out",
        detail=lambda: lp.log()[-3000:],
    )
    assert stalled[0].get("reason") == "timeout", stalled
    assert lp.record("rc-stall-tls")["status"] == "never-seen"

    def failed_record(name: str) -> Any:
        rec = lp.record(name)
        return rec if rec.get("status") == "error" else None

    records = {}
    for mode, words in BAD.items():
        name = "rc-%s" % mode
        # handshake_timeout (5 s in the suite's base options) bounds every one of them
        records[mode] = wait_until(
            lambda: failed_record(name),
            30,
            "%s to be recorded as failed" % name,
            detail=lambda: "%s\n%s" % (lp.record(name), bad[mode].output()),
        )
        assert words in records[mode]["last_error"], (mode, records[mode])
        assert records[mode]["transport"] == "restconf", records[mode]
    # the endless body was cut near the limit, not read on: the device saw its stream reset
    wait_until(lambda: bad["endless-body"].count("RESET") or bad["endless-body"].count("DISCONNECTED"), 15,
               "the endless body to be cut", detail=bad["endless-body"].output)

    loop.wait_more(2 * len(loop.devices))  # leases went on through it all
    after = lp.record("rc-good")
    assert after["status"] == "connected" and after["connect_count"] == before["connect_count"], after
    assert good.count("DISCONNECTED") == 0, good.output()
    failed = {ev.get("device") for ev in lp.events("device.session_failed")}
    assert {"rc-%s" % mode for mode in BAD} <= failed, failed
    grown = lp.sampler.peak_rss_since(mark) - mark.rss
    assert grown < 64 * MIB, "the listener grew by %.1f MiB under bad RESTCONF devices" % (grown / MIB)
    verdict(lp, loop)

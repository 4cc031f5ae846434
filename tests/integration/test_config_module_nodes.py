# SPDX-License-Identifier: GPL-3.0-or-later
"""The device-side alternative to a load balancer (issue 12, docs/scale-out.md), end to end:
``netconf.callhome.config`` pushes one entry whose endpoints are two listener nodes, in order,
with a reconnect strategy, to the libnetconf2 device (``lnc2-device``, a NETCONF server nobody
here wrote); the device calls the first node, and when that node dies it moves to the second one
by itself. The listeners are the collection's own (``callhome-listener serve``), each with the
device's host key enrolled; nothing is played by the test.

Skips (with the reason printed) only if the C device cannot be built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness import enroll, wait_until  # tests/integration (conftest puts it on sys.path)
from lnc2_peer import Lnc2Device
from pki import SshKey, TestPki

# the libnetconf2 device, its PKI and the play helper of the single-node module test
from test_config_module_lnc2 import (  # noqa: F401  pylint: disable=unused-import
    CLIENT,
    DEVICE,
    NCS_NS,
    clients,
    device,
    failure,
    hostkey_reference,
    listener_key,
    pki,
    play,
)

pytestmark = pytest.mark.timeout(400)


def test_the_device_moves_to_the_next_node_when_its_node_dies(
    tmp_path: Path, device: Lnc2Device, pki: TestPki, listener_factory: Any, listener_key: SshKey
) -> None:
    nodes = {}
    for name in ("node-a", "node-b"):
        home = tmp_path / name
        # the device's host key, as netconf.callhome.enroll would have put it on each node
        enroll(home, DEVICE, ssh_key=pki.host_keys["ed25519"].public_line)
        nodes[name] = listener_factory("--private-key", str(listener_key.private_path), home=home).start()
    args = {
        "name": CLIENT,
        "endpoints": [
            {"name": name, "address": "127.0.0.1", "port": lst.ssh_port} for name, lst in nodes.items()
        ],
        "ssh": {
            "host_key_reference": hostkey_reference(pki),
            "username": "netconf",
            "client_public_keys": [listener_key.public_line],
        },
        "start_with": "first-listed",
        "max_wait": 2,
        "max_attempts": 1,
        # the safe rollout confirms once the device called the first node
        "confirm_callhome": True,
        "callhome_device": DEVICE,
        "callhome_timeout": 30,
        "confirm_timeout": 60,
        "listener": "unix:%s" % nodes["node-a"].status["control_socket"],
    }
    res = play(tmp_path, device, pki, [("config", "netconf.callhome.config", args)])["config"]
    assert not res.get("failed") and res["changed"] is True, failure(res, device, nodes["node-a"])
    assert res["callhome"]["status"] == "connected" and res["callhome"]["confirmed"] is True, res["callhome"]
    entry = clients(device)[CLIENT]
    endpoints = entry.findall(".//{%s}endpoint" % NCS_NS)
    assert [e.findtext("{%s}name" % NCS_NS) for e in endpoints] == ["node-a", "node-b"]
    strategy = entry.find("{%s}reconnect-strategy" % NCS_NS)
    assert strategy is not None and strategy.findtext("{%s}start-with" % NCS_NS) == "first-listed"
    assert strategy.findtext("{%s}max-attempts" % NCS_NS) == "1"
    assert nodes["node-a"].wait_device(DEVICE, "connected")
    assert nodes["node-b"].call("device", device=DEVICE)["status"] == "never-seen"

    # node-a dies: the device's session drops, node-a does not answer any more, and the
    # device's reconnect strategy takes it to node-b
    nodes["node-a"].stop()

    def on_node_b() -> Any:
        rec = nodes["node-b"].call("device", device=DEVICE)
        return rec if rec["status"] == "connected" else None

    record = wait_until(
        on_node_b,
        60,
        "the device connected to node-b",
        detail=lambda: "device log:\n%s\nnode-b log:\n%s" % (device.log[-4000:], nodes["node-b"].log()[-3000:]),
    )
    assert record["fingerprint"] == pki.host_keys["ed25519"].fingerprint

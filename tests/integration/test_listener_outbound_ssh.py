# SPDX-License-Identifier: GPL-3.0-or-later
"""Junos-style outbound-ssh: a DEVICE-CONN-INFO preamble before SSH, on its own port."""

from __future__ import annotations

import socket

from harness import ncclient_over_lease, running, wait_until


def _outbound_port(lst):
    return int(lst.call("status")["outbound_ssh"][0].rsplit(":", 1)[1])


def test_outbound_ssh_device_is_accepted_and_named_in_pending(listener_factory, fleet):
    lst = listener_factory("--outbound-ssh", "127.0.0.1:0")
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    port = _outbound_port(lst)
    with running(fleet.simulator(port, 2, "--outbound-ssh-preamble")):
        rec = lst.wait_device("sim0001", "connected", timeout=20)
        assert rec["transport"] == "ssh"
        mgr = ncclient_over_lease(lst.control, "sim0001")[0]
        with mgr:
            assert "sim0001" in mgr.get_config("running").xml
        # the unenrolled one is pending, labelled with the DEVICE-ID it sent (a claim, not trust)
        lst.wait_device("sim0001", "connected")
        pending = wait_until(lambda: lst.call("pending"), 10, "the unknown key to be pending")
        assert pending[0]["claimed_device"] == "sim0002" and pending[0]["claim_source"] == "device-id"
        res = lst.cli("approve", pending[0]["fingerprint"], check=False)
        assert res.returncode == 1 and "--device" in res.stderr
    assert "event=outbound_ssh.preamble" in lst.log() and "device_id=sim0001" in lst.log()


def test_plain_ssh_on_the_outbound_port_is_refused(listener_factory, fleet):
    lst = listener_factory("--outbound-ssh", "127.0.0.1:0")
    fleet.enroll(lst.home / "trust.json", ["sim0001"])
    lst.start()
    with socket.create_connection(("127.0.0.1", _outbound_port(lst)), timeout=5) as sock:
        sock.sendall(b"SSH-2.0-NotJunos\r\n")
        try:
            answer = sock.recv(100)
        except ConnectionResetError:  # closed with our banner unread: the kernel sends RST
            answer = b""
        assert answer == b""  # closed without an SSH banner from us
    lst.wait_log("reason=outbound-ssh-preamble", timeout=5)  # logged right after it closed the socket

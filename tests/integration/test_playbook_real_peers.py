# SPDX-License-Identifier: GPL-3.0-or-later
"""``ansible-playbook`` with ``netconf.callhome.netconf`` against peers nobody here wrote:
libnetconf2 calling home over SSH and over TLS, and OpenSSH ``sshd -i`` over a reversed TCP link,
all at once with ``--forks 3``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import child_env, enroll

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "real_peers.yml"

pytestmark = pytest.mark.timeout(300)


def test_playbook_over_libnetconf2_ssh_tls_and_openssh(device_binary, listener_factory, tmp_path):
    from lnc2_peer import Lnc2Device
    from pki import make_pki, make_ssh_key
    from peer_availability import peer_or_skip
    from sshd_peer import SshdPeer

    ssh_pki = make_pki(tmp_path / "pki-ssh", device_name="lnc2-ssh", host_key_algorithms=("ed25519",))
    tls_pki = make_pki(tmp_path / "pki-tls", device_name="lnc2-tls")
    client_key = make_ssh_key(tmp_path / "listener-key", "listener")
    lst = listener_factory(
        "--tls",
        "127.0.0.1:0",
        "--tls-client-cert",
        str(tls_pki.listener_cert.cert_path),
        "--tls-client-key",
        str(tls_pki.listener_cert.key_path),
    )
    lst.start()
    sshd = peer_or_skip(
        SshdPeer(("127.0.0.1", lst.ssh_port), password_auth=False, redial=True, retry=0.5).__enter__, "OpenSSH peer"
    )
    try:
        sshd.add_authorized_key(client_key.public_line)

        enroll(
            lst.home,
            "lnc2-ssh",
            ssh_key=ssh_pki.host_keys["ed25519"].public_line,
            private_key=ssh_pki.listener_ssh_key.private_path,
        )
        enroll(lst.home, "lnc2-tls", tls_fp=tls_pki.device_self_signed.fingerprint)
        enroll(
            lst.home,
            "sshd-dev",
            ssh_key=sshd.host_key_line,
            username=sshd.username,
            private_key=client_key.private_path,
        )
        lst.call("reload")
        sshd.start_dialing()
        lnc2_edit = (
            '<device xmlns="urn:netconf-callhome:test-device"><interface><name>eth9</name>'
            "<mtu>1400</mtu></interface></device>"
        )
        inventory = {
            "all": {
                "vars": {
                    "ansible_connection": "netconf.callhome.netconf",
                    "ansible_network_os": "auto",
                    "ansible_callhome_listener": "unix:%s" % (lst.home / "control.sock"),
                    "ansible_callhome_timeout": 60,
                    "ansible_python_interpreter": sys.executable,
                },
                "hosts": {
                    "lnc2-ssh": {"edit_xml": lnc2_edit, "edit_marker": "eth9"},
                    "lnc2-tls": {"edit_xml": lnc2_edit, "edit_marker": "eth9"},
                    "sshd-dev": {
                        "edit_xml": '<note xmlns="urn:example:peer">from-ansible</note>',
                        "edit_marker": "from-ansible",
                    },
                },
            }
        }
        inv = tmp_path / "inventory.json"
        inv.write_text(json.dumps(inventory))
        env = child_env(
            ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
            NETCONF_CALLHOME_HOME=str(lst.home),
            ANSIBLE_PERSISTENT_CONTROL_PATH_DIR=str(tmp_path / "pc"),
            ANSIBLE_NOCOLOR="1",
            PATH="%s:%s" % (Path(sys.executable).parent, os.environ.get("PATH", "")),
        )
        with Lnc2Device.from_pki(ssh_pki, ssh_port=lst.ssh_port), Lnc2Device.from_pki(
            tls_pki, tls_port=lst.tls_port, self_signed=True
        ):
            res = subprocess.run(
                [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv), str(PLAYBOOK), "--forks", "3"],
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
                cwd=str(tmp_path),
                check=False,
            )
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
        recap = {}
        for line in res.stdout.split("PLAY RECAP", 1)[1].splitlines():
            host, sep, counts = line.partition(" : ")
            if sep:
                recap[host.strip()] = dict(kv.split("=") for kv in counts.split())
        assert set(recap) == {"lnc2-ssh", "lnc2-tls", "sshd-dev"}
        for host, counts in recap.items():
            assert counts["failed"] == "0" and counts["unreachable"] == "0" and int(counts["ok"]) == 5, (host, counts)
        devices = {d["name"]: d for d in lst.call("devices")}
        assert devices["lnc2-tls"]["transport"] == "tls" and devices["sshd-dev"]["session_mode"] == "channel"
    finally:
        sshd.__exit__(None, None, None)

# SPDX-License-Identifier: GPL-3.0-or-later
"""``make demo``: the main job on a machine with no network devices.

1. Lay down a listener configuration in a fresh state directory and start the embedded listener
   (the same daemon the connection plugin starts on demand).
2. Start simulated devices (asyncssh) and two libnetconf2 devices (one over SSH, one over TLS with
   a pinned certificate); they all dial out to the listener.
3. Enroll them the way an operator does: list the pending keys the listener recorded, approve each.
4. Show the registry, then run ``ansible-playbook playbooks/demo.yml``, which reads every device's
   configuration over call home through ``netconf.callhome.netconf``.
5. Check the result: every device connected, no key left pending, the playbook passed; exit 1 when
   not (``--check``, what ``make demo-check`` and so ``make test`` run, also fails when the
   libnetconf2 devices cannot be built instead of going on with the simulated ones).
6. Stop everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "peers"))

from ansible.plugins.loader import init_plugin_loader  # noqa: E402
from netconf_callhome.control.client import ControlClient  # noqa: E402
from netconf_callhome.fingerprints import normalize_cert_fingerprint  # noqa: E402

# The collection's plugin code comes through Ansible's collection finder on the clone's collections
# paths (those of ansible.cfg), as ansible-playbook finds it: no PYTHONPATH. The listener itself is
# the venv's netconf-callhome distribution.
init_plugin_loader([str(ROOT / ".collections"), str(ROOT / ".deps")])
from ansible_collections.netconf.callhome.plugins.plugin_utils.embedded_listener import ensure_listener  # noqa: E402

LISTENER = [sys.executable, "-m", "netconf_callhome"]


def _port(preferred: int) -> int:
    """The IANA port when it is free on loopback, else any free port (a real listener may run)."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return sock.getsockname()[1]
            except OSError:
                continue
    raise SystemExit("no free port on 127.0.0.1")


def _say(text: str) -> None:
    print("\n\033[1m== %s\033[0m" % text, flush=True)


def _wait_pending(client: ControlClient, count: int, timeout: float = 60.0) -> List[Dict]:
    deadline = time.monotonic() + timeout
    while True:
        pending = client.call("pending")
        if len(pending) >= count or time.monotonic() > deadline:
            return pending
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--devices", type=int, default=4, help="simulated devices (default 4)")
    parser.add_argument("--keep", action="store_true", help="leave the listener and devices running")
    parser.add_argument("--check", action="store_true",
                        help="fail (exit 1) when the libnetconf2 devices are not available, as on a wrong result")
    args = parser.parse_args()

    import simulator
    from lnc2_peer import Lnc2Device, PeerBuildError, build_device
    from pki import make_pki

    home = ROOT / ".cache" / "demo-home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True, mode=0o700)
    os.environ["NETCONF_CALLHOME_HOME"] = str(home)
    password = home / "device-password"
    password.write_text("demo-secret\n")
    os.chmod(password, 0o600)
    pki = make_pki(home / "pki", device_name="lnc2-tls", serial_number="SN-DEMO-1")
    ssh_port, tls_port = _port(4334), _port(4335)
    (home / "listener.yml").write_text(
        json.dumps(
            {
                "ssh_binds": ["127.0.0.1:%d" % ssh_port],
                "tls_binds": ["127.0.0.1:%d" % tls_port],
                "credentials": {"username": "netconf", "password_file": str(password)},
                "tls": {"client_cert": str(pki.listener_cert.cert_path), "client_key": str(pki.listener_cert.key_path)},
                "keepalive_interval": 10,
            },
            indent=2,
        )
    )

    _say("1. Start the embedded listener (state in %s)" % home)
    started, ping = ensure_listener(idle_exit=300, log=print)
    client = ControlClient()
    print(json.dumps(client.call("status"), indent=2))

    procs = []
    devices: List[Lnc2Device] = []
    try:
        _say("2. Devices dial out: %d simulated (asyncssh) + libnetconf2 over SSH and over TLS" % args.devices)
        sim = simulator.start_simulator_process(
            ["--listener", "127.0.0.1:%d" % ssh_port, "--count", str(args.devices), "--keys-dir", str(home / "sim-keys"),
             "--user", "netconf", "--password", "demo-secret", "--retry", "1", "--name-prefix", "sim"],
        )
        procs.append(sim)
        try:
            build_device()
            pki_ssh = make_pki(home / "pki-ssh", device_name="lnc2-ssh", host_key_algorithms=("ed25519",))
            for dev in (
                Lnc2Device.from_pki(pki_ssh, ssh_port=ssh_port, password="demo-secret", use_key=False),
                Lnc2Device.from_pki(pki, tls_port=tls_port, self_signed=True),
            ):
                devices.append(dev.start())
            expected = args.devices + 2
        except PeerBuildError as exc:
            if args.check:
                print("demo: FAILED, the libnetconf2 devices are not available: %s" % exc)
                return 1
            print("libnetconf2 device not available, continuing with simulated devices only: %s" % exc)
            expected = args.devices

        _say("3. Unknown keys are pending, never given a session; the operator approves them")
        pending = _wait_pending(client, expected)
        subprocess.run(LISTENER + ["pending"], check=True)
        names = {}
        for dev_name, key in simulator.ensure_keys(home / "sim-keys", [simulator.device_name("sim", i) for i in range(1, args.devices + 1)]).items():
            names[key.get_fingerprint("sha256")] = dev_name
        if devices:
            names[pki_ssh.host_keys["ed25519"].fingerprint] = "lnc2-ssh"
            names[normalize_cert_fingerprint(pki.device_self_signed.fingerprint)] = "lnc2-tls"
        for entry in pending:
            name = names.get(entry["fingerprint"])
            if name is None:
                print("leaving unexpected key %s pending" % entry["fingerprint"])
                continue
            # An operator checks the fingerprint against the device's console before approving.
            subprocess.run(LISTENER + ["approve", entry["fingerprint"], "--device", name], check=True, stdout=subprocess.DEVNULL)
            print("approved %-9s %s" % (name, entry["fingerprint"]))

        for name in sorted(set(names.values())):
            client.call("wait", device=name, wait=60, timeout=70)
        _say("4. The registry")
        subprocess.run(LISTENER + ["devices"], check=True)

        _say("5. ansible-playbook reads every device's configuration over call home")
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="1")
        res = subprocess.run(
            [str(Path(sys.executable).with_name("ansible-playbook")), "-i", "playbooks/inventory/demo.callhome.yml",
             "playbooks/demo.yml", "--forks", "8"],
            cwd=ROOT, env=env, check=False,
        )
        return _verdict(client, sorted(set(names.values())), expected, res.returncode)
    finally:
        if not args.keep:
            for dev in devices:
                dev.stop()
            for proc in procs:
                proc.stop()
            try:
                client.call("shutdown")
            except Exception as exc:  # already gone is fine
                print("listener shutdown: %s" % exc)


def _verdict(client: ControlClient, enrolled: List[str], expected: int, playbook_rc: int) -> int:
    """0 when every enrolled device is connected, no key is pending and the playbook passed; the one
    line printed ("demo: 6 connected, 0 pending, playbook ok") is what a reader (or CI log) checks."""
    connected = sorted(rec["name"] for rec in client.call("devices") if rec.get("status") == "connected")
    pending = client.call("pending")
    line = "%d connected, %d pending, playbook %s" % (
        len(connected), len(pending), "ok" if playbook_rc == 0 else "failed (rc=%d)" % playbook_rc)
    wrong = []
    if len(enrolled) != expected:
        wrong.append("%d of %d devices enrolled" % (len(enrolled), expected))
    if sorted(set(enrolled) - set(connected)):
        wrong.append("not connected: %s" % ", ".join(sorted(set(enrolled) - set(connected))))
    if len(connected) != expected:
        wrong.append("expected %d connected" % expected)
    if pending:
        wrong.append("left pending: %s" % ", ".join(entry["fingerprint"] for entry in pending))
    if playbook_rc != 0:
        wrong.append("the playbook failed")
    _say("demo: %s%s" % (line, "" if not wrong else " -- FAILED: " + "; ".join(wrong)))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())

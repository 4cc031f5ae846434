# SPDX-License-Identifier: GPL-3.0-or-later
"""``roles/listener`` rendered with ``ansible-playbook`` into a temporary root (no systemd
needed): files, modes, unit, idempotence, and a listener actually started from the rendered
configuration and code."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

import pytest

from harness import ROOT, child_env

from netconf_callhome.control.client import ControlClient

pytestmark = pytest.mark.timeout(240)


def run_role(root: Path, extra: Dict[str, Any]) -> subprocess.CompletedProcess:
    play = [{"hosts": "localhost", "gather_facts": False,
             "roles": [{"role": "netconf.callhome.listener", "vars": extra}]}]
    path = root.parent / "role-play.json"
    path.write_text(json.dumps(play))
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=%s" % sys.executable, str(path)],
        capture_output=True, text=True, env=child_env(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1"),
        timeout=200, check=False)


def recap(out: str) -> Dict[str, int]:
    match = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    assert match, out[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups())))


def test_role_renders_files_idempotently_and_they_run(tmp_path: Path) -> None:
    root = tmp_path / "root"
    vars_ = {
        "callhome_listener_root": str(root),
        "callhome_listener_manage_user": False,
        "callhome_listener_install_deps": False,  # pip from PyPI is not what this test is about
        "callhome_listener_ssh_binds": ["127.0.0.1:0"],
        "callhome_listener_password": "device-pw",
        "callhome_listener_log_format": "text",
        "callhome_listener_initial_devices": {"r1": {"ssh_host_keys": ["SHA256:" + "A" * 43]}},
    }
    first = run_role(root, vars_)
    assert recap(first.stdout)["failed"] == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert "was laid down but not started: systemd is not PID 1 here" in first.stdout

    etc = root / "etc/netconf-callhome"
    state = root / "var/lib/netconf-callhome"
    pw = etc / "device-password"
    assert pw.read_text() == "device-pw\n" and oct(pw.stat().st_mode & 0o777) == "0o600"
    trust = state / "trust.json"
    assert oct(trust.stat().st_mode & 0o777) == "0o600" and oct(state.stat().st_mode & 0o777) == "0o700"
    assert json.loads(trust.read_text())["devices"]["r1"]["ssh_host_keys"] == ["SHA256:" + "A" * 43]
    unit = (root / "etc/systemd/system/netconf-callhome-listener.service").read_text()
    assert ("ExecStart=%s/opt/netconf-callhome/venv/bin/python -m netconf_callhome "
            "serve --config %s/listener.yaml" % (root, etc)) in unit
    assert "ReadWritePaths=%s" % state in unit and "User=" not in unit
    assert "device-pw" not in (etc / "listener.yaml").read_text(), "secrets stay out of the configuration"

    # the configuration is valid for the listener's own loader
    from netconf_callhome.config import load_config

    cfg = load_config(str(etc / "listener.yaml"))
    assert cfg.credentials.password_file == str(pw) and cfg.trust_store == str(trust)

    # idempotent: nothing changes on a second run; the trust store is never overwritten
    trust.write_text(json.dumps({"version": 1, "devices": {}}) + "\n")
    second = run_role(root, vars_)
    assert recap(second.stdout)["changed"] == 0, second.stdout[-3000:]
    assert json.loads(trust.read_text())["devices"] == {}

    # the rendered code + configuration start a working listener
    lib = root / "opt/netconf-callhome/lib"
    assert (lib / "ansible_collections/netconf/callhome/listener/service.py").exists()
    env = dict(os.environ, PYTHONPATH=str(lib))
    proc = subprocess.Popen([sys.executable, "-m", "netconf_callhome", "serve",
                             "--config", str(etc / "listener.yaml")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = ControlClient("unix:%s" % (state / "control.sock"), timeout=5)
        deadline = time.monotonic() + 20
        while True:
            try:
                status = client.call("status")
                break
            except Exception:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode() if proc.stdout else ""
                time.sleep(0.2)
        assert status["trust_store"] == str(trust) and status["ssh"]
        client.call("shutdown")
        proc.wait(15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)

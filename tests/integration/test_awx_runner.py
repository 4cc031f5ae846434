# SPDX-License-Identifier: GPL-3.0-or-later
"""A playbook run the way AWX runs a job: through ansible-runner, with the documented credential.

AWX hands a job to ``ansible-runner`` (inside the execution environment) with a private data
directory, an inventory, extra vars and the environment that the job's credentials inject. This
test does the same without AWX:

* the credential type is the one in ``docs/awx.md`` ("The credential type"): its input fields
  and its injectors are read from that page and rendered with Jinja2 as AWX does (``file``
  injectors become files in the private data directory, ``{{ tower.filename.<name> }}`` their
  paths; ``env`` goes to runner's ``env/envvars``; ``extra_vars`` to its ``env/extravars``), and
  ``ansible-runner run`` runs the job on that private data directory;
* the listener is a real ``callhome-listener serve`` process with its remote control endpoint
  (``control_tcp``: TLS with a trustme certificate for 127.0.0.1, a token file), reached only over
  ``tls://`` with the token; simulated devices call home to it over SSH;
* the playbook is the one of docs/awx.md section 4: ``wait_for_devices`` and ``listener_info``
  delegated to localhost, ``ansible.netcommon.netconf_get`` over
  ``ansible_connection: netconf.callhome.netconf`` (the lease streamed over TLS), plus the
  ``callhome-listener`` command, which reads ``NETCONF_CALLHOME_CONTROL``;
* the collections are found as an EE finds its installed ones: ``ANSIBLE_COLLECTIONS_PATH`` in
  the job's environment (``.collections`` holds this checkout as netconf.callhome, ``.deps``
  ansible.netcommon and ansible.utils, as ``make setup`` lays them out).

What is asserted is what AWX looks at: runner's ``status`` and ``rc``, and the job events.
The execution-environment container itself is not used (``process_isolation`` off): the job runs
with this interpreter, which is what the EE's ansible-runner would do inside the image.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import trustme
import yaml
from harness import free_port, running

from jinja2 import StrictUndefined  # noqa: E402  (ansible-core's dependency)
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
AWX_DOC = REPO / "docs" / "awx.md"
VENV_BIN = Path(sys.executable).parent
COLLECTIONS_PATH = "%s:%s" % (REPO / ".collections", REPO / ".deps")
RUNNER = str(VENV_BIN / "ansible-runner")
if not Path(RUNNER).exists():
    pytest.skip("ansible-runner is not installed next to %s (requirements-test.txt)" % sys.executable,
                allow_module_level=True)
TOKEN = "awx-job-token-0123456789abcdef"
DEVICES = ["sim0001", "sim0002"]
RESULT_EVENTS = ("runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped")

PLAYBOOK = """\
---
- name: A job over a remote call-home listener
  hosts: routers
  gather_facts: false
  tasks:
    - name: Wait until this batch has called home
      netconf.callhome.wait_for_devices:
        devices: "{{ ansible_play_hosts }}"
        timeout: 60
        tls_ca_file: "{{ ansible_callhome_tls_ca_file | default(omit) }}"
      delegate_to: localhost
      run_once: true

    - name: Listener info
      netconf.callhome.listener_info:
        tls_ca_file: "{{ ansible_callhome_tls_ca_file | default(omit) }}"
      delegate_to: localhost
      run_once: true

    - name: Devices known to the listener, from its command
      ansible.builtin.command: callhome-listener --json devices
      environment:
        SSL_CERT_FILE: "{{ ansible_callhome_tls_ca_file }}"
      changed_when: false
      delegate_to: localhost
      run_once: true

    - name: Get running
      ansible.netcommon.netconf_get:
        source: running
"""


def _doc_yaml_block(after: str) -> Dict[str, Any]:
    """The first ```yaml block after the line ``after`` in docs/awx.md, parsed."""
    text = AWX_DOC.read_text()
    start = text.index(after)
    match = re.search(r"```yaml\n(.*?)```", text[start:], re.S)
    assert match, "no yaml block after %r in %s" % (after, AWX_DOC)
    return yaml.safe_load(match.group(1))


def awx_credential(private_data_dir: Path, inputs: Dict[str, str]) -> Tuple[Dict[str, str], Dict[str, str]]:
    """Render the documented credential type for ``inputs`` the way AWX does: -> (env, extra_vars)."""
    fields = _doc_yaml_block("**Input configuration:**")
    injectors = _doc_yaml_block("**Injector configuration:**")
    ids = {f["id"] for f in fields["fields"]}
    assert set(fields.get("required", [])) <= ids
    assert set(inputs) == ids, "the test fills every documented field: %s" % sorted(ids)
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    files: Dict[str, str] = {}
    cred_dir = private_data_dir / "env" / "credentials"
    cred_dir.mkdir(parents=True)
    for key, template in (injectors.get("file") or {}).items():
        name = key.split(".", 1)[1] if key.startswith("template.") else key
        path = cred_dir / ("tmp_%s" % name)
        path.write_text(env.from_string(template).render(**inputs))
        path.chmod(0o600)
        files[name] = str(path)
    context = dict(inputs, tower={"filename": files})
    rendered_env = {k: env.from_string(str(v)).render(**context) for k, v in (injectors.get("env") or {}).items()}
    extra_vars = {k: env.from_string(str(v)).render(**context) for k, v in (injectors.get("extra_vars") or {}).items()}
    return rendered_env, extra_vars


@pytest.fixture
def remote_listener(listener_factory, fleet, tmp_path):
    """A listener process whose control endpoint is tls://127.0.0.1:PORT with TOKEN; its CA in PEM."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_pem, key_pem = tmp_path / "control.crt", tmp_path / "control.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    token_file = tmp_path / "control.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    config = tmp_path / "listener.yml"
    config.write_text(yaml.safe_dump({"control_tcp": {"bind": "127.0.0.1:%d" % port, "cert": str(cert_pem),
                                                      "key": str(key_pem), "token_file": str(token_file)}}))
    lst = listener_factory("--config", str(config))
    fleet.enroll(lst.home / "trust.json", DEVICES)
    lst.start()
    assert lst.status["control_tcp"] == "tls://127.0.0.1:%d" % port
    return lst, "tls://127.0.0.1:%d" % port, ca.cert_pem.bytes().decode()


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The runner process's own environment carries nothing of call home; an empty default home."""
    for name in list(os.environ):
        if name.startswith("NETCONF_CALLHOME_") or name in ("ANSIBLE_CONFIG", "SSL_CERT_FILE"):
            monkeypatch.delenv(name)
    home = tmp_path / "job-home"  # where an (unwanted) embedded listener would put its socket
    home.mkdir()
    monkeypatch.setenv("NETCONF_CALLHOME_HOME", str(home))
    return home


class Job:
    """What AWX reads back from a finished job: runner's status and rc, stdout, the job events."""

    def __init__(self, artifacts: Path, proc: subprocess.CompletedProcess) -> None:
        self.proc = proc
        self.status = (artifacts / "status").read_text().strip() if (artifacts / "status").exists() else None
        self.rc = int((artifacts / "rc").read_text()) if (artifacts / "rc").exists() else None
        self.stdout = (artifacts / "stdout").read_text() if (artifacts / "stdout").exists() else proc.stdout
        events = [json.loads(p.read_text()) for p in (artifacts / "job_events").glob("*.json")]
        self.events = sorted(events, key=lambda ev: ev.get("counter", 0))


def run_job(private_data_dir: Path, env: Dict[str, str], extra_vars: Dict[str, str], hosts: List[str],
            playbook: str = PLAYBOOK) -> Job:
    """``ansible-runner run`` on a private data directory laid out as AWX writes it for a job.

    project/ holds the playbook, inventory/ the inventory, env/envvars and env/extravars what the
    credential injects (plus the EE's PATH and collections path). The runner CLI runs in its own
    process, as in the EE (it forks ansible-playbook on a pty: better not from this multi-threaded one).
    """
    project = private_data_dir / "project"
    project.mkdir(parents=True, exist_ok=True)
    (project / "job.yml").write_text(playbook)
    inventory = {
        "all": {
            "children": {
                "routers": {
                    "hosts": {h: {} for h in hosts},
                    "vars": {  # docs/awx.md section 4, the group's variables
                        "ansible_connection": "netconf.callhome.netconf",
                        "ansible_network_os": "auto",
                        "ansible_callhome_timeout": 60,
                    },
                }
            },
            "vars": {"ansible_python_interpreter": sys.executable},
        }
    }
    (private_data_dir / "inventory").mkdir(exist_ok=True)
    (private_data_dir / "inventory" / "hosts.json").write_text(json.dumps(inventory))
    # An ansible-connection stand-in that records being run: the job must never start one (the
    # listener is the persistent connection, reached through the plugin's relay).
    stub = private_data_dir / "ansible-connection-stub.py"
    stub.write_text("import pathlib, sys\npathlib.Path(%r).write_text(' '.join(sys.argv))\nsys.exit(1)\n"
                    % str(private_data_dir / "ansible-connection-ran"))
    envvars = dict(env)
    envvars.update({
        "_ANSIBLE_CONNECTION_PATH": str(stub),
        "PATH": "%s:%s" % (VENV_BIN, os.environ.get("PATH", "/usr/bin:/bin")),  # the EE's PATH
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS_PATH,  # the EE's installed collections
        "ANSIBLE_PERSISTENT_CONTROL_PATH_DIR": str(private_data_dir / "pc"),
        "ANSIBLE_NOCOLOR": "1",
    })
    env_dir = private_data_dir / "env"
    env_dir.mkdir(exist_ok=True)
    for name, data in (("envvars", envvars), ("extravars", extra_vars), ("settings", {"job_timeout": 180})):
        (env_dir / name).write_text(yaml.safe_dump(data))
        (env_dir / name).chmod(0o600)
    proc = subprocess.run([RUNNER, "run", str(private_data_dir), "-p", "job.yml", "--ident", "job"],
                          capture_output=True, text=True, timeout=200, check=False)
    return Job(private_data_dir / "artifacts" / "job", proc)


def events_by_task(result: Job) -> Dict[str, List[Tuple[str, str, Dict[str, Any]]]]:
    """{task name: [(event, host, res)]} for the per-host result events (ok, failed, unreachable, skipped)."""
    out: Dict[str, List[Tuple[str, str, Dict[str, Any]]]] = {}
    for ev in result.events:
        if ev.get("event") in RESULT_EVENTS and "task" in ev.get("event_data", {}):
            data = ev["event_data"]
            out.setdefault(data["task"], []).append((ev["event"], data.get("host", ""), data.get("res") or {}))
    return out


def test_job_through_ansible_runner_with_the_awx_credential(remote_listener, fleet, job_env, tmp_path):
    lst, address, ca_pem = remote_listener
    pdd = tmp_path / "runner"
    env, extra_vars = awx_credential(pdd, {"listener": address, "token": TOKEN, "ca_cert": ca_pem})
    # what the documented injector gives the job
    assert env["NETCONF_CALLHOME_LISTENER"] == env["NETCONF_CALLHOME_CONTROL"] == address
    assert env["NETCONF_CALLHOME_TOKEN"] == extra_vars["ansible_callhome_token"] == TOKEN
    assert Path(env["NETCONF_CALLHOME_TLS_CA_FILE"]).read_text() == ca_pem
    assert env["NETCONF_CALLHOME_EMBEDDED"] == "false"

    with running(fleet.simulator(lst.ssh_port, len(DEVICES), wait_connected=len(DEVICES))):
        result = run_job(pdd, env, extra_vars, DEVICES)
        stdout = result.stdout
        tasks = events_by_task(result)

    detail = "status=%s rc=%s\n%s\n%s\nlistener log:\n%s" % (
        result.status, result.rc, stdout[-4000:], result.proc.stderr[-2000:], lst.log()[-3000:])
    assert result.status == "successful", detail
    assert result.rc == 0 and result.proc.returncode == 0, detail
    failed = [(t, e, h) for t, evs in tasks.items() for e, h, _r in evs if e != "runner_on_ok"]
    assert not failed, detail

    (_e, _h, waited), = tasks["Wait until this batch has called home"]
    assert sorted(waited["ready"]) == DEVICES and waited["missing"] == [], waited

    (_e, _h, info), = tasks["Listener info"]
    assert info["address"] == address
    assert info["listener"]["control_tcp"] == address
    assert {d["name"]: d["status"] for d in info["devices"]} == {n: "connected" for n in DEVICES}

    (_e, _h, cmd), = tasks["Devices known to the listener, from its command"]
    assert sorted(d["name"] for d in json.loads(cmd["stdout"])) == DEVICES, cmd

    got = {h: r for _e, h, r in tasks["Get running"]}
    assert sorted(got) == DEVICES
    for host, res in got.items():
        assert host in res["stdout"], res  # the simulator's running config names the device

    # the token stays out of the job's output and the listener's log; no listener in the job
    assert TOKEN not in stdout
    assert TOKEN not in lst.log()
    assert not (job_env / "control.sock").exists()
    assert not (pdd / "ansible-connection-ran").exists(), "the job started ansible-connection"


def test_job_with_a_wrong_token_fails_naming_the_token(remote_listener, fleet, job_env, tmp_path):
    lst, address, ca_pem = remote_listener
    pdd = tmp_path / "runner"
    env, extra_vars = awx_credential(pdd, {"listener": address, "token": "not-the-token-0123456789",
                                           "ca_cert": ca_pem})
    playbook = PLAYBOOK.partition("    - name: Listener info")[0] + """\
      ignore_errors: true

    - name: Get running
      ansible.netcommon.netconf_get:
        source: running
"""
    with running(fleet.simulator(lst.ssh_port, 1, wait_connected=1)):
        result = run_job(pdd, env, extra_vars, DEVICES[:1], playbook)
        tasks = events_by_task(result)

    assert result.status == "failed" and result.rc != 0, (result.status, result.rc)
    (event, _h, waited), = tasks["Wait until this batch has called home"]
    assert event == "runner_on_failed" and "token" in waited["msg"], waited
    (event, _h, res), = tasks["Get running"]
    assert event in ("runner_on_failed", "runner_on_unreachable"), (event, res)
    assert "a valid token is required" in res["msg"] and "ansible_callhome_token" in res["msg"], res
    assert not (job_env / "control.sock").exists()

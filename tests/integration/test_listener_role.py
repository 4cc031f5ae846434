# SPDX-License-Identifier: GPL-3.0-or-later
"""``roles/listener`` run with ``ansible-playbook`` into a temporary root (no systemd needed): the
netconf-callhome wheel pip-installed into the role's venv, files, modes, unit, idempotence, and
``VENV/bin/callhome-listener serve`` started from the rendered configuration, without PYTHONPATH."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from harness import ROOT, child_env

from netconf_callhome.control.client import ControlClient

pytestmark = pytest.mark.timeout(420)

UNIT = "etc/systemd/system/netconf-callhome-listener.service"
DEPS = ROOT / ".deps" / "ansible_collections"


def run_role(root: Path, extra: Dict[str, Any], check: bool = False) -> subprocess.CompletedProcess:
    play = [{"hosts": "localhost", "gather_facts": False,
             "roles": [{"role": "netconf.callhome.listener", "vars": extra}]}]
    path = root.parent / "role-play.json"
    path.write_text(json.dumps(play))
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=%s" % sys.executable, str(path)] + (["--check"] if check else []),
        capture_output=True, text=True, env=child_env(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1"),
        timeout=600, check=False)


def recap(out: str) -> Dict[str, int]:
    match = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    assert match, out[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups())))


def task_status(out: str, task: str) -> str:
    """ok / changed / skipping / failed / fatal of the first task whose name starts with ``task``."""
    match = re.search(r"TASK \[netconf\.callhome\.listener : %s[^\n]*\n+(\w+):" % re.escape(task), out)
    assert match, out[-3000:]
    return match.group(1)


def env_without_pythonpath() -> Dict[str, str]:
    """The environment of a service: the test runner's PYTHONPATH (the collection tree) and Ansible
    settings (ANSIBLE_CONFIG naming the clone's collections) removed."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("ANSIBLE_")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return env


def build_wheel(tmp_path: Path) -> Path:
    """``pip wheel`` of a copy of listener/ (an in-tree build would leave build/ in the clone)."""
    src = tmp_path / "listener-src"
    shutil.copytree(ROOT / "listener", src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".mypy_cache"))
    out = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(out), str(src)], check=True, timeout=180)
    wheels = list(out.glob("netconf_callhome-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def extra_bounds(wheel: Path, extra: str) -> Dict[str, SpecifierSet]:
    """{name: specifier} of the wheel's Requires-Dist under ``extra`` (its METADATA, as pip reads it)."""
    with zipfile.ZipFile(wheel) as whl:
        text = whl.read(next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines() if line.startswith("Requires-Dist:")]
    return {r.name: r.specifier for r in reqs if r.marker is not None and r.marker.evaluate({"extra": extra})}


def cli(venv: Path, args: List[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin/callhome-listener")] + args, capture_output=True, text=True,
                          env=env_without_pythonpath(), timeout=60, check=False, **kwargs)


@pytest.mark.timeout(1200)  # five role runs; the first pip-installs ansible-core and ncclient
def test_role_installs_the_wheel_renders_files_idempotently_and_the_listener_runs(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    root = tmp_path / "root"
    # what an earlier version of the role left: a hand-built tree run with PYTHONPATH
    old_tree = root / "opt/netconf-callhome/lib/ansible_collections/netconf/callhome/listener"
    old_tree.mkdir(parents=True)
    (old_tree / "service.py").write_text("# old\n")
    vars_ = {
        "callhome_listener_root": str(root),
        "callhome_listener_manage_user": False,
        "callhome_listener_package": str(wheel),
        "callhome_listener_ssh_binds": ["127.0.0.1:0"],
        "callhome_listener_outbound_ssh_binds": ["127.0.0.1:0"],
        "callhome_listener_password": "device-pw",
        "callhome_listener_log_format": "text",
        "callhome_listener_initial_devices": {"r1": {"ssh_host_keys": ["SHA256:" + "A" * 43]}},
        # offline: the collections make setup extracted from the ansible wheel (no Galaxy, no index)
        "callhome_listener_collections_source": str(DEPS),
    }
    first = run_role(root, vars_)
    assert recap(first.stdout)["failed"] == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert "was laid down but not started: systemd is not PID 1 here" in first.stdout
    assert "DEPRECATION" not in first.stdout
    assert not (root / "opt/netconf-callhome/lib/ansible_collections").exists(), "the old code tree is removed"

    venv = root / "opt/netconf-callhome/venv"
    etc = root / "etc/netconf-callhome"
    state = root / "var/lib/netconf-callhome"
    assert ("Run it with: %s/bin/callhome-listener serve --config %s/listener.yaml" % (venv, etc)) in first.stdout

    # the distribution is a real install in the venv, not the clone's editable one
    where = subprocess.run([str(venv / "bin/python"), "-c",
                            "import importlib.metadata as m, netconf_callhome; "
                            "print(netconf_callhome.__file__); print(m.version('netconf-callhome'))"],
                           capture_output=True, text=True, env=env_without_pythonpath(), cwd=str(tmp_path),
                           timeout=60, check=True).stdout.split()
    assert where[0].startswith(str(venv / "lib")), where
    assert wheel.name.startswith("netconf_callhome-%s-" % where[1]), (wheel.name, where)

    pw = etc / "device-password"
    assert pw.read_text() == "device-pw\n" and oct(pw.stat().st_mode & 0o777) == "0o600"
    trust = state / "trust.json"
    assert oct(trust.stat().st_mode & 0o777) == "0o600" and oct(state.stat().st_mode & 0o777) == "0o700"
    assert json.loads(trust.read_text())["devices"]["r1"]["ssh_host_keys"] == ["SHA256:" + "A" * 43]
    unit = (root / UNIT).read_text()
    exec_start = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == ["ExecStart=%s/bin/callhome-listener serve --config %s/listener.yaml" % (venv, etc)], unit
    assert "PYTHONPATH" not in unit and "Environment=" not in unit
    assert "ReadWritePaths=%s" % state in unit and "User=" not in unit
    assert "device-pw" not in (etc / "listener.yaml").read_text(), "secrets stay out of the configuration"

    # the configuration is valid for the listener's own loader
    from netconf_callhome.config import load_config

    cfg = load_config(str(etc / "listener.yaml"))
    assert cfg.credentials.password_file == str(pw) and cfg.trust_store == str(trust)
    # every kind of bind the role offers reaches the listener (RESTCONF stays off: no client certificate)
    assert cfg.outbound_ssh_binds == ["127.0.0.1:0"] and cfg.restconf_binds == [], cfg

    # the [ansible] extra (ansible-core, ncclient) and the collections, where listener.yaml points:
    # the venv's plugin loader finds ansible.netcommon's netconf plugin there, as the listener's does
    collections = root / "opt/netconf-callhome/collections"
    assert cfg.collections_paths == [str(collections)], cfg.collections_paths
    for fqcn in ("ansible/netcommon", "ansible/utils"):
        manifest = json.loads((collections / "ansible_collections" / fqcn / "MANIFEST.json").read_text())
        shipped = json.loads((DEPS / fqcn / "MANIFEST.json").read_text())
        assert manifest["collection_info"]["version"] == shipped["collection_info"]["version"]
    probe = subprocess.run(
        [str(venv / "bin/python"), "-c",
         "import importlib.metadata as m, sys, ncclient\n"
         "from ansible.plugins.loader import init_plugin_loader, netconf_loader\n"
         "init_plugin_loader(sys.argv[1:])\n"
         "cls = netconf_loader.get('ansible.netcommon.default', class_only=True)\n"
         "print(m.version('ansible-core'), sys.modules[cls.__module__].__file__, m.version('ncclient'))",
         str(collections)],
        capture_output=True, text=True, env=env_without_pythonpath(), cwd=str(tmp_path), timeout=120, check=False)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    core_version, plugin_file, ncclient_version = probe.stdout.split()
    assert core_version and plugin_file.startswith(str(collections / "ansible_collections/ansible/netcommon")), plugin_file
    # within the extra's bounds (listener/pyproject.toml, the one place; requirements.txt names the same
    # extra): a listener host never gets an ansible-core or ncclient the controller's tests did not run
    bounds = extra_bounds(wheel, "ansible")
    assert core_version in bounds["ansible-core"], (core_version, str(bounds["ansible-core"]))
    assert ncclient_version in bounds["ncclient"], (ncclient_version, str(bounds["ncclient"]))
    assert bounds["ansible-core"].contains("2.21.0") and not bounds["ansible-core"].contains("2.22.0")

    # check mode changes nothing, and says what a run would change (a collection file altered);
    # (pip's check mode cannot tell whether a wheel path is installed: that task says "changed")
    collections_task = "Collections of the netconf plugins"
    checked = run_role(root, vars_, check=True)
    assert recap(checked.stdout)["failed"] == 0, checked.stdout[-4000:]
    assert task_status(checked.stdout, collections_task) == "ok", checked.stdout[-4000:]
    altered = collections / "ansible_collections/ansible/netcommon/MANIFEST.json"
    altered.write_text("{}")
    checked = run_role(root, vars_, check=True)
    assert recap(checked.stdout)["failed"] == 0, checked.stdout[-4000:]
    assert task_status(checked.stdout, collections_task) == "changed", checked.stdout[-4000:]
    assert altered.read_text() == "{}"
    repaired = run_role(root, vars_)
    assert recap(repaired.stdout)["failed"] == 0, repaired.stdout[-4000:]
    assert json.loads(altered.read_text())["collection_info"]["name"] == "netcommon"

    # idempotent: nothing changes on a second run (the wheel is already installed); the trust store
    # is never overwritten
    trust.write_text(json.dumps({"version": 1, "devices": {}}) + "\n")
    second = run_role(root, vars_)
    assert recap(second.stdout)["changed"] == 0, second.stdout[-4000:]
    assert json.loads(trust.read_text())["devices"] == {}

    # the unit's command, as systemd would run it: no PYTHONPATH, not from the clone
    argv = exec_start[0][len("ExecStart="):].split()
    log = open(tmp_path / "listener.log", "wb")
    proc = subprocess.Popen(argv, env=env_without_pythonpath(), cwd=str(tmp_path), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    control = "unix:%s" % (state / "control.sock")
    try:
        client = ControlClient(control, timeout=5)
        deadline = time.monotonic() + 30
        while True:
            try:
                status = client.call("status")
                break
            except Exception:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "listener.log").read_text()
                time.sleep(0.2)
        assert status["trust_store"] == str(trust) and status["ssh"]

        # the venv's own callhome-listener talks to it over the control socket
        shown = cli(venv, ["--control", control, "--json", "status"])
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert json.loads(shown.stdout)["trust_store"] == str(trust)
        pending = cli(venv, ["--control", control, "--json", "pending"])
        assert pending.returncode == 0 and json.loads(pending.stdout) == [], pending.stdout + pending.stderr

        stop = cli(venv, ["--control", control, "shutdown"])
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert proc.wait(15) == 0, (tmp_path / "listener.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


def test_role_refuses_pip_options_in_the_package_variable(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run = run_role(root, {"callhome_listener_root": str(root), "callhome_listener_manage_user": False,
                          "callhome_listener_package": "netconf-callhome --find-links /srv/wheels"})
    assert recap(run.stdout)["failed"] == 1, run.stdout[-3000:]
    assert "callhome_listener_package must be ONE pip requirement" in run.stdout
    assert "callhome_listener_pip_extra_args" in run.stdout
    assert not (root / "opt/netconf-callhome/venv").exists()


def test_role_without_install_says_the_venv_lacks_the_distribution(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run = run_role(root, {"callhome_listener_root": str(root), "callhome_listener_manage_user": False,
                          "callhome_listener_install_deps": False,
                          "callhome_listener_pip_packages": ["asyncssh", "PyYAML"]})
    assert recap(run.stdout)["failed"] == 1, run.stdout[-3000:]
    # the deprecated variable is named, with what replaces it
    assert "[DEPRECATION WARNING] netconf.callhome.listener: callhome_listener_pip_packages is deprecated" in run.stdout
    assert "has no working netconf-callhome distribution with its callhome-listener command" in run.stdout
    assert "set callhome_listener_install_deps: true" in run.stdout
    assert not (root / UNIT).exists(), "no unit that points at a missing command"


def test_role_names_a_collection_its_source_lacks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    venv = root / "opt/netconf-callhome/venv"  # an image's venv: the distribution without dependencies
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # --ignore-installed: with --prefix, pip otherwise first UNINSTALLS the netconf-callhome it finds
    # in the running environment (the test venv's editable install), breaking every later test.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--ignore-installed",
                    "--prefix", str(venv), str(build_wheel(tmp_path))], check=True, timeout=180)
    assert subprocess.run([sys.executable, "-c", "import netconf_callhome"], check=False, timeout=60).returncode == 0, (
        "installing into the role's venv removed netconf_callhome from the test environment"
    )
    run = run_role(root, {"callhome_listener_root": str(root), "callhome_listener_manage_user": False,
                          "callhome_listener_install_deps": False,
                          "callhome_listener_collections_source": str(DEPS),
                          "callhome_listener_extra_collections": ["cisco.ios"]})
    assert recap(run.stdout)["failed"] == 1, run.stdout[-3000:]
    assert "could not install the collections into %s/opt/netconf-callhome/collections" % root in run.stdout
    assert "collection cisco.ios is not in %s" % DEPS in run.stdout
    assert not (root / "opt/netconf-callhome/collections/ansible_collections/cisco").exists()


def test_collections_from_tarballs_and_from_the_ansible_wheel(tmp_path: Path) -> None:
    """The role's installer on its other sources: galaxy tarballs (highest version) and the wheel."""
    import tarfile

    helper = ROOT / "roles/listener/files/install_collections.py"
    tarballs = tmp_path / "tarballs"
    tarballs.mkdir()
    version = json.loads((DEPS / "ansible/utils/MANIFEST.json").read_text())["collection_info"]["version"]
    for name in ("ansible-utils-0.0.1.tar.gz", "ansible-utils-%s.tar.gz" % version):
        with tarfile.open(tarballs / name, "w:gz") as archive:
            archive.add(str(DEPS / "ansible/utils"), arcname=".")
    dest = tmp_path / "collections"

    def install(source: Path, names: List[str], check: bool = False) -> Dict[str, Any]:
        spec = {"dest": str(dest), "source": str(source), "collections": names, "check": check}
        done = subprocess.run([sys.executable, str(helper), json.dumps(spec)], capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    first = install(tarballs, ["ansible.utils"])
    assert first["changed"] and first["collections"]["ansible.utils"]["version"] == version
    assert first["collections"]["ansible.utils"]["from"] == "tarball ansible-utils-%s.tar.gz" % version
    assert (dest / "ansible_collections/ansible/utils/MANIFEST.json").is_file()
    assert not install(tarballs, ["ansible.utils"])["changed"]

    wheels = sorted((ROOT / ".cache/ansible-wheel").glob("ansible-*.whl"))
    if not wheels:
        pytest.skip("no ansible wheel in .cache/ansible-wheel (make collections downloads it)")
    checked = install(wheels[-1], ["ansible.netcommon", "junipernetworks.junos"], check=True)
    assert checked["changed"] and not (dest / "ansible_collections/junipernetworks").exists()
    done = install(wheels[-1], ["ansible.netcommon", "junipernetworks.junos"])
    assert done["collections"]["junipernetworks.junos"]["action"] == "installed"
    assert (dest / "ansible_collections/junipernetworks/junos/plugins/netconf/junos.py").is_file()
    assert not install(wheels[-1], ["ansible.netcommon", "junipernetworks.junos"])["changed"]


# -- a node of several sharing PostgreSQL (issue 12 item 7) ------------------------------------------


def fake_venv(root: Path) -> Path:
    """The role's venv as an image that already holds the distribution: its python runs this test
    environment's (where netconf-callhome is installed), its callhome-listener is this one's."""
    venv = root / "opt/netconf-callhome/venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin/python"
    python.write_text("#!/bin/sh\nexec %s \"$@\"\n" % sys.executable)
    python.chmod(0o755)
    (venv / "bin/callhome-listener").symlink_to(Path(sys.executable).parent / "callhome-listener")
    return venv


def test_role_refuses_a_password_in_the_state_url(tmp_path: Path) -> None:
    root = tmp_path / "root"
    fake_venv(root)
    run = run_role(root, {"callhome_listener_root": str(root), "callhome_listener_manage_user": False,
                          "callhome_listener_install_deps": False, "callhome_listener_install_collections": False,
                          "callhome_listener_state_url": "postgresql://node:s3cret-pw@db.example/callhome"})
    assert recap(run.stdout)["failed"] == 1, run.stdout[-3000:]
    assert "carries no password: put the password in callhome_listener_state_password" in run.stdout
    assert "s3cret-pw" not in run.stdout, "the refusal does not echo the password"
    assert not (root / "etc/netconf-callhome/listener.yaml").exists()

    # the node-to-node channel without a shared database (or without its certificates) is refused too
    run = run_role(root, {"callhome_listener_root": str(root), "callhome_listener_manage_user": False,
                          "callhome_listener_install_deps": False, "callhome_listener_install_collections": False,
                          "callhome_listener_cluster_bind": "0.0.0.0:4340", "callhome_listener_cluster_cert": "/c",
                          "callhome_listener_cluster_key": "/k", "callhome_listener_cluster_ca": "/ca"})
    assert recap(run.stdout)["failed"] == 1, run.stdout[-3000:]
    assert "callhome_listener_cluster_bind needs" in run.stdout


@pytest.mark.timeout(300)
def test_role_renders_a_scale_out_node_whose_listener_opens_the_shared_database(tmp_path: Path) -> None:
    """The node variables (state_url, its password, node_name, proxy_protocol_from, control_tcp):
    listener.yaml names files for the secrets and holds none; the listener's loader accepts it;
    the listener started from it comes up on a real PostgreSQL with the password from the file."""
    import secrets

    sys.path.insert(0, str(ROOT / "tests/peers"))
    from postgres_peer import start_or_skip

    peer = start_or_skip()
    proc = None
    try:
        # a node's own database user, with a password a URL or a pgpass line would have to escape
        password = "n0de:pw@/%%?#\\ '%s" % secrets.token_urlsafe(8)
        peer.psql("CREATE ROLE callhome_node LOGIN PASSWORD '%s'" % password.replace("'", "''"))
        peer.psql("CREATE DATABASE callhome OWNER callhome_node")
        token = secrets.token_urlsafe(24)
        pki = tmp_path / "pki"
        pki.mkdir()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-subj", "/CN=node-a", "-days", "1", "-keyout", str(pki / "control.key"),
                        "-out", str(pki / "control.crt")], check=True, capture_output=True, timeout=60)
        root = tmp_path / "root"
        fake_venv(root)
        url = "postgresql://callhome_node@%s:%d/callhome" % (peer.host, peer.port)
        vars_ = {
            "callhome_listener_root": str(root),
            "callhome_listener_manage_user": False,
            "callhome_listener_install_deps": False,
            "callhome_listener_install_collections": False,
            "callhome_listener_ssh_binds": ["127.0.0.1:0"],
            "callhome_listener_log_format": "text",
            "callhome_listener_state_url": url,
            "callhome_listener_state_password": password,
            "callhome_listener_node_name": "node-a",
            "callhome_listener_proxy_protocol_from": ["127.0.0.1", "192.0.2.0/28"],
            "callhome_listener_control_tcp_bind": "127.0.0.1:0",
            "callhome_listener_control_tcp_cert": str(pki / "control.crt"),
            "callhome_listener_control_tcp_key": str(pki / "control.key"),
            "callhome_listener_control_tcp_token": token,
            # the node-to-node channel; a self-signed certificate is its own cluster CA here
            "callhome_listener_cluster_bind": "127.0.0.1:0",
            "callhome_listener_cluster_cert": str(pki / "control.crt"),
            "callhome_listener_cluster_key": str(pki / "control.key"),
            "callhome_listener_cluster_ca": str(pki / "control.crt"),
        }
        first = run_role(root, vars_)
        assert recap(first.stdout)["failed"] == 0, first.stdout[-4000:] + first.stderr[-2000:]
        assert password not in first.stdout and token not in first.stdout, "no_log on the secrets"
        etc = root / "etc/netconf-callhome"
        state = root / "var/lib/netconf-callhome"
        text = (etc / "listener.yaml").read_text()
        assert password not in text and token not in text, "secrets stay out of the configuration"
        for name, secret in (("state-password", password), ("control-token", token)):
            path = etc / name
            assert path.read_text() == secret + "\n" and oct(path.stat().st_mode & 0o777) == "0o600", name

        from netconf_callhome.config import load_config

        cfg = load_config(str(etc / "listener.yaml"))
        assert cfg.state_url == url and cfg.state_password_file == str(etc / "state-password")
        assert cfg.node_name == "node-a" and cfg.proxy_protocol_from == ["127.0.0.1", "192.0.2.0/28"]
        assert (cfg.control_tcp.bind, cfg.control_tcp.token_file) == ("127.0.0.1:0", str(etc / "control-token"))
        assert (cfg.cluster.bind, cfg.cluster.ca) == ("127.0.0.1:0", str(pki / "control.crt"))
        assert recap(run_role(root, vars_).stdout)["changed"] == 0, "idempotent"

        # the node itself, from the unit's command: it opens the database with the file's password
        log_path = tmp_path / "node.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([str(root / "opt/netconf-callhome/venv/bin/callhome-listener"), "serve",
                                     "--config", str(etc / "listener.yaml")], env=child_env(), cwd=str(tmp_path),
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = ControlClient("unix:%s" % (state / "control.sock"), timeout=5)
        deadline = time.monotonic() + 60
        while True:
            try:
                status = client.call("status")
                break
            except Exception:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
        assert status["ssh"], status
        seen = peer.psql("SELECT usename FROM pg_stat_activity WHERE application_name = 'callhome-listener node-a'")
        assert seen and {row[0] for row in seen} == {"callhome_node"}, seen
        assert peer.psql("SELECT node FROM schema_version ORDER BY version LIMIT 1", "callhome") == [["node-a"]]
        logged = log_path.read_text()
        assert "event=state.opened" in logged and password not in logged, logged[-2000:]
        assert "event=cluster.listening" in logged, logged[-2000:]
        assert client.call("shutdown") is not None
        assert proc.wait(20) == 0, log_path.read_text()[-3000:]
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        peer.stop()

# SPDX-License-Identifier: GPL-3.0-or-later
"""Real ``ansible-playbook`` runs through ``netconf.callhome.netconf`` against simulated devices.

Why: the connection plugin lives inside Ansible's persistent-connection machinery
(``ansible-connection`` processes, JSON-RPC, netconf sub-plugins). Only a real playbook run proves
that ``ansible.netcommon.netconf_get`` / ``netconf_rpc`` / ``netconf_config`` work over a leased
call-home session, that waiting and failing behave, and that the embedded listener starts.
The listener runs as its real daemon (``python -m ...listener serve``) on 127.0.0.1, port 0.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
PEERS = REPO / "tests" / "peers"
PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
VENV_BIN = Path(sys.executable).parent
COLLECTIONS = REPO / ".collections"
sys.path.insert(0, str(PEERS))
sys.path.insert(0, str(COLLECTIONS))

from harness import Fleet, wait_until  # noqa: E402

from netconf_callhome.control.client import ControlClient  # noqa: E402
from netconf_callhome.errors import CallHomeError  # noqa: E402

pytestmark = pytest.mark.timeout(300)
PASSWORD = "callhome-test-pw"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path, **extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PATH": "%s:%s" % (VENV_BIN, env.get("PATH", "")),
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "NETCONF_CALLHOME_HOME": str(home),
            "ANSIBLE_PERSISTENT_CONTROL_PATH_DIR": str(home / "pc"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        }
    )
    env.pop("NETCONF_CALLHOME_LISTENER", None)
    env.pop("NETCONF_CALLHOME_TOKEN", None)
    env.update(extra)
    return env


def _write_config(home: Path, ssh_port: int) -> Path:
    (home / "pw").write_text(PASSWORD)
    cfg = home / "listener.yml"
    cfg.write_text(
        "home: %s\nssh_binds: ['127.0.0.1:%d']\ntls_binds: []\n"
        "credentials: {username: netconf, password_file: %s}\n" % (home, ssh_port, home / "pw")
    )
    return cfg


def _sims(home: Path) -> Fleet:
    """The simulated devices of a listener home (harness.Fleet, as the other integration tests
    have them): keys under ``home/keys``, this module's password."""
    return Fleet(home / "sims", PASSWORD, keys_dir=home / "keys", password_file=home / "pw")


def _client(home: Path) -> ControlClient:
    return ControlClient("unix:%s" % (home / "control.sock"), timeout=10)


def _wait_ping(home: Path, timeout: float = 20.0) -> Dict[str, Any]:
    return dict(wait_until(lambda: _client(home).call("ping", timeout=2), timeout, "the listener to answer ping",
                           ignore=(CallHomeError,)))


class Listener:
    """The listener daemon in a child process; stopped with the ``shutdown`` operation."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.ssh_port = _free_port()
        self.config = _write_config(home, self.ssh_port)
        self.log = open(home / "listener.out", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netconf_callhome", "serve", "--config", str(self.config)],
            stdout=self.log, stderr=subprocess.STDOUT, env=_env(home),
        )
        _wait_ping(home)

    def call(self, op: str, **args: Any) -> Any:
        return _client(self.home).call(op, **args)

    def wait_connected(self, names: List[str], timeout: float = 30.0) -> None:
        for name in names:
            self.call("wait", device=name, wait=timeout, timeout=timeout + 5)

    def stop(self) -> None:
        try:
            self.call("shutdown")
            self.proc.wait(15)
        except (CallHomeError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("callhome")
    path.chmod(0o700)
    return path


@pytest.fixture(scope="module")
def listener(home: Path) -> Iterator[Listener]:
    lst = Listener(home)
    yield lst
    lst.stop()


@pytest.fixture(scope="module")
def called_home(listener: Listener, home: Path) -> Iterator[List[str]]:
    """Three enrolled simulated devices, each from its own loopback address, already called home
    (their names; one simulator process for the module)."""
    names = ["dev0001", "dev0002", "dev0003"]
    sims = _sims(home)
    sims.enroll(home / "trust.json", names)
    listener.call("reload")
    sim = sims.simulator(listener.ssh_port, 3, "--name-prefix", "dev", wait_connected=3)
    try:
        listener.wait_connected(names)
        yield names
    finally:
        sim.stop()


def _inventory(home: Path, hosts: List[str], name: str, **hostvars: Any) -> Path:
    inv = {
        "all": {
            "vars": dict({"ansible_connection": "netconf.callhome.netconf"}, **hostvars),
            "hosts": {h: {} for h in hosts},
        }
    }
    path = home / ("%s.json" % name)
    path.write_text(json.dumps(inv))
    return path


def _playbook(home: Path, playbook: str, inventory: Path, *args: str, env: Optional[Dict[str, str]] = None,
              timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOKS / playbook), *args]
    return subprocess.run(cmd, env=env or _env(home), capture_output=True, text=True, timeout=timeout, cwd=str(home),
                          check=False)


def _recap(output: str) -> Dict[str, Dict[str, int]]:
    """PLAY RECAP lines -> {host: {ok: n, failed: n, ...}}."""
    out: Dict[str, Dict[str, int]] = {}
    started = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            started = True
            continue
        if started and ":" in line:
            host, _sep, rest = line.partition(":")
            out[host.strip()] = {k: int(v) for k, v in (kv.split("=") for kv in rest.split())}
    return out


def test_netconf_get_rpc_config_on_several_hosts_with_forks(home: Path, called_home: List[str]) -> None:
    inv = _inventory(home, called_home, "ops", new_location="rack-42")
    started = time.monotonic()
    res = _playbook(home, "netconf_ops.yml", inv, "--forks", "3")
    elapsed = time.monotonic() - started
    assert res.returncode == 0, res.stdout + res.stderr
    recap = _recap(res.stdout)
    assert sorted(recap) == sorted(called_home)
    for host in called_home:
        assert recap[host]["failed"] == 0 and recap[host]["unreachable"] == 0, res.stdout
        assert recap[host]["ok"] == 6 and recap[host]["changed"] == 1, res.stdout
    assert elapsed < 120, "three hosts took %.1f s" % elapsed


def test_device_that_calls_late_is_waited_for(home: Path, listener: Listener) -> None:
    name = "late0001"
    sims = _sims(home)
    sims.enroll(home / "trust.json", [name])
    listener.call("reload")
    inv = _inventory(home, [name], "late", ansible_callhome_timeout=90, ansible_callhome_progress_interval=1)
    proc = subprocess.Popen(
        [str(VENV_BIN / "ansible-playbook"), "-v", "-i", str(inv), str(PLAYBOOKS / "get_running.yml")],
        env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(home),
    )
    sim = None
    try:
        # Deliberate delay, part of the scenario (a device that calls late): the device must dial
        # only after the playbook has started waiting, and nothing observable marks that moment.
        time.sleep(4)
        assert proc.poll() is None, proc.communicate()[0]
        assert listener.call("device", device=name)["status"] == "never-seen"
        sim = sims.simulator(listener.ssh_port, 1, "--name-prefix", "late", wait_connected=1)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if sim is not None:
            sim.stop()
    assert proc.returncode == 0, out
    assert "waiting up to 90 s for device late0001 to call home" in out, out
    assert "still waiting for late0001" in out, out
    assert _recap(out)[name]["ok"] == 2


def test_device_that_never_calls_fails_clearly(home: Path, listener: Listener) -> None:
    name = "ghost0001"
    _sims(home).enroll(home / "trust.json", [name])  # enrolled, but no simulator ever runs for it
    listener.call("reload")
    inv = _inventory(home, [name], "ghost", ansible_callhome_timeout=3)
    started = time.monotonic()
    res = _playbook(home, "get_running.yml", inv)
    assert res.returncode != 0
    assert "device 'ghost0001' has not called home within 3 s" in res.stdout, res.stdout
    # like an SSH host that does not answer: the host is unreachable, with the listener's reason
    assert _recap(res.stdout)[name]["unreachable"] == 1
    assert time.monotonic() - started < 60


def test_unenrolled_device_never_gets_a_session(home: Path, listener: Listener) -> None:
    name = "rogue0001"
    sims = _sims(home)
    keys = sims.keys([name], keys_dir=home / "rogue-keys")
    sim = sims.simulator(listener.ssh_port, 1, "--name-prefix", "rogue", keys_dir=home / "rogue-keys")
    try:
        fingerprint = keys[name].get_fingerprint("sha256")
        wait_until(lambda: any(p["fingerprint"] == fingerprint for p in listener.call("pending")), 20,
                   "the rogue key to show up as pending")
        res = _playbook(home, "get_running.yml", _inventory(home, [name], "rogue", ansible_callhome_timeout=2))
    finally:
        sim.stop()
    assert res.returncode != 0
    assert "not enrolled and has never called home" in res.stdout, res.stdout
    assert _recap(res.stdout)[name]["unreachable"] == 1
    assert sim.count("READY") == 0  # no NETCONF session was ever opened on it


def test_collection_modules(home: Path, called_home: List[str]) -> None:
    inv = home / "localhost.ini"
    inv.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    res = _playbook(home, "modules.yml", inv, "-e", json.dumps({"wait_devices": called_home}))
    assert res.returncode == 0, res.stdout + res.stderr
    assert _recap(res.stdout)["localhost"]["ok"] == 4


def test_registry_inventory_plugin(home: Path, called_home: List[str]) -> None:
    src = home / "fleet.callhome.yml"
    src.write_text(
        "plugin: netconf.callhome.registry\nstatuses: [connected]\n"
        "filter: \"starts_with(name, 'dev')\"\n"
        "keyed_groups:\n  - key: callhome_transport\n    prefix: via\n"
    )
    res = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", str(src), "--list"],
        env=_env(home), capture_output=True, text=True, timeout=60, cwd=str(home), check=False,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert sorted(data["callhome_connected"]["hosts"]) == called_home
    assert sorted(data["via_ssh"]["hosts"]) == called_home
    hostvars = data["_meta"]["hostvars"]["dev0001"]
    assert _plain(hostvars["ansible_connection"]) == "netconf.callhome.netconf"
    assert _plain(hostvars["callhome_device"]) == "dev0001"
    assert "ghost0001" not in hostvars and "late0001" not in data["_meta"]["hostvars"]


def _plain(value: Any) -> Any:
    """ansible-core 2.19 prints inventory-plugin strings as ``{"__ansible_unsafe": value}``."""
    return value["__ansible_unsafe"] if isinstance(value, dict) and "__ansible_unsafe" in value else value


def test_embedded_default_starts_a_listener(tmp_path: Path) -> None:
    home = tmp_path / "embedded"
    home.mkdir(mode=0o700)
    ssh_port = _free_port()
    cfg = _write_config(home, ssh_port)
    name = "emb0001"
    sims = _sims(home)
    sims.enroll(home / "trust.json", [name])
    with pytest.raises(CallHomeError):
        _client(home).call("ping", timeout=1)  # nothing runs there yet
    sim = sims.simulator(ssh_port, 1, "--name-prefix", "emb", "--retry", "0.3")
    try:
        inv = _inventory(home, [name], "emb", ansible_callhome_timeout=60, ansible_callhome_listener_config=str(cfg),
                         ansible_callhome_idle_exit=120)
        res = _playbook(home, "get_running.yml", inv, "-v")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "started an embedded call-home listener" in res.stdout, res.stdout
        answer = _client(home).call("ping", timeout=5)  # it outlives the playbook
        assert answer["pid"] > 0
    finally:
        sim.stop()
        try:
            pid = _client(home).call("ping", timeout=2)["pid"]
            _client(home).call("shutdown", timeout=5)
            try:
                wait_until(lambda: not _pid_alive(pid), 15, "the embedded listener to exit")
            except AssertionError:
                os.kill(pid, 9)
        except CallHomeError:
            pass
    assert (home / "listener.log").exists()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); its /proc status says so
    try:
        return "\nState:\tZ" not in Path("/proc/%d/status" % pid).read_text()
    except OSError:
        return False

# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers and fixtures shared by the integration tests: a real listener process driven through its CLI and
control socket, and the simulated devices of ``tests/peers/simulator.py`` in their own process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Coroutine, Dict, Iterator, List, Optional, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "tests" / "peers"
if str(PEERS) not in sys.path:
    sys.path.insert(0, str(PEERS))

from netconf_callhome.control.client import ControlClient  # noqa: E402
from netconf_callhome.errors import DeviceNotFoundError, ListenerUnreachableError  # noqa: E402
from netconf_callhome.policy.trust_store import (  # noqa: E402
    TrustStore,
    add_identity,
    set_credentials,
)

LISTENER_CMD = [sys.executable, "-m", "netconf_callhome"]
T = TypeVar("T")
#: The password the simulated devices accept (``Fleet``, and ``sim_devices`` of tests/conftest.py).
SIM_PASSWORD = "sim-secret"


class LoopThread:
    """An asyncio event loop running in a daemon thread; ``run`` executes a coroutine on it and
    waits for its result. The one loop-in-a-thread of the tests (tests/conftest.py's listener
    and simulated devices, the ``loop_thread`` fixture, test-local servers)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: "Coroutine[Any, Any, T]", timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(20)
        if not self.thread.is_alive():
            self.loop.close()


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 20.0,
    what: str = "condition",
    *,
    interval: float = 0.05,
    ignore: "tuple[type[BaseException], ...]" = (),
    detail: Optional[Callable[[], str]] = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail naming ``what``.

    Exceptions listed in ``ignore`` count as "not yet" (a listener still starting). ``detail``
    adds context to the failure (a log tail, the last record seen).
    """
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last_exc, value = exc, None
        if value:
            return value
        if time.monotonic() >= deadline:
            msg = "timed out after %.1f s waiting for %s" % (timeout, what)
            if last_exc is not None:
                msg += " (last error: %s: %s)" % (type(last_exc).__name__, last_exc)
            if detail is not None:
                msg += "\n" + detail()
            raise AssertionError(msg)
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


class ListenerProcess:
    """``callhome-listener serve`` in a child process, logs captured, stopped at the end."""

    def __init__(self, home: Path, args: List[str]) -> None:
        self.home = home
        self.args = args
        self.log_path = home / "listener.log"
        self.proc: Optional[subprocess.Popen] = None
        self.control = ControlClient("unix:%s" % (home / "control.sock"), timeout=30)

    def start(self, timeout: float = 20.0) -> "ListenerProcess":
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            LISTENER_CMD + ["serve", "--home", str(self.home)] + self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,
        )
        log.close()
        proc = self.proc

        def answers() -> Any:
            if proc.poll() is not None:
                raise RuntimeError("listener exited (rc=%s):\n%s" % (proc.poll(), self.log()))
            try:
                return self.control.call("status", timeout=2)
            except ListenerUnreachableError:
                return None  # not listening yet

        self.status = wait_until(answers, timeout, "the listener's control socket", detail=self.log)
        return self

    @property
    def ssh_port(self) -> int:
        return int(self.status["ssh"][0].rsplit(":", 1)[1])

    @property
    def tls_port(self) -> int:
        return int(self.status["tls"][0].rsplit(":", 1)[1])

    @property
    def restconf_port(self) -> int:
        return int(self.status["restconf"][0].rsplit(":", 1)[1])

    @property
    def callhome_port(self) -> int:
        """The first single call-home port (``callhome_binds``)."""
        return int(self.status["callhome"][0].rsplit(":", 1)[1])

    def call(self, op: str, **args: Any) -> Any:
        return self.control.call(op, **args)

    def cli(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(
            LISTENER_CMD + ["--control", "unix:%s" % (self.home / "control.sock")] + list(argv),
            capture_output=True,
            check=False,
            text=True,
            env=child_env(),
            timeout=120,
        )
        if check and res.returncode != 0:
            raise AssertionError("CLI %s failed (%d): %s" % (argv, res.returncode, res.stderr))
        return res

    def wait_device(self, name: str, status: str, timeout: float = 20.0) -> Dict[str, Any]:
        last: Dict[str, Any] = {}

        def reached() -> Optional[Dict[str, Any]]:
            try:
                rec = self.call("device", device=name)
            except DeviceNotFoundError:
                return None  # not seen yet
            last.clear()
            last.update(rec)
            return rec if rec.get("status") == status else None

        return wait_until(
            reached, timeout, "device %s to reach status %s" % (name, status),
            detail=lambda: "last record %s\nlog:\n%s" % (last, self.log()[-3000:]),
        )

    def wait_log(self, text: str, timeout: float = 20.0) -> str:
        """Poll the listener's log until ``text`` appears in it; return the log."""
        return wait_until(
            lambda: text in self.log() and self.log(), timeout, "%r in the listener log" % text,
            detail=lambda: self.log()[-3000:],
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Fleet:
    """Simulated devices in their own process (``simulator.py``) and their enrollment, for tests
    of a listener process. The ``fleet`` fixture shares its keys and password file with
    ``sim_devices`` (tests/conftest.py), which runs the same simulator in a thread."""

    def __init__(
        self,
        base: Path,
        password: str = SIM_PASSWORD,
        *,
        keys_dir: Optional[Path] = None,
        password_file: Optional[Path] = None,
    ) -> None:
        self.base = base
        self.keys_dir = keys_dir or base / "keys"
        self.password = password
        base.mkdir(parents=True, exist_ok=True)
        if password_file is None:
            password_file = base / "device-password"
            password_file.write_text(password + "\n")
            os.chmod(password_file, 0o600)
        self.password_file = password_file

    def keys(self, names: List[str], keys_dir: Optional[Path] = None) -> Dict[str, Any]:
        import simulator  # tests/peers

        return simulator.ensure_keys(keys_dir or self.keys_dir, names)

    def enroll(self, trust_path: Path, names: List[str], keys_dir: Optional[Path] = None) -> None:
        keys = self.keys(names, keys_dir)
        store = TrustStore(str(trust_path))

        def mutate(data: Dict[str, Any]) -> None:
            for name in names:
                add_identity(data, name, kind="ssh_host_keys", value=keys[name].export_public_key().decode().strip())

        store.update(mutate)

    def simulator(
        self,
        port: int,
        count: int,
        *extra: str,
        keys_dir: Optional[Path] = None,
        wait_connected: int = 0,
        timeout: float = 60.0,
    ):
        import simulator

        args = [
            "--listener",
            "127.0.0.1:%d" % port,
            "--count",
            str(count),
            "--keys-dir",
            str(keys_dir or self.keys_dir),
            "--user",
            "netconf",
            "--password",
            self.password,
            "--retry",
            "0.2",
        ] + list(extra)
        return simulator.start_simulator_process(args, wait_connected=wait_connected, timeout=timeout, env=child_env())


def enroll(
    home: Path,
    device: str,
    *,
    ssh_key: Optional[str] = None,
    tls_fp: Optional[str] = None,
    identity: Optional[str] = None,
    username: str = "netconf",
    private_key: Optional[Path] = None,
) -> None:
    """Enroll one device's identity (and its login key) in the trust store under ``home``."""

    def mutate(data: Dict[str, Any]) -> None:
        if ssh_key:
            add_identity(data, device, kind="ssh_host_keys", value=ssh_key)
        if tls_fp:
            add_identity(data, device, kind="tls_fingerprints", value=tls_fp)
        if identity:
            add_identity(data, device, kind="tls_identities", value=identity)
        if private_key:
            set_credentials(data, device, {"username": username, "private_key_file": str(private_key)})

    TrustStore(str(home / "trust.json")).update(mutate)


@pytest.fixture(scope="module")
def device_binary() -> Path:
    """Build the libnetconf2 peer once per module; where that is impossible: skip with make's
    output, or fail where peers are required (tests/peers/peer_availability.py)."""
    from lnc2_peer import build_device
    from peer_availability import peer_or_skip

    return peer_or_skip(build_device, "the libnetconf2 device (lnc2-device)")


@pytest.fixture
def haproxy() -> Iterator[Any]:
    """A factory: ``haproxy(backends, **options)`` starts Debian's HAProxy (tests/peers/haproxy_peer.py)
    in front of ``backends``; all are stopped at the end."""
    from haproxy_peer import HAProxyPeer
    from peer_availability import peer_or_skip

    started: List[Any] = []

    def make(backends: List[Any], **options: Any) -> Any:
        peer = peer_or_skip(lambda: HAProxyPeer(backends, **options), "HAProxy")
        started.append(peer)
        return peer.start()

    yield make
    for peer in started:
        peer.stop()


def cluster_certs(directory: Path, names: List[str]) -> Dict[str, Dict[str, str]]:
    """A cluster CA (trustme) and one certificate per node for the node-to-node channel
    (serverAuth + clientAuth: each node both dials and answers): ``{node: {cert, key, ca}}``, the
    ``cluster:`` options of each node's listener.yml besides ``bind``."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_path = directory / "cluster-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    out = {}
    for name in names:
        cert = ca.issue_cert(name, "127.0.0.1")
        cert_path, key_path = directory / ("%s.pem" % name), directory / ("%s.key" % name)
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        os.chmod(key_path, 0o600)
        out[name] = {"cert": str(cert_path), "key": str(key_path), "ca": str(ca_path)}
    return out


@pytest.fixture
def fleet(tmp_path: Path, sim_keys_dir: Path, device_password: Path) -> Fleet:
    """Simulated devices as processes, with the identities (``sim_keys_dir``) and the password
    file (``device_password``) of tests/conftest.py's ``sim_devices``."""
    return Fleet(tmp_path / "fleet", keys_dir=sim_keys_dir, password_file=device_password)


@pytest.fixture
def listener_factory(tmp_path: Path, fleet: Fleet) -> Iterator[Any]:
    started: List[ListenerProcess] = []

    def make(
        *extra: str, home: Optional[Path] = None, ssh_port: int = 0, password_file: Optional[Path] = None
    ) -> ListenerProcess:
        args = [
            "--ssh",
            "127.0.0.1:%d" % ssh_port,
            "--username",
            "netconf",
            "--password-file",
            str(password_file or fleet.password_file),
            "--keepalive-interval",
            "1",
            "--keepalive-count-max",
            "2",
            "--handshake-timeout",
            "3",
            "--log-level",
            "INFO",
        ] + list(extra)
        lp = ListenerProcess(home or (tmp_path / "home"), args)
        started.append(lp)
        return lp

    yield make
    for lp in started:
        lp.stop()


@contextlib.contextmanager
def running(sim: Any) -> Iterator[Any]:
    try:
        yield sim
    finally:
        sim.stop()


def ncclient_over_lease(control: ControlClient, device: str, wait: float = 10.0):
    """A real ncclient Manager over a lease, the way the connection plugin builds it."""
    from ncclient.devices.default import DefaultDeviceHandler
    from ncclient.manager import Manager
    from ncclient.transport.unixSocket import UnixSocketSession

    sock, info = control.lease(device, wait=wait)
    handler = DefaultDeviceHandler()
    session = UnixSocketSession(handler)
    session._socket = sock
    session._connected = True
    session._post_connect()
    return Manager(session, handler, timeout=30), info


def read_json_lines(text: str) -> List[Dict[str, Any]]:
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]

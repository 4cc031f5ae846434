# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures shared by the unit and the integration tests.

``listener_in_thread``  a real :class:`~netconf_callhome.service.CallHomeListener` on its own event
                        loop in a background thread: temporary home, SSH on 127.0.0.1 port 0, TLS
                        off, a control client on its Unix socket. Built only through the public
                        surface (``load_config``, ``CallHomeListener(config)``, ``start``/``stop``).
``sim_devices``         simulated devices (``tests/peers/simulator.py``) calling home to such a
                        listener from their own event loop thread, optionally enrolled first.
``wait_until``          the polling helper of ``tests/integration/harness.py``: tests poll for a
                        condition, they never sleep a fixed time hoping it holds.
``loop_thread``         an asyncio loop in a daemon thread (``harness.LoopThread``, the one that
                        runs the listener and the simulated devices here too), closed at teardown.
``device_password``,    the simulated devices' password file and host keys; ``sim_devices`` (in a
``sim_keys_dir``        thread) and the integration tests' ``fleet`` (``harness.Fleet``: processes)
                        both use them, so a device name is one identity whichever runs it.
``postgres``            a PostgreSQL server of Debian's packages (``tests/peers/postgres_peer.py``),
                        one per test module (tests that halt it cannot leak into other modules).

A missing peer (``tests/peers/peer_availability.py``) skips a test where peers are optional and
fails it where they are required (``CALLHOME_REQUIRE_PEERS=1``, set by the Makefile's test
targets, or ``CI``): :func:`peer_availability.peer_or_skip` does it for the fixtures, and the
``pytest_runtest_makereport`` hook below for a test that turns a ``PeerUnavailable`` into
``pytest.skip`` by hand.

Both fixtures are factories so that a test can shape the listener or the fleet; everything they
start is stopped at teardown, and everything they write is under the test's ``tmp_path``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Coroutine, Dict, Iterator, List, Optional, TypeVar

import pytest

TESTS = Path(__file__).resolve().parent
for _path in (TESTS / "integration", TESTS / "peers"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from harness import SIM_PASSWORD, LoopThread  # noqa: E402  (tests/integration, on the path above)
from harness import wait_until as _wait_until  # noqa: E402
from peer_availability import REQUIRE_ENV, PeerUnavailable, peers_required  # noqa: E402  (tests/peers)

T = TypeVar("T")


class ListenerThread:
    """A started listener: ``address``, ``control`` (a ControlClient), ``call``, ``ssh_port``."""

    def __init__(self, home: Path, overrides: Dict[str, Any]) -> None:
        from netconf_callhome.config import load_config
        from netconf_callhome.control.client import ControlClient

        self.home = home
        self.config = load_config(None, dict({"home": str(home)}, **overrides))
        self.address = "unix:%s" % self.config.control_socket
        self.control = ControlClient(self.address, timeout=30)
        self.listener: Any = None
        self._loop = LoopThread("listener-%s" % home.name)
        try:
            self._loop.run(self._start())
        except BaseException:
            self._loop.close()
            raise

    async def _start(self) -> None:
        from netconf_callhome.service import CallHomeListener

        listener = CallHomeListener(self.config)  # on the loop that will run it
        await listener.start()
        self.listener = listener

    @property
    def ssh_port(self) -> int:
        return int(self.call("status")["ssh"][0].rsplit(":", 1)[1])

    def call(self, op: str, **args: Any) -> Any:
        return self.control.call(op, **args)

    def run(self, coro: "Coroutine[Any, Any, T]", timeout: float = 30.0) -> T:
        """Run a coroutine on the listener's loop (for what the control protocol does not expose)."""
        return self._loop.run(coro, timeout)

    def stop(self) -> None:
        if self.listener is not None:
            listener, self.listener = self.listener, None
            self._loop.run(listener.stop(), 30)
        self._loop.close()


def _peer_cause(exc: Optional[BaseException]) -> Optional[BaseException]:
    """The :class:`PeerUnavailable` a skip was raised while handling (``__context__``), if any."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, PeerUnavailable):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: "pytest.CallInfo[None]") -> Iterator[None]:
    """Where peers are required, a skip caused by a missing peer is a failure.

    Why here as well as in ``peer_or_skip``: a test that catches ``PeerUnavailable`` and calls
    ``pytest.skip`` itself would otherwise let ``make test`` pass without its peer.
    """
    outcome: Any = yield
    report = outcome.get_result()
    if not report.skipped or call.excinfo is None or not peers_required():
        return
    cause = _peer_cause(call.excinfo.value)
    if cause is not None:
        report.outcome = "failed"
        report.longrepr = "a required peer is unavailable (%s or CI is set): %s: %s" % (
            REQUIRE_ENV,
            type(cause).__name__,
            cause,
        )


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """``wait_until(predicate, timeout, what)``: poll until truthy, fail naming ``what``."""
    return _wait_until


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    from postgres_peer import start_or_skip

    peer = start_or_skip()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    """An asyncio event loop in a daemon thread (``run(coro)`` from the test's thread), closed at teardown."""
    loop = LoopThread("test-loop")
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture
def sim_keys_dir(tmp_path: Path) -> Path:
    """Where the simulated devices' host keys persist (one key per device name per test)."""
    return tmp_path / "sim-keys"


@pytest.fixture
def device_password(tmp_path: Path) -> Path:
    """The password the simulated devices accept, in a file the listener's credentials name."""
    path = tmp_path / "device-password"
    path.write_text(SIM_PASSWORD + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def listener_in_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device_password: Path
) -> Iterator[Callable[..., ListenerThread]]:
    """Factory: ``listener_in_thread(home=None, **config_overrides)`` -> a started ListenerThread.

    Defaults: home under ``tmp_path``, SSH on 127.0.0.1 port 0, no TLS, username ``netconf`` with
    the simulated devices' password. ``NETCONF_CALLHOME_HOME`` points at the home, so code that
    falls back to the default home (the embedded listener) never touches the real one.
    """
    started: List[ListenerThread] = []

    def make(home: Optional[Path] = None, **overrides: Any) -> ListenerThread:
        home = home or tmp_path / ("home" if not started else "home%d" % len(started))
        home.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv("NETCONF_CALLHOME_HOME", str(home))
        options: Dict[str, Any] = {
            "ssh_binds": ["127.0.0.1:0"],
            "tls_binds": [],
            "credentials": {"username": "netconf", "password_file": str(device_password)},
            "handshake_timeout": 10,
        }
        options.update(overrides)
        lst = ListenerThread(home, options)
        started.append(lst)
        return lst

    yield make
    for lst in reversed(started):
        lst.stop()


class SimFleet:
    """Simulated devices calling home, run by :class:`simulator.Simulator` on their own loop."""

    def __init__(self, listener: ListenerThread, names: List[str], keys_dir: Path, options: Dict[str, Any]) -> None:
        import simulator  # tests/peers

        self.names = names
        self.keys = simulator.ensure_keys(keys_dir, names)
        self._options = dict(
            listener=("127.0.0.1", listener.ssh_port),
            count=len(names),
            keys_dir=keys_dir,
            user="netconf",
            password=SIM_PASSWORD,
            retry=0.2,
            login_timeout=20.0,
            connect_timeout=20.0,
        )
        self._options.update(options)
        self._loop = LoopThread("sim-devices")
        self.sim: Any = None

    def public_key(self, name: str) -> str:
        import simulator

        return simulator.public_line(self.keys[name])

    def fingerprint(self, name: str) -> str:
        return str(self.keys[name].get_fingerprint("sha256"))

    def start(self) -> "SimFleet":
        import simulator

        async def start() -> Any:
            sim = simulator.Simulator(simulator.SimConfig(**self._options), keys=self.keys)
            await sim.start()
            return sim

        self.sim = self._loop.run(start())
        return self

    def wait_for(self, kind: str, count: int = 1, *, name: Optional[str] = None, timeout: float = 30.0) -> None:
        """Wait for ``count`` simulator events (CONNECTED, READY, DISCONNECTED...)."""
        self._loop.run(self.sim.wait_for(kind, count, name=name, timeout=timeout), timeout + 5)

    def count(self, kind: str, name: Optional[str] = None) -> int:
        return int(self.sim.count_events(kind, name))

    def stop(self) -> None:
        if self.sim is not None:
            sim, self.sim = self.sim, None
            self._loop.run(sim.stop(), 30)
        self._loop.close()


@pytest.fixture
def sim_devices(sim_keys_dir: Path) -> Iterator[Callable[..., SimFleet]]:
    """Factory: ``sim_devices(listener, count=1, enroll=True, wait_connected=True, **SimConfig)``.

    Devices are named sim0001...; their host keys persist under ``sim_keys_dir`` (pass
    ``keys_dir`` for a second identity). ``enroll`` puts their keys in the listener's trust store
    through the control protocol first; ``wait_connected`` waits until every device is CONNECTED
    (authenticated SSH; the listener's NETCONF session may still be opening).
    """
    fleets: List[SimFleet] = []

    def make(
        listener: ListenerThread,
        count: int = 1,
        *,
        enroll: bool = True,
        wait_connected: bool = True,
        keys_dir: Optional[Path] = None,
        **options: Any,
    ) -> SimFleet:
        names = ["sim%04d" % i for i in range(1, count + 1)]
        fleet = SimFleet(listener, names, keys_dir or sim_keys_dir, options)
        fleets.append(fleet)
        if enroll:
            for name in names:
                listener.call("enroll", device=name, kind="ssh_host_keys", value=fleet.public_key(name))
        fleet.start()
        if wait_connected:
            fleet.wait_for("CONNECTED", count)
        return fleet

    yield make
    for fleet in reversed(fleets):
        fleet.stop()

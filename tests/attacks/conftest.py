# SPDX-License-Identifier: GPL-3.0-or-later
"""The attack suite's harness (issue 10): a real listener process under attack, canaries, meters.

``attack_listener``  factory: ``callhome-listener serve`` (``python -m netconf_callhome serve``) in
                     a child process, configured by a YAML file in a home under ``tmp_path``, its
                     ports picked free (port 0, read back from ``status``), JSON logs in
                     ``HOME/listener.log``, a :class:`ResourceSampler` on its pid. Built on
                     ``harness.ListenerProcess`` of the integration tests.
``canaries``         factory: enrolled simulated devices (the ``sim_devices`` fixture of
                     ``tests/conftest.py``) leased in a loop for the whole attack, every lease
                     running a hello exchange and a ``<get-config>``; each failure is recorded.
``tls_pki``          a device CA, the listener's client certificate and device certificates.
``device_process``   factory: a device of ``tests/attacks/devices.py`` in a child process.

Every test ends with :func:`verdict`: no session handed to a key that is not enrolled for its
device (listener log and registry), no canary failure, and the listener's peak RSS growth and CPU
time since the canaries started within bounds (``attacklib.RSS_GROWTH``, ``CPU_BASE`` +
``CPU_SHARE`` x wall time, unless the test passes its own). Every test is bounded in time: each
file sets ``pytestmark = pytest.mark.timeout(...)``, and a test without one gets
:data:`TEST_TIMEOUT` here. Everything started here is stopped in finalizers; everything written
is under ``tmp_path``.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List, Sequence

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from attacklib import AttackListener, CanaryLoop, base_options  # noqa: E402  (tests/attacks)
from harness import wait_until  # noqa: E402  (tests/integration, put on the path by attacklib)

# The bound on one attack, set by every test file and applied here to any test that has none: a
# few times the slowest attack's run on the loaded 2-core machine (the whole suite takes ~5 min).
TEST_TIMEOUT = 300


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


@pytest.fixture
def attack_listener(tmp_path: Path, device_password: Path) -> Iterator[Callable[..., AttackListener]]:
    """Factory: ``attack_listener(name="listener", start=True, **options)`` -> a started listener.

    Options are the listener's configuration keys (merged over the suite's base: SSH on
    127.0.0.1 port 0, TLS off, JSON logs, handshake_timeout 5 s, max_message_bytes 32 MiB).
    """
    started: List[AttackListener] = []

    def make(name: str = "listener", start: bool = True, **options: Any) -> AttackListener:
        home = tmp_path / name
        home.mkdir(parents=True, exist_ok=True)
        config = base_options(device_password)
        config.update(options)
        path = tmp_path / ("%s.yml" % name)
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        lp = AttackListener(home, path, config)
        started.append(lp)
        return lp.start() if start else lp

    yield make
    for lp in reversed(started):
        lp.stop()


@pytest.fixture
def canaries(
    attack_listener: Callable[..., AttackListener], sim_devices: Callable[..., Any]
) -> Iterator[Callable[..., CanaryLoop]]:
    """Factory: ``canaries(listener, count=4, idle=0, extra=(), extra_drops=())`` -> a running
    :class:`CanaryLoop`.

    ``count`` simulated devices (sim0001...) are enrolled, connected and leased in a loop, ``idle``
    more are enrolled and connected but left alone (``loop.idle``: victims for a test). ``extra``
    names devices the test enrolled and connected itself (a TLS device) to lease in the same loop,
    ``extra_drops`` counts how often those lost their connection.
    """
    loops: List[CanaryLoop] = []

    def start(
        lp: AttackListener,
        count: int = 4,
        *,
        idle: int = 0,
        extra: Sequence[str] = (),
        extra_drops: Sequence[Callable[[], int]] = (),
    ) -> CanaryLoop:
        fleet = sim_devices(lp, count + idle)
        for name in fleet.names:
            lp.allow(name, fleet.fingerprint(name))
        leased = list(fleet.names[:count])
        for name in list(fleet.names) + list(extra):
            lp.wait_device(name, "connected", timeout=30)
        loop = CanaryLoop(lp, leased + list(extra))
        loop.fleet = fleet
        loop.idle = list(fleet.names[count:])
        loop.drops = lambda: sum(fleet.count("DISCONNECTED", name) for name in leased) + sum(f() for f in extra_drops)
        loops.append(loop)
        loop.start()
        wait_until(lambda: loop.ok >= len(loop.devices) or loop.failures, 30, "every canary leased once")
        assert not loop.failures, "canaries fail before any attack: " + loop.summary()
        return loop

    yield start
    for loop in loops:
        loop.stop()


# -- TLS material and devices in their own processes --------------------------------------------


@pytest.fixture
def tls_pki(tmp_path: Path) -> Any:
    import pki  # tests/peers

    return pki.make_pki(tmp_path / "pki", device_name="tlsdev1", host_key_algorithms=("ed25519",))


@pytest.fixture
def device_process() -> Iterator[Callable[..., Any]]:
    """Factory: ``device_process(*argv)`` -> ``devices.DeviceProcess`` (stopped at teardown)."""
    import devices

    started: List[Any] = []

    def make(*argv: str) -> Any:
        dev = devices.DeviceProcess(argv)
        started.append(dev)
        return dev

    yield make
    for dev in reversed(started):
        dev.stop()


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Floods open a few thousand sockets from the test process: lift its soft descriptor limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

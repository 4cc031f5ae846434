# SPDX-License-Identifier: GPL-3.0-or-later
"""A busy listener is not a missing one (issue 10 defect 9).

200 concurrent leases used to find the control socket's accept backlog (asyncio's default, 100)
full: ``connect`` failed at once with EAGAIN and the client said "no call-home listener answers".
The backlog is now the kernel's cap, and the client retries a listener that holds its socket but
does not accept yet, within the request's timeout, ending as ``ListenerBusyError``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, List

import pytest

from netconf_callhome.control.client import ControlClient
from netconf_callhome.control.instance import SERVICE, InstanceLock
from netconf_callhome.errors import ListenerBusyError, ListenerUnreachableError

pytestmark = pytest.mark.timeout(180)

REQUESTS = 1000


def test_a_thousand_concurrent_requests_are_all_answered(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    outcomes: Counter = Counter()
    errors: List[str] = []
    start = threading.Barrier(REQUESTS)

    def one(_index: int) -> None:
        client = ControlClient(lst.address, timeout=60)
        start.wait()  # all of them connect at the same moment
        try:
            assert client.call("status")["control_socket"] == lst.config.control_socket
            outcomes["answered"] += 1
        except ListenerBusyError:
            outcomes["busy"] += 1
        except ListenerUnreachableError as exc:
            outcomes["no-listener"] += 1
            errors.append(exc.message)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        list(pool.map(one, range(REQUESTS)))
    elapsed = time.monotonic() - started
    print("%d concurrent status requests: %s in %.1f s" % (REQUESTS, dict(outcomes), elapsed))
    assert outcomes["no-listener"] == 0, errors[:3]
    assert outcomes["answered"] + outcomes["busy"] == REQUESTS
    assert outcomes["answered"] == REQUESTS  # with a 60 s timeout none should even be busy


def test_the_control_socket_queues_a_thousand_connections(listener_in_thread: Any) -> None:
    """While the listener's loop is busy, a thousand connects wait in the backlog (was 100)."""
    lst = listener_in_thread()
    loop = lst._loop.loop
    loop.call_soon_threadsafe(time.sleep, 3.0)  # the loop accepts nothing for 3 s
    time.sleep(0.2)
    refused = 0
    with ExitStack() as stack:
        for _index in range(REQUESTS):
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.setblocking(False)
            try:
                sock.connect(lst.config.control_socket)
            except BlockingIOError:
                refused += 1
    assert refused == 0, "%d of %d connects found the backlog full" % (refused, REQUESTS)


def _full_backlog(path: Path) -> "tuple[socket.socket, List[socket.socket]]":
    """A socket that listens and never accepts, its backlog filled: every connect gets EAGAIN."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(0)
    fillers = []
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            break
        fillers.append(sock)
    return server, fillers


def test_a_full_backlog_is_busy_not_missing(tmp_path: Path) -> None:
    server, fillers = _full_backlog(tmp_path / "control.sock")
    try:
        client = ControlClient("unix:%s" % (tmp_path / "control.sock"), timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ListenerBusyError, match="is busy: its accept backlog is full") as err:
            client.call("ping")
        assert 0.4 < time.monotonic() - started < 3.0  # retried within the timeout, no longer
        assert err.value.code == "listener-busy" and err.value.details["attempts"] > 3
    finally:
        for sock in fillers + [server]:
            sock.close()


def test_a_retried_connection_is_served_once_the_listener_accepts(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    server, fillers = _full_backlog(path)
    answered: List[Any] = []

    def call() -> None:
        answered.append(ControlClient("unix:%s" % path, timeout=20).call("ping"))

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # the client is retrying now
    for sock in fillers:
        sock.close()
    server.settimeout(10)
    while True:  # drain the fillers' dead connections, answer the client's
        conn, _addr = server.accept()
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                line += chunk
            if line:
                conn.sendall(b'{"ok": true, "result": {"pid": 1}}\n')
                break
    caller.join(20)
    server.close()
    assert answered == [{"pid": 1}]


def test_a_stale_socket_is_missing_at_once(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # the file stays, nobody listens: a crashed listener's socket
    started = time.monotonic()
    with pytest.raises(ListenerUnreachableError, match="no call-home listener answers"):
        ControlClient("unix:%s" % path, timeout=5).call("ping")
    assert time.monotonic() - started < 1.0


def test_a_refusing_socket_whose_home_is_locked_is_busy(tmp_path: Path) -> None:
    """A listener between taking its home and listening refuses: busy, naming its pid."""
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    lock = InstanceLock(str(tmp_path))
    lock.acquire(mode=SERVICE, control_socket=str(path))
    try:
        with pytest.raises(ListenerBusyError, match=r"not accepting connections yet .*\(pid %d\)" % lock.info.pid):
            ControlClient("unix:%s" % path, timeout=0.5).call("ping")
    finally:
        lock.release()

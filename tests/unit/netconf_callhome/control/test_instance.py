# SPDX-License-Identifier: GPL-3.0-or-later
"""The instance lock: one listener per home, and who holds it (issue 10 defect 11)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

import pytest

from netconf_callhome.control.instance import (
    EMBEDDED,
    SERVICE,
    Holder,
    InstanceLock,
    holder,
    lock_path,
    takeover,
)
from netconf_callhome.errors import ListenerRunningError

pytestmark = pytest.mark.timeout(60)


def test_the_holder_is_described_and_a_second_lock_names_it(tmp_path: Path) -> None:
    home = str(tmp_path)
    first = InstanceLock(home)
    first.acquire(mode=EMBEDDED, control_socket=os.path.join(home, "control.sock"))
    first.update({"ssh": ["127.0.0.1:4334"], "tls": [], "control_tcp": []})
    try:
        found = holder(lock_path(home))
        assert found is not None and found.pid == os.getpid() and found.mode == EMBEDDED
        assert found.binds == {"ssh": ["127.0.0.1:4334"], "tls": [], "control_tcp": []}
        with pytest.raises(ListenerRunningError) as err:
            InstanceLock(home).acquire(mode=SERVICE, control_socket="x", wait=0.1)
        message = err.value.message
        assert "another call-home listener runs on %s: pid %d (embedded listener" % (home, os.getpid()) in message
        assert "control socket %s" % os.path.join(home, "control.sock") in message
        assert "ports: ssh 127.0.0.1:4334" in message and "--takeover" in message
        assert err.value.code == "listener-running" and err.value.details["pid"] == os.getpid()
    finally:
        first.release()
    assert holder(lock_path(home)) is None
    again = InstanceLock(home)
    again.acquire(mode=SERVICE, control_socket="y")  # the file stays; nobody holds it
    again.release()


def test_a_service_holder_is_not_offered_takeover(tmp_path: Path) -> None:
    lock = InstanceLock(str(tmp_path))
    lock.acquire(mode=SERVICE, control_socket="/run/x.sock")
    try:
        with pytest.raises(ListenerRunningError) as err:
            InstanceLock(str(tmp_path)).acquire(mode=SERVICE, control_socket="x", wait=0)
        assert "(service listener" in err.value.message and "--takeover" not in err.value.message
        asked: List[Holder] = []
        with pytest.raises(ListenerRunningError, match="--takeover replaces only an embedded listener"):
            takeover(str(tmp_path), asked.append)
        assert asked == []
    finally:
        lock.release()


def test_takeover_asks_the_embedded_holder_and_waits_for_the_lock(tmp_path: Path) -> None:
    lock = InstanceLock(str(tmp_path))
    lock.acquire(mode=EMBEDDED, control_socket="/tmp/c.sock")
    asked: List[Holder] = []

    def ask(other: Holder) -> None:
        asked.append(other)
        lock.release()  # what a listener does when it is asked to shut down

    stopped = takeover(str(tmp_path), ask)
    assert stopped is not None and stopped.pid == os.getpid() and stopped.control_socket == "/tmp/c.sock"
    assert asked == [stopped] and holder(lock_path(str(tmp_path))) is None
    assert takeover(str(tmp_path), ask) is None  # nobody to replace


def test_takeover_fails_when_the_holder_does_not_stop(tmp_path: Path) -> None:
    lock = InstanceLock(str(tmp_path))
    lock.acquire(mode=EMBEDDED, control_socket="/tmp/c.sock")
    try:
        with pytest.raises(ListenerRunningError, match=r"still holds .*listener.lock after 0 s"):
            takeover(str(tmp_path), lambda other: None, timeout=0.2)
    finally:
        lock.release()


def test_a_killed_holder_leaves_no_lock(tmp_path: Path) -> None:
    """kill -9 of the holder: the kernel drops the flock, the next listener starts."""
    code = (
        "import sys, time\n"
        "from netconf_callhome.control.instance import InstanceLock\n"
        "lock = InstanceLock(sys.argv[1]); lock.acquire(mode='service', control_socket='s')\n"
        "print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        found = holder(lock_path(str(tmp_path)))
        assert found is not None and found.pid == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lock = InstanceLock(str(tmp_path))
    lock.acquire(mode=SERVICE, control_socket="s")
    lock.release()


def test_a_probe_does_not_make_a_starting_listener_fail(tmp_path: Path) -> None:
    """Clients probe with a shared lock for an instant; acquire waits that out."""
    import fcntl

    path = lock_path(str(tmp_path))
    Path(path).write_text("")
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    started = time.monotonic()
    try:
        import threading

        threading.Timer(0.2, lambda: os.close(fd)).start()
        lock = InstanceLock(str(tmp_path))
        lock.acquire(mode=SERVICE, control_socket="s", wait=2.0)
        assert time.monotonic() - started >= 0.15
        lock.release()
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def test_a_garbled_lock_file_still_counts_as_held(tmp_path: Path) -> None:
    lock = InstanceLock(str(tmp_path))
    lock.acquire(mode=SERVICE, control_socket="s")
    try:
        with open(lock.path, "w", encoding="utf-8") as handle:
            handle.write("not json")
        found = holder(lock.path)
        assert found == Holder() and "pid unknown" in found.describe()
    finally:
        lock.release()


def test_the_listener_takes_the_lock_and_a_second_one_on_the_home_fails(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    data = json.loads(Path(lock_path(str(lst.home))).read_text())
    assert data["pid"] == os.getpid() and data["mode"] == SERVICE
    assert data["control_socket"] == lst.config.control_socket
    assert data["binds"]["ssh"] == lst.call("status")["ssh"]
    with pytest.raises(ListenerRunningError, match="another call-home listener runs on %s: pid %d" % (lst.home, os.getpid())):
        listener_in_thread(home=lst.home, control_socket=str(lst.home / "other.sock"))
    assert lst.call("ping")["pid"] == os.getpid()  # the first one is untouched
    assert os.path.exists(lst.config.control_socket)

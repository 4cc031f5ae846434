# SPDX-License-Identifier: GPL-3.0-or-later
"""One listener per home, with real processes (issue 10 defect 11).

The embedded listener (``serve --idle-exit``, as the connection plugin starts it) held the ports
while an operator restarted ``serve``, which then died with "Address already in use". Now the
second listener names the first (pid, embedded or not, control socket, ports), ``serve
--takeover`` replaces an embedded one cleanly, and a port held by anything else is named.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any, List

import pytest
from harness import LISTENER_CMD, child_env, free_port, wait_until

pytestmark = pytest.mark.timeout(120)


def _serve(home: Path, *args: str, timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    """A ``serve`` expected to refuse to start: its exit status and messages."""
    return subprocess.run(
        LISTENER_CMD + ["serve", "--home", str(home)] + list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        check=False,
    )


def _args(port: int, fleet: Any) -> List[str]:
    return ["--ssh", "127.0.0.1:%d" % port, "--username", "netconf", "--password-file", str(fleet.password_file)]


def test_a_second_serve_names_the_embedded_listener(listener_factory: Any, fleet: Any, tmp_path: Path) -> None:
    port = free_port()
    embedded = listener_factory("--idle-exit", "300", ssh_port=port).start()
    res = _serve(embedded.home, *_args(port, fleet))
    assert res.returncode == 1, res.stderr
    message = res.stderr.strip().splitlines()[-1]
    assert "Address already in use" not in message
    assert "another call-home listener runs on %s: pid %d (embedded listener" % (embedded.home, embedded.proc.pid) in message
    assert "control socket %s" % (embedded.home / "control.sock") in message
    assert "ports: ssh 127.0.0.1:%d" % port in message
    assert "--takeover" in message
    assert embedded.call("status")["pid"] == embedded.proc.pid  # untouched, socket and all


def test_takeover_replaces_the_embedded_listener_on_its_ports(listener_factory: Any, fleet: Any) -> None:
    port = free_port()
    embedded = listener_factory("--idle-exit", "300", ssh_port=port).start()
    old_pid = embedded.proc.pid
    operator = listener_factory("--takeover", home=embedded.home, ssh_port=port)
    operator.start()  # answers at once: possibly still the embedded one
    assert operator.proc is not None
    new_pid = operator.proc.pid

    def new_status() -> Any:
        status = operator.call("status")
        return status if status["pid"] == new_pid else None

    status = wait_until(
        new_status,
        30,
        "the new listener to answer on the control socket",
        ignore=(Exception,),
        detail=lambda: "embedded log:\n%s\noperator log:\n%s" % (embedded.log()[-2000:], operator.log()[-2000:]),
    )
    assert status["ssh"] == ["127.0.0.1:%d" % port]
    assert embedded.proc.wait(30) == 0, embedded.log()[-2000:]  # it shut down cleanly
    assert "event=listener.idle_exit" not in embedded.log()
    operator.wait_log("event=listener.takeover home=%s old_pid=%d old_mode=embedded" % (embedded.home, old_pid))
    lock = json.loads((embedded.home / "listener.lock").read_text())
    assert lock["pid"] == new_pid and lock["mode"] == "service" and lock["binds"]["ssh"] == ["127.0.0.1:%d" % port]


def test_takeover_leaves_a_service_listener_alone(listener_factory: Any, fleet: Any) -> None:
    port = free_port()
    service = listener_factory(ssh_port=port).start()
    res = _serve(service.home, "--takeover", *_args(port, fleet))
    assert res.returncode == 1
    message = res.stderr.strip().splitlines()[-1]
    assert "--takeover replaces only an embedded listener" in message
    assert "pid %d (service listener" % service.proc.pid in message
    assert service.call("status")["pid"] == service.proc.pid


def test_a_port_held_by_another_process_is_named(fleet: Any, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        home = tmp_path / "home"
        res = _serve(home, *_args(port, fleet))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "callhome-listener: cannot listen on 127.0.0.1:%d: Address already in use; "
        "the process holding it is not a listener of %s" % (port, home)
    )
    assert (home / "listener.lock").read_text() == ""  # released: the next start is not blocked

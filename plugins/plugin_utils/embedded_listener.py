# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Start a listener on this machine when none answers at the default local address.

**PRIVATE** to the collection. The "embedded default": a single ``ansible-playbook`` run works
with no service set up first. The listener is a detached daemon (its own session, so it outlives
the playbook and the ``ansible-connection`` process that started it) and exits by itself after
``idle_exit`` seconds without control activity or leases. Every host of every fork may find the
listener missing at the same moment: an ``flock`` on ``<home>/spawn.lock`` lets exactly one start
it while the others wait for it to answer ``ping``.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
import typing as t

from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import NetconfCallhomeMissing

try:
    from netconf_callhome.control.client import (
        ControlClient,
        default_control_address,
        default_home,
        parse_address,
    )
    from netconf_callhome.errors import (
        CallHomeError,
        ListenerUnreachableError,
    )
except ImportError:  # the connection plugin reports it (HAS_NETCONF_CALLHOME) before calling in here
    CallHomeError = ListenerUnreachableError = NetconfCallhomeMissing  # type: ignore[misc,assignment]

LOG_NAME = "listener.log"


def is_default_address(address: t.Optional[str]) -> bool:
    """True for no address or the default ``unix:<home>/control.sock`` (the embedded case)."""
    if not address:
        return True
    try:
        return parse_address(address) == parse_address(default_control_address())
    except CallHomeError:
        return False


def ping(client: ControlClient, timeout: float = 2.0) -> t.Optional[t.Dict[str, t.Any]]:
    """The listener's ``ping`` answer, or None when nothing answers."""
    try:
        return t.cast(t.Dict[str, t.Any], client.call("ping", timeout=timeout))
    except ListenerUnreachableError:
        return None


def spawn_command(config_file: t.Optional[str], idle_exit: float, home: str) -> t.List[str]:
    cmd = [
        sys.executable, "-m", "netconf_callhome",
        "serve", "--home", home, "--idle-exit", "%g" % idle_exit,
    ]
    if config_file:
        cmd += ["--config", os.path.abspath(os.path.expanduser(config_file))]
    return cmd


def ensure_listener(
    *,
    config_file: t.Optional[str] = None,
    idle_exit: float = 900.0,
    start_timeout: float = 30.0,
    log: t.Optional[t.Callable[[str], None]] = None,
) -> t.Tuple[bool, t.Dict[str, t.Any]]:
    """Make sure a listener answers at the default address; ``(started_by_us, ping_answer)``.

    Raises :class:`ListenerUnreachableError` when the daemon we started does not answer within
    ``start_timeout`` (its log file is named in the message).
    """
    home = default_home()
    client = ControlClient(default_control_address())
    answer = ping(client)
    if answer is not None:
        return False, answer
    os.makedirs(home, mode=0o700, exist_ok=True)
    log_path = os.path.join(home, LOG_NAME)
    with open(os.path.join(home, "spawn.lock"), "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            answer = ping(client)
            if answer is not None:  # another fork or host started it while we waited
                return False, answer
            cmd = spawn_command(config_file, idle_exit, home)
            if log:
                log("starting an embedded call-home listener: %s (log: %s)" % (" ".join(cmd), log_path))
            env = dict(os.environ)
            with open(log_path, "ab") as out, open(os.devnull, "rb") as devnull:
                proc = subprocess.Popen(
                    cmd, stdin=devnull, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=home,
                    start_new_session=True, close_fds=True,
                )
            deadline = time.monotonic() + start_timeout
            while time.monotonic() < deadline:
                answer = ping(client, timeout=2.0)
                if answer is not None:
                    return True, answer
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
            raise ListenerUnreachableError(
                "started an embedded call-home listener (%s) but it did not answer at %s; "
                "see its log %s: %s" % (
                    "exited with status %s" % proc.returncode if proc.poll() is not None else "pid %d" % proc.pid,
                    default_control_address(), log_path, _tail(log_path),
                ),
                details={"address": default_control_address(), "log": log_path},
            )
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            return " | ".join(line.strip() for line in handle.readlines()[-lines:])
    except OSError:
        return "(no log)"


__all__ = ("ensure_listener", "is_default_address", "ping", "spawn_command")

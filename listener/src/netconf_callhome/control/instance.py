# SPDX-License-Identifier: GPL-3.0-or-later
"""One listener per state directory: the instance lock ``<home>/listener.lock``.

A listener takes an exclusive ``flock`` on the file before it binds anything or touches the
control socket, and keeps it for its lifetime (the kernel drops it when the process dies, so a
kill -9 leaves no stale lock). The file holds a small JSON description of the holder (pid,
``embedded`` or ``service``, start time, control socket, bound addresses) so that a second
listener, ``callhome-listener serve --takeover`` and the control client can say exactly who holds
the home. Stdlib only: the control client (and so the collection's plugins) use :func:`holder`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

from netconf_callhome.errors import ListenerRunningError

LOCK_NAME = "listener.lock"
EMBEDDED = "embedded"  # started by the connection plugin with --idle-exit; may be taken over
SERVICE = "service"


@dataclass
class Holder:
    """Who holds a home's instance lock (what it wrote in the lock file)."""

    pid: int = 0
    mode: str = ""
    started: float = 0.0
    control_socket: str = ""
    binds: Dict[str, List[str]] = field(default_factory=dict)

    def describe(self) -> str:
        ports = ", ".join("%s %s" % (kind, ",".join(addrs)) for kind, addrs in sorted(self.binds.items()) if addrs)
        return "pid %s (%s listener%s), control socket %s, %s" % (
            self.pid or "unknown",
            self.mode or "unknown",
            ", started %s" % time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started)) if self.started else "",
            self.control_socket or "unknown",
            "ports: %s" % ports if ports else "no ports bound yet",
        )


def lock_path(home: str) -> str:
    return os.path.join(home, LOCK_NAME)


def holder(path: str) -> Optional[Holder]:
    """The process holding the lock file ``path``, or None when nobody holds it (or no file).

    Probing takes a shared lock for an instant; :meth:`InstanceLock.acquire` retries for longer
    than that, so a probe never makes a starting listener believe its home is taken.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> Holder:
    try:
        data = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return Holder()  # held, but written partly or by something else: the lock still counts
    if not isinstance(data, dict):
        return Holder()
    pid, started, binds = data.get("pid"), data.get("started"), data.get("binds")
    return Holder(
        pid=pid if isinstance(pid, int) else 0,
        mode=str(data.get("mode") or ""),
        started=float(started) if isinstance(started, (int, float)) else 0.0,
        control_socket=str(data.get("control_socket") or ""),
        binds={str(k): [str(a) for a in v] for k, v in binds.items() if isinstance(v, list)}
        if isinstance(binds, dict)
        else {},
    )


class InstanceLock:
    """The exclusive lock a running listener holds on its home."""

    def __init__(self, home: str) -> None:
        self.home = home
        self.path = lock_path(home)
        self._fd: Optional[int] = None
        self.info = Holder()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, mode: str, control_socket: str, wait: float = 1.0) -> None:
        """Take the lock or raise :class:`ListenerRunningError` naming the holder.

        ``wait`` rides out a client's probe (:func:`holder`), which holds a shared lock briefly.
        """
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise ListenerRunningError(
                        "cannot lock %s: %s" % (self.path, exc.strerror), details={"lock": self.path}
                    ) from None
                if time.monotonic() >= deadline:
                    other = _read_holder(fd)
                    os.close(fd)
                    raise running_error(self.home, other) from None
                time.sleep(0.02)
        self._fd = fd
        self.info = Holder(pid=os.getpid(), mode=mode, started=time.time(), control_socket=control_socket)
        self._write()

    def update(self, binds: Dict[str, List[str]]) -> None:
        """Record the addresses bound, once they are known (port 0 binds get theirs here)."""
        self.info.binds = {k: list(v) for k, v in binds.items()}
        self._write()

    def _write(self) -> None:
        if self._fd is None:
            return
        data = json.dumps(asdict(self.info), sort_keys=True).encode("utf-8") + b"\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Give the home back. The file stays (unlinking it would race with a new holder)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # closing the only descriptor drops the flock


def running_error(home: str, other: Holder) -> ListenerRunningError:
    hint = (
        "stop it first (callhome-listener --control unix:%s shutdown), or start with --takeover to replace it"
        if other.mode == EMBEDDED
        else "stop it first (callhome-listener --control unix:%s shutdown, or its service manager)"
    ) % (other.control_socket or os.path.join(home, "control.sock"))
    return ListenerRunningError(
        "another call-home listener runs on %s: %s; %s" % (home, other.describe(), hint),
        details=dict(asdict(other), home=home),
    )


def takeover(
    home: str,
    ask_shutdown: Callable[[Holder], Any],
    *,
    timeout: float = 30.0,
    embedded_only: bool = True,
) -> Optional[Holder]:
    """Ask the listener holding ``home`` to stop and wait until its lock is free.

    Returns the holder that was stopped (None if nobody held the home). Only an embedded listener
    is replaced unless ``embedded_only`` is false: a service listener belongs to its service
    manager, which would start it again and fight over the ports.
    """
    path = lock_path(home)
    other = holder(path)
    if other is None:
        return None
    if embedded_only and other.mode != EMBEDDED:
        error = running_error(home, other)
        error.message = "--takeover replaces only an embedded listener; " + error.message
        error.args = (error.message,)
        raise error
    ask_shutdown(other)
    deadline = time.monotonic() + timeout
    while holder(path) is not None:
        if time.monotonic() >= deadline:
            raise ListenerRunningError(
                "asked the listener on %s (%s) to shut down, but it still holds %s after %.0f s"
                % (home, other.describe(), path, timeout),
                details=dict(asdict(other), home=home),
            )
        time.sleep(0.05)
    return other


__all__ = ("EMBEDDED", "LOCK_NAME", "SERVICE", "Holder", "InstanceLock", "holder", "lock_path", "running_error", "takeover")

# SPDX-License-Identifier: GPL-3.0-or-later
"""A load balancer nobody here wrote: Debian's HAProxy in TCP mode in front of listener nodes.

One address for devices (issue 12): devices call HAProxy's frontend, HAProxy picks a listener
node (round robin) and opens its own connection to it, prefixed with a PROXY protocol v2 header
(``send-proxy-v2``) that names the device's address. Health checks are plain TCP connects that
also send a header (``check-send-proxy``: the v2 LOCAL command), so a listener with
``proxy_protocol_from`` can tell them from devices and close them quietly.

The instance is our own: configuration, stats socket and pid in a work directory, ``-db`` (no
daemon), loopback ports only; nothing of the system's HAProxy (``/etc/haproxy``) is read and no
system service is started. HAProxy connects to the backends from ``source`` (127.0.0.2 by
default, any loopback address works on Linux) so that its address differs from the devices'
(127.0.0.1, or whatever they bind): the listener's logs then show which one it believed.

Raises :class:`PeerUnavailable` with the reason when haproxy is not installed (``make
system-deps`` installs it); tests turn that into a skip, or a failure under CI.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

if str(Path(__file__).resolve().parent) not in sys.path:  # a script that put only its own dir on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_availability import PeerUnavailable as _PeerUnavailable  # noqa: E402  (tests/peers)


class PeerUnavailable(_PeerUnavailable):
    """HAProxy is not installed here.

    A :class:`peer_availability.PeerUnavailable`: tests skip on it, or fail where peers are required."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class HAProxyPeer:
    """``HAProxyPeer([("127.0.0.1", p1), ("127.0.0.1", p2)]).start()``; ``.port`` is the one
    address devices call; ``.stop()`` ends it. ``send_proxy``: ``v2`` (default), ``v1`` or ``""``
    (no header: a balancer misconfigured for a listener that expects one)."""

    def __init__(
        self,
        backends: Sequence[Tuple[str, int]],
        *,
        source: str = "127.0.0.2",
        send_proxy: str = "v2",
        check_interval_ms: int = 300,
    ) -> None:
        self.binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else "")
        if not self.binary:
            raise PeerUnavailable("haproxy is not installed (make system-deps installs Debian's haproxy)")
        self.backends = list(backends)
        self.source = source
        self.send_proxy = send_proxy
        self.check_interval_ms = check_interval_ms
        # Each proxied connection is two descriptors: stay inside this machine's hard limit.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.maxconn = max(256, min(10000, ((hard if hard > 0 else 4096) - 200) // 2))
        self.port = 0
        self.workdir = Path(tempfile.mkdtemp(prefix="haproxy-peer-"))
        self.config = self.workdir / "haproxy.cfg"
        self.stats_socket = self.workdir / "admin.sock"
        self.log_path = self.workdir / "haproxy.log"
        self.proc: Optional[subprocess.Popen] = None

    # -- configuration -------------------------------------------------------------------------

    def render(self) -> str:
        option = {"v2": " send-proxy-v2 check-send-proxy", "v1": " send-proxy check-send-proxy", "": ""}[self.send_proxy]
        servers = "\n".join(
            "    server node%d %s:%d check inter %dms fall 2 rise 1 source %s%s"
            % (i + 1, host, port, self.check_interval_ms, self.source, option)
            for i, (host, port) in enumerate(self.backends)
        )
        return f"""global
    stats socket {self.stats_socket} mode 600 level admin
    maxconn {self.maxconn}
    log stdout format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 3s
    timeout client 1h
    timeout server 1h
    timeout check 2s
    # a node that refuses the connection (killed, not yet marked down): try another one
    retries 2
    option redispatch

frontend callhome
    bind 127.0.0.1:{self.port}
    default_backend nodes

backend nodes
    balance roundrobin
{servers}
"""

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> "HAProxyPeer":
        self.port = free_port()
        self.config.write_text(self.render())
        check = subprocess.run([self.binary, "-c", "-f", str(self.config)], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError("haproxy refused its configuration:\n%s%s" % (check.stdout, check.stderr))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("haproxy exited (rc=%s):\n%s" % (self.proc.returncode, self.log()))
            if self.stats_socket.exists():
                # Asked on the stats socket, not by a connect to the frontend: that would be
                # proxied to a node as a device that never speaks. The listeners are bound
                # before the runtime API answers.
                try:
                    if "Pid:" in self.command("show info"):
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("haproxy did not listen on 127.0.0.1:%d within %g s:\n%s" % (self.port, timeout, self.log()))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- runtime API (stats socket) ------------------------------------------------------------

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks: List[bytes] = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode(errors="replace")

    def servers(self) -> Dict[str, Dict[str, str]]:
        """``show stat`` for the backend's servers: name -> {status, scur, stot, ...}."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows: Dict[str, Dict[str, str]] = {}
        for line in lines[1:]:
            fields = dict(zip(header, line.split(",")))
            if fields.get("pxname") == "nodes" and fields.get("svname") not in ("BACKEND", None):
                rows[fields["svname"]] = fields
        return rows

    def wait_up(self, count: Optional[int] = None, timeout: float = 20.0) -> Dict[str, Dict[str, str]]:
        """Until ``count`` (default: all) servers pass their health checks."""
        want = len(self.backends) if count is None else count
        deadline = time.monotonic() + timeout
        rows: Dict[str, Dict[str, str]] = {}
        while time.monotonic() < deadline:
            rows = self.servers()
            if sum(1 for r in rows.values() if r.get("status") == "UP") >= want:
                return rows
            time.sleep(0.1)
        raise TimeoutError("%d server(s) UP expected: %s\n%s" % (want, {k: v.get("status") for k, v in rows.items()}, self.log()))


__all__ = ("HAProxyPeer", "PeerUnavailable", "free_port")

# SPDX-License-Identifier: GPL-3.0-or-later
"""The attack suite's library (the fixtures that use it are in ``conftest.py``): the listener
process under attack and its meters, the canary loop, the NETCONF client end of a lease."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
for _path in (TESTS / "integration", TESTS / "peers", HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from harness import ListenerProcess, wait_until  # noqa: E402  (tests/integration)
from netconf_server import BASE_10, BASE_11, Deframer, build_hello, frame_chunked, frame_eom  # noqa: E402

from netconf_callhome.control.client import ControlClient  # noqa: E402

MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
# A canary lease (lease answer, hello exchange, one <get-config>) slower than this is a failure:
# on the loaded 2-core machine an undisturbed one takes tens of milliseconds; the defects made
# other devices' leases take up to 9.4 s.
CANARY_TIMEOUT = 8.0
# How long a canary lease waits for its device to call home (a canary never hangs up on its own,
# so a device that has to call again has been dropped by the listener: caught by the drop count).
CANARY_WAIT = 2.0
# The listener's message bound during the suite: small enough to reach quickly, large enough that
# a framing cost quadratic in the buffered bytes shows (32 MiB in SSH packets: ~15 s of CPU).
MAX_MESSAGE = 32 * MIB
# Every attack's resource bounds (verdict), counted from the moment its canaries start, for the
# listener process: peak RSS at most RSS_GROWTH above where it was, and CPU time at most
# CPU_BASE + CPU_SHARE x the wall time. Attacks that may cost more by design (an endless message
# up to max_message_bytes, 2,000 pending TLS handshakes) pass their own bounds.
# Measured (2026-12-02 04:20, load 1.7): the canary loop alone costs the listener ~12% of a core;
# the costliest attack, 1,000 concurrent leases, 2.2 s of CPU over 5.4 s (41%), +15 MiB; the
# garbage flood from the canaries' address 1.5 s over 12 s, +0.2 MiB. The bounds leave a factor
# of 2.5 or more (a loaded machine stretches the wall time more than the CPU time); the
# defects they catch cost far more (quadratic framing pinned a core for 120 s and took 260 MB, the
# preamble reader spun a core).
RSS_GROWTH = 64 * MIB
CPU_BASE = 3.0
CPU_SHARE = 0.5


# -- process meters -----------------------------------------------------------------------------


def proc_rss(pid: int) -> int:
    """Resident set size in bytes (``VmRSS`` of ``/proc/<pid>/status``)."""
    with open("/proc/%d/status" % pid, "r", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for pid %d" % pid)


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of the process (``utime`` + ``stime`` of ``/proc/<pid>/stat``)."""
    with open("/proc/%d/stat" % pid, "r", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_fds(pid: int) -> int:
    return len(os.listdir("/proc/%d/fd" % pid))


@dataclass
class Mark:
    at: float
    rss: int
    cpu: float


class ResourceSampler:
    """Samples a process's RSS and CPU time every 0.1 s, so peaks between two reads are seen."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: List[Tuple[float, int, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler-%d" % pid, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample = (time.monotonic(), proc_rss(self.pid), proc_cpu(self.pid))
            except (OSError, AssertionError, IndexError, ValueError):
                return  # the process is gone
            with self._lock:
                self.samples.append(sample)
            self._stop.wait(self.interval)

    def mark(self) -> Mark:
        return Mark(time.monotonic(), proc_rss(self.pid), proc_cpu(self.pid))

    def rss(self) -> int:
        return proc_rss(self.pid)

    def cpu_since(self, mark: Mark) -> float:
        return proc_cpu(self.pid) - mark.cpu

    def peak_rss_since(self, mark: Mark) -> int:
        with self._lock:
            peaks = [rss for at, rss, _cpu in self.samples if at >= mark.at]
        return max(peaks + [proc_rss(self.pid)])

    def describe(self, mark: Mark) -> str:
        now = self.mark()
        return "listener pid %d: %.1f s CPU and RSS %.1f -> peak %.1f -> %.1f MiB over %.1f s" % (
            self.pid,
            now.cpu - mark.cpu,
            mark.rss / MIB,
            self.peak_rss_since(mark) / MIB,
            now.rss / MIB,
            now.at - mark.at,
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# -- the listener under attack ------------------------------------------------------------------

_HEX_FP = re.compile(r"^(?:[0-9a-f]{2}:?){31}[0-9a-f]{2}$")


def norm_fingerprint(value: str) -> str:
    """One spelling per key whatever the listener's notation (TLS hex pairs with or without an
    OpenSSH-style prefix, SSH ``SHA256:`` base64)."""
    text = value.strip()
    low = text.lower()
    for prefix in ("sha256:", "04:"):
        if low.startswith(prefix) and _HEX_FP.match(low[len(prefix) :]):
            low = low[len(prefix) :]
    if _HEX_FP.match(low):
        return "x509:" + low.replace(":", "")
    return "ssh:" + (text[7:] if text.startswith("SHA256:") else text)


# A killed test run (an outer timeout) runs no finalizer: this watchdog, one per listener, ends the
# listener when the test process is gone (the listener runs in its own session, by the harness).
_GUARD = """
import os, signal, sys, time
test, child = int(sys.argv[1]), int(sys.argv[2])


def running(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return b"netconf_callhome" in handle.read()
    except OSError:
        return False


try:
    while running(child):
        time.sleep(1)
        if not os.path.exists("/proc/%d" % test):
            os.kill(child, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while running(child) and time.monotonic() < deadline:
                time.sleep(0.1)
            if running(child):
                os.kill(child, signal.SIGKILL)
            break
except ProcessLookupError:
    pass
"""


class AttackListener(ListenerProcess):
    """``harness.ListenerProcess`` plus its pid's meters, the keys enrolled per device, JSON logs."""

    def __init__(self, home: Path, config_path: Path, options: Dict[str, Any]) -> None:
        super().__init__(home, ["--config", str(config_path)])
        self.config_path = config_path
        self.options = options
        self.allowed: Dict[str, Set[str]] = {}
        self.sampler: Optional[ResourceSampler] = None
        self.started_mark: Optional[Mark] = None  # the meters when it started (no canaries: from here)
        self._guard: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    def start(self, timeout: float = 30.0) -> "AttackListener":
        super().start(timeout)
        self._guard = subprocess.Popen([sys.executable, "-c", _GUARD, str(os.getpid()), str(self.pid)])
        self.sampler = ResourceSampler(self.pid)
        self.started_mark = self.sampler.mark()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def address(self) -> str:
        return "unix:%s" % (self.home / "control.sock")

    @property
    def outbound_ssh_port(self) -> int:
        return int(self.status["outbound_ssh"][0].rsplit(":", 1)[1])

    def allow(self, device: str, fingerprint: str) -> None:
        """``device`` may hold a session with this key (the test enrolled it)."""
        self.allowed.setdefault(device, set()).add(norm_fingerprint(fingerprint))

    def enroll_ssh(self, device: str, public_line: str, fingerprint: str) -> None:
        self.call("enroll", device=device, kind="ssh_host_keys", value=public_line)
        self.allow(device, fingerprint)

    def events(self, event: Optional[str] = None) -> List[Dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if event is None or rec.get("event") == event:
                out.append(rec)
        return out

    def record(self, device: str) -> Dict[str, Any]:
        return dict(self.call("device", device=device))

    def assert_no_foreign_sessions(self) -> None:
        """No session was ever handed to a key that is not enrolled for the device it runs as."""
        connected = self.events("device.connected")
        assert connected, "no device.connected event in the listener's log: is it still JSON?"
        for ev in connected:
            device, fp = ev.get("device", ""), norm_fingerprint(ev.get("fingerprint", ""))
            assert fp in self.allowed.get(device, set()), "session for %s with a key not enrolled for it: %s" % (
                device,
                ev,
            )
        for ev in self.events("lease.start"):
            assert ev.get("device") in self.allowed, "lease of a device the test never enrolled: %s" % ev
        for rec in self.call("devices"):
            if rec.get("status") == "connected":
                fp = norm_fingerprint(rec.get("fingerprint") or "")
                assert fp in self.allowed.get(rec["name"], set()), "registry: %s connected with a foreign key" % rec

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        super().stop()
        if self._guard is not None:
            self._guard.terminate()
            self._guard.wait(10)


def base_options(password_file: Path) -> Dict[str, Any]:
    return {
        "ssh_binds": ["127.0.0.1:0"],
        "tls_binds": [],
        "credentials": {"username": "netconf", "password_file": str(password_file)},
        "handshake_timeout": 5,
        "max_message_bytes": MAX_MESSAGE,
        "log_format": "json",
        "log_level": "INFO",
    }


# -- canaries -----------------------------------------------------------------------------------


class SyncNetconf:
    """The client end of a lease: the device's hello, ours, then RPCs (RFC 6242 framing)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deframer = Deframer(max_message=64 * MIB)
        self.pending: List[bytes] = []
        self.chunked = False
        self.msg_id = 0
        self.server_hello = b""

    def recv(self) -> bytes:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the lease ended (listener closed the socket)")
            self.pending.extend(self.deframer.feed(data))
            while True:
                more = self.deframer.feed(b"")
                if not more:
                    break
                self.pending.extend(more)
        return self.pending.pop(0)

    def hello(self, base11: bool = True) -> bytes:
        self.server_hello = self.recv()
        caps = [BASE_10, BASE_11] if base11 else [BASE_10]
        self.sock.sendall(frame_eom(build_hello(caps, None)))
        if base11 and BASE_11.encode() in self.server_hello:
            self.chunked = self.deframer.chunked = True
        return self.server_hello

    def send_rpc(self, body: str) -> None:
        self.msg_id += 1
        msg = ('<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="%d">%s</rpc>' % (self.msg_id, body)).encode()
        self.sock.sendall(frame_chunked(msg) if self.chunked else frame_eom(msg))

    def rpc(self, body: str) -> bytes:
        self.send_rpc(body)
        return self.recv()


GET_CONFIG = "<get-config><source><running/></source></get-config>"


class CanaryLoop:
    """Enrolled devices leased in a loop; every lease must succeed, every time, within bounds."""

    def __init__(self, lp: AttackListener, devices: Sequence[str], threads: int = 2, pace: float = 0.1) -> None:
        self.lp = lp
        self.devices = list(devices)
        self.pace = pace
        self.ok = 0
        self.failures: List[Tuple[float, str, str]] = []
        self.latencies: List[float] = []
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(self.devices[i::threads],), name="canary-%d" % i, daemon=True)
            for i in range(min(threads, len(self.devices)))
        ]
        self.drops: Callable[[], int] = lambda: 0  # devices that had to call again (set by the fixture)
        self.fleet: Any = None  # the simulated devices (tests/conftest.py SimFleet)
        self.idle: List[str] = []  # enrolled, connected, not leased
        self._drops_at_start = 0
        self.mark: Optional[Mark] = None  # the listener's meters when the loop started (verdict)

    def start(self) -> "CanaryLoop":
        self._drops_at_start = self.drops()
        if self.lp.sampler is not None:
            self.mark = self.lp.sampler.mark()
        for thread in self._threads:
            thread.start()
        return self

    def lease_once(self, device: str) -> None:
        client = ControlClient(self.lp.address, timeout=CANARY_TIMEOUT)
        sock, info = client.lease(device, wait=CANARY_WAIT)
        try:
            sock.settimeout(CANARY_TIMEOUT)
            fp = norm_fingerprint(str(info.get("fingerprint", "")))
            if fp not in self.lp.allowed.get(device, set()):
                raise AssertionError("lease of %s runs over key %s, not the enrolled one" % (device, info))
            nc = SyncNetconf(sock)
            nc.hello()
            reply = nc.rpc(GET_CONFIG)
            if b"rpc-reply" not in reply or b"rpc-error" in reply:
                raise AssertionError("bad reply from %s: %r" % (device, reply[:300]))
        finally:
            sock.close()

    def _run(self, devices: List[str]) -> None:
        while not self._stop.is_set():
            for device in devices:
                if self._stop.is_set():
                    return
                started = time.monotonic()
                try:
                    self.lease_once(device)
                except Exception as exc:  # every failure is a finding; keep going
                    with self._lock:
                        self.failures.append((started - self.started, device, "%s: %s" % (type(exc).__name__, exc)))
                else:
                    elapsed = time.monotonic() - started
                    with self._lock:
                        self.ok += 1
                        self.latencies.append(elapsed)
                        if elapsed > CANARY_TIMEOUT:
                            self.failures.append((started - self.started, device, "took %.1f s" % elapsed))
                self._stop.wait(self.pace)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(CANARY_TIMEOUT + CANARY_WAIT + 5)

    def summary(self) -> str:
        with self._lock:
            lat = sorted(self.latencies)
            worst = lat[-1] if lat else 0.0
            return "canaries %s: %d leases ok, %d failed, %d drop(s), slowest %.2f s; failures: %s" % (
                ",".join(self.devices),
                self.ok,
                len(self.failures),
                self.drops() - self._drops_at_start,
                worst,
                self.failures[:5],
            )

    def wait_more(self, leases: int, timeout: float = 30.0) -> None:
        """Wait until the loop served ``leases`` more leases (after a change, to prove it held)."""
        target = self.ok + leases
        wait_until(lambda: self.ok >= target or self.failures, timeout, "%d more canary leases" % leases,
                   detail=self.summary)

    def assert_clean(self, min_ok: int = 1) -> None:
        """Stop, then: no failure, no canary dropped, and the loop really ran during the attack."""
        self.stop()
        text = self.summary()
        assert not self.failures, text
        assert self.drops() == self._drops_at_start, "a canary lost its session: " + text
        assert self.ok >= min_ok, "the canary loop hardly ran: " + text


def verdict(
    lp: AttackListener,
    loop: Optional[CanaryLoop],
    min_ok: int = 1,
    *,
    rss_growth: int = RSS_GROWTH,
    cpu_base: float = CPU_BASE,
    cpu_share: float = CPU_SHARE,
) -> None:
    """What every attack must leave true: nothing handed to a foreign key, canaries untouched,
    the listener alive, and its memory and CPU within bounds since the canaries started (peak
    RSS growth at most ``rss_growth``; CPU time at most ``cpu_base`` + ``cpu_share`` x wall time)."""
    assert lp.proc is not None and lp.proc.poll() is None, "the listener died:\n" + lp.log()[-3000:]
    if loop is not None and not loop.stopped:
        loop.wait_more(len(loop.devices))  # and the canaries are still served after the attack
    mark = loop.mark if loop is not None and loop.mark is not None else lp.started_mark
    assert lp.sampler is not None and mark is not None, "the listener was never metered"
    if loop is not None:
        loop.stop()
    now = lp.sampler.mark()
    elapsed = now.at - mark.at
    cpu = now.cpu - mark.cpu
    grown = lp.sampler.peak_rss_since(mark) - mark.rss
    cpu_bound = cpu_base + cpu_share * elapsed
    figures = (
        "listener pid %d since the canaries started: %.1f s CPU over %.1f s (%.0f%% of a core; bound %.1f s), "
        "RSS %.1f MiB, peak +%.1f MiB (bound +%.0f MiB), now %.1f MiB"
        % (lp.pid, cpu, elapsed, 100 * cpu / max(elapsed, 0.001), cpu_bound, mark.rss / MIB, grown / MIB,
           rss_growth / MIB, now.rss / MIB)
    )
    print("verdict: " + figures)
    if loop is not None:
        loop.assert_clean(min_ok)
    lp.assert_no_foreign_sessions()
    assert grown <= rss_growth, "the listener's memory grew beyond its bound: " + figures
    assert cpu <= cpu_bound, "the listener spent more CPU than its bound: " + figures


# -- TLS material and SSH keys ------------------------------------------------------------------


def tls_options(tls_pki: Any) -> Dict[str, Any]:
    return {
        "tls_binds": ["127.0.0.1:0"],
        "tls": {
            "client_cert": str(tls_pki.listener_cert.cert_path),
            "client_key": str(tls_pki.listener_cert.key_path),
            "device_cas": [str(tls_pki.device_ca.cert_path)],
        },
    }


def ssh_identity(keys_dir: Path, name: str) -> Tuple[Path, str, str]:
    """A persistent SSH host key (``simulator.ensure_keys``): (private key file, public line, fp)."""
    import simulator  # tests/peers

    key = simulator.ensure_keys(keys_dir, [name])[name]
    return keys_dir / name, simulator.public_line(key), str(key.get_fingerprint("sha256"))

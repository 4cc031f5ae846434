# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared plumbing of the benchmarks: process accounting, the listener, the simulator, trust stores.

Why a separate process for everything: the machine has 2 cores and is noisy, so every figure is
read from one process's own accounting (``/proc/<pid>/stat`` utime+stime, ``/proc/<pid>/status``
VmRSS) around a phase, and every comparison is made in the same run on the same devices.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PY) if VENV_PY.exists() else sys.executable
COLLECTIONS = ROOT / ".collections"
CACHE = ROOT / ".cache" / "bench"
KEYS_DIR = CACHE / "keys"
PEERS = ROOT / "tests" / "peers"
USER = "netconf"
PASSWORD = "bench-secret"
CLK_TCK = os.sysconf("SC_CLK_TCK")

if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
if str(PEERS) not in sys.path:
    sys.path.insert(0, str(PEERS))


def env() -> Dict[str, str]:
    """Environment for children: the collection importable, no stray Python buffering."""
    e = dict(os.environ)
    e["PYTHONUNBUFFERED"] = "1"
    return e


def raise_nofile() -> int:
    """The benchmark process itself may hold many sockets (ncclient baselines)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- process accounting ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime+stime of the whole process (all threads), in seconds."""
    with open("/proc/%d/stat" % pid, "r") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    """Resident set size in KiB (VmRSS)."""
    with open("/proc/%d/status" % pid, "r") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(count: int, start: int = 20000, end: int = 30000) -> int:
    """A base port with ``count`` consecutive free ports (direct endpoints of the simulator)."""
    base = start
    while base + count < end:
        ok = True
        for p in range(base, base + count):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    base = p + 1
                    break
        if ok:
            return base
    raise RuntimeError("no block of %d free ports" % count)


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def summary_ms(values: Sequence[float]) -> Dict[str, float]:
    """median / p95 / min / max of durations given in seconds, in milliseconds."""
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values) * 1000, 2),
        "p95_ms": round(pct(values, 95) * 1000, 2),
        "min_ms": round(min(values) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


def log(msg: str) -> None:
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# -- line-reading child processes ----------------------------------------------------------------


class LineProcess:
    """A child whose stdout lines are collected by a thread, with an incremental kind counter.

    Why not the simulator's own ``SimulatorProcess.wait_for``: it rescans every line on every new
    line (quadratic at 10,000 devices), and this process shares 2 cores with what it measures.
    """

    def __init__(self, cmd: Sequence[str], *, cwd: Optional[str] = None) -> None:
        self.cmd = list(cmd)
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=cwd,
            bufsize=1,
        )
        self.counts: Dict[str, int] = {}
        self.first: Dict[str, str] = {}
        self.last: Dict[str, str] = {}
        self.stderr: List[str] = []
        self._lock = threading.Condition()
        self._t_out = threading.Thread(target=self._drain_out, daemon=True)
        self._t_err = threading.Thread(target=self._drain_err, daemon=True)
        self._t_out.start()
        self._t_err.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, _sep, rest = line.rstrip("\n").partition(" ")
            with self._lock:
                self.counts[kind] = self.counts.get(kind, 0) + 1
                self.first.setdefault(kind, rest)
                self.last[kind] = rest
                self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    def _drain_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.stderr.append(line.rstrip("\n"))
                del self.stderr[:-50]

    def count(self, kind: str) -> int:
        with self._lock:
            return self.counts.get(kind, 0)

    def wait_for(self, kind: str, n: int = 1, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.counts.get(kind, 0) < n:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._t_out.is_alive()):
                    return False
                self._lock.wait(min(left, 0.2))
        return True

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._t_out.join(5)
        self._t_err.join(5)

    def tail(self) -> str:
        with self._lock:
            return " | ".join(self.stderr[-8:])


# -- devices ----------------------------------------------------------------------------------------


def ensure_fleet(count: int) -> Dict[str, Dict[str, str]]:
    """Host keys for sim0001..simN (made once, cached in .cache/bench/keys) and their manifest."""
    from simulator import device_name, ensure_keys, public_line  # tests/peers/simulator.py

    KEYS_DIR.mkdir(parents=True, exist_ok=True)
    manifest_path = CACHE / "manifest.json"
    manifest: Dict[str, Dict[str, str]] = {}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
    names = [device_name("sim", i) for i in range(1, count + 1)]
    missing = [n for n in names if n not in manifest]
    if missing:
        log("generating/loading %d device host keys in %s" % (len(missing), KEYS_DIR))
        keys = ensure_keys(KEYS_DIR, missing)
        for name, key in keys.items():
            manifest[name] = {"public_key": public_line(key), "fingerprint": key.get_fingerprint("sha256")}
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, sort_keys=True))
        os.replace(tmp, manifest_path)
    return {n: manifest[n] for n in names}


def password_file() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "password"
    if not path.exists() or path.read_text() != PASSWORD:
        path.write_text(PASSWORD)
        os.chmod(path, 0o600)
    return path


def write_trust_store(path: Path, manifest: Dict[str, Dict[str, str]]) -> float:
    """Enroll every device's host key with ``TrustStore.update``; returns the seconds it took.

    The entries are set directly inside ``update`` (same file format, same validation on write):
    ``add_identity`` rebuilds the whole index per call, which is quadratic for 10,000 devices.
    """
    from netconf_callhome.policy.trust_store import TrustStore

    t0 = time.monotonic()

    def mutate(data: Dict[str, Any]) -> bool:
        devices = data.setdefault("devices", {})
        for name, info in manifest.items():
            devices[name] = {"ssh_host_keys": [info["public_key"]]}
        return True

    TrustStore(str(path)).update(mutate)
    return time.monotonic() - t0


def simulator_cmd(*args: str) -> List[str]:
    return [PYTHON, str(PEERS / "simulator.py"), *args]


def start_simulator(
    *, listener: Optional[int] = None, count: int, direct: Optional[int] = None, retry: float = 1.0,
    processes: int = 1, extra: Sequence[str] = (),
) -> LineProcess:
    """The fleet in its own process(es): devices sim0001..simN, password auth, cached keys."""
    args = ["--count", str(count), "--keys-dir", str(KEYS_DIR), "--user", USER,
            "--password-file", str(password_file()), "--retry", str(retry)]
    if listener is not None:
        args += ["--listener", "127.0.0.1:%d" % listener]
    if direct is not None:
        args += ["--direct", "127.0.0.1:%d" % direct]
    if processes > 1:
        args += ["--processes", str(processes)]
    return LineProcess(simulator_cmd(*args, *extra))


def process_tree_cpu(pid: int) -> float:
    """CPU of a process and its direct children (the simulator's ``--processes`` workers)."""
    total = 0.0
    with contextlib.suppress(OSError):
        total += cpu_seconds(pid)
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as handle:
                for child in handle.read().split():
                    with contextlib.suppress(OSError):
                        total += cpu_seconds(int(child))
    return total


# -- the listener -----------------------------------------------------------------------------------


class Listener:
    """``python -m netconf_callhome serve`` in a fresh home."""

    def __init__(
        self, manifest: Dict[str, Dict[str, str]], *, keepalive: Optional[float] = None,
        log_level: str = "WARNING", extra: Sequence[str] = (), prefix: Optional[List[str]] = None,
        listener_src: Optional[str] = None,
    ) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="bench-listener-"))
        self.trust_seconds = write_trust_store(self.home / "trust.json", manifest)
        self.port = free_port()
        cmd = [
            PYTHON, "-m", "netconf_callhome", "serve",
            "--home", str(self.home), "--ssh", "127.0.0.1:%d" % self.port, "--username", USER,
            "--password-file", str(password_file()), "--log-level", log_level,
        ]
        if keepalive is not None:
            cmd += ["--keepalive-interval", str(keepalive)]
        cmd += list(extra)
        self.cmd = (prefix or []) + cmd
        child_env = env()
        # Another netconf_callhome (a worktree of an older commit's listener/src), for A/B runs: run
        # there, since `python -m` puts its working directory first on sys.path, ahead of the venv's
        # editable install of this tree (no PYTHONPATH; every path of the command is absolute).
        if listener_src:
            child_env.pop("PYTHONSAFEPATH", None)  # that would leave the working directory off sys.path
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.DEVNULL, stderr=open(self.home / "listener.log", "w"), env=child_env,
            cwd=listener_src or None,
        )
        from netconf_callhome.control.client import ControlClient

        self.control_path = str(self.home / "control.sock")
        self.client = ControlClient("unix:" + self.control_path, timeout=30.0)
        deadline = time.monotonic() + 30
        while True:
            try:
                ping = self.client.call("ping", timeout=2)
                self.pid = int(ping["pid"])
                break
            except Exception:  # noqa: BLE001 - not up yet
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("listener did not start: %s" % self.log_tail())
                time.sleep(0.05)

    def status(self) -> Dict[str, Any]:
        return dict(self.client.call("status", timeout=30))

    def sessions(self) -> int:
        return int(self.status()["sessions"])

    def log_tail(self, n: int = 10) -> str:
        with contextlib.suppress(OSError):
            return " | ".join((self.home / "listener.log").read_text().splitlines()[-n:])
        return ""

    LOG_MARKERS = {
        "handshake_limit_warnings": "event=handshake.limit",  # rate-limited: at most one per 5 s
        "handshake_failed": "event=handshake.failed",
        "device_session_failed": "event=device.session_failed",
        "peer_blocked": "event=peer.blocked",
        "future_never_retrieved": "Future exception was never retrieved",
        "nonetype_errors": "NoneType: None",
    }

    def log_counts(self) -> Dict[str, Any]:
        """How often the listener's log says what a storm is about (blocking, shedding, bugs).

        Also tallies ``reason=`` of failed handshakes and keeps the first lines of each kind: the
        log itself goes with the listener's temporary home.
        """
        counts: Dict[str, Any] = dict.fromkeys(self.LOG_MARKERS, 0)
        reasons: Dict[str, int] = {}
        samples: Dict[str, List[str]] = {}
        with contextlib.suppress(OSError):
            with open(self.home / "listener.log", encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    for key, marker in self.LOG_MARKERS.items():
                        if marker in line:
                            counts[key] += 1
                            if len(samples.setdefault(key, [])) < 3:
                                samples[key].append(line.strip()[:300])
                    if ("event=handshake.failed" in line or "session_failed" in line) and " reason=" in line:
                        reason = line.split(" reason=", 1)[1].split(" ", 1)[0]
                        reasons[reason] = reasons.get(reason, 0) + 1
        counts["handshake_failed_reasons"] = reasons
        counts["samples"] = samples
        return counts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def running(*things: Any) -> Iterator[None]:
    """Stop every started thing (listener, simulator, baseline) on the way out, in reverse."""
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.stop()


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def report(res: Any, json_path: Optional[Path]) -> int:
    """The end of every benchmark script: results to ``--json`` if given, and to stdout."""
    if json_path:
        write_json(json_path, res)
    print(json.dumps(res, indent=1, sort_keys=True))
    return 0

# SPDX-License-Identifier: GPL-3.0-or-later
"""An OpenSSH device that calls home: ``socat TCP:<listener> EXEC:'sshd -i ...'``.

Why: the simulator uses asyncssh on both ends of the wire in most tests; this peer puts *real
OpenSSH* on the device side, so the listener is checked against the SSH server most devices
actually embed (key exchange, host-key algorithms, auth methods, channel handling). ``sshd -i``
serves one connection on stdin/stdout, and socat dials the listener and hands the socket to it,
which is exactly the call-home role reversal. NETCONF itself is ``netconf_stdio.py`` behind a
``Subsystem netconf`` line.

Needs root (sshd switches to the login user); raises :class:`PeerUnavailable` with a reason
otherwise, which tests turn into ``pytest.skip(reason)``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

if str(Path(__file__).resolve().parent) not in sys.path:  # a script that put only its own dir on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_availability import PeerUnavailable as _PeerUnavailable  # noqa: E402  (tests/peers)

PEERS = Path(__file__).resolve().parent
SSHD = "/usr/sbin/sshd"
USER_PREFIX = "nch-"


class PeerUnavailable(_PeerUnavailable):
    """The OpenSSH peer cannot run here (not root, missing binaries); the message says why.

    A :class:`peer_availability.PeerUnavailable`: tests skip on it, or fail where peers are required."""


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


def create_user(name: str) -> None:
    """Create the login user sshd switches to, able to log in by key as well as by password.

    ``useradd`` leaves a new account *locked* (``!`` in /etc/shadow), and sshd without PAM
    refuses every method, public key included, for a locked account. ``*`` is "no valid
    password" without the lock; :meth:`SshdPeer._setup` sets a real one when it tests passwords.
    """
    _run(["useradd", "--system", "--create-home", "--shell", "/bin/sh", name])
    _run(["usermod", "-p", "*", name])


def remove_user(name: str) -> None:
    """Remove a user made by :func:`create_user`, with its home (leaves nothing behind)."""
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True, check=False, timeout=60)


def pick_python(user: str) -> tuple[str, str]:
    """Interpreter for the subsystem: the venv python if ``user`` can execute it, else system.

    Why: the venv may link into a root-only directory (e.g. pyenv under /root); netconf_stdio.py
    only needs the standard library, so /usr/bin/python3 is an equivalent fallback.
    """
    venv = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"
    candidates = [str(venv), sys.executable, "/usr/bin/python3"]
    for py in candidates:
        if not Path(py).exists():
            continue
        r = subprocess.run(
            ["runuser", "-u", user, "--", py, "-c", "import asyncio"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if r.returncode == 0:
            note = "" if py == candidates[0] else f"{candidates[0]} not executable by {user}"
            return py, note
    raise PeerUnavailable(f"no python interpreter executable by user {user}")


class SshdPeer:
    """Context manager: a real-OpenSSH NETCONF device calling home to ``listener``.

    ``with SshdPeer(("127.0.0.1", port), password_auth=True) as peer:`` then use
    ``peer.host_key_line``, ``peer.fingerprint``, ``peer.username``, ``peer.password`` and
    ``peer.add_authorized_key(line)``. Dialing starts on :meth:`start_dialing` (or immediately
    with ``dial=True``), and re-dials after a drop when ``redial=True``.
    """

    def __init__(
        self,
        listener: tuple[str, int],
        *,
        user: Optional[str] = None,
        password_auth: bool = True,
        hostname: str = "sshd-peer",
        redial: bool = False,
        retry: float = 1.0,
        dial: bool = False,
        workdir: Optional[Path] = None,
    ) -> None:
        self.listener = listener
        # A user of our own per peer, removed on exit: nothing depends on an earlier run's account.
        self.username = user or USER_PREFIX + secrets.token_hex(4)
        self._own_user = False
        self.password_auth = password_auth
        self.password: Optional[str] = None
        self.hostname = hostname
        self.redial = redial
        self.retry = retry
        self._dial_on_enter = dial
        self._own_workdir = workdir is None
        self.workdir = workdir
        self.python_note = ""
        self.dials = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._lock = threading.Lock()

    # -- setup -------------------------------------------------------------------------------
    def __enter__(self) -> "SshdPeer":
        if os.geteuid() != 0:
            raise PeerUnavailable("sshd -i must run as root to switch to the login user")
        for tool in (SSHD, "socat", "ssh-keygen", "useradd", "usermod", "userdel", "runuser"):
            if shutil.which(tool) is None:
                raise PeerUnavailable(f"{tool} not found (install openssh-server, socat)")
        try:
            self._setup()
        except BaseException:
            self._cleanup_dir()
            raise
        if self._dial_on_enter:
            self.start_dialing()
        return self

    def _setup(self) -> None:
        if subprocess.run(["id", self.username], capture_output=True, check=False).returncode != 0:
            create_user(self.username)
            self._own_user = True
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="sshd-peer-"))
        wd = self.workdir
        wd.mkdir(parents=True, exist_ok=True)
        os.chmod(wd, 0o755)  # the login user must reach the state directory
        self.host_key = wd / "ssh_host_ed25519_key"
        if not self.host_key.exists():
            _run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    self.hostname,
                    "-f",
                    str(self.host_key),
                ]
            )
        self.authorized_keys = wd / "authorized_keys"
        self.authorized_keys.touch()
        os.chmod(self.authorized_keys, 0o644)
        state = wd / "state"
        state.mkdir(exist_ok=True)
        shutil.chown(state, user=self.username)
        self.log = wd / "sshd.log"
        self.log.touch()
        if self.password_auth:
            self.password = secrets.token_urlsafe(18)
            _run(["chpasswd"], input=f"{self.username}:{self.password}\n")
        python, self.python_note = pick_python(self.username)
        # The login user must read the subsystem script: a checkout under a 0700 directory (a
        # mktemp -d clone, root's home) is not readable to it, so the peer runs its own copy.
        for name in ("netconf_stdio.py", "netconf_server.py"):  # the second is imported by the first
            shutil.copyfile(PEERS / name, wd / name)
            os.chmod(wd / name, 0o644)
        server = wd / "netconf_stdio.py"
        self.config = wd / "sshd_config"
        subsystem = (
            f"{python} {server} --hostname {self.hostname} "
            f"--state-file {state / 'running.xml'}"
        )
        self.config.write_text(
            "\n".join(
                [
                    f"HostKey {self.host_key}",
                    "PidFile none",
                    "UsePAM no",
                    f"AllowUsers {self.username}",
                    "PermitRootLogin no",
                    "PubkeyAuthentication yes",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    f"PasswordAuthentication {'yes' if self.password_auth else 'no'}",
                    "KbdInteractiveAuthentication no",
                    "PermitEmptyPasswords no",
                    "StrictModes no",
                    "X11Forwarding no",
                    "AllowTcpForwarding no",
                    "AllowAgentForwarding no",
                    "PrintMotd no",
                    "LogLevel VERBOSE",
                    f"Subsystem netconf {subsystem}",
                    "",
                ]
            )
        )
        _run([SSHD, "-t", "-f", str(self.config)])

    # -- identity --------------------------------------------------------------------------
    @property
    def host_key_line(self) -> str:
        """``ssh-ed25519 AAAA...`` (no comment), the value a trust store pins."""
        return " ".join(Path(str(self.host_key) + ".pub").read_text().split()[:2])

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` of the host key, as ``ssh-keygen -l`` prints it."""
        out = _run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(self.host_key) + ".pub"]).stdout
        return out.split()[1]

    def add_authorized_key(self, public_key_line: str) -> None:
        """Let the listener log in with this public key (OpenSSH one-line format)."""
        with self.authorized_keys.open("a") as fh:
            fh.write(public_key_line.strip() + "\n")

    def log_text(self) -> str:
        """The sshd VERBOSE log so far (for assertions and failure messages)."""
        return self.log.read_text(errors="replace")

    # -- calling home ----------------------------------------------------------------------
    def command(self) -> list[str]:
        """The socat command line that dials the listener and runs ``sshd -i`` on the socket."""
        host, port = self.listener
        sshd = f"{SSHD} -i -f {self.config} -E {self.log}"
        # nofork: socat execs sshd on the TCP socket itself, so sshd logs the real peer address
        return ["socat", f"TCP:{host}:{port}", f"EXEC:{sshd},nofork"]

    def start_dialing(self) -> None:
        """Dial now (in a background thread); re-dial after each drop if ``redial``."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._dial_loop, name="sshd-peer", daemon=True)
        self._thread.start()

    def _dial_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                self._proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                self.dials += 1
            err = self._proc.communicate()[1]
            if err:
                with self.log.open("a") as fh:
                    fh.write("socat: " + err.decode(errors="replace"))
            if not self.redial:
                return
            self._stop.wait(self.retry)

    def wait_dials(self, n: int, timeout: float = 20.0) -> None:
        """Block until at least ``n`` dial attempts were started."""
        deadline = time.monotonic() + timeout
        while self.dials < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.dials} dials, wanted {n}")
            time.sleep(0.05)

    # -- teardown --------------------------------------------------------------------------
    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # socat forwards the end to its sshd child by closing the socket
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(10)
        self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._own_user:
            remove_user(self.username)
            self._own_user = False


__all__ = ("PeerUnavailable", "SshdPeer", "create_user", "remove_user", "pick_python")

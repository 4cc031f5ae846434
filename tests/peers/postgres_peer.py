# SPDX-License-Identifier: GPL-3.0-or-later
"""A PostgreSQL server of our own, from Debian's ``postgresql`` package, for the shared-state tests.

``PostgresPeer().start()`` runs ``initdb`` and ``pg_ctl`` (from ``/usr/lib/postgresql/<version>/bin``,
the newest version installed, found at run time) on a data directory in a fresh temporary
directory, listening on a free loopback port only (its Unix socket in that directory, never
``/var/run/postgresql``); ``stop()`` stops it and removes everything it made. Nothing of the
system's cluster (``/etc/postgresql``, ``pg_ctlcluster``) is read or started.

PostgreSQL refuses to run as root. As root the server runs as an unprivileged user: Debian's
``postgres`` account when the package created it, else a system user made for this peer
(``callhome-pgNNNN``, no home, no shell) and deleted again by ``stop()``. As any other user it runs
as that user.

Authentication is real: the superuser ``callhome`` has a random password and TCP connections use
SCRAM (``pg_hba``: ``scram-sha-256``), so a URL without the password is refused. ``url()`` gives a
``postgresql://callhome:PASSWORD@127.0.0.1:PORT/DB`` URL; ``create_database()`` makes a fresh
database per test; ``psql()`` runs one statement and returns its rows (unaligned, ``|``-separated).

Speed over durability (a test cluster): ``fsync=off``, ``synchronous_commit=off``,
``full_page_writes=off``.

Raises :class:`PeerUnavailable` with the reason when PostgreSQL is not installed (``make
system-deps`` installs the Debian package ``postgresql``).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

if str(Path(__file__).resolve().parent) not in sys.path:  # a script that put only its own dir on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_availability import PeerUnavailable as _PeerUnavailable  # noqa: E402  (tests/peers)

SUPERUSER = "callhome"
DEBIAN_ACCOUNT = "postgres"


class PeerUnavailable(_PeerUnavailable):
    """PostgreSQL cannot be run here (the reason says why).

    A :class:`peer_availability.PeerUnavailable`: tests skip on it, or fail where peers are required."""


def bin_dir() -> str:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has initdb and pg_ctl."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        version = initdb.split("/")[4]
        if version.isdigit() and os.access(os.path.join(os.path.dirname(initdb), "pg_ctl"), os.X_OK):
            found.append((int(version), os.path.dirname(initdb)))
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(os.path.realpath(initdb))
    raise PeerUnavailable(
        "PostgreSQL's initdb/pg_ctl not found in /usr/lib/postgresql/*/bin "
        "(Debian package postgresql; make system-deps installs it)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PostgresPeer:
    def __init__(self) -> None:
        self.bin = bin_dir()
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.host = "127.0.0.1"
        self.workdir = ""
        self.created_user = ""
        self.run_as: Optional[pwd.struct_passwd] = None
        self.running = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> "PostgresPeer":
        # A test run that ends without the fixture's teardown (an interrupted session) still stops
        # the server and deletes the user made for it; stop() is idempotent.
        atexit.register(self.stop)
        try:
            self._prepare()
            self._initdb()
            last = ""
            for _attempt in range(3):  # a free port can be taken between the probe and the bind
                self.port = free_port(self.host)
                res = self._pg_ctl("start", "-w", "-t", str(int(timeout)), "-l", self.logfile, "-o", self._options())
                if res.returncode == 0:
                    self.running = True
                    return self
                last = res.stdout + res.stderr + self.log()[-2000:]
            raise RuntimeError("pg_ctl start failed:\n%s" % last)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server, remove the work directory, delete the user made for it (if any)."""
        atexit.unregister(self.stop)
        if self.running:
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", "30")
            self.running = False
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = ""
        if self.created_user:
            subprocess.run(["userdel", self.created_user], capture_output=True, check=False)
            self.created_user = ""

    def restart(self, timeout: float = 60.0) -> None:
        """Stop (fast) and start again on the same port and data (a database restart mid-run)."""
        res = self._pg_ctl(
            "restart", "-m", "fast", "-w", "-t", str(int(timeout)), "-l", self.logfile, "-o", self._options()
        )
        if res.returncode != 0:
            raise RuntimeError("pg_ctl restart failed:\n%s" % (res.stdout + res.stderr + self.log()[-2000:]))

    def halt(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected), keeping its data and port:
        the database is away until :meth:`resume`."""
        res = self._pg_ctl("stop", "-m", "fast", "-w", "-t", "30")
        if res.returncode != 0:
            raise RuntimeError("pg_ctl stop failed:\n%s" % (res.stdout + self.log()[-2000:]))
        self.running = False

    def resume(self, timeout: float = 60.0) -> None:
        """Start the halted server again on the same port."""
        res = self._pg_ctl("start", "-w", "-t", str(int(timeout)), "-l", self.logfile, "-o", self._options())
        if res.returncode != 0:
            raise RuntimeError("pg_ctl start failed:\n%s" % (res.stdout + self.log()[-2000:]))
        self.running = True

    def __enter__(self) -> "PostgresPeer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- use -------------------------------------------------------------------------------------

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        auth = "%s:%s" % (SUPERUSER, self.password) if password else SUPERUSER
        return "postgresql://%s@%s:%d/%s" % (auth, self.host, self.port, database)

    def psql(self, sql: str, database: str = "postgres") -> List[List[str]]:
        """Run one statement through TCP as the superuser; rows of strings."""
        res = subprocess.run(
            [os.path.join(self.bin, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", sql],
            capture_output=True, text=True, check=False, timeout=60,
            env=dict(os.environ, PGPASSWORD=self.password, PGCONNECT_TIMEOUT="10"),
        )
        if res.returncode != 0:
            raise RuntimeError("psql %r failed: %s" % (sql, res.stderr.strip()))
        return [line.split("|") for line in res.stdout.splitlines() if line]

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL (with the password)."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError("database name %r" % name)
        self.psql("CREATE DATABASE %s" % name)
        return self.url(name)

    def log(self) -> str:
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    # -- internals -------------------------------------------------------------------------------

    @property
    def datadir(self) -> str:
        return os.path.join(self.workdir, "data")

    @property
    def logfile(self) -> str:
        return os.path.join(self.workdir, "postgres.log")

    def _prepare(self) -> None:
        if os.geteuid() == 0:
            try:
                self.run_as = pwd.getpwnam(DEBIAN_ACCOUNT)
            except KeyError:
                name = "callhome-pg%04d" % secrets.randbelow(10000)
                res = subprocess.run(
                    ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                    capture_output=True, text=True, check=False,
                )
                if res.returncode != 0:
                    raise PeerUnavailable("cannot create a user to run PostgreSQL as: %s" % res.stderr.strip())
                self.created_user = name
                self.run_as = pwd.getpwnam(name)
        # A directory of its own under the system temp dir (pytest's tmp_path is 0700 root's:
        # the server's user could not reach it). Short, for the Unix socket's path limit.
        self.workdir = tempfile.mkdtemp(prefix="callhome-pg-")
        if self.run_as is not None:
            os.chown(self.workdir, self.run_as.pw_uid, self.run_as.pw_gid)
        os.chmod(self.workdir, 0o700)

    def _as_user(self) -> Dict[str, Any]:
        if self.run_as is None:
            return {}
        return {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": [], "cwd": self.workdir}

    def _initdb(self) -> None:
        pwfile = os.path.join(self.workdir, "pw")
        with open(pwfile, "w", encoding="utf-8") as handle:
            handle.write(self.password + "\n")
        if self.run_as is not None:
            os.chown(pwfile, self.run_as.pw_uid, self.run_as.pw_gid)
        os.chmod(pwfile, 0o600)
        res = subprocess.run(
            [os.path.join(self.bin, "initdb"), "-D", self.datadir, "-U", SUPERUSER, "--pwfile", pwfile,
             "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, check=False, timeout=120,
            env=self._env(), **self._as_user(),
        )
        os.unlink(pwfile)
        if res.returncode != 0:
            raise RuntimeError("initdb failed:\n%s%s" % (res.stdout, res.stderr))

    def _options(self) -> str:
        return (
            "-c listen_addresses=%s -c port=%d -c unix_socket_directories=%s "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
            % (self.host, self.port, self.workdir)
        )

    def _pg_ctl(self, *args: str) -> "subprocess.CompletedProcess[str]":
        # Output to a file, not a pipe: the server pg_ctl starts inherits its descriptors, and a
        # pipe held open by the server would keep subprocess.run waiting for its end forever.
        out_path = os.path.join(self.workdir, "pg_ctl.out")
        with open(out_path, "w+", encoding="utf-8") as out:
            res = subprocess.run(
                [os.path.join(self.bin, "pg_ctl"), "-D", self.datadir] + list(args),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, text=True, check=False,
                timeout=180, env=self._env(), **self._as_user(),
            )
            out.seek(0)
            res.stdout, res.stderr = out.read(), ""
        return res

    def _env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self.run_as is not None:
            env["HOME"] = self.workdir
            env["USER"] = env["LOGNAME"] = self.run_as.pw_name
        return env


def start_or_skip() -> "PostgresPeer":
    """A started peer; where PostgreSQL cannot run here: a pytest skip that says why, or a
    failure where peers are required (``peer_availability.peers_required``: the Makefile's test
    targets, CI)."""
    from peer_availability import peer_or_skip

    return peer_or_skip(lambda: PostgresPeer().start(), "PostgreSQL (tests/peers/postgres_peer.py)")

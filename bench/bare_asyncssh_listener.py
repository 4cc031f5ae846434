# SPDX-License-Identifier: GPL-3.0-or-later
"""The floor of the call-home storm benchmark: a bare asyncssh ``listen_reverse``.

Why: the listener's CPU per device only means something next to what the SSH handshake itself
costs in the same library on the same devices. This server accepts any host key, logs in with
the password the simulated devices need and holds every connection; nothing else (no trust
store, no registry, no control socket).

Modes:
  ssh      count a device once SSH key exchange + user authentication completed (the floor)
  netconf  also open the ``netconf`` subsystem, send a client hello and read the device's hello
           (what a NETCONF-ready session needs at minimum; separates protocol cost from ours)

Output (stdout, one line each): ``LISTENING <port>``, then ``UP <unix-time>`` per device ready,
``FAILED <reason>`` per failed handshake.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
import time
from typing import Any, Optional, Set

import asyncssh

HELLO = (
    b'<?xml version="1.0" encoding="UTF-8"?><hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
    b"<capabilities><capability>urn:ietf:params:netconf:base:1.0</capability>"
    b"<capability>urn:ietf:params:netconf:base:1.1</capability></capabilities></hello>]]>]]>"
)
# Same preference as the listener (listener/ssh_transport.py), so both negotiate the same keys.
HOST_KEY_ALGS = [
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa",
]


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _HelloReader(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    """Collects the device's hello; resolves ``done`` at the end-of-message marker."""

    def __init__(self, done: "asyncio.Future[None]") -> None:
        self.done = done
        self.buf = b""

    def connection_made(self, chan: Any) -> None:
        chan.write(HELLO)

    def data_received(self, data: bytes, datatype: Optional[int]) -> None:
        if self.done.done():
            return
        self.buf += data
        if b"]]>]]>" in self.buf:
            self.done.set_result(None)
            self.buf = b""

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("channel closed before hello"))


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--username", default="netconf")
    p.add_argument("--password-file", required=True)
    p.add_argument("--mode", choices=("ssh", "netconf"), default="ssh")
    p.add_argument("--keepalive-interval", type=float, default=0.0,
                   help="SSH keepalive interval (0: none), the floor for the held-session idle CPU")
    args = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    password = open(args.password_file, encoding="utf-8").read().rstrip("\r\n")
    held: Set[asyncssh.SSHClientConnection] = set()
    tasks: Set["asyncio.Task[None]"] = set()

    async def netconf(conn: asyncssh.SSHClientConnection) -> None:
        done: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        try:
            await conn.create_session(lambda: _HelloReader(done), subsystem="netconf", encoding=None)
            await done
            _out("UP %.6f" % time.time())
        except Exception as exc:  # noqa: BLE001 - reported, benchmark goes on
            _out("FAILED netconf:%s" % type(exc).__name__)

    def acceptor(conn: asyncssh.SSHClientConnection) -> None:
        held.add(conn)
        if args.mode == "ssh":
            _out("UP %.6f" % time.time())
        else:
            task = asyncio.ensure_future(netconf(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    acc = await asyncssh.listen_reverse(
        host=args.host, port=args.port, reuse_address=True, backlog=4096,
        known_hosts=None, server_host_key_algs=HOST_KEY_ALGS,
        username=args.username, password=password, client_keys=None, agent_path=None,
        kbdint_auth=False, host_based_auth=False, gss_host=None, config=None,
        acceptor=acceptor, error_handler=lambda conn, exc: _out("FAILED %s" % type(exc).__name__),
        login_timeout=60, keepalive_interval=args.keepalive_interval, compression_algs=None,
    )
    _out("LISTENING %d" % acc.get_port())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    acc.close()
    for conn in list(held):
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

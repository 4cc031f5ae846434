# SPDX-License-Identifier: GPL-3.0-or-later
"""Self-checks of the OpenSSH (``sshd -i`` over socat) call-home peer.

Why: this peer is the "real SSH server" reference for the listener's tests, so it has to be shown
working on its own: a minimal call-home client (asyncssh ``listen_reverse`` on 127.0.0.1:0 that
pins the peer's host key) authenticates, opens the ``netconf`` subsystem, exchanges hellos in both
framings, edits and reads the configuration, and closes the session, all through real OpenSSH.
"""

from __future__ import annotations

import asyncio
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator, Optional

import asyncssh
import pytest

PEERS = Path(__file__).resolve().parents[1] / "peers"
sys.path.insert(0, str(PEERS))

from netconf_server import SYSTEM_NS, MiniClient, q  # noqa: E402
from peer_availability import peer_or_skip  # noqa: E402
from sshd_peer import SshdPeer  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def hostname_of(reply: ET.Element) -> Optional[str]:
    return reply.findtext(f"{q('data')}/{q('system', SYSTEM_NS)}/{q('hostname', SYSTEM_NS)}")


def procs_mentioning(text: str) -> list[str]:
    """Command lines of live processes containing ``text`` (to prove nothing is left over)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmd and int(pid) != os.getpid():
            found.append(cmd)
    return found


@pytest.fixture
def make_peer() -> Iterator[Any]:
    peers: list[SshdPeer] = []

    def make(port: int, **kw: Any) -> SshdPeer:
        peer = peer_or_skip(SshdPeer(("127.0.0.1", port), **kw).__enter__, "OpenSSH peer")
        peers.append(peer)
        return peer

    yield make
    for p in peers:
        workdir = str(p.workdir)
        p.__exit__(None, None, None)
        assert procs_mentioning(workdir) == [], "sshd/socat processes left behind"


async def listen(
    trusted_line: str, **kw: Any
) -> tuple[asyncssh.SSHAcceptor, int, asyncio.Queue[Any]]:
    conns: asyncio.Queue[Any] = asyncio.Queue()
    acc = await asyncssh.listen_reverse(
        "127.0.0.1",
        0,
        known_hosts=([asyncssh.import_public_key(trusted_line)], [], []),
        acceptor=conns.put_nowait,
        **kw,
    )
    return acc, acc.sockets[0].getsockname()[1], conns


def test_netconf_through_openssh_password(make_peer: Any) -> None:
    async def run() -> None:
        # The listener must know the peer's key before it listens, and the peer must know the
        # port: create the peer with a placeholder port, then point it at the real one.
        peer = make_peer(0, password_auth=True, hostname="ossh-dev")
        acc, port, conns = await listen(
            peer.host_key_line, username=peer.username, password=peer.password, client_keys=None
        )
        peer.listener = ("127.0.0.1", port)
        peer.start_dialing()
        conn = await asyncio.wait_for(conns.get(), 30)
        key = conn.get_server_host_key()
        assert key.get_fingerprint("sha256") == peer.fingerprint
        assert "OpenSSH" in (conn.get_extra_info("server_version") or "")

        for base11 in (True, False):
            writer, reader, _stderr = await conn.open_session(subsystem="netconf", encoding=None)
            nc = MiniClient(reader, writer, base11=base11)
            await asyncio.wait_for(nc.hello(), 20)
            assert nc.chunked is base11
            reply = await asyncio.wait_for(
                nc.rpc("<get-config><source><running/></source></get-config>"), 10
            )
            expected = "ossh-dev" if base11 else "via-openssh"
            assert hostname_of(reply) == expected
            if base11:
                edit = (
                    "<edit-config><target><running/></target><config>"
                    f'<system xmlns="{SYSTEM_NS}"><hostname>via-openssh</hostname></system>'
                    "</config></edit-config>"
                )
                assert (await nc.rpc(edit)).find(q("ok")) is not None
                reply = await nc.rpc("<get-config><source><running/></source></get-config>")
                assert hostname_of(reply) == "via-openssh"
            assert (await nc.rpc("<close-session/>")).find(q("ok")) is not None
            assert await asyncio.wait_for(reader.read(1), 10) == b""
        conn.close()
        await conn.wait_closed()
        acc.close()
        log = peer.log_text()
        assert f"Accepted password for {peer.username}" in log
        assert "Starting session: subsystem 'netconf'" in log

    asyncio.run(run())


def test_publickey_auth_and_redial(make_peer: Any) -> None:
    async def run() -> None:
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        peer = make_peer(0, password_auth=False, redial=True, retry=0.2)
        peer.add_authorized_key(client_key.export_public_key("openssh").decode())
        acc, port, conns = await listen(
            peer.host_key_line, username=peer.username, client_keys=[client_key], password=None
        )
        peer.listener = ("127.0.0.1", port)
        peer.start_dialing()
        first = await asyncio.wait_for(conns.get(), 30)
        writer, reader, _stderr = await first.open_session(subsystem="netconf", encoding=None)
        nc = MiniClient(reader, writer)
        await asyncio.wait_for(nc.hello(), 20)
        assert hostname_of(await nc.rpc("<get/>")) == "sshd-peer"
        first.close()  # drop: the peer must call home again
        second = await asyncio.wait_for(conns.get(), 30)
        assert second is not first
        assert peer.dials >= 2
        shell_refused = False
        try:
            await second.open_session(subsystem="not-netconf")
        except asyncssh.ChannelOpenError:
            shell_refused = True
        assert shell_refused, "an unknown subsystem must be refused"
        second.close()
        acc.close()
        assert "Accepted publickey for" in peer.log_text()

    asyncio.run(run())

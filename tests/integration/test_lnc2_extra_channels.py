# SPDX-License-Identifier: GPL-3.0-or-later
"""Self-check of ``lnc2-device --extra-channels`` (issue 9: devices that serve one NETCONF session
per SSH connection).

A minimal asyncssh call-home client (written here, not the project's listener) gets the device's
first NETCONF session, then opens a second ``session`` channel with the ``netconf`` subsystem on
the same SSH connection:

* ``accept``: a second NETCONF session starts there (hello with another session-id);
* ``silent``: the channel and the subsystem request are accepted, but no hello ever comes and a
  client hello plus an RPC get no answer; the first session keeps working;
* ``refuse``: opening the channel fails (SSH_MSG_CHANNEL_OPEN_FAILURE); the first session keeps
  working.

Runs against whichever libnetconf2 generation the device was built with (2.0 on Debian 12, 3.x in
the second stack, tests/stack2).
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))
from lnc2_peer import Lnc2Device  # noqa: E402
from pki import TestPki, make_pki  # noqa: E402

TIMEOUT = 20.0
SILENCE = 3.0  # how long a silent channel is watched
HELLO = (
    '<hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><capabilities>'
    "<capability>urn:ietf:params:netconf:base:1.0</capability></capabilities></hello>]]>]]>"
)
GET_CONFIG = (
    '<rpc message-id="1" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
    "<get-config><source><running/></source></get-config></rpc>]]>]]>"
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(
        tmp_path_factory.mktemp("pki"), device_name="lnc2-extra", host_key_algorithms=("ecdsa",)
    )


@asynccontextmanager
async def first_session(pki: TestPki, mode: str) -> AsyncIterator[tuple[Lnc2Device, asyncssh.SSHClientConnection]]:
    """A device in ``mode`` calling home to an asyncssh listener; yields the device and the SSH
    connection once the first NETCONF session is established (hello exchanged, end-of-message)."""
    conns: asyncio.Queue[asyncssh.SSHClientConnection] = asyncio.Queue()
    host_key = asyncssh.read_public_key(pki.host_keys["ecdsa"].public_path)
    acceptor = await asyncssh.listen_reverse(
        "127.0.0.1",
        0,
        username="netconf",
        client_keys=[str(pki.listener_ssh_key.private_path)],
        known_hosts=([host_key], [], []),
        agent_path=None,
        acceptor=conns.put_nowait,
        login_timeout=TIMEOUT,
    )
    port = int(acceptor.sockets[0].getsockname()[1])
    dev = Lnc2Device.from_pki(pki, ssh_port=port, extra_channels=mode)
    try:
        dev.start()
        conn = await asyncio.wait_for(conns.get(), TIMEOUT)
        writer, reader, _stderr = await asyncio.wait_for(
            conn.open_session(subsystem="netconf", encoding=None), TIMEOUT
        )
        hello = await read_message(reader, TIMEOUT)
        assert b"<hello" in hello, hello
        writer.write(HELLO.encode())
        await dev.await_line(r"ch-ssh session \d+ established client=", TIMEOUT)
        try:
            yield dev, conn
            # the first session still answers
            writer.write(GET_CONFIG.encode())
            reply = await read_message(reader, TIMEOUT)
            assert b"<name>lnc2-extra</name>" in reply, reply
        finally:
            conn.abort()
    finally:
        dev.stop()
        acceptor.close()
        try:  # Python 3.12+: Server.wait_closed() waits for connections the device may still hold
            await asyncio.wait_for(acceptor.wait_closed(), 2)
        except asyncio.TimeoutError:
            pass
        while not conns.empty():
            conns.get_nowait().abort()


async def read_message(reader: asyncssh.SSHReader[bytes], timeout: float) -> bytes:
    """One end-of-message framed NETCONF message."""
    return bytes(await asyncio.wait_for(reader.readuntil(b"]]>]]>"), timeout))


def test_extra_channel_accept(device_binary: Path, pki: TestPki) -> None:
    async def scenario() -> None:
        async with first_session(pki, "accept") as (dev, conn):
            writer, reader, _stderr = await conn.open_session(subsystem="netconf", encoding=None)
            hello = await read_message(reader, TIMEOUT)
            writer.write(HELLO.encode())
            first = dev.wait_for(r"ch-ssh session (\d+) established client=").group(1)
            second = re.search(rb"<session-id>(\d+)</session-id>", hello)
            assert second and second.group(1).decode() != first, hello
            await dev.await_line(r"ch-ssh session \d+ established on a new channel", TIMEOUT)

    asyncio.run(scenario())


def test_extra_channel_silent(device_binary: Path, pki: TestPki) -> None:
    async def scenario() -> None:
        async with first_session(pki, "silent") as (dev, conn):
            writer, reader, _stderr = await asyncio.wait_for(
                conn.open_session(subsystem="netconf", encoding=None), TIMEOUT
            )  # the subsystem request succeeded
            await dev.await_line(r"ch-ssh session \d+ extra channel left silent", TIMEOUT)
            writer.write(HELLO.encode() + GET_CONFIG.encode())
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(1), SILENCE)
            assert dev.count(r"established on a new channel") == 0
            # reported once per SSH message, not once per poll (no busy loop over the channel)
            assert dev.count(r"extra channel left silent") <= 3, dev.log

    asyncio.run(scenario())


def test_extra_channel_refuse(device_binary: Path, pki: TestPki) -> None:
    async def scenario() -> None:
        async with first_session(pki, "refuse") as (dev, conn):
            with pytest.raises(asyncssh.ChannelOpenError):
                await asyncio.wait_for(conn.open_session(subsystem="netconf", encoding=None), TIMEOUT)
            await dev.await_line(r"ssh extra channel refused", TIMEOUT)
            assert not [line for line in dev.lines if "libnetconf2 ERR" in line], dev.log

    asyncio.run(scenario())

# SPDX-License-Identifier: GPL-3.0-or-later
"""Self-checks of the simulated call-home devices, independent of the project's listener.

Why: every listener test trusts the simulator to be a correct NETCONF-over-SSH device. Here a
minimal call-home client written in the test (asyncssh ``listen_reverse`` on 127.0.0.1:0, pinning
the device's host key) checks the hello exchange in both framings, get-config / edit-config,
close-session, reconnect after a drop, channel multiplexing, ``--single-session`` and some faults.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

import asyncssh
import pytest

PEERS = Path(__file__).resolve().parents[1] / "peers"
sys.path.insert(0, str(PEERS))

from netconf_server import (  # noqa: E402
    BASE_11,
    FramingError,
    MiniClient,
    SYSTEM_NS,
    XmlRejected,
    q,
)
from simulator import SimulatedDevices, ensure_keys, start_simulator_process  # noqa: E402

pytestmark = pytest.mark.timeout(120)
USER, PASSWORD = "admin", "s3cret-pw"


class CallHomeClient:
    """The smallest possible RFC 8071 listener: accept TCP, run the SSH client, queue conns."""

    def __init__(self, trusted: list[asyncssh.SSHKey], **kwargs: Any) -> None:
        # known_hosts wants public keys (a private SSHKey never compares equal to the peer's)
        self.trusted = [asyncssh.import_public_key(k.export_public_key()) for k in trusted]
        self.kwargs = kwargs
        self.conns: asyncio.Queue[asyncssh.SSHClientConnection] = asyncio.Queue()
        self.errors: list[Optional[Exception]] = []
        self.acceptor: Optional[asyncssh.SSHAcceptor] = None
        self.port = 0

    async def __aenter__(self) -> "CallHomeClient":
        opts: dict[str, Any] = {"username": USER, "password": PASSWORD, "client_keys": None}
        opts.update(self.kwargs)
        self.acceptor = await asyncssh.listen_reverse(
            "127.0.0.1",
            0,
            known_hosts=(self.trusted, [], []),
            acceptor=self.conns.put_nowait,
            error_handler=lambda conn, exc: self.errors.append(exc),
            **opts,
        )
        self.port = self.acceptor.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.acceptor is not None
        self.acceptor.close()
        await self.acceptor.wait_closed()
        while not self.conns.empty():
            c = self.conns.get_nowait()
            c.close()
            await c.wait_closed()

    async def next_conn(self, timeout: float = 20.0) -> asyncssh.SSHClientConnection:
        return await asyncio.wait_for(self.conns.get(), timeout)


async def open_netconf(conn: asyncssh.SSHClientConnection, base11: bool = True) -> MiniClient:
    writer, reader, _stderr = await conn.open_session(subsystem="netconf", encoding=None)
    client = MiniClient(reader, writer, base11=base11)
    await asyncio.wait_for(client.hello(), 10)
    return client


def hostname_of(reply: ET.Element) -> Optional[str]:
    return reply.findtext(f"{q('data')}/{q('system', SYSTEM_NS)}/{q('hostname', SYSTEM_NS)}")


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


def device_keys(keys_dir: Path, n: int = 1) -> list[asyncssh.SSHKey]:
    names = [f"sim{i:04d}" for i in range(1, n + 1)]
    keys = ensure_keys(keys_dir, names)
    return [keys[n] for n in names]


@pytest.mark.parametrize("base11", [True, False], ids=["chunked", "eom"])
def test_hello_getconfig_editconfig_close(keys_dir: Path, base11: bool) -> None:
    async def run() -> None:
        trusted = device_keys(keys_dir)
        async with CallHomeClient(trusted) as ch:
            async with SimulatedDevices(
                listener=("127.0.0.1", ch.port),
                count=1,
                keys_dir=keys_dir,
                user=USER,
                password=PASSWORD,
            ) as sim:
                conn = await ch.next_conn()
                assert conn.get_server_host_key().public_data == trusted[0].public_data
                nc = await open_netconf(conn, base11)
                assert nc.chunked is base11
                hello = nc.server_hello
                assert hello is not None
                caps = [c.text for c in hello.iter(q("capability"))]
                assert BASE_11 in caps and hello.findtext(q("session-id"))
                await sim.wait_for("READY", 1)

                reply = await nc.rpc("<get-config><source><running/></source></get-config>")
                assert reply.get("message-id") == "1"
                assert hostname_of(reply) == "sim0001"

                edit = (
                    "<edit-config><target><running/></target><config>"
                    f'<system xmlns="{SYSTEM_NS}"><hostname>renamed</hostname></system>'
                    '<interfaces xmlns="urn:example:if"><interface><name>eth0</name>'
                    "<mtu>9000</mtu></interface></interfaces></config></edit-config>"
                )
                assert (await nc.rpc(edit)).find(q("ok")) is not None
                reply = await nc.rpc("<get-config><source><running/></source></get-config>")
                assert hostname_of(reply) == "renamed"
                assert reply.findtext(".//{urn:example:if}mtu") == "9000"
                # location was untouched by the merge
                assert reply.findtext(f".//{q('location', SYSTEM_NS)}") == "lab"

                unknown = await nc.rpc("<frobnicate/>")
                assert unknown.get("message-id") == "4"
                assert (
                    unknown.findtext(f"{q('rpc-error')}/{q('error-tag')}")
                    == "operation-not-supported"
                )

                assert (await nc.rpc("<close-session/>")).find(q("ok")) is not None
                # the device ends the channel after replying to close-session
                assert await asyncio.wait_for(nc.reader.read(1), 5) == b""  # type: ignore[attr-defined]
                conn.close()

    asyncio.run(run())


def test_candidate_confirmed_commit_rolls_back(keys_dir: Path) -> None:
    async def run() -> None:
        async with CallHomeClient(device_keys(keys_dir)) as ch:
            async with SimulatedDevices(
                listener=("127.0.0.1", ch.port),
                count=1,
                keys_dir=keys_dir,
                user=USER,
                password=PASSWORD,
            ):
                conn = await ch.next_conn()
                nc = await open_netconf(conn)
                edit = (
                    "<edit-config><target><candidate/></target><config>"
                    f'<system xmlns="{SYSTEM_NS}"><hostname>cand</hostname></system>'
                    "</config></edit-config>"
                )
                assert (await nc.rpc(edit)).find(q("ok")) is not None
                running = await nc.rpc("<get-config><source><running/></source></get-config>")
                assert hostname_of(running) == "sim0001"
                await nc.rpc("<commit><confirmed/><confirm-timeout>1</confirm-timeout></commit>")
                assert hostname_of(await nc.rpc("<get/>")) == "cand"
                await asyncio.sleep(1.5)
                assert hostname_of(await nc.rpc("<get/>")) == "sim0001"
                conn.close()

    asyncio.run(run())


def test_untrusted_host_key_is_rejected(keys_dir: Path, tmp_path: Path) -> None:
    async def run() -> None:
        device_keys(keys_dir)
        other = asyncssh.generate_private_key("ssh-ed25519")
        async with CallHomeClient([other]) as ch:
            async with SimulatedDevices(
                listener=("127.0.0.1", ch.port),
                count=1,
                retry=0.1,
                keys_dir=keys_dir,
                user=USER,
                password=PASSWORD,
            ) as sim:
                await sim.wait_for("DISCONNECTED", 2, timeout=20)
                assert sim.count_events("CONNECTED") == 0
                assert ch.conns.empty()

    asyncio.run(run())


def test_reconnects_after_drop(keys_dir: Path) -> None:
    async def run() -> None:
        async with CallHomeClient(device_keys(keys_dir)) as ch:
            async with SimulatedDevices(
                listener=("127.0.0.1", ch.port),
                count=1,
                retry=0.1,
                keys_dir=keys_dir,
                user=USER,
                password=PASSWORD,
            ) as sim:
                first = await ch.next_conn()
                first.abort()
                second = await ch.next_conn()
                assert second is not first
                await sim.wait_for("CONNECTED", 2)
                assert sim.count_events("DISCONNECTED") >= 1
                nc = await open_netconf(second)
                assert hostname_of(await nc.rpc("<get/>")) == "sim0001"
                second.close()

    asyncio.run(run())


def test_two_channels_share_one_device(keys_dir: Path) -> None:
    async def run() -> None:
        async with CallHomeClient(device_keys(keys_dir)) as ch:
            async with SimulatedDevices(
                listener=("127.0.0.1", ch.port),
                count=1,
                keys_dir=keys_dir,
                user=USER,
                password=PASSWORD,
            ):
                conn = await ch.next_conn()
                a, b = await open_netconf(conn), await open_netconf(conn)
                assert a.server_hello is not None and b.server_hello is not None
                sid_a = a.server_hello.findtext(q("session-id"))
                assert sid_a != b.server_hello.findtext(q("session-id"))
                assert (await a.rpc("<lock><target><running/></target></lock>")).find(
                    q("ok")
                ) is not None
                denied = await b.rpc("<lock><target><running/></target></lock>")
                assert denied.findtext(f".//{q('error-tag')}") == "lock-denied"
                assert denied.findtext(f".//{q('session-id')}") == sid_a
                await a.rpc("<close-session/>")  # releases the lock
                await asyncio.sleep(0.2)
                assert (await b.rpc("<lock><target><running/></target></lock>")).find(
                    q("ok")
                ) is not None
                conn.close()

    asyncio.run(run())


def test_single_session_refuses_second_channel(keys_dir: Path) -> None:
    async def run() -> None:
        async with CallHomeClient(device_keys(keys_dir)) as ch:
            async with SimulatedDevices(
                listener=("127.0.0.1", ch.port),
                count=1,
                single_session=True,
                keys_dir=keys_dir,
                user=USER,
                password=PASSWORD,
            ) as sim:
                conn = await ch.next_conn()
                first = await open_netconf(conn)
                with pytest.raises(asyncssh.ChannelOpenError):
                    await conn.open_session(subsystem="netconf", encoding=None)
                assert sim.count_events("REFUSED") == 1
                assert hostname_of(await first.rpc("<get/>")) == "sim0001"
                conn.close()

    asyncio.run(run())


def test_public_key_auth_and_wrong_password(keys_dir: Path, tmp_path: Path) -> None:
    async def run() -> None:
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        auth_file = tmp_path / "authorized_keys"
        auth_file.write_bytes(client_key.export_public_key("openssh"))
        trusted = device_keys(keys_dir)
        async with CallHomeClient(trusted, password=None, client_keys=[client_key]) as ch:
            async with SimulatedDevices(
                listener=("127.0.0.1", ch.port),
                count=1,
                keys_dir=keys_dir,
                user=USER,
                authorized_keys=auth_file,
            ):
                nc = await open_netconf(await ch.next_conn())
                assert hostname_of(await nc.rpc("<get/>")) == "sim0001"
        async with CallHomeClient(trusted, password="wrong") as ch:
            async with SimulatedDevices(
                listener=("127.0.0.1", ch.port),
                count=1,
                retry=0.1,
                keys_dir=keys_dir,
                user=USER,
                password=PASSWORD,
            ):
                await asyncio.sleep(1.0)
                assert ch.conns.empty()
                assert any(isinstance(e, asyncssh.PermissionDenied) for e in ch.errors)

    asyncio.run(run())


def test_entity_hello_and_bad_framing_faults(keys_dir: Path) -> None:
    async def run() -> None:
        keys = device_keys(keys_dir, 2)
        async with CallHomeClient(keys) as ch:
            async with SimulatedDevices(
                listener=("127.0.0.1", ch.port),
                count=2,
                keys_dir=keys_dir,
                user=USER,
                password=PASSWORD,
                faults=["entity-hello=sim0001", "bad-framing=sim0002"],
            ):
                for _conn_no in range(2):
                    conn = await ch.next_conn()
                    name = conn.get_server_host_key().public_data
                    writer, reader, _stderr = await conn.open_session(subsystem="netconf", encoding=None)
                    client = MiniClient(reader, writer)
                    if name == keys[0].public_data:
                        with pytest.raises(XmlRejected):
                            await client.hello()
                    else:
                        await client.hello()
                        with pytest.raises(FramingError):
                            await asyncio.wait_for(client.rpc("<get/>"), 5)
                    conn.close()

    asyncio.run(run())


def test_outbound_ssh_preamble(keys_dir: Path) -> None:
    async def run() -> None:
        trusted = device_keys(keys_dir)
        got: asyncio.Queue[tuple[list[str], asyncssh.SSHClientConnection]] = asyncio.Queue()

        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        port = lsock.getsockname()[1]

        async def accept_one() -> None:
            sock, _peer = await loop.sock_accept(lsock)
            buf = b""
            while buf.count(b"\r\n") < 4:  # byte by byte: SSH starts right after the preamble
                chunk = await loop.sock_recv(sock, 1)
                assert chunk, "closed during preamble"
                buf += chunk
            conn = await asyncssh.run_client(
                sock,
                known_hosts=([asyncssh.import_public_key(trusted[0].export_public_key())], [], []),
                username=USER,
                password=PASSWORD,
                client_keys=None,
            )
            await got.put((buf.decode().split("\r\n")[:4], conn))

        task = asyncio.create_task(accept_one())
        async with SimulatedDevices(
            listener=("127.0.0.1", port),
            count=1,
            keys_dir=keys_dir,
            user=USER,
            password=PASSWORD,
            outbound_ssh_preamble=True,
            outbound_ssh_host_key=True,
        ):
            lines, conn = await asyncio.wait_for(got.get(), 20)
            assert lines[:3] == ["MSG-ID: DEVICE-CONN-INFO", "MSG-VER: V1", "DEVICE-ID: sim0001"]
            assert (
                lines[3].split()[1:] == trusted[0].export_public_key("openssh").decode().split()[:2]
            )
            nc = await open_netconf(conn)
            assert hostname_of(await nc.rpc("<get/>")) == "sim0001"
            conn.close()
        await task
        lsock.close()

    asyncio.run(run())


def test_cli_subprocess_manifest_and_summary(keys_dir: Path, tmp_path: Path) -> None:
    async def listener_side(
        port_box: asyncio.Future[int], done: asyncio.Event, trusted: list[asyncssh.SSHKey]
    ) -> list[str]:
        async with CallHomeClient(trusted) as ch:
            port_box.set_result(ch.port)
            fps = []
            for _conn_no in range(3):
                conn = await ch.next_conn(30)
                fps.append(conn.get_server_host_key().get_fingerprint("sha256"))
            await done.wait()
            return fps

    trusted = device_keys(keys_dir, 3)
    manifest = tmp_path / "manifest.json"
    pwfile = tmp_path / "pw"
    pwfile.write_text(PASSWORD + "\n")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        port_box: asyncio.Future[int] = loop.create_future()
        done = asyncio.Event()
        task = asyncio.create_task(listener_side(port_box, done, trusted))
        port = await port_box
        sp = await loop.run_in_executor(
            None,
            lambda: start_simulator_process(
                [
                    "--listener",
                    f"127.0.0.1:{port}",
                    "--count",
                    "3",
                    "--keys-dir",
                    str(keys_dir),
                    "--manifest",
                    str(manifest),
                    "--user",
                    USER,
                    "--password-file",
                    str(pwfile),
                    "--processes",
                    "2",
                ],
                wait_connected=3,
                timeout=60,
            ),
        )
        try:
            data = json.loads(manifest.read_text())
            assert sorted(data) == ["sim0001", "sim0002", "sim0003"]
            assert (
                data["sim0002"]["public_key"].split()
                == trusted[1].export_public_key("openssh").decode().split()[:2]
            )
            done.set()
            fps = await asyncio.wait_for(task, 30)
            assert sorted(fps) == sorted(v["fingerprint"] for v in data.values())
        finally:
            summary = await loop.run_in_executor(None, sp.stop)
        assert summary is not None and summary["workers"] == 2
        assert summary["connects"] >= 3
        assert sp.proc.returncode == 0

    asyncio.run(run())


def test_cli_help() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, str(PEERS / "simulator.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for flag in ("--listener", "--single-session", "--fault", "--direct", "--processes"):
        assert flag in out


def test_direct_mode_serves_plain_ssh(keys_dir: Path) -> None:
    async def run() -> None:
        trusted = device_keys(keys_dir, 2)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
        probe.close()
        async with SimulatedDevices(
            listener=None,
            direct=("127.0.0.1", base),
            count=2,
            keys_dir=keys_dir,
            user=USER,
            password=PASSWORD,
        ) as sim:
            assert sim.count_events("LISTENING") == 2
            pub = asyncssh.import_public_key(trusted[1].export_public_key())
            async with asyncssh.connect(
                "127.0.0.1",
                base + 1,
                known_hosts=([pub], [], []),
                username=USER,
                password=PASSWORD,
                client_keys=None,
            ) as conn:
                nc = await open_netconf(conn)
                assert hostname_of(await nc.rpc("<get/>")) == "sim0002"

    asyncio.run(run())


def test_raw_tcp_faults(keys_dir: Path) -> None:
    async def run() -> None:
        device_keys(keys_dir, 3)
        received: dict[int, bytes] = {}
        writers: list[asyncio.StreamWriter] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            key = len(writers)
            writers.append(writer)
            received[key] = b""
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        return
                    received[key] += data
            except ConnectionError:
                return

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with SimulatedDevices(
            listener=("127.0.0.1", port),
            count=3,
            keys_dir=keys_dir,
            user=USER,
            password=PASSWORD,
            faults=["garbage=sim0001", "stall=sim0002", "slow-banner=sim0003"],
            slow_delay=0.05,
            retry=30,
        ) as sim:
            await sim.wait_for("TCP-CONNECTED", 3)
            await asyncio.sleep(1.0)
            blobs = sorted(received.values(), key=len)
            assert blobs[0] == b""  # stall
            assert blobs[1].startswith(b"SSH-2.0-") and 8 < len(blobs[1]) < 200  # slow banner drips
            assert len(blobs[2]) == 4096 and not blobs[2].startswith(b"SSH-")  # garbage
            for w in writers:
                w.close()
            await sim.wait_for("DISCONNECTED", 3, timeout=10)
            reasons = {d for k, _name, d in sim.events if k == "DISCONNECTED"}
            assert all(
                r.startswith(("peer-closed", "ConnectionResetError", "BrokenPipe")) for r in reasons
            )
        server.close()
        await server.wait_closed()

    asyncio.run(run())


def test_big_hello_and_drop_after_hello(keys_dir: Path) -> None:
    async def run() -> None:
        keys = device_keys(keys_dir, 2)
        async with CallHomeClient(keys) as ch:
            async with SimulatedDevices(
                listener=("127.0.0.1", ch.port),
                count=2,
                retry=0.1,
                keys_dir=keys_dir,
                user=USER,
                password=PASSWORD,
                big_hello_mib=1,
                faults=["big-hello=sim0001", "drop-after-hello=sim0002"],
            ) as sim:
                for _conn_no in range(2):
                    conn = await ch.next_conn()
                    writer, reader, _stderr = await conn.open_session(subsystem="netconf", encoding=None)
                    client = MiniClient(reader, writer)
                    hello = await asyncio.wait_for(client.hello(), 20)
                    ncaps = len(list(hello.iter(q("capability"))))
                    if conn.get_server_host_key().public_data == keys[0].public_data:
                        assert ncaps > 4000  # > 1 MiB of capabilities
                        conn.close()
                    else:
                        await asyncio.wait_for(conn.wait_closed(), 5)  # the device dropped it
                await sim.wait_for(
                    "CONNECTED", 2, name="sim0002", timeout=20
                )  # re-dialed after the drop
                assert sim.count_events("DISCONNECTED", "sim0002") >= 1

    asyncio.run(run())

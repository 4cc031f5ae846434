# SPDX-License-Identifier: GPL-3.0-or-later
"""The libnetconf2 test device applies pushed ietf-netconf-server call-home configuration.

Why: ``netconf.callhome.config`` and the rollout role push call-home configuration to devices and
must see them call home (or roll back). Those tests need a device that really does what its
configuration says. This file checks that ``lnc2-device`` does, with nothing of the collection
involved (except its revision parser, to check the hello capability it must read): a raw ncclient
session to the device's direct (listening) endpoint pushes XML written here for ietf-netconf-server
revision 2023-12-28, and a minimal call-home client (asyncssh ``listen_reverse``) written here sees
the device call, or not.

The listener logs in with a key that only the *pushed* configuration authorizes, and the pushed
configuration names one host key of the device's keystore, so a call home that succeeds proves
that the device applied the users, keys and addresses of the pushed entry, not some default.

Skips (with the reason printed) only if the C peer cannot be built.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from ncclient.operations import RPCError
from ncclient.xml_ import to_ele

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.revision import (
    revision_from_capabilities,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))
from harness import LoopThread  # noqa: E402  (tests/integration, on the path: tests/conftest.py)
from lnc2_peer import Lnc2Device, free_port  # noqa: E402
from pki import SshKey, TestPki, make_pki, make_ssh_key  # noqa: E402

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
NCS_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-server"
CT_NS = "urn:ietf:params:xml:ns:yang:ietf-crypto-types"
DEVICE = "lnc2-pushed"
CLIENT = "test-listener"
TIMEOUT = 20.0


# --------------------------------------------------------------------------- helpers


def callhome_config(
    port: int, pubkey_b64: str, *, operation: str | None = None, host_key: str = "hostkey0",
    max_attempts: int | None = None,
) -> str:
    """``<config>`` with one netconf-client (revision 2023-12-28 shape) calling 127.0.0.1:port
    over SSH, authorizing ``pubkey_b64`` for user netconf."""
    op = f' nc:operation="{operation}"' if operation else ""
    strategy = (
        f"<reconnect-strategy><max-attempts>{max_attempts}</max-attempts></reconnect-strategy>"
        if max_attempts
        else ""
    )
    return f"""<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}">
  <netconf-server xmlns="{NCS_NS}"><call-home>
    <netconf-client{op}>
      <name>{CLIENT}</name>
      <endpoints><endpoint><name>ep1</name><ssh>
        <tcp-client-parameters>
          <remote-address>127.0.0.1</remote-address><remote-port>{port}</remote-port>
        </tcp-client-parameters>
        <ssh-server-parameters>
          <server-identity><host-key><name>default-key</name>
            <public-key><central-keystore-reference>{host_key}</central-keystore-reference></public-key>
          </host-key></server-identity>
          <client-authentication><users><user><name>netconf</name>
            <public-keys><inline-definition><public-key><name>listener</name>
              <public-key-format xmlns:ct="{CT_NS}">ct:ssh-public-key-format</public-key-format>
              <public-key>{pubkey_b64}</public-key>
            </public-key></inline-definition></public-keys>
          </user></users></client-authentication>
        </ssh-server-parameters>
      </ssh></endpoint></endpoints>
      <connection-type><persistent/></connection-type>{strategy}
    </netconf-client>
  </call-home></netconf-server>
</config>"""


def delete_config(whole_call_home: bool = True) -> str:
    """``<config>`` deleting the call-home container (or only the test's netconf-client entry:
    invalid when it is the last one, as call-home is a presence container whose list has
    min-elements 1)."""
    if whole_call_home:
        return (
            f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}"><netconf-server xmlns="{NCS_NS}">'
            '<call-home nc:operation="delete"/></netconf-server></config>'
        )
    return (
        f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}"><netconf-server xmlns="{NCS_NS}"><call-home>'
        f'<netconf-client nc:operation="delete"><name>{CLIENT}</name></netconf-client>'
        "</call-home></netconf-server></config>"
    )


class ReverseListener:
    """A minimal SSH call-home client (RFC 8071 listener): accepts TCP, runs SSH as the client
    with ``key``, opens the netconf subsystem, reads the device's hello and sends its own. Runs on
    its own event loop in a thread (harness.LoopThread) so tests can make blocking ncclient calls
    meanwhile."""

    def __init__(self, key: SshKey) -> None:
        self.key = key
        self.port = 0
        self.sessions: list[dict[str, Any]] = []  # one per NETCONF session seen
        self.closed = 0  # sessions the device ended
        self._cond = threading.Condition()
        self._loop: LoopThread | None = None
        self._server: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> ReverseListener:
        self._loop = LoopThread("reverse-listener")
        try:
            self._loop.run(self._start(), TIMEOUT)
        except BaseException:
            self._loop.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        try:
            self._loop.run(self._stop(), TIMEOUT)
        finally:
            self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncssh.listen_reverse(
            "127.0.0.1",
            0,
            username="netconf",
            client_keys=[str(self.key.private_path)],
            known_hosts=None,
            acceptor=self._accepted,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accepted(self, conn: asyncssh.SSHClientConnection) -> None:
        task = asyncio.get_running_loop().create_task(self._session(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _session(self, conn: asyncssh.SSHClientConnection) -> None:
        host_key = conn.get_server_host_key()
        proc = await conn.create_process(subsystem="netconf", encoding="utf-8")
        hello = await proc.stdout.readuntil("]]>]]>")
        proc.stdin.write(
            f'<hello xmlns="{NC_NS}"><capabilities><capability>urn:ietf:params:netconf:base:1.0'
            "</capability></capabilities></hello>]]>]]>"
        )
        with self._cond:
            self.sessions.append(
                {"hello": hello, "host_key": host_key.export_public_key().decode() if host_key else ""}
            )
            self._cond.notify_all()
        try:
            await proc.stdout.read()  # until the device ends the session
        finally:
            conn.close()
            with self._cond:
                self.closed += 1
                self._cond.notify_all()

    def wait_sessions(self, count: int, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Block until ``count`` NETCONF sessions were seen; return the last one."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.sessions) >= count, timeout):
                raise TimeoutError(f"only {len(self.sessions)} call-home sessions, wanted {count}")
            return self.sessions[count - 1]

    def wait_closed(self, count: int, timeout: float = TIMEOUT) -> None:
        """Block until the device ended ``count`` sessions."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.closed >= count, timeout):
                raise TimeoutError(f"only {self.closed} sessions ended by the device, wanted {count}")

    def count(self) -> int:
        with self._cond:
            return len(self.sessions)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("pki"), device_name=DEVICE)


@pytest.fixture(scope="module")
def pushed_key(tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    """The listener's key for call home: authorized only by the pushed configuration."""
    return make_ssh_key(tmp_path_factory.mktemp("pushed"), "pushed_listener", "ed25519")


@pytest.fixture
def device(device_binary: Path, pki: TestPki) -> Iterator[Lnc2Device]:
    """A device with a direct endpoint and no call-home configuration at all."""
    dev = Lnc2Device.from_pki(pki, direct_port=free_port())
    with dev:
        yield dev
    assert dev.returncode == 0, dev.log


@pytest.fixture
def listener(pushed_key: SshKey) -> Iterator[ReverseListener]:
    with ReverseListener(pushed_key) as lst:
        yield lst


def b64_of(key: SshKey) -> str:
    return key.public_line.split()[1]


def assert_quiet(listener: ReverseListener, count: int, seconds: float) -> None:
    """No new call home for ``seconds`` (the device retries about once a second when it has a
    client, so a few seconds of silence mean it has none). Sleeping is the point here: this asserts
    that something does *not* happen for a while, which no poll can show sooner."""
    time.sleep(seconds)
    assert listener.count() == count, f"device called again: {listener.count()} sessions"


# --------------------------------------------------------------------------- tests


def test_direct_endpoint_capabilities_and_revision(device: Lnc2Device) -> None:
    """The direct endpoint speaks NETCONF with :candidate and :confirmed-commit:1.1 and reports
    ietf-netconf-server 2023-12-28 in its hello (the device does not load that module, so it
    advertises the capability itself; the collection's revision detection must read it); the
    keystore lists the host keys."""
    with device.connect_direct() as mgr:
        caps = list(mgr.server_capabilities)
        assert "urn:ietf:params:netconf:capability:candidate:1.0" in caps
        assert "urn:ietf:params:netconf:capability:confirmed-commit:1.1" in caps
        ncs_caps = [c for c in caps if c.startswith(NCS_NS + "?")]
        assert ncs_caps == [f"{NCS_NS}?module=ietf-netconf-server&revision=2023-12-28"], caps
        assert revision_from_capabilities(caps) == "2023-12-28"
        running = mgr.get_config("running").data_xml
    for name in device.hostkey_names:
        assert f"<name>{name}</name>" in running
    assert "netconf-server" not in running
    assert "direct-ssh session" in device.log and "ch-ssh" not in device.log


def test_pushed_config_calls_home_then_delete_stops(
    device: Lnc2Device, listener: ReverseListener, pushed_key: SshKey, pki: TestPki
) -> None:
    """edit-config on running makes the device call home with the pushed user key and host
    key; deleting the entry ends the session and the calls."""
    assert_quiet(listener, 0, 1.5)
    with device.connect_direct() as mgr:
        mgr.edit_config(target="running", config=callhome_config(listener.port, b64_of(pushed_key)))
        session = listener.wait_sessions(1)
        assert "urn:ietf:params:netconf:base:1.1" in session["hello"]
        assert session["host_key"].split()[1] == pki.host_keys["ed25519"].public_line.split()[1]
        device.wait_for(rf"ch-ssh session \d+ established client={CLIENT} ")
        running = mgr.get_config("running").data_xml
        assert f"<name>{CLIENT}</name>" in running and f"<remote-port>{listener.port}<" in running
        with pytest.raises(RPCError, match="at least one netconf-client"):
            # the last entry cannot go alone: the device refuses an empty call-home, as the
            # model does (call-home is a presence container whose list has min-elements 1)
            mgr.edit_config(target="running", config=delete_config(whole_call_home=False))
        assert listener.closed == 0 and f"<name>{CLIENT}</name>" in mgr.get_config("running").data_xml
        mgr.edit_config(target="running", config=delete_config())
        listener.wait_closed(1)
        assert f"<name>{CLIENT}</name>" not in mgr.get_config("running").data_xml
    device.wait_for(rf"callhome client {CLIENT} removed")
    assert_quiet(listener, 1, 3.0)


def test_wrong_host_key_reference_is_refused(device: Lnc2Device, listener: ReverseListener,
                                             pushed_key: SshKey) -> None:
    """A host-key reference to a key the keystore does not have is an rpc-error (the device's own
    reference check, in place of the model's leafref), on running and at commit of the
    candidate, and nothing is applied."""
    bad = callhome_config(listener.port, b64_of(pushed_key), host_key="no-such-key")
    with device.connect_direct() as mgr:
        with pytest.raises(RPCError) as err:
            mgr.edit_config(target="running", config=bad)
        assert "'no-such-key', which does not exist" in str(err.value), str(err.value)
        assert err.value.tag == "invalid-value", err.value.tag
        assert CLIENT not in mgr.get_config("running").data_xml
        with pytest.raises(RPCError, match="no-such-key"):
            mgr.edit_config(target="candidate", config=bad)
        assert CLIENT not in mgr.get_config("candidate").data_xml
    assert_quiet(listener, 0, 2.0)


def test_candidate_commit_and_discard(device: Lnc2Device, listener: ReverseListener,
                                      pushed_key: SshKey) -> None:
    """Edits of the candidate do nothing until commit; discard-changes drops them."""
    config = callhome_config(listener.port, b64_of(pushed_key))
    with device.connect_direct() as mgr:
        mgr.edit_config(target="candidate", config=config)
        assert CLIENT in mgr.get_config("candidate").data_xml
        assert CLIENT not in mgr.get_config("running").data_xml
        mgr.discard_changes()
        assert CLIENT not in mgr.get_config("candidate").data_xml
        assert_quiet(listener, 0, 1.5)
        mgr.lock("candidate")
        mgr.edit_config(target="candidate", config=config)
        mgr.commit()
        mgr.unlock("candidate")
        listener.wait_sessions(1)
        assert CLIENT in mgr.get_config("running").data_xml


def test_confirmed_commit_without_confirm_rolls_back(
    device: Lnc2Device, listener: ReverseListener, pushed_key: SshKey
) -> None:
    """A confirmed commit that is never confirmed is undone by the device at the timeout: the
    call-home session ends and the device stops calling."""
    with device.connect_direct() as mgr:
        mgr.edit_config(target="candidate", config=callhome_config(listener.port, b64_of(pushed_key)))
        mgr.commit(confirmed=True, timeout="6", persist="tok-1")  # outlasts the call home under load
        listener.wait_sessions(1)
        assert CLIENT in mgr.get_config("running").data_xml
        listener.wait_closed(1, timeout=15.0)
        device.wait_for(r"confirmed commit rolled back \(timeout\)")
        assert CLIENT not in mgr.get_config("running").data_xml
        assert CLIENT not in mgr.get_config("candidate").data_xml
    assert_quiet(listener, 1, 3.0)


def test_confirmed_commit_confirmed_with_persist_id_stays(
    device: Lnc2Device, listener: ReverseListener, pushed_key: SshKey
) -> None:
    """Confirming with the persist-id (from another session, as the collection does) keeps the
    configuration past the timeout; cancel-commit of a second confirmed commit rolls back to it."""
    # The confirm timeout must outlast the call home and a second SSH connection on a loaded
    # machine (3 s did not, once: the device had rolled back before the confirming commit came).
    confirm_timeout = 8
    with device.connect_direct() as mgr:
        mgr.edit_config(target="candidate", config=callhome_config(listener.port, b64_of(pushed_key)))
        committed = time.monotonic()
        mgr.commit(confirmed=True, timeout=str(confirm_timeout), persist="tok-2")
        listener.wait_sessions(1)
    with device.connect_direct() as mgr:
        mgr.dispatch(to_ele(f'<commit xmlns="{NC_NS}"><persist-id>tok-2</persist-id></commit>'))
        # Until past the confirm timeout: asserts the absence of a rollback, so a window, not a poll.
        time.sleep(max(0.0, committed + confirm_timeout + 1.5 - time.monotonic()))
        assert CLIENT in mgr.get_config("running").data_xml
        assert listener.closed == 0, "the confirmed configuration must not be rolled back"
        # a second confirmed commit, cancelled: back to the confirmed state (client kept)
        mgr.edit_config(
            target="candidate",
            config=callhome_config(listener.port, b64_of(pushed_key), max_attempts=5),
        )
        mgr.commit(confirmed=True, timeout="60", persist="tok-3")
        assert "<max-attempts>5</max-attempts>" in mgr.get_config("running").data_xml
        mgr.dispatch(to_ele(f'<cancel-commit xmlns="{NC_NS}"><persist-id>tok-3</persist-id></cancel-commit>'))
        running = mgr.get_config("running").data_xml
        assert CLIENT in running and "<max-attempts>5</max-attempts>" not in running
    device.wait_for(r"confirmed commit rolled back \(cancel-commit\)")


def test_merge_of_a_changed_port_moves_the_call_home(
    device: Lnc2Device, listener: ReverseListener, pushed_key: SshKey
) -> None:
    """The device's own merge of the stored ietf-netconf-server XML: merging the entry again with
    another remote-port replaces that leaf in place (the list key stays the entry's first child)
    and the device re-creates the client, which then calls the new port, not the old one."""
    with ReverseListener(pushed_key) as second, device.connect_direct() as mgr:
        mgr.edit_config(target="running", config=callhome_config(listener.port, b64_of(pushed_key)))
        listener.wait_sessions(1)
        mgr.edit_config(target="running", config=callhome_config(second.port, b64_of(pushed_key)))
        second.wait_sessions(1)
        listener.wait_closed(1)
        running = mgr.get_config("running").data_xml.replace("\n", "").replace(" ", "")
        assert f"<netconf-client><name>{CLIENT}</name><endpoints>" in running, running
        assert f"<remote-port>{second.port}</remote-port>" in running, running
        assert f"<remote-port>{listener.port}</remote-port>" not in running, running
        assert running.count("<netconf-client>") == 1, running
    assert_quiet(listener, 1, 2.0)

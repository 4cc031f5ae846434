# SPDX-License-Identifier: GPL-3.0-or-later
"""One LISTEN connection per node (state.pg_listen): the ownership fence and the shared trust
store hear their channels on the same connection, wired as the service wires them (the fence
subscribes to the trust store's listener, each on its own store's loop); after that connection is
lost both channels are delivered again and each subscriber catches up on what it missed.
Against a real server."""

from __future__ import annotations

import json
import time
from typing import Any, List, Tuple

import asyncssh
import pytest

from netconf_callhome.policy import trust_ops
from netconf_callhome.state.ownership import CHANNEL as OWNER_CHANNEL
from netconf_callhome.state.ownership import Ownership
from netconf_callhome.state.postgres import PostgresStore
from netconf_callhome.state.trust_postgres import CHANNEL as TRUST_CHANNEL
from netconf_callhome.state.trust_postgres import PostgresTrustStore

from .ownership_nodes import wait_until as _wait

KEYS = [asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip() for _unused in range(3)]


class CountingTrust(PostgresTrustStore):
    """Counts its resyncs (the listener's on_connect)."""

    resyncs = 0

    async def _wake_poller(self) -> None:
        self.resyncs += 1
        await super()._wake_poller()


class CountingOwnership(Ownership):
    resyncs = 0

    async def _reconcile(self) -> None:
        self.resyncs += 1
        await super()._reconcile()


class Node:
    """A node as service.py builds it: the trust store's listener is the node's one LISTEN
    connection, and the ownership fence subscribes to it."""

    def __init__(self, url: str, name: str) -> None:
        self.name = name
        # 30 s poll, 60 s reconcile: within a few seconds only a notification or a resync explains it
        self.trust = CountingTrust(url, node=name, poll_interval=30)
        self.store = PostgresStore(url, node=name)
        self.moved: List[Tuple[str, str, int]] = []
        self.revisions: List[int] = []
        self.trust.subscribe(self.revisions.append)
        self.ownership = CountingOwnership(
            self.store,
            on_claimed=lambda claim: None,
            on_moved=lambda d, n, e: self.moved.append((d, n, e)),
            reconcile_interval=60,
            listener=self.trust.listener,
        )
        _wait(self.trust.listener.connected.is_set, 10, "%s listening" % name)
        _wait(lambda: self.ownership.resyncs >= 1 and self.trust.resyncs >= 1, 10, "%s subscribers resynced" % name)

    def claim(self, device: str) -> None:
        claim = self.ownership.claim(device).result(10)
        assert claim is not None and claim.won

    def close(self) -> None:
        self.ownership.close()
        self.store.close()
        self.trust.close()


@pytest.fixture
def nodes(pg_url: str) -> Any:
    made: List[Node] = []

    def make(name: str) -> Node:
        node = Node(pg_url, name)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


def _db(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _listen_backends(postgres: Any, url: str, node: str) -> int:
    """The node's LISTEN connections (pg_listen names them ``callhome-listener NODE listen``)."""
    return int(
        postgres.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'callhome-listener %s listen'" % node,
            _db(url),
        )[0][0]
    )


def _channels_delivered(a: Node, b: Node, device: str, key: str) -> None:
    """Both channels reach node a live (within a second; its poll and reconcile are far off)."""
    a.claim(device)
    b.claim(device)  # a takeover: a's fence hears it on the ownership channel
    _wait(lambda: any(m[0] == device for m in a.moved), 1.0, "a told %s moved to b" % device)
    assert [m[1] for m in a.moved if m[0] == device] == ["b"]
    heard = len(a.revisions)
    trust_ops.enroll(b.trust, device, "ssh_host_keys", key)  # a trust change: the trust channel
    _wait(lambda: len(a.revisions) > heard, 1.0, "a heard b's trust change")
    assert a.revisions[-1] == b.trust.revision
    assert device in a.trust.load()["devices"]


def test_one_connection_serves_both_channels(postgres, pg_url, nodes):
    a, b = nodes("a"), nodes("b")
    assert a.ownership.listener is a.trust.listener
    assert a.trust.listener.channels == sorted([OWNER_CHANNEL, TRUST_CHANNEL])
    _channels_delivered(a, b, "r1", KEYS[0])
    # exactly one listening backend per node, both channels on it (and no other node's)
    assert _listen_backends(postgres, pg_url, "a") == 1
    assert _listen_backends(postgres, pg_url, "b") == 1
    assert a.trust.listener.connections == 1
    # the whole node: one listening backend, the rest are its two stores' pools (at most 2 each)
    rows = postgres.psql(
        "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'callhome-listener a%' GROUP BY 1 ORDER BY 1",
        _db(pg_url),
    )
    counts = {name: int(n) for name, n in rows}
    assert counts["callhome-listener a listen"] == 1 and counts["callhome-listener a"] <= 4


def test_the_fence_closing_leaves_the_trust_store_listening(postgres, pg_url, nodes):
    """The connection is the trust store's: the fence only unsubscribes when it closes."""
    a, b = nodes("a"), nodes("b")
    a.ownership.close()
    heard = len(a.revisions)
    trust_ops.enroll(b.trust, "r1", "ssh_host_keys", KEYS[0])
    _wait(lambda: len(a.revisions) > heard, 1.0, "a heard b's trust change")
    assert _listen_backends(postgres, pg_url, "a") == 1


def test_reconnection_delivers_both_channels_and_resyncs_each_subscriber(postgres, pg_url, nodes):
    a, b = nodes("a"), nodes("b")
    a.claim("r2")
    revision = b.trust.revision
    # a's listening backend is terminated (waiting until it is gone), and in the same transaction
    # r2 is taken over and the trust store changes, with their notifications: a is not listening
    # when they are delivered (it reconnects 0.5 s later), so only its resyncs can tell it.
    payload = json.dumps({"device": "r2", "node": "b", "epoch": 99})
    postgres.psql(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
        "WHERE application_name = 'callhome-listener a listen'; "
        "UPDATE device_owners SET node = 'b', epoch = 99 WHERE name = 'r2'; "
        "SELECT pg_notify('%s', '%s'); "
        "UPDATE trust_revision SET revision = revision + 1; "
        "SELECT pg_notify('%s', (SELECT revision FROM trust_revision)::text)"
        % (OWNER_CHANNEL, payload, TRUST_CHANNEL),
        _db(pg_url),
    )
    _wait(lambda: a.trust.listener.connections == 2 and a.trust.listener.connected.is_set(), 10, "a reconnected")
    # each subscriber resynced once more, and caught up on what it missed
    _wait(lambda: a.ownership.resyncs == 2 and a.trust.resyncs == 2, 5, "both subscribers resynced")
    _wait(lambda: ("r2", "b", 99) in a.moved, 5, "a's fence re-read r2's owner")
    _wait(lambda: a.trust.revision == revision + 1, 5, "a's trust store re-read the revision")
    assert a.revisions[-1] == revision + 1
    # and both channels are delivered live again, on one connection
    _channels_delivered(a, b, "r3", KEYS[1])
    assert _listen_backends(postgres, pg_url, "a") == 1


def test_a_database_restart_resyncs_both_subscribers(postgres, pg_url, nodes):
    """After PostgreSQL restarts, the one connection comes back and both channels work."""
    a, b = nodes("a"), nodes("b")
    postgres.restart()
    _wait(lambda: a.trust.listener.connections >= 2 and a.trust.listener.connected.is_set(), 30, "a reconnected")
    _wait(lambda: b.trust.listener.connections >= 2 and b.trust.listener.connected.is_set(), 30, "b reconnected")
    _wait(lambda: a.ownership.resyncs >= 2 and a.trust.resyncs >= 2, 10, "both subscribers resynced")
    # the stores' pools replace their dead connections on first use; give a claim a retry
    deadline = time.monotonic() + 20
    while True:
        try:
            a.claim("r4")
            break
        except Exception:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    b.claim("r4")
    _wait(lambda: any(m[0] == "r4" for m in a.moved), 1.0, "a told r4 moved to b")
    heard = len(a.revisions)
    trust_ops.enroll(b.trust, "r4", "ssh_host_keys", KEYS[2])
    _wait(lambda: len(a.revisions) > heard, 1.0, "a heard b's trust change")
    assert _listen_backends(postgres, pg_url, "a") == 1

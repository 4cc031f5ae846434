# SPDX-License-Identifier: GPL-3.0-or-later
"""Listener nodes for the ownership tests: each a PostgreSQL store with its ``Ownership``,
recording the claims it made and the moves it was told of (used through the ``nodes`` fixture
of conftest.py)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List, Tuple

from netconf_callhome.state.ownership import Claim, Ownership
from netconf_callhome.state.postgres import PostgresStore
from netconf_callhome.state.registry import DeviceRecord


def rows(postgres: Any, url: str, sql: str) -> List[List[str]]:
    return postgres.psql(sql, database=url.rsplit("/", 1)[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("not within %.1f s: %s" % (timeout, what))
        time.sleep(0.01)


class Node:
    """One listener node's store and ownership, recording what it was told."""

    def __init__(self, url: str, name: str, reconcile_interval: float = 60.0) -> None:
        self.store = PostgresStore(url, node=name)
        self.claims: List[Claim] = []
        self.moved: List[Tuple[str, str, int, float]] = []
        self.lock = threading.Lock()
        self.ownership = Ownership(
            self.store,
            on_claimed=self.claims.append,
            on_moved=lambda d, n, e: self.moved.append((d, n, e, time.monotonic())),
            reconcile_interval=reconcile_interval,
        )
        # LISTEN is up before a test relies on a notification
        wait_until(self.ownership.listener.connected.is_set, 10, "%s listening" % name)

    def claim(self, device: str) -> Claim:
        claim = self.ownership.claim(device).result(10)
        assert claim is not None
        return claim

    def save(self, *records: DeviceRecord) -> None:
        self.store.save(list(records), [], [])

    def close(self) -> None:
        self.ownership.close()
        self.store.close()

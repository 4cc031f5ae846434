# SPDX-License-Identifier: GPL-3.0-or-later
"""Stores for the state layer's contract tests: the same cases against SQLite and a real
PostgreSQL (tests/peers/postgres_peer.py: Debian's server, started once per session as an
unprivileged user in a temporary directory, stopped at the end)."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from .ownership_nodes import Node

PEERS = Path(__file__).resolve().parents[3] / "peers"
if str(PEERS) not in sys.path:
    sys.path.insert(0, str(PEERS))

_db_names = itertools.count(1)


@pytest.fixture
def pg_url(postgres: Any) -> str:
    """A fresh database of the session's server (its URL carries the password)."""
    return postgres.create_database("t%d_%d" % (os.getpid(), next(_db_names)))


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: Any, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``make_store(node="n1")``: a store on this test's one database (SQLite file or PostgreSQL
    database); several calls are several nodes (or restarts) on the same data."""
    from netconf_callhome.state.stores import open_store

    if request.param == "sqlite":
        url = "sqlite://%s" % (tmp_path / "registry.sqlite")
    else:
        url = request.getfixturevalue("pg_url")
    opened: List[Any] = []

    def make(node: str = "n1") -> Any:
        store = open_store(url, sqlite_default=str(tmp_path / "unused.sqlite"), home=str(tmp_path), node=node)
        opened.append(store)
        return store

    make.kind = request.param  # type: ignore[attr-defined]
    make.url = url  # type: ignore[attr-defined]
    yield make
    for store in opened:
        store.close()


@pytest.fixture
def nodes(pg_url: str) -> Iterator[Callable[..., Any]]:
    """``nodes(name, **kw)``: a listener node (store + ownership) on this test's database,
    closed after the test."""
    made: List[Node] = []

    def make(name: str, **kw: Any) -> Node:
        node = Node(pg_url, name, **kw)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()

# SPDX-License-Identifier: GPL-3.0-or-later
"""Which registry store a ``state_url`` names.

``""`` (the default) or ``sqlite:`` URLs: the embedded single-node SQLite file; ``postgresql://``
(or ``postgres://``): the database several listener nodes share (``state.postgres``, needing the
``postgresql`` extra, asyncpg).
"""

from __future__ import annotations

import logging
import os
from typing import cast

from netconf_callhome.errors import ConfigError
from netconf_callhome.policy.trust_store import TrustStore
from netconf_callhome.state.postgres import PostgresStore, redact_url
from netconf_callhome.state.registry import RegistryStore, SQLiteStore

log = logging.getLogger("netconf_callhome.trust")

SQLITE_PREFIX = "sqlite:"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def sqlite_path(url: str, *, default: str, home: str) -> str:
    """The file a ``sqlite:`` URL names: ``sqlite:///abs/path`` (file-URL style),
    ``sqlite:relative/path`` (under the listener's home), ``sqlite:`` alone for ``default``."""
    rest = url[len(SQLITE_PREFIX):]
    if rest.startswith("//"):
        rest = rest[2:]
        if not rest.startswith("/"):
            raise ConfigError(
                "state_url %r: a sqlite URL names a local file, sqlite:///ABSOLUTE/PATH or sqlite:RELATIVE/PATH" % url
            )
    if not rest:
        return default
    return os.path.join(home, os.path.expanduser(rest))


def open_store(url: str, *, sqlite_default: str, home: str, node: str) -> RegistryStore:
    """Open the store ``url`` names (``""``: the SQLite file ``sqlite_default``)."""
    if not url or url.startswith(SQLITE_PREFIX):
        store = SQLiteStore(sqlite_path(url, default=sqlite_default, home=home) if url else sqlite_default)
        store.node = node
        return store
    if url.startswith(POSTGRES_PREFIXES):
        return PostgresStore(url, node=node)
    raise ConfigError(
        "state_url %s: unsupported scheme (sqlite:///PATH or postgresql://USER@HOST[:PORT]/DATABASE)" % redact_url(url)
    )


def is_shared(url: str) -> bool:
    """Whether ``url`` names the database several nodes share (PostgreSQL)."""
    return url.startswith(POSTGRES_PREFIXES)


def open_trust_store(url: str, *, trust_file: str, node: str) -> TrustStore:
    """The trust store for ``state_url``: the file ``trust_file`` on a single node (SQLite or
    no URL), the shared tables in PostgreSQL otherwise. The first node of a new cluster copies
    its ``trust.json`` in (``PostgresTrustStore.seed``); later ones say that theirs is unused."""
    if not is_shared(url):
        return TrustStore(trust_file)
    from netconf_callhome.state.trust_postgres import PostgresTrustStore

    store = PostgresTrustStore(url, node=node)
    if os.path.exists(trust_file):
        local = TrustStore(trust_file).load()
        if local.get("devices") and not store.seed(local, trust_file):
            log.warning(
                "event=trust.file_unused path=%s url=%s (the shared trust store in the database is in force; "
                "this node's file is not read)",
                trust_file,
                store.url,
            )
    # Same interface as the file store (path, load, update, stat_signature): trust_ops and the
    # verdicts take either.
    return cast(TrustStore, store)

# SPDX-License-Identifier: GPL-3.0-or-later
"""Which registry store a ``state_url`` names.

``""`` (the default) or ``sqlite:`` URLs: the embedded single-node SQLite file; ``postgresql://``
(or ``postgres://``): the database several listener nodes share (``state.postgres``, needing the
``postgresql`` extra, asyncpg).
"""

from __future__ import annotations

import os

from netconf_callhome.errors import ConfigError
from netconf_callhome.state.postgres import PostgresStore, redact_url
from netconf_callhome.state.registry import RegistryStore, SQLiteStore

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

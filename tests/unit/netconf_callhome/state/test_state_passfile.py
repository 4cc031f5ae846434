# SPDX-License-Identifier: GPL-3.0-or-later
"""The PostgreSQL password of a node outside listener.yaml. ``state_password_file`` (what the
listener role writes, docs/scale-out.md): the password alone in a 0600 file, merged into the URL
when the store opens, never logged; a libpq password file (``state_url: ...?passfile=PATH``) also
works. Both against a real server; a file the node cannot use (missing, readable by others, a
directory, a relative path, empty) is refused at start-up with the reason."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import pytest

from netconf_callhome.config import ListenerConfig, load_config
from netconf_callhome.errors import ConfigError, StateStoreError
from netconf_callhome.state.postgres import PostgresStore


def pgpass_line(password: str) -> str:
    """One pgpass entry for every host, port, database and user (the role's format)."""
    return "*:*:*:*:%s\n" % password.replace("\\", "\\\\").replace(":", "\\:")


def passfile(tmp_path: Path, password: str, mode: int = 0o600) -> Path:
    path = tmp_path / "state-pgpass"
    path.write_text(pgpass_line(password))
    os.chmod(path, mode)
    return path


def node_role(postgres, password: str) -> str:
    """A login role with ``password`` owning a database of its name (what an operator makes)."""
    role = "node_%s" % secrets.token_hex(4)
    postgres.psql("CREATE ROLE %s LOGIN PASSWORD '%s'" % (role, password.replace("'", "''")))
    postgres.psql("CREATE DATABASE %s OWNER %s" % (role, role))
    return role


def test_the_store_connects_with_the_state_password_file(postgres, tmp_path, caplog):
    # every character a URL or a pgpass line would have to escape
    password = "p:w@/\\%%?#' %s" % secrets.token_urlsafe(12)
    role = node_role(postgres, password)
    secret = tmp_path / "state-password"
    secret.write_text(password + "\n")
    os.chmod(secret, 0o600)
    url = "postgresql://%s@%s:%d/%s" % (role, postgres.host, postgres.port, role)
    cfg = load_config(None, {"home": str(tmp_path), "state_url": url, "state_password_file": str(secret),
                             "node_name": "n1"})
    assert cfg.state_url == url, "the configuration keeps the URL without the password"
    caplog.set_level(logging.INFO, logger="netconf_callhome")
    store = PostgresStore(cfg.state_dsn(), node=cfg.node_name)
    try:
        assert store.load() == ([], [])
        assert password not in store.url and "***" in store.url
    finally:
        store.close()
    assert "event=state.opened" in caplog.text and password not in caplog.text

    # a wrong password in the file: the server refuses, and the error shows no password
    secret.write_text("wrong-" + password)
    with pytest.raises(StateStoreError, match="password authentication failed") as failed:
        PostgresStore(cfg.state_dsn(), node="n1")
    assert "wrong-" not in str(failed.value)


def test_state_password_file_refusals(tmp_path):
    secret = tmp_path / "state-password"
    secret.write_text("pw\n")
    os.chmod(secret, 0o604)

    def cfg(url: str, path: Path = secret) -> ListenerConfig:
        return ListenerConfig(home=str(tmp_path), state_url=url, state_password_file=str(path))

    with pytest.raises(ConfigError, match="can be read by others: chmod 600 it"):
        cfg("postgresql://u@db/x").validate()
    os.chmod(secret, 0o600)
    assert cfg("postgresql://u@db:5433/x?sslmode=require").state_dsn() == "postgresql://u:pw@db:5433/x?sslmode=require"
    with pytest.raises(ConfigError, match="must name its user and no password"):
        cfg("postgresql://u:other@db/x").validate()
    with pytest.raises(ConfigError, match="must name its user and no password"):
        cfg("postgresql://db/x").validate()
    with pytest.raises(ConfigError, match="needs a postgresql:// state_url"):
        cfg("").validate()
    with pytest.raises(ConfigError, match="cannot read state_password_file %s: No such file" % (tmp_path / "nope")):
        cfg("postgresql://u@db/x", tmp_path / "nope").validate()
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        cfg("postgresql://u@db/x").validate()


def test_the_store_connects_with_a_libpq_passfile(postgres, tmp_path, caplog):
    # asyncpg reads the file without undoing its escapes (\: and \\), so this password has none
    password = secrets.token_urlsafe(16)
    role = node_role(postgres, password)
    path = passfile(tmp_path, password)
    url = "postgresql://%s@%s:%d/%s?passfile=%s" % (role, postgres.host, postgres.port, role, path)
    cfg = load_config(None, {"home": str(tmp_path), "state_url": url, "node_name": "n1"})
    caplog.set_level(logging.INFO, logger="netconf_callhome")
    store = PostgresStore(cfg.state_url, node=cfg.node_name)
    try:
        assert store.load() == ([], [])
    finally:
        store.close()
    assert password not in caplog.text and str(path) not in caplog.text

    path.write_text(pgpass_line("not-" + password))
    with pytest.raises(StateStoreError, match="password authentication failed"):
        PostgresStore(url, node="n1")


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_a_passfile_others_can_read_is_refused(tmp_path, mode):
    path = passfile(tmp_path, "pw", mode)
    with pytest.raises(ConfigError, match=r"passfile %s has mode 0%o; .*chmod 600" % (path, mode)):
        ListenerConfig(home=str(tmp_path), state_url="postgresql://u@db/x?passfile=%s" % path).validate()


def test_a_missing_passfile_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the passfile %s: No such file" % (tmp_path / "nope")):
        ListenerConfig(home=str(tmp_path), state_url="postgresql://u@db/x?passfile=%s" % (tmp_path / "nope")).validate()


def test_a_passfile_that_is_a_directory_or_relative_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is not a regular file"):
        ListenerConfig(home=str(tmp_path), state_url="postgresql://u@db/x?passfile=%s" % tmp_path).validate()
    with pytest.raises(ConfigError, match="must be an absolute path"):
        ListenerConfig(home=str(tmp_path), state_url="postgresql://u@db/x?sslmode=disable&passfile=pgpass").validate()


def test_a_sqlite_url_or_none_needs_no_passfile(tmp_path):
    ListenerConfig(home=str(tmp_path), state_url="sqlite:///%s/r.sqlite" % tmp_path).validate()
    ListenerConfig(home=str(tmp_path), state_url="postgresql://u:secret@db/x").validate()

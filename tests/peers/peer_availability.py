# SPDX-License-Identifier: GPL-3.0-or-later
"""Whether a missing peer skips a test or fails it: one rule for every peer of ``tests/peers``.

Every peer (OpenSSH ``sshd_peer``, the libnetconf2 device ``lnc2_peer``, ``nginx_peer``,
``haproxy_peer``, ``postgres_peer``) raises a subclass of :class:`PeerUnavailable` with the
reason when it cannot run here (package not installed, not root, build failed). Tests get the peer
through :func:`peer_or_skip`:

* peers optional (a developer's machine without the Debian packages): the test is *skipped* with
  the reason, so ``pytest -rs`` says what is missing;
* peers required (``make integration`` / ``make attacks`` / ``make test`` install every peer and
  set ``CALLHOME_REQUIRE_PEERS=1``; ``CI`` counts too): the test *fails* with the reason, so a
  suite that silently lost its real peers cannot pass.

``tests/conftest.py`` applies the same rule to any test that turns a :class:`PeerUnavailable`
into ``pytest.skip`` by hand. Importable without pytest (the benchmarks and the demo use peers).
"""

from __future__ import annotations

import os
from typing import Callable, NoReturn, TypeVar

T = TypeVar("T")

#: Environment variable that makes every peer required (set by the Makefile's test targets).
REQUIRE_ENV = "CALLHOME_REQUIRE_PEERS"


class PeerUnavailable(RuntimeError):
    """A peer cannot run on this machine; the message says why and how to install it."""


def _truthy(value: str | None) -> bool:
    return bool(value) and value.strip().lower() not in ("0", "false", "no", "off", "")


def peers_required() -> bool:
    """True when a missing peer must fail the test: ``CALLHOME_REQUIRE_PEERS`` or ``CI`` set
    (to anything but an empty string, ``0``, ``false``, ``no`` or ``off``)."""
    return _truthy(os.environ.get(REQUIRE_ENV)) or _truthy(os.environ.get("CI"))


def unavailable(what: str, exc: BaseException) -> NoReturn:
    """Skip (peers optional) or fail (peers required) the running test because ``what`` is
    missing; ``exc`` is the reason."""
    import pytest

    if peers_required():
        pytest.fail(
            "%s is required (%s or CI is set) but unavailable: %s" % (what, REQUIRE_ENV, exc),
            pytrace=False,
        )
    pytest.skip("%s unavailable: %s" % (what, exc))


def peer_or_skip(make: Callable[[], T], what: str) -> T:
    """``make()`` (build or start a peer); where it raises :class:`PeerUnavailable`: skip the
    test with the reason, or fail it when peers are required (see :func:`peers_required`)."""
    try:
        return make()
    except PeerUnavailable as exc:
        reason = exc
    unavailable(what, reason)  # outside the handler: the failure is the reason, not a chain


__all__ = ("REQUIRE_ENV", "PeerUnavailable", "peer_or_skip", "peers_required", "unavailable")

# SPDX-License-Identifier: GPL-3.0-or-later
"""The one rule for a missing peer (tests/peers/peer_availability.py): skipped where peers are
optional, failed where they are required (``CALLHOME_REQUIRE_PEERS`` or ``CI``), and the
conftest backstop that turns a hand-written skip of a missing peer into a failure.

Each case runs in a child pytest (``pytester``), so its outcome is what pytest reports, not what
this file assumes."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

from peer_availability import PeerUnavailable, peer_or_skip, peers_required  # tests/peers (conftest)

pytest_plugins = ["pytester"]

PEERS = Path(__file__).resolve().parents[1] / "peers"

CHILD = """
import sys
sys.path.insert(0, %(peers)r)
import pytest
from peer_availability import PeerUnavailable, peer_or_skip

class SshdMissing(PeerUnavailable):
    pass

def missing():
    raise SshdMissing("sshd not installed (apt-get install openssh-server)")

def test_through_the_helper():
    peer_or_skip(missing, "OpenSSH peer")

def test_hand_written_skip():
    try:
        missing()
    except PeerUnavailable as exc:
        pytest.skip("OpenSSH peer unavailable: %%s" %% exc)

def test_unrelated_skip():
    pytest.skip("not about a peer")
"""

# The child's conftest: the backstop hook of tests/conftest.py itself (loaded under another module
# name: the child's own conftest is "conftest"), or nothing.
CHILD_CONFTEST = """
import importlib.util
spec = importlib.util.spec_from_file_location("callhome_tests_conftest", %(conftest)r)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
pytest_runtest_makereport = module.pytest_runtest_makereport
"""


def _outcomes(pytester: pytest.Pytester, env: Dict[str, str], backstop: bool = False) -> Dict[str, str]:
    for name in ("CALLHOME_REQUIRE_PEERS", "CI"):
        pytester._monkeypatch.delenv(name, raising=False)  # pylint: disable=protected-access
    for name, value in env.items():
        pytester._monkeypatch.setenv(name, value)  # pylint: disable=protected-access
    pytester.makepyfile(test_child=CHILD % {"peers": str(PEERS)})
    args = ["-v", "-rs", "-p", "no:cacheprovider", "test_child.py"]
    if backstop:
        pytester.makeconftest(CHILD_CONFTEST % {"conftest": str(PEERS.parent / "conftest.py")})
    else:
        args.append("--noconftest")
    result = pytester.runpytest_subprocess(*args)
    outcomes: Dict[str, str] = {}
    for line in result.outlines:
        for verdict in ("PASSED", "FAILED", "SKIPPED"):
            for test in ("test_through_the_helper", "test_hand_written_skip", "test_unrelated_skip"):
                if test in line and verdict in line:
                    outcomes[test] = verdict
    return outcomes


@pytest.mark.parametrize("env, required", [
    ({}, False),
    ({"CALLHOME_REQUIRE_PEERS": "0"}, False),
    ({"CALLHOME_REQUIRE_PEERS": "off"}, False),
    ({"CALLHOME_REQUIRE_PEERS": "1"}, True),
    ({"CI": "true"}, True),
])
def test_peers_required_reads_the_environment(monkeypatch: pytest.MonkeyPatch, env: Dict[str, str],
                                              required: bool) -> None:
    monkeypatch.delenv("CALLHOME_REQUIRE_PEERS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert peers_required() is required


def test_a_missing_peer_skips_where_peers_are_optional(pytester: pytest.Pytester) -> None:
    outcomes = _outcomes(pytester, {})
    assert outcomes == {"test_through_the_helper": "SKIPPED", "test_hand_written_skip": "SKIPPED",
                        "test_unrelated_skip": "SKIPPED"}, outcomes


def test_a_missing_peer_fails_where_peers_are_required(pytester: pytest.Pytester) -> None:
    outcomes = _outcomes(pytester, {"CALLHOME_REQUIRE_PEERS": "1"})
    # The helper fails; the hand-written skip stays a skip in a child without the backstop hook
    # (--noconftest); an unrelated skip is never touched.
    assert outcomes["test_through_the_helper"] == "FAILED", outcomes
    assert outcomes["test_unrelated_skip"] == "SKIPPED", outcomes


def test_the_backstop_fails_a_hand_written_skip_of_a_missing_peer(pytester: pytest.Pytester) -> None:
    outcomes = _outcomes(pytester, {"CALLHOME_REQUIRE_PEERS": "1"}, backstop=True)
    assert outcomes == {"test_through_the_helper": "FAILED", "test_hand_written_skip": "FAILED",
                        "test_unrelated_skip": "SKIPPED"}, outcomes


def test_the_backstop_leaves_skips_alone_where_peers_are_optional(pytester: pytest.Pytester) -> None:
    outcomes = _outcomes(pytester, {}, backstop=True)
    assert set(outcomes.values()) == {"SKIPPED"} and len(outcomes) == 3, outcomes


def test_the_failure_names_the_peer_and_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLHOME_REQUIRE_PEERS", "1")

    def missing() -> None:
        raise PeerUnavailable("nginx not installed")

    with pytest.raises(pytest.fail.Exception, match=r"nginx peer is required .* nginx not installed"):
        peer_or_skip(missing, "nginx peer")

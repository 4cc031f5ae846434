# SPDX-License-Identifier: GPL-3.0-or-later
"""Zero-touch enrollments are written in batches, off the event loop, under trust_ops' rules."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import List

import asyncssh
import pytest

from netconf_callhome.errors import CallHomeError, ConfigError
from netconf_callhome.policy import trust_ops
from netconf_callhome.policy.trust_store import TrustStore, add_identity
from netconf_callhome.policy.zero_touch import EnrollmentWriter

pytestmark = pytest.mark.timeout(120)


def _lines(n: int) -> List[str]:
    return [" ".join(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2]) for _i in range(n)]


def test_batch_applies_each_item_under_the_rules_and_rolls_back_a_refused_one(tmp_path: Path) -> None:
    store = TrustStore(str(tmp_path / "trust.json"))
    a, b, c, d = _lines(4)
    store.update(lambda data: (add_identity(data, "owner", kind="ssh_host_keys", value=a),
                               add_identity(data, "r2", kind="ssh_host_keys", value=b)))
    results = trust_ops.enroll_observed_ssh_keys(
        store,
        [
            ("r1", c, False),  # unknown device: enrolled
            ("r2", d, False),  # another key enrolled, no rotation: refused
            ("r2", a, True),  # rotation to a key owned by another device: refused, r2 keeps b
            ("bad/name", d, False),  # not a device name
            ("r1", c, False),  # again: no change
        ],
    )
    assert [type(r).__name__ for r in results] == [
        "TrustChange", "ReplaceRequiredError", "ConfigError", "ConfigError", "TrustChange"
    ]
    assert results[0].changed and not results[4].changed  # type: ignore[union-attr]
    assert "already has" in results[1].message and "revoke it there first" in results[2].message  # type: ignore[union-attr]
    devices = json.loads((tmp_path / "trust.json").read_text())["devices"]
    assert devices["r1"]["ssh_host_keys"] == [c]
    assert devices["r2"]["ssh_host_keys"] == [b]  # restored after the partial replace
    assert "bad/name" not in devices
    rotated = trust_ops.enroll_observed_ssh_keys(store, [("r2", d, True)])[0]
    assert not isinstance(rotated, CallHomeError) and rotated.replaced == [trust_ops.canonical("ssh_host_keys", b)]


def test_concurrent_enrollments_share_few_writes(tmp_path: Path) -> None:
    store = TrustStore(str(tmp_path / "trust.json"))
    lines = _lines(60)

    async def main() -> EnrollmentWriter:
        writer = EnrollmentWriter(store)
        futures = [writer.enroll("dev%02d" % i, line, replace=False) for i, line in enumerate(lines)]
        futures.append(writer.enroll("dev00", lines[1], replace=False))  # dev01's key: refused
        outcomes = await asyncio.gather(*futures)
        assert all(not isinstance(o, CallHomeError) and o.changed for o in outcomes[:-1])
        assert isinstance(outcomes[-1], ConfigError)
        await writer.close()
        return writer

    writer = asyncio.run(main())
    # the first write takes the first item; everything queued meanwhile goes in the next ones
    assert writer.batches <= 3
    devices = json.loads((tmp_path / "trust.json").read_text())["devices"]
    assert sorted(devices) == ["dev%02d" % i for i in range(60)]


def test_close_answers_what_is_still_queued(tmp_path: Path) -> None:
    store = TrustStore(str(tmp_path / "trust.json"))

    async def main() -> None:
        writer = EnrollmentWriter(store)
        fut = writer.enroll("r1", _lines(1)[0], replace=False)
        await writer.close()
        outcome = await fut
        # written before the close, or refused because of it: answered either way, never left hanging
        assert isinstance(outcome, (CallHomeError, trust_ops.TrustChange))

    asyncio.run(main())

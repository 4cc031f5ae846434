# SPDX-License-Identifier: GPL-3.0-or-later
"""The enroll module's ``source: pending`` with ``credentials`` writes the credentials (issue 10,
defect 13: they were dropped silently), through a running listener's ``approve`` operation."""

from __future__ import annotations

import json
from typing import Any, Dict

from harness import running, wait_until

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.enroll import run
from netconf_callhome.fingerprints import ssh_fingerprint


def _params(**kw: Any) -> Dict[str, Any]:
    base: Dict[str, Any] = {"state": "present", "source": "pending", "trust_on_first_use": False,
                            "replace_existing": False, "port": 830, "timeout": 10}
    base.update(kw)
    return base


def test_pending_with_credentials_applies_them(listener_factory, fleet):
    lst = listener_factory().start()
    keys = fleet.keys(["sim0001"])
    fp = ssh_fingerprint(keys["sim0001"].export_public_key().decode())
    control = "unix:%s" % lst.status["control_socket"]
    creds = {"username": "netconf", "password_file": str(fleet.password_file), "private_key_file": None}
    with running(fleet.simulator(lst.ssh_port, 1)):
        wait_until(lambda: lst.call("pending"), 20, "the unknown key to be pending")
        checked = run(_params(device="sim0001", listener=control, expected_fingerprint=fp, credentials=creds),
                      check_mode=True)
        assert checked.changed and lst.call("pending")  # check mode approves nothing
        result = run(_params(device="sim0001", listener=control, expected_fingerprint=fp, credentials=creds),
                     check_mode=False)
        assert result.changed and result.fingerprint == fp
        entry = json.loads((lst.home / "trust.json").read_text())["devices"]["sim0001"]
        assert entry["credentials"] == {"username": "netconf", "password_file": str(fleet.password_file)}
        lst.wait_device("sim0001", "connected")  # logs in with them
        assert lst.call("pending") == []

        # enrolled already: new credentials for it are applied, not ignored
        other = dict(creds, username="admin")
        again = run(_params(device="sim0001", listener=control, expected_fingerprint=fp, credentials=other),
                    check_mode=False)
        assert again.changed, again
        entry = json.loads((lst.home / "trust.json").read_text())["devices"]["sim0001"]
        assert entry["credentials"]["username"] == "admin" and len(entry["ssh_host_keys"]) == 1
        same = run(_params(device="sim0001", listener=control, expected_fingerprint=fp, credentials=other),
                   check_mode=False)
        assert not same.changed

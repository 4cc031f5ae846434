# SPDX-License-Identifier: GPL-3.0-or-later
"""The old ``python -m ansible_collections.netconf.callhome.listener`` still works, with a warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The clone's collections path (the Makefile links the checkout in as netconf/callhome there).
COLLECTIONS = Path(__file__).resolve().parents[2] / ".collections"


def test_old_module_path_forwards_to_callhome_listener_with_a_deprecation() -> None:
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    proc = subprocess.run(
        [sys.executable, "-m", "ansible_collections.netconf.callhome.listener", "approve", "--help"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "DEPRECATION WARNING" in proc.stderr and "callhome-listener" in proc.stderr
    assert "--replace" in proc.stdout  # the current CLI answered, not a copy of the old one

# SPDX-License-Identifier: GPL-3.0-or-later
"""Make the shared harness and the peers importable (pytest runs with --import-mode=importlib)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent / "peers"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from harness import device_binary, fleet, haproxy, listener_factory  # noqa: E402,F401  pylint: disable=unused-import

# SPDX-License-Identifier: GPL-3.0-or-later
"""Puts this folder on ``sys.path`` for ``module_runner`` (a module's ``main()`` run in process)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

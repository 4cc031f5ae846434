# SPDX-License-Identifier: GPL-3.0-or-later
"""Where a listener keeps its state by default (the embedded listener and the CLI agree on it)."""

from __future__ import annotations

import os

ENV_HOME = "NETCONF_CALLHOME_HOME"


def default_home() -> str:
    """Where an embedded listener keeps its state when no configuration says otherwise."""
    env = os.environ.get(ENV_HOME)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.path.expanduser("~"), ".netconf-callhome")

# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m ansible_collections.netconf.callhome.listener ...``: deprecated, forwards to
``callhome-listener`` (the netconf-callhome distribution's console script)."""

from __future__ import annotations

import sys


def main() -> int:
    sys.stderr.write(
        "[DEPRECATION WARNING] 'python -m ansible_collections.netconf.callhome.listener' is deprecated "
        "and will be removed in netconf.callhome 1.0.0: run 'callhome-listener' (pip install netconf-callhome)\n"
    )
    try:
        from netconf_callhome.cli import main as cli_main
    except ImportError as exc:
        sys.stderr.write(
            "the netconf-callhome Python package is required on %s (pip install netconf-callhome): %s\n"
            % (sys.executable, exc)
        )
        return 2
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m ansible_collections.netconf.callhome.listener``."""

import sys

from .cli import main

sys.exit(main())

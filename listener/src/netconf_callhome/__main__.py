# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m netconf_callhome``."""

import sys

from netconf_callhome.cli import main

sys.exit(main())

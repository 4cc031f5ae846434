# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Call-home configuration of devices: typed model, XML per model revision, Junos dialect, diff.

**PRIVATE** to the collection. Used by the ``netconf.callhome.config`` module; kept free of
Ansible imports so the unit tests exercise it directly.
"""

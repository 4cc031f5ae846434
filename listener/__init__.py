# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Deprecated entry point ``python -m ansible_collections.netconf.callhome.listener``.

The listener is the ``netconf-callhome`` Python distribution now (its source is ``src/`` beside
this file, which the collection tarball leaves out). Run ``callhome-listener``; this module only
forwards old command lines to it with a warning, so existing scripts and units keep working.
"""

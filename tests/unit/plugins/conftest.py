# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection loaded the way Ansible loads it, before any test module here imports from it.

Plugins under test are got through Ansible's loaders (``connection_loader``, ``inventory_loader``),
which import ``ansible_collections.*`` through the collection finder; a copy imported plainly
before (``PYTHONPATH=.collections``) would be a second module object, and a test that patches one
would not patch what the plugin uses. Doing it once here, before collection of this directory
starts, keeps every test module here on the same objects whatever order pytest collects them in
(each test file purging on import broke the module tests collected before it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ansible.plugins.loader import init_plugin_loader
from ansible.utils.collection_loader import AnsibleCollectionConfig

REPO = Path(__file__).resolve().parents[3]

if AnsibleCollectionConfig.collection_finder is None:
    for loaded in [m for m in sys.modules if m == "ansible_collections" or m.startswith("ansible_collections.")]:
        del sys.modules[loaded]
    init_plugin_loader([str(REPO / ".collections"), str(REPO / ".deps")])

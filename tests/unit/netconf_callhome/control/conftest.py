# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the control layer's tests: the node-to-node channel's certificates."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest
import trustme

from netconf_callhome.config import ClusterOptions


class ClusterPKI:
    """A test's cluster CA (trustme) and each node's options: a certificate for 127.0.0.1 naming
    the node, issued by that CA (or another one, for a peer that is no member), in files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = trustme.CA()

    def options(self, name: str, *, ca: Optional[trustme.CA] = None, **extra: Any) -> ClusterOptions:
        ca = ca or self.ca
        folder = self.root / ("pki-%x" % id(ca))  # one folder per CA: its file and its nodes'
        folder.mkdir(exist_ok=True)
        ca_path = folder / "ca.pem"
        if not ca_path.exists():
            ca.cert_pem.write_to_path(str(ca_path))
        cert = ca.issue_cert(name, "127.0.0.1")
        cert_path, key_path = folder / ("%s.pem" % name), folder / ("%s.key" % name)
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        return ClusterOptions(bind="127.0.0.1:0", cert=str(cert_path), key=str(key_path), ca=str(ca_path), **extra)


@pytest.fixture
def pki(tmp_path: Path) -> ClusterPKI:
    return ClusterPKI(tmp_path)

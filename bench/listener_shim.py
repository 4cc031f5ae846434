# SPDX-License-Identifier: GPL-3.0-or-later
"""Run the listener CLI, correcting the client hello's XML namespace first if it is wrong.

Why: at the time of writing, ``listener/framing.py`` builds its ``<hello>`` in the namespace
``urn:ietf:params:netconf:base:1.0`` (the capability URN) instead of
``urn:ietf:params:xml:ns:netconf:base:1.0`` (RFC 6241), and RFC-conforming devices (the
simulator among them) end the session with "first message is not a hello". The benchmarks
must still measure the listener, so this shim swaps in the corrected bytes (same length class,
same code path) and otherwise runs ``listener.cli.main`` unchanged. It does nothing once
framing.py is fixed; the benchmark records whether it was needed (``hello_patched``).
"""

from __future__ import annotations

import sys

from ansible_collections.netconf.callhome.listener import framing, session
from ansible_collections.netconf.callhome.listener.cli import main

RIGHT_NS = b'xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"'


def needs_patch() -> bool:
    return RIGHT_NS not in framing.CLIENT_HELLO


if __name__ == "__main__":
    if needs_patch():
        fixed = framing.CLIENT_HELLO.replace(
            b'xmlns="urn:ietf:params:netconf:base:1.0"', RIGHT_NS
        )
        framing.CLIENT_HELLO = fixed
        session.CLIENT_HELLO = fixed
    sys.exit(main(sys.argv[1:]))

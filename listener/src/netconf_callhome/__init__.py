# SPDX-License-Identifier: GPL-3.0-or-later
"""The netconf.callhome listener: devices call home here (RFC 8071), the listener verifies them
by key, authenticates, holds their NETCONF sessions and leases them to Ansible.

Layers: protocol (``framing``, ``ssh_transport``, ``tls_transport``), policy (``policy``),
state (``registry``), lifecycle (``service``, ``control``, ``cli``).
"""

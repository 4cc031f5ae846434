# SPDX-License-Identifier: GPL-3.0-or-later
"""The netconf.callhome listener: devices call home here (RFC 8071), the listener verifies them
by key, authenticates, holds their NETCONF sessions and leases them to Ansible.

Layers, each importing only its own and the ones before it (docs/architecture.md; checked by
tests/unit/netconf_callhome/test_layers.py):

0. ``errors``, ``fingerprints``, ``config``, ``paths``, ``netutil``, ``logs``
1. ``protocol/``: ``framing``, ``session``, ``events``, ``ssh``, ``tls``, ``outbound_ssh``,
   ``restconf``, ``first_bytes``, ``proxy_header``, ``rpc_socket``
2. ``policy/``: ``trust_store``, ``trust_ops``, ``verdicts``, ``verify``, ``admission``,
   ``secrets``, ``zero_touch``
3. ``state/``: ``registry``, ``stores``, ``postgres``, ``trust_postgres``, ``ownership``,
   ``cluster_nodes``, ``pg_listen``; and ``metrics``
4. ``sessions/``: ``mux``, ``xmlscan``, ``local``, ``restconf_sessions``; the service's parts
   ``devices``, ``trust_gate``, ``recorder``, ``waiters``, ``trust_edits``, ``owned``
5. ``control/``: ``client``, ``api``, ``server``, ``facade``, ``instance``, ``cluster``, ``forward``; and
   ``endpoints/``: ``ansible_rpc``, ``restconf_rpc``, ``ncclient_session``, ``platform`` (the only
   modules that import Ansible and ncclient, lazily: the ``ansible`` extra)
6. ``service`` (the composition root) and ``cli`` (``callhome-listener``): nothing imports them
"""

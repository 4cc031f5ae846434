#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Module netconf.callhome.listener_info: the listener's status and registry."""

from __future__ import annotations

DOCUMENTATION = r"""
module: listener_info
short_description: Return the call-home listener's status, devices and pending keys
version_added: 1.0.0
description:
  - Reads the call-home listener's registry, that is every device it knows (enrolled or seen), with its
    status (C(connected), C(disconnected), C(key-mismatch), C(auth-failed), C(error),
    C(never-seen)), transport, peer, fingerprint and capabilities, the keys waiting for approval,
    and the listener's own status.
author:
  - netconf.callhome developers (@netconf-callhome)
extends_documentation_fragment:
  - netconf.callhome.listener
options:
  status:
    description:
      - Only return devices with this status.
    type: str
  pending:
    description:
      - Also return the keys waiting for approval.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Read only.
"""

EXAMPLES = r"""
---
- name: What does the listener know?
  netconf.callhome.listener_info:
  register: callhome

- name: Devices with a session now
  ansible.builtin.debug:
    msg: "{{ callhome.devices | selectattr('status', 'equalto', 'connected') | map(attribute='name') }}"

- name: Only devices whose key changed
  netconf.callhome.listener_info:
    status: key-mismatch
    pending: false
"""

RETURN = r"""
address:
  description: The control address that answered.
  returned: always
  type: str
  sample: unix:/home/ops/.netconf-callhome/control.sock
listener:
  description: The listener's status (version, pid, binds, counts).
  returned: always
  type: dict
  sample: {version: 0.1.0, pid: 4242, ssh: ["0.0.0.0:4334"], sessions: 12, pending: 1}
devices:
  description: Registry records, one per device.
  returned: always
  type: list
  elements: dict
  sample:
    - {name: edge1, status: connected, transport: ssh, peer: "192.0.2.1:53122", enrolled: true}
pending:
  description:
    - Keys that called home but are not enrolled (empty when O(pending=false)).
    - With several listener nodes on one PostgreSQL database, the keys every node saw, each with the
      C(node) that saw it last (as C(devices) shows every node's devices); any node approves them.
  returned: always
  type: list
  elements: dict
  sample:
    - {fingerprint: "SHA256:...", key_type: ssh-ed25519, transport: ssh, peer: "192.0.2.9:40022", count: 3, node: node-a}
"""

from ansible_collections.netconf.callhome.plugins.module_utils.listener_options import (
    call_listener,
    control_api,
    listener_module,
)


def main() -> None:
    module = listener_module(status={"type": "str"}, pending={"type": "bool", "default": True})
    info = call_listener(module, lambda client: control_api.listener_info(
        client, status=module.params["status"], pending=module.params["pending"]))
    module.exit_json(changed=False, **info)


if __name__ == "__main__":
    main()

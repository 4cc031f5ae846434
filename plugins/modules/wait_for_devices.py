#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Module netconf.callhome.wait_for_devices: the call-home counterpart of wait_for_connection."""

from __future__ import annotations

DOCUMENTATION = r"""
module: wait_for_devices
short_description: Wait until devices have called home to the listener
version_added: 1.0.0
description:
  - Waits until every device in O(devices) holds a NETCONF session with the call-home listener,
    or until O(timeout) passes, and reports per device what the listener knows of it.
  - The call-home counterpart of M(ansible.builtin.wait_for_connection). A device that calls
    home is ready for the M(ansible.netcommon.netconf_get) family through the
    P(netconf.callhome.netconf#connection) connection.
author:
  - netconf.callhome developers (@netconf-callhome)
extends_documentation_fragment:
  - netconf.callhome.listener
options:
  devices:
    description:
      - Names of the devices to wait for (as enrolled in the listener's trust store).
    type: list
    elements: str
    required: true
  timeout:
    description:
      - Seconds to wait for all of them.
    type: float
    default: 300
  poll_interval:
    description:
      - Seconds between two looks at the listener's registry.
    type: float
    default: 1
  fail_on_missing:
    description:
      - Fail when a device has not called home within O(timeout). With V(false) the result lists
        the missing devices and the task succeeds.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Only reads the listener's registry; runs the same in check mode.
"""

EXAMPLES = r"""
---
- name: Wait for the routers of this rollout to call home
  netconf.callhome.wait_for_devices:
    devices: "{{ groups['routers'] }}"
    timeout: 600
  delegate_to: localhost
  run_once: true

- name: Wait on a remote listener (AWX)
  netconf.callhome.wait_for_devices:
    devices: [edge1, edge2]
    listener: tls://callhome.example.net:4339
    token: "{{ callhome_token }}"
    fail_on_missing: false
  register: waited
  delegate_to: localhost
"""

RETURN = r"""
ready:
  description: Devices that hold a session with the listener.
  returned: always
  type: list
  elements: str
  sample: [edge1]
missing:
  description: Devices that did not call home within the timeout.
  returned: always
  type: list
  elements: str
  sample: [edge2]
elapsed:
  description: Seconds spent waiting.
  returned: always
  type: float
  sample: 12.5
devices:
  description: Per device, what the listener knows of it, plus C(ready) and C(waited).
  returned: always
  type: dict
  sample:
    edge1: {name: edge1, ready: true, waited: 3.2, status: connected, transport: ssh, peer: "192.0.2.1:53122"}
    edge2: {name: edge2, ready: false, waited: null, status: key-mismatch, last_error: "presented ..."}
"""

from ansible_collections.netconf.callhome.plugins.module_utils.listener_options import (
    call_listener,
    control_api,
    listener_module,
)


def main() -> None:
    module = listener_module(
        devices={"type": "list", "elements": "str", "required": True},
        timeout={"type": "float", "default": 300.0},
        poll_interval={"type": "float", "default": 1.0},
        fail_on_missing={"type": "bool", "default": True},
    )
    params = module.params
    result = call_listener(module, lambda client: control_api.wait_for_devices(
        client, params["devices"], timeout=params["timeout"], poll_interval=max(0.05, params["poll_interval"])))
    if result["missing"] and params["fail_on_missing"]:
        module.fail_json(msg=control_api.describe_missing(result, params["timeout"]), **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""netconf.callhome.enroll: enroll a device identity in the listener's trust store."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: enroll
short_description: Enroll a device's SSH host key or TLS identity with the call-home listener
version_added: 0.1.0
description:
  - Files an identity under a device name in the listener's trust store, so that the listener
    accepts the device when it calls home, and uses that device's credentials with it only
    (RFC 8071 section 3.1 C7).
  - Sources. C(pending) approves a key the listener recorded when the device called
    (optionally only if it has O(expected_fingerprint)). C(ssh_scan) reads the host key the device
    presents on a direct SSH connection (like C(ssh-keyscan)). C(public_key), C(fingerprint)
    (SSH), C(certificate) (PEM), C(tls_fingerprint) and C(tls_identity) (C(serial:...), C(cn:...),
    for devices whose certificate chains to a configured CA) take the identity from O(value).
  - Observed keys (C(pending), C(ssh_scan)) are never enrolled silently. They must match
    O(expected_fingerprint), or O(trust_on_first_use) must be set; a key that differs from one
    already enrolled for the device is refused unless O(replace_existing).
  - Writes through the listener's control socket when it runs, and to the trust store file
    (under its lock, atomically) otherwise; a running listener re-reads the file within a second
    and is also told to reload.
  - A listener whose trust store is the shared database (C(state_url) on PostgreSQL, several
    nodes) is written through its control socket only, check mode included; when it does not
    answer (or a remote O(listener) does not), the task fails and nothing is written to a file
    that no node would read.
author:
  - netconf.callhome developers (@netconf-callhome)
extends_documentation_fragment:
  - netconf.callhome.listener.listener_token
options:
  device:
    description: Device name in the trust store (usually the inventory hostname).
    type: str
    required: true
  state:
    description: C(present) enrolls the identity; C(absent) removes it (or the whole device when no O(source) is given).
    type: str
    choices: [present, absent]
    default: present
  source:
    description: Where the identity comes from.
    type: str
    choices: [pending, ssh_scan, public_key, fingerprint, certificate, tls_fingerprint, tls_identity]
  transport:
    description:
      - How the device calls home - C(ssh) (NETCONF over SSH, Junos outbound-ssh), C(tls) (NETCONF
        over TLS) or C(restconf) (RESTCONF over TLS, port 4336). Optional; when set, the identity
        must fit it (SSH host key sources for C(ssh); C(certificate), C(tls_fingerprint),
        C(tls_identity) for C(tls) and C(restconf)), and O(source=pending) only approves a key
        that came over that transport.
      - RESTCONF devices are enrolled like TLS ones, by pinned certificate (C(certificate),
        C(tls_fingerprint), or C(pending) with O(expected_fingerprint)) or by CA chain plus
        identity (C(tls_identity), with the listener's C(device_ca)). The trust store records the
        certificate, not the transport, so one enrollment serves NETCONF over TLS and RESTCONF.
    type: str
    choices: [ssh, tls, restconf]
  value:
    description: The identity for the explicit sources (key line, fingerprint, PEM, C(serial:...)).
    type: str
  expected_fingerprint:
    description: Fingerprint the observed or given key must have (C(SHA256:...) as C(ssh-keygen -l) prints, or a certificate's SHA-256).
    type: str
  trust_on_first_use:
    description: Enroll an observed key without O(expected_fingerprint). Explicit opt-in.
    type: bool
    default: false
  replace_existing:
    description: Replace the device's enrolled identities of the same kind with the observed one.
    type: bool
    default: false
  host:
    description: Device address for C(ssh_scan); for C(pending), selects the entry that came from this address.
    type: str
  port:
    description: SSH port for C(ssh_scan).
    type: int
    default: 830
  key_type:
    description: Host key algorithm to ask for in C(ssh_scan), for example C(ssh-ed25519).
    type: str
  timeout:
    description: Seconds for C(ssh_scan).
    type: int
    default: 10
  credentials:
    description:
      - Credential references the listener uses with this device (never secrets); they replace the
        device's credentials in the trust store.
      - Applied with every O(source), C(pending) included (written with the approved key in one
        locked write; for a key already enrolled, the credentials alone are updated).
      - For a RESTCONF device, O(credentials.username) with O(credentials.password_file) or
        O(credentials.password_env) are the HTTP basic credentials the listener sends (never
        logged); without a password the listener authenticates with its client certificate alone.
    type: dict
    suboptions:
      username:
        description: User name.
        type: str
      private_key_file:
        description: Private key file on the listener host.
        type: str
      password_file:
        description: File holding the password, on the listener host.
        type: str
      password_env:
        description: Environment variable holding the password, in the listener's environment.
        type: str
  outbound_ssh_secret:
    description:
      - Junos outbound-ssh shared secret of this device, as a B(reference), never the secret itself
        (C(env:NAME), a variable in the listener's environment, or C(file:/absolute/path), a file of
        mode 0600 on the listener host). A value that is neither is refused without being shown.
      - The listener then checks the HMAC the device sends with its C(HOST-KEY), and enrolls an
        unknown device that proves it without an operator (zero-touch enrollment, see
        C(docs/outbound-ssh.md)). Set with or without O(source); a device can be pre-provisioned.
      - Written through the running listener's control socket, into the trust store it uses (on a
        node with a shared PostgreSQL store, the database every node reads), and to the trust store
        file when no listener runs; with O(state=present) only; O(state=absent) without O(source)
        removes the device and its secret. A listener on a shared store that does not answer is an
        error (nothing is written to a file no node reads).
      - Marked C(no_log) in case a secret is pasted here by mistake, so the reference shows masked
        in the task result.
    type: str
  outbound_ssh_allow_rotation:
    description:
      - With O(outbound_ssh_secret), a call with a valid HMAC and a new host key replaces the
        device's enrolled key. Off by default, a new key is then pending as a key mismatch; the
        pinned key is a stronger proof than a secret.
    type: bool
    default: false
  trust_store:
    description: Trust store file when the listener does not run (default C(~/.netconf-callhome/trust.json), or the one the running listener reports).
    type: path
attributes:
  check_mode:
    support: full
    description:
      - Computes the change on the trust store without writing or approving (on a listener with a
        shared store, through its operations with C(dry_run)).
  diff_mode:
    support: full
    description:
      - Returns the device's identities before and after, and its outbound-ssh secret reference
        (masked, see O(outbound_ssh_secret)) when O(outbound_ssh_secret) is given.
  idempotent:
    support: full
    description: Enrolling an enrolled identity reports no change.
requirements:
  - the netconf-callhome Python package on the controller (C(pip install netconf-callhome))
notes:
  - "Runs on the controller (or wherever the listener's control socket is): use C(delegate_to=localhost) or a local connection."
"""

EXAMPLES = r"""
---
- name: Enroll the key r1 presents on its management address, checked against the known fingerprint
  netconf.callhome.enroll:
    device: r1
    source: ssh_scan
    host: 192.0.2.1
    port: 830
    expected_fingerprint: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
  delegate_to: localhost

- name: Approve the key r2 presented when it called home
  netconf.callhome.enroll:
    device: r2
    source: pending
    expected_fingerprint: "{{ r2_fingerprint }}"
  delegate_to: localhost

- name: Enroll a TLS device by its IDevID serial number (chains to a configured CA)
  netconf.callhome.enroll:
    device: r3
    source: tls_identity
    value: "serial:FOC1234X"
  delegate_to: localhost

- name: Pre-provision a Junos device for zero-touch enrollment by its outbound-ssh secret
  netconf.callhome.enroll:
    device: r5
    outbound_ssh_secret: "file:/etc/callhome/r5.secret"
  delegate_to: localhost

- name: Approve the certificate a RESTCONF device presented when it called 4336, with HTTP basic credentials
  netconf.callhome.enroll:
    device: r6
    source: pending
    transport: restconf
    expected_fingerprint: "{{ r6_certificate_sha256 }}"
    credentials:
      username: nms
      password_file: /etc/callhome/r6.http-password
  delegate_to: localhost

- name: Remove a device from the trust store
  netconf.callhome.enroll:
    device: r4
    state: absent
  delegate_to: localhost
"""

RETURN = r"""
fingerprint:
  description: Canonical fingerprint (or identity) enrolled or removed.
  returned: when an identity was given or observed
  type: str
  sample: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
transport:
  description: Transport of the approved pending key, or the one O(transport) named (empty otherwise).
  returned: always
  type: str
  sample: restconf
kind:
  description: Trust store list the identity belongs to.
  returned: when an identity was given or observed
  type: str
  sample: ssh_host_keys
before:
  description: The device's enrolled fingerprints/identities before the task.
  returned: always
  type: list
  elements: str
after:
  description: The device's enrolled fingerprints/identities after the task.
  returned: always
  type: list
  elements: str
written_via:
  description: C(listener), C(file+reload) or C(file).
  returned: when something was computed against a store
  type: str
trust_store:
  description:
    - Trust store file written (file paths only).
    - For O(outbound_ssh_secret) written through the listener, the store that listener uses, a file
      or its shared database (URL, password redacted).
  returned: when the file was used, or O(outbound_ssh_secret) was given
  type: str
outbound_ssh:
  description: The device's outbound-ssh secret setting after the task (its reference shows masked, see O(outbound_ssh_secret)).
  returned: when O(outbound_ssh_secret) was given
  type: dict
  sample: {"secret": "********", "allow_rotation": false}
"""

import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import (
    CallHomeError,
    fail_if_missing,
    fail_on_callhome_error,
)
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.enroll import Enroller, run
from ansible_collections.netconf.callhome.plugins.module_utils.listener_options import LISTENER_TOKEN_ARGS


def set_outbound_ssh_secret(params, check_mode):
    """The device's outbound-ssh secret reference: through the running listener's control
    operation ``secret`` (into the store it uses, the shared database included; ``dry_run`` in
    check mode), else the trust store file under its lock. References only, never a value."""
    enroller = Enroller(listener=params.get("listener"), token=params.get("listener_token"),
                        trust_store=params.get("trust_store"), check_mode=check_mode)
    return enroller.set_outbound_ssh_secret(params["device"], params["outbound_ssh_secret"],
                                            allow_rotation=params["outbound_ssh_allow_rotation"])


def _diff_text(identities, outbound_ssh, secret):
    lines = list(identities)
    if secret:
        lines.append("outbound_ssh: %s" % json.dumps(outbound_ssh, sort_keys=True))
    return "\n".join(lines) + "\n"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            device=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            source=dict(type="str", choices=["pending", "ssh_scan", "public_key", "fingerprint", "certificate",
                                             "tls_fingerprint", "tls_identity"]),
            transport=dict(type="str", choices=["ssh", "tls", "restconf"]),
            value=dict(type="str"),
            expected_fingerprint=dict(type="str"),
            trust_on_first_use=dict(type="bool", default=False),
            replace_existing=dict(type="bool", default=False),
            host=dict(type="str"),
            port=dict(type="int", default=830),
            key_type=dict(type="str", no_log=False),
            timeout=dict(type="int", default=10),
            credentials=dict(type="dict", options=dict(
                username=dict(type="str"),
                private_key_file=dict(type="str", no_log=False),
                password_file=dict(type="str", no_log=False),
                password_env=dict(type="str", no_log=False),
            )),
            **LISTENER_TOKEN_ARGS,
            trust_store=dict(type="path"),
            # A reference (env:/file:), not the secret; no_log all the same, in case a secret is pasted here.
            outbound_ssh_secret=dict(type="str", no_log=True),
            outbound_ssh_allow_rotation=dict(type="bool", default=False),
        ),
        required_if=[("state", "present", ["source", "outbound_ssh_secret"], True)],
        supports_check_mode=True,
    )
    fail_if_missing(module)
    secret = module.params["outbound_ssh_secret"] if module.params["state"] == "present" else None
    try:
        result = run(module.params, check_mode=module.check_mode) if module.params["source"] or not secret else None
        secret_out, secret_warnings = set_outbound_ssh_secret(module.params, module.check_mode) if secret else ({}, [])
    except CallHomeError as exc:
        fail_on_callhome_error(module, exc)
    out = result.to_dict() if result is not None else {"changed": False, "device": module.params["device"]}
    secret_before = secret_out.pop("outbound_ssh_before", None)
    if secret:
        secret_changed = secret_out.pop("changed")
        out["changed"] = bool(out["changed"] or secret_changed)
        if result is not None and result.written_via:
            secret_out.pop("written_via")  # the identity's way (e.g. through the listener) is reported
        if result is not None:
            secret_out.pop("before")
            secret_out.pop("after")
        out.update(secret_out)
    if module._diff and (result is not None or secret):
        before = result.before if result is not None else out.get("before", [])
        after = result.after if result is not None else out.get("after", [])
        out["diff"] = {"before": _diff_text(before, secret_before, secret),
                       "after": _diff_text(after, out.get("outbound_ssh"), secret)}
    for warning in (result.warnings if result is not None else []) + secret_warnings:
        module.warn(warning)
    module.exit_json(**out)


if __name__ == "__main__":
    main()

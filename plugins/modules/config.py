#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""netconf.callhome.config: push call-home configuration to a device over NETCONF."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: config
short_description: Configure a device to call home (RFC 8071, NETCONF or RESTCONF) to the listener
version_added: 0.1.0
description:
  - Manages one call-home client entry on a device, over a NETCONF session to that device
    (C(ansible_connection=ansible.netcommon.netconf) to a device reached directly, or
    C(netconf.callhome.netconf) to a device that already calls home).
  - O(protocol=netconf) (the default) configures NETCONF call home (SSH to port 4334, TLS to 4335) in
    C(ietf-netconf-server). O(protocol=restconf) configures RESTCONF call home (HTTPS to port 4336) in
    C(/restconf-server/call-home/restconf-client[name]) of C(ietf-restconf-server)
    (draft-ietf-netconf-restconf-client-server); each endpoint is its C(https) stack, with
    C(tcp-client-parameters) (the listener's address), C(tls-server-parameters) (O(tls)),
    C(http-server-parameters) (O(restconf)) and C(restconf-server-parameters) (O(tls.cert_to_name)).
    The device must advertise C(ietf-restconf-server) (hello capabilities or yang-library); its
    revision is detected as for C(ietf-netconf-server) (supported 2023-04-17 and 2024-03-16), and a
    device that does not advertise the module is refused with an error saying so.
  - One call-home port for every transport. When the listener serves a single port for all
    transports (its C(callhome_binds)), set O(callhome_port) to it; every endpoint without a
    O(endpoints[].port) of its own then dials that port instead of its transport's IANA port.
    O(endpoints[].port) sets the port per endpoint (and so per transport), for example SSH to the
    single port and TLS still to 4335.
  - Two dialects. C(ietf) edits C(/netconf-server/call-home/netconf-client[name]) of
    C(ietf-netconf-server); the revision is read from the device's hello capabilities or its
    yang-library, and the XML is built for that revision (supported 2019-07-02 with
    C(keystore-reference), 2023-12-28 and 2025-04-24 with C(central-keystore-reference)).
    An unknown revision is refused with an error naming what was found.
    C(junos) edits C(system services outbound-ssh client).
  - Idempotent. The running configuration is read first and nothing is sent when it already
    matches (O(state=present) - every wanted node is there; O(state=replaced) - the entry is
    exactly the wanted one). Edits go to the candidate datastore and are committed where the
    device has C(:candidate), to running otherwise; the target datastore is locked while editing.
  - Safe rollout with O(confirm_callhome=true). The change is committed as a confirmed commit,
    the module waits through the listener's control socket for the device to call home, and only
    then confirms. When the device does not call within O(callhome_timeout), the commit is
    cancelled (the device is back on its previous configuration) and the task fails; if even the
    cancel fails, the device reverts by itself after O(confirm_timeout).
  - A device without C(:candidate) + C(:confirmed-commit) cannot roll back by itself; the module
    then refuses O(confirm_callhome) unless O(allow_unconfirmed=true), in which case it applies
    the change, waits, and puts the previous entry back itself when the device does not call.
author:
  - netconf.callhome developers (@netconf-callhome)
extends_documentation_fragment:
  - netconf.callhome.listener.listener_token
options:
  name:
    description: Name of the call-home client entry (C(netconf-client) or C(restconf-client) name / Junos client id).
    type: str
    required: true
  protocol:
    description:
      - C(netconf) writes a C(netconf-client) of C(ietf-netconf-server) (or Junos outbound-ssh).
      - C(restconf) writes a C(restconf-client) of C(ietf-restconf-server); endpoints are C(https)
        (port 4336 by default) and need O(tls).
    type: str
    choices: [netconf, restconf]
    default: netconf
  callhome_port:
    description:
      - The listener's single call-home port (C(callhome_binds)), where it tells SSH, Junos
        outbound-ssh, NETCONF over TLS and RESTCONF apart from the first bytes.
      - Endpoints without O(endpoints[].port) dial this port; without it they dial their
        transport's IANA port (4334 ssh, 4335 tls, 4336 https).
    type: int
  state:
    description:
      - C(present) merges the wanted settings into the entry.
      - C(replaced) makes the entry exactly the wanted one.
      - C(absent) removes the entry.
    type: str
    choices: [present, absent, replaced]
    default: present
  dialect:
    description:
      - Which data model to write. C(auto) picks C(junos) when the device's hello says it is Junos.
      - O(protocol=restconf) always writes C(ietf-restconf-server); C(junos) is refused with it.
    type: str
    choices: [auto, ietf, junos]
    default: auto
  revision:
    description:
      - Revision of the server module to write (C(ietf-netconf-server), or C(ietf-restconf-server)
        with O(protocol=restconf)); C(auto) detects it.
    type: str
    default: auto
  endpoints:
    description: Listener addresses the device dials, in order (ordered-by user).
    type: list
    elements: dict
    suboptions:
      name:
        description: Endpoint name (default C(<transport>-<n>)).
        type: str
      address:
        description: Listener IP address or host name as the device sees it.
        type: str
        required: true
      port:
        description:
          - Listener port. Default O(callhome_port) when set, else the transport's IANA port
            (4334 for ssh, 4335 for tls, 4336 for https).
        type: int
      transport:
        description:
          - Call-home transport. C(ssh) and C(tls) with O(protocol=netconf) (default C(ssh)), C(https)
            with O(protocol=restconf) (its only transport, the default there).
        type: str
        choices: [ssh, tls, https]
      tcp_keepalives:
        description: TCP keepalives of the device's connection.
        type: dict
        suboptions:
          idle_time:
            description: Seconds of idleness before the first probe.
            type: int
            default: 15
          max_probes:
            description: Unanswered probes before the connection is dropped.
            type: int
            default: 3
          probe_interval:
            description: Seconds between probes.
            type: int
            default: 5
  connection_type:
    description: Keep a persistent connection, or connect periodically.
    type: str
    choices: [persistent, periodic]
    default: persistent
  period:
    description: Minutes between periodic connections.
    type: int
  anchor_time:
    description:
      - Periodic anchor, for example C(2025-01-01T00:15:00Z). Minute granularity, time zone required;
        C(2025-01-01T00:15Z) is written as C(2025-01-01T00:15:00Z), the form the YANG pattern requires.
    type: str
  idle_timeout:
    description: Seconds a periodic session may stay idle.
    type: int
  start_with:
    description: Reconnect strategy - which endpoint to start with.
    type: str
    choices: [first-listed, last-connected, random-selection]
  max_wait:
    description: Reconnect strategy - seconds before an attempt counts as failed (not in revision 2019-07-02).
    type: int
  max_attempts:
    description: Reconnect strategy - attempts per endpoint before the next one.
    type: int
  ssh:
    description: SSH parameters for SSH endpoints (the device is the SSH server).
    type: dict
    suboptions:
      host_key_name:
        description: Name of the C(host-key) entry.
        type: str
        default: default-key
      host_key_reference:
        description: Name of the asymmetric key in the device's keystore used as host key.
        type: str
      username:
        description: User the listener logs in as.
        type: str
      client_public_keys:
        description: OpenSSH public key lines the device accepts for O(ssh.username) (the listener's keys).
        type: list
        elements: str
      keepalive_max_wait:
        description: SSH keepalive - seconds of silence before a probe.
        type: int
      keepalive_max_attempts:
        description: SSH keepalive - unanswered probes before the connection is dropped.
        type: int
  tls:
    description:
      - TLS parameters for TLS endpoints (ietf-netconf-server revisions 2023-12-28 and later) and
        for RESTCONF's https endpoints.
    type: dict
    suboptions:
      server_key_reference:
        description: Keystore asymmetric key holding the device's certificate.
        type: str
      server_certificate_reference:
        description: Certificate name under that key.
        type: str
      ca_certs_reference:
        description: Truststore certificate bag with the CA of the listener's certificate.
        type: str
      ee_certs_reference:
        description: Truststore certificate bag with the listener's own certificate.
        type: str
      cert_to_name:
        description:
          - RFC 7407 mappings of the listener's certificate to a NETCONF (or RESTCONF) user.
          - With O(protocol=restconf) they go to C(restconf-server-parameters/client-identity-mappings).
        type: list
        elements: dict
        suboptions:
          id:
            description: Entry id (order of evaluation).
            type: int
          fingerprint:
            description:
              - SHA-256 fingerprint of the certificate (C(SHA256:AB:..), C(AB:..) or C(04:AB:..)).
              - Required with O(protocol=netconf). RESTCONF mappings may omit it (the entry then
                matches any certificate that chains to the trusted CA; put it last).
            type: str
          map_type:
            description: x509c2n identity, for example C(specified) or C(san-any).
            type: str
            default: specified
          name:
            description: NETCONF user name (for C(specified)).
            type: str
  restconf:
    description:
      - HTTP server parameters of RESTCONF endpoints (C(http-server-parameters)), O(protocol=restconf) only.
      - Leave it out when the listener authenticates with its client certificate alone (cert-to-name).
        For HTTP basic authentication (the listener's credentials in its trust store, see
        M(netconf.callhome.enroll) O(netconf.callhome.enroll#module:credentials)), list the user
        here with the crypt hash of the password.
    type: dict
    suboptions:
      server_name:
        description: Value of the C(Server) header field the device sends.
        type: str
      users:
        description: Local users of the device's HTTP server (C(client-authentication/users/user)), basic scheme.
        type: list
        elements: dict
        suboptions:
          user_id:
            description: Key of the entry.
            type: str
            required: true
          username:
            description: User name the listener sends in HTTP basic authentication.
            type: str
          hashed_password:
            description: Password as an C(iana-crypt-hash) value (C($6$...) as C(mkpasswd -m sha-512) prints).
            type: str
  junos:
    description: Junos outbound-ssh specifics (dialect C(junos)).
    type: dict
    suboptions:
      device_id:
        description: DEVICE-ID the device announces in its outbound-ssh preamble.
        type: str
        required: true
      secret:
        description: Shared secret for the preamble's HMAC (Junos stores it hashed; not compared).
        type: str
      keep_alive_retry:
        description: Keepalive retries.
        type: int
      keep_alive_timeout:
        description: Keepalive timeout in seconds.
        type: int
      reconnect_strategy:
        description: C(sticky) or C(in-order).
        type: str
        choices: [sticky, in-order]
  confirm_callhome:
    description: Commit with a confirmed commit and confirm only after the device called home.
    type: bool
    default: false
  callhome_device:
    description: The device's name at the listener (its trust-store entry); required with O(confirm_callhome).
    type: str
  callhome_timeout:
    description: Seconds to wait for the device to call home.
    type: int
    default: 60
  confirm_timeout:
    description: Confirm timeout of the confirmed commit; must exceed O(callhome_timeout) by 10 s.
    type: int
    default: 120
  require_new_session:
    description: Only accept a session opened after the change (not one that was already up).
    type: bool
    default: false
  allow_unconfirmed:
    description: Allow O(confirm_callhome) on a device without C(:candidate)/C(:confirmed-commit).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reads the running configuration, reports what would change, edits nothing.
  diff_mode:
    support: full
    description: Returns the entry before and after, as XML.
  idempotent:
    support: full
    description: A second run with the same parameters reports no change.
requirements:
  - the netconf-callhome Python package on the controller (C(pip install netconf-callhome))
  - ncclient (lxml) on the controller
  - ansible.netcommon
notes:
  - The module runs on the controller over the task's netconf connection; set
    C(ansible_python_interpreter) to a Python that has ncclient and lxml.
  - The Junos XML follows Juniper's outbound-ssh documentation and has not been run against a Junos box.
"""

EXAMPLES = r"""
---
- name: Make the device call home to the listener, and keep it only if it does
  netconf.callhome.config:
    name: nms
    endpoints:
      - name: nms-a
        address: 192.0.2.10
        port: 4334
        tcp_keepalives: {idle_time: 15, max_probes: 3, probe_interval: 5}
    ssh:
      host_key_reference: genkey
      username: netconf
      client_public_keys:
        - "{{ lookup('ansible.builtin.file', '/etc/callhome/id_ed25519.pub') }}"
    start_with: first-listed
    max_attempts: 3
    confirm_callhome: true
    callhome_device: "{{ inventory_hostname }}"
    callhome_timeout: 60
    confirm_timeout: 120

- name: Remove it again
  netconf.callhome.config:
    name: nms
    state: absent

- name: RESTCONF call home (HTTPS to 4336), the listener identified by its certificate
  netconf.callhome.config:
    name: nms-restconf
    protocol: restconf
    endpoints:
      - name: nms-a
        address: 192.0.2.10
    tls:
      server_key_reference: device-key
      server_certificate_reference: device-cert
      ca_certs_reference: nms-ca
      cert_to_name:
        - fingerprint: "{{ listener_cert_fingerprint }}"
          map_type: specified
          name: admin
    restconf:
      users:
        - user_id: nms
          username: nms
          hashed_password: "{{ nms_password | password_hash('sha512') }}"

- name: NETCONF over SSH and TLS, both to the listener's single call-home port
  netconf.callhome.config:
    name: nms
    callhome_port: 4330
    endpoints:
      - {name: ssh-a, address: 192.0.2.10, transport: ssh}
      - {name: tls-a, address: 192.0.2.10, transport: tls}
    ssh:
      host_key_reference: genkey
      username: netconf
    tls:
      server_key_reference: device-key
      server_certificate_reference: device-cert
      ca_certs_reference: nms-ca
      cert_to_name:
        - {fingerprint: "{{ listener_cert_fingerprint }}", map_type: specified, name: netconf}

- name: Junos outbound-ssh
  netconf.callhome.config:
    name: nms
    dialect: junos
    endpoints:
      - address: 192.0.2.10
        port: 4334
    junos:
      device_id: "{{ inventory_hostname }}"
      secret: "{{ outbound_ssh_secret }}"
      keep_alive_retry: 3
      keep_alive_timeout: 15
"""

RETURN = r"""
dialect:
  description: Data model written.
  returned: always
  type: str
  sample: ietf
protocol:
  description: Call-home protocol configured (netconf or restconf).
  returned: always
  type: str
  sample: restconf
module:
  description: Server module written (ietf-netconf-server or ietf-restconf-server).
  returned: dialect ietf
  type: str
  sample: ietf-restconf-server
revision:
  description: Revision of that module the XML was built for.
  returned: dialect ietf
  type: str
  sample: "2025-04-24"
revision_source:
  description: Where the revision came from (hello capabilities, yang-library, configured).
  returned: dialect ietf
  type: str
  sample: hello capabilities
datastore:
  description: Datastore edited (candidate, then committed, or running).
  returned: always
  type: str
  sample: candidate
before:
  description: The entry in running before the task, as XML (empty when absent).
  returned: always
  type: str
after:
  description: The entry as the task leaves it, as XML (empty when absent).
  returned: always
  type: str
callhome:
  description: Outcome of the safe rollout.
  returned: when confirm_callhome is true
  type: dict
  sample:
    mode: confirmed-commit
    device: r1
    confirmed: true
    confirmed_commit_supported: true
    waited: 1.2
    status: connected
    peer: "192.0.2.55:53122"
    fingerprint: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
rpc_error:
  description: The device's rpc-error (message, path, tag) when it refused the change.
  returned: on refusal
  type: dict
"""

import ast

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.connection import Connection, ConnectionError

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.lxml_support import (
    HAS_LXML,
    LXML_IMPORT_ERROR,
    etree,
)
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.model import from_params
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.push import (
    ConfigPusher,
    DeviceRpcError,
    PushError,
    parse_rpc_error,
)
from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import (
    CallHomeError,
    DeviceNotFoundError,
    fail_if_missing,
    fail_on_callhome_error,
)
from ansible_collections.netconf.callhome.plugins.module_utils.listener_options import LISTENER_TOKEN_ARGS

try:
    from netconf_callhome.control.client import ControlClient
except ImportError:  # main() fails with missing_required_lib("netconf-callhome") before any use
    pass


def _unwrap_bytes_repr(text):
    """``b'Missing XML namespace.'`` -> ``Missing XML namespace.``

    Errors of some netcommon netconf calls (get-config, edit-config...) reach the module as the
    repr of a bytes object; the device's words are inside it.
    """
    stripped = text.strip()
    if len(stripped) >= 3 and stripped[0] == "b" and stripped[1] in "'\"" and stripped[-1] == stripped[1]:
        try:
            value = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            return text
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
    return text


class _NetcommonOps(object):
    """ansible.netcommon's persistent netconf connection, as push.NetconfOps."""

    def __init__(self, module):
        from ansible_collections.ansible.netcommon.plugins.module_utils.network.netconf.netconf import (
            get_capabilities,
            get_connection,
        )

        self.module = module
        self.conn = get_connection(module)
        self._caps = list(get_capabilities(module).get("server_capabilities") or [])

    def capabilities(self):
        return self._caps

    def _do(self, rpc, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ConnectionError as exc:
            message, path, tag = parse_rpc_error(_unwrap_bytes_repr(to_text(exc, errors="surrogate_then_replace")))
            raise DeviceRpcError(message, path=path, tag=tag, rpc=rpc)

    @staticmethod
    def _xml(reply):
        if reply is None or isinstance(reply, list):  # a list: only warnings came back
            return "<data/>"
        return etree.tostring(reply).decode("utf-8")

    def get(self, filter_xml):
        return self._xml(self._do("get", self.conn.get, filter=filter_xml))

    def get_config(self, source, filter_xml):
        return self._xml(self._do("get-config", self.conn.get_config, source=source, filter=filter_xml))

    def edit_config(self, config_xml, target):
        self._do("edit-config", self.conn.edit_config, config=config_xml, target=target)

    def lock(self, target):
        self._do("lock", self.conn.lock, target=target)

    def unlock(self, target):
        self._do("unlock", self.conn.unlock, target=target)

    def commit(self, confirmed=False, timeout=None, persist=None):
        self._do("commit", self.conn.commit, confirmed=confirmed,
                 timeout=str(timeout) if timeout is not None else None, persist=persist)

    def rpc(self, xml):
        return self._xml(self._do("rpc", self.conn.dispatch, rpc_command=xml))

    def discard_changes(self):
        self._do("discard-changes", self.conn.discard_changes)

    def keepalive(self):
        # Each module request is a new connection to ansible-connection, which exits after
        # persistent_connect_timeout seconds without one: keep it (and the device session) alive.
        try:
            Connection(self.module._socket_path).get_capabilities()
        except ConnectionError:
            pass


class _ListenerWaiter(object):
    """The listener's control socket, as push.CallHomeWaiter."""

    def __init__(self, address, token):
        self.client = ControlClient(address, token=token)

    def wait(self, device, seconds):
        return self.client.call("wait", timeout=seconds + 15, device=device, wait=seconds)

    def record(self, device):
        try:
            return self.client.call("device", device=device)
        except DeviceNotFoundError:
            return None


def main():
    endpoint_spec = dict(
        name=dict(type="str"),
        address=dict(type="str", required=True),
        port=dict(type="int"),
        transport=dict(type="str", choices=["ssh", "tls", "https"]),
        tcp_keepalives=dict(type="dict", options=dict(
            idle_time=dict(type="int", default=15),
            max_probes=dict(type="int", default=3),
            probe_interval=dict(type="int", default=5),
        )),
    )
    argument_spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent", "replaced"], default="present"),
        protocol=dict(type="str", choices=["netconf", "restconf"], default="netconf"),
        callhome_port=dict(type="int"),
        dialect=dict(type="str", choices=["auto", "ietf", "junos"], default="auto"),
        revision=dict(type="str", default="auto"),
        endpoints=dict(type="list", elements="dict", options=endpoint_spec),
        connection_type=dict(type="str", choices=["persistent", "periodic"], default="persistent"),
        period=dict(type="int"),
        anchor_time=dict(type="str"),
        idle_timeout=dict(type="int"),
        start_with=dict(type="str", choices=["first-listed", "last-connected", "random-selection"]),
        max_wait=dict(type="int"),
        max_attempts=dict(type="int"),
        ssh=dict(type="dict", options=dict(
            host_key_name=dict(type="str", default="default-key"),
            host_key_reference=dict(type="str", no_log=False),
            username=dict(type="str"),
            client_public_keys=dict(type="list", elements="str", no_log=False),
            keepalive_max_wait=dict(type="int"),
            keepalive_max_attempts=dict(type="int"),
        )),
        tls=dict(type="dict", options=dict(
            server_key_reference=dict(type="str", no_log=False),
            server_certificate_reference=dict(type="str"),
            ca_certs_reference=dict(type="str"),
            ee_certs_reference=dict(type="str"),
            cert_to_name=dict(type="list", elements="dict", options=dict(
                id=dict(type="int"),
                fingerprint=dict(type="str"),
                map_type=dict(type="str", default="specified"),
                name=dict(type="str"),
            )),
        )),
        restconf=dict(type="dict", options=dict(
            server_name=dict(type="str"),
            users=dict(type="list", elements="dict", options=dict(
                user_id=dict(type="str", required=True),
                username=dict(type="str"),
                hashed_password=dict(type="str", no_log=True),
            )),
        )),
        junos=dict(type="dict", options=dict(
            device_id=dict(type="str", required=True),
            secret=dict(type="str", no_log=True),
            keep_alive_retry=dict(type="int"),
            keep_alive_timeout=dict(type="int"),
            reconnect_strategy=dict(type="str", choices=["sticky", "in-order"]),
        )),
        confirm_callhome=dict(type="bool", default=False),
        callhome_device=dict(type="str"),
        callhome_timeout=dict(type="int", default=60),
        confirm_timeout=dict(type="int", default=120),
        require_new_session=dict(type="bool", default=False),
        allow_unconfirmed=dict(type="bool", default=False),
        **LISTENER_TOKEN_ARGS,
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_if=[("state", "present", ["endpoints"]), ("state", "replaced", ["endpoints"]),
                     ("confirm_callhome", True, ["callhome_device"])],
        supports_check_mode=True,
    )
    fail_if_missing(module)
    if not HAS_LXML:
        module.fail_json(msg=missing_required_lib("lxml"), exception=LXML_IMPORT_ERROR)
    p = module.params
    try:
        client = from_params(p) if p["state"] != "absent" else None
        waiter = _ListenerWaiter(p["listener"], p["listener_token"]) if p["confirm_callhome"] else None
        pusher = ConfigPusher(
            _NetcommonOps(module), client, name=p["name"], state=p["state"], protocol=p["protocol"], dialect=p["dialect"],
            revision=p["revision"], check_mode=module.check_mode, confirm_callhome=p["confirm_callhome"],
            allow_unconfirmed=p["allow_unconfirmed"], callhome_device=p["callhome_device"],
            callhome_timeout=p["callhome_timeout"], confirm_timeout=p["confirm_timeout"],
            require_new_session=p["require_new_session"], waiter=waiter,
        )
        result = pusher.run()
    except PushError as exc:
        module.fail_json(msg=exc.message, **exc.result)
    except DeviceRpcError as exc:
        module.fail_json(msg=exc.describe(), rpc_error={"message": exc.message, "path": exc.path, "tag": exc.tag})
    except CallHomeError as exc:
        fail_on_callhome_error(module, exc, json_details=True)
    if pusher.warnings:
        result["warnings"] = pusher.warnings
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

# SPDX-License-Identifier: GPL-3.0-or-later
"""``netconf.callhome.config`` with ``protocol: restconf`` in real ``ansible-playbook`` runs against
the simulator's direct NETCONF endpoint, which advertises ietf-restconf-server (``--capability``)
and keeps what is pushed in its datastores: check mode, diff, apply, idempotence, replace onto the
listener's single call-home port, removal of the last entry, and the refusal of a device that
does not advertise the module. The safe rollout end to end: nginx, a RESTCONF server nobody here
wrote, dials what the pushed entry names and the module confirms only once the listener holds it. The XML itself is validated against the YANG modules in
tests/unit/plugins/modules/test_callhome_config_yang.py.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from harness import Fleet  # tests/integration (conftest puts it on sys.path)
from test_config_module import DEVICE, DirectDevice, play  # same directory, same helpers

pytestmark = pytest.mark.timeout(300)
RCS = "urn:ietf:params:xml:ns:yang:ietf-restconf-server"
CAPS = [
    "urn:ietf:params:netconf:capability:candidate:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
    "urn:ietf:params:xml:ns:yang:ietf-netconf-server?module=ietf-netconf-server&amp;revision=2023-12-28",
    "urn:ietf:params:xml:ns:yang:ietf-restconf-server?module=ietf-restconf-server&amp;revision=2024-03-16",
]
FP = "SHA256:" + ":".join(["5A"] * 32)
SHA512 = "$6$callhome$" + "Q" * 86


def restconf_entries(device: DirectDevice) -> List[Any]:
    m = device.manager()
    try:
        flt = '<restconf-server xmlns="%s"><call-home/></restconf-server>' % RCS
        data = m.get_config("running", filter=("subtree", flt)).data_ele
        return data.findall(".//{%s}restconf-client" % RCS)
    finally:
        m.close_session()


def rc_args(**extra: Any) -> Dict[str, Any]:
    args: Dict[str, Any] = {
        "name": "nms",
        "protocol": "restconf",
        "endpoints": [{"name": "a", "address": "127.0.0.1"}],
        "tls": {"server_key_reference": "device-key", "server_certificate_reference": "device-cert",
                "ca_certs_reference": "nms-ca",
                "cert_to_name": [{"fingerprint": FP, "map_type": "specified", "name": "admin"}]},
        "restconf": {"users": [{"user_id": "nms", "username": "nms", "hashed_password": SHA512}]},
    }
    args.update(extra)
    return args


@pytest.fixture
def device(fleet: Fleet) -> Any:
    fleet.keys([DEVICE])
    dev = DirectDevice(fleet, CAPS)
    yield dev
    dev.stop()


def test_restconf_check_diff_apply_idempotence_single_port_absent(tmp_path: Path, device: DirectDevice) -> None:
    checked = play(tmp_path, device, rc_args(), "--check", "--diff")
    assert checked["changed"] is True and not checked.get("failed"), checked
    assert checked["module"] == "ietf-restconf-server" and checked["revision"] == "2024-03-16"
    assert checked["revision_source"] == "hello capabilities" and checked["protocol"] == "restconf"
    assert "<remote-port>4336</remote-port>" in checked["diff"]["after"] and checked["diff"]["before"] == ""
    assert restconf_entries(device) == [], "check mode must not change the device"

    applied = play(tmp_path, device, rc_args(), "--diff")
    assert applied["changed"] is True and not applied.get("failed"), applied
    assert "+          <remote-port>4336</remote-port>" in applied["_stdout"]  # --diff rendered by Ansible
    assert SHA512 not in applied["_stdout"], "hashed_password is no_log"
    entries = restconf_entries(device)
    assert len(entries) == 1
    https = entries[0].find("{%s}endpoints/{%s}endpoint/{%s}https" % (RCS, RCS, RCS))
    assert https is not None, "the endpoint is the https call-home stack"
    assert https.findtext(".//{%s}remote-port" % RCS) == "4336"
    assert https.findtext(".//{%s}hashed-password" % RCS) == SHA512
    assert https.find("{%s}restconf-server-parameters/{%s}client-identity-mappings" % (RCS, RCS)) is not None

    again = play(tmp_path, device, rc_args())
    assert again["changed"] is False and not again.get("failed"), again

    # the listener's single call-home port: replaced moves the endpoint there, then stays put
    single = play(tmp_path, device, rc_args(state="replaced", callhome_port=4330), "--diff")
    assert single["changed"] is True and not single.get("failed"), single
    assert [e.findtext(".//{%s}remote-port" % RCS) for e in restconf_entries(device)] == ["4330"]
    assert play(tmp_path, device, rc_args(state="replaced", callhome_port=4330))["changed"] is False

    removed = play(tmp_path, device, {"name": "nms", "protocol": "restconf", "state": "absent"}, "--diff")
    assert removed["changed"] is True and not removed.get("failed"), removed
    assert restconf_entries(device) == []
    assert play(tmp_path, device, {"name": "nms", "protocol": "restconf", "state": "absent"})["changed"] is False


def test_device_without_ietf_restconf_server_is_refused(tmp_path: Path, fleet: Fleet) -> None:
    fleet.keys([DEVICE])
    dev = DirectDevice(fleet, CAPS[:3])  # NETCONF call home only
    try:
        result = play(tmp_path, dev, rc_args())
        assert result.get("failed") is True
        assert "does not advertise the ietf-restconf-server module" in result["msg"], result["msg"]
        assert "over RESTCONF" in result["msg"]
        assert restconf_entries(dev) == []
    finally:
        dev.stop()


class RestconfFollower(threading.Thread):
    """Plays the device's RESTCONF call-home client: once a ``restconf-client`` endpoint appears in
    the simulator's running configuration, Debian's nginx (a RESTCONF server nobody here wrote)
    dials the port it names over a reversed TCP connection. A dead port is dialed in vain, as a
    real device would."""

    def __init__(self, device: DirectDevice, pki: Any) -> None:
        super().__init__(daemon=True)
        self.device, self.pki = device, pki
        self.stopping = threading.Event()
        self.peer: Any = None
        self.dialed: Optional[int] = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        from nginx_peer import NginxPeer

        try:
            while not self.stopping.is_set() and self.peer is None:
                for entry in restconf_entries(self.device):
                    port = entry.findtext(".//{%s}remote-port" % RCS)
                    if port and port.isdigit():
                        self.dialed = int(port)
                        peer = NginxPeer(("127.0.0.1", int(port)), server_cert=self.pki.device_cert.cert_path,
                                         server_key=self.pki.device_cert.key_path,
                                         client_ca=self.pki.listener_ca.cert_path, redial=True, retry=0.3)
                        peer.__enter__()
                        self.peer = peer
                        peer.start_dialing()
                        break
                self.stopping.wait(0.2)
        except BaseException as exc:  # reported by the test (a thread cannot fail it)
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(15)
        if self.peer is not None:
            self.peer.__exit__()


@pytest.mark.parametrize("port_kind", ["restconf_binds", "callhome_binds"])
def test_restconf_safe_rollout_confirms_after_nginx_called_the_listener(
        tmp_path: Path, device: DirectDevice, listener_factory: Any, port_kind: str) -> None:
    """``callhome_port`` set to the listener's dedicated RESTCONF port, or to its single call-home
    port (``callhome_binds``, where the listener tells RESTCONF from the ALPN of the handshake)."""
    import yaml
    from harness import enroll
    from nginx_peer import PeerUnavailable
    from peer_availability import unavailable
    from pki import make_pki
    from test_listener_restconf import DEVICE as NGINX_DEVICE, restconf_args, restconf_port

    pki = make_pki(tmp_path / "pki", device_name=NGINX_DEVICE)
    lst = listener_factory(*restconf_args(pki))
    enroll(lst.home, NGINX_DEVICE, tls_fp=pki.device_cert.fingerprint)
    if port_kind == "callhome_binds":
        (lst.home / "listener.yml").write_text(yaml.safe_dump({"callhome_binds": ["127.0.0.1:0"]}))
    lst.start()
    if port_kind == "callhome_binds":
        port = int(lst.call("status")["callhome"][0].rsplit(":", 1)[1])
    else:
        port = restconf_port(lst)
    follower = RestconfFollower(device, pki)
    follower.start()
    try:
        result = play(tmp_path, device, rc_args(
            callhome_port=port, confirm_callhome=True, callhome_device=NGINX_DEVICE, callhome_timeout=40,
            confirm_timeout=90, listener="unix:%s" % lst.status["control_socket"]))
        if isinstance(follower.error, PeerUnavailable):
            unavailable("nginx peer", follower.error)  # skip, or fail where peers are required
        assert follower.error is None, follower.error
        assert not result.get("failed"), "%s\nlistener: %s" % (result.get("msg"), lst.log()[-3000:])
        assert result["changed"] is True and follower.dialed == port
        ch = result["callhome"]
        assert ch["mode"] == "confirmed-commit" and ch["confirmed"] is True and ch["status"] == "connected", ch
        rec = lst.call("device", device=NGINX_DEVICE)
        assert rec["transport"] == "restconf" and rec["fingerprint"] == pki.device_cert.fingerprint
    finally:
        follower.stop()
    assert [e.findtext(".//{%s}remote-port" % RCS) for e in restconf_entries(device)] == [str(port)]


def test_restconf_rollout_to_a_dead_port_is_rolled_back(tmp_path: Path, device: DirectDevice,
                                                        listener_factory: Any) -> None:
    from harness import free_port

    lst = listener_factory().start()
    dead = free_port()  # nobody listens there: the device's RESTCONF call home goes nowhere
    result = play(tmp_path, device, rc_args(
        callhome_port=dead, confirm_callhome=True, callhome_device="nowhere", callhome_timeout=6,
        confirm_timeout=30, listener="unix:%s" % lst.status["control_socket"]))
    assert result.get("failed") is True and "did not call home" in result["msg"], result.get("msg")
    assert result["callhome"]["rollback"] == "cancelled" and result["changed"] is False
    assert restconf_entries(device) == [], "the confirmed commit was cancelled: nothing stays"

# SPDX-License-Identifier: GPL-3.0-or-later
"""RESTCONF call home in netconf.callhome.config: the model's rules (transports per protocol, the
single call-home port, HTTP users), the ietf-restconf-server XML, revision detection and its
refusals, and the push (idempotence, check mode, diff, removal) against a fake device.
The XML is also validated against the YANG modules in test_callhome_config_yang.py."""

from __future__ import annotations

import typing as t

import pytest
from lxml import etree

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config import ietf, restconf
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.model import DEFAULT_PORTS, from_params
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.push import ConfigPusher
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.revision import (
    CAP_CANDIDATE,
    CAP_CONFIRMED_11,
    CAP_YANGLIB_11,
    PROFILES,
    RCS_NS,
    RESTCONF_PROFILES,
    UnsupportedRevisionError,
    restconf_profile_for,
    revision_from_capabilities,
    revision_from_yang_library,
    yang_library_filter,
)
from netconf_callhome.errors import ConfigError

NS = {"r": RCS_NS}
FP = "SHA256:" + ":".join(["CD"] * 32)
SHA512 = "$6$saltsalt$" + "b" * 86
RCS_CAP = "urn:ietf:params:xml:ns:yang:ietf-restconf-server?module=ietf-restconf-server&revision=2024-03-16"
NCS_CAP = "urn:ietf:params:xml:ns:yang:ietf-netconf-server?module=ietf-netconf-server&revision=2023-12-28"
CAPS = [CAP_CANDIDATE, CAP_CONFIRMED_11, NCS_CAP, RCS_CAP]


def params(**over: t.Any) -> t.Dict[str, t.Any]:
    base: t.Dict[str, t.Any] = {
        "name": "nms",
        "protocol": "restconf",
        "endpoints": [{"name": "a", "address": "192.0.2.10"}],
        "tls": {"server_key_reference": "k", "server_certificate_reference": "c", "ca_certs_reference": "ca",
                "cert_to_name": [{"fingerprint": FP, "map_type": "specified", "name": "admin"}]},
        "restconf": {"users": [{"user_id": "nms", "username": "nms", "hashed_password": SHA512}]},
        "max_attempts": 3,
    }
    base.update(over)
    return base


def texts(el: etree._Element, path: str) -> t.List[str]:
    return [x.text for x in el.xpath(path, namespaces=NS)]


# -- model -----------------------------------------------------------------------------------


def test_restconf_endpoints_default_to_https_and_4336() -> None:
    client = from_params(params())
    assert client.protocol == "restconf" and [(e.transport, e.port) for e in client.endpoints] == [("https", 4336)]
    assert DEFAULT_PORTS == {"ssh": 4334, "tls": 4335, "https": 4336}


def test_single_callhome_port_for_every_transport_endpoint_port_wins() -> None:
    endpoints = [{"name": "a", "address": "x"}, {"name": "b", "address": "y", "port": 4336}]
    client = from_params(params(callhome_port=4330, endpoints=endpoints))
    assert [e.port for e in client.endpoints] == [4330, 4336]
    nc = from_params({"name": "n", "callhome_port": 4330,
                      "endpoints": [{"name": "s", "address": "x", "transport": "ssh"},
                                    {"name": "t", "address": "x", "transport": "tls"}],
                      "ssh": {"host_key_reference": "k", "username": "u"},
                      "tls": params()["tls"]})
    assert [(e.transport, e.port) for e in nc.endpoints] == [("ssh", 4330), ("tls", 4330)]
    with pytest.raises(ConfigError, match="callhome_port must be between 1 and 65535"):
        from_params(params(callhome_port=70000))


@pytest.mark.parametrize("protocol, transport, message", [
    ("restconf", "ssh", "must be https for protocol restconf, got 'ssh' \\(RESTCONF call home runs over https only\\)"),
    ("restconf", "tls", "must be https for protocol restconf"),
    ("netconf", "https", "must be ssh or tls for protocol netconf, got 'https' \\(https is RESTCONF call home: set protocol: restconf\\)"),
])
def test_transport_must_belong_to_the_protocol(protocol: str, transport: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_params(params(protocol=protocol, restconf=None, endpoints=[{"address": "x", "transport": transport}]))


def test_restconf_needs_tls_and_a_mapping_fingerprint_optional_there_only() -> None:
    with pytest.raises(ConfigError, match="server_key_reference and tls.server_certificate_reference are required"):
        from_params(params(tls=None))
    with pytest.raises(ConfigError, match="cert_to_name needs at least one entry"):
        from_params(params(tls=dict(params()["tls"], cert_to_name=[])))
    client = from_params(params(tls=dict(params()["tls"], cert_to_name=[{"map_type": "san-any"}])))
    assert client.tls is not None and client.tls.cert_to_name[0].fingerprint is None
    with pytest.raises(ConfigError, match="fingerprint is required for NETCONF"):
        from_params({"name": "n", "endpoints": [{"address": "x", "transport": "tls"}],
                     "tls": dict(params()["tls"], cert_to_name=[{"map_type": "san-any"}])})


def test_http_users_need_a_crypt_hash_and_only_apply_to_restconf() -> None:
    with pytest.raises(ConfigError, match="hashed_password is not an iana-crypt-hash value"):
        from_params(params(restconf={"users": [{"user_id": "u", "hashed_password": "secret"}]}))
    with pytest.raises(ConfigError, match="user_id is required"):
        from_params(params(restconf={"users": [{"username": "u"}]}))
    with pytest.raises(ConfigError, match="only applies to protocol: restconf"):
        from_params({"name": "n", "endpoints": [{"address": "x"}], "ssh": {"host_key_reference": "k", "username": "u"},
                     "restconf": {"server_name": "x"}})
    user = from_params(params()).restconf.users[0]  # type: ignore[union-attr]
    assert SHA512 not in repr(user), "the hash is kept out of reprs (tracebacks, logs)"


# -- XML ---------------------------------------------------------------------------------------


def test_restconf_client_entry_has_the_four_layers_in_yang_order() -> None:
    el = restconf.build_client(from_params(params(restconf={"server_name": "dev", "users": params()["restconf"]["users"]})),
                               RESTCONF_PROFILES["2024-03-16"])
    assert etree.QName(el).namespace == RCS_NS and etree.QName(el).localname == "restconf-client"
    https = el.xpath("r:endpoints/r:endpoint/r:https", namespaces=NS)[0]
    assert [etree.QName(c).localname for c in https] == [
        "tcp-client-parameters", "tls-server-parameters", "http-server-parameters", "restconf-server-parameters"]
    assert texts(https, "r:tcp-client-parameters/r:remote-port") == ["4336"]
    assert texts(https, "r:tls-server-parameters/r:server-identity/r:certificate/r:central-keystore-reference/"
                        "r:asymmetric-key") == ["k"]
    assert texts(https, "r:http-server-parameters/r:server-name") == ["dev"]
    assert texts(https, "r:http-server-parameters/r:client-authentication/r:users/r:user/r:basic/r:password/"
                        "r:hashed-password") == [SHA512]
    ctn = https.xpath("r:restconf-server-parameters/r:client-identity-mappings/r:cert-to-name", namespaces=NS)[0]
    assert texts(ctn, "r:fingerprint") == ["04:" + ":".join(["CD"] * 32)]
    assert ctn.find("{%s}map-type" % RCS_NS).text == "x509c2n:specified"
    assert texts(el, "r:connection-type/r:persistent") == [None]
    assert texts(el, "r:reconnect-strategy/r:max-attempts") == ["3"]


def test_http_server_parameters_left_out_when_there_is_nothing_to_say() -> None:
    el = restconf.build_client(from_params(params(restconf=None)), RESTCONF_PROFILES["2023-04-17"])
    assert el.xpath("//r:http-server-parameters", namespaces=NS) == []


def test_netconf_builder_refuses_a_restconf_client_and_back() -> None:
    with pytest.raises(ConfigError, match="not a NETCONF one"):
        ietf.build_client(from_params(params()), PROFILES["2023-12-28"])
    nc = from_params({"name": "n", "endpoints": [{"address": "x"}], "ssh": {"host_key_reference": "k", "username": "u"}})
    with pytest.raises(ConfigError, match="not a RESTCONF one"):
        restconf.build_client(nc, RESTCONF_PROFILES["2024-03-16"])


def test_wrapping_filters_and_lookup_use_the_restconf_server_tree() -> None:
    config = ietf.wrap_config(restconf.build_client(from_params(params()), RESTCONF_PROFILES["2024-03-16"]),
                              name="nms", operation="replace", schema=ietf.RESTCONF)
    entry = config.find("{%s}restconf-server/{%s}call-home/{%s}restconf-client" % (RCS_NS, RCS_NS, RCS_NS))
    assert entry is not None and entry.get("{urn:ietf:params:xml:ns:netconf:base:1.0}operation") == "replace"
    flt = ietf.running_filter("nms", ietf.RESTCONF)
    assert flt.xpath("r:restconf-server/r:call-home/r:restconf-client/r:name/text()", namespaces=NS) == ["nms"]
    reply = etree.tostring(config).decode()
    assert ietf.find_client(reply, "nms", ietf.RESTCONF) is not None
    assert ietf.find_client(reply, "nms") is None, "a restconf-client is not a netconf-client"
    assert ietf.client_names(reply, ietf.RESTCONF) == ["nms"]


# -- revision detection ------------------------------------------------------------------------


def test_restconf_revision_from_capabilities_and_yang_library() -> None:
    assert revision_from_capabilities(CAPS, "ietf-restconf-server") == "2024-03-16"
    assert revision_from_capabilities(CAPS) == "2023-12-28", "the netconf-server look-up is unchanged"
    assert revision_from_capabilities([NCS_CAP], "ietf-restconf-server") is None
    assert "<name>ietf-restconf-server</name>" in yang_library_filter("ietf-restconf-server")
    reply = ('<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><yang-library xmlns="urn:ietf:params:xml:ns:yang:'
             'ietf-yang-library"><module-set><module><name>ietf-restconf-server</name><revision>2023-04-17</revision>'
             '</module></module-set></yang-library></data>')
    assert revision_from_yang_library(reply, "ietf-restconf-server") == "2023-04-17"


def test_unknown_or_missing_restconf_module_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedRevisionError, match="does not advertise the ietf-restconf-server module"):
        restconf_profile_for(None)
    with pytest.raises(UnsupportedRevisionError, match="revision '2099-01-01'.*supported: 2023-04-17, 2024-03-16"):
        restconf_profile_for("2099-01-01")


# -- push ----------------------------------------------------------------------------------------


class FakeDevice:
    """Running holds restconf-client entries (by name) and answers get-config with them."""

    def __init__(self, caps: t.List[str], yang_library: str = "<data/>") -> None:
        self.caps = caps
        self.running: t.Dict[str, etree._Element] = {}
        self.calls: t.List[str] = []
        self.yang_library = yang_library

    def capabilities(self) -> t.List[str]:
        return self.caps

    def get(self, filter_xml: str) -> str:
        self.calls.append("get")
        return self.yang_library

    def get_config(self, source: str, filter_xml: str) -> str:
        self.calls.append("get-config")
        inner = "".join(etree.tostring(e).decode() for e in self.running.values())
        return ('<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><restconf-server xmlns="%s"><call-home>%s'
                '</call-home></restconf-server></data>' % (RCS_NS, inner))

    def edit_config(self, config_xml: str, target: str) -> None:
        self.calls.append("edit-config:" + target)
        config = etree.fromstring(config_xml.encode())
        call_home = config.find("{%s}restconf-server/{%s}call-home" % (RCS_NS, RCS_NS))
        assert call_home is not None, "edits go to /restconf-server/call-home"
        if call_home.get("{urn:ietf:params:xml:ns:netconf:base:1.0}operation") == "remove":
            self.running.clear()
            return
        for entry in call_home:
            name = entry.findtext("{%s}name" % RCS_NS)
            if entry.get("{urn:ietf:params:xml:ns:netconf:base:1.0}operation") == "remove":
                self.running.pop(name, None)
            else:  # merge and replace alike: the tests only compare whole entries
                entry.attrib.pop("{urn:ietf:params:xml:ns:netconf:base:1.0}operation", None)
                self.running[name] = entry

    def lock(self, target: str) -> None:
        self.calls.append("lock:" + target)

    def unlock(self, target: str) -> None:
        self.calls.append("unlock:" + target)

    def commit(self, *, confirmed: bool = False, timeout: t.Optional[int] = None, persist: t.Optional[str] = None) -> None:
        self.calls.append("commit")

    def rpc(self, xml: str) -> str:
        return "<ok/>"

    def discard_changes(self) -> None:
        self.calls.append("discard")

    def keepalive(self) -> None:
        pass


def push(dev: FakeDevice, state: str = "present", check_mode: bool = False, **over: t.Any) -> t.Dict[str, t.Any]:
    client = from_params(params(**over)) if state != "absent" else None
    return ConfigPusher(dev, client, name="nms", state=state, protocol="restconf", check_mode=check_mode).run()


def test_push_check_mode_apply_idempotence_diff_and_removal() -> None:
    dev = FakeDevice(CAPS)
    checked = push(dev, check_mode=True)
    assert checked["changed"] is True and dev.running == {} and "edit-config:candidate" not in dev.calls
    assert checked["module"] == "ietf-restconf-server" and checked["revision"] == "2024-03-16"
    assert checked["revision_source"] == "hello capabilities" and checked["protocol"] == "restconf"
    assert "<remote-port>4336</remote-port>" in checked["diff"]["after"] and checked["diff"]["before"] == ""

    applied = push(dev)
    assert applied["changed"] is True and list(dev.running) == ["nms"]
    assert dev.calls[-4:] == ["lock:candidate", "edit-config:candidate", "commit", "unlock:candidate"]
    dev.calls.clear()
    assert push(dev)["changed"] is False and dev.calls == ["get-config"], "second run: read only"

    moved = push(dev, state="replaced", callhome_port=4330, check_mode=True)
    assert moved["changed"] is True and "<remote-port>4336</remote-port>" in moved["diff"]["before"]
    assert "<remote-port>4330</remote-port>" in moved["diff"]["after"]
    push(dev, state="replaced", callhome_port=4330)
    assert texts(dev.running["nms"], "//r:remote-port") == ["4330"]

    removed = push(dev, state="absent")
    assert removed["changed"] is True and dev.running == {}
    assert push(dev, state="absent")["changed"] is False


def test_push_refuses_a_device_without_ietf_restconf_server_before_touching_it() -> None:
    dev = FakeDevice([CAP_CANDIDATE, NCS_CAP])
    with pytest.raises(UnsupportedRevisionError, match="cannot be configured to call home over RESTCONF"):
        push(dev)
    assert dev.calls == [], "nothing is read or edited"
    # with yang-library the device is asked, and still refused when the module is not there
    dev = FakeDevice([CAP_CANDIDATE, CAP_YANGLIB_11])
    with pytest.raises(UnsupportedRevisionError, match="does not advertise the ietf-restconf-server module"):
        push(dev)
    assert dev.calls == ["get"]


def test_push_detects_the_revision_in_yang_library() -> None:
    lib = ('<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><modules-state xmlns="urn:ietf:params:xml:ns:yang:'
           'ietf-yang-library"><module><name>ietf-restconf-server</name><revision>2023-04-17</revision></module>'
           '</modules-state></data>')
    result = push(FakeDevice([CAP_CANDIDATE, CAP_YANGLIB_11], yang_library=lib))
    assert result["revision"] == "2023-04-17" and result["revision_source"] == "yang-library"


def test_junos_has_no_restconf_call_home() -> None:
    with pytest.raises(ConfigError, match="dialect junos has no RESTCONF call home"):
        ConfigPusher(FakeDevice(CAPS), from_params(params()), name="nms", protocol="restconf", dialect="junos").run()
    junos_caps = CAPS + ["http://xml.juniper.net/netconf/junos/1.0"]
    assert push(FakeDevice(junos_caps), check_mode=True)["dialect"] == "ietf", "auto never picks junos for restconf"


def test_settings_of_one_protocol_are_not_pushed_as_the_other() -> None:
    with pytest.raises(ConfigError, match="settings are for restconf, not netconf"):
        ConfigPusher(FakeDevice(CAPS), from_params(params()), name="nms", protocol="netconf")

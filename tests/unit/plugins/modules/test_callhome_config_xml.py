# SPDX-License-Identifier: GPL-3.0-or-later
"""XML per ietf-netconf-server revision and for Junos outbound-ssh, revision detection, diff
logic and the push sequence (confirmed commit, cancel, refusal) against a fake device."""

from __future__ import annotations

import typing as t

import pytest
from lxml import etree

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config import diff, ietf, junos
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.model import (
    from_params,
    tls_fingerprint_for_yang,
)
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.push import (
    ConfigPusher,
    DeviceRpcError,
    PushError,
    parse_rpc_error,
)
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.revision import (
    CAP_CANDIDATE,
    CAP_CONFIRMED_11,
    CAP_WRITABLE_RUNNING,
    NCS_NS,
    PROFILES,
    UnsupportedRevisionError,
    profile_for,
    revision_from_capabilities,
    revision_from_yang_library,
    yang_library_filter,
)
from netconf_callhome.errors import ConfigError, WaitTimeoutError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl nms"
NS = {"n": NCS_NS}
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
FP = "SHA256:" + ":".join(["AB"] * 32)


def params(**over: t.Any) -> t.Dict[str, t.Any]:
    base: t.Dict[str, t.Any] = {
        "name": "nms",
        "endpoints": [{"name": "a", "address": "192.0.2.10", "port": 4334, "transport": "ssh",
                       "tcp_keepalives": {"idle_time": 15, "max_probes": 3, "probe_interval": 5}}],
        "ssh": {"host_key_reference": "genkey", "username": "netconf", "client_public_keys": [KEY],
                "keepalive_max_wait": 30, "keepalive_max_attempts": 3},
        "start_with": "first-listed",
        "max_attempts": 3,
    }
    base.update(over)
    return base


def texts(el: etree._Element, path: str) -> t.List[str]:
    return [x.text for x in el.xpath(path, namespaces=NS)]


def test_current_revision_uses_central_keystore_reference_and_inline_keys() -> None:
    el = ietf.build_client(from_params(params(max_wait=5)), PROFILES["2025-04-24"])
    ssh = "n:endpoints/n:endpoint/n:ssh"
    assert texts(el, ssh + "/n:tcp-client-parameters/n:remote-address") == ["192.0.2.10"]
    assert texts(el, ssh + "/n:tcp-client-parameters/n:keepalives/n:probe-interval") == ["5"]
    hk = ssh + "/n:ssh-server-parameters/n:server-identity/n:host-key"
    assert texts(el, hk + "/n:public-key/n:central-keystore-reference") == ["genkey"]
    assert el.xpath(hk + "/n:public-key/n:keystore-reference", namespaces=NS) == []
    pk = ssh + "/n:ssh-server-parameters/n:client-authentication/n:users/n:user/n:public-keys/n:inline-definition/n:public-key"
    fmt = el.xpath(pk + "/n:public-key-format", namespaces=NS)[0]
    prefix, _sep, local = fmt.text.partition(":")
    assert local == "ssh-public-key-format" and fmt.nsmap[prefix] == "urn:ietf:params:xml:ns:yang:ietf-crypto-types"
    assert texts(el, pk + "/n:public-key") == [KEY.split()[1]]
    assert texts(el, "n:connection-type/n:persistent") == [None]
    assert texts(el, "n:reconnect-strategy/n:max-wait") == ["5"]
    # YANG order inside the endpoint: name, then the transport container
    assert [etree.QName(c).localname for c in el.xpath("n:endpoints/n:endpoint", namespaces=NS)[0]] == ["name", "ssh"]


def test_2019_draft_uses_keystore_reference_and_authorized_key() -> None:
    el = ietf.build_client(from_params(params()), PROFILES["2019-07-02"])
    base = "n:endpoints/n:endpoint/n:ssh/n:ssh-server-parameters"
    assert texts(el, base + "/n:server-identity/n:host-key/n:public-key/n:keystore-reference") == ["genkey"]
    assert el.xpath("//n:central-keystore-reference", namespaces=NS) == []
    assert texts(el, base + "/n:client-authentication/n:users/n:user/n:authorized-key/n:algorithm") == ["ssh-ed25519"]
    assert el.xpath("//n:inline-definition", namespaces=NS) == []


def test_2019_draft_refuses_nodes_it_does_not_have() -> None:
    with pytest.raises(ConfigError, match="max-wait does not exist"):
        ietf.build_client(from_params(params(max_wait=5)), PROFILES["2019-07-02"])
    tls = params(endpoints=[{"address": "192.0.2.10", "transport": "tls"}], tls=_tls())
    with pytest.raises(ConfigError, match="TLS call-home endpoints"):
        ietf.build_client(from_params(tls), PROFILES["2019-07-02"])


def _tls() -> t.Dict[str, t.Any]:
    return {"server_key_reference": "tlskey", "server_certificate_reference": "tlscert",
            "ca_certs_reference": "nms-ca", "cert_to_name": [{"fingerprint": FP, "map_type": "specified", "name": "nms"}]}


def test_tls_endpoint_and_cert_to_name() -> None:
    p = params(endpoints=[{"address": "192.0.2.10", "transport": "tls"}], tls=_tls(), ssh=None)
    el = ietf.build_client(from_params(p), PROFILES["2023-12-28"])
    tls = "n:endpoints/n:endpoint/n:tls"
    assert texts(el, tls + "/n:tcp-client-parameters/n:remote-port") == ["4335"]  # the IANA default
    ref = tls + "/n:tls-server-parameters/n:server-identity/n:certificate/n:central-keystore-reference"
    assert texts(el, ref + "/n:asymmetric-key") == ["tlskey"]
    assert texts(el, tls + "/n:tls-server-parameters/n:client-authentication/n:ca-certs/n:central-truststore-reference") == ["nms-ca"]
    ctn = tls + "/n:netconf-server-parameters/n:client-identity-mappings/n:cert-to-name"
    assert texts(el, ctn + "/n:fingerprint") == ["04:" + ":".join(["AB"] * 32)]
    assert texts(el, ctn + "/n:map-type")[0].endswith(":specified")


def test_tls_fingerprint_forms() -> None:
    assert tls_fingerprint_for_yang("ab" * 32) == "04:" + ":".join(["AB"] * 32)
    with pytest.raises(ConfigError):
        tls_fingerprint_for_yang("04:AB")


def test_periodic_and_validation() -> None:
    el = ietf.build_client(from_params(params(connection_type="periodic", period=60, anchor_time="2025-01-01T00:15Z",
                                              idle_timeout=180)), PROFILES["2025-04-24"])
    # seconds added: the YANG pattern of anchor-time requires them (":00")
    assert texts(el, "n:connection-type/n:periodic/n:anchor-time") == ["2025-01-01T00:15:00Z"]
    with pytest.raises(ConfigError, match="only apply to connection_type: periodic"):
        from_params(params(period=5))
    with pytest.raises(ConfigError, match="anchor_time"):
        from_params(params(connection_type="periodic", anchor_time="tomorrow"))
    with pytest.raises(ConfigError, match="host_key_reference"):
        from_params(params(ssh={"username": "x"}))


def test_wrap_config_operations() -> None:
    client = ietf.build_client(from_params(params()), PROFILES["2025-04-24"])
    op = "{urn:ietf:params:xml:ns:netconf:base:1.0}operation"
    merged = ietf.wrap_config(client, name="nms")
    entry = merged.xpath("//n:netconf-client", namespaces=NS)[0]
    assert op not in entry.attrib
    assert ietf.wrap_config(client, name="nms", operation="replace").xpath("//n:netconf-client", namespaces=NS)[0].get(op) == "replace"
    removed = ietf.wrap_config(None, name="nms", operation="remove").xpath("//n:netconf-client", namespaces=NS)[0]
    assert removed.get(op) == "remove" and [etree.QName(c).localname for c in removed] == ["name"]


def test_wrap_config_remove_of_the_sole_entry_removes_call_home() -> None:
    """call-home is a presence container with min-elements 1 on netconf-client: the last entry
    cannot be removed alone (libnetconf2 devices refuse it), so the container goes instead."""
    op = "{%s}operation" % NC
    cfg = ietf.wrap_config(None, name="nms", operation="remove", sole_entry=True)
    call_home = cfg.xpath("/nc:config/n:netconf-server/n:call-home", namespaces=dict(NS, nc=NC))
    assert len(call_home) == 1 and call_home[0].get(op) == "remove" and len(call_home[0]) == 0
    # sole_entry only matters for remove: a merge or replace still carries the entry
    client = ietf.build_client(from_params(params()), PROFILES["2025-04-24"])
    merged = ietf.wrap_config(client, name="nms", operation="merge", sole_entry=True)
    assert merged.xpath("//n:call-home", namespaces=NS)[0].get(op) is None
    assert merged.xpath("//n:netconf-client/n:name", namespaces=NS)[0].text == "nms"


def test_filters_are_in_the_netconf_namespace() -> None:
    """ncclient sends a string filter as it is; libnetconf2 refuses an unqualified <filter>
    inside <get>/<get-config> with "Missing XML namespace" (the reported bug)."""
    from ncclient.operations.util import build_filter

    for flt in (ietf.running_filter("nms"), ietf.client_names_filter(),
                etree.fromstring(yang_library_filter().encode())):
        assert flt.tag == "{%s}filter" % NC and flt.get("type") == "subtree"
        assert all(etree.QName(c).namespace for c in flt.iter() if isinstance(c.tag, str)), etree.tostring(flt)
        sent = build_filter(etree.tostring(flt).decode())  # what the netconf connection puts in the RPC
        assert sent.tag == "{%s}filter" % NC
    yl = etree.fromstring(yang_library_filter("ietf-netconf").encode())
    assert [n.text for n in yl.iter("{urn:ietf:params:xml:ns:yang:ietf-yang-library}name")] == ["ietf-netconf"] * 2


def test_client_names() -> None:
    reply = ('<data xmlns="%s"><netconf-server xmlns="%s"><call-home><netconf-client><name>a</name></netconf-client>'
             "<netconf-client><name>b</name><endpoints/></netconf-client></call-home></netconf-server></data>" % (NC, NCS_NS))
    assert ietf.client_names(reply) == ["a", "b"]
    assert ietf.client_names("<data xmlns='%s'/>" % NC) == [] and ietf.client_names(None) == []


def test_junos_outbound_ssh() -> None:
    p = params(junos={"device_id": "r1", "secret": "s3", "keep_alive_retry": 3, "keep_alive_timeout": 15,
                      "reconnect_strategy": "sticky"})
    el = junos.build_client(from_params(p))
    assert el.findtext("name") == "nms" and el.findtext("device-id") == "r1"
    assert el.findtext("keep-alive/timeout") == "15" and el.findtext("services") == "netconf"
    assert [(a.findtext("name"), a.findtext("port")) for a in el.findall("address")] == [("192.0.2.10", "4334")]
    cfg = junos.wrap_config(el, name="nms")
    assert cfg.find("configuration/system/services/outbound-ssh/client") is not None
    with pytest.raises(ConfigError, match="device_id"):
        junos.build_client(from_params(params()))
    # the secret is stored hashed by Junos: not part of the comparison
    running = etree.fromstring(etree.tostring(el))
    running.find("secret").text = "$9$hashed"
    assert diff.decide("present", running, el, junos.VOLATILE)[0] is False
    assert diff.decide("replaced", running, el, junos.VOLATILE)[0] is False
    assert diff.decide("present", running, el)[0] is True


@pytest.mark.parametrize(
    "caps, expected",
    [
        (["urn:ietf:params:xml:ns:yang:ietf-netconf-server?module=ietf-netconf-server&revision=2025-04-24"], "2025-04-24"),
        (["urn:ietf:params:xml:ns:yang:ietf-netconf-server?module=ietf-netconf-server&amp;revision=2019-07-02"], "2019-07-02"),
        (["urn:ietf:params:xml:ns:yang:ietf-netconf-server?module=ietf-netconf-server"], ""),
        (["urn:ietf:params:netconf:base:1.1"], None),
    ],
)
def test_revision_from_capabilities(caps: t.List[str], expected: t.Optional[str]) -> None:
    assert revision_from_capabilities(caps) == expected


def test_revision_from_yang_library_both_flavours() -> None:
    rfc8525 = ('<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><yang-library xmlns="urn:ietf:params:xml:ns:yang:ietf-yang-library">'
               "<module-set><name>c</name><module><name>ietf-netconf-server</name><revision>2023-12-28</revision></module>"
               "</module-set></yang-library></data>")
    rfc7895 = ('<data><modules-state xmlns="urn:ietf:params:xml:ns:yang:ietf-yang-library"><module><name>x</name>'
               "<revision>2000-01-01</revision></module><module><name>ietf-netconf-server</name><revision>2019-07-02</revision>"
               "</module></modules-state></data>")
    assert revision_from_yang_library(rfc8525) == "2023-12-28"
    assert revision_from_yang_library(rfc7895) == "2019-07-02"
    assert revision_from_yang_library("<data/>") is None
    assert revision_from_yang_library(rfc7895, module="x") == "2000-01-01"


def test_unknown_revision_is_refused_naming_what_was_found() -> None:
    with pytest.raises(UnsupportedRevisionError, match="2022-05-24.*supported: 2019-07-02, 2023-12-28, 2025-04-24"):
        profile_for("2022-05-24")
    with pytest.raises(UnsupportedRevisionError, match="does not advertise"):
        profile_for(None)


def test_diff_ignores_prefixes_order_and_identity_prefixes() -> None:
    wanted = ietf.build_client(from_params(params()), PROFILES["2025-04-24"])
    # what a device may send back: other prefixes, identity prefix undeclared, children reordered
    text = etree.tostring(wanted).decode().replace('xmlns="%s"' % NCS_NS, 'xmlns:x="%s"' % NCS_NS)
    text = text.replace("<", "<x:").replace("<x:/", "</x:").replace("x:ct:", "ct:")
    text = text.replace(' xmlns:ct="urn:ietf:params:xml:ns:yang:ietf-crypto-types"', "")
    running = etree.fromstring(text)
    rs = running.find("x:reconnect-strategy", {"x": NCS_NS})
    running.remove(rs)
    running.insert(1, rs)
    assert diff.equal(running, wanted)
    assert diff.decide("present", running, wanted)[0] is False
    assert diff.decide("replaced", running, wanted)[0] is False
    changed = ietf.build_client(from_params(params(max_attempts=5)), PROFILES["2025-04-24"])
    assert diff.decide("present", running, changed)[0] is True


def test_diff_endpoint_order_matters_but_extra_entries_only_for_replaced() -> None:
    two = params(endpoints=[{"name": "a", "address": "192.0.2.10"}, {"name": "b", "address": "192.0.2.11"}])
    swapped = params(endpoints=[{"name": "b", "address": "192.0.2.11"}, {"name": "a", "address": "192.0.2.10"}])
    prof = PROFILES["2025-04-24"]
    a, b = ietf.build_client(from_params(two), prof), ietf.build_client(from_params(swapped), prof)
    assert not diff.equal(a, b)  # endpoint is ordered-by user
    one = ietf.build_client(from_params(params(endpoints=[{"name": "a", "address": "192.0.2.10"}])), prof)
    assert diff.decide("present", a, one)[0] is False  # merge of a subset changes nothing
    assert diff.decide("replaced", a, one)[0] is True
    assert diff.decide("absent", a, None) == (True, None)
    assert diff.decide("absent", None, None) == (False, None)
    merged = diff.merge(one, ietf.build_client(from_params(params(endpoints=[{"name": "c", "address": "192.0.2.12"}])), prof))
    assert [e.findtext("n:name", namespaces=NS) for e in merged.xpath("n:endpoints/n:endpoint", namespaces=NS)] == ["a", "c"]


def test_parse_rpc_error() -> None:
    xml = ('<rpc-error xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><error-type>application</error-type>'
           "<error-tag>invalid-value</error-tag><error-severity>error</error-severity>"
           "<error-path>/ncs:netconf-server/ncs:call-home</error-path><error-message>leafref broken</error-message></rpc-error>")
    assert parse_rpc_error(xml) == ("leafref broken", "/ncs:netconf-server/ncs:call-home", "invalid-value")
    assert parse_rpc_error("plain text failure") == ("plain text failure", "", "")


# -- the push sequence against a fake device ---------------------------------------------------------

CAPS_FULL = [CAP_CANDIDATE, CAP_CONFIRMED_11, CAP_WRITABLE_RUNNING,
             "urn:ietf:params:xml:ns:yang:ietf-netconf-server?module=ietf-netconf-server&revision=2025-04-24"]


class FakeDevice:
    """Records RPCs; running holds one netconf-client entry or nothing."""

    def __init__(self, caps: t.List[str], running: t.Optional[etree._Element] = None, fail_edit: bool = False,
                 others: t.Sequence[str] = ()) -> None:
        self.caps = caps
        self.running = running
        self.calls: t.List[str] = []
        self.fail_edit = fail_edit
        self.others = list(others)  # names of further netconf-client entries in running
        self.edits: t.List[etree._Element] = []

    def capabilities(self) -> t.List[str]:
        return self.caps

    def get(self, filter_xml: str) -> str:
        self.calls.append("get")
        return "<data/>"

    def get_config(self, source: str, filter_xml: str) -> str:
        self.calls.append("get-config")
        inner = etree.tostring(self.running).decode() if self.running is not None else ""
        inner += "".join("<netconf-client><name>%s</name></netconf-client>" % n for n in self.others)
        return ('<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><netconf-server xmlns="%s"><call-home>%s'
                '</call-home></netconf-server></data>' % (NCS_NS, inner))

    def edit_config(self, config_xml: str, target: str) -> None:
        self.calls.append("edit-config:" + target)
        self.edits.append(etree.fromstring(config_xml.encode()))
        if self.fail_edit:
            raise DeviceRpcError("leafref target missing", path="/ncs:netconf-server/x", tag="data-missing")

    def lock(self, target: str) -> None:
        self.calls.append("lock:" + target)

    def unlock(self, target: str) -> None:
        self.calls.append("unlock:" + target)

    def commit(self, *, confirmed: bool = False, timeout: t.Optional[int] = None, persist: t.Optional[str] = None) -> None:
        self.calls.append("commit-confirmed" if confirmed else "commit")

    def rpc(self, xml: str) -> str:
        self.calls.append(etree.QName(etree.fromstring(xml)).localname)
        return "<ok/>"

    def discard_changes(self) -> None:
        self.calls.append("discard")

    def keepalive(self) -> None:
        self.calls.append("keepalive")


class FakeWaiter:
    def __init__(self, comes_after: t.Optional[int]) -> None:
        self.comes_after = comes_after
        self.waits = 0

    def wait(self, device: str, seconds: float) -> t.Dict[str, t.Any]:
        self.waits += 1
        if self.comes_after is None or self.waits <= self.comes_after:
            raise WaitTimeoutError("device %r has not called home" % device)
        return {"status": "connected", "peer": "127.0.0.5:1", "connect_count": 1}

    def record(self, device: str) -> t.Optional[t.Dict[str, t.Any]]:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 5.0  # every look at the clock is one wait slice
        return self.now


def pusher(dev: FakeDevice, waiter: t.Optional[FakeWaiter] = None, **kw: t.Any) -> ConfigPusher:
    return ConfigPusher(dev, from_params(params()), name="nms", waiter=waiter, clock=Clock(), **kw)


def test_push_confirmed_commit_then_confirm() -> None:
    dev = FakeDevice(CAPS_FULL)
    result = pusher(dev, FakeWaiter(comes_after=1), confirm_callhome=True, callhome_device="r1",
                    callhome_timeout=60, confirm_timeout=120).run()
    assert result["changed"] and result["callhome"]["confirmed"] is True
    assert dev.calls == ["get-config", "lock:candidate", "edit-config:candidate", "commit-confirmed", "keepalive",
                         "commit", "unlock:candidate"]


def test_push_cancels_when_the_device_never_calls() -> None:
    dev = FakeDevice(CAPS_FULL)
    with pytest.raises(PushError, match="did not call home.*cancelled") as info:
        pusher(dev, FakeWaiter(comes_after=None), confirm_callhome=True, callhome_device="r1",
               callhome_timeout=20, confirm_timeout=60).run()
    assert info.value.result["callhome"]["rollback"] == "cancelled"
    assert info.value.result["changed"] is False
    assert "cancel-commit" in dev.calls and dev.calls[-1] == "unlock:candidate"
    assert "commit" not in dev.calls  # never confirmed


def test_push_refuses_without_confirmed_commit_unless_allowed() -> None:
    caps = [CAP_WRITABLE_RUNNING, CAPS_FULL[-1]]
    with pytest.raises(PushError, match="no :candidate datastore.*allow_unconfirmed"):
        pusher(FakeDevice(caps), FakeWaiter(0), confirm_callhome=True, callhome_device="r1").run()
    dev = FakeDevice(caps)
    p = pusher(dev, FakeWaiter(None), confirm_callhome=True, callhome_device="r1", allow_unconfirmed=True,
               callhome_timeout=10, confirm_timeout=30)
    with pytest.raises(PushError, match="put back by this task"):
        p.run()
    assert dev.calls.count("edit-config:running") == 2  # the change, then the restore
    assert p.warnings


def test_push_check_mode_and_idempotence_send_no_edit() -> None:
    dev = FakeDevice(CAPS_FULL)
    result = pusher(dev, check_mode=True).run()
    assert result["changed"] and dev.calls == ["get-config"]
    same = ietf.build_client(from_params(params()), PROFILES["2025-04-24"])
    dev = FakeDevice(CAPS_FULL, running=same)
    assert pusher(dev).run()["changed"] is False and dev.calls == ["get-config"]


def test_push_rpc_error_discards_and_reports_path() -> None:
    dev = FakeDevice(CAPS_FULL, fail_edit=True)
    with pytest.raises(PushError, match=r"edit-config failed at /ncs:netconf-server/x \(data-missing\): leafref") as info:
        pusher(dev).run()
    assert info.value.result["rpc_error"]["path"] == "/ncs:netconf-server/x"
    assert dev.calls[-2:] == ["discard", "unlock:candidate"]


def test_confirm_timeout_must_exceed_callhome_timeout() -> None:
    with pytest.raises(ConfigError, match="confirm_timeout"):
        pusher(FakeDevice(CAPS_FULL), FakeWaiter(0), confirm_callhome=True, callhome_device="r1",
               callhome_timeout=60, confirm_timeout=65)


def test_present_without_client_settings_is_a_config_error() -> None:
    dev = FakeDevice(CAPS_FULL)
    with pytest.raises(ConfigError, match="state=present needs the call-home client settings"):
        ConfigPusher(dev, None, name="nms", state="present").run()
    assert dev.calls == [], "nothing is read or sent before the settings are known"
    with pytest.raises(ConfigError, match="state=replaced needs the wanted call-home entry"):
        diff.decide("replaced", None, None)
    assert diff.decide("absent", None, None) == (False, None)


def test_missing_lxml_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config import lxml_support

    monkeypatch.setattr(lxml_support, "HAS_LXML", False)
    monkeypatch.setattr(lxml_support, "LXML_IMPORT_ERROR", "ModuleNotFoundError: No module named 'lxml'")
    with pytest.raises(ConfigError, match="lxml is required") as info:
        pusher(FakeDevice(CAPS_FULL))
    assert "No module named 'lxml'" in info.value.details["exception"]
    with pytest.raises(ConfigError, match="lxml is required"):
        ietf.build_client(from_params(params()), PROFILES["2025-04-24"])


@pytest.mark.parametrize("others, removes", [((), "call-home"), (("backup",), "netconf-client")])
def test_push_absent_removes_call_home_with_the_last_entry(others: t.Tuple[str, ...], removes: str) -> None:
    existing = ietf.build_client(from_params(params()), PROFILES["2025-04-24"])
    dev = FakeDevice(CAPS_FULL, running=existing, others=others)
    result = ConfigPusher(dev, None, name="nms", state="absent", clock=Clock()).run()
    assert result["changed"] is True and result["after"] == ""
    assert dev.calls == ["get-config", "get-config", "lock:candidate", "edit-config:candidate", "commit",
                         "unlock:candidate"]
    marked = [el for el in dev.edits[0].iter() if el.get("{%s}operation" % NC)]
    assert [(etree.QName(el).localname, el.get("{%s}operation" % NC)) for el in marked] == [(removes, "remove")]
    if removes == "netconf-client":
        assert marked[0].findtext("{%s}name" % NCS_NS) == "nms"


def test_push_unconfirmed_restore_of_a_new_sole_entry_removes_call_home() -> None:
    dev = FakeDevice([CAP_WRITABLE_RUNNING, CAPS_FULL[-1]])
    p = pusher(dev, FakeWaiter(None), confirm_callhome=True, callhome_device="r1", allow_unconfirmed=True,
               callhome_timeout=10, confirm_timeout=30)
    with pytest.raises(PushError, match="put back by this task"):
        p.run()
    restore = dev.edits[-1]
    assert restore.xpath("//n:call-home", namespaces=NS)[0].get("{%s}operation" % NC) == "remove"
    assert restore.xpath("//n:netconf-client", namespaces=NS) == []


@pytest.mark.parametrize("text, expected", [
    ("b'Missing XML namespace.'", "Missing XML namespace."),
    ('b"it\'s refused"', "it's refused"),
    ("plain words", "plain words"),
    ("b'unterminated", "b'unterminated"),
])
def test_module_unwraps_the_bytes_repr_netcommon_errors_arrive_in(text: str, expected: str) -> None:
    from ansible_collections.netconf.callhome.plugins.modules.config import _unwrap_bytes_repr

    assert _unwrap_bytes_repr(text) == expected
    assert parse_rpc_error(_unwrap_bytes_repr(text))[0] == expected.strip()

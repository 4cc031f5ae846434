# SPDX-License-Identifier: GPL-3.0-or-later
"""The call-home XML the config module builds, validated against the real YANG modules.

String comparisons only show that the builder writes what its author believed; here each entry
is checked node by node against the schema pyang compiles from the modules themselves
(``tests/yang/``, see its README for where each file comes from): every element exists there, in
the namespace of the module that uses the grouping, no ``config false`` node, list keys first,
at most one case per choice and one for each mandatory choice, mandatory leaves and
``min-elements`` present, leaf values valid for their type (ranges, patterns, enumerations,
identityrefs derived from the right base). Not checked: ``must``/``when`` expressions (a node
with a ``when`` is not required to be there; cert-to-name's ``name`` for ``specified`` is one)
and leafref targets (keystore and truststore entries the device holds, outside the entry).
"""

from __future__ import annotations

import sys
import typing as t
from pathlib import Path

import pytest
from lxml import etree

# pyang is in requirements-test.txt: imported plainly, so a missing pyang fails these tests
# instead of skipping them.
from pyang import context as pyang_context
from pyang import error as pyang_error
from pyang import repository as pyang_repository
from pyang import types as pyang_types

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config import ietf, restconf
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.model import from_params
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.revision import (
    PROFILES,
    RESTCONF_PROFILES,
)

HERE = Path(__file__).resolve()
ROOT = next(p for p in HERE.parents if (p / "galaxy.yml").exists())
YANG_DIR = ROOT / "tests" / "yang"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl nms"
FP = "SHA256:" + ":".join(["AB"] * 32)
SHA512 = "$6$saltsalt$" + "a" * 86


def _search_path() -> str:
    """tests/yang first, then the modules pyang installs (ietf-inet-types, ietf-yang-types...)."""
    dirs = [YANG_DIR] + [Path(sys.prefix) / "share" / "yang" / "modules" / sub for sub in ("ietf", "iana")]
    return ":".join(str(d) for d in dirs if d.is_dir())


class Schema:
    """One YANG module compiled by pyang (with its imports from ``tests/yang`` and pyang's own)."""

    def __init__(self, filename: str) -> None:
        repo = pyang_repository.FileRepository(_search_path(), use_env=False, no_path_recurse=True)
        self.ctx = pyang_context.Context(repo)
        path = YANG_DIR / filename
        self.module = self.ctx.add_module(str(path), path.read_text())
        assert self.module is not None, "pyang could not parse %s" % filename
        self.ctx.validate()
        errors = [e for e in self.ctx.errors if pyang_error.is_error(pyang_error.err_level(e[1]))]
        assert not errors, "the vendored module %s does not compile: %s" % (filename, errors[:3])

    def namespace_of(self, stmt: t.Any) -> str:
        return stmt.i_module.search_one("namespace").arg

    def validate(self, el: etree._Element) -> t.List[str]:
        """Problems of the data tree ``el`` (a top-level container of the module); [] when valid."""
        problems: t.List[str] = []
        top = {(self.namespace_of(c), c.arg): c for c in self.module.i_children}
        node = top.get((etree.QName(el).namespace, etree.QName(el).localname))
        if node is None:
            return ["%s is not a top-level node of %s" % (el.tag, self.module.arg)]
        self._node(el, node, "/" + node.arg, problems)
        return problems

    # -- tree walk -----------------------------------------------------------------------------

    @staticmethod
    def _data_children(stmt: t.Any, chain: t.Tuple[t.Any, ...] = ()) -> t.Iterator[t.Tuple[t.Any, t.Tuple[t.Any, ...]]]:
        """Data nodes under ``stmt`` through choices and cases, each with its (choice, case) chain."""
        for child in getattr(stmt, "i_children", []):
            if child.keyword == "choice":
                for case in child.i_children:
                    yield from Schema._data_children(case, chain + ((child, case),))
            else:
                yield child, chain

    def _node(self, el: etree._Element, stmt: t.Any, where: str, problems: t.List[str]) -> None:
        if getattr(stmt, "i_config", True) is False:
            problems.append("%s is config false: it cannot be configured" % where)
        if stmt.keyword in ("leaf", "leaf-list"):
            if len(el):
                problems.append("%s is a leaf but has child elements" % where)
            self._value(el, stmt, where, problems)
            return
        kids = [c for c in el if isinstance(c.tag, str)]
        if (el.text or "").strip():
            problems.append("%s is a %s but has text %r" % (where, stmt.keyword, el.text.strip()))
        schema = {(self.namespace_of(c), c.arg): (c, chain) for c, chain in self._data_children(stmt)}
        chosen: t.Dict[int, t.Any] = {}
        counts: t.Dict[str, int] = {}
        for kid in kids:
            qn = etree.QName(kid)
            found = schema.get((qn.namespace, qn.localname))
            if found is None:
                near = [ns for ns, name in schema if name == qn.localname]
                hint = " (it exists in namespace %s)" % near[0] if near else ""
                problems.append("%s/%s: no such node in %s%s" % (where, qn.localname, stmt.arg, hint))
                continue
            child, chain = found
            for choice, case in chain:
                if chosen.setdefault(id(choice), case) is not case:
                    problems.append("%s: choice %s has nodes of two cases (%s and %s)"
                                    % (where, choice.arg, chosen[id(choice)].arg, case.arg))
            counts[child.arg] = counts.get(child.arg, 0) + 1
            if child.keyword in ("leaf", "container") and counts[child.arg] > 1:
                problems.append("%s/%s appears twice" % (where, child.arg))
            self._node(kid, child, "%s/%s" % (where, child.arg), problems)
        if stmt.keyword == "list":
            keys = (stmt.search_one("key").arg or "").split()
            first = [etree.QName(k).localname for k in kids[: len(keys)]]
            if first != keys:
                problems.append("%s: the list keys %s must come first, in that order (found %s)" % (where, keys, first))
        for child, chain in self._data_children(stmt):
            if not all(chosen.get(id(choice)) is case for choice, case in chain):
                continue  # in a case that is not chosen
            if child.search_one("when") is not None:
                continue  # mandatory only when its XPath condition holds (not evaluated here)
            mandatory = child.search_one("mandatory")
            if child.keyword == "leaf" and mandatory is not None and mandatory.arg == "true" and child.arg not in counts:
                problems.append("%s/%s is mandatory" % (where, child.arg))
            min_el = child.search_one("min-elements")
            if child.keyword == "list" and min_el is not None and counts.get(child.arg, 0) < int(min_el.arg):
                problems.append("%s/%s needs at least %s entries" % (where, child.arg, min_el.arg))
            if child.keyword == "container" and child.search_one("presence") is None and child.arg not in counts:
                # A non-presence container exists implicitly: its mandatory descendants still apply.
                self._node(etree.Element(child.arg), child, "%s/%s" % (where, child.arg), problems)
        for choice_stmt in self._choices(stmt):
            mandatory = choice_stmt.search_one("mandatory")
            if mandatory is not None and mandatory.arg == "true" and id(choice_stmt) not in chosen:
                problems.append("%s: mandatory choice %s has no case" % (where, choice_stmt.arg))

    @staticmethod
    def _choices(stmt: t.Any) -> t.Iterator[t.Any]:
        for child in getattr(stmt, "i_children", []):
            if child.keyword == "choice":
                yield child

    # -- leaf values -----------------------------------------------------------------------------

    def _value(self, el: etree._Element, leaf: t.Any, where: str, problems: t.List[str]) -> None:
        text = (el.text or "").strip()
        typ = leaf.search_one("type")
        if not self._valid(typ, text, el):
            problems.append("%s: %r is not a valid %s" % (where, text, typ.arg))

    def _valid(self, typ: t.Any, text: str, el: etree._Element) -> bool:
        spec = typ.i_type_spec
        if isinstance(spec, pyang_types.UnionTypeSpec):
            return any(self._valid(member, text, el) for member in spec.types)
        if isinstance(spec, pyang_types.IdentityrefTypeSpec):
            return self._identity(spec, text, el)
        if isinstance(spec, pyang_types.PathTypeSpec):
            return self._valid(spec.i_target_node.search_one("type"), text, el) if spec.i_target_node is not None else True
        errors: t.List[t.Any] = []
        value = spec.str_to_val(errors, typ.pos, text, typ.i_module)
        if value is None or errors:
            return False
        return bool(spec.validate(errors, typ.pos, value, typ.i_module, "")) and not errors

    def _identity(self, spec: t.Any, text: str, el: etree._Element) -> bool:
        prefix, _sep, name = text.rpartition(":")
        namespace = el.nsmap.get(prefix or None)
        module = next((m for m in self.ctx.modules.values() if m.search_one("namespace") is not None
                       and m.search_one("namespace").arg == namespace), None)
        ident = module.i_identities.get(name) if module is not None else None
        if ident is None:
            return False
        return any(self._derives(ident, base.i_identity) for base in spec.idbases)

    def _derives(self, ident: t.Any, base: t.Any) -> bool:
        return any(b.i_identity is base or self._derives(b.i_identity, base) for b in ident.search("base"))


@pytest.fixture(scope="module")
def schemas() -> t.Dict[str, Schema]:
    return {
        "ietf-netconf-server@2023-12-28": Schema("ietf-netconf-server@2023-12-28.yang"),
        "ietf-restconf-server@2023-04-17": Schema("ietf-restconf-server@2023-04-17.yang"),
        "ietf-restconf-server@2024-03-16": Schema("ietf-restconf-server@2024-03-16.yang"),
    }


def top_of(config: etree._Element) -> etree._Element:
    """The server container inside an edit-config ``<config>`` (without the nc:operation attributes)."""
    top = etree.fromstring(etree.tostring(config[0]))
    for node in top.iter():
        node.attrib.pop("{urn:ietf:params:xml:ns:netconf:base:1.0}operation", None)
    return top


TLS = {"server_key_reference": "device-key", "server_certificate_reference": "device-cert",
       "ca_certs_reference": "nms-ca",
       "cert_to_name": [{"fingerprint": FP, "map_type": "specified", "name": "admin"},
                        {"map_type": "san-any"}]}

RESTCONF_CASES = {
    "minimal": {"endpoints": [{"address": "192.0.2.10"}], "tls": dict(TLS, cert_to_name=[{"map_type": "san-any"}])},
    "everything": {
        "endpoints": [{"name": "a", "address": "192.0.2.10", "port": 4336,
                       "tcp_keepalives": {"idle_time": 15, "max_probes": 3, "probe_interval": 5}},
                      {"name": "b", "address": "nms.example.net"}],
        "tls": TLS,
        "restconf": {"server_name": "", "users": [{"user_id": "nms", "username": "nms", "hashed_password": SHA512},
                                                  {"user_id": "ops", "hashed_password": "$0$clear"}]},
        "connection_type": "periodic", "period": 60, "anchor_time": "2025-01-01T00:15Z", "idle_timeout": 0,
        "start_with": "last-connected", "max_wait": 10, "max_attempts": 3,
    },
    "single port": {"callhome_port": 4330, "endpoints": [{"address": "2001:db8::1"}], "tls": TLS,
                    "restconf": {"users": [{"user_id": "u", "username": "u", "hashed_password": SHA512}]}},
}


@pytest.mark.parametrize("revision", sorted(RESTCONF_PROFILES))
@pytest.mark.parametrize("case", sorted(RESTCONF_CASES))
def test_restconf_call_home_is_valid_ietf_restconf_server(schemas: t.Dict[str, Schema], revision: str, case: str) -> None:
    client = from_params(dict(RESTCONF_CASES[case], name="nms", protocol="restconf"))
    entry = restconf.build_client(client, RESTCONF_PROFILES[revision])
    for operation in ("merge", "replace"):
        config = ietf.wrap_config(entry, name="nms", operation=operation, schema=ietf.RESTCONF)
        problems = schemas["ietf-restconf-server@" + revision].validate(top_of(config))
        assert problems == [], "\n".join(problems) + "\n" + etree.tostring(config, pretty_print=True).decode()


NETCONF_CASES = {
    "ssh": {"endpoints": [{"name": "a", "address": "192.0.2.10",
                           "tcp_keepalives": {"idle_time": 15, "max_probes": 3, "probe_interval": 5}}],
            "ssh": {"host_key_reference": "genkey", "username": "netconf", "client_public_keys": [KEY],
                    "keepalive_max_wait": 30, "keepalive_max_attempts": 3},
            "start_with": "first-listed", "max_wait": 5, "max_attempts": 3},
    "ssh and tls to one port": {
        "callhome_port": 4330,
        "endpoints": [{"name": "s", "address": "192.0.2.10", "transport": "ssh"},
                      {"name": "t", "address": "192.0.2.10", "transport": "tls"}],
        "ssh": {"host_key_reference": "genkey", "username": "netconf"},
        "tls": dict(TLS, cert_to_name=[{"fingerprint": FP, "map_type": "specified", "name": "netconf"}]),
    },
}


@pytest.mark.parametrize("case", sorted(NETCONF_CASES))
def test_netconf_call_home_is_valid_ietf_netconf_server(schemas: t.Dict[str, Schema], case: str) -> None:
    client = from_params(dict(NETCONF_CASES[case], name="nms"))
    entry = ietf.build_client(client, PROFILES["2023-12-28"])
    problems = schemas["ietf-netconf-server@2023-12-28"].validate(top_of(ietf.wrap_config(entry, name="nms")))
    assert problems == [], "\n".join(problems)


def test_removing_the_last_entry_removes_call_home(schemas: t.Dict[str, Schema]) -> None:
    """Why the module removes the whole call-home container with its last entry (sole_entry):
    a call-home left without restconf-client is invalid (presence container, min-elements 1)."""
    schema = schemas["ietf-restconf-server@2024-03-16"]
    rcs = "{urn:ietf:params:xml:ns:yang:ietf-restconf-server}"
    left_empty = etree.Element(rcs + "restconf-server")
    etree.SubElement(left_empty, rcs + "call-home")
    assert any("restconf-client needs at least 1 entries" in p for p in schema.validate(left_empty))
    edit = ietf.wrap_config(None, name="nms", operation="remove", sole_entry=True, schema=ietf.RESTCONF)
    call_home = edit.find(".//%scall-home" % rcs)
    assert call_home is not None and call_home.get("{urn:ietf:params:xml:ns:netconf:base:1.0}operation") == "remove"
    assert schema.validate(etree.Element(rcs + "restconf-server")) == []  # what is left after the edit


def test_the_validator_catches_what_a_device_would_refuse(schemas: t.Dict[str, Schema]) -> None:
    """The checks can fail: mistakes a strict server refuses are each reported."""
    schema = schemas["ietf-restconf-server@2024-03-16"]
    client = from_params(dict(RESTCONF_CASES["everything"], name="nms", protocol="restconf"))
    good = top_of(ietf.wrap_config(restconf.build_client(client, RESTCONF_PROFILES["2024-03-16"]), name="nms",
                                   schema=ietf.RESTCONF))
    assert schema.validate(good) == []
    rcs = "{urn:ietf:params:xml:ns:yang:ietf-restconf-server}"

    def broken(change: t.Callable[[etree._Element], None]) -> t.List[str]:
        tree = etree.fromstring(etree.tostring(good))
        change(tree)
        return schema.validate(tree)

    # cert-to-name where NETCONF has it (netconf-server-parameters) instead of restconf-server-parameters
    def wrong_wrapper(tree: etree._Element) -> None:
        for rsp in tree.iter(rcs + "restconf-server-parameters"):
            rsp.tag = rcs + "netconf-server-parameters"
    assert any("netconf-server-parameters: no such node" in p for p in broken(wrong_wrapper))

    def foreign_namespace(tree: etree._Element) -> None:
        port = next(tree.iter(rcs + "remote-port"))
        port.tag = "{urn:ietf:params:xml:ns:yang:ietf-tcp-client}remote-port"
    assert any("exists in namespace" in p for p in broken(foreign_namespace))

    def bad_port(tree: etree._Element) -> None:
        next(tree.iter(rcs + "remote-port")).text = "70000"
    assert any("remote-port: '70000' is not a valid" in p for p in broken(bad_port))

    def bad_identity(tree: etree._Element) -> None:
        next(tree.iter(rcs + "map-type")).text = "x509c2n:no-such-mapping"
    assert any("map-type" in p for p in broken(bad_identity))

    def key_not_first(tree: etree._Element) -> None:
        entry = next(tree.iter(rcs + "restconf-client"))
        entry.append(entry.find(rcs + "name"))
    assert any("keys ['name'] must come first" in p for p in broken(key_not_first))

    def two_cases(tree: etree._Element) -> None:
        conn = next(tree.iter(rcs + "connection-type"))
        etree.SubElement(conn, rcs + "persistent")
    assert any("two cases" in p for p in broken(two_cases))

    def seconds_missing(tree: etree._Element) -> None:
        next(tree.iter(rcs + "anchor-time")).text = "2025-01-01T00:15Z"
    assert any("anchor-time" in p for p in broken(seconds_missing))

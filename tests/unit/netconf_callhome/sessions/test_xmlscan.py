# SPDX-License-Identifier: GPL-3.0-or-later
"""What the multiplexer reads from a message (``sessions.xmlscan``): safe in any encoding, and
never more of a large message than it needs (issue 10, defects 1 and 2)."""

from __future__ import annotations

import pytest

from netconf_callhome.errors import FramingError
from netconf_callhome.sessions.xmlscan import parse_request, reply_is_error, reply_is_ok, root_start_tag

pytestmark = pytest.mark.timeout(30)

NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
DTD = '<!DOCTYPE rpc [<!ENTITY t "running">]>'


def rpc(body: str, prolog: str = "", mid: str = "1") -> str:
    return '%s<rpc xmlns="%s" message-id="%s">%s</rpc>' % (prolog, NS, mid, body)


def test_lock_target_is_read():
    request = parse_request(rpc("<lock><target><candidate/></target></lock>").encode())
    assert (request.operation, request.namespace, request.target) == ("lock", NS, "candidate")
    assert request.id_value == b"1"


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16", "UTF-16-BE", "UTF-32-LE"])
def test_a_request_with_a_dtd_is_refused_in_any_encoding(encoding):
    doc = rpc("<lock><target><x>&t;</x></target></lock>", '<?xml version="1.0" encoding="%s"?>%s' % (encoding, DTD))
    with pytest.raises(FramingError):
        parse_request(doc.encode(encoding))


def test_a_dtd_after_the_lexer_is_still_refused_by_the_parser():
    # The lexer only looks for the root start tag; the parser refuses the DTD it sees.
    doc = rpc("<edit-config><target><running/></target></edit-config>", DTD).encode()
    with pytest.raises(FramingError, match="DTD"):
        parse_request(doc)


@pytest.mark.parametrize("encoding", ["UTF-16", "ISO-8859-1", "UTF-7"])
def test_a_request_must_be_utf8(encoding):
    """The lexer reads ASCII bytes, the parser the declared encoding: they must read the same."""
    doc = rpc("<get/>", '<?xml version="1.0" encoding="%s"?>' % encoding).encode(encoding)
    with pytest.raises(FramingError, match="UTF-8"):
        parse_request(doc)


def test_utf8_declarations_are_fine():
    for decl in ('<?xml version="1.0" encoding="UTF-8"?>', "<?xml version='1.0' encoding='utf-8'?>", '<?xml version="1.0"?>'):
        assert parse_request(("\ufeff" + rpc("<get/>", decl)).encode("utf-8")).operation == "get"


def test_a_large_request_is_classified_from_its_first_bytes():
    """The parser stops once the operation is known: a 32 MiB tail is never parsed (it would be
    a syntax error if it were)."""
    doc = ('<rpc xmlns="%s" message-id="1"><get><filter>' % NS).encode() + b"<<<not xml" * ((32 << 20) // 10)
    assert parse_request(doc).operation == "get"


def test_a_target_after_a_large_config_is_found():
    config = "<config><top>%s</top></config>" % ("<leaf>value</leaf>" * 50000)
    doc = rpc("<edit-config>%s<target><candidate/></target></edit-config>" % config).encode()
    assert parse_request(doc).target == "candidate"


def test_root_start_tag_names_a_dtd_and_wide_encodings():
    with pytest.raises(FramingError, match="DTD"):
        root_start_tag(('%s<rpc-reply xmlns="%s" message-id="1"/>' % (DTD, NS)).encode())
    with pytest.raises(FramingError, match="UTF-8"):
        root_start_tag(('<rpc-reply xmlns="%s" message-id="1"/>' % NS).encode("utf-16"))


def reply(body: str, prolog: str = "") -> str:
    return '%s<rpc-reply xmlns="%s" message-id="1">%s</rpc-reply>' % (prolog, NS, body)


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16"])
def test_replies_with_a_dtd_are_neither_ok_nor_trusted(encoding):
    ok_with_dtd = reply("<ok/>", '<?xml version="1.0" encoding="%s"?>%s' % (encoding, DTD)).encode(encoding)
    assert not reply_is_ok(ok_with_dtd)
    assert reply_is_error(ok_with_dtd)


def test_reply_classification():
    assert reply_is_ok(reply("<ok/>").encode())
    assert not reply_is_ok(reply("<rpc-error><error-tag>lock-denied</error-tag></rpc-error>").encode())
    assert reply_is_error(reply("<ok/><rpc-error/>").encode())
    assert not reply_is_error(reply("<data><x>%s</x></data>" % ("y" * 100000)).encode())
    assert reply_is_error(b"<rpc-reply")


def test_a_commits_options_are_read_and_other_operations_have_none() -> None:
    parse = parse_request

    commit = parse(b'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="1"><commit><confirmed/>'
                   b"<confirm-timeout> 120 </confirm-timeout><persist>p</persist></commit></rpc>")
    assert commit.options == {"confirmed": "", "confirm-timeout": "120", "persist": "p"}
    cancel = parse(b'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="2"><cancel-commit>'
                   b"<persist-id>p</persist-id></cancel-commit></rpc>")
    assert cancel.options == {"persist-id": "p"}
    foreign = parse(b'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="3"><commit>'
                    b'<confirmed xmlns="urn:example"/></commit></rpc>')
    assert foreign.options == {}  # only base:1.0 children mean anything to the listener
    get = parse(b'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="4"><get/></rpc>')
    assert get.options == {}

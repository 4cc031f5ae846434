# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import pytest

from netconf_callhome.protocol.framing import (
    BASE_10,
    BASE_11,
    Framer,
    is_close_session,
    message_id,
    parse_hello,
    reply_id,
)
from netconf_callhome.errors import FramingError, MessageTooLargeError

HELLO = (
    '<hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><capabilities>'
    "<capability>%s</capability><capability>%s</capability><capability>urn:x:y</capability>"
    "</capabilities><session-id>42</session-id></hello>" % (BASE_10, BASE_11)
).encode()


def test_eom_messages_split_across_reads():
    f = Framer(1024)
    assert f.feed(b"<a/>]]>") == []
    assert f.feed(b"]]><b/>]]>]]><c") == [b"<a/>", b"<b/>"]
    assert f.feed(b"/>]]>]]>") == [b"<c/>"]


def test_chunked_round_trip_byte_by_byte():
    enc = Framer(1 << 20)
    enc.use_chunked()
    wire = enc.encode(b"<rpc/>") + b"\n#3\n<a>\n#4\n</a>\n##\n"
    dec = Framer(1 << 20)
    dec.use_chunked()
    out = []
    for i in range(len(wire)):
        out += dec.feed(wire[i : i + 1])
    assert out == [b"<rpc/>", b"<a></a>"]


def test_switch_to_chunked_keeps_bytes_behind_hello():
    f = Framer(1 << 20)
    msgs = f.feed(HELLO + b"]]>]]>\n#4\n<ok>\n##\n")
    assert msgs == [HELLO]
    assert f.use_chunked() == [b"<ok>"]


@pytest.mark.parametrize("bad", [b"\n#0\n", b"\n#abc\n", b"xx#4\n", b"\n#01\nx", b"\n##\n"])
def test_invalid_chunk_headers_are_refused(bad):
    f = Framer(1024)
    f.use_chunked()
    with pytest.raises(FramingError):
        f.feed(bad + b"padding-to-force-a-decision")


def test_size_limits_apply_to_both_framings():
    f = Framer(100)
    with pytest.raises(MessageTooLargeError):
        f.feed(b"x" * 200)
    f = Framer(100)
    f.use_chunked()
    with pytest.raises(MessageTooLargeError):
        f.feed(b"\n#60\n" + b"x" * 60 + b"\n#60\n")


def test_parse_hello():
    hello = parse_hello(HELLO)
    assert hello.base11 and hello.session_id == 42
    assert "urn:x:y" in hello.capabilities


@pytest.mark.parametrize(
    "doc,reason",
    [
        (b'<!DOCTYPE x [<!ENTITY a "b">]><hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"/>', "DTD"),
        (b"<hello", "well-formed"),
        (b'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"/>', "expected <hello>"),
        (b'<hello xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><capabilities/></hello>', "neither"),
    ],
)
def test_bad_hellos_are_refused_with_reason(doc, reason):
    with pytest.raises(FramingError, match=reason):
        parse_hello(doc)


def test_message_ids_and_close_session():
    rpc = b'<nc:rpc xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="m-1"><nc:close-session/></nc:rpc>'
    assert message_id(rpc) == b"m-1"
    assert is_close_session(rpc)
    assert reply_id(b"<rpc-reply message-id='7' xmlns='x'><ok/></rpc-reply>") == b"7"
    assert reply_id(b"<notification/>") is None
    assert not is_close_session(b'<rpc message-id="1"><get/></rpc>')

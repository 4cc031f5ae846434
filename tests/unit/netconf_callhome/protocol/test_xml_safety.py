# SPDX-License-Identifier: GPL-3.0-or-later
"""Issue 10, defect 2: the DTD/entity refusal holds in any encoding.

The refusal used to be a regular expression over the raw bytes while the parser honoured the
encoding a document declares: a hello with an internal entity in UTF-16 was accepted and the
expanded text stored as a capability. Now every device message goes through one parser
configuration that asks the parsed document whether it has a DTD.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, List

import pytest

from netconf_callhome.errors import FramingError, HandshakeError
from netconf_callhome.protocol.framing import BASE_10, BASE_11, CLIENT_HELLO, EOM, parse_hello, parse_xml
from netconf_callhome.protocol.session import HeldSession

pytestmark = pytest.mark.timeout(30)

NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
SECRET = "EXPANDED-ENTITY-TEXT"


def entity_hello(encoding: str) -> bytes:
    """A hello whose capability is an internal entity, in ``encoding`` (declared and used)."""
    text = (
        '<?xml version="1.0" encoding="%s"?>'
        '<!DOCTYPE hello [<!ENTITY cap "%s">]>'
        '<hello xmlns="%s"><capabilities><capability>%s</capability><capability>&cap;</capability>'
        "</capabilities></hello>" % (encoding, SECRET, NS, BASE_10)
    )
    return text.encode(encoding)


# UTF-16/UTF-32 with a byte order mark (Python adds it) and without (explicit endianness).
ENCODINGS = ["UTF-8", "UTF-16", "UTF-16-LE", "UTF-16-BE", "UTF-32", "UTF-32-LE", "UTF-32-BE", "ISO-8859-1"]


def refusal(encoding: str) -> str:
    """What the refusal says: libxml2's push parser does not take UTF-32 with a byte order mark
    at all (not well-formed); every other encoding is read, and its DTD refused."""
    return "not well-formed" if encoding == "UTF-32" else "carries a DTD"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_hello_with_an_internal_entity_is_refused_in_any_encoding(encoding):
    doc = entity_hello(encoding)
    if encoding not in ("UTF-8", "ISO-8859-1"):
        assert b"<!DOCTYPE" not in doc  # no byte pattern to look for
    with pytest.raises(FramingError, match=refusal(encoding)):
        parse_hello(doc)


@pytest.mark.parametrize(
    "prolog,body",
    [
        ('<!DOCTYPE hello SYSTEM "http://127.0.0.1:9/x.dtd">', ""),  # external, never fetched
        ('<!DOCTYPE hello PUBLIC "-//x//y" "file:///etc/passwd">', ""),
        ("<!DOCTYPE hello>", ""),  # no declarations at all: still no DTD in NETCONF
        ('<!DOCTYPE hello [<!ENTITY % p "<!ENTITY c \'x\'>"> %p;]>', "<capability>&c;</capability>"),
        ('<!DOCTYPE hello [<!ENTITY c "%s">]>' % SECRET, ""),  # used in an attribute below
    ],
)
def test_every_kind_of_doctype_is_refused(prolog, body):
    doc = ('%s<hello xmlns="%s" a="%s"><capabilities><capability>%s</capability>%s</capabilities></hello>' % (
        prolog, NS, "&c;" if "ENTITY c" in prolog else "x", BASE_10, body)).encode("utf-16")
    with pytest.raises(FramingError, match="DTD"):
        parse_hello(doc)


def test_billion_laughs_is_refused_quickly():
    lol = ['<!ENTITY l0 "lol">'] + ['<!ENTITY l%d "%s">' % (i, "&l%d;" % (i - 1) * 10) for i in range(1, 10)]
    doc = ('<!DOCTYPE hello [%s]><hello xmlns="%s"><capabilities><capability>&l9;</capability></capabilities></hello>'
           % ("".join(lol), NS)).encode("utf-16")
    start = time.process_time()
    # libxml2's own amplification limit (kept on: huge_tree=False) may stop it inside the DTD
    with pytest.raises(FramingError, match="DTD|amplification"):
        parse_hello(doc)
    assert time.process_time() - start < 1.0


@pytest.mark.parametrize("encoding", ["UTF-16", "UTF-32-LE", "ISO-8859-1"])
def test_a_hello_without_dtd_is_read_in_the_encoding_it_declares(encoding):
    doc = ('<?xml version="1.0" encoding="%s"?><hello xmlns="%s"><capabilities><capability>%s</capability>'
           "<capability>%s</capability></capabilities><session-id>9</session-id></hello>"
           % (encoding, NS, BASE_10, BASE_11)).encode(encoding)
    hello = parse_hello(doc)
    assert hello.capabilities == [BASE_10, BASE_11] and hello.session_id == 9 and hello.base11


def test_undeclared_entities_and_garbage_are_not_well_formed():
    for doc in (b'<hello xmlns="%s">&x;</hello>' % NS.encode(), b"", b"<hello", b"<a/><b/>"):
        with pytest.raises(FramingError, match="well-formed"):
            parse_xml(doc, "hello")


def test_predefined_entities_and_character_references_still_work():
    hello = parse_hello(('<hello xmlns="%s"><capabilities><capability>%s</capability>'
                         "<capability>urn:x?a=1&amp;b=&#50;</capability></capabilities></hello>"
                         % (NS, BASE_10)).encode())
    assert "urn:x?a=1&b=2" in hello.capabilities


# -- through the held session: refused, and nothing of it stored -------------------------------


class _Carrier:
    def __init__(self) -> None:
        self.written: List[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16", "UTF-32"])
def test_held_session_refuses_the_hello_and_stores_nothing_expanded(encoding):
    async def scenario() -> Any:
        held = HeldSession(device="r1", transport="tls", peer="127.0.0.1:1", fingerprint="fp",
                           max_hello=1 << 20, max_message=1 << 20)
        carrier = _Carrier()
        held.attach(carrier)
        assert carrier.written == [CLIENT_HELLO + EOM]
        wire = entity_hello(encoding) + EOM
        for i in range(0, len(wire), 5):  # in pieces, as a device would send it
            held.data_received(wire[i : i + 5])
        with pytest.raises(HandshakeError, match=refusal(encoding)):
            await held.wait_hello()
        return held

    held = asyncio.run(scenario())
    assert held.hello is None
    assert SECRET not in repr(vars(held))

# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import random
import statistics
import time
from typing import List

import pytest

from netconf_callhome.protocol.framing import (
    BASE_10,
    BASE_11,
    EOM,
    Framer,
    parse_hello,
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


# -- linearity (issue 10, defect 1) ------------------------------------------------------------
#
# The end-of-message search used to cover the whole buffer on every read: 64 MiB fed in 64 KiB
# pieces took 22 s. Two proofs that it no longer does: the bytes the search examines (exact, no
# timing), and the CPU time of one read late in a 16 MiB message against one early in it (the
# same work for a linear framer; ~30 times more for the old one, which rescanned the 15 MiB it
# held). Medians of 16 reads each, in one process state, so that neither a busy machine nor
# the allocator's page faults decide.

PIECE = 64 * 1024


def _feed_eom(total: int, piece: int = PIECE) -> Framer:
    framer = Framer(1 << 30)
    data = b"x" * piece
    for _unused in range(total // piece):
        assert framer.feed(data) == []
    assert framer.feed(EOM) == [b"x" * (total // piece * piece)]
    return framer


@pytest.mark.parametrize("piece,total", [(PIECE, 8 << 20), (1000, 8 << 20), (7, 64 << 10)])
def test_eom_search_examines_each_byte_about_once(piece, total):
    framer = _feed_eom(total, piece)
    feeds = total // piece + 1
    # each read is searched once, plus at most len(EOM) - 1 bytes of the read before it
    assert framer.scanned <= total + len(EOM) + feeds * (len(EOM) - 1), framer.scanned


def _late_vs_early(framer: Framer, pieces: List[bytes], window: int = 16) -> float:
    """Median CPU time of the last ``window`` reads over that of the first ``window``."""
    costs = []
    for data in pieces:
        start = time.process_time()
        framer.feed(data)
        costs.append(time.process_time() - start)
    early, late = statistics.median(costs[:window]), statistics.median(costs[-window - 1 : -1])
    return late / max(early, 1e-6)


@pytest.mark.timeout(120)
def test_eom_read_late_in_a_large_message_costs_what_an_early_one_does():
    pieces = [b"x" * PIECE] * ((16 << 20) // PIECE) + [EOM]
    ratio = min(_late_vs_early(Framer(1 << 30), pieces) for _unused in range(3))
    assert ratio < 4, "a read after 15 MiB cost %.1f times a read after 1 MiB" % ratio


@pytest.mark.timeout(120)
def test_chunked_read_late_in_a_large_message_costs_what_an_early_one_does():
    wire = b"".join(b"\n#%d\n%s" % (PIECE, b"x" * PIECE) for _unused in range((16 << 20) // PIECE)) + b"\n##\n"
    pieces = [wire[i : i + PIECE] for i in range(0, len(wire), PIECE)]

    def framer() -> Framer:
        chunked = Framer(1 << 30)
        chunked.use_chunked()
        return chunked

    ratio = min(_late_vs_early(framer(), pieces) for _unused in range(3))
    assert ratio < 4, "a read after 15 MiB cost %.1f times a read after 1 MiB" % ratio


def _reference_split(stream: bytes) -> List[bytes]:
    return stream.split(EOM)[:-1]


@pytest.mark.parametrize("seed", range(20))
def test_eom_split_anywhere_matches_a_plain_split(seed):
    """Markers and near-markers cut at every possible place (the overlap is what is at stake)."""
    rnd = random.Random(seed)
    stream = b"".join(rnd.choice([b"]", b">", b"]]>", b"]]>]]", b"a", EOM]) for _unused in range(400)) + EOM
    framer = Framer(1 << 20)
    out: List[bytes] = []
    pos = 0
    while pos < len(stream):
        step = rnd.randint(1, 9)
        out += framer.feed(stream[pos : pos + step])
        pos += step
    assert out == _reference_split(stream)


# -- the size bound while reading ----------------------------------------------------------------


def test_eom_bound_trips_before_the_marker_arrives():
    framer = Framer(1000)
    with pytest.raises(MessageTooLargeError, match=r"exceeds 1000 bytes .*max_message_bytes"):
        for _unused in range(100):  # an endless reply: refused once the limit is passed, not at its end
            framer.feed(b"x" * 100)
    assert framer.pending_bytes() <= 1000 + 100


def test_eom_message_of_exactly_the_limit_is_accepted_even_with_its_marker_split():
    framer = Framer(100)
    assert framer.feed(b"x" * 100 + EOM[:5]) == []
    assert framer.feed(EOM[5:] + b"y" * 10 + EOM) == [b"x" * 100, b"y" * 10]
    with pytest.raises(MessageTooLargeError):
        Framer(100).feed(b"x" * 101 + EOM)


def test_chunked_bound_trips_at_the_chunk_header():
    framer = Framer(1000)
    framer.use_chunked()
    assert framer.feed(b"\n#600\n" + b"x" * 600) == []
    with pytest.raises(MessageTooLargeError, match="exceeds 1000 bytes"):
        framer.feed(b"\n#500\n")  # refused before any of its data is read


def test_chunked_header_split_from_its_data_and_many_messages_in_one_read():
    framer = Framer(1 << 20)
    framer.use_chunked()
    assert framer.feed(b"\n#1") == []
    assert framer.feed(b"0\nabcde") == []
    assert framer.feed(b"fghij\n##\n\n#2\nkl\n##\n\n#1\nm\n##\n\n#") == [b"abcdefghij", b"kl", b"m"]
    assert framer.pending_bytes() == 2

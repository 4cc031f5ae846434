# SPDX-License-Identifier: GPL-3.0-or-later
"""NETCONF framing throughput: one large message fed to ``protocol.framing.Framer`` in pieces.

Issue 10, defect 1: the base:1.0 end-of-message search covered the whole buffer on every read,
so 64 MiB in 64 KiB pieces took 22 s. This measures the framer alone, in this process (no I/O,
no SSH): MB/s of CPU time (``time.process_time``) for base:1.0 (``]]>]]>``) and base:1.1
(chunked, one chunk header per piece so that headers straddle the reads), at each message size
given, best of ``--repeat`` runs. A linear framer shows about the same MB/s at every size; a
quadratic one loses throughput in proportion to the size.

    .venv/bin/python bench/framing.py                      # 64 KiB pieces, 16 and 64 MiB
    .venv/bin/python bench/framing.py --piece 4096 --sizes 16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "listener" / "src"))  # the checkout's listener, editable or not

from netconf_callhome.protocol.framing import EOM, Framer  # noqa: E402

MIB = 1024 * 1024


def eom_pieces(size: int, piece: int) -> List[bytes]:
    body = b"x" * piece
    return [body] * (size // piece) + [EOM]


def chunked_pieces(size: int, piece: int) -> List[bytes]:
    wire = b"".join(b"\n#%d\n%s" % (piece, b"x" * piece) for _unused in range(size // piece)) + b"\n##\n"
    return [wire[i : i + piece] for i in range(0, len(wire), piece)]


def run(pieces: List[bytes], chunked: bool, size: int) -> float:
    """CPU seconds to frame the message."""
    framer = Framer(size + MIB)
    if chunked:
        framer.use_chunked()
    out: List[bytes] = []
    start = time.process_time()
    for data in pieces:
        out += framer.feed(data)
    elapsed = time.process_time() - start
    assert len(out) == 1 and len(out[0]) == size // len(pieces[0]) * len(pieces[0]), "framing lost bytes"
    return elapsed


def measure(framing: str, size: int, piece: int, repeat: int) -> Dict[str, Any]:
    make: Callable[[int, int], List[bytes]] = chunked_pieces if framing == "base:1.1" else eom_pieces
    pieces = make(size, piece)
    best = min(run(pieces, framing == "base:1.1", size) for _unused in range(repeat))
    return {
        "framing": framing,
        "message_mib": size / MIB,
        "piece_bytes": piece,
        "cpu_s": round(best, 4),
        "mb_per_s": round(size / 1e6 / max(best, 1e-9), 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--piece", type=int, default=64 * 1024, help="bytes per read (default 65536)")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 64], help="message sizes in MiB (default 16 64)")
    p.add_argument("--repeat", type=int, default=3, help="runs per case, the best is kept (default 3)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    results = []
    print("%-9s %8s %8s %9s %10s" % ("framing", "MiB", "piece", "CPU s", "MB/s"))
    for framing in ("base:1.0", "base:1.1"):
        for size in args.sizes:
            row = measure(framing, size * MIB, args.piece, args.repeat)
            results.append(row)
            print("%-9s %8d %8d %9.3f %10.1f" % (framing, size, args.piece, row["cpu_s"], row["mb_per_s"]))
    if args.json:
        args.json.write_text(json.dumps({"python": sys.version.split()[0], "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

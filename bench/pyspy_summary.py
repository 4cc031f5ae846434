# SPDX-License-Identifier: GPL-3.0-or-later
"""Summarize a py-spy ``--format raw`` file (collapsed stacks): samples per thread kind, inclusive
and self share per function (``--top``), optionally only stacks containing ``--focus``."""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("raw", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--focus", help="only stacks with a frame containing this text")
    a = p.parse_args()
    total = 0
    threads: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    self_: collections.Counter = collections.Counter()
    for line in a.raw.read_text().splitlines():
        stack, _sep, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if a.focus and not any(a.focus in f for f in frames):
            continue
        total += n
        thread = re.sub(r"\(\d+\)", "", frames[0])
        thread = re.sub(r"_\d+$", "", thread.strip())
        threads[thread] += n
        seen = set()
        for f in frames[1:]:
            key = re.sub(r":\d+\)", ")", f)  # function (file), lines merged
            if key not in seen:
                incl[key] += n
                seen.add(key)
        self_[re.sub(r":\d+\)", ")", frames[-1])] += n
    print("samples: %d" % total)
    print("\nby thread:")
    for k, v in threads.most_common():
        print("  %5.1f%%  %s" % (100.0 * v / total, k))
    print("\ninclusive:")
    for k, v in incl.most_common(a.top):
        print("  %5.1f%%  %s" % (100.0 * v / total, k))
    print("\nself:")
    for k, v in self_.most_common(a.top):
        print("  %5.1f%%  %s" % (100.0 * v / total, k))
    return 0


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: GPL-3.0-or-later
"""``callhome-listener`` as a Unix tool: a reader that goes away early (``| head``) ends the
command quietly, never with a BrokenPipeError traceback (issue 10 defect 13)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, List

import pytest

pytestmark = pytest.mark.timeout(120)

SIGPIPE_STATUS = 141  # 128 + SIGPIPE: what the shell reports for `yes | head`


def _run_into_closed_pipe(argv: List[str]) -> "subprocess.CompletedProcess[str]":
    """Run the CLI with stdout a pipe whose reader has gone: every write gets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "netconf_callhome"] + argv,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "argv",
    [["pending"], ["--json", "pending"], ["devices"], ["status"], ["--json", "devices"], ["--help"], ["serve", "--help"]],
    ids=lambda argv: "-".join(a.strip("-") for a in argv),
)
def test_a_closed_pipe_ends_quietly(listener_in_thread: Any, argv: List[str]) -> None:
    lst = listener_in_thread()
    res = _run_into_closed_pipe(["--control", lst.address] + argv)
    assert res.stderr == "", res.stderr
    if "--help" in argv:
        assert res.returncode in (0, SIGPIPE_STATUS)  # argparse itself ignores a failed write of its help
    else:
        assert res.returncode == SIGPIPE_STATUS


def test_an_open_pipe_still_gets_everything(listener_in_thread: Any) -> None:
    lst = listener_in_thread()
    res = subprocess.run(
        [sys.executable, "-m", "netconf_callhome", "--control", lst.address, "pending"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.split()[:3] == ["FINGERPRINT", "KEY_TYPE", "TRANSPORT"]


def test_an_error_still_goes_to_stderr(tmp_path: Any) -> None:
    res = _run_into_closed_pipe(["--control", "unix:%s" % (tmp_path / "none.sock"), "status"])
    assert res.returncode == 1
    assert res.stderr.startswith("callhome-listener: no call-home listener answers at unix:")

# SPDX-License-Identifier: GPL-3.0-or-later
"""``run_module``: a module's ``main()`` run in this process, as Ansible runs it.

Imported as ``from module_runner import run_module`` by the module unit tests and the integration
tests (``tests/conftest.py`` puts this folder on ``sys.path``, as for ``harness``).
"""

from __future__ import annotations

import contextlib
import io
import json
import typing as t

import pytest
from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes

ModuleRun = t.Tuple[int, t.Dict[str, t.Any]]


def run_module(main: t.Callable[[], None], args: t.Dict[str, t.Any], check: bool = False,
               diff: bool = False) -> ModuleRun:
    """(exit code, JSON result) of ``main()`` with ``args`` as its task's arguments."""
    args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    basic._ANSIBLE_ARGS = to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args}))  # pylint: disable=protected-access
    if hasattr(basic, "_ANSIBLE_PROFILE"):  # ansible-core 2.19+
        basic._ANSIBLE_PROFILE = "legacy"  # pylint: disable=protected-access
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        main()
    return int(exc.value.code or 0), json.loads(out.getvalue())

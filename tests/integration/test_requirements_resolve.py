# SPDX-License-Identifier: GPL-3.0-or-later
"""``pip install -r requirements.txt`` resolves on this interpreter, to the newest ansible-core it can run.

Runs on both test stacks: Python 3.11 must get ansible-core 2.19 (the last release for 3.11),
Python 3.13 ansible-core 2.21 (the newest release, which needs Python 3.12 or later). The listener
distribution ``netconf-callhome`` is not on the index: it comes from a wheel built here from
``listener/`` (as ``make dist`` builds it) and offered with ``--find-links``, as the docs tell
users. pip resolves for a fresh environment (``--dry-run --ignore-installed``): nothing is
installed, and what the test's venv already holds does not count. Needs the package index.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Dict

import pytest
import yaml

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]

# The newest ansible-core minor release each Python runs as a controller (ansible-core's
# requires-python), capped by the [ansible] extra's <2.22 (listener/pyproject.toml, which
# requirements.txt names): 2.19 was the last for 3.11, 2.20 and 2.21 need 3.12 or later. (3.10 is
# below the listener's requires-python: pip refuses it there.)
NEWEST_CORE = {(3, 11): "2.19", (3, 12): "2.21", (3, 13): "2.21", (3, 14): "2.21"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The listener wheel, built from a copy of listener/ (nothing is written into the checkout)."""
    base = tmp_path_factory.mktemp("dist")
    src = base / "listener-src"
    shutil.copytree(REPO / "listener", src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".mypy_cache"))
    out = base / "wheels"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
                         capture_output=True, text=True, timeout=240, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def resolved(wheel_dir: Path) -> Dict[str, Dict]:
    """{normalized name: pip report entry} for ``-r requirements.txt --find-links <wheel dir>``."""
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "--report", "-",
         "-r", str(REPO / "requirements.txt"), "--find-links", str(wheel_dir)],
        capture_output=True, text=True, timeout=240, check=False, cwd=str(REPO),
    )
    assert res.returncode == 0, "requirements.txt does not resolve on Python %s:\n%s" % (
        sys.version.split()[0], res.stderr[-3000:])
    return {_normalize(i["metadata"]["name"]): i for i in json.loads(res.stdout)["install"]}


def test_resolves_to_the_newest_ansible_core_for_this_python(resolved: Dict[str, Dict]) -> None:
    here = sys.version_info[:2]
    if here not in NEWEST_CORE:
        pytest.skip("no expectation recorded for Python %d.%d (NEWEST_CORE)" % here)
    version = resolved["ansible-core"]["metadata"]["version"]
    assert ".".join(version.split(".")[:2]) == NEWEST_CORE[here], (
        "Python %d.%d resolved ansible-core %s" % (here + (version,)))


def test_resolved_ansible_core_is_within_requires_ansible(resolved: Dict[str, Dict]) -> None:
    from packaging.specifiers import SpecifierSet

    declared = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())["requires_ansible"]
    assert resolved["ansible-core"]["metadata"]["version"] in SpecifierSet(declared), declared


def test_listener_distribution_comes_from_the_wheel(resolved: Dict[str, Dict], wheel_dir: Path) -> None:
    (wheel,) = wheel_dir.glob("netconf_callhome-*.whl")
    assert resolved["netconf-callhome"]["download_info"]["url"] == wheel.as_uri()
    for name in ("asyncssh", "cryptography", "pyyaml", "prometheus-client", "ncclient", "jmespath"):
        assert name in resolved, sorted(resolved)


def test_bounds_live_in_the_distribution_extra_only() -> None:
    """requirements.txt names the [ansible] extra and bounds nothing itself; the extra bounds each of
    its packages above and below, so a listener host (the role installs the same extra) and a
    controller get the same tested ansible-core and ncclient."""
    from packaging.requirements import Requirement

    lines = [ln.split("#", 1)[0].strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    reqs = [Requirement(ln) for ln in lines if ln]
    assert [(r.name, sorted(r.extras)) for r in reqs] == [("netconf-callhome", ["ansible"])], lines
    extra = tomllib.loads((REPO / "listener" / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ansible"]
    bounded = {_normalize(Requirement(r).name): Requirement(r).specifier for r in extra}
    assert set(bounded) == {"ansible-core", "ncclient", "jmespath"}, extra
    for name in ("ansible-core", "ncclient"):
        ops = {spec.operator for spec in bounded[name]}
        assert ops & {">=", ">"} and ops & {"<", "<="}, (name, str(bounded[name]))
    role = yaml.safe_load((REPO / "roles" / "listener" / "defaults" / "main.yml").read_text())
    assert "ansible" in role["callhome_listener_extras"], role["callhome_listener_extras"]


def test_resolved_versions_are_within_the_extra(resolved: Dict[str, Dict]) -> None:
    from packaging.requirements import Requirement

    extra = tomllib.loads((REPO / "listener" / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ansible"]
    for req in map(Requirement, extra):
        got = resolved[_normalize(req.name)]["metadata"]["version"]
        assert got in req.specifier, (req.name, got, str(req.specifier))

# SPDX-License-Identifier: GPL-3.0-or-later
"""Run ``ansible-test sanity`` on this collection without Galaxy or ansible-test's own host.

Why a wrapper is needed (each point was verified on Debian bookworm, ansible-core 2.19):

* ansible-test resolves symlinks and insists on a real ``.../ansible_collections/<ns>/<name>``
  directory, so the repository root (which IS the collection) cannot be tested in place. The
  files git would ship (``git ls-files -co --exclude-standard``) are copied into a staging tree
  under ``.cache/sanity/`` (git-ignored, removed by ``make clean``).
* ansible-test ignores ``ANSIBLE_COLLECTIONS_PATH``: the dependencies (``ansible.netcommon``,
  ``ansible.utils``, extracted by ``make setup`` into ``.deps/``) must sit beside the collection
  in the same ``ansible_collections`` tree, so the ``ansible`` namespace is linked in there.
* every sanity test gets its own virtual environment, bootstrapped with a ``get_pip_<ver>.py``
  script that ansible-test downloads from a host that is unreachable here. A stand-in that uses
  ``ensurepip`` and then ``pip install`` (PyPI is reachable) is written to ansible-test's cache.

``--local`` is used: the controller is this venv's Python with its ansible-core, so nothing has to
be installed for the controller itself (``--venv`` would build and fill a further controller venv
on every cold cache). The sanity tests are still isolated, each in its own ansible-test venv.

Usage: ``.venv/bin/python tests/sanity/run_sanity.py [extra ansible-test sanity args]``, for example
``--test pylint``. The exit status is ansible-test's.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "netconf"
NAME = "callhome"
STAGE_ROOT = ROOT / ".cache" / "sanity" / "ansible_collections"
DEPS_ROOT = ROOT / ".deps" / "ansible_collections"
# Collections ansible-test must find beside ours: (namespace, name).
DEPENDENCIES = (("ansible", "netcommon"), ("ansible", "utils"))
PIP_CACHE_DIR = Path.home() / ".ansible" / "test" / "cache"
GET_PIP_MARKER = "# netconf.callhome offline get-pip stand-in"

GET_PIP_SCRIPT = f'''{GET_PIP_MARKER} (written by tests/sanity/run_sanity.py)
"""Stand-in for https://ci-files.testing.ansible.com/ansible-test/get-pip-<ver>.py.

ansible-test runs this file as __main__ inside an empty venv with the arguments it would give
get-pip.py: pip options, pinned packages (pip==<ver>) and --no-setuptools/--no-wheel. pip is
bootstrapped with ensurepip, then upgraded to the pinned version from the configured index.
"""
import os
import subprocess
import sys

GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")
args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
env = dict(os.environ)
# ensurepip exports PIP_CONFIG_FILE=/dev/null; pip must keep the machine's pip.conf (certificates,
# index), so the variable is dropped for both steps.
env.pop("PIP_CONFIG_FILE", None)
subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True, env=env,
               stdout=subprocess.DEVNULL)
env.pop("PIP_CONFIG_FILE", None)
sys.exit(subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], env=env).returncode)
'''


def log(message: str) -> None:
    """Print a line of the wrapper's own output, told apart from ansible-test's."""
    print(f"[run_sanity] {message}", flush=True)


def collection_files(repo: Path) -> list[str]:
    """Return the repository's files as git would ship them: tracked or untracked-not-ignored.

    Tracked files deleted from the work tree are left out, since they cannot be copied.
    """
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout.decode()
    names = sorted({name for name in out.split("\0") if name})
    return [name for name in names if os.path.lexists(repo / name)]


def stage_tree(repo: Path, files: Iterable[str], dest: Path) -> None:
    """Recreate ``dest`` holding exactly ``files`` copied from ``repo``.

    Modes are kept (the shebang test checks executable bits) and symlinks stay symlinks (the
    symlinks test checks them). The tree is rebuilt from scratch so a file deleted or renamed in
    the repository cannot linger in it.
    """
    if dest.exists() or dest.is_symlink():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in files:
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"refusing to stage path outside the collection: {name}")
        src = repo / rel
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), target)
        else:
            shutil.copy2(src, target)


def link_dependencies(
    deps_root: Path, stage_root: Path, dependencies: Sequence[tuple[str, str]]
) -> None:
    """Link each dependency collection into ``stage_root`` (an ``ansible_collections`` folder).

    Links are per collection, so a namespace shared with ours could not shadow our collection.
    """
    for namespace, name in dependencies:
        src = deps_root / namespace / name
        if not (src / "plugins").is_dir() and not (src / "MANIFEST.json").is_file():
            raise FileNotFoundError(
                f"dependency {namespace}.{name} missing at {src}; run 'make setup'"
            )
        link = stage_root / namespace / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == src:
                continue
            if link.is_dir() and not link.is_symlink():
                shutil.rmtree(link)
            else:
                link.unlink()
        link.symlink_to(src, target_is_directory=True)


def init_git(path: Path) -> None:
    """Make ``path`` its own git work tree so ansible-test lists exactly the staged files.

    Without it ansible-test would walk up to the enclosing repository (where ``.cache/`` is
    ignored) or fall back to a plain directory walk, depending on where the tree lives.
    """
    if not (path / ".git").exists():
        subprocess.run(["git", "init", "-q", str(path)], check=True)


def ansible_test_pip_versions(ansible_test_dir: Path) -> list[str]:
    """Return the pip versions ansible-test pins for its venvs (read from its source, not run).

    ``get_venv_packages`` in ``_internal/python_requirements.py`` holds ``pip='X.Y'`` defaults and
    per-Python overrides; every literal is collected so each version gets its bootstrap script.
    """
    source = (ansible_test_dir / "_internal" / "python_requirements.py").read_text()
    return sorted(set(re.findall(r"""\bpip\s*=\s*['"](\d+(?:\.\d+)*)['"]""", source)))


def install_get_pip(cache_dir: Path, versions: Iterable[str]) -> list[Path]:
    """Write the offline bootstrap script for each pip version; return the paths written.

    A script that is not ours (for example the real one, fetched where the host is reachable) is
    left alone; ours is rewritten only when its content changed.
    """
    written = []
    cache_dir.mkdir(parents=True, exist_ok=True)
    for version in versions:
        path = cache_dir / f"get_pip_{version.replace('.', '_')}.py"
        if path.exists():
            current = path.read_text(errors="replace")
            if not current.startswith(GET_PIP_MARKER) or current == GET_PIP_SCRIPT:
                continue
        tmp = path.with_suffix(".tmp")
        tmp.write_text(GET_PIP_SCRIPT)
        tmp.replace(path)
        written.append(path)
    return written


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One sanity test result as ansible-test recorded it in its junit output."""

    test: str
    status: str  # "passed", "failed" or "skipped"
    detail: str = ""


def read_junit(junit_dir: Path) -> list[Outcome]:
    """Collect every test case from ansible-test's junit files (one file per test and Python)."""
    outcomes = []
    for path in sorted(junit_dir.glob("*.xml")):
        for case in ET.parse(path).getroot().iter("testcase"):
            name = case.get("name") or path.stem
            skipped = case.find("skipped")
            failures = case.findall("failure") + case.findall("error")
            if failures:
                text = "\n".join((f.get("message") or "") + "\n" + (f.text or "") for f in failures)
                outcomes.append(Outcome(name, "failed", text.strip()))
            elif skipped is not None:
                reason = skipped.get("message") or skipped.text or "no reason given"
                outcomes.append(Outcome(name, "skipped", reason.strip()))
            else:
                outcomes.append(Outcome(name, "passed"))
    return outcomes


def summarize(outcomes: Sequence[Outcome], available: Sequence[str]) -> str:
    """Render which tests ran (and how they ended) and which were skipped, with the reason."""
    lines = []
    by_status: dict[str, list[Outcome]] = {"passed": [], "failed": [], "skipped": []}
    for outcome in outcomes:
        by_status.setdefault(outcome.status, []).append(outcome)
    lines.append(f"ran and passed ({len(by_status['passed'])}): "
                 + ", ".join(o.test for o in by_status["passed"]))
    if by_status["failed"]:
        lines.append(f"ran and FAILED ({len(by_status['failed'])}): "
                     + ", ".join(o.test for o in by_status["failed"]))
    lines.append(f"skipped ({len(by_status['skipped'])}):")
    for outcome in by_status["skipped"]:
        reason = outcome.detail
        if reason == "No tests applicable.":
            reason = "no files in the collection that this test checks"
        lines.append(f"  {outcome.test}: {reason}")
    reported = {re.sub(r"-python-\d+\.\d+$", "", o.test) for o in outcomes}
    missing = [name for name in available if name not in reported]
    if missing:
        lines.append("not run (disabled by default or not selected): " + ", ".join(missing))
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Stage the collection, prepare the offline bootstrap and run ``ansible-test sanity``."""
    bin_dir = Path(sys.executable).parent
    ansible_test = bin_dir / "ansible-test"
    spec = importlib.util.find_spec("ansible_test")
    if not ansible_test.exists() or spec is None or spec.origin is None:
        log(f"ansible-test not found beside {sys.executable}; use the venv python (make setup)")
        return 2
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"

    # Several people run `make test` in one checkout; one staging tree means one run at a time.
    STAGE_ROOT.parent.mkdir(parents=True, exist_ok=True)
    with open(STAGE_ROOT.parent / ".lock", "w", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another sanity run holds the staging tree; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _run_locked(argv, bin_dir, ansible_test, Path(spec.origin).parent, python_version)


def _run_locked(
    argv: Sequence[str],
    bin_dir: Path,
    ansible_test: Path,
    ansible_test_dir: Path,
    python_version: str,
) -> int:
    """Do the run while holding the staging lock (see ``main``)."""
    started = time.monotonic()
    collection = STAGE_ROOT / NAMESPACE / NAME
    files = collection_files(ROOT)
    stage_tree(ROOT, files, collection)
    init_git(collection)
    link_dependencies(DEPS_ROOT, STAGE_ROOT, DEPENDENCIES)
    log(f"staged {len(files)} files in {collection}")

    versions = ansible_test_pip_versions(ansible_test_dir)
    for path in install_get_pip(PIP_CACHE_DIR, versions):
        log(f"wrote offline pip bootstrap {path}")
    if shutil.which("shellcheck") is None:
        log("shellcheck is not installed (Debian package 'shellcheck'): its test will be skipped")

    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}"
    base = [str(ansible_test), "sanity", "--color", "no", "--python", python_version, "--local"]
    listed = subprocess.run(base + ["--list-tests"], cwd=collection, env=env,
                            capture_output=True, text=True, check=False)
    available = listed.stdout.split() if listed.returncode == 0 else []

    cmd = base + ["--junit", *argv]
    log("running: " + " ".join(cmd))
    rc = subprocess.run(cmd, cwd=collection, env=env, check=False).returncode

    outcomes = read_junit(collection / "tests" / "output" / "junit")
    print()
    log("summary\n" + summarize(outcomes, available if not argv else []))
    log(f"ansible-test exit status {rc}; {time.monotonic() - started:.1f} s in all")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

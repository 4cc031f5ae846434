# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of tests/sanity/run_sanity.py: what it stages, links and bootstraps.

A wrong staging step shows up only as a confusing ansible-test failure (or worse, as a sanity run
that silently checks the wrong files), so the pure parts are pinned down here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

RUNNER_PATH = Path(__file__).resolve().parents[1] / "sanity" / "run_sanity.py"


def _load_runner() -> ModuleType:
    """Import run_sanity.py by path (it is a script, not part of an importable package)."""
    spec = importlib.util.spec_from_file_location("run_sanity_under_test", RUNNER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture(name="repo")
def fixture_repo(tmp_path: Path) -> Path:
    """A small git repository with tracked, untracked, ignored and deleted files."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "plugins" / "modules").mkdir(parents=True)
    (repo / ".gitignore").write_text("/.venv/\n*.pyc\n")
    (repo / "galaxy.yml").write_text("namespace: netconf\n")
    (repo / "plugins" / "modules" / "tracked.py").write_text("# tracked\n")
    (repo / "gone.txt").write_text("deleted after git add\n")
    script = repo / "run.sh"
    script.write_text("#!/usr/bin/env bash\n")
    script.chmod(0o755)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    (repo / "gone.txt").unlink()
    (repo / "untracked.py").write_text("# new, not yet added\n")
    (repo / ".venv").mkdir()
    (repo / ".venv" / "ignored.py").write_text("# ignored\n")
    (repo / "plugins" / "modules" / "stale.pyc").write_bytes(b"\0")
    os.symlink("galaxy.yml", repo / "link.yml")
    return repo


def test_collection_files_are_what_git_would_ship(repo: Path) -> None:
    """Tracked and untracked files are staged; ignored and deleted ones are not."""
    files = runner.collection_files(repo)
    assert files == [
        ".gitignore",
        "galaxy.yml",
        "link.yml",
        "plugins/modules/tracked.py",
        "run.sh",
        "untracked.py",
    ]


def test_stage_tree_copies_exactly_and_keeps_modes_and_links(repo: Path, tmp_path: Path) -> None:
    """Files are copied with their mode, symlinks stay symlinks, leftovers are removed."""
    dest = tmp_path / "stage" / "ansible_collections" / "netconf" / "callhome"
    dest.mkdir(parents=True)
    (dest / "leftover.py").write_text("# from an earlier run\n")
    files = runner.collection_files(repo)

    runner.stage_tree(repo, files, dest)

    staged = sorted(
        str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() or p.is_symlink()
    )
    assert staged == files
    assert os.access(dest / "run.sh", os.X_OK)
    assert not os.access(dest / "galaxy.yml", os.X_OK)
    assert (dest / "link.yml").is_symlink() and os.readlink(dest / "link.yml") == "galaxy.yml"
    assert (dest / "plugins/modules/tracked.py").read_text() == "# tracked\n"


@pytest.mark.parametrize("bad", ["../escape.txt", "/etc/passwd"])
def test_stage_tree_refuses_paths_outside_the_collection(tmp_path: Path, bad: str) -> None:
    """A path leaving the collection is an error, never a write outside the staging tree."""
    with pytest.raises(ValueError):
        runner.stage_tree(tmp_path, [bad], tmp_path / "dest")


def test_link_dependencies_links_each_collection_idempotently(tmp_path: Path) -> None:
    """Dependencies appear beside the collection; a second run leaves the links as they are."""
    deps = tmp_path / "deps" / "ansible_collections"
    for name in ("netcommon", "utils"):
        (deps / "ansible" / name / "plugins").mkdir(parents=True)
    stage = tmp_path / "stage" / "ansible_collections"
    stage.mkdir(parents=True)
    dependencies = (("ansible", "netcommon"), ("ansible", "utils"))

    runner.link_dependencies(deps, stage, dependencies)
    runner.link_dependencies(deps, stage, dependencies)

    for name in ("netcommon", "utils"):
        link = stage / "ansible" / name
        assert link.is_symlink()
        assert link.resolve() == (deps / "ansible" / name).resolve()


def test_link_dependencies_says_what_is_missing(tmp_path: Path) -> None:
    """A missing dependency names itself and the fix instead of failing inside ansible-test."""
    with pytest.raises(FileNotFoundError, match=r"ansible\.utils.*make setup"):
        runner.link_dependencies(tmp_path, tmp_path / "stage", (("ansible", "utils"),))


def test_pip_versions_are_read_from_ansible_test_source(tmp_path: Path) -> None:
    """Defaults and per-Python overrides are both found, each once."""
    internal = tmp_path / "_internal"
    internal.mkdir()
    (internal / "python_requirements.py").write_text(
        "default_packages = dict(\n    pip='24.2',\n)\n"
        "override_packages = {'3.8': dict(pip=\"23.3.1\"), '3.9': dict(pip='24.2')}\n"
    )
    assert runner.ansible_test_pip_versions(tmp_path) == ["23.3.1", "24.2"]


def test_pip_versions_of_the_installed_ansible_test_are_found() -> None:
    """The regex still matches the ansible-test in use (guards against a silent no-op)."""
    spec = importlib.util.find_spec("ansible_test")
    if spec is None or spec.origin is None:
        pytest.skip("ansible-test is not installed in this interpreter")
    versions = runner.ansible_test_pip_versions(Path(spec.origin).parent)
    assert versions, "no pip version found in ansible-test's python_requirements.py"


def test_install_get_pip_writes_updates_and_respects_foreign_scripts(tmp_path: Path) -> None:
    """Ours is written once and refreshed when stale; a script that is not ours is kept."""
    foreign = tmp_path / "get_pip_23_0.py"
    foreign.write_text("# the real get-pip.py\n")
    stale = tmp_path / "get_pip_24_2.py"
    stale.write_text(runner.GET_PIP_MARKER + " old version\n")

    written = runner.install_get_pip(tmp_path, ["23.0", "24.2", "25.0"])

    assert sorted(p.name for p in written) == ["get_pip_24_2.py", "get_pip_25_0.py"]
    assert foreign.read_text() == "# the real get-pip.py\n"
    assert stale.read_text() == runner.GET_PIP_SCRIPT
    assert runner.install_get_pip(tmp_path, ["23.0", "24.2", "25.0"]) == []


def _probe_wheel(directory: Path) -> Path:
    """Build a minimal pure-Python wheel by hand, so pip can install it with no index."""
    wheel = directory / "sanity_probe-1.0-py3-none-any.whl"
    info = "sanity_probe-1.0.dist-info"
    files = {
        "sanity_probe.py": "VALUE = 42\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: sanity-probe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", record)
    return wheel


def test_get_pip_stand_in_bootstraps_pip_into_an_empty_venv(tmp_path: Path) -> None:
    """The stand-in, run as ansible-test runs it, bootstraps pip and installs what it is given.

    ansible-test passes get-pip.py-only flags (which pip itself rejects) and the pinned packages;
    a local wheel with ``--no-index`` stands in for the packages, so no network is needed.
    """
    env_dir = tmp_path / "venv"
    try:
        venv.create(env_dir, with_pip=False)
    except (OSError, subprocess.CalledProcessError) as exc:  # pragma: no cover - platform gap
        pytest.skip(f"cannot create a venv here: {exc}")
    python = env_dir / "bin" / "python"
    script = tmp_path / "get_pip_24_2.py"
    script.write_text(runner.GET_PIP_SCRIPT)
    wheel = _probe_wheel(tmp_path)
    env = dict(os.environ, PIP_CONFIG_FILE="/dev/null")

    result = subprocess.run(
        [str(python), str(script), "--disable-pip-version-check", "--no-index", str(wheel),
         "--no-setuptools", "--no-wheel"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0 and "No module named ensurepip" in result.stderr:
        pytest.skip("ensurepip is missing (Debian: install python3.11-venv)")

    assert result.returncode == 0, result.stderr
    check = subprocess.run(
        [str(python), "-c", "import pip, sanity_probe; print(sanity_probe.VALUE)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "42"


def test_read_junit_and_summary_report_every_outcome(tmp_path: Path) -> None:
    """Passed, failed and skipped tests are all reported, with reasons and never-run tests."""
    cases = {
        "pep8": "",
        "pylint": '<failure message="1 issue">plugins/x.py:1:1: bad</failure>',
        "shellcheck-python-3.11": "<skipped>No tests applicable.</skipped>",
        "yamllint": "<skipped>Skipping sanity test because it is unsupported.</skipped>",
    }
    for name, body in cases.items():
        (tmp_path / f"ansible-test-sanity-{name}.xml").write_text(
            '<?xml version="1.0" ?><testsuites><testsuite name="ansible-test">'
            f'<testcase classname="sanity" name="{name}">{body}</testcase>'
            "</testsuite></testsuites>"
        )

    outcomes = runner.read_junit(tmp_path)
    statuses = {o.test: o.status for o in outcomes}
    assert statuses == {
        "pep8": "passed",
        "pylint": "failed",
        "shellcheck-python-3.11": "skipped",
        "yamllint": "skipped",
    }
    summary = runner.summarize(outcomes, ["pep8", "pylint", "shellcheck", "yamllint", "pslint"])
    assert "ran and passed (1): pep8" in summary
    assert "ran and FAILED (1): pylint" in summary
    assert "shellcheck-python-3.11: no files in the collection that this test checks" in summary
    assert "yamllint: Skipping sanity test because it is unsupported." in summary
    assert "not run (disabled by default or not selected): pslint" in summary

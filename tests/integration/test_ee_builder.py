# SPDX-License-Identifier: GPL-3.0-or-later
"""``ansible-builder create`` on the documented execution environment, and its build context followed.

The EE definition is the one of docs/awx.md ("The execution environment"), kept in
``tests/ee/execution-environment.yml`` and ``tests/ee/requirements.yml`` (the first test checks
that they are what the page shows). The module builds what ``make dist`` builds, into a temporary
directory: the listener wheel (``pip wheel --no-deps`` of a copy of ``listener/``) and the
collection tarball (``ansible-galaxy collection build``), then runs ``ansible-builder create``
and checks the generated context:

* the files of ``additional_build_files`` are in ``context/_build/`` (the wheel, the tarball, the
  CA), and the Containerfile's stages copy them where the steps after them look: the galaxy
  stage installs the tarball that ``requirements.yml`` names, ``PIP_FIND_LINKS`` points at the
  wheels in the builder stage (before ``introspect``/``assemble``) and in the final stage (before
  ``install-from-bindep``), and ``callhome-listener`` runs after that install;
* the stages' work, done here on the host with the context's own files: the tarball installs with
  ``ansible-galaxy collection install --offline`` (ansible.netcommon and ansible.utils come from
  ``.deps`` here; in the real build from Galaxy or an Automation Hub), the context's
  ``scripts/introspect.py`` finds the collection's Python requirements (one line,
  ``netconf-callhome[ansible]``) and no run-time system packages, and pip resolves those
  requirements with ``PIP_FIND_LINKS`` at the context's wheel directory, ``netconf-callhome`` from
  the wheel there (and not at all without it: no package of that name on the index shadows it),
  ansible-core within the extra's bounds, which are the ones the EE definition asks the image for.

Building the image itself needs a container runtime (podman or docker) and the base image from
quay.io: out of scope here, as is the Galaxy download of ansible.netcommon and ansible.utils.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import yaml
from packaging.requirements import Requirement

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
EE_DIR = REPO / "tests" / "ee"
AWX_DOC = REPO / "docs" / "awx.md"
VENV_BIN = Path(sys.executable).parent
DEPS = REPO / ".deps"


def _tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            pytest.skip("%s is not installed next to %s (requirements-test.txt)" % (name, sys.executable))
        return found
    return str(path)


def _run(cmd: List[str], **kwargs) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False, **kwargs)
    assert res.returncode == 0, "%s failed (rc=%d):\n%s\n%s" % (cmd, res.returncode, res.stdout[-3000:], res.stderr[-3000:])
    return res


def _doc_yaml_after(marker: str) -> object:
    """The first ```yaml block after ``marker`` in docs/awx.md, parsed."""
    text = AWX_DOC.read_text()
    block = re.search(r"```yaml\n(.*?)```", text[text.index(marker):], re.S)
    assert block, "no yaml block after %r in %s" % (marker, AWX_DOC)
    return yaml.safe_load(block.group(1))


def build_dist(out: Path) -> Tuple[Path, Path]:
    """What ``make dist`` builds: (listener wheel, collection tarball), into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    src = out.parent / "listener-src"  # a copy, so that the build writes nothing into the checkout
    shutil.copytree(REPO / "listener", src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".mypy_cache"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)])
    _run([_tool("ansible-galaxy"), "collection", "build", "-f", "--output-path", str(out), str(REPO)])
    (wheel,) = out.glob("netconf_callhome-*.whl")
    (tarball,) = out.glob("netconf-callhome-*.tar.gz")
    return wheel, tarball


def stages(containerfile: str) -> Dict[str, List[str]]:
    """{stage name: its instructions, in order} (continuation lines joined)."""
    out: Dict[str, List[str]] = {}
    current = "_args"
    for line in containerfile.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if match:
            current = match.group(1)
        out.setdefault(current, []).append(line)
    return out


def index(steps: List[str], pattern: str) -> int:
    """Position of the first instruction matching ``pattern`` (a regex); fails if there is none."""
    for i, step in enumerate(steps):
        if re.search(pattern, step):
            return i
    raise AssertionError("no instruction matching %r in:\n%s" % (pattern, "\n".join(steps)))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """The EE directory (definition, dist/, listener-ca.pem) and its generated context."""
    builder = _tool("ansible-builder")
    base = tmp_path_factory.mktemp("ee")
    ee = base / "ee"
    ee.mkdir()
    for name in ("execution-environment.yml", "requirements.yml"):
        shutil.copy(EE_DIR / name, ee / name)
    wheel, tarball = build_dist(ee / "dist")
    import trustme

    trustme.CA().cert_pem.write_to_path(str(ee / "listener-ca.pem"))
    context = base / "context"
    _run([builder, "create", "-f", str(ee / "execution-environment.yml"), "-c", str(context),
          "--output-filename", "Containerfile"], cwd=str(ee))
    return {"ee": ee, "context": context, "wheel": wheel, "tarball": tarball}


def test_ee_definition_is_the_documented_one() -> None:
    assert yaml.safe_load((EE_DIR / "execution-environment.yml").read_text()) == \
        _doc_yaml_after("`execution-environment.yml`:")
    assert yaml.safe_load((EE_DIR / "requirements.yml").read_text()) == _doc_yaml_after("`requirements.yml`:")


def test_additional_build_files_are_what_make_dist_builds(built: Dict[str, Path]) -> None:
    """The definition names the files by version: they must be the ones this checkout builds."""
    definition = yaml.safe_load((built["ee"] / "execution-environment.yml").read_text())
    sources = {Path(f["src"]).name: f["dest"] for f in definition["additional_build_files"]}
    assert sources.get(built["wheel"].name) == "wheels", (sources, built["wheel"].name)
    assert sources.get(built["tarball"].name) == "collections", (sources, built["tarball"].name)
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    assert built["tarball"].name == "netconf-callhome-%s.tar.gz" % galaxy["version"]
    context = built["context"] / "_build"
    for name, dest in sources.items():
        assert (context / dest / name).is_file(), "%s not copied into the build context" % name
    assert (context / "wheels" / built["wheel"].name).read_bytes() == built["wheel"].read_bytes()
    assert (context / "collections" / built["tarball"].name).read_bytes() == built["tarball"].read_bytes()
    with zipfile.ZipFile(built["wheel"]) as whl:
        entry_points = next(n for n in whl.namelist() if n.endswith(".dist-info/entry_points.txt"))
        assert "callhome-listener = netconf_callhome.cli:main" in whl.read(entry_points).decode()


def test_containerfile_stages_see_the_wheel_and_the_tarball(built: Dict[str, Path]) -> None:
    text = (built["context"] / "Containerfile").read_text()
    st = stages(text)
    assert re.search(r'ARG ANSIBLE_INSTALL_REFS=".*ansible-core.*ansible-runner', text), "ansible-core and runner"

    galaxy = st["galaxy"]
    install = index(galaxy, r"ansible-galaxy collection install .*-r requirements\.yml")
    assert index(galaxy, r"^COPY _build/collections/ /tmp/collections/$") < install
    assert index(galaxy, r"^COPY _build /build$") < install  # requirements.yml from _build/
    reqs = yaml.safe_load((built["context"] / "_build" / "requirements.yml").read_text())
    files = [c["name"] for c in reqs["collections"] if c.get("type") == "file"]
    assert files == ["/tmp/collections/%s" % built["tarball"].name]

    for stage, runs in (("builder", r"RUN .*/output/scripts/assemble"), ("final", r"RUN /output/scripts/install-from-bindep")):
        steps = st[stage]
        at = index(steps, runs)
        assert index(steps, r"^COPY _build/wheels/ /tmp/wheels/$") < at, stage
        assert index(steps, r"^ENV PIP_FIND_LINKS=/tmp/wheels$") < at, stage
    builder = st["builder"]
    assert index(builder, r"ENV PIP_FIND_LINKS") < index(builder, r"introspect\.py introspect")
    final = st["final"]
    installed = index(final, r"install-from-bindep")
    assert installed < index(final, r"^RUN callhome-listener --help") < index(final, r"^RUN rm -rf /tmp/wheels")
    assert index(final, r"^COPY --from=galaxy /usr/share/ansible /usr/share/ansible$") < installed
    assert index(final, r"^COPY _build/certs/listener-ca.pem /etc/pki/ca-trust/") < index(final, r"^RUN update-ca-trust")


@pytest.fixture(scope="module")
def galaxy_stage(built: Dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The galaxy stage on the host: its requirements.yml's file entries, /tmp/collections/ -> the context."""
    if not (DEPS / "ansible_collections" / "ansible" / "netcommon").is_dir():
        pytest.skip("ansible.netcommon is not in %s (make setup extracts it there)" % DEPS)
    context = built["context"] / "_build"
    reqs = yaml.safe_load((context / "requirements.yml").read_text())
    local = [dict(c, name=c["name"].replace("/tmp/collections/", str(context / "collections") + "/"))
             for c in reqs["collections"] if c.get("type") == "file"]
    host_reqs = tmp_path_factory.mktemp("galaxy") / "requirements.yml"
    host_reqs.write_text(yaml.safe_dump({"collections": local}))
    target = host_reqs.parent / "usr-share-ansible-collections"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(DEPS), ANSIBLE_NOCOLOR="1")
    for name in ("ANSIBLE_CONFIG", "PYTHONPATH"):  # neither may show this checkout as installed
        env.pop(name, None)
    _run([_tool("ansible-galaxy"), "collection", "install", "--offline", "-r", str(host_reqs), "-p", str(target)],
         env=env, cwd=str(host_reqs.parent))
    return target


def test_galaxy_stage_installs_the_collection_tarball(galaxy_stage: Path) -> None:
    coll = galaxy_stage / "ansible_collections" / "netconf" / "callhome"
    manifest = json.loads((coll / "MANIFEST.json").read_text())["collection_info"]
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    assert (manifest["namespace"], manifest["name"], manifest["version"]) == ("netconf", "callhome", galaxy["version"])
    assert set(manifest["dependencies"]) == {"ansible.netcommon", "ansible.utils"}
    for path in ("meta/execution-environment.yml", "requirements.txt", "bindep.txt", "plugins/connection/netconf.py"):
        assert (coll / path).is_file(), path
    assert not (coll / "listener" / "src").exists()  # the distribution ships as the wheel only


def test_builder_stage_introspects_and_pip_finds_the_wheel(built: Dict[str, Path], galaxy_stage: Path, tmp_path: Path) -> None:
    from bindep.depends import Depends

    scripts = built["context"] / "_build" / "scripts"
    pip_out, bindep_out = tmp_path / "requirements.txt", tmp_path / "bindep.txt"
    _run([sys.executable, str(scripts / "introspect.py"), "introspect", str(galaxy_stage),
          "--write-pip=%s" % pip_out, "--write-bindep=%s" % bindep_out])
    python = [ln.split("#")[0].strip() for ln in pip_out.read_text().splitlines() if ln.strip()]
    # one requirement, the distribution with its [ansible] extra (the one list, bounds included)
    assert [(r.name, sorted(r.extras)) for r in map(Requirement, python)] == [("netconf-callhome", ["ansible"])], python

    # bindep as assemble runs it on the centos image: nothing at run time, headers only to compile
    depends = Depends(bindep_out.read_text())
    platform = ["platform:rpm", "platform:centos", "platform:redhat"]
    assert [r[0] for r in depends.active_rules(["default"] + platform)] == []
    assert "python3-devel" in [r[0] for r in depends.active_rules(["compile"] + platform)]

    # assemble's `pip install -r /tmp/src/requirements.txt` with ENV PIP_FIND_LINKS=/tmp/wheels
    wheels = built["context"] / "_build" / "wheels"
    report = _pip_dry_run(pip_out, wheels)
    resolved = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i for i in report["install"]}
    got = resolved["netconf-callhome"]
    assert got["download_info"]["url"] == (wheels / built["wheel"].name).as_uri()
    for name in ("asyncssh", "cryptography", "pyyaml", "prometheus-client", "ncclient", "jmespath"):
        assert name in resolved, sorted(resolved)
    # ansible-core comes with the [ansible] extra, bounded there (the one place). The image already
    # holds one (ANSIBLE_INSTALL_REFS, from the definition's ansible_core), which pip keeps when it is
    # within the extra's bounds and would replace otherwise: the definition asks for exactly them.
    extra_core = _extra_requirement(built["wheel"], "ansible", "ansible-core")
    definition = yaml.safe_load((built["ee"] / "execution-environment.yml").read_text())
    image_core = Requirement(definition["dependencies"]["ansible_core"]["package_pip"])
    assert image_core.specifier == extra_core.specifier, (str(image_core), str(extra_core))
    assert resolved["ansible-core"]["metadata"]["version"] in extra_core.specifier

    # without the wheel directory nothing provides netconf-callhome
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    res = _pip_dry_run(pip_out, empty, check=False)
    assert res["returncode"] != 0 and "netconf-callhome" in res["stderr"], res


def _extra_requirement(wheel: Path, extra: str, name: str) -> Requirement:
    """The wheel's Requires-Dist for ``name`` under ``extra`` (its METADATA, as pip reads it)."""
    with zipfile.ZipFile(wheel) as whl:
        metadata = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        text = whl.read(metadata).decode()
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.name == name and req.marker is not None and req.marker.evaluate({"extra": extra}):
                return req
    raise AssertionError("%s has no %s in its [%s] extra" % (wheel.name, name, extra))


def _pip_dry_run(requirements: Path, find_links: Path, check: bool = True) -> Dict:
    env = dict(os.environ, PIP_FIND_LINKS=str(find_links), PIP_DISABLE_PIP_VERSION_CHECK="1")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                          "--report", "-", "-r", str(requirements)],
                         capture_output=True, text=True, timeout=240, env=env, check=False)
    if not check:
        return {"returncode": res.returncode, "stderr": res.stderr}
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)

# SPDX-License-Identifier: GPL-3.0-or-later
"""Install Ansible collections into a collections directory, offline, for the listener role.

Run by ``roles/listener`` (``ansible.builtin.script``) with one argument, a JSON object:
``dest`` (a collections path: collections go to ``DEST/ansible_collections/NS/NAME``),
``source``, ``collections`` (``["ansible.netcommon", ...]``) and ``check`` (true: change nothing,
say what would change).

``source`` is, on the listener host:

* a wheel of the ``ansible`` distribution (``pip download --no-deps ansible==X``): the collections
  are taken from its ``ansible_collections/NS/NAME/`` members;
* a directory of collection tarballs (``NS-NAME-VERSION.tar.gz``, as ``ansible-galaxy collection
  download`` or ``build`` writes them; the highest version is taken);
* a directory holding collection trees, ``NS/NAME/`` (an ``ansible_collections`` directory) or
  ``ansible_collections/NS/NAME/`` (a collections path).

A collection whose installed files equal the source's (same paths, same contents) is left alone,
so a second run changes nothing. Otherwise it is unpacked beside the old one and swapped in.
Prints one JSON object: ``changed``, ``collections`` (name -> version, action) and, on failure,
``msg`` (exit status 1).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import zipfile

SKIP_DIRS = ("__pycache__",)
SKIP_SUFFIXES = (".pyc", ".pyo")


class InstallError(Exception):
    """The source cannot provide what was asked for."""


def _wanted(relpath):
    parts = relpath.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InstallError("unsafe path in collection source: %r" % relpath)
    return not any(part in SKIP_DIRS for part in parts) and not relpath.endswith(SKIP_SUFFIXES)


def _version(files):
    """The collection's version from MANIFEST.json (built collections) or galaxy.yml (source trees)."""
    data = files.get("MANIFEST.json")
    if data is not None:
        try:
            return str(json.loads(data[0].decode("utf-8"))["collection_info"]["version"])
        except (ValueError, KeyError, TypeError):
            return ""
    data = files.get("galaxy.yml")
    if data is not None:
        match = re.search(r"^version:\s*['\"]?([^'\"\s]+)", data[0].decode("utf-8", "replace"), re.M)
        return match.group(1) if match else ""
    return ""


def _read_tree(top):
    """relpath -> (bytes, executable) of a collection tree on disk."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".callhome-"))
        for name in filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top).replace(os.sep, "/")
            if not _wanted(rel) or not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:
                files[rel] = (handle.read(), bool(os.stat(path).st_mode & stat.S_IXUSR))
    return files


def _from_wheel(wheel, namespace, name):
    prefix = "ansible_collections/%s/%s/" % (namespace, name)
    files = {}
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.filename.startswith(prefix) and not info.is_dir():
                rel = info.filename[len(prefix):]
                if _wanted(rel):
                    executable = bool((info.external_attr >> 16) & stat.S_IXUSR)
                    files[rel] = (archive.read(info), executable)
    if not files:
        raise InstallError("the wheel %s holds no %s.%s (%s)" % (wheel, namespace, name, prefix))
    return files, "wheel %s" % os.path.basename(wheel)


def _version_key(text):
    return [int(part) if part.isdigit() else -1 for part in re.split(r"[.+-]", text)]


def _from_tarballs(directory, namespace, name):
    pattern = re.compile(r"^%s-%s-(.+)\.tar\.gz$" % (re.escape(namespace), re.escape(name)))
    found = []
    for entry in os.listdir(directory):
        match = pattern.match(entry)
        if match:
            found.append((_version_key(match.group(1)), entry))
    if not found:
        return None
    tarball = os.path.join(directory, max(found)[1])
    files = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            if not member.isfile():
                continue
            rel = member.name[2:] if member.name.startswith("./") else member.name
            if _wanted(rel):
                handle = archive.extractfile(member)
                files[rel] = (handle.read() if handle else b"", bool(member.mode & stat.S_IXUSR))
    return files, "tarball %s" % os.path.basename(tarball)


def read_source(source, namespace, name):
    """relpath -> (bytes, executable) of collection NAMESPACE.NAME in SOURCE, and what it came from."""
    if os.path.isfile(source):
        if not source.endswith(".whl"):
            raise InstallError("collections source %s is a file but not a wheel (.whl)" % source)
        return _from_wheel(source, namespace, name)
    if not os.path.isdir(source):
        raise InstallError("collections source %s does not exist on the listener host" % source)
    found = _from_tarballs(source, namespace, name)
    if found is not None:
        return found
    for top in (os.path.join(source, namespace, name), os.path.join(source, "ansible_collections", namespace, name)):
        if os.path.isdir(top):
            files = _read_tree(top)
            if files:
                return files, "directory %s" % top
    raise InstallError(
        "collection %s.%s is not in %s: no %s-%s-VERSION.tar.gz, no %s/%s/ and no ansible_collections/%s/%s/ there"
        % (namespace, name, source, namespace, name, namespace, name, namespace, name)
    )


def digest(files):
    sha = hashlib.sha256()
    for rel in sorted(files):
        data, executable = files[rel]
        sha.update(("%s\0%d\0%d\0" % (rel, executable, len(data))).encode("utf-8"))
        sha.update(hashlib.sha256(data).digest())
    return sha.hexdigest()


def write_tree(top, files):
    for rel, (data, executable) in files.items():
        path = os.path.join(top, *rel.split("/"))
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, 0o755 if executable else 0o644)
    for dirpath, dirnames, _filenames in os.walk(top):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
    os.chmod(top, 0o755)


def install(spec):
    dest = os.path.join(spec["dest"], "ansible_collections")
    check = bool(spec.get("check"))
    report = {"changed": False, "collections": {}}
    for fqcn in spec["collections"]:
        parts = fqcn.split(".")
        if len(parts) != 2 or not all(re.match(r"^[a-z0-9_]+$", p) for p in parts):
            raise InstallError("%r is not a collection name (namespace.name)" % fqcn)
        namespace, name = parts
        files, origin = read_source(spec["source"], namespace, name)
        target = os.path.join(dest, namespace, name)
        installed = _read_tree(target) if os.path.isdir(target) else {}
        same = bool(installed) and digest(installed) == digest(files)
        action = "unchanged" if same else ("replaced" if installed else "installed")
        report["collections"][fqcn] = {"version": _version(files), "from": origin, "action": action, "path": target}
        if same:
            continue
        report["changed"] = True
        if check:
            continue
        parent = os.path.dirname(target)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        for path in (spec["dest"], dest, parent):
            os.chmod(path, 0o755)
        new = tempfile.mkdtemp(prefix=".callhome-new-%s-" % name, dir=parent)
        old = None
        try:
            write_tree(new, files)
            if os.path.lexists(target):
                old = tempfile.mkdtemp(prefix=".callhome-old-%s-" % name, dir=parent)
                os.rename(target, os.path.join(old, name))
            os.rename(new, target)
            new = None
        finally:
            for leftover in (new, old):
                if leftover:
                    shutil.rmtree(leftover, ignore_errors=True)
    return report


def main():
    try:
        spec = json.loads(sys.argv[1])
        report = install(spec)
    except (InstallError, OSError, zipfile.BadZipFile, tarfile.TarError, IndexError, KeyError, ValueError) as exc:
        print(json.dumps({"changed": False, "failed": True, "msg": "%s: %s" % (type(exc).__name__, exc)}))
        return 1
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

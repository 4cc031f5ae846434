# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""The trust store: which device owns which SSH host key / TLS certificate identity.

**PRIVATE** to the collection. Stdlib only: the listener, the enroll module and the CLI share it.

The file is JSON (human-readable, diff-friendly: sorted keys, two-space indent)::

    {
      "version": 1,
      "devices": {
        "r1": {
          "ssh_host_keys": ["ssh-ed25519 AAAAC3... r1", "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"],
          "tls_fingerprints": ["AB:CD:..."],
          "tls_identities": ["serial:PID-1234", "cn:r1.example.net"],
          "credentials": {"username": "netconf", "private_key_file": "/etc/callhome/id_ed25519"},
          "outbound_ssh": {"secret": "file:/etc/callhome/r1.secret", "allow_rotation": false}
        }
      },
      "outbound_ssh_groups": {
        "branch": {"device_ids": ["br-*"], "secret": "env:BRANCH_SECRET", "allow_rotation": false}
      }
    }

Credentials and outbound-ssh secrets are *references* (files, environment variable names), never
secrets, so the store can be read by operators (policy/secrets.py). RFC 8071 section 3.1 C7: credentials are used only with the host key
they are filed under, which is why they live in the device entry.

Writers take an exclusive ``flock`` on ``<file>.lock``, re-read, modify, then write a temporary
file in the same directory, fsync it, chmod 0600 and rename it over the store, so a reader (the
listener reloading) sees either the old or the new file, and two writers never lose an update.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import glob
import json
import os
import tempfile
import time
import typing as t

from netconf_callhome.errors import ConfigError, TrustStoreError
from netconf_callhome.fingerprints import (
    normalize_cert_fingerprint,
    normalize_ssh_fingerprint,
    ssh_fingerprint,
)
from netconf_callhome.policy.secrets import parse_reference, validate_binding, validate_group

FORMAT_VERSION = 1
DEVICE_KEYS = ("ssh_host_keys", "tls_fingerprints", "tls_identities", "credentials", "comment", "outbound_ssh")
CREDENTIAL_KEYS = ("username", "private_key_file", "password_file", "password_env")
IDENTITY_PREFIXES = ("cn:", "serial:", "dns:", "uri:", "ip:")

TrustData = t.Dict[str, t.Any]

# Temporary files of a write: ``<dir>/.trust-XXXX.tmp``. One older than this was left by a writer
# that died before its rename (kill -9): a live write renames its file within milliseconds.
TEMP_PREFIX = ".trust-"
TEMP_SUFFIX = ".tmp"
STALE_TEMP_SECONDS = 60.0


def empty_store() -> TrustData:
    return {"version": FORMAT_VERSION, "devices": {}}


def ssh_key_fingerprint(entry: str) -> str:
    """Fingerprint of a trust-store SSH entry: a public key line or a bare fingerprint."""
    if entry.strip().upper().startswith("SHA256:"):
        return normalize_ssh_fingerprint(entry)
    return ssh_fingerprint(entry)


def normalize_identity(value: str) -> str:
    value = value.strip()
    prefix, sep, rest = value.partition(":")
    if not sep or prefix.lower() + ":" not in IDENTITY_PREFIXES or not rest:
        raise ConfigError(
            "TLS identity must be one of %s followed by a value, e.g. 'serial:FOC1234X' or 'cn:r1': %r"
            % (", ".join(IDENTITY_PREFIXES), value)
        )
    return prefix.lower() + ":" + rest


def validate(data: t.Any, *, source: str = "trust store") -> TrustData:
    """Check the structure and every key/fingerprint; raise TrustStoreError naming the culprit."""
    if not isinstance(data, dict) or not isinstance(data.get("devices", {}), dict):
        raise TrustStoreError("%s: top level must be an object with a 'devices' object" % source)
    version = data.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise TrustStoreError(
            "%s: unsupported format version %r (this code reads %d)" % (source, version, FORMAT_VERSION)
        )
    for name, entry in data.get("devices", {}).items():
        where = "%s: device %r" % (source, name)
        if not isinstance(entry, dict):
            raise TrustStoreError("%s must be an object" % where)
        unknown = set(entry) - set(DEVICE_KEYS)
        if unknown:
            raise TrustStoreError("%s has unknown fields: %s" % (where, ", ".join(sorted(unknown))))
        try:
            for key in entry.get("ssh_host_keys", []):
                ssh_key_fingerprint(key)
            for fp in entry.get("tls_fingerprints", []):
                normalize_cert_fingerprint(fp)
            for ident in entry.get("tls_identities", []):
                normalize_identity(ident)
        except ConfigError as exc:
            raise TrustStoreError("%s: %s" % (where, exc.message)) from None
        creds = entry.get("credentials", {})
        if not isinstance(creds, dict) or set(creds) - set(CREDENTIAL_KEYS):
            raise TrustStoreError("%s: credentials may only hold %s" % (where, ", ".join(CREDENTIAL_KEYS)))
        if "password" in creds:
            raise TrustStoreError("%s: passwords are never stored here; use password_file or password_env" % where)
        if "outbound_ssh" in entry:
            try:
                validate_binding(entry["outbound_ssh"], where)
            except ConfigError as exc:
                raise TrustStoreError(exc.message) from None
    groups = data.get("outbound_ssh_groups", {})
    if not isinstance(groups, dict):
        raise TrustStoreError("%s: outbound_ssh_groups must be an object (group name -> group)" % source)
    for name, group in groups.items():
        try:
            validate_group(name, group)
        except ConfigError as exc:
            raise TrustStoreError("%s: %s" % (source, exc.message)) from None
    data.setdefault("version", FORMAT_VERSION)
    data.setdefault("devices", {})
    return data


class TrustStore:
    """A trust store file with safe concurrent read-modify-write."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    @property
    def lock_path(self) -> str:
        return self.path + ".lock"

    def stat_signature(self) -> t.Optional[t.Tuple[int, int, int]]:
        """Cheap change detector for reloads (inode, size, mtime_ns)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self) -> TrustData:
        self._sweep_if_unlocked()
        return self._read()

    def _read(self) -> TrustData:
        try:
            with open(self.path, "r", encoding="utf-8") as handle:
                raw = handle.read()
        except FileNotFoundError:
            return empty_store()
        except OSError as exc:
            raise TrustStoreError("cannot read trust store %s: %s" % (self.path, exc.strerror)) from None
        if not raw.strip():
            return empty_store()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise TrustStoreError("trust store %s is not valid JSON: %s" % (self.path, exc)) from None
        return validate(data, source=self.path)

    def remove_stale_temp_files(self, *, max_age: float = STALE_TEMP_SECONDS) -> t.List[str]:
        """Remove the temporary files of writes that died before their rename (older than
        ``max_age`` seconds); call with the lock held, so no write of this store is under way.
        Returns the paths removed. Files that cannot be removed are left (a reader without
        write permission on the directory)."""
        removed: t.List[str] = []
        cutoff = time.time() - max_age
        pattern = os.path.join(glob.escape(os.path.dirname(self.path)), TEMP_PREFIX + "*" + TEMP_SUFFIX)
        for tmp in glob.glob(pattern):
            try:
                if os.lstat(tmp).st_mtime < cutoff:
                    os.unlink(tmp)
                    removed.append(tmp)
            except OSError:
                continue
        return removed

    def _sweep_if_unlocked(self) -> None:
        """On a read: sweep stale temporary files if the lock is free right now. Never waits
        (readers must not queue behind a writer), never fails and creates nothing: without a
        lock file no writer ever ran here, so nothing is left to sweep; a reader that cannot
        open it leaves the sweep to the next writer, which sweeps under the lock."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return
        try:
            self.remove_stale_temp_files()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self) -> t.Iterator[None]:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write(self, data: TrustData) -> None:
        directory = os.path.dirname(self.path)
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def update(
        self, mutate: t.Callable[[TrustData], t.Any], *, dry_run: bool = False
    ) -> t.Tuple[t.Any, TrustData, TrustData]:
        """Apply ``mutate`` to a fresh copy under the lock; write only when it changed something.

        Returns ``(mutate's result, before, after)``; ``dry_run`` computes without writing
        (Ansible check mode).
        """
        with self._locked():
            self.remove_stale_temp_files()
            before = self._read()
            after = copy.deepcopy(before)
            result = mutate(after)
            validate(after, source=self.path)
            if after != before and not dry_run:
                self._write(after)
        return result, before, after


class TrustIndex:
    """Lookup tables built from trust data: fingerprint/identity -> device name."""

    def __init__(self, data: TrustData) -> None:
        self.devices: t.Dict[str, t.Dict[str, t.Any]] = data.get("devices", {})
        # Outbound-ssh group secrets (references): group name -> {device_ids, secret, allow_rotation}.
        self.outbound_ssh_groups: t.Dict[str, t.Dict[str, t.Any]] = data.get("outbound_ssh_groups", {})
        self.ssh: t.Dict[str, str] = {}
        self.tls: t.Dict[str, str] = {}
        self.identities: t.Dict[str, str] = {}
        for name, entry in self.devices.items():
            for key in entry.get("ssh_host_keys", []):
                self.ssh[ssh_key_fingerprint(key)] = name
            for fp in entry.get("tls_fingerprints", []):
                self.tls[normalize_cert_fingerprint(fp)] = name
            for ident in entry.get("tls_identities", []):
                self.identities[normalize_identity(ident)] = name

    def has_ssh_identity(self, device: str) -> bool:
        return bool(self.devices.get(device, {}).get("ssh_host_keys"))

    def has_tls_identity(self, device: str) -> bool:
        entry = self.devices.get(device, {})
        return bool(entry.get("tls_fingerprints") or entry.get("tls_identities"))


# -- mutations shared by the listener's approve/revoke and the enroll module ---------------------


def add_identity(
    data: TrustData, device: str, *, kind: str, value: str, index: t.Optional["TrustIndex"] = None
) -> bool:
    """Enroll one identity (``kind`` in ssh_host_keys / tls_fingerprints / tls_identities).

    Refuses to move an identity silently from one device to another: that is how a stolen or
    re-used key would take over another device's credentials. Bulk callers pass one ``index``
    of ``data`` for all their calls (it is kept up to date here), which keeps enrolling N
    devices linear instead of quadratic.
    """
    if not device or "/" in device or device.strip() != device:
        raise ConfigError("invalid device name %r" % device)
    if index is None:
        index = TrustIndex(data)
    if kind == "ssh_host_keys":
        fp = ssh_key_fingerprint(value)
        owner = index.ssh.get(fp)
        canonical = value.strip()
    elif kind == "tls_fingerprints":
        fp = canonical = normalize_cert_fingerprint(value)
        owner = index.tls.get(fp)
    elif kind == "tls_identities":
        fp = canonical = normalize_identity(value)
        owner = index.identities.get(fp)
    else:
        raise ConfigError("unknown identity kind %r" % kind)
    if owner is not None and owner != device:
        raise ConfigError("%s is already enrolled for device %r; revoke it there first" % (fp, owner))
    entry = data.setdefault("devices", {}).setdefault(device, {})
    if owner == device:
        return False
    entry.setdefault(kind, []).append(canonical)
    {"ssh_host_keys": index.ssh, "tls_fingerprints": index.tls, "tls_identities": index.identities}[kind][fp] = device
    return True


# The canonical (comparable) form of each identity kind.
CANONICAL: t.Dict[str, t.Callable[[str], str]] = {
    "ssh_host_keys": ssh_key_fingerprint,
    "tls_fingerprints": normalize_cert_fingerprint,
    "tls_identities": normalize_identity,
}


def remove_identity(
    data: TrustData, device: str, *, kind: t.Optional[str] = None, value: t.Optional[str] = None
) -> bool:
    """Remove one identity, or the whole device when ``value`` is None."""
    devices = data.get("devices", {})
    if device not in devices:
        return False
    if value is None:
        del devices[device]
        return True
    entry = devices[device]
    kinds = [kind] if kind else ["ssh_host_keys", "tls_fingerprints", "tls_identities"]
    changed = False
    for k in kinds:
        items = entry.get(k, [])
        canon = CANONICAL[k]
        try:
            target = canon(value)
        except ConfigError:
            continue  # the value is not of this kind
        keep = [i for i in items if canon(i) != target]
        if len(keep) != len(items):
            entry[k] = keep
            changed = True
    return changed


def set_credentials(data: TrustData, device: str, credentials: t.Mapping[str, t.Any]) -> bool:
    clean = {k: v for k, v in credentials.items() if v not in (None, "")}
    bad = set(clean) - set(CREDENTIAL_KEYS)
    if bad:
        raise ConfigError("unsupported credential fields: %s" % ", ".join(sorted(bad)))
    entry = data.setdefault("devices", {}).setdefault(device, {})
    if entry.get("credentials", {}) == clean:
        return False
    if clean:
        entry["credentials"] = clean
    else:
        entry.pop("credentials", None)
    return True


# -- outbound-ssh secrets (references only, policy/secrets.py) -----------------------------------


def set_outbound_ssh(data: TrustData, device: str, reference: t.Optional[str], *, allow_rotation: bool = False) -> bool:
    """Give ``device`` its own outbound-ssh secret reference (None removes it). The device entry is
    created when missing: a device pre-provisioned for zero-touch enrollment has a secret and no
    key yet."""
    if not device or "/" in device or device.strip() != device:
        raise ConfigError("invalid device name %r" % device)
    devices = data.setdefault("devices", {})
    if reference is None:
        entry = devices.get(device)
        if not entry or "outbound_ssh" not in entry:
            return False
        del entry["outbound_ssh"]
        if not entry:
            del devices[device]  # it held nothing else
        return True
    parse_reference(reference)
    wanted = {"secret": reference, "allow_rotation": bool(allow_rotation)}
    entry = devices.setdefault(device, {})
    if entry.get("outbound_ssh") == wanted:
        return False
    entry["outbound_ssh"] = wanted
    return True


def set_outbound_ssh_group(
    data: TrustData,
    name: str,
    device_ids: t.Optional[t.Sequence[str]],
    reference: t.Optional[str] = None,
    *,
    allow_rotation: bool = False,
) -> bool:
    """Define (or with ``device_ids`` None, remove) the outbound-ssh group ``name``."""
    if device_ids is None:
        groups = data.get("outbound_ssh_groups", {})
        if name not in groups:
            return False
        del groups[name]
        if not groups:
            del data["outbound_ssh_groups"]
        return True
    wanted = {"device_ids": list(device_ids), "secret": reference, "allow_rotation": bool(allow_rotation)}
    validate_group(name, wanted)
    groups = data.setdefault("outbound_ssh_groups", {})
    if groups.get(name) == wanted:
        return False
    groups[name] = wanted
    return True

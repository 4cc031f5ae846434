# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Outbound-ssh shared secrets: stored as references, resolved when a device calls, never shown.

**PRIVATE** to the collection. Stdlib only (the trust store, the enroll module and the CLI use it).

A Junos device configured with ``system services outbound-ssh client ... secret S`` sends its
host key in the preamble (``HOST-KEY``) with ``HMAC: HMAC-SHA1(key=S, msg=HOST-KEY)``. The
listener keeps only a *reference* to ``S``, in the trust store:

* per device: ``devices.<name>.outbound_ssh = {"secret": REF, "allow_rotation": false}``;
* per group: ``outbound_ssh_groups.<group> = {"device_ids": ["br-*"], "secret": REF,
  "allow_rotation": false}`` (``fnmatch`` patterns on the DEVICE-ID, case-sensitive).

``REF`` is ``env:NAME`` (a variable in the listener's environment) or ``file:/absolute/path``
(a regular file that only its owner, the listener's user or root, may read: mode ``0600`` or
``0400``; the ``ssh`` client refuses group/world-readable private keys for the same reason). The
value is read each time a device with a secret calls (so a rotated file needs no reload), and is
carried in a :class:`Secret`, whose ``repr`` never shows it.

Which secret applies to a DEVICE-ID: the device's own, else the one group whose pattern matches.
Two matching groups are a configuration error (refused, reason ``secret-unavailable``): picking
one silently would let a pattern added later change which secret a device is checked with.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import typing as t
from dataclasses import dataclass

from netconf_callhome.errors import ConfigError

MAX_SECRET_BYTES = 4096  # Junos secrets are short passphrases; a bigger file is the wrong file
REFERENCE_HELP = "a reference 'env:NAME' or 'file:/absolute/path' (the secret itself is never stored)"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Group names and DEVICE-ID patterns: printable, no whitespace (they are written in logs as-is).
_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PATTERN = re.compile(r"^[!-~]{1,253}$")
BINDING_KEYS = ("secret", "allow_rotation")
GROUP_KEYS = ("device_ids", "secret", "allow_rotation")


class SecretUnavailableError(ConfigError):
    """A secret applies to a device but cannot be read (unset variable, unsafe or missing file)."""

    code = "secret-unavailable"


class Secret:
    """A resolved secret. Its value is only handed out by :meth:`reveal`; ``repr``/``str`` name
    the reference, so a secret that ends up in a log line or a traceback shows nothing."""

    __slots__ = ("_value", "reference")

    def __init__(self, value: bytes, reference: str) -> None:
        self._value = value
        self.reference = reference

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(reference=%r, value=<redacted>)" % self.reference

    __str__ = __repr__

    def __reduce__(self) -> t.NoReturn:  # never pickled, copied to another process or cached on disk
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class SecretBinding:
    """Which secret checks a DEVICE-ID's HMAC, and what a verified device may do."""

    reference: str
    allow_rotation: bool
    source: str  # "device r1" or "group branch": what logs and messages name (never the value)


def parse_reference(reference: t.Any) -> t.Tuple[str, str]:
    """``("env", NAME)`` or ``("file", PATH)``; ConfigError otherwise. The error never repeats
    the value: what is not a reference may be the secret itself, pasted in the wrong place."""
    if isinstance(reference, str):
        scheme, sep, rest = reference.partition(":")
        if sep and scheme == "env" and _ENV_NAME.match(rest):
            return "env", rest
        if sep and scheme == "file" and os.path.isabs(rest) and "\0" not in rest:
            return "file", os.path.normpath(rest)
    length = len(reference) if isinstance(reference, str) else 0
    raise ConfigError(
        "an outbound-ssh secret must be %s; got a value of %d characters that is not one (not shown: "
        "it may be the secret itself)" % (REFERENCE_HELP, length)
    )


def resolve(reference: str, *, environ: t.Optional[t.Mapping[str, str]] = None) -> Secret:
    """Read the secret a reference names (SecretUnavailableError says why it cannot)."""
    scheme, where = parse_reference(reference)
    if scheme == "env":
        value = (os.environ if environ is None else environ).get(where)
        if value is None:
            raise SecretUnavailableError(
                "secret %s: the environment variable %s is not set in the listener's environment" % (reference, where)
            )
        raw = value.encode("utf-8")
    else:
        raw = _read_secret_file(reference, where)
    raw = raw.rstrip(b"\r\n")  # a file written by echo or an editor ends with a newline
    if not raw:
        raise SecretUnavailableError("secret %s is empty" % reference)
    if len(raw) > MAX_SECRET_BYTES:
        raise SecretUnavailableError("secret %s is longer than %d bytes" % (reference, MAX_SECRET_BYTES))
    return Secret(raw, reference)


def _read_secret_file(reference: str, path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SecretUnavailableError("secret %s: cannot open %s: %s" % (reference, path, exc.strerror)) from None
    try:
        st = os.fstat(fd)  # of the file opened, not of a path that may be swapped in between
        if not stat.S_ISREG(st.st_mode):
            raise SecretUnavailableError("secret %s: %s is not a regular file" % (reference, path))
        if st.st_mode & 0o077:
            raise SecretUnavailableError(
                "secret %s: %s is readable or writable by group or others (mode %04o); refused: "
                "chmod 600 %s" % (reference, path, stat.S_IMODE(st.st_mode), path)
            )
        if st.st_uid not in (os.geteuid(), 0):
            raise SecretUnavailableError(
                "secret %s: %s belongs to uid %d, neither the listener's user (uid %d) nor root; refused"
                % (reference, path, st.st_uid, os.geteuid())
            )
        chunks: t.List[bytes] = []
        size = 0
        while size < MAX_SECRET_BYTES + 3:  # enough to tell an oversized file (a final CRLF is allowed)
            chunk = os.read(fd, MAX_SECRET_BYTES + 3 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise SecretUnavailableError("secret %s: cannot read %s: %s" % (reference, path, exc.strerror)) from None
    finally:
        os.close(fd)


# -- the trust store's outbound_ssh entries ----------------------------------------------------


def validate_binding(value: t.Any, where: str) -> None:
    """A device's ``outbound_ssh`` object; ConfigError naming ``where``."""
    if not isinstance(value, dict) or "secret" not in value:
        raise ConfigError("%s: outbound_ssh must be an object with secret (and allow_rotation)" % where)
    unknown = set(value) - set(BINDING_KEYS)
    if unknown:
        raise ConfigError("%s: outbound_ssh has unknown fields: %s" % (where, ", ".join(sorted(unknown))))
    _check_common(value, where)


def validate_group(name: t.Any, value: t.Any) -> None:
    """One ``outbound_ssh_groups`` entry; ConfigError naming the group."""
    if not isinstance(name, str) or not _GROUP_NAME.match(name):
        raise ConfigError("outbound_ssh_groups: invalid group name %r (letters, digits, '.', '_', '-')" % (name,))
    where = "outbound-ssh group %r" % name
    if not isinstance(value, dict) or "secret" not in value:
        raise ConfigError("%s must be an object with device_ids and secret" % where)
    unknown = set(value) - set(GROUP_KEYS)
    if unknown:
        raise ConfigError("%s has unknown fields: %s" % (where, ", ".join(sorted(unknown))))
    patterns = value.get("device_ids")
    if not isinstance(patterns, list) or not patterns:
        raise ConfigError("%s: device_ids must be a non-empty list of DEVICE-ID patterns (fnmatch)" % where)
    for pattern in patterns:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            raise ConfigError("%s: invalid DEVICE-ID pattern %r (printable, no spaces)" % (where, pattern))
    _check_common(value, where)


def _check_common(value: t.Mapping[str, t.Any], where: str) -> None:
    try:
        parse_reference(value.get("secret"))
    except ConfigError as exc:
        raise ConfigError("%s: %s" % (where, exc.message)) from None
    if not isinstance(value.get("allow_rotation", False), bool):
        raise ConfigError("%s: allow_rotation must be true or false" % where)


def binding_for(
    device_id: str, devices: t.Mapping[str, t.Mapping[str, t.Any]], groups: t.Mapping[str, t.Mapping[str, t.Any]]
) -> t.Optional[SecretBinding]:
    """The secret that checks ``device_id``'s HMAC: the device's own, else its one group; None
    when no secret applies. SecretUnavailableError when several groups claim it."""
    if not device_id:
        return None  # a pattern like '*' must not cover a device that names nothing
    own = devices.get(device_id, {}).get("outbound_ssh")
    if own:
        return SecretBinding(own["secret"], bool(own.get("allow_rotation", False)), "device %s" % device_id)
    matches = sorted(
        name
        for name, group in groups.items()
        if any(fnmatch.fnmatchcase(device_id, pattern) for pattern in group.get("device_ids", []))
    )
    if len(matches) > 1:
        raise SecretUnavailableError(
            "DEVICE-ID %r matches several outbound-ssh groups (%s); make their device_ids disjoint or give "
            "the device its own secret" % (device_id, ", ".join(matches))
        )
    if not matches:
        return None
    group = groups[matches[0]]
    return SecretBinding(group["secret"], bool(group.get("allow_rotation", False)), "group %s" % matches[0])


__all__ = (
    "MAX_SECRET_BYTES",
    "REFERENCE_HELP",
    "Secret",
    "SecretBinding",
    "SecretUnavailableError",
    "binding_for",
    "parse_reference",
    "resolve",
    "validate_binding",
    "validate_group",
)

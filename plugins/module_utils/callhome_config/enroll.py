# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Enrolling device identities in the listener's trust store (``netconf.callhome.enroll``).

**PRIVATE** to the collection. The rule throughout: a key nobody vouched for is never enrolled.
A key given explicitly (public key, fingerprint, certificate, CA identity) is vouched for by
whoever wrote the playbook. A key *observed* (read from the device over SSH, or recorded by the
listener when the device called) is only enrolled when it matches ``expected_fingerprint``, or
when the caller said ``trust_on_first_use``; and an observed key that differs from one already
enrolled for the device is a key mismatch, refused unless ``replace_existing``.

Writes go through the listener's control socket when it runs (op ``enroll``; until the listener
has it, the trust store file is written under its lock and the listener is told to ``reload``),
and to the trust store file directly when no listener answers.
"""

from __future__ import annotations

import asyncio
import os
import typing as t
from dataclasses import dataclass, field

from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import NetconfCallhomeMissing

try:
    from netconf_callhome.control.client import ControlClient, default_home, shared_store_of
    from netconf_callhome.errors import (
        CallHomeError,
        ConfigError,
        ControlError,
        KeyMismatchError,
        ListenerUnreachableError,
        UnknownKeyError,
    )
    from netconf_callhome.fingerprints import ssh_fingerprint
    from netconf_callhome.policy import trust_ops
    from netconf_callhome.policy.trust_ops import (
        Identity,
        PendingEntry,
        TrustChange,
        check_conflict,
        check_observed,
        explicit_identity,
        identities_of,
        kind_for_transport,
        mutate_add,
        mutate_remove,
        same_fingerprint,
    )
    from netconf_callhome.policy.trust_store import TrustStore
except ImportError:  # the enroll module fails with missing_required_lib before calling run()
    CallHomeError = ConfigError = ControlError = NetconfCallhomeMissing  # type: ignore[misc,assignment]
    KeyMismatchError = UnknownKeyError = NetconfCallhomeMissing  # type: ignore[misc,assignment]
    ListenerUnreachableError = NetconfCallhomeMissing  # type: ignore[misc,assignment]

SOURCES = ("pending", "ssh_scan", "public_key", "fingerprint", "certificate", "tls_fingerprint", "tls_identity")
OBSERVED = ("pending", "ssh_scan")
#: Call-home transports as the listener names them (pending entries, registry records).
TRANSPORTS = ("ssh", "tls", "restconf")
#: Which explicit sources identify a device of each transport. A certificate serves NETCONF over
#: TLS and RESTCONF alike: the listener gives both the same verdict (policy.verdicts,
#: CERTIFICATE_TRANSPORTS), so the trust store records the certificate, not the transport.
SOURCES_OF = {
    "ssh": ("pending", "ssh_scan", "public_key", "fingerprint"),
    "tls": ("pending", "certificate", "tls_fingerprint", "tls_identity"),
    "restconf": ("pending", "certificate", "tls_fingerprint", "tls_identity"),
}


@dataclass
class EnrollResult:
    changed: bool
    device: str
    fingerprint: t.Optional[str] = None
    kind: t.Optional[str] = None
    source: str = ""
    transport: str = ""  # of the approved pending entry, or the one the task named
    written_via: str = ""
    trust_store: str = ""
    before: t.List[str] = field(default_factory=list)
    after: t.List[str] = field(default_factory=list)
    warnings: t.List[str] = field(default_factory=list)

    def to_dict(self) -> t.Dict[str, t.Any]:
        return {k: v for k, v in self.__dict__.items() if k != "warnings"}


# -- reading a key from the device --------------------------------------------------------------


def scan_ssh_host_key(host: str, port: int = 830, *, timeout: float = 10.0, key_type: t.Optional[str] = None) -> str:
    """The host key the device presents on a direct SSH connection, as an OpenSSH line.

    Like ``ssh-keyscan``: key exchange only, no authentication. asyncssh when available
    (it is the listener's library), paramiko (ncclient's) otherwise.
    """
    try:
        import asyncssh
    except ImportError:  # pragma: no cover - depends on the controller
        return _scan_paramiko(host, port, timeout, key_type)

    async def scan() -> str:
        kwargs: t.Dict[str, t.Any] = {}
        if key_type:
            kwargs["server_host_key_algs"] = [key_type]
        key = await asyncio.wait_for(asyncssh.get_server_host_key(host, port, **kwargs), timeout)
        if key is None:
            raise ConfigError("%s:%d presented no host key" % (host, port))
        return key.export_public_key("openssh").decode("ascii").strip()

    try:
        return asyncio.run(scan())
    except asyncio.TimeoutError:
        raise ConfigError("no SSH host key from %s:%d within %.0f s" % (host, port, timeout)) from None
    except (OSError, asyncssh.Error) as exc:
        raise ConfigError("cannot read the SSH host key of %s:%d: %s" % (host, port, exc)) from None


def _scan_paramiko(host: str, port: int, timeout: float, key_type: t.Optional[str]) -> str:  # pragma: no cover
    import socket

    import paramiko

    sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        if key_type:
            transport.get_security_options().key_types = [key_type]
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return "%s %s" % (key.get_name(), key.get_base64())
    except (paramiko.SSHException, OSError) as exc:
        raise ConfigError("cannot read the SSH host key of %s:%d: %s" % (host, port, exc)) from None
    finally:
        transport.close()


# The rules (explicit_identity, check_observed, check_conflict, the add/remove mutations) live in
# netconf_callhome.policy.trust_ops, shared with the listener's approve/enroll/revoke; they are
# imported above and stay importable from here for older callers.


# -- where to write ----------------------------------------------------------------------------


class Enroller:
    """One run of the enroll module against a listener (if it answers) or a trust store file.

    A listener whose trust store is the shared database (``state_url`` on PostgreSQL: its
    ``status`` names a URL, not a file) is written through its control operations only, check
    mode included (their ``dry_run``): a file written instead would be read by no node. The same
    holds when no listener answers but the one of that control socket keeps its trust store in
    the database (:func:`shared_store_of`), and for a remote listener (``tls://``) that does not
    answer: both are an error, nothing is written."""

    # Control operations that compute their change without writing it when asked (check mode).
    DRY_RUN_OPS = ("enroll", "revoke", "secret")

    def __init__(self, *, listener: t.Optional[str], token: t.Optional[str], trust_store: t.Optional[str],
                 check_mode: bool) -> None:
        self.client = ControlClient(listener, token=token, timeout=15.0)
        self.trust_store_path = trust_store
        self.check_mode = check_mode
        self._status: t.Optional[t.Dict[str, t.Any]] = None
        self._reachable: t.Optional[bool] = None

    @property
    def listener_up(self) -> bool:
        if self._reachable is None:
            try:
                self._status = self.client.call("status")
                self._reachable = True
            except ListenerUnreachableError:
                self._reachable = False
        return self._reachable

    @property
    def shared_store(self) -> t.Optional[str]:
        """The shared trust store (redacted URL) of the running listener, or None (a file)."""
        if not self.listener_up:
            return None
        where = str((self._status or {}).get("trust_store") or "")
        return where if "://" in where else None

    def store(self) -> TrustStore:
        path = self.trust_store_path
        if not path and self.listener_up and self._status and not self.shared_store:
            path = self._status.get("trust_store")
        if not path:
            path = os.path.join(default_home(), "trust.json")
        return TrustStore(path)

    def file_store(self, what: str) -> TrustStore:
        """The trust store file to write ``what`` to directly, or an error when no node would
        read that file (see the class docs)."""
        explicit = self.trust_store_path
        if explicit and "://" in explicit:
            raise ConfigError("trust_store %s is not a file: a shared trust store is written through a running "
                              "listener (listener: its control address)" % explicit)
        shared = self.shared_store
        if shared:
            raise ControlError(
                "the listener at %s keeps its trust store in %s and does not take %s through its control socket "
                "(an older listener?); NOT written (a trust store file would be read by no node)"
                % (self.client.address, shared, what),
                details={"address": str(self.client.address), "trust_store": shared},
            )
        if not explicit and not self.listener_up:
            marker = shared_store_of(self.client.address)
            if marker:
                raise ListenerUnreachableError(
                    "no listener answers at %s, and the listener there keeps its trust store in %s (state_url): "
                    "%s is written through a running listener (start it, or set listener to another node's "
                    "control address); NOT written to a trust store file, which no node reads"
                    % (self.client.address, marker, what),
                    details={"address": str(self.client.address), "trust_store": marker},
                )
            if self.client.address.kind != "unix":
                raise ListenerUnreachableError(
                    "no listener answers at %s: %s is written through it (a remote listener's trust store is "
                    "not a file here); NOT written" % (self.client.address, what),
                    details={"address": str(self.client.address)},
                )
        return self.store()

    def pending(self) -> t.List[t.Dict[str, t.Any]]:
        if not self.listener_up:
            raise ListenerUnreachableError(
                "source: pending needs the running listener (keys devices presented are recorded there); "
                "no listener answers at %s" % (self.client.address,)
            )
        return list(self.client.call("pending") or [])

    def _through_listener(self, op: str) -> bool:
        """Whether ``op`` goes to the listener: always when it is up, except in check mode on a
        trust store file this process can read (computed there, nothing sent to the listener)."""
        if not self.listener_up:
            return False
        if not self.check_mode or self.shared_store:
            return True
        path = self.store().path
        readable = os.access(path, os.R_OK) or not os.path.exists(path)
        return op == "enroll" and not readable

    def call(self, op: str, op_args: t.Mapping[str, t.Any]) -> t.Optional[t.Dict[str, t.Any]]:
        """The listener's answer to ``op`` (``dry_run`` in check mode), or None when the change is
        to be made on the file (no listener, or one without the op and no shared store)."""
        if not self._through_listener(op):
            return None
        args = dict(op_args, dry_run=True) if self.check_mode else dict(op_args)
        try:
            return t.cast(t.Dict[str, t.Any], self.client.call(op, **args) or {})
        except ControlError as exc:
            if "unknown operation" not in exc.message or self.shared_store:
                raise
        return None

    def write(self, apply: t.Callable[[TrustStore, bool], TrustChange], op_args: t.Dict[str, t.Any],
              result: EnrollResult) -> None:
        """Through the listener's ``enroll``/``revoke`` op when it has one, else the file + ``reload``.

        ``apply(store, dry_run)`` is the same trust_ops operation the listener runs for ``op_args``,
        used on the file when no listener takes the op. Check mode never sends a mutating op to the
        listener: it computes the change on the trust store file, or asks the op with ``dry_run``
        (a listener on a shared store always).
        """
        op = op_args.pop("op")
        answer = self.call(op, op_args)
        if answer is not None:
            result.changed = bool(answer.get("changed"))
            result.written_via = "listener"
            result.before = list(answer.get("before") or result.before)
            result.after = list(answer.get("after") or result.after)
            return
        store = self.file_store("the %s of device %r" % (op, op_args.get("device")))
        change = apply(store, self.check_mode)
        result.changed = change.changed
        result.trust_store = store.path
        result.before = change.before
        result.after = change.after
        result.written_via = "file"
        if self._reload(change.changed, result.warnings, "trust store written"):
            result.written_via = "file+reload"

    def set_outbound_ssh_secret(self, device: str, reference: str, *,
                                allow_rotation: bool) -> t.Tuple[t.Dict[str, t.Any], t.List[str]]:
        """The device's outbound-ssh secret *reference*: the listener's ``secret`` op when it runs
        (into whatever store it uses, the shared database included), the file otherwise. The
        result carries references only, never a secret's value."""
        warnings: t.List[str] = []
        answer = self.call("secret", {"action": "set", "name": device, "reference": reference,
                                      "allow_rotation": allow_rotation})
        if answer is not None:
            via = "listener"
            change = answer
        else:
            store = self.file_store("the outbound-ssh secret of device %r" % device)
            change = trust_ops.set_outbound_ssh_secret(store, device, reference, allow_rotation=allow_rotation,
                                                       dry_run=self.check_mode)
            via = "file"
            if self._reload(bool(change["changed"]), warnings, "outbound-ssh secret written"):
                via = "file+reload"
        identities = list(change.get("identities") or [])  # a secret leaves them as they are
        out = {"changed": bool(change.get("changed")), "outbound_ssh": change.get("outbound_ssh"),
               "outbound_ssh_before": change.get("outbound_ssh_before"), "written_via": via,
               "before": identities, "after": identities}
        if via == "listener":
            out["trust_store"] = str((self._status or {}).get("trust_store") or "")
        else:
            out["trust_store"] = self.store().path
        return out, warnings

    def _reload(self, changed: bool, warnings: t.List[str], what: str) -> bool:
        """After a file write, tell a running listener to re-read it (it would within a second)."""
        if not (self.listener_up and changed and not self.check_mode):
            return False
        try:
            self.client.call("reload")
            return True
        except CallHomeError as exc:
            warnings.append("%s, but the listener did not reload it: %s (it re-reads the file by itself within "
                            "a second)" % (what, exc.message))
            return False


def run(params: t.Mapping[str, t.Any], *, check_mode: bool,
        scan: t.Callable[..., str] = scan_ssh_host_key) -> EnrollResult:
    """The whole module: resolve the identity, check it, write it (see module docs)."""
    device = params["device"]
    state = params.get("state") or "present"
    source = params.get("source")
    enroller = Enroller(listener=params.get("listener"), token=params.get("listener_token"),
                        trust_store=params.get("trust_store"), check_mode=check_mode)
    expected = params.get("expected_fingerprint")
    tofu = bool(params.get("trust_on_first_use"))
    replace = bool(params.get("replace_existing"))
    transport = params.get("transport") or ""
    if transport and transport not in TRANSPORTS:
        raise ConfigError("transport must be one of %s, got %r" % (", ".join(TRANSPORTS), transport))
    if transport and source and source not in SOURCES_OF[transport]:
        what = "SSH host key" if transport == "ssh" else "TLS certificate"
        raise ConfigError(
            "a %s device is identified by its %s: source %s does not apply (use %s)"
            % ("RESTCONF" if transport == "restconf" else transport.upper(), what, source,
               ", ".join(SOURCES_OF[transport]))
        )
    result = EnrollResult(changed=False, device=device, source=source or "", transport=transport)

    if state == "absent":
        identity = explicit_identity(source, params["value"]) if source and params.get("value") else None
        if source and source not in OBSERVED and not params.get("value"):
            raise ConfigError("state: absent with source %s needs value" % source)
        result.kind = identity.kind if identity else None
        result.fingerprint = identity.fingerprint if identity else None
        enroller.write(
            lambda store, dry_run: trust_ops.revoke(store, device, identity.value if identity else None,
                                                    kind=identity.kind if identity else None, dry_run=dry_run),
            {"op": "revoke", "device": device, "identity": identity.value if identity else None}, result)
        return result

    if source not in SOURCES:
        raise ConfigError("source must be one of %s" % ", ".join(SOURCES))
    if source == "pending":
        return _approve_pending(enroller, params, device, expected, tofu, replace, result)
    if source == "ssh_scan":
        host = params.get("host")
        if not host:
            raise ConfigError("source: ssh_scan needs host (the device's address for a direct SSH connection)")
        port = int(params.get("port") or 830)
        line = scan(host, port, timeout=float(params.get("timeout") or 10), key_type=params.get("key_type"))
        identity = Identity("ssh_host_keys", line, ssh_fingerprint(line), observed=True)
        check_observed(identity, expected=expected, tofu=tofu, where="%s:%d" % (host, port))
        if not expected:
            result.warnings.append("trusted on first use: %s from %s:%d" % (identity.fingerprint, host, port))
    else:
        if not params.get("value"):
            raise ConfigError("source: %s needs value" % source)
        identity = explicit_identity(source, params["value"])
        if expected and not same_fingerprint(identity.kind, identity.fingerprint, expected):
            raise KeyMismatchError("the given %s has fingerprint %s, not the expected %s; NOT enrolled"
                                   % (source, identity.fingerprint, expected))
    result.kind = identity.kind
    result.fingerprint = identity.fingerprint
    creds = {k: v for k, v in (params.get("credentials") or {}).items() if v not in (None, "")}
    op_args: t.Dict[str, t.Any] = {"op": "enroll", "device": device, "kind": identity.kind, "value": identity.value,
                                   "replace": replace, "observed": identity.observed}
    if creds:
        op_args["credentials"] = creds
    chosen = identity  # a name that is never None, for the closure
    enroller.write(
        lambda store, dry_run: trust_ops.enroll(store, device, chosen.kind, chosen.value, replace=replace,
                                                observed=chosen.observed, credentials=creds, dry_run=dry_run),
        op_args, result)
    return result


def _approve_pending(enroller: Enroller, params: t.Mapping[str, t.Any], device: str, expected: t.Optional[str],
                     tofu: bool, replace: bool, result: EnrollResult) -> EnrollResult:
    entries = enroller.pending()
    transport = params.get("transport")
    if transport:
        # Only what came over that transport: a device calling over SSH and RESTCONF has a pending
        # entry for each, and the task approves the one it names.
        mine = [p for p in entries if str(p.get("transport") or "ssh") == transport]
        if expected and not any(same_fingerprint(_kind(p), p.get("fingerprint", ""), expected) for p in mine):
            other = [str(p.get("transport") or "ssh") for p in entries
                     if same_fingerprint(_kind(p), p.get("fingerprint", ""), expected)]
            if other:
                raise UnknownKeyError(
                    "the pending key %s of device %r came over %s, not %s; NOT enrolled (set transport: %s if that "
                    "is the device)" % (expected, device, other[0], transport, other[0])
                )
        entries = mine
    if expected:
        chosen = [p for p in entries if same_fingerprint(_kind(p), p.get("fingerprint", ""), expected)]
    else:
        host = params.get("host")
        chosen = [p for p in entries if p.get("claimed_device") == device
                  or (host and str(p.get("peer", "")).rsplit(":", 1)[0].strip("[]") == host)]
    shared = enroller.shared_store
    # A shared trust store has no file to read: the listener's enroll op with dry_run says what is
    # enrolled (and applies the same rules as the file's check_conflict).
    data = {"devices": {}} if shared or not os.access(enroller.store().path, os.R_OK) else enroller.store().load()
    creds = {k: v for k, v in (params.get("credentials") or {}).items() if v not in (None, "")}
    if not chosen:
        if shared:
            found = _shared_view(enroller, device, expected) if expected else None
            enrolled = [found[0]] if found else []
            result.after = result.before = found[1] if found else []
        else:
            enrolled = [k for k in ("ssh_host_keys", "tls_fingerprints")
                        if expected and any(same_fingerprint(k, v, expected) for v in identities_of(data, device))]
            result.after = result.before = identities_of(data, device)
        if enrolled:
            result.fingerprint = expected
            if creds:
                # Already enrolled: the credentials are still applied, never dropped silently. The
                # key is not added again (it is the device's already), so this is no observed key.
                kind = enrolled[0]
                result.kind = kind
                enroller.write(
                    lambda store, dry_run: trust_ops.enroll(store, device, kind, t.cast(str, expected),
                                                            credentials=creds, dry_run=dry_run),
                    {"op": "enroll", "device": device, "kind": kind, "value": expected, "credentials": creds}, result)
            return result  # already enrolled: nothing pending, nothing else to do
        raise UnknownKeyError(
            "no pending key %s for device %r at the listener (pending: %s)" % (
                "with fingerprint %s" % expected if expected else "claimed by or coming from it", device,
                ", ".join("%s from %s" % (p.get("fingerprint"), p.get("peer")) for p in entries) or "none"),
        )
    if len(chosen) > 1:
        raise ConfigError("several pending keys could belong to %r (%s); pass expected_fingerprint"
                          % (device, ", ".join(p.get("fingerprint", "?") for p in chosen)))
    pending = chosen[0]
    result.transport = str(pending.get("transport") or "ssh")
    identity = trust_ops.pending_identity(PendingEntry.from_mapping(pending))
    identity.pending = pending
    kind = identity.kind
    check_observed(identity, expected=expected, tofu=tofu,
                   where="the key device %r presented from %s" % (device, pending.get("peer")))
    result.kind, result.fingerprint = kind, identity.fingerprint
    result.written_via = "listener"
    if shared:
        # What approving would do, from the listener (its rules refuse a conflict as check_conflict does).
        extra_args = {"credentials": creds} if creds else {}
        preview = enroller.client.call("enroll", device=device, kind=kind, value=identity.value, replace=replace,
                                       observed=True, dry_run=True, **extra_args) or {}
        result.before = list(preview.get("before") or [])
        result.after = list(preview.get("after") or [])
        result.changed = bool(preview.get("changed", True))
    else:
        check_conflict(data, device, identity, replace=replace)
        result.before = identities_of(data, device)
        result.changed = True
    if not enroller.check_mode:
        # ``replace`` makes the listener's approve replace the device's other key of this kind
        # (trust_ops.approve_pending); a listener that predates it ignores the field.
        # ``credentials`` are written with the key, in the same locked write (trust_ops.approve_pending).
        extra = {"credentials": creds} if creds else {}
        answer = enroller.client.call("approve", fingerprint=pending["fingerprint"], device=device, replace=replace,
                                      **extra)
        result.changed = bool(answer.get("changed", True))
        if shared:
            result.before = list(answer.get("before") or result.before)
            result.after = list(answer.get("after") or [])
        else:
            readable = os.access(enroller.store().path, os.R_OK)
            result.after = identities_of(enroller.store().load(), device) if readable else []
    return result


def _shared_view(enroller: Enroller, device: str,
                 fingerprint: str) -> t.Optional[t.Tuple[str, t.List[str]]]:
    """When ``fingerprint`` is enrolled for ``device`` in a shared trust store (an ``enroll`` dry
    run of it changes nothing): its kind and the device's identities; else None."""
    for kind in ("ssh_host_keys", "tls_fingerprints"):
        try:
            answer = enroller.client.call("enroll", device=device, kind=kind, value=fingerprint, dry_run=True) or {}
        except CallHomeError:
            continue  # not a fingerprint of this kind, or enrolled for another device
        if not answer.get("changed"):
            return kind, list(answer.get("after") or [])
    return None


def _kind(pending: t.Mapping[str, t.Any]) -> str:
    return kind_for_transport(str(pending.get("transport") or "ssh"))


__all__ = ("SOURCES_OF", "TRANSPORTS", "EnrollResult", "Enroller", "Identity", "check_conflict", "check_observed", "explicit_identity",
           "identities_of", "mutate_add", "mutate_remove", "run", "same_fingerprint", "scan_ssh_host_key")

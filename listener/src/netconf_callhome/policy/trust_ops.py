# SPDX-License-Identifier: GPL-3.0-or-later
"""Every change to the trust store, with one set of rules: approve, enroll, revoke, replace.

The listener's ``approve`` / ``enroll`` / ``revoke`` operations (CLI and control socket) and the
``netconf.callhome.enroll`` module's file path all come here, so that a key is trusted under the
same conditions whoever asks. :mod:`netconf_callhome.policy.trust_store` is the mechanism (file
format, locking, primitive edits); this module decides which edits are allowed.

The rules:

* **A key given explicitly is vouched for** by whoever gave it (an operator, a playbook author):
  it may join the keys already enrolled for the device.
* **A key observed** (presented by a device when it called, or read from it over SSH) never
  silently joins or replaces another identity of the same kind (``ssh_host_keys``,
  ``tls_fingerprints``) enrolled for that device: a different key is what a replaced device and
  a man in the middle have in common. Replacing is explicit (``replace=True``): the other
  identities of that kind are removed and the new one enrolled, in one locked write.
  The rule is per kind, not per SSH key algorithm: the trust store may hold bare fingerprints
  (no algorithm to compare) and the listener itself reports any other key as a mismatch.
* **An identity never moves between devices**: enrolling a key that another device owns is
  refused (revoke it there first), since that is how a stolen key would take over another
  device's credentials.
* ``dry_run`` computes the change (Ansible check mode) without writing.

The functions take the :class:`TrustStore` and plain data and return a :class:`TrustChange`;
the caller (the service) does the side effects that are not the trust store's: dropping the
pending entry, reloading the policy, closing a session whose key is no longer trusted.
"""

from __future__ import annotations

import copy
import typing as t
from dataclasses import asdict, dataclass, field

from netconf_callhome.errors import CallHomeError, ConfigError, KeyMismatchError, UnknownKeyError
from netconf_callhome.fingerprints import (
    cert_fingerprint_of_der,
    normalize_cert_fingerprint,
    normalize_ssh_fingerprint,
    pem_to_der,
    ssh_fingerprint,
)
from netconf_callhome.policy.trust_store import (
    CANONICAL,
    CREDENTIAL_KEYS,
    TrustData,
    TrustIndex,
    TrustStore,
    add_identity,
    normalize_identity,
    remove_identity,
    set_credentials,
    set_outbound_ssh,
    set_outbound_ssh_group,
)

KINDS: t.Tuple[str, ...] = tuple(CANONICAL)  # ssh_host_keys, tls_fingerprints, tls_identities

# What the listener records in a pending entry's ``reason`` (verdicts.UNKNOWN / MISMATCH).
PENDING_UNKNOWN = "unknown-key"
PENDING_MISMATCH = "key-mismatch"


class ReplaceRequiredError(KeyMismatchError, ConfigError):
    """An observed key would join or replace another one enrolled for the device.

    Both a key mismatch (what crosses the control socket: code ``key-mismatch``) and a request
    that cannot be applied as given (``ConfigError``): the remedy is to ask again with replace.
    """


# -- the identity to enroll --------------------------------------------------------------------


@dataclass
class Identity:
    kind: str  # ssh_host_keys | tls_fingerprints | tls_identities
    value: str  # what goes in the trust store
    fingerprint: str  # canonical form, what callers report
    observed: bool = False  # read from the device rather than given
    pending: t.Optional[t.Dict[str, t.Any]] = None  # the listener's pending entry it came from, if any


def canonical(kind: str, value: str) -> str:
    """The comparable form of an identity of ``kind``; ConfigError for an unknown kind or bad value."""
    if kind not in CANONICAL:
        raise ConfigError("kind must be one of %s" % ", ".join(KINDS))
    return CANONICAL[kind](value)


def explicit_identity(source: str, value: str) -> Identity:
    """An identity given in a playbook or by an operator (vouched for by them).

    ``source`` is the enroll module's vocabulary: public_key, fingerprint, certificate,
    tls_fingerprint, tls_identity.
    """
    if source == "public_key":
        return Identity("ssh_host_keys", value.strip(), ssh_fingerprint(value))
    if source == "fingerprint":
        fp = normalize_ssh_fingerprint(value)
        return Identity("ssh_host_keys", fp, fp)
    if source == "certificate":
        fp = cert_fingerprint_of_der(pem_to_der(value))
        return Identity("tls_fingerprints", fp, fp)
    if source == "tls_fingerprint":
        fp = normalize_cert_fingerprint(value)
        return Identity("tls_fingerprints", fp, fp)
    if source == "tls_identity":
        ident = normalize_identity(value)
        return Identity("tls_identities", ident, ident)
    raise ConfigError("source %r takes no explicit value" % source)


def same_fingerprint(kind: str, a: str, b: str) -> bool:
    """Whether two spellings name the same identity (False when either is not of ``kind``)."""
    try:
        return CANONICAL[kind](a) == CANONICAL[kind](b)
    except ConfigError:
        return False


def identities_of(data: TrustData, device: str) -> t.List[str]:
    """Every identity enrolled for ``device``, canonical, in kind order (what results report)."""
    entry = data.get("devices", {}).get(device, {})
    out: t.List[str] = []
    for kind, canon in CANONICAL.items():
        out.extend(canon(v) for v in entry.get(kind, []))
    return out


# -- the rules ---------------------------------------------------------------------------------

_MODULE_REMEDY = "If the device's key was really replaced, set replace_existing: true"


def check_observed(identity: Identity, *, expected: t.Optional[str], tofu: bool, where: str) -> None:
    """Refuse an observed key that nobody vouched for, or that differs from the expected one.

    The wording names the enroll module's options (expected_fingerprint, trust_on_first_use):
    the listener's own observed keys are vouched for by the operator who approves them.
    """
    if expected:
        if not same_fingerprint(identity.kind, identity.fingerprint, expected):
            raise KeyMismatchError(
                "%s presents %s, not the expected %s; NOT enrolled (a different key can mean a replaced "
                "device or someone in the middle: check before changing expected_fingerprint)"
                % (where, identity.fingerprint, expected),
                details={"presented": identity.fingerprint, "expected": expected},
            )
        return
    if not tofu:
        raise UnknownKeyError(
            "%s presents %s; refusing to enroll a key nobody vouched for. Compare it with the device's "
            "console (ssh-keygen -lf on its host key) and pass expected_fingerprint: %s, or set "
            "trust_on_first_use: true" % (where, identity.fingerprint, identity.fingerprint),
            details={"presented": identity.fingerprint},
        )


def check_conflict(
    data: TrustData, device: str, identity: Identity, *, replace: bool, remedy: str = _MODULE_REMEDY
) -> t.List[str]:
    """Other identities of the same kind already enrolled for ``device``.

    For an observed identity they are a key mismatch, refused (:class:`ReplaceRequiredError`,
    whose message ends with ``remedy``) unless ``replace``.
    """
    entry = data.get("devices", {}).get(device, {})
    others = [v for v in entry.get(identity.kind, []) if not same_fingerprint(identity.kind, v, identity.value)]
    if others and identity.observed and not replace:
        raise ReplaceRequiredError(
            "device %r already has %s enrolled, and it now presents %s; NOT enrolled. %s"
            % (device, ", ".join(CANONICAL[identity.kind](o) for o in others), identity.fingerprint, remedy),
            details={"enrolled": others, "presented": identity.fingerprint, "device": device},
        )
    return others


def _add(
    data: TrustData,
    device: str,
    identity: Identity,
    *,
    replace: bool,
    credentials: t.Optional[t.Mapping[str, t.Any]],
    remedy: str = _MODULE_REMEDY,
    index: t.Optional[TrustIndex] = None,
) -> t.Tuple[bool, t.List[str]]:
    """Apply the rules to ``data`` in place; return (changed, canonical identities replaced).
    ``index``: a TrustIndex of ``data`` shared by a batch (kept up to date by add_identity)."""
    check_conflict(data, device, identity, replace=replace, remedy=remedy)
    changed = False
    replaced: t.List[str] = []
    entry = data.setdefault("devices", {}).get(device)
    if replace and entry:
        current = entry.get(identity.kind, [])
        keep = [v for v in current if same_fingerprint(identity.kind, v, identity.value)]
        if keep != current:
            replaced = [CANONICAL[identity.kind](v) for v in current if v not in keep]
            entry[identity.kind] = keep
            changed = True
    changed = add_identity(data, device, kind=identity.kind, value=identity.value, index=index) or changed
    if credentials:
        changed = set_credentials(data, device, credentials) or changed
    return changed, replaced


def mutate_add(
    device: str,
    identity: Identity,
    *,
    replace: bool,
    credentials: t.Optional[t.Mapping[str, t.Any]],
) -> t.Callable[[TrustData], bool]:
    """The enroll rules as a :meth:`TrustStore.update` mutation (kept for callers that batch)."""

    def mutate(data: TrustData) -> bool:
        return _add(data, device, identity, replace=replace, credentials=credentials)[0]

    return mutate


def mutate_remove(device: str, identity: t.Optional[Identity]) -> t.Callable[[TrustData], bool]:
    """Removal of one identity, or of the whole device when ``identity`` is None."""

    def mutate(data: TrustData) -> bool:
        if identity is None:
            return remove_identity(data, device)
        return remove_identity(data, device, kind=identity.kind, value=identity.value)

    return mutate


# -- the operations ----------------------------------------------------------------------------


@dataclass
class TrustChange:
    """What one operation did (or, with ``dry_run``, would do) to the trust store."""

    changed: bool
    device: str
    kind: t.Optional[str] = None
    fingerprint: t.Optional[str] = None
    before: t.List[str] = field(default_factory=list)  # the device's identities, canonical
    after: t.List[str] = field(default_factory=list)
    replaced: t.List[str] = field(default_factory=list)  # identities removed by replace=True
    transport: t.Optional[str] = None  # approve: the pending entry's transport
    identity: t.Optional[str] = None  # revoke: what was asked to be removed (None: everything)
    dry_run: bool = False

    def to_dict(self) -> t.Dict[str, t.Any]:
        """The result the control operations answer with (a superset of their older dicts)."""
        return asdict(self)


class PendingKeyLike(t.Protocol):
    """What approving needs from the listener's pending entry (``state.registry.PendingKey``
    has these fields; the policy layer does not import the state layer)."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def transport(self) -> str: ...

    @property
    def public_key(self) -> str: ...

    @property
    def reason(self) -> str: ...

    @property
    def claimed_device(self) -> str: ...

    @property
    def claim_source(self) -> str: ...

    @property
    def peer(self) -> str: ...


@dataclass(frozen=True)
class PendingEntry:
    """A pending entry as plain data, e.g. from the control socket's ``pending`` answer."""

    fingerprint: str
    transport: str = "ssh"
    public_key: str = ""
    reason: str = PENDING_UNKNOWN
    claimed_device: str = ""
    claim_source: str = ""
    peer: str = ""

    @classmethod
    def from_mapping(cls, data: t.Mapping[str, t.Any]) -> "PendingEntry":
        return cls(
            fingerprint=str(data.get("fingerprint") or ""),
            transport=str(data.get("transport") or "ssh"),
            public_key=str(data.get("public_key") or ""),
            reason=str(data.get("reason") or PENDING_UNKNOWN),
            claimed_device=str(data.get("claimed_device") or ""),
            claim_source=str(data.get("claim_source") or ""),
            peer=str(data.get("peer") or ""),
        )


def kind_for_transport(transport: str) -> str:
    """The trust store list an observed key of ``transport`` goes to."""
    return "ssh_host_keys" if transport == "ssh" else "tls_fingerprints"


def pending_identity(pending: PendingKeyLike) -> Identity:
    """The observed identity of a pending entry: the SSH public key line (a bare fingerprint
    when the line is missing), or the certificate's fingerprint (pinned, not its identities)."""
    kind = kind_for_transport(pending.transport)
    if kind == "ssh_host_keys":
        value = pending.public_key.strip() or pending.fingerprint
    else:
        value = pending.fingerprint
    return Identity(kind, value, CANONICAL[kind](value), observed=True)


def approve_pending(
    store: TrustStore,
    pending: PendingKeyLike,
    device: str = "",
    *,
    replace: bool = False,
    credentials: t.Optional[t.Mapping[str, t.Any]] = None,
    dry_run: bool = False,
) -> TrustChange:
    """Enroll the key of a pending entry (``callhome-listener approve``) for ``device``.

    ``device`` defaults to the device the entry's certificate names (``claim_source ==
    "identity"``); an address or a Junos device-id is only a hint, so then the device must be
    named. Approving is the operator vouching for a key the device *presented*, so it is an
    observed key under the rules of this module:

    * a device with no other identity of that kind gets the key;
    * a device that has another one (a second host key, or a mismatch: the key changed) is
      refused with :class:`ReplaceRequiredError` naming the enrolled keys and how to replace,
      unless ``replace=True``, which removes the other identities of that kind. This holds for a
      ``key-mismatch`` entry too: before, approving a mismatch for the device it claimed replaced
      the old key implicitly; replacing is now always asked for explicitly;
    * a key enrolled for another device is refused (revoke it there first).

    ``credentials`` (references, never secrets) replace the device's credentials in the same
    locked write, as with :func:`enroll` (the enroll module's ``source: pending`` with
    ``credentials`` used to drop them silently).

    The caller drops the pending entry and reloads the policy after a real (not dry-run) approve.
    """
    name = device or (pending.claimed_device if pending.claim_source == "identity" else "")
    if not name:
        hint = (
            " (it came from the address %s last used by %r)" % (pending.peer, pending.claimed_device)
            if pending.claimed_device
            else ""
        )
        raise ConfigError("say which device key %s belongs to (--device NAME)%s" % (pending.fingerprint, hint))
    identity = pending_identity(pending)
    clean = _clean_credentials(credentials)
    remedy = (
        "If the device's key was really replaced, approve it with replace: callhome-listener approve %s "
        "--device %s --replace (control operation approve with \"replace\": true; netconf.callhome.enroll "
        "with replace_existing: true)" % (pending.fingerprint, name)
    )
    holder: t.Dict[str, t.List[str]] = {}

    def mutate(data: TrustData) -> bool:
        changed, holder["replaced"] = _add(data, name, identity, replace=replace, credentials=clean, remedy=remedy)
        return changed

    changed, before, after = store.update(mutate, dry_run=dry_run)
    return TrustChange(
        changed=bool(changed),
        device=name,
        kind=identity.kind,
        fingerprint=identity.fingerprint,
        before=identities_of(before, name),
        after=identities_of(after, name),
        replaced=holder.get("replaced", []),
        transport=pending.transport,
        dry_run=dry_run,
    )


def enroll(
    store: TrustStore,
    device: str,
    kind: str,
    value: str,
    *,
    replace: bool = False,
    observed: bool = False,
    credentials: t.Optional[t.Mapping[str, t.Any]] = None,
    dry_run: bool = False,
) -> TrustChange:
    """Enroll one identity of ``kind`` (ssh_host_keys, tls_fingerprints, tls_identities).

    ``observed`` says the caller read the key from the device rather than being given it: then
    a different identity of the same kind already enrolled is a mismatch, refused unless
    ``replace``. ``replace`` removes the other identities of that kind, observed or not.
    ``credentials`` (references, never secrets) replace the device's credentials when given.
    """
    identity = Identity(kind, value, canonical(kind, value), observed=observed)
    clean = _clean_credentials(credentials)
    holder: t.Dict[str, t.List[str]] = {}

    def mutate(data: TrustData) -> bool:
        changed, holder["replaced"] = _add(data, device, identity, replace=replace, credentials=clean)
        return changed

    changed, before, after = store.update(mutate, dry_run=dry_run)
    return TrustChange(
        changed=bool(changed),
        device=device,
        kind=kind,
        fingerprint=identity.fingerprint,
        before=identities_of(before, device),
        after=identities_of(after, device),
        replaced=holder.get("replaced", []),
        dry_run=dry_run,
    )


def revoke(
    store: TrustStore,
    device: str,
    identity: t.Optional[str] = None,
    *,
    kind: t.Optional[str] = None,
    dry_run: bool = False,
) -> TrustChange:
    """Remove one identity of ``device`` (any spelling: key line, fingerprint, ``serial:...``),
    restricted to ``kind`` when given, or the whole device entry (credentials included) when
    ``identity`` is None (``kind`` is then ignored). Revoking what is not enrolled changes nothing
    and is not an error."""
    if kind is not None and kind not in CANONICAL:
        raise ConfigError("kind must be one of %s" % ", ".join(KINDS))
    changed, before, after = store.update(
        lambda data: remove_identity(data, device, kind=kind, value=identity), dry_run=dry_run
    )
    return TrustChange(
        changed=bool(changed),
        device=device,
        kind=kind,
        fingerprint=_canonical_any(identity, kind) if identity else None,
        before=identities_of(before, device),
        after=identities_of(after, device),
        identity=identity,
        dry_run=dry_run,
    )


def enroll_observed_ssh_keys(
    store: TrustStore, items: t.Sequence[t.Tuple[str, str, bool]]
) -> t.List[t.Union[TrustChange, CallHomeError]]:
    """Enroll several observed SSH host keys, ``(device, public key line, replace)`` each, in ONE
    locked write, under the rules of :func:`enroll` (observed: never silently joins or replaces
    another key unless ``replace``; never moves between devices). The result, in order, is each
    item's change, or the error that refused it; a refused item changes nothing and does not stop
    the others. One write for a batch keeps a storm of zero-touch enrollments from costing one
    whole-file rewrite (O(devices)) each."""
    results: t.List[t.Union[TrustChange, CallHomeError]] = []

    def mutate(data: TrustData) -> bool:
        results.clear()  # update() may retry the mutation on a fresh copy
        changed = False
        index = TrustIndex(data)  # one index for the batch: building it is O(devices)
        for device, line, replace in items:
            devices = data.setdefault("devices", {})
            saved = copy.deepcopy(devices.get(device))
            try:
                identity = Identity("ssh_host_keys", line, canonical("ssh_host_keys", line), observed=True)
                before = identities_of(data, device)
                item_changed, replaced = _add(data, device, identity, replace=replace, credentials=None, index=index)
            except CallHomeError as exc:
                # A refusal after a partial edit (replace removed the old keys, then the new one
                # belongs to another device) must not be written with the others: put it back.
                if saved is None:
                    devices.pop(device, None)
                else:
                    devices[device] = saved
                if replace:
                    index = TrustIndex(data)
                results.append(exc)
                continue
            if replaced:
                index = TrustIndex(data)  # the replaced keys are no longer the device's (rare: rotation)
            changed = changed or item_changed
            results.append(
                TrustChange(
                    changed=item_changed,
                    device=device,
                    kind=identity.kind,
                    fingerprint=identity.fingerprint,
                    before=before,
                    after=identities_of(data, device),
                    replaced=replaced,
                )
            )
        return changed

    store.update(mutate)
    return list(results)


# -- outbound-ssh secrets (references; policy/secrets.py) ---------------------------------------


def set_outbound_ssh_secret(
    store: TrustStore,
    device: str,
    reference: t.Optional[str],
    *,
    allow_rotation: bool = False,
    dry_run: bool = False,
) -> t.Dict[str, t.Any]:
    """Give ``device`` its own outbound-ssh secret reference (None removes it). A device with a
    secret and no key yet is enrolled by its first verified call (zero-touch)."""

    def mutate(data: TrustData) -> bool:
        return set_outbound_ssh(data, device, reference, allow_rotation=allow_rotation)

    changed, before, after = store.update(mutate, dry_run=dry_run)
    return {
        "changed": bool(changed),
        "device": device,
        "outbound_ssh": after.get("devices", {}).get(device, {}).get("outbound_ssh"),
        # for a caller's diff (references, never values), and the device's identities, which a
        # secret leaves as they are: a client of a shared store has no file to read them from
        "outbound_ssh_before": before.get("devices", {}).get(device, {}).get("outbound_ssh"),
        "identities": identities_of(after, device),
        "dry_run": dry_run,
    }


def set_outbound_ssh_group_secret(
    store: TrustStore,
    name: str,
    device_ids: t.Optional[t.Sequence[str]],
    reference: t.Optional[str] = None,
    *,
    allow_rotation: bool = False,
    dry_run: bool = False,
) -> t.Dict[str, t.Any]:
    """Define the outbound-ssh group ``name`` (DEVICE-ID patterns and a secret reference), or
    remove it when ``device_ids`` is None."""

    def mutate(data: TrustData) -> bool:
        return set_outbound_ssh_group(data, name, device_ids, reference, allow_rotation=allow_rotation)

    changed, before, after = store.update(mutate, dry_run=dry_run)
    return {
        "changed": bool(changed),
        "group": name,
        "outbound_ssh_group": after.get("outbound_ssh_groups", {}).get(name),
        "dry_run": dry_run,
    }


def outbound_ssh_secrets(store: TrustStore) -> t.Dict[str, t.Any]:
    """Every outbound-ssh secret reference in the store (references only, never values)."""
    data = store.load()
    return {
        "devices": {
            name: entry["outbound_ssh"]
            for name, entry in sorted(data.get("devices", {}).items())
            if "outbound_ssh" in entry
        },
        "groups": dict(sorted(data.get("outbound_ssh_groups", {}).items())),
    }


def _clean_credentials(credentials: t.Optional[t.Mapping[str, t.Any]]) -> t.Dict[str, t.Any]:
    """The credential references that were given (unset options dropped); an object is required
    (the control socket passes JSON through)."""
    if credentials is None:
        return {}
    if not isinstance(credentials, t.Mapping):
        raise ConfigError("credentials must be an object with %s" % ", ".join(CREDENTIAL_KEYS))
    return {k: v for k, v in credentials.items() if v not in (None, "")}


def _canonical_any(value: str, kind: t.Optional[str]) -> t.Optional[str]:
    """The canonical spelling of ``value`` under the first kind that accepts it."""
    for k in [kind] if kind else list(KINDS):
        try:
            return CANONICAL[k](value)
        except ConfigError:
            continue
    return None


__all__ = (
    "KINDS",
    "Identity",
    "PendingEntry",
    "PendingKeyLike",
    "ReplaceRequiredError",
    "TrustChange",
    "approve_pending",
    "canonical",
    "check_conflict",
    "check_observed",
    "enroll",
    "enroll_observed_ssh_keys",
    "explicit_identity",
    "identities_of",
    "kind_for_transport",
    "mutate_add",
    "mutate_remove",
    "outbound_ssh_secrets",
    "pending_identity",
    "revoke",
    "same_fingerprint",
    "set_outbound_ssh_group_secret",
    "set_outbound_ssh_secret",
)

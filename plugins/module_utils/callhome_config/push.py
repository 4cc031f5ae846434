# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""The push itself: detect, read, compare, edit, commit, wait for the call home, confirm.

**PRIVATE** to the collection. Written against two small protocols, :class:`NetconfOps` (the
device session; the module adapts ansible.netcommon's netconf connection to it) and
:class:`CallHomeWaiter` (the listener), so the whole sequence, including the failure paths, runs
in unit tests without Ansible or a device.

Safe rollout: with ``confirm_callhome`` the change is committed with a *confirmed* commit
(RFC 6241 section 8.4) and only confirmed once the listener holds a session with the device.
If the device never calls, the commit is cancelled (``<cancel-commit>``) and, should even that
fail, the device reverts by itself when ``confirm_timeout`` expires. A ``persist`` token
(confirmed-commit 1.1) makes the pending commit independent of this session, so a dropped
Ansible connection cannot confirm or lose it by accident.
"""

from __future__ import annotations

import functools
import secrets
import time
import typing as t

from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.lxml_support import etree, require_lxml
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config import ietf, junos, restconf
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.diff import decide
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.model import CallHomeClient
from ansible_collections.netconf.callhome.plugins.module_utils.callhome_config.revision import (
    CAP_CANDIDATE,
    CAP_CONFIRMED_10,
    CAP_CONFIRMED_11,
    CAP_WRITABLE_RUNNING,
    NCS_MODULE,
    RCS_MODULE,
    has_yang_library,
    is_junos,
    profile_for,
    restconf_profile_for,
    revision_from_capabilities,
    revision_from_yang_library,
    yang_library_filter,
)
from ansible_collections.netconf.callhome.plugins.module_utils._netconf_callhome import NetconfCallhomeMissing

try:
    from netconf_callhome.errors import (
        CallHomeError,
        ConfigError,
        DeviceNotFoundError,
        WaitTimeoutError,
    )
except ImportError:  # the module using this reports it (HAS_NETCONF_CALLHOME)
    CallHomeError = ConfigError = DeviceNotFoundError = WaitTimeoutError = NetconfCallhomeMissing  # type: ignore[misc,assignment]

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
WAIT_SLICE = 5.0  # seconds per listener wait; between slices the device session is kept busy


class DeviceRpcError(CallHomeError):
    """The device answered an RPC with ``<rpc-error>`` (or the session failed)."""

    code = "rpc-error"

    def __init__(self, message: str, *, path: str = "", tag: str = "", rpc: str = "") -> None:
        super().__init__(message, details={"path": path, "tag": tag, "rpc": rpc})
        self.path = path
        self.tag = tag
        self.rpc = rpc

    def describe(self) -> str:
        where = " at %s" % self.path if self.path else ""
        tag = " (%s)" % self.tag if self.tag else ""
        return "%s failed%s%s: %s" % (self.rpc or "RPC", where, tag, self.message)


class PushError(CallHomeError):
    """The push failed; ``result`` is what the task should still report (rollback, diff...)."""

    code = "push-failed"

    def __init__(self, message: str, result: t.Dict[str, t.Any]) -> None:
        super().__init__(message)
        self.result = result


class NetconfOps(t.Protocol):
    def capabilities(self) -> t.List[str]: ...

    def get(self, filter_xml: str) -> str: ...

    def get_config(self, source: str, filter_xml: str) -> str: ...

    def edit_config(self, config_xml: str, target: str) -> None: ...

    def lock(self, target: str) -> None: ...

    def unlock(self, target: str) -> None: ...

    def commit(self, *, confirmed: bool = False, timeout: t.Optional[int] = None, persist: t.Optional[str] = None) -> None: ...

    def rpc(self, xml: str) -> str: ...

    def discard_changes(self) -> None: ...

    def keepalive(self) -> None: ...


class CallHomeWaiter(t.Protocol):
    def wait(self, device: str, seconds: float) -> t.Dict[str, t.Any]: ...

    def record(self, device: str) -> t.Optional[t.Dict[str, t.Any]]: ...


def parse_rpc_error(text: str) -> t.Tuple[str, str, str]:
    """``(message, error-path, error-tag)`` from the rpc-error XML netcommon puts in its errors."""
    try:
        root = etree.fromstring(text.strip().encode("utf-8"), etree.XMLParser(resolve_entities=False, no_network=True))
    except (etree.XMLSyntaxError, ValueError):
        return text.strip(), "", ""
    errors = [root] if etree.QName(root).localname == "rpc-error" else list(root.iter("{%s}rpc-error" % NC_NS))
    messages, paths, tags = [], [], []
    for err in errors:
        messages.append((err.findtext("{%s}error-message" % NC_NS) or "").strip())
        paths.append((err.findtext("{%s}error-path" % NC_NS) or "").strip())
        tags.append((err.findtext("{%s}error-tag" % NC_NS) or "").strip())
        info = err.find("{%s}error-info" % NC_NS)
        if not messages[-1] and info is not None:
            messages[-1] = " ".join("%s=%s" % (etree.QName(c).localname, (c.text or "").strip()) for c in info)
    if not errors:
        return text.strip(), "", ""
    return "; ".join(m for m in messages if m) or "rpc-error", "; ".join(p for p in paths if p), "; ".join(t_ for t_ in tags if t_)


def _has(caps: t.Iterable[str], cap: str) -> bool:
    return any(c.strip() == cap or c.strip().startswith(cap + "?") for c in caps)


class ConfigPusher:
    """One run of ``netconf.callhome.config`` (see the module documentation for the options)."""

    def __init__(
        self,
        ops: NetconfOps,
        client: t.Optional[CallHomeClient],
        *,
        name: str,
        state: str = "present",
        protocol: str = "netconf",
        dialect: str = "auto",
        revision: str = "auto",
        check_mode: bool = False,
        confirm_callhome: bool = False,
        allow_unconfirmed: bool = False,
        callhome_device: t.Optional[str] = None,
        callhome_timeout: float = 60.0,
        confirm_timeout: int = 120,
        require_new_session: bool = False,
        waiter: t.Optional[CallHomeWaiter] = None,
        clock: t.Callable[[], float] = time.monotonic,
    ) -> None:
        require_lxml()
        self.ops = ops
        self.client = client
        self.name = name
        self.state = state
        if protocol not in ("netconf", "restconf"):
            raise ConfigError("protocol must be netconf or restconf, got %r" % protocol)
        if client is not None and client.protocol != protocol:
            raise ConfigError("the call-home client settings are for %s, not %s" % (client.protocol, protocol))
        self.protocol = protocol
        self.dialect = dialect
        self.revision = revision
        self.check_mode = check_mode
        self.confirm_callhome = confirm_callhome and state != "absent"
        self.allow_unconfirmed = allow_unconfirmed
        self.device = callhome_device
        self.callhome_timeout = callhome_timeout
        self.confirm_timeout = confirm_timeout
        self.require_new_session = require_new_session
        self.waiter = waiter
        self.clock = clock
        self.warnings: t.List[str] = []
        if self.confirm_callhome:
            if not self.device:
                raise ConfigError("confirm_callhome needs callhome_device (the device's name at the listener)")
            if waiter is None:
                raise ConfigError("confirm_callhome needs a listener to wait on")
            if confirm_timeout < callhome_timeout + 10:
                raise ConfigError(
                    "confirm_timeout (%d s) must exceed callhome_timeout (%d s) by at least 10 s, or the device "
                    "would roll back while the call home is still awaited" % (confirm_timeout, callhome_timeout)
                )

    def _client(self) -> CallHomeClient:
        """The wanted client settings (every state but absent needs them)."""
        if self.client is None:
            raise ConfigError("state=%s needs the call-home client settings (endpoints...)" % self.state)
        return self.client

    # -- detection -----------------------------------------------------------------------------

    def _dialect(self, caps: t.List[str]) -> str:
        if self.protocol == "restconf":
            # Junos' only call home is outbound-ssh (NETCONF); RESTCONF call home is configured in
            # ietf-restconf-server whatever the vendor, so detection cannot pick junos here.
            if self.dialect == "junos":
                raise ConfigError("dialect junos has no RESTCONF call home (Junos calls home with outbound-ssh, "
                                  "NETCONF only); protocol: restconf writes ietf-restconf-server (dialect ietf)")
            return "ietf"
        if self.dialect != "auto":
            return self.dialect
        return "junos" if is_junos(caps) else "ietf"

    def _revision(self, caps: t.List[str]) -> t.Tuple[t.Optional[str], str]:
        """The server module's revision and where it came from; ``(None, "")`` when the device
        does not advertise the module (the profile look-up then refuses with the reason)."""
        module = RCS_MODULE if self.protocol == "restconf" else NCS_MODULE
        if self.revision and self.revision != "auto":
            return self.revision, "configured"
        found = revision_from_capabilities(caps, module)
        if found is not None:
            return found, "hello capabilities"
        if has_yang_library(caps):
            found = revision_from_yang_library(self.ops.get(yang_library_filter(module)), module)
            if found is not None:
                return found, "yang-library"
        return None, ""

    # -- run -----------------------------------------------------------------------------------

    def run(self) -> t.Dict[str, t.Any]:
        caps = self.ops.capabilities()
        dialect = self._dialect(caps)
        result: t.Dict[str, t.Any] = {"changed": False, "dialect": dialect, "name": self.name}
        ignore: t.Tuple[str, ...] = ()
        wanted: t.Optional[etree._Element] = None
        find: t.Callable[..., t.Optional[etree._Element]]
        wrap: t.Callable[..., etree._Element]
        result["protocol"] = self.protocol
        schema = ietf.RESTCONF if self.protocol == "restconf" else ietf.NETCONF
        if dialect == "ietf":
            found, how = self._revision(caps)
            result["module"] = RCS_MODULE if self.protocol == "restconf" else NCS_MODULE
            if self.protocol == "restconf":
                rc_profile = restconf_profile_for(found)
                result["revision"] = rc_profile.revision
                if self.state != "absent":
                    wanted = restconf.build_client(self._client(), rc_profile)
            else:
                profile = profile_for(found)
                result["revision"] = profile.revision
                if self.state != "absent":
                    wanted = ietf.build_client(self._client(), profile)
            result["revision_source"] = how
            find = functools.partial(ietf.find_client, schema=schema)
            wrap = functools.partial(ietf.wrap_config, schema=schema)
            flt = ietf.running_filter(self.name, schema)
        else:
            if self.state != "absent":
                wanted = junos.build_client(self._client())
            flt, find, wrap = junos.running_filter(self.name), junos.find_client, junos.wrap_config
            ignore = junos.VOLATILE

        if _has(caps, CAP_CANDIDATE):
            datastore = "candidate"
        elif _has(caps, CAP_WRITABLE_RUNNING):
            datastore = "running"
        else:
            raise ConfigError("the device advertises neither :candidate nor :writable-running; it cannot be edited")
        result["datastore"] = datastore

        existing = find(self._call("get-config", self.ops.get_config, "running", _xml(flt)), self.name)
        changed, after = decide(self.state, existing, wanted, ignore)
        result["before"] = ietf.to_text(existing)
        result["after"] = ietf.to_text(after)
        result["changed"] = changed
        if changed:
            result["diff"] = {"before": result["before"], "after": result["after"]}
        confirmed_cap = _has(caps, CAP_CONFIRMED_11) or _has(caps, CAP_CONFIRMED_10)
        mode = "none"
        if self.confirm_callhome:
            if datastore == "candidate" and confirmed_cap:
                mode = "confirmed-commit"
            elif self.allow_unconfirmed:
                mode = "unconfirmed"
                self.warnings.append(
                    "the device has no %s; the change is applied without a confirmed commit and is undone "
                    "by this task (not by the device) if the device does not call home"
                    % (":confirmed-commit" if datastore == "candidate" else ":candidate datastore")
                )
            else:
                raise PushError(
                    "the device has no %s, so a change that cuts it off could not roll back by itself; refusing "
                    "(set allow_unconfirmed: true to apply it anyway, with this task undoing it if the device "
                    "does not call home)" % (":confirmed-commit capability" if datastore == "candidate" else ":candidate datastore"),
                    dict(result, changed=False, callhome={"mode": "refused", "confirmed_commit_supported": False}),
                )
        if self.confirm_callhome:
            result["callhome"] = {"mode": mode, "device": self.device, "confirmed": False,
                                  "confirmed_commit_supported": confirmed_cap and datastore == "candidate"}
        if not changed or self.check_mode:
            if self.confirm_callhome:
                result["callhome"]["skipped"] = "check mode" if self.check_mode else "no change"
            return result

        operation = {"present": "merge", "replaced": "replace", "absent": "remove"}[self.state]
        restore_op = "replace" if existing is not None else "remove"
        if dialect == "ietf" and (operation == "remove" or (restore_op == "remove" and mode == "unconfirmed")):
            # Removing the last netconf-client alone is invalid (call-home is a presence container
            # whose list has min-elements 1): then the whole call-home container goes. (The
            # restore XML is only sent in "unconfirmed" mode; otherwise it needs no look-up.)
            sole = self._sole_entry()
            config_xml = _xml(ietf.wrap_config(wanted, name=self.name, operation=operation,
                                               sole_entry=sole and operation == "remove", schema=schema))
            restore_xml = _xml(ietf.wrap_config(existing, name=self.name, operation=restore_op,
                                                sole_entry=sole and existing is None, schema=schema))
        else:
            config_xml = _xml(wrap(wanted, name=self.name, operation=operation))
            restore_xml = _xml(wrap(existing, name=self.name, operation=restore_op))
        self._call("lock", self.ops.lock, datastore)
        try:
            self._apply(result, datastore, mode, config_xml, restore_xml)
        except DeviceRpcError as exc:
            if datastore == "candidate":
                self._quiet(self.ops.discard_changes)
            raise PushError("the device refused the change: %s" % exc.describe(),
                            dict(result, changed=False, rpc_error={"message": exc.message, "path": exc.path, "tag": exc.tag})) from None
        finally:
            self._quiet(self.ops.unlock, datastore)
        return result

    def _apply(self, result: t.Dict[str, t.Any], datastore: str, mode: str, config_xml: str, restore_xml: str) -> None:
        baseline = self._baseline() if mode != "none" else None
        self._call("edit-config", self.ops.edit_config, config_xml, datastore)
        if mode == "confirmed-commit":
            persist = secrets.token_hex(8) if _has(self.ops.capabilities(), CAP_CONFIRMED_11) else None
            self._call("commit", self.ops.commit, confirmed=True, timeout=self.confirm_timeout, persist=persist)
            try:
                record, waited = self._wait(baseline)
            except CallHomeError as exc:
                rollback = self._cancel(persist)
                result["changed"] = False
                result["callhome"].update(rollback=rollback, error=exc.message)
                raise PushError(
                    "device %r did not call home (waited up to %.0f s) after the confirmed commit: %s. %s"
                    % (self.device, self.callhome_timeout, exc.message, _ROLLBACK_TEXT[rollback] % self.confirm_timeout),
                    result,
                ) from None
            if persist:
                self._call("commit", self.ops.rpc, '<commit xmlns="%s"><persist-id>%s</persist-id></commit>' % (NC_NS, persist))
            else:
                self._call("commit", self.ops.commit)
            result["callhome"].update(confirmed=True, waited=round(waited, 1), **_summary(record))
            return
        if datastore == "candidate":
            self._call("commit", self.ops.commit)
        if mode == "unconfirmed":
            try:
                record, waited = self._wait(baseline)
            except CallHomeError as exc:
                restored = self._restore(datastore, restore_xml)
                result["changed"] = not restored
                result["callhome"].update(rollback="restored-by-task" if restored else "restore-failed", error=exc.message)
                raise PushError(
                    "device %r did not call home (waited up to %.0f s): %s. %s" % (
                        self.device, self.callhome_timeout, exc.message,
                        "The previous call-home configuration was put back by this task." if restored else
                        "Putting the previous configuration back FAILED; the device keeps the new configuration.",
                    ),
                    result,
                ) from None
            result["callhome"].update(waited=round(waited, 1), **_summary(record))

    def _sole_entry(self) -> bool:
        """True when no call-home client but ``self.name`` is configured in running (of the
        protocol's list: netconf-client or restconf-client)."""
        schema = ietf.RESTCONF if self.protocol == "restconf" else ietf.NETCONF
        reply = self._call("get-config", self.ops.get_config, "running", _xml(ietf.client_names_filter(schema)))
        return all(name == self.name for name in ietf.client_names(reply, schema))

    # -- call home -----------------------------------------------------------------------------

    def _listener(self) -> t.Tuple[CallHomeWaiter, str]:
        """The listener and the device's name there (``__init__`` checked both for confirm_callhome)."""
        if self.waiter is None or not self.device:
            raise ConfigError("waiting for the call home needs callhome_device and a listener to wait on")
        return self.waiter, self.device

    def _baseline(self) -> int:
        waiter, device = self._listener()
        try:
            record = waiter.record(device)
        except CallHomeError:
            record = None
        return int((record or {}).get("connect_count") or 0)

    def _wait(self, baseline: t.Optional[int]) -> t.Tuple[t.Dict[str, t.Any], float]:
        """Wait for a ready call-home session (a *new* one with require_new_session)."""
        waiter, device = self._listener()
        start = self.clock()
        deadline = start + self.callhome_timeout
        last = "the listener has not heard from it"
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise WaitTimeoutError(last)
            try:
                record = waiter.wait(device, min(WAIT_SLICE, remaining))
                if not self.require_new_session or int(record.get("connect_count") or 0) > (baseline or 0):
                    return record, self.clock() - start
                last = "only the session from before the change is up (require_new_session)"
                remaining = deadline - self.clock()
                if remaining > 0:
                    time.sleep(min(0.5, remaining))
            except (WaitTimeoutError, DeviceNotFoundError) as exc:
                last = exc.message
            self.ops.keepalive()

    def _cancel(self, persist: t.Optional[str]) -> str:
        body = "<persist-id>%s</persist-id>" % persist if persist else ""
        try:
            self.ops.rpc('<cancel-commit xmlns="%s">%s</cancel-commit>' % (NC_NS, body))
            return "cancelled"
        except CallHomeError:
            return "device-timeout"

    def _restore(self, datastore: str, restore_xml: str) -> bool:
        try:
            self.ops.edit_config(restore_xml, datastore)
            if datastore == "candidate":
                self.ops.commit()
            return True
        except CallHomeError:
            return False

    # -- helpers -------------------------------------------------------------------------------

    def _call(self, rpc: str, func: t.Callable[..., t.Any], *args: t.Any, **kwargs: t.Any) -> t.Any:
        try:
            return func(*args, **kwargs)
        except DeviceRpcError as exc:
            if not exc.rpc:
                exc.rpc = rpc
                exc.details["rpc"] = rpc
            raise

    @staticmethod
    def _quiet(func: t.Callable[..., t.Any], *args: t.Any) -> None:
        try:
            func(*args)
        except CallHomeError:
            pass


_ROLLBACK_TEXT = {
    "cancelled": "The confirmed commit was cancelled: the device is back on its previous configuration (confirm_timeout was %d s).",
    "device-timeout": "Cancelling the confirmed commit failed; the device rolls back by itself when the %d s confirm timeout expires.",
}


def _summary(record: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    return {k: record.get(k) for k in ("status", "peer", "fingerprint", "transport", "connect_count") if k in record}


def _xml(el: etree._Element) -> str:
    return etree.tostring(el).decode("utf-8")


__all__ = ("CallHomeWaiter", "ConfigPusher", "DeviceRpcError", "NetconfOps", "PushError", "parse_rpc_error")

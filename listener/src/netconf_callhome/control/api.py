# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the collection's modules ask the listener, in one place.

**PRIVATE** to the collection. Stdlib only (modules may run under any controller Python).
The modules stay an argument spec plus one call into here; errors stay
:class:`~.errors.CallHomeError` until the module maps them to ``fail_json``.
"""

from __future__ import annotations

import os
import time
import typing as t

from netconf_callhome.control.client import (
    ControlClient,
    default_control_address,
)
from netconf_callhome.errors import CallHomeError

ENV_LISTENER = "NETCONF_CALLHOME_LISTENER"
ENV_TOKEN = "NETCONF_CALLHOME_TOKEN"
READY = "connected"


def listener_address(value: t.Optional[str]) -> str:
    """The explicit address, else ``$NETCONF_CALLHOME_LISTENER``, else the local default."""
    return value or os.environ.get(ENV_LISTENER) or default_control_address()


def client_from_params(params: t.Mapping[str, t.Any]) -> ControlClient:
    """A :class:`ControlClient` from the shared module options."""
    return ControlClient(
        listener_address(params.get("listener")),
        token=params.get("token") or os.environ.get(ENV_TOKEN) or None,
        timeout=float(params.get("request_timeout") or 30.0),
        tls_ca_file=params.get("tls_ca_file"),
        tls_verify=params.get("tls_verify", True) is not False,
    )


def listener_info(client: ControlClient, *, status: t.Optional[str] = None, pending: bool = True) -> t.Dict[str, t.Any]:
    """The listener's status, its device registry and (optionally) the keys waiting for approval."""
    info: t.Dict[str, t.Any] = {"listener": client.call("status"), "address": str(client.address)}
    filters: t.Dict[str, t.Any] = {"status": status} if status else {}
    info["devices"] = client.call("devices", **filters)
    info["pending"] = client.call("pending") if pending else []
    return info


def wait_for_devices(
    client: ControlClient,
    devices: t.Sequence[str],
    *,
    timeout: float,
    poll_interval: float = 1.0,
    progress: t.Optional[t.Callable[[t.Dict[str, t.Dict[str, t.Any]]], None]] = None,
    clock: t.Callable[[], float] = time.monotonic,
    sleep: t.Callable[[float], None] = time.sleep,
) -> t.Dict[str, t.Any]:
    """Poll the registry until every named device has a session or ``timeout`` passes.

    One ``devices`` request per round covers the whole list, whatever its length. Returns
    ``{"ready": [...], "missing": [...], "elapsed": s, "devices": {name: result}}`` where each
    result carries ``ready``, ``status``, ``waited`` (seconds until it was ready) and the
    registry record the listener holds for it.
    """
    wanted = list(dict.fromkeys(devices))
    started = clock()
    results: t.Dict[str, t.Dict[str, t.Any]] = {
        name: {"name": name, "ready": False, "status": "not-found", "waited": None} for name in wanted
    }
    while True:
        records = {rec.get("name"): rec for rec in client.call("devices") or []}
        now = clock() - started
        for name in wanted:
            res = results[name]
            rec = records.get(name)
            if rec is not None:
                res.update({k: v for k, v in rec.items() if k != "name"})
            else:
                res["status"] = "not-found"
            if not res["ready"] and res["status"] == READY:
                res["ready"] = True
                res["waited"] = round(now, 3)
        if progress is not None:
            progress(results)
        missing = [n for n in wanted if not results[n]["ready"]]
        if not missing or now >= timeout:
            break
        sleep(max(0.0, min(poll_interval, timeout - now)))
    return {
        "ready": [n for n in wanted if results[n]["ready"]],
        "missing": missing,
        "elapsed": round(clock() - started, 3),
        "devices": results,
    }


def describe_missing(result: t.Mapping[str, t.Any], timeout: float) -> str:
    """One sentence per device that did not call home: what the listener knows of it."""
    parts = []
    for name in result.get("missing", []):
        rec = result["devices"][name]
        status = rec.get("status")
        if status == "not-found":
            parts.append("%s: not enrolled and never seen (enroll its key: callhome-listener pending/approve)" % name)
            continue
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec["last_seen"])) if rec.get("last_seen") else "never"
        )
        line = "%s: status %s, last seen %s from %s" % (name, status, when, rec.get("peer") or "nowhere")
        if rec.get("last_error"):
            line += " (%s)" % rec["last_error"]
        parts.append(line)
    return "%d of %d device(s) did not call home within %.0f s: %s" % (
        len(result.get("missing", [])), len(result.get("devices", {})), timeout, "; ".join(parts),
    )


def error_result(exc: CallHomeError) -> t.Dict[str, t.Any]:
    """``fail_json`` keyword arguments for a listener error."""
    return {"msg": exc.message, "error_code": exc.code, "details": exc.details}


__all__ = (
    "ENV_LISTENER", "ENV_TOKEN", "client_from_params", "describe_missing",
    "error_result", "listener_address", "listener_info", "wait_for_devices",
)

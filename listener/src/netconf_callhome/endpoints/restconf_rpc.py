# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible's persistent-connection protocol for RESTCONF devices: the httpapi hand-off.

``ansible.netcommon.restconf_get`` and ``restconf_config`` reach their device through
``Connection(module._socket_path).send_request(data, path=..., method=..., accept=...,
content_type=...)``; with ``ansible.netcommon.httpapi`` that socket is an ``ansible-connection``
process whose connection object forwards ``send_request`` to the httpapi sub-plugin chosen by
``ansible_network_os`` (``ansible.netcommon.restconf``), which builds the request and calls
``connection.send(path, data, headers=..., method=...)`` -> ``(response, BytesIO)``; for an HTTP
error status ``send`` hands urllib's ``HTTPError`` to the sub-plugin's ``handle_httperror`` and
returns what that decides, so that ``handle_response`` raises ``ConnectionError(<the device's
error-message>, code=<status>)`` (``restconf_config`` reads a 404 as "absent").

The listener holds every RESTCONF device's connection already (``sessions.restconf_sessions``),
so it serves that socket itself, as :mod:`netconf_callhome.endpoints.ansible_rpc` does for
NETCONF: a Unix socket (0600) under ``<home>/rpc/`` answered by ansible-core's ``JsonRpcServer``
in a thread pool, with :class:`HttpApiConnection` as the registered object. The sub-plugin is the
real one, loaded with Ansible's plugin loader (``httpapi_loader``), unmodified; only ``send``
differs: it goes over the device's held HTTP/2 or HTTP/1.1 connection
(:meth:`~netconf_callhome.protocol.restconf.RestconfConnection.request`) instead of ``open_url``.

Differences from ``ansible-connection`` + ``ansible.netcommon.httpapi``, on purpose:

* One endpoint per *device* (and network_os, root, command timeout), not per client: RESTCONF has
  no session state (no locks) that would tell clients apart, and concurrent tasks share the
  device's connection anyway (HTTP/2 streams; HTTP/1.1 requests queued).
* The endpoint is bound to the device, not to one connection: every request uses the device's
  *current* connection, so a device that called home again between two tasks just works, and a
  device that is gone fails the request with its name and the reason (no waiting mid-task).
* Authentication is the listener's (client certificate, the device's basic credentials from the
  trust store); ``login``/``logout`` of the sub-plugin are not called and no cookie is kept.
* ``root_path`` of the sub-plugin is the root the listener discovered (``/.well-known/host-meta``)
  unless the inventory sets ``ansible_httpapi_restconf_root``.

Nothing here logs a header or a body (credentials, configuration).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.message
import io
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from netconf_callhome.endpoints.ansible_rpc import (
    AnsibleEndpoints,
    EndpointRPCError,
    EndpointUnavailableError,
    Key,
    ModuleConnection,
)
from netconf_callhome.errors import (
    RestconfConnectionLostError,
    RestconfError,
    RestconfTimeoutError,
)
from netconf_callhome.protocol.restconf import DEFAULT_ROOT, Response, RestconfConnection, _excerpt
from netconf_callhome.protocol.rpc_socket import close_frames
from netconf_callhome.sessions.restconf_sessions import RestconfSessions

log = logging.getLogger("netconf_callhome.endpoints")

DEFAULT_NETWORK_OS = "ansible.netcommon.restconf"
# Headers the RESTCONF connection sets itself (RestconfConnection refuses them from callers):
# dropped from what a sub-plugin passes, as urllib would replace them.
_SET_BY_CONNECTION = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade", "te"})
# A sub-plugin's handle_httperror may ask for the request to be sent again (True); netcommon
# retries until the command timeout; here a few times at most.
_MAX_RETRIES = 3
# The pool thread waits this much longer than the request's own timeout for the event loop.
_GRACE = 5.0


class RestconfEndpoint:
    """One device's RESTCONF endpoint: socket, sub-plugin, counters (see the module docstring)."""

    def __init__(self, key: Key, path: str, network_os: str, root: str, command_timeout: float) -> None:
        self.key = key
        self.device = key[0]
        self.path = path
        self.id = os.path.basename(path).rsplit(".", 1)[0]
        self.network_os = network_os
        self.root = root
        self.command_timeout = command_timeout
        self.sub_plugin: Any = None
        self.connection: Optional[HttpApiConnection] = None
        self.server: Optional[asyncio.AbstractServer] = None
        self.lost: Optional[str] = None  # never set: the endpoint follows the device's connections
        self.active = 0
        self.requests = 0
        self.last_used = time.monotonic()
        self.created = time.time()
        self.clients: List[str] = []


class _Answer:
    """A 2xx response as the sub-plugins see urllib's (``http.client.HTTPResponse``)."""

    def __init__(self, response: Response, url: str) -> None:
        self.status = self.code = response.status
        self.reason = _reason(response.status)
        self.headers = self.msg = _message(response.headers)
        self.url = url
        self._body = io.BytesIO(response.body)

    def read(self, amt: Optional[int] = None) -> bytes:
        return self._body.read(amt)

    def getcode(self) -> int:
        return self.code

    def info(self) -> email.message.Message:
        return self.headers

    def geturl(self) -> str:
        return self.url

    def getheader(self, name: str, default: Optional[str] = None) -> Optional[str]:
        return self.headers.get(name, default)

    def __str__(self) -> str:
        return "HTTP %d %s" % (self.code, self.reason)


class HttpApiConnection(ModuleConnection):
    """What an httpapi sub-plugin and the modules' JSON-RPC calls expect of the connection
    (``ansible.netcommon.httpapi``'s ``Connection``), with ``send`` over the held connection; what
    ansible-connection's httpapi connection answered itself is :class:`ModuleConnection`'s."""

    def __init__(self, endpoint: RestconfEndpoint, options: Dict[str, Any],
                 http: Callable[[str, str, List[Tuple[str, str]], bytes], Response]) -> None:
        self._endpoint = endpoint
        self._options = options
        self._http = http
        self._network_os = endpoint.network_os
        self._auth: Optional[Dict[str, str]] = None  # HttpApiBase.handle_httperror reads it (401 -> retry with login)
        self._connected = True

    # -- what the sub-plugins use --------------------------------------------------------------

    def get_options(self, hostvars: Any = None) -> Dict[str, Any]:
        return dict(self._options)

    def set_option(self, option: str, value: Any) -> None:
        self._options[option] = value

    def send(self, path: str, data: Any, retries: Optional[int] = None, **kwargs: Any) -> Tuple[Any, io.BytesIO]:
        """One HTTP request on the device's held connection: ``(response, BytesIO(body))`` as
        netcommon's ``send``; an error status goes through the sub-plugin's ``handle_httperror``."""
        from ansible.module_utils.connection import ConnectionError as AnsibleConnectionError
        from urllib.error import HTTPError

        ep = self._endpoint
        body = b"" if data is None else data if isinstance(data, bytes) else str(data).encode("utf-8")
        method = str(kwargs.get("method") or ("POST" if body else "GET")).upper()
        headers = [
            (str(name), str(value))
            for name, value in dict(kwargs.get("headers") or {}).items()
            if str(name).strip().lower() not in _SET_BY_CONNECTION and value is not None
        ]
        if self._auth:  # a token a sub-plugin's login() set (not the case for restconf)
            headers += [(str(k), str(v)) for k, v in self._auth.items()]
        attempts = _MAX_RETRIES if retries is None else max(0, int(retries))
        while True:
            response = self._http(method, path, headers, body)
            url = "https://%s%s" % (ep.device, path)
            if response.ok:
                answer = _Answer(response, url)
                return answer, io.BytesIO(response.body)
            exc = HTTPError(url, response.status, _reason(response.status), _message(response.headers),
                            io.BytesIO(response.body))
            handle = getattr(ep.sub_plugin, "handle_httperror", None)
            handled = handle(exc) if handle is not None else exc
            if handled is True and attempts > 0:
                attempts -= 1
                continue
            if handled is True or handled is False:
                # netcommon raises the bare HTTPError here ("HTTP Error 401: Unauthorized"): say
                # whose credentials and where they come from instead.
                raise AnsibleConnectionError(_refusal_text(ep.device, response), code=response.status)
            resp_data = handled.read() if hasattr(handled, "read") else b""
            return handled, io.BytesIO(resp_data if isinstance(resp_data, bytes) else str(resp_data).encode())


class RestconfEndpoints(AnsibleEndpoints):
    """The RESTCONF endpoints of a listener (control op ``endpoint`` with ``api: restconf``).

    The socket, the JSON-RPC handling in the pool, the ``rpc`` relay op and the idle reaping are
    :class:`~netconf_callhome.endpoints.ansible_rpc.AnsibleEndpoints`'; what differs is what an
    endpoint holds (an httpapi sub-plugin, no lease) and how a request reaches the device.
    """

    def __init__(self, home: str, sessions: RestconfSessions, **kwargs: Any) -> None:
        kwargs.pop("lease_ended", None)
        super().__init__(home, **kwargs)
        self.sessions = sessions
        self._classes: Dict[str, Any] = {}
        self._class_lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._restconf: Dict[Key, RestconfEndpoint] = self._endpoints  # type: ignore[assignment]

    def describe(self) -> Iterable[Dict[str, Any]]:
        for ep in self._restconf.values():
            yield {"device": ep.device, "api": "restconf", "network_os": ep.network_os, "root": ep.root,
                   "socket_path": ep.path, "requests": ep.requests, "active": ep.active, "clients": len(ep.clients)}

    async def open_restconf(
        self,
        conn: RestconfConnection,
        *,
        network_os: str = "",
        root_path: str = "",
        command_timeout: float = 30.0,
        collections_paths: Iterable[str] = (),
        client: str = "",
    ) -> Dict[str, Any]:
        """The endpoint for ``conn``'s device: an existing one, or a new one."""
        started = time.monotonic()
        self._loop = asyncio.get_running_loop()
        network_os = network_os if network_os and network_os != "auto" else DEFAULT_NETWORK_OS
        root = (root_path or conn.root or DEFAULT_ROOT).rstrip("/") or "/"
        key: Key = (conn.device, root, network_os, float(command_timeout))
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            ep = self._restconf.get(key)
            created = ep is None
            if ep is None:
                ep = await self._create_restconf(key, network_os, root, float(command_timeout), tuple(collections_paths))
            if client and client not in ep.clients and len(ep.clients) < 1024:
                ep.clients.append(client)
            ep.last_used = time.monotonic()
        self._ensure_reaper()
        return {
            "socket_path": ep.path,
            "id": ep.id,
            "device": ep.device,
            "api": "restconf",
            "network_os": ep.network_os,
            "root": ep.root,
            "transport": "restconf",
            "http_version": conn.http_version,
            "peer": conn.peer,
            "modules": len(conn.library.modules) if conn.library is not None else 0,
            "created": created,
            "seconds": round(time.monotonic() - started, 4),
        }

    async def _create_restconf(
        self, key: Key, network_os: str, root: str, command_timeout: float, collections_paths: Tuple[str, ...]
    ) -> RestconfEndpoint:
        started = time.monotonic()
        cls: Any = self._classes.get(network_os)
        if cls is None:  # the first endpoint of this network_os: imports and the plugin loader, in the pool
            loop = asyncio.get_running_loop()
            pool = self._executor()
            await loop.run_in_executor(pool, self.runtime.load_plugins, self.collections_paths or collections_paths)
            cls = await loop.run_in_executor(pool, self._httpapi_class, network_os)
        ep = RestconfEndpoint(key, self._path_for(key), network_os, root, command_timeout)
        options = {
            "persistent_command_timeout": int(command_timeout),
            "network_os": network_os,
            "platform_type": network_os,
            "host": ep.device,
            "callhome_device": ep.device,
        }
        ep.connection = HttpApiConnection(ep, options, lambda m, p, h, b: self._blocking_request(ep, m, p, h, b))
        ep.sub_plugin = cls(ep.connection)
        try:
            ep.sub_plugin.set_options(direct={"root_path": root})
        except Exception:  # a vendor sub-plugin without a root_path option
            with contextlib.suppress(Exception):
                ep.sub_plugin.set_options()
        await self._listen(ep)  # type: ignore[arg-type]
        self._restconf[key] = ep
        log.info(
            "event=endpoint.start api=restconf device=%s network_os=%s root=%s path=%s ms=%.1f",
            ep.device, network_os, root, ep.path, (time.monotonic() - started) * 1000,
        )
        return ep

    def _httpapi_class(self, network_os: str) -> Any:
        """The httpapi sub-plugin class for ``network_os`` (in the pool: the loader reads files).

        Under a lock: two first endpoints of different devices at once would import the plugin's
        module twice in parallel, and one of them find it half-executed (no ``HttpApi`` yet)."""
        with self._class_lock:
            return self._load_httpapi_class(network_os)

    def _load_httpapi_class(self, network_os: str) -> Any:
        cls = self._classes.get(network_os)
        if cls is None:
            loader = self.runtime.modules["httpapi_loader"]
            cls = loader.get(network_os, class_only=True)
            if cls is None:
                raise EndpointUnavailableError(
                    "no httpapi plugin %r: ansible_network_os must name one (ansible.netcommon.restconf for "
                    "RESTCONF); is its collection in the collections path %s?"
                    % (network_os, ":".join(self.runtime._paths)),
                    details={"network_os": network_os},
                )
            self._classes[network_os] = cls
            log.info("event=endpoint.plugin_loaded api=restconf network_os=%s plugin=%s", network_os,
                     getattr(cls, "_load_name", cls.__name__))
        return cls

    # -- a request, from the pool thread to the event loop and back --------------------------

    def _blocking_request(self, ep: RestconfEndpoint, method: str, path: str, headers: List[Tuple[str, str]],
                          body: bytes) -> Response:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise EndpointRPCError("device %s: the listener is stopping" % ep.device)
        fut = asyncio.run_coroutine_threadsafe(self.device_request(ep.device, method, path, headers, body,
                                                                   timeout=ep.command_timeout), loop)
        try:
            return fut.result(ep.command_timeout + _GRACE)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise EndpointRPCError(
                "device %s: no answer to %s %s within %g s (ansible_command_timeout)" % (ep.device, method, path,
                                                                                         ep.command_timeout)
            ) from None
        except concurrent.futures.CancelledError:
            raise EndpointRPCError("device %s: the listener is stopping" % ep.device) from None

    async def device_request(self, device: str, method: str, path: str, headers: List[Tuple[str, str]],
                             body: bytes, *, timeout: float) -> Response:
        """One request on the device's current connection; EndpointRPCError names the device and
        says what happened when there is no answer (the text reaches the module)."""
        conn = self.sessions.get(device)
        if conn is None:
            raise EndpointRPCError(
                "device %s has no RESTCONF connection to the listener now (it went away); the next task "
                "waits for it to call home again (port 4336)" % device
            )
        try:
            return await conn.request(method, path, headers, body, timeout=timeout)
        except RestconfTimeoutError:
            raise EndpointRPCError(
                "device %s did not answer %s %s within %g s (ansible_command_timeout)" % (device, method, path, timeout)
            ) from None
        except RestconfConnectionLostError as exc:
            raise EndpointRPCError(
                "device %s: its RESTCONF connection ended during %s %s (%s); the next task waits for the device "
                "to call home again" % (device, method, path, exc.message)
            ) from None
        except RestconfError as exc:  # too large, protocol: the connection's own words name the device
            raise EndpointRPCError(exc.message) from None
        except ValueError as exc:  # a malformed path or header from the sub-plugin or module
            raise EndpointRPCError("device %s: request refused: %s" % (device, exc)) from None

    # -- idle time and shutdown ----------------------------------------------------------------

    async def reap(self) -> None:
        now = time.monotonic()
        for ep in list(self._restconf.values()):
            if not ep.active and now - ep.last_used > self.idle_timeout:
                await self._close(ep, "idle %.0f s" % (now - ep.last_used))  # type: ignore[arg-type]

    async def _close(self, ep: Any, reason: str) -> None:
        key: Key = ep.key
        if self._restconf.get(key) is ep:
            del self._restconf[key]
        close_frames(ep.server, ep.path, unlink=self._restconf.get(key) is None)
        log.info("event=endpoint.end api=restconf device=%s requests=%d reason=%r", ep.device, ep.requests, reason)

    async def request(self, endpoint_id: str, data: bytes) -> bytes:
        for ep in self._restconf.values():
            if ep.id == endpoint_id:
                return await self._request(ep, data)  # type: ignore[arg-type]
        return await super().request(endpoint_id, data)  # EndpointGoneError with the same wording

    def has(self, endpoint_id: str) -> bool:
        return any(ep.id == endpoint_id for ep in self._restconf.values())


def _refusal_text(device: str, response: Response) -> str:
    what = "%s %s" % (response.method, response.path)
    if response.status in (401, 403):
        return (
            "device %s refused the listener's credentials: HTTP %d for %s: %s. The listener authenticates with "
            "its client certificate (tls.client_cert) and the device's basic credentials in the trust store"
            % (device, response.status, what, _excerpt(response.body) or "no body")
        )
    return "device %s answered %s with HTTP %d: %s" % (device, what, response.status, _excerpt(response.body) or "no body")


def _reason(status: int) -> str:
    try:
        from http import HTTPStatus

        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _message(headers: Iterable[Tuple[str, str]]) -> email.message.Message:
    from http.client import HTTPMessage

    msg = HTTPMessage()
    for name, value in headers:
        msg[name] = value
    return msg


__all__ = ("DEFAULT_NETWORK_OS", "HttpApiConnection", "RestconfEndpoint", "RestconfEndpoints")

# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible's persistent-connection protocol, served by the listener for the sessions it holds.

``ansible-connection`` exists to hold a device's session between tasks; the listener already
holds every device's session. So it serves what modules reach through
``ansible.module_utils.connection.Connection`` itself: per client of a device, a Unix socket
(mode 0600, under ``<home>/rpc/``) carrying ``send_data`` / ``recv_data`` frames (an 8-byte
big-endian length, then a JSON-RPC 2.0 request or response), answered by ansible-core's own
``ansible.utils.jsonrpc.JsonRpcServer``. The registered object is :class:`EndpointConnection`,
the little of a netconf connection plugin that the netconf sub-plugins (``ansible.netcommon``'s
``default``, vendor plugins) and the modules use: ``manager`` (an ncclient ``Manager`` over an
in-process lease, :func:`~netconf_callhome.sessions.local.open_local_lease`), ``get_option``,
``_network_os``, and every method of the sub-plugin (``get_capabilities``, ``get_config``,
``edit_config``, ``lock``, ``dispatch`` ...).

Requests run in a thread pool (ncclient is blocking), so several clients of one device run at
once. ansible-core and ncclient are imported on the first endpoint only (the ``ansible`` extra of
the distribution); the netconf sub-plugin classes are loaded once per ``network_os`` with
Ansible's plugin loader, from the collections path the first client passed. An endpoint and its
manager exist while clients use them and go after ``idle_timeout`` seconds without a request.

Why an endpoint per *client* (one playbook's inventory host) and not one per device: each client
gets its own lease, as its ``ansible-connection`` had, so a lock taken by one playbook holds
against another's edit (``lock-denied`` / ``in-use`` from the multiplexer or the device). The
endpoint is keyed on ``(device, client)`` only: every task of the host reaches the same lease
whatever its ``ansible_command_timeout``, so its own lock never locks it out. The command timeout
is the one the task that asked for the endpoint last sent (what ``ansible-connection`` does with
each task's options), and the ``network_os`` is the first task's until the client ends (the
sub-plugin ``ansible-connection`` loaded stayed too).

The client ends as with ``ansible-connection``: ansible-core sends ``reset`` on the host's socket
at the end of every play (``StrategyBase.cleanup``) and for ``meta: reset_connection``. The
endpoint then closes its lease once the requests in flight have finished, so the multiplexer (or
the device, for a channel of its own) releases the client's locks and cancels its pending
confirmed commit at once, not after ``idle_timeout``. The socket stays: the next request (the next
task of the host, which is handed the same path) gets a fresh lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

from netconf_callhome.errors import CallHomeError
from netconf_callhome.endpoints.platform import DEFAULT, Platform, platform_for, short_network_os
from netconf_callhome.endpoints.ncclient_session import endpoint_session_class
from netconf_callhome.protocol.rpc_socket import MAX_FRAME, close_frames, listen_frames
from netconf_callhome.protocol.session import HeldSession
from netconf_callhome.sessions.local import LocalLease, open_local_lease

log = logging.getLogger("netconf_callhome.endpoints")

_MAX_REQUEST = MAX_FRAME
INSTALL_HINT = "pip install 'netconf-callhome[ansible]' (ansible-core and ncclient) into the listener's environment"


class EndpointError(CallHomeError):
    """The persistent-connection endpoint of a device cannot be served."""

    code = "endpoint"


class EndpointUnavailableError(EndpointError):
    """ansible-core or ncclient is missing in the listener's Python environment."""

    code = "endpoint-unavailable"


class EndpointGoneError(EndpointError):
    """No endpoint has this id (it went after its idle time, or its session ended): ask ``endpoint`` again."""

    code = "endpoint-gone"


class EndpointRPCError(Exception):
    """A request failed for a reason of the endpoint (session lost, timeout); the text reaches the module."""


Key = Tuple[str, str, str, float]  # a RESTCONF endpoint's: (device, root, network_os, command_timeout)
ClientKey = Tuple[str, str]  # a NETCONF endpoint's: (device, client)


class _AnsibleRuntime:
    """ansible-core and ncclient, imported on first use; the plugin loader set up once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = False  # netconf: the plugin loader and ncclient
        self._plugins_ready = False  # the plugin loader (and JsonRpcServer) alone
        self._paths: Tuple[str, ...] = ()
        self._classes: Dict[str, Any] = {}
        self.modules: Dict[str, Any] = {}

    def load_plugins(self, collections_paths: Sequence[str]) -> None:
        """ansible-core's plugin loader and ``JsonRpcServer`` without ncclient: all that the
        RESTCONF endpoints (``endpoints.restconf_rpc``, httpapi sub-plugins) need."""
        with self._lock:
            self._load_plugins(collections_paths)

    def _load_plugins(self, collections_paths: Sequence[str]) -> None:
        """Under ``self._lock``: the plugin loader is set up once per listener, whoever asks first."""
        if self._plugins_ready:
            missing = [p for p in collections_paths if p not in self._paths]
            if missing:
                log.warning(
                    "event=endpoint.collections_path_ignored paths=%s loaded=%s "
                    "reason='the plugin loader is set up once per listener'",
                    ":".join(missing), ":".join(self._paths),
                )
            return
        try:
            from ansible.plugins.loader import httpapi_loader, init_plugin_loader, netconf_loader
            from ansible.utils.jsonrpc import JsonRpcServer
        except Exception as exc:  # ImportError
            raise EndpointUnavailableError(
                "the listener cannot serve Ansible modules: %s: %s; %s" % (type(exc).__name__, exc, INSTALL_HINT)
            ) from None
        init_plugin_loader(list(collections_paths))
        self.modules.update(netconf_loader=netconf_loader, httpapi_loader=httpapi_loader, JsonRpcServer=JsonRpcServer)
        self._paths = tuple(collections_paths)
        self._plugins_ready = True
        log.info("event=endpoint.ansible_loaded collections_paths=%s", ":".join(self._paths))

    def load(self, collections_paths: Sequence[str]) -> None:
        with self._lock:
            if self._ready:
                self._load_plugins(collections_paths)  # only warns about paths it cannot add now
                return
            self._load_plugins(collections_paths)
            try:
                from ncclient import manager as nc_manager
                from ncclient.transport.session import SessionListener
                from ncclient.xml_ import to_ele

                session_class = endpoint_session_class()
            except Exception as exc:  # ImportError, or ncclient's paramiko/FIPS oddities
                raise EndpointUnavailableError(
                    "the listener cannot serve Ansible modules: %s: %s; %s" % (type(exc).__name__, exc, INSTALL_HINT)
                ) from None
            self.modules.update(
                nc_manager=nc_manager, EndpointSession=session_class, SessionListener=SessionListener, to_ele=to_ele,
            )
            self._ready = True

    def loaded_class(self, network_os: str) -> Any:
        """The sub-plugin class for ``network_os`` if it is loaded already, else None (no lock:
        a dict read; what every endpoint after the first one of a network_os finds)."""
        return self._classes.get(network_os) if self._ready else None

    def netconf_class(self, network_os: str) -> Any:
        """The netconf sub-plugin class for ``network_os`` (``default`` when none is installed)."""
        with self._lock:
            cls = self._classes.get(network_os)
            if cls is None:
                loader = self.modules["netconf_loader"]
                cls = loader.get(network_os, class_only=True) or loader.get("default", class_only=True)
                if cls is None:
                    raise EndpointUnavailableError(
                        "no netconf plugin for network_os %r and no 'default' one: is ansible.netcommon "
                        "in the collections path %s?" % (network_os, ":".join(self._paths))
                    )
                self._classes[network_os] = cls
                log.info("event=endpoint.plugin_loaded network_os=%s plugin=%s", network_os,
                         getattr(cls, "_load_name", cls.__name__))
            return cls


class Endpoint:
    """One client's persistent connection to one device: socket, lease, manager, sub-plugin."""

    def __init__(
        self, key: ClientKey, held: HeldSession, path: str, platform: Platform, command_timeout: float,
        requested_network_os: str = "auto",
    ) -> None:
        self.key = key
        self.held = held
        self.device = held.device
        self.path = path
        self.id = os.path.basename(path).rsplit(".", 1)[0]
        self.platform = platform
        self.command_timeout = command_timeout
        self.requested_network_os = requested_network_os
        # ``reset`` / ``close`` asked: the client ends when the requests in flight have finished
        self.end_requested = False
        self.clients = 1  # leases this endpoint has had (a reset ends one, the next request opens one)
        self.lease: Optional[LocalLease] = None
        self.manager: Any = None
        self.sub_plugin: Any = None
        self.connection: Optional[EndpointConnection] = None
        self.server: Optional[asyncio.AbstractServer] = None
        self.device_handler = platform.device_handler
        self.lost: Optional[str] = None
        self.active = 0
        self.requests = 0
        self.last_used = time.monotonic()
        self.created = time.time()

    def session_lost(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
            log.info("event=endpoint.session_lost device=%s path=%s reason=%r", self.device, self.path, reason)

    def set_command_timeout(self, seconds: float) -> None:
        """The timeout of the next requests (ncclient reads the manager's at each RPC)."""
        self.command_timeout = seconds
        manager = self.manager
        if manager is not None:
            manager._timeout = seconds

    def detach(self) -> Tuple[Any, Optional[LocalLease]]:
        """Take the manager and lease off the endpoint (their end is then not a lost session)."""
        manager, self.manager = self.manager, None
        lease, self.lease = self.lease, None
        return manager, lease

    def close_manager(self) -> None:
        close_client(*self.detach())


def close_client(manager: Any, lease: Optional[LocalLease]) -> None:
    """Close an ncclient manager and its lease (blocking: in the pool)."""
    if manager is not None:
        with contextlib.suppress(Exception):
            manager._session.close()
    if lease is not None:
        with contextlib.suppress(OSError):
            lease.close()


# Arguments that the sub-plugins pass to ncclient as numbers where ncclient needs text.
# ansible.netcommon's netconf_config passes ``confirm`` (an int) as ``commit(timeout=)``;
# netconf_base hands it to ncclient's Commit.request, which assigns it to an lxml element's text:
# "Argument must be bytes or unicode, got 'int'", so ``confirm: 120`` failed on every transport.
# The listener is the connection here, so it passes the number on as text.
_ARGUMENTS_AS_TEXT: Dict[str, Tuple[str, ...]] = {"commit": ("timeout",)}


class ModuleConnection:
    """What modules' JSON-RPC calls expect of any persistent connection (what ansible-connection's
    connection answered itself), and every method of the sub-plugin served through it. The NETCONF
    and the RESTCONF (endpoints.restconf_rpc) connections add what their sub-plugins use."""

    _endpoint: Any
    _options: Dict[str, Any]

    def get_option(self, option: str, hostvars: Any = None) -> Any:
        return self._options.get(option)

    def queue_message(self, level: str, message: str) -> None:
        log.debug("event=endpoint.message device=%s level=%s message=%r", self._endpoint.device, level, message)

    def pop_messages(self) -> list:
        return []

    def set_options(self, *args: Any, **kwargs: Any) -> None:
        return None

    def update_play_context(self, pc_data: Any) -> None:
        return None

    def close(self) -> None:
        """A module cannot close the endpoint: it goes after its idle time."""
        return None

    reset = close

    def _sub_plugin_method(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        sub = self.__dict__["_endpoint"].sub_plugin
        method = getattr(sub, name, None) if sub is not None else None
        if method is None or not callable(method):
            raise AttributeError(name)
        return method  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return self._sub_plugin_method(name)


class EndpointConnection(ModuleConnection):
    """What the netconf sub-plugin and the modules' JSON-RPC calls expect of the connection."""

    def __init__(self, endpoint: Endpoint, options: Dict[str, Any]) -> None:
        self._endpoint = endpoint
        self._network_os = short_network_os(endpoint.platform.network_os)
        self._options = options

    # -- what the sub-plugins use --------------------------------------------------------------

    @property
    def manager(self) -> Any:
        ep = self._endpoint
        if ep.manager is None or ep.lost is not None:
            raise EndpointRPCError(self._lost_text())
        return ep.manager

    # -- what ansible-connection's netconf connection answered itself ----------------------------

    def reset(self) -> None:
        """The end of the host's connection (end of a play, ``meta: reset_connection``): the
        client's lease ends once its requests in flight have finished (AnsibleEndpoints._request),
        which releases its locks and cancels its pending confirmed commit. The next request gets a
        fresh lease, as the next task got a new session from ``ansible-connection``."""
        self._endpoint.end_requested = True
        log.debug("event=endpoint.reset_requested device=%s client=%s", self._endpoint.device,
                  self._endpoint.key[1] or "-")

    close = reset

    def exec_command(self, cmd: str, in_data: Any = None, sudoable: bool = True) -> Any:
        """A raw XML request (netcommon's ``exec_command`` form)."""
        to_ele = _RUNTIME.modules["to_ele"]
        return self._guarded("exec_command", lambda: self.manager.rpc(to_ele(cmd)).data_xml)

    def __getattr__(self, name: str) -> Any:
        method = self._sub_plugin_method(name)
        as_text = _ARGUMENTS_AS_TEXT.get(name, ())

        def call(*args: Any, **kwargs: Any) -> Any:
            for arg in as_text:
                if isinstance(kwargs.get(arg), int) and not isinstance(kwargs[arg], bool):
                    kwargs[arg] = str(kwargs[arg])
            return self._guarded(name, lambda: method(*args, **kwargs))

        return call

    # -- failures that name the device ---------------------------------------------------------

    def _lost_text(self) -> str:
        ep = self._endpoint
        return (
            "device %s: its NETCONF session ended (%s); the next task waits for the device to call home again"
            % (ep.device, ep.lost or "closed")
        )

    def _guarded(self, name: str, run: Callable[[], Any]) -> Any:
        ep = self._endpoint
        if ep.lost is not None:
            raise EndpointRPCError(self._lost_text())
        try:
            return run()
        except EndpointRPCError:
            raise
        except Exception as exc:
            manager = ep.manager
            if ep.lost is not None or manager is None or not manager.connected or not ep.held.is_open:
                ep.session_lost(ep.lost or "%s: %s" % (type(exc).__name__, exc))
                raise EndpointRPCError(self._lost_text()) from None
            if type(exc).__name__ == "TimeoutExpiredError":
                timeout = getattr(manager, "_timeout", ep.command_timeout)
                raise EndpointRPCError(
                    "device %s: no reply to %s within %g s (ansible_command_timeout)" % (ep.device, name, timeout)
                ) from None
            tag = getattr(exc, "tag", None)
            if type(exc).__name__ == "RPCError" and isinstance(tag, str) and tag and tag not in str(exc):
                # Modules show only the text: name the rpc-error's tag (lock-denied and in-use
                # answers read alike, "locked by another ...") so that an operator can tell them apart.
                raise EndpointRPCError("%s (rpc-error %s)" % (exc, tag)) from None
            raise


_RUNTIME = _AnsibleRuntime()


def _method_of(data: bytes) -> str:
    """The JSON-RPC method of a request, for the debug log (never its parameters)."""
    try:
        method = json.loads(data).get("method")
    except (ValueError, AttributeError):
        return "-"
    return method if isinstance(method, str) and len(method) <= 64 else "-"


class AnsibleEndpoints:
    """The persistent-connection endpoints of a listener (``endpoint`` control operation)."""

    def __init__(
        self,
        home: str,
        *,
        idle_timeout: float = 60.0,
        max_workers: int = 32,
        touch: Optional[Callable[[], None]] = None,
        lease_ended: Optional[Callable[[HeldSession], None]] = None,
        collections_paths: Sequence[str] = (),
    ) -> None:
        self.rpc_dir = os.path.join(home, "rpc")
        # the listener's own collections paths (config collections_paths): when set, the plugin
        # loader uses them instead of the paths the clients send
        self.collections_paths = tuple(collections_paths)
        self.idle_timeout = idle_timeout
        self._max_workers = max_workers
        self._pool: Optional[ThreadPoolExecutor] = None
        # keyed by ClientKey here, by Key in RestconfEndpoints (which shares the socket handling)
        self._endpoints: Dict[Any, Endpoint] = {}
        self._locks: Dict[Any, asyncio.Lock] = {}
        self._touch = touch or (lambda: None)
        self._lease_ended = lease_ended or (lambda held: None)
        self._reaper: Optional["asyncio.Task[None]"] = None
        self.runtime = _RUNTIME

    # -- state ---------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Requests running now (the listener's idle exit waits for them)."""
        return sum(ep.active for ep in self._endpoints.values())

    def __len__(self) -> int:
        return len(self._endpoints)

    def describe(self) -> Iterable[Dict[str, Any]]:
        for ep in self._endpoints.values():
            yield {"device": ep.device, "client": ep.key[1], "socket_path": ep.path, "requests": ep.requests,
                   "active": ep.active, "lost": ep.lost}

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="callhome-rpc")
        return self._pool

    # -- the control operation -----------------------------------------------------------------

    async def open(
        self,
        held: HeldSession,
        *,
        network_os: str = "auto",
        command_timeout: float = 30.0,
        collections_paths: Sequence[str] = (),
        client: str = "",
    ) -> Dict[str, Any]:
        """The endpoint for ``client`` of ``held``'s device: an existing one, or a new one.

        Keyed on the device and the client only (see the module's doc): ``command_timeout`` applies
        to the requests from now on; a ``network_os`` other than the first one's is logged and
        kept, as ``ansible-connection`` kept its sub-plugin until the connection was reset."""
        started = time.monotonic()
        key: ClientKey = (held.device, client)
        network_os = network_os or "auto"
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            ep = self._endpoints.get(key)
            created = False
            if ep is not None and (ep.held is not held or ep.lost is not None or not held.is_open):
                await self._close(ep, "replaced")
                ep = None
            if ep is not None and network_os != ep.requested_network_os and ep.manager is None:
                # the client ended (reset): the next one may use another sub-plugin
                await self._close(ep, "network_os changed to %s after a reset" % network_os)
                ep = None
            if ep is None:
                ep = await self._create(key, held, network_os, float(command_timeout), collections_paths)
                created = True
            else:
                if network_os != ep.requested_network_os:
                    log.info(
                        "event=endpoint.network_os_kept device=%s client=%s asked=%s kept=%s "
                        "reason='the sub-plugin of a client stays until the connection is reset'",
                        ep.device, client or "-", network_os, ep.platform.network_os,
                    )
                if ep.manager is None:  # reset by the previous task: a fresh lease for this one
                    await self._relaunch(ep)
                    if ep.lost is not None:
                        reason = ep.lost
                        await self._close(ep, reason)
                        raise EndpointError("device %s: %s" % (held.device, reason), details={"device": held.device})
                ep.set_command_timeout(float(command_timeout))
            ep.last_used = time.monotonic()
        self._ensure_reaper()
        return {
            "socket_path": ep.path,
            "id": ep.id,
            "device": ep.device,
            "mode": ep.lease.mode if ep.lease else held.mode,
            "network_os": ep.platform.network_os,
            "device_handler": ep.device_handler,
            "transport": held.transport,
            "peer": held.peer,
            "capabilities": held.hello.capabilities if held.hello else [],
            "session_id": getattr(ep.manager, "session_id", None),
            "created": created,
            "seconds": round(time.monotonic() - started, 4),
        }

    async def _create(
        self, key: ClientKey, held: HeldSession, network_os: str, command_timeout: float,
        collections_paths: Sequence[str],
    ) -> Endpoint:
        started = time.monotonic()
        capabilities = held.hello.capabilities if held.hello else []
        platform = platform_for(network_os, capabilities)
        cls = self.runtime.loaded_class(platform.network_os)
        if cls is None:  # the first endpoint of this network_os: imports and the plugin loader, in the pool
            loop = asyncio.get_running_loop()
            pool = self._executor()
            await loop.run_in_executor(pool, self.runtime.load, self.collections_paths or tuple(collections_paths))
            cls = await loop.run_in_executor(pool, self.runtime.netconf_class, platform.network_os)
        path = self._path_for(key)
        ep = Endpoint(key, held, path, platform, command_timeout, requested_network_os=network_os)
        options = {
            "persistent_command_timeout": int(command_timeout),
            "network_os": platform.network_os,
            "host": held.device,
            "callhome_device": held.device,
        }
        ep.connection = EndpointConnection(ep, options)
        ep.sub_plugin = cls(ep.connection)
        with contextlib.suppress(Exception):  # a sub-plugin without options of its own
            ep.sub_plugin.set_options()
        if getattr(cls, "_load_name", "default").rsplit(".", 1)[-1] != "default":
            with contextlib.suppress(Exception):
                ep.device_handler = ep.sub_plugin.get_option("ncclient_device_handler") or ep.device_handler
        await self._lease(ep)  # LeaseError as for a control-socket lease
        try:
            await self._listen(ep)
        except BaseException:
            ep.close_manager()
            raise
        self._endpoints[key] = ep
        log.info(
            "event=endpoint.start device=%s client=%s mode=%s network_os=%s handler=%s path=%s ms=%.1f",
            ep.device, key[1] or "-", ep.lease.mode if ep.lease else "-", platform.network_os, ep.device_handler, path,
            (time.monotonic() - started) * 1000,
        )
        return ep

    async def _lease(self, ep: Endpoint) -> None:
        """A lease of the device's session for the endpoint's client, and its ncclient manager."""
        lease = await open_local_lease(ep.held)
        lease.done.add_done_callback(lambda fut: self._lease_done(ep, lease, fut))
        ep.lease = lease
        try:
            ep.manager = self._manager(ep)
        except BaseException:
            close_client(*ep.detach())
            raise

    async def _relaunch(self, ep: Endpoint) -> None:
        """A fresh lease for an endpoint whose client a reset ended; on failure the endpoint is
        lost, and its requests fail naming the device and why."""
        if ep.manager is not None or ep.lost is not None:
            return
        if not ep.held.is_open:
            ep.session_lost("device session closed")
            return
        try:
            await self._lease(ep)
        except Exception as exc:  # LeaseError, EndpointError: the request reports it
            ep.session_lost(getattr(exc, "message", None) or "%s: %s" % (type(exc).__name__, exc))
            return
        ep.clients += 1
        log.info("event=endpoint.client_start device=%s client=%s mode=%s lease=%d", ep.device, ep.key[1] or "-",
                 ep.lease.mode if ep.lease else "-", ep.clients)

    async def _end_client(self, ep: Endpoint, reason: str) -> None:
        """End the endpoint's client (its lease): the multiplexer releases its locks and cancels its
        confirmed commit (a device does so for a channel of its own when the channel closes).
        Waits, a little, for the lease to be over, so that the ``reset`` answered means released."""
        manager, lease = ep.detach()
        if manager is None and lease is None:
            return
        await asyncio.get_running_loop().run_in_executor(self._executor(), close_client, manager, lease)
        if lease is not None:
            await asyncio.wait({lease.done}, timeout=5.0)
        log.info("event=endpoint.client_end device=%s client=%s requests=%d reason=%r", ep.device,
                 ep.key[1] or "-", ep.requests, reason)

    def _lease_done(self, ep: Endpoint, lease: LocalLease, fut: "asyncio.Future[str]") -> None:
        reason = "lease ended"
        if not fut.cancelled():
            exc = fut.exception()
            reason = str(exc) if exc is not None else (fut.result() or reason)
        if ep.lease is lease:  # not a lease the endpoint ended itself (reset, close)
            ep.session_lost(reason)
        with contextlib.suppress(Exception):
            self._lease_ended(ep.held)

    def _manager(self, ep: Endpoint) -> Any:
        """An ncclient Manager over the endpoint's lease, built in the event loop: nothing here
        waits (the session adopts the hello the listener holds, see ncclient_session)."""
        mods = self.runtime.modules
        assert ep.lease is not None
        hello = ep.lease.hello
        device_handler = mods["nc_manager"].make_device_handler({"name": ep.device_handler})
        session = mods["EndpointSession"](device_handler)
        try:
            session.adopt(ep.lease.sock, hello.capabilities, hello.session_id)
        except Exception as exc:
            with contextlib.suppress(Exception):
                session.close()
            raise EndpointError(
                "device %s: the NETCONF hello over the endpoint's session failed: %s" % (ep.device, exc),
                details={"device": ep.device},
            ) from None

        listener_base: Any = mods["SessionListener"]

        class DropWatcher(listener_base):  # type: ignore[misc,valid-type]
            def callback(self, root: Any, raw: Any) -> None:
                return None

            def errback(self, ex: Exception) -> None:
                if ep.manager is not None and ep.manager._session is session:  # not one the endpoint closed
                    ep.session_lost("%s: %s" % (type(ex).__name__, ex))

        session.add_listener(DropWatcher())
        manager = mods["nc_manager"].Manager(session, device_handler, timeout=ep.command_timeout)
        manager._timeout = ep.command_timeout
        return manager

    # -- the socket ----------------------------------------------------------------------------

    def _path_for(self, key: Tuple[Any, ...]) -> str:
        digest = hashlib.sha256(repr(key).encode("utf-8")).hexdigest()[:12]
        return os.path.join(self.rpc_dir, "%s.sock" % digest)

    async def _listen(self, ep: Endpoint) -> None:
        def too_large(size: int) -> None:
            log.warning("event=endpoint.request_too_large device=%s bytes=%d", ep.device, size)

        try:
            ep.server = await listen_frames(
                ep.path, lambda data: self._request(ep, data), max_frame=_MAX_REQUEST, too_large=too_large
            )
        except OSError as exc:
            raise EndpointError("cannot listen on %s: %s" % (ep.path, exc.strerror or exc)) from None

    async def request(self, endpoint_id: str, data: bytes) -> bytes:
        """One JSON-RPC request for the endpoint ``endpoint_id`` (the ``id`` that ``open`` answered).

        What the control operation ``rpc`` runs for a relay of a remote listener's client: the same
        handler as a request on the endpoint's Unix socket.
        """
        for ep in self._endpoints.values():
            if ep.id == endpoint_id:
                return await self._request(ep, data)
        raise EndpointGoneError(
            "no endpoint %r on this listener (it went after %g s idle or its session ended)"
            % (endpoint_id, self.idle_timeout),
            details={"endpoint": endpoint_id},
        )

    async def _request(self, ep: Endpoint, data: bytes) -> bytes:
        ep.active += 1
        ep.requests += 1
        self._touch()
        netconf = isinstance(ep, Endpoint)  # RestconfEndpoints' endpoints come here too: no lease
        try:
            if netconf and ep.manager is None and ep.lost is None:
                # a request after a reset, without the next task asking for the endpoint first
                async with self._locks.setdefault(ep.key, asyncio.Lock()):
                    await self._relaunch(ep)
            return await asyncio.get_running_loop().run_in_executor(self._executor(), self._handle, ep, data)
        finally:
            ep.active -= 1
            ep.last_used = time.monotonic()
            if netconf and ep.end_requested and not ep.active:
                ep.end_requested = False
                await self._end_client(ep, "reset by Ansible (end of the play or meta: reset_connection)")

    def _handle(self, ep: Endpoint, data: bytes) -> bytes:
        """One JSON-RPC request; a server instance per request (its ``_objects`` is a class attribute)."""
        started = time.monotonic()
        server = self.runtime.modules["JsonRpcServer"]()
        server._objects = {ep.connection}
        response = server.handle_request(data)
        out = response.encode("utf-8") if isinstance(response, str) else bytes(response)
        if log.isEnabledFor(logging.DEBUG):
            # the method and the outcome only: requests and replies carry configuration and secrets
            log.debug("event=endpoint.request device=%s client=%s method=%s error=%s ms=%.1f", ep.device,
                      ep.key[1] or "-", _method_of(data), b'"error"' in out, (time.monotonic() - started) * 1000)
        return out

    # -- idle time and shutdown ----------------------------------------------------------------

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap_loop())

    async def _reap_loop(self) -> None:
        interval = max(0.2, min(5.0, self.idle_timeout / 4))
        while self._endpoints:
            await asyncio.sleep(interval)
            await self.reap()

    async def reap(self) -> None:
        now = time.monotonic()
        for ep in list(self._endpoints.values()):
            if ep.active:
                continue
            if ep.lost is not None or not ep.held.is_open:
                await self._close(ep, ep.lost or "device session closed")
            elif now - ep.last_used > self.idle_timeout:
                await self._close(ep, "idle %.0f s" % (now - ep.last_used))

    async def _close(self, ep: Endpoint, reason: str) -> None:
        if self._endpoints.get(ep.key) is ep:
            del self._endpoints[ep.key]
        close_frames(ep.server, ep.path, unlink=self._endpoints.get(ep.key) is None)
        if ep.manager is not None or ep.lease is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor(), close_client, *ep.detach())
        lock = self._locks.get(ep.key)
        if ep.key not in self._endpoints and lock is not None and not lock.locked():
            del self._locks[ep.key]  # one per client ever seen would grow without bound
        log.info("event=endpoint.end device=%s client=%s requests=%d reason=%r", ep.device, ep.key[1] or "-",
                 ep.requests, reason)

    async def close_all(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for ep in list(self._endpoints.values()):
            await self._close(ep, "listener stopping")
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


__all__ = (
    "AnsibleEndpoints", "ClientKey", "DEFAULT", "Endpoint", "EndpointConnection", "EndpointError", "EndpointGoneError",
    "EndpointRPCError", "ModuleConnection",
    "EndpointUnavailableError", "INSTALL_HINT",
)

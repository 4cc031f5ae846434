# SPDX-License-Identifier: GPL-3.0-or-later
"""Clients use any node: a request for a device held by another node is forwarded to that node.

The control server asks :meth:`Forwarder.serve` first for ``wait``, ``endpoint``, ``lease`` and
``rpc`` (requests that did not come over the node-to-node channel themselves). When this node
holds the device, or nobody holds it yet, the request is served here as before. When the shared
database names another node as the holder (``device_owners`` + a connected ``devices`` row, and
that node's channel address in ``nodes``; state.cluster_nodes), the request goes there over the
channel (control.cluster):

- ``wait``: the owner's answer, with its ``node``;
- ``endpoint``: the owner opens its endpoint; this node opens a *proxy* endpoint, a Unix socket
  of its own (0600, ``<home>/rpc/fwd-*.sock``) carrying the same ``send_data``/``recv_data``
  frames, whose every JSON-RPC request goes to the owner's endpoint (its ``rpc`` operation). The
  answer names the proxy's socket and id, so the connection plugin and modules (and the relay of
  a ``tls://`` client, through ``rpc`` with the proxy's id) see no difference;
- ``lease``: the owner's lease, its NETCONF bytes copied both ways;
- ``rpc`` with a proxy's id: to the owner's endpoint.

Which node holds a device is remembered from the database's answers (at most ``_OWNERS_MAX``
devices), and the next request goes there without a lookup. Every forwarded ``wait``,
``endpoint`` and ``lease`` says ``only_if_held``: a node that holds no session with the device
now answers "not held here" (control.cluster) instead of serving it (a remembered owner the device
has left, or a database row that lags behind the session). The entry is then forgotten and the
database asked again, at once (a remembered owner: so a stale memory costs one round trip, never
a wrong answer) or at the next poll while the client's wait lasts (the database's own owner).
An owner that does not answer is forgotten too, with its pooled connections. The requests travel
on the pooled connections of :class:`ClusterClient`.

While a client waits (``wait`` > 0) the lookup repeats every ``_POLL`` s, so a device that calls
any node during the wait is found; an owner that does not answer is retried the same way (its
devices move to other nodes when it is down) and, when the wait ends, reported as
``device r1 is held by node-b at ADDR, which does not answer: ...``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from netconf_callhome.control.cluster import NOT_HELD, ClusterClient, answer_rpc, pipe, read_rpc_body, result_of
from netconf_callhome.errors import CallHomeError, ControlError, NodeUnreachableError
from netconf_callhome.protocol.rpc_socket import close_frames, listen_frames
from netconf_callhome.state.cluster_nodes import HEARTBEAT_STALE, Holder, NodeDirectory
from netconf_callhome.errors import StateStoreError

log = logging.getLogger("netconf_callhome.cluster")

FORWARDED_OPS = frozenset(("wait", "endpoint", "lease", "rpc"))
_POLL = 0.2  # seconds between lookups while a client waits for its device
_ANSWER_MARGIN = 60.0  # beyond the client's own wait: the owner loading its plugins, the device
_OWNERS_MAX = 65536  # remembered owners (the least recently used go first)


def _not_held(exc: CallHomeError) -> bool:
    """The owner's answer to a cached route: it holds no session with the device now."""
    return isinstance(exc, ControlError) and exc.details.get("reason") == NOT_HELD


def proxy_id(node: str, remote_id: str) -> str:
    """A proxy endpoint's id names the owner and its endpoint, so that any node can route an
    ``rpc`` for it (a relay behind a balancer may reach another node than the one that answered
    ``endpoint``): ``fwd-<node name in hex>-<the owner's endpoint id>``."""
    return "fwd-%s-%s" % (node.encode("utf-8").hex(), remote_id)


def parse_proxy_id(endpoint: str) -> Optional[Tuple[str, str]]:
    """(node, the owner's endpoint id) of a proxy id, or None."""
    parts = endpoint.split("-", 2)
    if len(parts) != 3 or parts[0] != "fwd" or not parts[2]:
        return None
    try:
        return bytes.fromhex(parts[1]).decode("utf-8"), parts[2]
    except ValueError:
        return None


class _Proxy:
    """A local endpoint whose JSON-RPC requests go to an endpoint of another node."""

    def __init__(self, holder: Holder, remote_id: str, path: str, command_timeout: float) -> None:
        self.holder = holder
        self.remote_id = remote_id
        self.path = path
        self.command_timeout = command_timeout
        self.id = proxy_id(holder.node, remote_id)
        self.server: Optional[asyncio.AbstractServer] = None
        self.last_used = time.monotonic()
        self.active = 0


class Forwarder:
    """Forwards a node's client requests to the node holding the device (see the module doc)."""

    def __init__(
        self,
        directory: NodeDirectory,
        client: ClusterClient,
        *,
        held_here: Any,
        rpc_dir: str,
        idle_timeout: float = 60.0,
    ) -> None:
        self.directory = directory
        self.client = client
        self.node = directory.node
        # held_here(device) -> bool: this node holds a session with the device now
        self._held_here = held_here
        self.rpc_dir = rpc_dir
        self.idle_timeout = idle_timeout
        self._proxies: Dict[Tuple[str, str], _Proxy] = {}
        self._by_id: Dict[str, _Proxy] = {}
        self._reaper: Optional["asyncio.Task[None]"] = None
        # clients waiting for a device: answered together by one lookup per _POLL s
        self._waiting: Dict[str, List["asyncio.Future[Optional[Holder]]"]] = {}
        self._poller: Optional["asyncio.Future[None]"] = None
        # the database's latest answers: device -> its owner, node -> its address (a hint the
        # owner verifies: only_if_held)
        self._owners: "collections.OrderedDict[str, Holder]" = collections.OrderedDict()
        self._addresses: Dict[str, str] = {}
        self.lookups = 0  # owner lookups in the database (tests and the benchmark read it)

    # -- remembered owners --------------------------------------------------------------------------

    def _remember(self, holder: Optional[Holder], device: str) -> None:
        if holder is None or holder.node == self.node or not holder.address:
            self._owners.pop(device, None)
            return
        if holder.heartbeat_age is not None and holder.heartbeat_age > HEARTBEAT_STALE:
            # a node that stopped refreshing its heartbeat may have left the cluster (dead, cut
            # off): not remembered, and its kept connections are not trusted; each request asks
            # the database and dials it anew (failing within connect_timeout when it is gone)
            self._owners.pop(device, None)
            self.client.drop(holder.node)
            return
        self._owners[device] = holder
        self._owners.move_to_end(device)
        self._addresses[holder.node] = holder.address
        while len(self._owners) > _OWNERS_MAX:
            self._owners.popitem(last=False)

    def forget(self, device: str) -> None:
        """The remembered owner of ``device`` proved wrong: the next request asks the database."""
        self._owners.pop(device, None)

    def forget_node(self, node: str) -> None:
        """``node`` does not answer: forget what it held, its address and its pooled connections."""
        for device in [d for d, h in self._owners.items() if h.node == node]:
            del self._owners[device]
        self._addresses.pop(node, None)
        self.client.drop(node)

    async def _lookup(self, device: str) -> Optional[Holder]:
        self.lookups += 1
        holder = await self.directory.holder(device)
        self._remember(holder, device)
        return holder

    # -- which node -----------------------------------------------------------------------------

    async def locate(self, device: str, wait: float) -> Optional[Holder]:
        """The other node holding ``device``, or None: served here (held here, or by nobody
        within ``wait`` s). Raises NodeUnreachableError when the holder never answered."""
        holder, _cached = await self._locate(device, wait, cached=False)
        return holder

    async def _locate(self, device: str, wait: float, *, cached: bool) -> Tuple[Optional[Holder], bool]:
        """:meth:`locate`, and whether the holder is the remembered one (``cached``: it may be
        used; the request then asks the owner to verify it holds the device)."""
        deadline = time.monotonic() + wait
        unreachable: Optional[NodeUnreachableError] = None
        first = True
        while True:
            if self._held_here(device):
                return None, False
            if first and cached:
                remembered = self._owners.get(device)
                if remembered is not None:
                    self._owners.move_to_end(device)
                    return remembered, True
            try:
                if first:
                    holder = await self._lookup(device)
                    first = False
                else:
                    holder = await self._next_lookup(device, deadline)
            except StateStoreError as exc:
                # the database is down: this node can still serve what it holds itself
                log.warning("event=cluster.lookup_failed device=%s error=%r", device, exc.message)
                return None, False
            if holder is not None and holder.node != self.node:
                if not holder.address:
                    unreachable = NodeUnreachableError(
                        "device %s is held by node %s, which has no node-to-node channel (cluster.bind): "
                        "ask that node, or configure cluster on every node" % (device, holder.node),
                        details={"device": device, "node": holder.node},
                    )
                else:
                    return holder, False
            if deadline - time.monotonic() <= 0:
                if unreachable is not None:
                    raise unreachable
                return None, False

    async def _next_lookup(self, device: str, deadline: float) -> Optional[Holder]:
        """The device's holder from the next batched lookup (at most ``_POLL`` s away), or None
        when the deadline comes first. One query per ``_POLL`` s answers every waiting client of
        this node, however many there are (a playbook's forks waiting for devices to call)."""
        fut: "asyncio.Future[Optional[Holder]]" = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(device, []).append(fut)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll_loop())
        try:
            return await asyncio.wait_for(fut, max(0.001, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            return None

    async def _poll_loop(self) -> None:
        while self._waiting:
            await asyncio.sleep(_POLL)
            waiting, self._waiting = self._waiting, {}
            waiting = {device: [f for f in futs if not f.done()] for device, futs in waiting.items()}
            waiting = {device: futs for device, futs in waiting.items() if futs}
            if not waiting:
                continue
            try:
                self.lookups += 1
                found: Dict[str, Holder] = await self.directory.holders(sorted(waiting))
                for device in waiting:
                    self._remember(found.get(device), device)
            except StateStoreError as exc:
                for futs in waiting.values():
                    for fut in futs:
                        if not fut.done():
                            fut.set_exception(exc)
                continue
            for device, futs in waiting.items():
                for fut in futs:
                    if not fut.done():
                        fut.set_result(found.get(device))

    def _unreachable(self, holder: Holder, exc: CallHomeError) -> NodeUnreachableError:
        age = holder.heartbeat_age
        stale = (
            " (no heartbeat for %.0f s)" % age if age is not None and age > HEARTBEAT_STALE else ""
        )
        return NodeUnreachableError(
            "device %s is held by %s at %s, which does not answer%s: %s"
            % (holder.device, holder.node, holder.address, stale, exc.message),
            details={"device": holder.device, "node": holder.node, "address": holder.address},
        )

    async def _forward(self, device: str, wait: float, call: Any) -> Tuple[Optional[Holder], Any]:
        """Find the holder and run ``call(holder, remaining)`` on it, a request the holder serves
        only if it holds the device now (``only_if_held``). Retried while the wait lasts when the
        holder does not answer (the device may move); when it answers "not held here", the
        database is asked again: at once for a remembered holder, at the next poll for one the
        database named (its rows lag behind the session: the device just left, or is calling
        again). (None, None): serve it here."""
        deadline = time.monotonic() + wait
        cached = True
        while True:
            holder, remembered = await self._locate(device, max(0.0, deadline - time.monotonic()), cached=cached)
            if holder is None:
                return None, None
            try:
                return holder, await call(holder, max(0.0, deadline - time.monotonic()))
            except NodeUnreachableError as exc:
                self.forget_node(holder.node)
                cached = False
                error = self._unreachable(holder, exc)
                if deadline - time.monotonic() <= _POLL:
                    raise error from None
                log.info("event=cluster.owner_unreachable device=%s node=%s error=%r", device, holder.node, exc.message)
                await asyncio.sleep(_POLL)
            except ControlError as exc:
                if not _not_held(exc):
                    raise
                log.debug("event=cluster.not_held device=%s node=%s remembered=%s", device, holder.node, remembered)
                self.forget(device)
                cached = False
                if not remembered:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None, None
                    await asyncio.sleep(min(_POLL, remaining))

    # -- the control server's hook ---------------------------------------------------------------

    async def serve(
        self, op: str, request: Dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Optional[Dict[str, Any]]:
        """Serve ``op`` on another node if the device is held there: the answer to send (``lease``
        and ``rpc`` have written theirs: ``{}``), or None to serve it here."""
        if op == "rpc":
            endpoint = str(request.get("endpoint") or "")
            proxy = self._by_id.get(endpoint)
            if proxy is None:
                routed = parse_proxy_id(endpoint)
                if routed is None:
                    return None
                node, remote_id = routed
                if node == self.node:  # a proxy another node made for an endpoint of this one
                    request["endpoint"] = remote_id
                    return None
                # another node's proxy: the owner is named in the id, its address in the database
                address = self._addresses.get(node) or await self.directory.address(node)
                if address:
                    self._addresses[node] = address
                if not address:
                    raise NodeUnreachableError(
                        "endpoint %s is on node %s, which has no node-to-node address recorded" % (remote_id, node),
                        details={"node": node},
                    )
                # the owner's endpoint bounds the command itself; this only bounds a silent owner
                proxy = _Proxy(Holder("behind endpoint %s" % remote_id, node, address, 0, None), remote_id, "", 600.0)
            data = await read_rpc_body(request, reader)
            response = await self._proxy_request(proxy, data)
            await answer_rpc(writer, response)
            return {}
        device = request.get("device")
        if not isinstance(device, str) or not device:
            return None  # the local handler reports the bad request
        wait = request.get("wait", 0.0)
        wait = float(wait) if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0 else 0.0
        deadline = time.monotonic() + wait
        answer = await self._serve_device(op, device, wait, request, writer)
        if answer is None and "wait" in request:
            # served here: held here now, or by nobody within the wait, which has been spent
            request["wait"] = max(0.0, deadline - time.monotonic())
        return answer

    async def _serve_device(
        self, op: str, device: str, wait: float, request: Dict[str, Any], writer: asyncio.StreamWriter
    ) -> Optional[Dict[str, Any]]:
        if op == "lease":
            return await self._lease(device, wait, request, writer)
        if op == "wait":
            async def remote_wait(holder: Holder, remaining: float) -> Any:
                args = dict(request, device=device, wait=remaining, only_if_held=True)
                return await self.client.call(holder.node, holder.address, "wait", args, timeout=remaining + _ANSWER_MARGIN)

            holder, result = await self._forward(device, wait, remote_wait)
            if holder is None:
                return None
            if isinstance(result, dict):
                result["node"] = holder.node
            return {"ok": True, "result": result}
        if op == "endpoint":
            async def remote_endpoint(holder: Holder, remaining: float) -> Any:
                args = dict(request, device=device, wait=remaining, only_if_held=True)
                return await self.client.call(
                    holder.node, holder.address, "endpoint", args, timeout=remaining + _ANSWER_MARGIN
                )

            holder, result = await self._forward(device, wait, remote_endpoint)
            if holder is None:
                return None
            command_timeout = request.get("command_timeout") or 30.0
            proxy = await self._proxy_for(holder, str(result["id"]), float(command_timeout))
            result.update(socket_path=proxy.path, id=proxy.id, node=holder.node, forwarded=True)
            log.info("event=cluster.endpoint_forwarded device=%s node=%s id=%s", device, holder.node, proxy.id)
            return {"ok": True, "result": result}
        return None

    async def _lease(
        self, device: str, wait: float, request: Dict[str, Any], writer: asyncio.StreamWriter
    ) -> Optional[Dict[str, Any]]:
        if request.get("listen"):
            holder = await self.locate(device, 0.0)
            if holder is None:
                return None
            raise ControlError(
                "a lease with 'listen' (a one-shot Unix socket) is served only by the node holding device %s: %s at %s"
                % (device, holder.node, holder.address)
            )

        async def remote_lease(holder: Holder, remaining: float) -> Any:
            args = dict(request, device=device, wait=remaining, only_if_held=True)
            opened = await self.client.send(holder.node, holder.address, "lease", args, timeout=remaining + _ANSWER_MARGIN)
            error = opened[2].get("error")
            if not opened[2].get("ok") and isinstance(error, dict) and (error.get("details") or {}).get("reason") == NOT_HELD:
                opened[1].transport.abort()
                result_of(opened[2])  # raises: _forward asks the database for the fresh owner
            return opened

        holder, opened = await self._forward(device, wait, remote_lease)
        if holder is None:
            return None
        # The client's reader is the control server's; its bytes go to the owner as NETCONF.
        remote_reader, remote_writer, answer = opened
        try:
            result_of(answer)  # the owner's refusal raised here, answered to the client as usual
            answer["result"]["node"] = holder.node
            writer.write(json.dumps(answer).encode("utf-8") + b"\n")
            await writer.drain()
            log.info("event=cluster.lease_forwarded device=%s node=%s", device, holder.node)
            return {"__pipe__": (remote_reader, remote_writer)}
        except BaseException:
            remote_writer.transport.abort()
            raise

    # -- proxy endpoints ------------------------------------------------------------------------

    async def _proxy_for(self, holder: Holder, remote_id: str, command_timeout: float) -> _Proxy:
        key = (holder.node, remote_id)
        proxy = self._proxies.get(key)
        if proxy is not None:
            proxy.holder = holder
            proxy.last_used = time.monotonic()
            return proxy
        digest = hashlib.sha256(repr(key).encode("utf-8")).hexdigest()[:12]
        path = os.path.join(self.rpc_dir, "fwd-%s.sock" % digest)
        proxy = _Proxy(holder, remote_id, path, command_timeout)
        # the same send_data frames as a local endpoint's socket, each answered by the owner
        proxy.server = await listen_frames(path, lambda data: self._proxy_request(proxy, data))
        self._proxies[key] = proxy
        self._by_id[proxy.id] = proxy
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap_loop())
        return proxy

    async def _proxy_request(self, proxy: _Proxy, data: bytes) -> bytes:
        """The owner's JSON-RPC response, or a JSON-RPC error naming why it could not be had
        (the module then fails with that text, as for any endpoint error)."""
        proxy.active += 1
        proxy.last_used = time.monotonic()
        holder = proxy.holder
        try:
            return await self.client.rpc(
                holder.node, holder.address, proxy.remote_id, data, timeout=proxy.command_timeout + _ANSWER_MARGIN
            )
        except NodeUnreachableError as exc:
            self.forget_node(holder.node)
            return _jsonrpc_error(data, self._unreachable(holder, exc).message)
        except CallHomeError as exc:
            return _jsonrpc_error(data, "%s (forwarded to %s)" % (exc.message, holder.node))
        finally:
            proxy.active -= 1
            proxy.last_used = time.monotonic()

    async def _reap_loop(self) -> None:
        while self._proxies:
            await asyncio.sleep(max(0.2, min(5.0, self.idle_timeout / 4)))
            now = time.monotonic()
            for proxy in list(self._proxies.values()):
                if not proxy.active and now - proxy.last_used > self.idle_timeout:
                    self._close(proxy)

    def _close(self, proxy: _Proxy) -> None:
        self._proxies.pop((proxy.holder.node, proxy.remote_id), None)
        self._by_id.pop(proxy.id, None)
        close_frames(proxy.server, proxy.path)

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self._poller is not None:
            self._poller.cancel()
        for proxy in list(self._proxies.values()):
            self._close(proxy)
        self.client.close()


def _jsonrpc_error(request: bytes, message: str) -> bytes:
    try:
        req_id = json.loads(request).get("id")
    except (ValueError, AttributeError):
        req_id = None
    return json.dumps({"jsonrpc": "2.0", "id": req_id, "error": {"code": -32603, "message": message}}).encode("utf-8")


async def splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    remote: Tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """A forwarded lease: the client's stream and the owner's, both ways, until either ends."""
    remote_reader, remote_writer = remote
    tasks = [asyncio.ensure_future(pipe(reader, remote_writer)), asyncio.ensure_future(pipe(remote_reader, writer))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        remote_writer.transport.abort()


__all__ = ("FORWARDED_OPS", "Forwarder", "splice")

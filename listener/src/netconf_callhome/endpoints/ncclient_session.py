# SPDX-License-Identifier: GPL-3.0-or-later
"""The ncclient session of an endpoint: adopts the device's hello, sends at once, never polls.

An endpoint's ncclient session runs over an in-process lease (a socket pair whose other end the
listener serves). Three things of ncclient's own ``Session`` cost every task time, and the
listener owns the transport here, so it does them differently:

* **Sending.** ``Session.send`` only queues; the session thread writes the queue the next time its
  ``select(timeout=0.1)`` returns, so every RPC waited 0-100 ms before it left the listener (77 ms
  measured for a first ``get_config``, docs/performance.md). :meth:`send` frames the message as
  ``Session.run`` does and writes it from the calling thread, under a lock (several module
  requests of one client may run in the pool at once).
* **The hello.** The listener has already read and verified the device's hello for this lease
  (on the new channel, or the held session's for a shared lease), and replays it as the first
  message. ``_post_connect`` would wait in a pool thread for the session thread to parse that
  replay (a thread hand-off each way, each up to the interpreter's 5 ms switch interval on a
  busy listener). :meth:`adopt` takes the capabilities and session-id from the listener's hello,
  sends the client hello and starts the reader, without waiting for anything; the reader drops
  the replayed hello before ncclient's parser sees a byte (ncclient's reply listener would
  otherwise treat a hello without ``message-id`` as a fatal error on some device handlers).
* **Idle endpoints.** ``Session.run`` wakes every 0.1 s even with nothing to do, so 500 idle
  endpoints cost 5,000 wake-ups a second. :meth:`run` blocks in ``recv``; :meth:`close` shuts the
  socket down, which wakes it.
* **Hostile replies.** ncclient parses a reply with lxml's defaults, which substitute internal
  entities. Each device message is first read up to its root start tag by the listener's own
  parser (:func:`~netconf_callhome.protocol.framing.xml_events`, which refuses any DTD in any
  encoding); a message with a DTD ends the session before ncclient sees it.
* **Threads.** ncclient starts a thread per session, and ``Thread.start`` waits for the new
  thread to run (a sixth of the listener's samples for a new endpoint in a py-spy profile). The
  readers run on :class:`ReaderThreads` instead: daemon threads kept for reuse, a new one only
  when none is free.

ncclient is imported on first use (the ``ansible`` extra of the distribution).
"""

from __future__ import annotations

import _thread
import contextlib
import queue
import socket
import threading
from typing import Any, Callable, Optional, Sequence

from netconf_callhome.errors import FramingError
from netconf_callhome.protocol.framing import xml_events

_CLASS: Optional[Any] = None
_LOCK = threading.Lock()

# RFC 6242 framing, as ncclient.transport.session writes it.
_EOM = b"]]>]]>"
_END_OF_CHUNKS = b"\n##\n"
_BASE_11 = "urn:ietf:params:netconf:base:1.1"
_READ_SIZE = 65536
# The replayed hello was read and bounded by the listener already; this only guards the reader
# against a lease that does not start with one.
_MAX_REPLAYED_HELLO = 16 * 1024 * 1024


class ReaderThreads:
    """Threads that run session readers, reused: a reader blocks for the life of its session, so
    the number of threads follows the number of live sessions; threads idle longer than
    ``idle_seconds`` end. Like daemon threads they are never joined: a reader blocked in ``recv``
    never holds up the interpreter's exit (a ThreadPoolExecutor's workers are joined at exit)."""

    def __init__(self, idle_seconds: float = 120.0, name: str = "callhome-session") -> None:
        self._work: "queue.SimpleQueue[Callable[[], None]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._started = 0
        self._idle_seconds = idle_seconds
        self._name = name

    @property
    def threads(self) -> int:
        return self._started

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if spawn:
                self._started += 1
            else:
                self._idle -= 1  # this job takes an idle thread: the next submit must not count it
        self._work.put(fn)
        if spawn:
            # _thread: threading.Thread.start waits until the new thread runs, a GIL hand-off the
            # event loop (the caller) would pay per new endpoint. Such threads are never joined at
            # exit, as daemon threads.
            _thread.start_new_thread(self._worker, ("%s-%d" % (self._name, self._started),))

    def _worker(self, name: str) -> None:
        threading.current_thread().name = name  # for py-spy and tracebacks
        while True:
            try:
                fn = self._work.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0 and self._work.empty():
                        self._idle -= 1
                        self._started -= 1
                        return
                continue  # a job is on its way to this thread (its submit took this idle slot)
            try:
                fn()
            except Exception:  # pylint: disable=broad-except  # a reader reports its own errors
                pass
            with self._lock:
                self._idle += 1


READERS = ReaderThreads()


def endpoint_session_class() -> Any:
    """ncclient's ``UnixSocketSession`` with :meth:`adopt`, a direct ``send`` and a blocking reader."""
    global _CLASS
    with _LOCK:
        if _CLASS is not None:
            return _CLASS
        from ncclient.capabilities import Capabilities
        from ncclient.transport import UnixSocketSession
        from ncclient.transport.errors import SessionCloseError, TransportError
        from ncclient.transport.parser import DefaultXMLParser, SAXFilterXMLNotFoundError
        from ncclient.transport.session import HelloHandler, NetconfBase, NotificationHandler

        class EndpointSession(UnixSocketSession):  # type: ignore[misc,valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self._send_lock = threading.Lock()
                self._replayed_hello = False
                self.reader_native_id: Optional[int] = None  # the reader thread's, for diagnostics

            def adopt(self, sock: socket.socket, capabilities: Sequence[str], session_id: Optional[int]) -> None:
                """Start the session on ``sock``, whose first message is the device's hello that
                the listener already holds (``capabilities``, ``session_id``)."""
                self._socket = sock
                self._connected = True
                self._replayed_hello = True
                self.add_listener(NotificationHandler(self._notification_q))
                self._server_capabilities = Capabilities(list(capabilities))
                self._id = str(session_id) if session_id is not None else None
                # the client hello is end-of-message framed whatever follows (RFC 6242 section 4.1)
                self.send(HelloHandler.build(self._client_capabilities, self._device_handler))
                if _BASE_11 in self._server_capabilities and _BASE_11 in self._client_capabilities:
                    self._base = NetconfBase.BASE_11
                self._reader_done = threading.Event()
                READERS.submit(self._read_until_closed)

            def _read_until_closed(self) -> None:
                self.reader_native_id = threading.get_native_id()
                try:
                    self.run()
                finally:
                    self._reader_done.set()

            def wait_closed(self, timeout: Optional[float] = None) -> bool:
                """True when the reader has ended (after :meth:`close` or the lease's end)."""
                return self._reader_done.wait(timeout)

            def send(self, message: str) -> None:
                if not self.connected:
                    raise TransportError("Not connected to NETCONF server")
                data = message.encode()
                if self._base == NetconfBase.BASE_11:
                    data = b"\n#%d\n%s%s" % (len(data), data, _END_OF_CHUNKS)
                else:
                    data = data + _EOM
                with self._send_lock:
                    self._socket.sendall(data)

            def run(self) -> None:
                try:
                    pending = self._skip_replayed_hello() if self._replayed_hello else b""
                    if pending:
                        self._parse(pending)
                    while True:
                        data = self._socket.recv(_READ_SIZE)
                        if data:
                            self._parse(data)
                        elif self._closing.is_set():
                            break  # closed by us: the end of the session, expected
                        else:
                            raise SessionCloseError(self._buffer.getvalue())
                except Exception as exc:  # as Session.run: every listener learns why, then close
                    if not self._closing.is_set():
                        self._dispatch_error(exc)
                    self.close()

            def _skip_replayed_hello(self) -> bytes:
                buf = bytearray()
                searched = 0  # the delimiter cannot start before this: each byte is searched once
                while True:
                    end = buf.find(_EOM, searched)
                    if end >= 0:
                        return bytes(buf[end + len(_EOM):])
                    searched = max(0, len(buf) - len(_EOM) + 1)
                    if len(buf) > _MAX_REPLAYED_HELLO:
                        raise SessionCloseError("the lease did not start with the device's hello")
                    data = self._socket.recv(_READ_SIZE)
                    if not data:
                        raise SessionCloseError(bytes(buf))
                    buf += data

            def _dispatch_message(self, raw: Any) -> None:
                message = raw.encode("utf-8") if isinstance(raw, str) else raw
                try:
                    for _event in xml_events(message, "device reply"):
                        break  # the DTD check happens before the root's start tag is reported
                except FramingError as exc:
                    raise TransportError("refused a device message: %s" % exc.message) from None
                super()._dispatch_message(raw)

            def _parse(self, data: bytes) -> None:
                parser: Any = getattr(self, "parser")  # (untyped in ncclient)
                try:
                    parser.parse(data)
                except SAXFilterXMLNotFoundError:  # as Session.run: a filtered reply without the filtered XML
                    self.parser = parser = DefaultXMLParser(self)
                    parser.parse(data)

            def close(self) -> None:
                self._closing.set()
                self._connected = False
                sock = self._socket
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recv
                    sock.close()

        _CLASS = EndpointSession
        return _CLASS

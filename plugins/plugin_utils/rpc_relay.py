# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A task's local socket to a remote listener's endpoint (issue 9 item 4).

**PRIVATE** to the collection. Modules reach their connection through
``ansible.module_utils.connection.Connection``: a Unix socket carrying ``send_data`` /
``recv_data`` frames (an 8-byte big-endian length, then a JSON-RPC request or response). A local
listener serves that socket itself; a remote (``tls://``) listener cannot hand out a Unix socket.
So, for the duration of a task, the connection plugin in the ``ansible-playbook`` worker opens a
Unix socket (mode 0600, in a private directory removed afterwards) served by a thread, and
forwards every request it reads, unchanged, to the listener with the control operation ``rpc``
over the authenticated control channel. The listener answers it with the same JSON-RPC handler as
its local endpoint sockets; nothing here parses JSON-RPC beyond the request's ``id`` (for an error
answer when the listener cannot be asked).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import typing as t

_HEADER = struct.Struct("!Q")
_MAX_REQUEST = 256 * 1024 * 1024
_MAX_LINE = 1024 * 1024

Exchange = t.Callable[[bytes], bytes]


class RelayError(Exception):
    """The listener could not answer a relayed request; ``code`` is the listener's error code."""

    def __init__(self, message: str, code: str = "relay") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Relay:
    """A Unix socket whose requests ``exchange`` answers, served by threads until :meth:`close`."""

    def __init__(self, exchange: Exchange, name: str = "callhome-relay") -> None:
        self._exchange = exchange
        self._dir = tempfile.mkdtemp(prefix="callhome-relay-")  # mode 0700
        self.path = os.path.join(self._dir, "rpc.sock")
        self._closed = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._sock.bind(self.path)
        except BaseException:
            self._sock.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._sock.listen(16)
        self.requests = 0
        self._thread = threading.Thread(target=self._accept, name=name, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _addr = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="callhome-relay-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                header = _recv_exactly(conn, _HEADER.size)
                if header is None:
                    return
                (size,) = _HEADER.unpack(header)
                if size > _MAX_REQUEST:
                    return
                data = _recv_exactly(conn, size)
                if data is None:
                    return
                self.requests += 1
                try:
                    response = self._exchange(data)
                except RelayError as exc:
                    response = error_response(data, exc.message)
                except Exception as exc:  # never leave a module without an answer
                    response = error_response(data, "%s: %s" % (type(exc).__name__, exc))
                conn.sendall(_HEADER.pack(len(response)) + response)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        """Stop serving and remove the socket and its directory."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the serving thread
        except OSError:
            pass
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def error_response(request: bytes, message: str) -> bytes:
    """A JSON-RPC error for ``request``: ``Connection`` raises it in the module as ConnectionError.

    The text goes in ``data`` as well as ``message``, the shape of ansible-core's
    ``JsonRpcServer.internal_error``: netcommon's ``NetconfConnection.parse_rpc_error`` reads only
    ``data``, and would show ``b'None'`` instead of why the relay failed."""
    try:
        req_id = json.loads(request.decode("utf-8")).get("id")
    except (ValueError, AttributeError, UnicodeDecodeError):
        req_id = None
    error = {"code": -32603, "message": message, "data": message}
    return json.dumps({"jsonrpc": "2.0", "id": req_id, "error": error}).encode("utf-8")


def control_rpc(open_socket: t.Callable[[], socket.socket], token: t.Optional[str], endpoint: str,
                data: bytes) -> bytes:
    """One ``rpc`` control operation: the request line and body out, the answer line and body in."""
    payload: t.Dict[str, t.Any] = {"op": "rpc", "endpoint": endpoint, "size": len(data)}
    if token:
        payload["token"] = token
    sock = open_socket()
    try:
        sock.sendall(json.dumps(payload).encode("utf-8") + b"\n" + data)
        reader = sock.makefile("rb")
        line = reader.readline(_MAX_LINE)
        if not line.endswith(b"\n"):
            raise RelayError("the listener closed the control connection without an answer")
        try:
            answer = json.loads(line)
        except ValueError:
            raise RelayError("the listener sent a malformed answer to 'rpc'") from None
        if not answer.get("ok"):
            error = answer.get("error") or {}
            raise RelayError(str(error.get("message") or "unknown error"), str(error.get("code") or "error"))
        size = int((answer.get("result") or {}).get("size", -1))
        body = reader.read(size) if size >= 0 else b""
        if size < 0 or len(body) != size:
            raise RelayError("the listener's answer to 'rpc' ended early")
        return body
    except socket.timeout:
        raise RelayError("the listener did not answer within the command timeout") from None
    except OSError as exc:
        raise RelayError("the connection to the listener failed: %s" % (exc.strerror or exc)) from None
    finally:
        sock.close()


def _recv_exactly(conn: socket.socket, size: int) -> t.Optional[bytes]:
    chunks = []
    while size:
        chunk = conn.recv(min(size, 1024 * 1024))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


__all__ = ("Relay", "RelayError", "control_rpc", "error_response")

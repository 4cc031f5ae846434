# SPDX-License-Identifier: GPL-3.0-or-later
"""An ncclient session over an in-process lease that sends at once.

ncclient's ``Session.send`` only queues a message; the session thread writes it the next time
its ``select(timeout=0.1)`` returns, so every RPC of a module waited 0-100 ms before it left the
listener (77 ms measured for a first ``get_config``, docs/performance.md). Here ``send`` frames
the message exactly as ``Session.run`` does and writes it from the calling thread, under a lock
(several module requests of one client may run in the pool at once); the session thread only
reads. (Its ``select`` still
wakes every 0.1 s while idle: endpoints go after their idle time for that reason too.)

ncclient is imported by the caller (the ``ansible`` extra); this module only builds the subclass.
"""

from __future__ import annotations

import threading
from typing import Any, Dict

_CLASSES: Dict[int, Any] = {}
_LOCK = threading.Lock()

# RFC 6242 framing, as ncclient.transport.session writes it.
_EOM = b"]]>]]>"
_END_OF_CHUNKS = b"\n##\n"


def direct_send_session_class(base: Any, netconf_base: Any, transport_error: Any) -> Any:
    """``base`` (ncclient's UnixSocketSession) with a ``send`` that writes immediately."""
    with _LOCK:
        cls = _CLASSES.get(id(base))
        if cls is not None:
            return cls

        class DirectSendUnixSocketSession(base):  # type: ignore[misc,valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self._send_lock = threading.Lock()

            def send(self, message: str) -> None:
                if not self.connected:
                    raise transport_error("Not connected to NETCONF server")
                data = message.encode()
                if self._base == netconf_base.BASE_11:
                    data = b"\n#%d\n%s%s" % (len(data), data, _END_OF_CHUNKS)
                else:
                    data = data + _EOM
                with self._send_lock:
                    self._socket.sendall(data)

        _CLASSES[id(base)] = DirectSendUnixSocketSession
        return DirectSendUnixSocketSession

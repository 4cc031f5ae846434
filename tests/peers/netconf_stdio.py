# SPDX-License-Identifier: GPL-3.0-or-later
"""NETCONF server on stdin/stdout, for an OpenSSH ``Subsystem netconf`` line.

Why: with OpenSSH doing the SSH layer (``sshd -i``), the NETCONF layer only needs to read the
subsystem's stdin and write its stdout. Each SSH channel starts a new process, so the running
datastore can be kept in ``--state-file`` to survive across sessions of one device.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from netconf_server import (  # noqa: E402
    DEFAULT_CAPABILITIES,
    NetconfDevice,
    NetconfSession,
    parse_xml,
)


def _load_state(path: Optional[Path]) -> Optional[ET.Element]:
    if path is None or not path.exists():
        return None
    return parse_xml(path.read_bytes())


def _save_state(path: Path, running: ET.Element) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(ET.tostring(running, encoding="utf-8"))
    os.replace(tmp, path)


async def serve_stdio(hostname: str, capabilities: list[str], state_file: Optional[Path]) -> str:
    """Run one NETCONF session on fd 0/1 until close-session or EOF; return the end reason."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    out = sys.stdout.buffer
    done: asyncio.Future[str] = loop.create_future()

    def send(data: bytes) -> None:
        out.write(data)
        out.flush()

    def close(reason: str) -> None:
        if not done.done():
            done.set_result(reason)

    device = NetconfDevice(
        hostname,
        capabilities=capabilities,
        running=_load_state(state_file),
        on_change=(lambda r: _save_state(state_file, r)) if state_file else None,
        first_session_id=os.getpid(),
    )
    session = NetconfSession(device, send, close)
    session.start()

    async def pump() -> None:
        while not done.done():
            data = await reader.read(65536)
            if not data:
                close("eof")
                return
            session.data_received(data)

    task = asyncio.create_task(pump())
    reason = await done
    task.cancel()
    session.connection_lost()
    return reason


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry point; logs go to stderr (sshd forwards them to the client as extended data)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--hostname", default=os.uname().nodename)
    p.add_argument("--state-file", type=Path, default=None)
    p.add_argument(
        "--capability",
        action="append",
        default=None,
        help="capability URI to advertise besides base:1.0/1.1 (repeatable)",
    )
    args = p.parse_args(argv)
    caps = args.capability if args.capability is not None else list(DEFAULT_CAPABILITIES)
    reason = asyncio.run(serve_stdio(args.hostname, caps, args.state_file))
    print(f"netconf_stdio: session ended: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

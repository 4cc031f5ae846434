# SPDX-License-Identifier: GPL-3.0-or-later
"""Structured logging: one line per event, ``event=... device=... peer=...`` (logfmt) or JSON.

Nothing that could hold a secret is ever a log field: credentials are logged as the *method*
used (``auth=publickey``), never as values, and control-socket tokens are never logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name}
        message = record.getMessage()
        for part in _split_logfmt(message):
            key, sep, value = part.partition("=")
            if sep:
                fields[key] = value.strip('"').strip("'")
            else:
                fields.setdefault("msg", message)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, sort_keys=False)


def _split_logfmt(message: str) -> "list[str]":
    out, cur, quote = [], [], ""
    for ch in message:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            cur.append(ch)
        elif ch == " ":
            if cur:
                out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        formatter = logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger("netconf_callhome")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # asyncssh logs every connection at INFO; at 10,000 devices that drowns our own events.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

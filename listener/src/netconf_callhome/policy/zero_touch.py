# SPDX-License-Identifier: GPL-3.0-or-later
"""Zero-touch enrollments (outbound-ssh devices verified by their secret), written off the loop.

A trust-store write is a whole-file rewrite under a lock (read, validate, write, fsync, rename):
about 80 ms at 1,000 enrolled devices, and it grows with the store. Done in the event loop, each
enrollment would stall every held session's keepalives and every handshake; done one write per
device, a first roll-out of N devices would cost N whole-file rewrites. So enrollments are
queued, and one thread writes everything queued while its previous write ran in ONE locked
update (:func:`trust_ops.enroll_observed_ssh_keys`): N enrollments in a storm cost a few
writes, none on the loop.

Each caller gets a future with its own outcome (the :class:`TrustChange`, or the
:class:`CallHomeError` that refused it); a write that fails as a whole (the file unreadable, the
disk full) fails every item of its batch with that error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import List, Optional, Tuple, Union

from netconf_callhome.errors import CallHomeError, TrustStoreError
from netconf_callhome.policy import trust_ops
from netconf_callhome.policy.trust_store import TrustStore

log = logging.getLogger("netconf_callhome.policy")

Outcome = Union[trust_ops.TrustChange, CallHomeError]
_Item = Tuple[str, str, bool, "asyncio.Future[Outcome]"]


class EnrollmentWriter:
    """Batches observed SSH keys to enroll; one writer thread, one task while work is queued."""

    def __init__(self, store: TrustStore) -> None:
        self.store = store
        self._queue: List[_Item] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="trust-write")
        self._task: "Optional[asyncio.Future[None]]" = None
        self.batches = 0  # writes done (a test and the docs' cost figure read it)

    def enroll(self, device: str, public_key: str, *, replace: bool) -> "asyncio.Future[Outcome]":
        """Queue ``public_key`` for ``device``; the future resolves once it is on disk (or refused)."""
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[Outcome]" = loop.create_future()
        self._queue.append((device, public_key, replace, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())
        return fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            items = [(device, key, replace) for device, key, replace, _fut in batch]
            try:
                results: List[Outcome] = await loop.run_in_executor(
                    self._executor, trust_ops.enroll_observed_ssh_keys, self.store, items
                )
            except CallHomeError as exc:
                results = [exc] * len(batch)
            except Exception as exc:  # an OSError of the write: every item of the batch fails with it
                log.exception("event=trust.write_failed items=%d", len(batch))
                results = [TrustStoreError("cannot write the trust store %s: %s" % (self.store.path, exc))] * len(batch)
            except BaseException:
                for *_rest, fut in batch:
                    if not fut.done():
                        fut.set_result(TrustStoreError("the listener is stopping"))
                raise
            self.batches += 1
            for (*_rest, fut), outcome in zip(batch, results):
                if not fut.done():
                    fut.set_result(outcome)

    async def close(self) -> None:
        """Stop: queued items are answered with an error, the thread is let go."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for *_rest, fut in self._queue:
            if not fut.done():
                fut.set_result(TrustStoreError("the listener is stopping"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


__all__ = ("EnrollmentWriter", "Outcome")

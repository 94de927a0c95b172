"""Deployment concurrency slots, held as leases in the ``concurrency_slots`` bucket.

A deployment with ``concurrency_limit = n`` has slot keys
``<deployment_id>.0 … .n-1``. A run takes a free one when it is claimed
(PENDING) with a compare-and-set create, so two claims can never take the
same slot; it gives it back when it leaves the claimed states. Every entry
carries a per-message TTL: the holding runner's heartbeats renew it, and a
runner that dies stops renewing, so its slots come back by themselves within
one lease — no slot leaks and no deployment wedges.

nats-py's KV helpers do not know TTL expiry markers, so this module reads
and writes the bucket's stream directly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import nats.js.errors
from nats.js import JetStreamContext

from shared.codec import encode
from shared.messages import Decision, ProposeState, SlotLease
from shared.models import FlowRun
from shared.slots import STREAM, lease_from, slot_subject

from . import rules
from ._store import LOST, after_stale

#: A claim that found no free slot is told to try again after this long.
SLOT_RETRY_SECONDS = 0.5
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
#: Reads and deletes a release tries per slot the run holds, each losing only
#: to a write of that slot between the two.
RELEASE_TRIES = 5


def ttl_seconds(lease: float) -> int:
    """The whole-second TTL for a lease of ``lease`` seconds: never shorter.

    Holders fence themselves before ``lease`` has passed (docs/reliability.md);
    rounding down would let the server expire an entry before that point.
    """
    return max(1, math.ceil(lease))


class Hold(NamedTuple):
    """The slot an :meth:`Slots.acquire` wrote, at the sequence it wrote it."""

    slot: int
    seq: int
    fresh: bool
    """Taken now. False: the run held it already, and the write only renewed it."""


class Slots:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def _read(self, deployment_id: str, n: int) -> tuple[SlotLease | None, int]:
        try:
            msg = await self._js.get_last_msg(STREAM, slot_subject(deployment_id, n))
        except nats.js.errors.NotFoundError:
            return None, 0
        return lease_from(msg), msg.seq or 0

    async def _write(self, lease: SlotLease, n: int, last: int, ttl: float) -> int:
        """Write the lease to slot ``n`` if it is still at ``last``: its new
        sequence, or 0 when someone else wrote the slot meanwhile."""
        try:
            ack = await self._js.publish(
                slot_subject(lease.deployment_id, n),
                encode(lease),
                headers={_EXPECTED_LAST: str(last)},
                msg_ttl=ttl_seconds(ttl),
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in LOST:
                return 0  # someone else wrote this slot meanwhile
            raise
        return ack.seq

    async def holders(self, deployment_id: str, limit: int) -> list[SlotLease]:
        out = []
        for n in range(limit):
            lease, _ = await self._read(deployment_id, n)
            if lease is not None:
                out.append(lease)
        return out

    async def acquire(self, lease: SlotLease, limit: int, ttl: float) -> Hold | None:
        """Take a free slot for ``lease.flow_run_id`` (or renew the one it holds).

        Returns None when every slot is held by another run.
        """
        for _ in range(5):  # each pass loses only to a concurrent writer
            free: list[tuple[int, int]] = []
            for n in range(limit):
                held, seq = await self._read(lease.deployment_id, n)
                if held is not None and held.flow_run_id == lease.flow_run_id:
                    if written := await self._write(lease, n, seq, ttl):
                        return Hold(n, written, fresh=False)
                    break
                if held is None:
                    free.append((n, seq))
            else:
                for n, seq in free:
                    if written := await self._write(lease, n, seq, ttl):
                        return Hold(n, written, fresh=True)
                if not free:
                    return None
        return None

    async def give_back(self, deployment_id: str, hold: Hold) -> None:
        """Undo an :meth:`acquire` whose transition was not stored.

        Only a slot it took, and only as it wrote it. A slot the run already
        held belongs to the claim that took it: a proposal judged on an older
        copy of the run (two proposals at once, or another orchestrator's
        claim) renews that slot, then loses its compare-and-set on the run, and
        giving the slot back would leave the claim running without one. And a
        slot written again since (that claim's heartbeat) is left alone too.
        """
        if hold.fresh:
            await self._delete(deployment_id, hold.slot, hold.seq)

    async def claim_again(
        self, run: FlowRun, claim: ProposeState, limit: int, ttl: float
    ) -> tuple[rules.Outcome, float | None]:
        """Answer a claim sent again (:func:`rules.claim_sent_again`), and its slot lease.

        Nobody renewed the lease its first copy took (the claimant did not
        know it held the run): it is renewed, or a free slot taken, counted
        from now, so the claimant can fence the run by it as after a first
        claim. If every slot went to other runs meanwhile, the claimant waits.
        """
        accept = rules.Outcome(status=Decision.ACCEPT, replay=True)
        if not limit:
            return accept, None
        lease = SlotLease(
            deployment_id=run.deployment_id or "",
            flow_run_id=run.id,
            runner=claim.runner,
            attempt=run.attempt,
        )
        if await self.acquire(lease, limit, ttl) is not None:
            return accept, float(ttl_seconds(ttl))
        why = f"waiting for a concurrency slot of {run.deployment_name} ({limit} of {limit} in use)"
        return rules.Outcome(
            status=Decision.WAIT, reason=why, delay_seconds=SLOT_RETRY_SECONDS
        ), None

    async def release(self, deployment_id: str, limit: int, flow_run_id: str) -> None:
        """Free every slot the run holds (it left the claimed states).

        A slot written between the read and the delete (the run's heartbeat
        renewing it, or, on a cluster, a write of it still in flight) is read
        again and freed at its new sequence while the run still holds it:
        left alone, it stayed held for a run that had ended, one lease long.
        A slot another run holds by then is theirs.
        """
        for n in range(limit):
            for tries in range(1, RELEASE_TRIES + 1):
                held, seq = await self._read(deployment_id, n)
                if held is None or held.flow_run_id != flow_run_id:
                    break
                if await self._delete(deployment_id, n, seq):
                    break
                await after_stale(tries)

    async def _delete(self, deployment_id: str, n: int, seq: int) -> bool:
        """Free slot ``n`` if it is still at ``seq``; False if it was written since."""
        try:
            await self._js.publish(
                slot_subject(deployment_id, n),
                b"",
                headers={_EXPECTED_LAST: str(seq), "KV-Operation": "DEL"},
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code not in LOST:
                raise
            return False
        return True

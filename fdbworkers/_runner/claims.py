"""The runner's claims and handoffs: a batch of jobs claimed in one transaction (by the rules
of a single claim; the token is the commit's versionstamp), the waits for superseded
holders, and the partitions a leaving worker handed to this one."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

from .._core.claims import SupersededWaits
from .._core.membership import Membership
from .._core.plan import PlanMap
from .._db import Transaction, VersionstampFuture
from .._errors import FDBError
from .._loop import current_time
from .._store.claims import ClaimOutcome, ClaimRequest, tx_claim_many, tx_take_handoffs
from .._store.jobs import JobRecord
from .._worker import Worker

#: Errors after which a claim's commit may have been applied without our knowing:
#: commit_unknown_result, transaction_timed_out, cluster_version_changed,
#: connection_failed (the dev server's client).
_OUTCOME_UNKNOWN = frozenset({1021, 1031, 1039, 1026})


class Claimer:
    """Claims jobs for the runner and adopts partitions handed to it. Claims whose
    commit outcome is unknown go to ``unreleased`` (the runner's, shared)."""

    def __init__(
        self,
        worker: Worker,
        log: Callable[[], Any],
        rng: random.Random,
        unreleased: dict[str, tuple[int, bytes | None, str | None, bool]],
        density: Callable[[], float],
        transact_long: Callable[..., Awaitable[Any]],
    ) -> None:
        self.w = worker
        self._log = log
        self._rng = rng
        self.unreleased = unreleased
        self._density = density
        self._transact_long = transact_long
        #: Per job, the superseded holder we wait for (when we first saw it superseded,
        #: how long its lease may last): taken once that wait is over.
        self.superseded = SupersededWaits()
        #: Partitions a leaving worker handed to us, kept while our settled view still
        #: lists that worker (that incarnation) as their owner: partition -> (wid, inc).
        self._adopted: dict[int, tuple[str, str]] = {}
        self._take_handoffs = True
        self.adoptions = 0
        #: Claims committed, and claims found held by a live member.
        self.committed = self.blocked = 0

    def inbox_fired(self) -> None:
        self._take_handoffs = True  # an inbox fire may bring handoffs from a leaver

    @property
    def log(self) -> Any:
        return self._log()

    async def adopt(self, m: Membership, a: PlanMap) -> frozenset[int]:
        """Partitions handed to us by a leaving worker that we run before our settled
        view shows it gone.

        A worker leaving for good stops its jobs, clears their claims and hands each
        partition to the owner it computed without itself (``tx_release``). Waiting for
        the membership to settle would leave those jobs without a runner for the settle
        window plus a read; instead the successor adopts a partition at once, while its
        own view still gives it to the leaver (that incarnation), i.e. exactly until its
        view catches up: then the partition is ours by the map, or moves on like any
        other. Safety does not depend on it: a claim is still taken only when absent."""
        if self._take_handoffs:
            self._take_handoffs = False
            w = self.w
            try:
                handed = await self.w.transact(tx_take_handoffs, w.space, w.id)
            except FDBError as e:
                self.log.warning("handoff_read_failed", error=e.name)
                self._take_handoffs = True
                handed = {}
            for p, (frm, inc) in handed.items():
                rec = m.members.get(frm)
                if (
                    0 <= p < a.partitions
                    and a.owner(p) == frm
                    and rec is not None
                    and rec.incarnation == inc
                ):
                    self._adopted[p] = (frm, inc)
                    self.adoptions += 1
            if handed:
                self.log.info("handoffs", received=len(handed), adopted=len(self._adopted))
        for p, (frm, inc) in list(self._adopted.items()):
            rec = m.members.get(frm)
            if a.owner(p) != frm or rec is None or rec.incarnation != inc:
                del self._adopted[p]
        return frozenset(self._adopted)

    async def claim(self, recs: list[JobRecord]) -> list[ClaimOutcome]:
        """Claim ``recs`` in one transaction (``tx_claim_many``: each by the rules of a
        single claim). Tokens of the claims written are the commit's versionstamp."""
        w = self.w
        now = current_time()
        requests = []
        for rec in recs:
            take = self.superseded.take(rec.id, now)
            requests.append(ClaimRequest(rec.partition, rec.id, take))
        nonce = f"{self._rng.getrandbits(64):016x}"
        stamps: list[VersionstampFuture] = []

        async def attempt(tr: Transaction) -> list[ClaimOutcome]:
            outs = await tx_claim_many(
                tr,
                w.space,
                requests,
                w.id,
                w.incarnation,
                nonce,
                w.options.timeout,
                self._density(),
            )
            stamps.clear()
            if any(o.kind == "claimed" and o.token is None for o in outs):
                stamps.append(tr.get_versionstamp())
            return outs

        try:
            outs: list[ClaimOutcome] = await self._transact_long(attempt)
        except FDBError as e:
            if e.maybe_committed or e.code in _OUTCOME_UNKNOWN:
                # The claims may have committed: track them, or they would be orphans
                # that block the jobs' next owner once the partition moves (hole 2).
                for rec in recs:
                    self.unreleased.setdefault(rec.id, (rec.partition, None, None, False))
            raise
        token = await stamps[0].get() if stamps else None
        # A holder seen superseded is waited for from now, after the read that saw it:
        # the change of its record committed before that read, possibly long after the
        # transaction started (retries, a slow cluster), and its lease is bounded only
        # from that change. Counted from the start, the claimant took the job up to one
        # transaction's duration early (see tests/test_claim_model.py).
        seen_at = current_time()
        result = []
        for rec, out in zip(recs, outs, strict=True):
            if out.kind == "claimed":
                self.superseded.claimed(rec.id)
                self.committed += 1
                out = ClaimOutcome("claimed", out.token if out.token is not None else token)
            elif out.kind == "superseded" and out.holder is not None:
                self.superseded.superseded(
                    rec.id, out.holder.incarnation, out.holder_timeout, seen_at
                )
            elif out.kind == "held":
                self.blocked += 1
            result.append(out)
        return result

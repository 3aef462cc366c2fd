"""The claim rule (pure): may a worker take a job's claim now, and if not, why not.

A job runs where its claim says. A claimant may write its own claim over a stored one
only when nobody else can still be running the job (G3). Who may still be running it is
decided from values read in the claim transaction (``_store/claims.py: tx_claim_many``
reads them, calls :func:`decide_claim`, and writes) and from the claimant's own clock
(:class:`SupersededWaits`, kept by the runner):

* no claim, or a claim of our own incarnation: take it (ours with our own nonce is an
  earlier attempt of this very transaction that committed: 1021);
* the holder id's member record carries the holder's incarnation: a live member, *held*
  (or a record nobody can read: held, an operator clears it);
* the holder incarnation is retired (evicted, left, parked, or seen superseded for
  longer than its timeout by some member: ``_core/records.py: retire``): take it;
* the holder was *superseded*: its id's record carries another incarnation, or is gone
  while the holder was not retired. Its heartbeats stopped committing before that
  change committed (its heartbeat reads its own record without snapshot), so its lease
  ends at most its own timeout after the change, on any clock that runs at its rate.
  The claimant waits that long on its own clock, from a moment after its read saw the
  change, and takes the claim only then (``take_superseded``).

The wait is the longest lease the holder may believe it holds: its own timeout,
recorded in its claim (a restart may have lowered the timeout of its id's record), and
at least the timeouts the record names. A claim written before timeouts were recorded
(``timeout`` None) falls back on the record: the new incarnation's timeout and, if the
record names the holder as the one it replaced, the holder's; with no record at all it
is taken at once.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from typing import Final, Literal

from .records import MemberRecord

#: A member record of the holder's id that does not decode (garbage under the prefix).
CORRUPT: Final[Literal["corrupt"]] = "corrupt"

#: The holder id's member record as read: decoded, :data:`CORRUPT`, or None (no record).
HolderRecord = MemberRecord | Literal["corrupt"] | None


@dataclass(frozen=True)
class StoredClaim:
    """A claim as read: the holder and what it wrote (the token is not needed to decide)."""

    wid: str
    incarnation: str
    #: The holder's timeout when it claimed: its lease is at most this long. None in
    #: claims written before it was recorded.
    timeout: float | None = None
    #: The random nonce of the claim transaction that wrote it (recognises a retry).
    nonce: object = None


@dataclass(frozen=True)
class ClaimDecision:
    """``kind``:

    * ``"take"``: write our claim (a new token);
    * ``"ours"``: an earlier attempt of this transaction wrote it (keep its token);
    * ``"held"``: a live member holds it (or nobody can tell: a corrupt record);
    * ``"superseded"``: its holder was superseded; taken once the claimant waited
      ``wait`` seconds on its own clock since it first saw that (``take_superseded``)."""

    kind: Literal["take", "ours", "held", "superseded"]
    wait: float = 0.0


TAKE: Final = ClaimDecision("take")
OURS: Final = ClaimDecision("ours")
HELD: Final = ClaimDecision("held")


def superseded_wait(claim: StoredClaim, member: MemberRecord | None) -> float | None:
    """How long a claimant waits, from when it saw ``claim``'s holder superseded, before
    the holder's lease has certainly run out; None when the claim may be taken at once
    (no record and no recorded timeout: a claim from before timeouts were recorded)."""
    if member is None:
        return claim.timeout
    waits = [member.timeout, claim.timeout or 0.0]
    if member.replaced == claim.incarnation and member.replaced_timeout:
        waits.append(member.replaced_timeout)
    return max(waits)


def decide_claim(
    wid: str,
    incarnation: str,
    nonce: object,
    claim: StoredClaim | None,
    member: HolderRecord,
    retired: Container[str] = frozenset(),
    take_superseded: Container[str] = frozenset(),
) -> ClaimDecision:
    """The rule for one job, for the claimant ``wid``/``incarnation`` writing with
    ``nonce``: ``claim`` the stored claim (None: none), ``member`` the holder id's
    member record now (None: none; :data:`CORRUPT`: unreadable), ``retired`` the
    holder id's retired incarnations, ``take_superseded`` the holder incarnations whose
    wait the claimant has already sat out.

    ``retired`` matters only when the result without it is ``"superseded"``: a caller
    may decide first with an empty set and read the retired record only then."""
    if claim is None:
        return TAKE
    if claim.wid == wid and claim.incarnation == incarnation:
        return OURS if claim.nonce == nonce else TAKE
    if member == CORRUPT:
        return HELD
    assert not isinstance(member, str)
    if member is not None and member.incarnation == claim.incarnation:
        return HELD
    if claim.incarnation in take_superseded:
        return TAKE
    wait = superseded_wait(claim, member)
    if wait is None or claim.incarnation in retired:
        return TAKE
    return ClaimDecision("superseded", wait)


@dataclass
class SupersededWaits:
    """The claimant's side of the rule: per job, the superseded holder it waits for, and
    since when (its own clock), so that it takes the claim once ``wait`` has passed.

    ``seen_at`` must be a moment after the read that showed the holder superseded (after
    the claim transaction returned): the holder's lease is bounded from the change of its
    record, which committed before that read, not before the transaction started."""

    #: job -> (holder incarnation, wait, first seen superseded at)
    _waits: dict[str, tuple[str, float, float]] = field(default_factory=dict)

    def take(self, job: str, now: float) -> frozenset[str]:
        """The holder incarnations of ``job`` whose wait is over at ``now``."""
        w = self._waits.get(job)
        if w is not None and now - w[2] >= w[1]:
            return frozenset((w[0],))
        return frozenset()

    def superseded(self, job: str, holder: str, wait: float, seen_at: float) -> None:
        """A claim attempt found ``job`` held by ``holder``, superseded: wait from
        ``seen_at`` (kept from the first sight of the same holder)."""
        w = self._waits.get(job)
        if w is None or w[0] != holder:
            self._waits[job] = (holder, wait, seen_at)

    def claimed(self, job: str) -> None:
        self._waits.pop(job, None)

    def __len__(self) -> int:
        return len(self._waits)

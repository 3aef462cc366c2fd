"""Properties of the pure claim rule (``_core/claims.py``): what a claimant may take, and
the claimant's own wait for a superseded holder. The rule in motion, with leases, clocks
and faults, is checked by the state machine in ``tests/test_claim_model.py``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fdbworkers._core.claims import (
    CORRUPT,
    ClaimDecision,
    HolderRecord,
    StoredClaim,
    SupersededWaits,
    decide_claim,
    superseded_wait,
)
from fdbworkers._core.records import MemberRecord

ME, MY_INC, NONCE = "me", "me-1", "n1"
WIDS = ["me", "h"]
INCS = ["me-1", "me-0", "h-0", "h-1", "h-2"]
timeouts = st.sampled_from([1.0, 3.0, 30.0])

claims = st.none() | st.builds(
    StoredClaim,
    st.sampled_from(WIDS),
    st.sampled_from(INCS),
    st.none() | timeouts,
    st.sampled_from([None, NONCE, "other"]),
)
records: st.SearchStrategy[HolderRecord] = (
    st.none()
    | st.just(CORRUPT)
    | st.builds(
        MemberRecord,
        st.just("h"),
        st.sampled_from(INCS),
        timeouts,
        replaced=st.none() | st.sampled_from(INCS),
        replaced_timeout=st.none() | timeouts,
    )
)
inc_sets = st.frozensets(st.sampled_from(INCS))


def decide(
    claim: StoredClaim | None,
    member: HolderRecord,
    retired: frozenset[str] = frozenset(),
    take: frozenset[str] = frozenset(),
) -> ClaimDecision:
    return decide_claim(ME, MY_INC, NONCE, claim, member, retired, take)


@given(records, inc_sets, inc_sets)
def test_a_job_without_a_claim_is_taken(
    member: HolderRecord, retired: frozenset[str], take: frozenset[str]
) -> None:
    assert decide(None, member, retired, take).kind == "take"


@given(st.none() | timeouts, st.sampled_from([None, NONCE, "other"]), records, inc_sets)
def test_our_own_claim_is_ours_again(
    timeout: float | None, nonce: str | None, member: HolderRecord, retired: frozenset[str]
) -> None:
    """A claim of our incarnation is written again with a new token, unless it is this very
    transaction's earlier attempt (our nonce: 1021), whose token stays."""
    got = decide(StoredClaim(ME, MY_INC, timeout, nonce), member, retired)
    assert got.kind == ("ours" if nonce == NONCE else "take")


@given(claims, records, inc_sets, inc_sets)
def test_a_live_holder_or_an_unreadable_record_holds_whatever_else_is_known(
    claim: StoredClaim | None, member: HolderRecord, retired: frozenset[str], take: frozenset[str]
) -> None:
    """G3: a member record that carries the holder's incarnation means the holder may be
    running the job; neither a retired marker nor a wait the claimant sat out overrides
    it. A record nobody can decode proves nothing either."""
    if claim is None or (claim.wid, claim.incarnation) == (ME, MY_INC):
        return
    if member == CORRUPT or (
        isinstance(member, MemberRecord) and member.incarnation == claim.incarnation
    ):
        assert decide(claim, member, retired, take).kind == "held"


@given(claims, records, inc_sets, inc_sets)
def test_retired_and_waited_out_holders_only_turn_a_wait_into_a_take(
    claim: StoredClaim | None, member: HolderRecord, retired: frozenset[str], take: frozenset[str]
) -> None:
    """The retired record and the claimant's finished waits can only turn "superseded"
    into "take": that is why tx_claim_many reads the retired records only for the
    holders the rule without them calls superseded."""
    plain = decide(claim, member)
    full = decide(claim, member, retired, take)
    if plain.kind != "superseded":
        assert full == plain
    else:
        assert claim is not None
        assert full.kind in ("superseded", "take")
        released = claim.incarnation in retired or claim.incarnation in take
        assert (full.kind == "take") == released
        if full.kind == "superseded":
            assert full == plain


@given(claims, records)
def test_a_superseded_holder_is_waited_out_for_at_least_its_own_lease(
    claim: StoredClaim | None, member: HolderRecord
) -> None:
    """The wait covers the holder's own timeout, recorded in its claim (a restart may have
    lowered its id's timeout: issue 15, hole 1), and the timeouts its id's record names:
    its successor's, and its own again when the record says whom it replaced."""
    got = decide(claim, member)
    if got.kind != "superseded":
        return
    assert claim is not None and member != CORRUPT
    assert not isinstance(member, str)
    assert got.wait >= (claim.timeout or 0.0)
    if member is not None:
        assert got.wait >= member.timeout
        if member.replaced == claim.incarnation and member.replaced_timeout:
            assert got.wait >= member.replaced_timeout
    else:
        assert claim.timeout is not None and got.wait == claim.timeout


def test_only_a_claim_from_before_timeouts_were_recorded_is_taken_without_a_wait() -> None:
    old = StoredClaim("h", "h-0", None)
    assert decide(old, None).kind == "take"
    assert superseded_wait(old, None) is None
    assert decide(StoredClaim("h", "h-0", 30.0), None) == ClaimDecision("superseded", 30.0)
    rec = MemberRecord("h", "h-1", 3.0, replaced="h-0", replaced_timeout=30.0)
    assert decide(old, rec) == ClaimDecision("superseded", 30.0)
    assert decide(StoredClaim("h", "h-0", 30.0), rec, frozenset({"h-0"})).kind == "take"


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.floats(0, 5),  # time passing before this event
            st.sampled_from(["h-0", "h-1"]),
            timeouts,
        ),
        max_size=20,
    )
)
def test_the_claimant_waits_from_its_first_sight_of_each_holder(
    events: list[tuple[str, float, str, float]],
) -> None:
    """A holder is taken only once its wait passed since the claimant first saw it
    superseded; another holder of the same job starts a new wait."""
    waits = SupersededWaits()
    first: dict[str, tuple[str, float, float]] = {}
    now = 0.0
    for job, dt, holder, wait in events:
        now += dt
        for j, (h, w, seen) in first.items():
            assert waits.take(j, now) == (frozenset({h}) if now - seen >= w else frozenset())
        waits.superseded(job, holder, wait, now)
        if job not in first or first[job][0] != holder:
            first[job] = (holder, wait, now)
    for j in list(first):
        waits.claimed(j)
        assert waits.take(j, now + 100.0) == frozenset()
    assert len(waits) == 0

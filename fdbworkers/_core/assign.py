"""Job-to-worker assignment: pure, deterministic, balanced, near-minimal movement.

Jobs live in ``P`` partitions fixed at role creation (:func:`job_partition`). Every
member computes the same owner for every partition from the same membership (worker id
-> weight) with :func:`assign`. Nothing here does I/O, reads a clock or uses Python's
randomized ``hash()``, and every value that decides an owner is computed with integer
operations and IEEE basic float operations only (no libm), so the map is the same on
every machine, platform and Python version (G4).

Two layers (measurements and reasons in ``docs/assignment.md``), the first in
:mod:`fdbworkers._core.rendezvous`, the second in :mod:`fdbworkers._core.matching`;
this module holds the API, the checks of its input and the result (:class:`Assignment`):

1. **Rank rendezvous.** Each member ranks all partitions by its own keyed permutation
   (a 4-round Feistel network keyed by a BLAKE2b hash of the member id). A partition
   prefers members by the score ``E(rank) / weight`` with ``E(r) = -ln(1 - (r + 0.5)/P)``
   (weighted rendezvous hashing: a member wins a partition with probability
   proportional to its weight). A pair's score depends on that member and partition
   only, so every partition has a fixed preference order over all possible members.
   Since a member's ranks form a permutation rather than independent draws, loads are
   more even than classic rendezvous (variance about ``q/2`` instead of ``q`` for ``q``
   partitions per member), and a member's best partitions can be *listed* (permute its
   ranks 0, 1, 2, ...): computing the whole map costs ``O(P)`` candidate pairs, not
   ``O(P * N)`` hashes.
2. **Capacities.** Member ``i`` may own at most ``cap_i = floor(fair_i + slack_i + d_i)``
   partitions, ``fair_i = P * w_i / W``, ``d_i`` a per-member dither in [0, 1) (so that
   capacities drop one member at a time as the membership grows, not all at once).
   Partitions go to their most preferred member with room: the unique stable matching
   between partitions and capacities, i.e. take all (member, partition) pairs by
   ascending score and keep a pair while its partition is free and its member under
   capacity. ``balance="auto"`` sizes the slack so that capacities trim the load
   outliers while the extra movement they cause stays at a few per cent; a number sets
   ``slack_i = (balance - 1) * fair_i``; ``None`` removes capacities (pure rendezvous,
   whose movement is exactly minimal). Without capacities and with one replica, few
   members' maps are computed directly (every member's rank of every partition, a
   running best): the solver's owners, bit for bit, several times faster. When those
   members have one weight and ``P <= 65536`` that map is computed without numpy
   (:mod:`fdbworkers._core.direct`, the same owners), so a worker of such a role never
   imports it; numpy comes with the other maps.

Golden vectors in the tests pin the map: changing any constant here changes every
deployment's map, so it must bump :data:`ALGORITHM_VERSION`.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import compress
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from .._errors import ConfigError
from . import direct
from .matching import _capacities, _Solver, direct_pays, direct_primaries
from .memo import HeldMemo
from .rendezvous import _member_keys, lazy_numpy

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from .rendezvous import I64Array
else:
    np = lazy_numpy(globals())  # numpy is loaded with the first map, not on import

__all__ = [
    "ALGORITHM_VERSION",
    "DEFAULT_BALANCE",
    "DEFAULT_PARTITIONS",
    "Assignment",
    "Step",
    "assign",
    "job_partition",
    "moved",
    "next_step",
    "stable_hash64",
]

#: Version of the partition -> member function. Anything that changes the map for some
#: input (hashes, Feistel constants, score, capacity rule, tie-breaks) must bump it;
#: store it with the role so that members running different versions are noticed.
ALGORITHM_VERSION: Final = 1
#: Default number of partitions of a role (a power of 4: no cycle walking), chosen from
#: measurements (docs/assignment.md): balanced jobs for up to a few hundred workers.
DEFAULT_PARTITIONS: Final = 65536
#: Default capacity rule (see :func:`assign`).
DEFAULT_BALANCE: Final = "auto"

#: Largest partition count accepted (the solver keeps a few arrays of P entries).
MAX_PARTITIONS: Final = 1 << 24
#: Accepted weights (a worker's share is proportional to its weight).
MIN_WEIGHT: Final = 1e-9
MAX_WEIGHT: Final = 1e9


# --------------------------------------------------------------------------- hashing


def stable_hash64(data: bytes) -> int:
    """A 64-bit hash of ``data`` that is the same everywhere, forever (BLAKE2b-64).

    Unlike ``hash()``, it does not depend on ``PYTHONHASHSEED``, the process, the
    platform or the Python version.
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def job_partition(job_id: str, partitions: int) -> int:
    """The partition of a job: ``(stable_hash64(utf-8 id) * partitions) >> 64``.

    Computed once, when the job is added, and stored in its key. Multiply-shift rather
    than modulo: as uniform, and monotone in the hash, so partition ``p`` is the hash
    interval ``[p * 2**64 / P, (p + 1) * 2**64 / P)`` (partitions of ``P`` and ``k * P``
    nest).
    """
    _check_partitions(partitions)
    if not isinstance(job_id, str):
        raise ConfigError(f"job id must be a str, not {type(job_id).__name__}")
    return (stable_hash64(job_id.encode("utf-8")) * int(partitions)) >> 64


# ------------------------------------------------------------------- validation


def _check_partitions(partitions: int) -> None:
    if isinstance(partitions, bool) or not isinstance(partitions, numbers.Integral):
        raise ConfigError(f"partitions must be an int, not {type(partitions).__name__}")
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ConfigError(f"partitions must be in [1, {MAX_PARTITIONS}], got {partitions}")


def _check_members(members: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    if not isinstance(members, Mapping):
        raise ConfigError(f"members must be a mapping of worker id -> weight, not {members!r}")
    for wid, w in members.items():
        # The common case first (a str id and a float weight in range), then the rest.
        if type(wid) is str and wid and type(w) is float and MIN_WEIGHT <= w <= MAX_WEIGHT:
            continue
        if not isinstance(wid, str) or not wid:
            raise ConfigError(f"worker id must be a non-empty str, got {wid!r}")
        if isinstance(w, bool) or not isinstance(w, numbers.Real):
            raise ConfigError(f"weight of worker {wid!r} must be a number, got {w!r}")
        try:
            wf = float(w)
        except (OverflowError, ValueError):
            wf = math.inf
        if not MIN_WEIGHT <= wf <= MAX_WEIGHT:  # also false for NaN
            raise ConfigError(
                f"weight of worker {wid!r} must be in [{MIN_WEIGHT}, {MAX_WEIGHT}], got {w!r}"
            )
    ids = tuple(sorted(members))
    return ids, tuple(float(members[i]) for i in ids)


def _check_replicas(replicas: int) -> None:
    if isinstance(replicas, bool) or not isinstance(replicas, numbers.Integral):
        raise ConfigError(f"replicas must be an int, not {type(replicas).__name__}")
    if replicas < 1:
        raise ConfigError(f"replicas must be >= 1, got {replicas}")


def _check_balance(balance: float | str | None) -> None:
    if balance is None or balance == "auto":
        return
    if isinstance(balance, bool) or not isinstance(balance, numbers.Real):
        raise ConfigError(f"balance must be 'auto', a number >= 1.0 or None, got {balance!r}")
    if not (math.isfinite(float(balance)) and float(balance) >= 1.0):
        raise ConfigError(f"balance must be a finite number >= 1.0 or None, got {balance!r}")


# ------------------------------------------------------------------- the result


class Assignment:
    """Owner(s) of every partition for one membership; immutable.

    Built by :func:`assign`. ``owner(p)`` is the primary, ``owners(p)`` the primary
    followed by standbys (the next members in the partition's preference order).
    """

    __slots__ = (
        "__weakref__",
        "_balance",
        "_by_member",
        "_ids",
        "_index",
        "_members",
        "_names",
        "_partitions",
        "_prefs",
        "_primary",
        "_replicas",
    )

    _ids: tuple[str, ...]
    _index: Mapping[str, int]
    _members: Mapping[str, float]
    _partitions: int
    _replicas: int
    _balance: float | str | None
    #: The primary of every partition (a read-only view of int32 member indices).
    _primary: memoryview
    #: Standbys per partition (solver maps of several replicas), else None.
    _prefs: NDArray[np.int32] | None
    _by_member: dict[int, frozenset[int]]
    _names: list[tuple[str | None, ...]]

    def __init__(
        self,
        ids: tuple[str, ...],
        weights: tuple[float, ...],
        partitions: int,
        replicas: int,
        balance: float | str | None,
        primary: I64Array | array[int],
        prefs: I64Array | None,
    ) -> None:
        if not isinstance(primary, array):
            primary = array("i", primary.astype(np.int32).tobytes())
        if prefs is not None:
            prefs = prefs.astype(np.int32)
            prefs.setflags(write=False)
        setter = object.__setattr__
        setter(self, "_ids", ids)
        setter(self, "_index", MappingProxyType({w: i for i, w in enumerate(ids)}))
        setter(self, "_members", MappingProxyType(dict(zip(ids, weights, strict=True))))
        setter(self, "_partitions", partitions)
        setter(self, "_replicas", replicas)
        setter(self, "_balance", balance)
        setter(self, "_primary", memoryview(primary).toreadonly())
        setter(self, "_prefs", prefs)
        setter(self, "_by_member", {})
        setter(self, "_names", [])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Assignment is immutable")

    # -- description ---------------------------------------------------------------

    @property
    def partitions(self) -> int:
        return self._partitions

    @property
    def replicas(self) -> int:
        return self._replicas

    @property
    def balance(self) -> float | str | None:
        return self._balance

    @property
    def members(self) -> Mapping[str, float]:
        """Worker id -> weight, sorted by id (read-only)."""
        return self._members

    def __repr__(self) -> str:
        loads = self._loads()
        spread = f"{min(loads)}..{max(loads)}" if loads else "-"
        return (
            f"<Assignment {len(self._ids)} members, {self._partitions} partitions, "
            f"replicas={self._replicas}, balance={self._balance}, load {spread}>"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Assignment):
            return NotImplemented
        return (
            self._ids == other._ids
            and self._partitions == other._partitions
            and self._primary == other._primary
            and _same_prefs(self._prefs, other._prefs)
        )

    __hash__ = None  # type: ignore[assignment]

    # -- queries -------------------------------------------------------------------

    def _check_p(self, partition: int) -> int:
        if isinstance(partition, bool) or not isinstance(partition, numbers.Integral):
            raise ConfigError(f"partition must be an int, got {partition!r}")
        if not 0 <= partition < self._partitions:
            raise ConfigError(f"partition {partition} outside [0, {self._partitions})")
        return int(partition)

    def owner(self, partition: int) -> str | None:
        """The primary owner of ``partition``, None when there are no members."""
        p = self._check_p(partition)
        if not self._ids:
            return None
        return self._ids[int(self._primary[p])]

    def owners(self, partition: int) -> tuple[str, ...]:
        """Primary first, then up to ``replicas - 1`` standbys, all distinct."""
        p = self._check_p(partition)
        if not self._ids:
            return ()
        first = int(self._primary[p])
        out = [self._ids[first]]
        if self._prefs is None:
            return tuple(out)
        for m in self._prefs[p].tolist():
            if len(out) >= self._replicas:
                break
            if m >= 0 and m != first:
                out.append(self._ids[m])
        return tuple(out)

    def partitions_of(self, worker: str) -> frozenset[int]:
        """The partitions whose primary is ``worker`` (empty for a non-member)."""
        i = self._index.get(worker)
        if i is None:
            return frozenset()
        got = self._by_member.get(i)
        if got is None:
            got = frozenset(compress(range(self._partitions), map(i.__eq__, self._primary)))
            self._by_member[i] = got
        return got

    def share(self, worker: str) -> float:
        """Fraction of the partitions ``worker`` owns as primary."""
        return len(self.partitions_of(worker)) / self._partitions

    def _loads(self) -> list[int]:
        counts = Counter(self._primary)
        return [counts.get(i, 0) for i in range(len(self._ids))]

    def load(self) -> dict[str, int]:
        """Worker id -> number of partitions it owns as primary."""
        return dict(zip(self._ids, self._loads(), strict=True))

    def primaries(self) -> tuple[str | None, ...]:
        """The primary owner of every partition, indexed by partition."""
        if not self._names:
            if not self._ids:
                self._names.append((None,) * self._partitions)
            else:
                ids = self._ids
                self._names.append(tuple(ids[m] for m in self._primary.tolist()))
        return self._names[0]

    def __iter__(self) -> Iterator[tuple[int, str | None]]:
        return iter(enumerate(self.primaries()))


# ------------------------------------------------------------------------ API


def assign(
    members: Mapping[str, float],
    partitions: int = DEFAULT_PARTITIONS,
    *,
    replicas: int = 1,
    balance: float | str | None = DEFAULT_BALANCE,
) -> Assignment:
    """Assign ``partitions`` partitions to ``members`` (worker id -> weight > 0).

    Deterministic: the same membership gives the same map in any process, whatever the
    order of ``members``. ``balance`` bounds each member's partitions:

    * ``"auto"`` (default): a capacity a few standard deviations of the natural spread
      above the fair share ``P * w_i / W``, as tight as it can be while the partitions it
      displaces on a join or leave stay a few per cent of those that must move;
    * a number ``b >= 1``: at most ``b`` times the fair share (plus a dither < 1);
      tighter balance, more movement (measurements in docs/assignment.md);
    * ``None``: no capacity, pure weighted rendezvous: one join moves only partitions
      to the newcomer and one leave only the leaver's partitions, exactly.

    ``replicas`` is the length of :meth:`Assignment.owners` (the primary, then standbys
    in the partition's preference order). The work is ``O(P + N)`` vector operations;
    run it off the event loop for large ``P`` (about 0.1 s for ``P = 65536``).
    """
    _check_partitions(partitions)
    _check_replicas(replicas)
    _check_balance(balance)
    ids, weights = _check_members(members)
    # Memoized (the result is immutable): every reconcile of a worker asks for the map
    # of the same settled membership, and workers simulated in one process ask for the
    # same maps.
    key = (ids, weights, int(partitions), int(replicas), balance)
    got = _MAPS.get(key)
    if got is None:
        got = _MAPS.put(key, _compute(*key))
    return got


#: Maps computed in this process, while held (see :mod:`fdbworkers._core.memo`).
_MAPS: HeldMemo[tuple[object, ...], Assignment] = HeldMemo(keep_last=True)


def _compute(
    ids: tuple[str, ...],
    weights: tuple[float, ...],
    p: int,
    replicas: int,
    balance: float | str | None,
) -> Assignment:
    """The map of :func:`assign`, after validation (not memoized)."""
    if not ids:
        return Assignment(ids, weights, p, replicas, balance, array("i", bytes(4 * p)), None)
    uncapped = (balance is None or len(ids) == 1) and replicas == 1
    pays = uncapped and direct_pays(len(ids), p)
    if uncapped and direct.computes(weights, p, pays):
        # Without numpy (module direct): the owners of direct_primaries, bit for bit.
        primary = direct.primaries(len(ids), direct.member_keys(ids), p)
        return Assignment(ids, weights, p, replicas, balance, primary, None)
    keys = _member_keys(ids)
    caps = None if balance is None else _capacities(weights, keys, p, balance)
    if caps is None and replicas == 1 and pays:
        primary_np = direct_primaries(weights, keys, p)  # the solver's result, faster
        return Assignment(ids, weights, p, replicas, balance, primary_np, None)
    primary_np, prefs = _Solver(weights, keys, p, caps).solve(replicas)
    # owners() of one replica is the primary alone: keep no preference lists.
    return Assignment(
        ids, weights, p, replicas, balance, primary_np, prefs if replicas > 1 else None
    )


def _same_prefs(a: NDArray[np.int32] | None, b: NDArray[np.int32] | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.array_equal(a, b))


def moved(old: Assignment, new: Assignment) -> frozenset[int]:
    """Partitions whose primary owner differs between ``old`` and ``new``."""
    if old.partitions != new.partitions:
        raise ConfigError(
            f"cannot compare assignments of {old.partitions} and {new.partitions} partitions"
        )
    a, b = old.primaries(), new.primaries()
    return frozenset(p for p in range(old.partitions) if a[p] != b[p])


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a gradual rebalance (see :func:`next_step`)."""

    #: Partition -> owner after this step (every partition of the target).
    ownership: Mapping[int, str]
    #: Partitions handed over now because their current owner is gone (not counted).
    adopted: frozenset[int]
    #: Partitions moved now from one live member to another (at most ``max_moves``).
    moved: frozenset[int]
    #: Live-to-live moves still left after this step.
    remaining: int


def next_step(current: Mapping[int, str | None], target: Assignment, max_moves: int) -> Step:
    """The next step from ``current`` ownership towards ``target``, moving at most
    ``max_moves`` partitions between live members.

    Partitions whose current owner is missing or no longer a member of ``target`` are
    orphans: they go to their target owner at once and do not count against
    ``max_moves`` (nobody is running them). Among the live-to-live moves, the step takes
    them round-robin over the receiving members (so a newcomer and an under-loaded
    member both make progress), in a fixed pseudo-random order of partitions.
    """
    if isinstance(max_moves, bool) or not isinstance(max_moves, numbers.Integral):
        raise ConfigError(f"max_moves must be an int, got {max_moves!r}")
    if max_moves < 0:
        raise ConfigError(f"max_moves must be >= 0, got {max_moves}")
    goal = target.primaries()
    live = target.members
    ownership: dict[int, str] = {}
    adopted: list[int] = []
    pending: dict[str, list[int]] = {}
    for p, want in enumerate(goal):
        if want is None:
            continue
        have = current.get(p)
        if have is None or have not in live:
            ownership[p] = want
            adopted.append(p)
        elif have == want:
            ownership[p] = have
        else:
            ownership[p] = have
            pending.setdefault(want, []).append(p)
    # Round-robin over receivers: the k-th move of each receiver before anyone's k+1-th.
    queue: list[tuple[int, int, str, int]] = []
    for to, parts in pending.items():
        keyed = sorted((_partition_order(q), q) for q in parts)
        queue.extend((k, h, to, q) for k, (h, q) in enumerate(keyed))
    queue.sort()
    chosen = queue[: int(max_moves)]
    for _, _, to, q in chosen:
        ownership[q] = to
    return Step(
        ownership=MappingProxyType(ownership),
        adopted=frozenset(adopted),
        moved=frozenset(q for _, _, _, q in chosen),
        remaining=len(queue) - len(chosen),
    )


def _partition_order(p: int) -> int:
    return stable_hash64(p.to_bytes(8, "little"))

"""The key layout (pure: no I/O): :class:`Layout` (the keys of one root) and
:class:`RoleSpace` (the keys of one role under it).

Every key lives under one root prefix so several applications or tenants share a cluster.
Keys are packed with FoundationDB's tuple layer. The layout version under
``(root, "layout")`` is checked on open: a newer layout is refused with
:class:`LayoutError` rather than misread. The stored values and their codec (msgpack
maps carrying a small schema version ``"v"``) are in :mod:`.records`.

::

    (root, "layout")                            -> {"v": LAYOUT_VERSION}
    (root, "role", role)                        -> RoleConfig {partitions, created_at}
    (root, "r", role, "epoch")                  -> versionstamp (10 bytes), bumped on every
                                                   membership change; watched
    (root, "r", role, "member", wid)            -> MemberRecord
    (root, "r", role, "health", wid)            -> versionstamp (10 bytes) + msgpack
                                                   {wall_time, incarnation}
    (root, "r", role, "mchange", vs, wid)       -> b"": membership change log, one entry per
                                                   epoch bump (the record to re-read);
                                                   bounded by age
    (root, "r", role, "jobs_epoch")             -> versionstamp, bumped on job add/remove; watched
    (root, "r", role, "jobchange", vs)          -> {partition, job, op}: bounded change log
    (root, "r", role, "job", partition, job_id) -> JobRecord
    (root, "r", role, "claim", partition, job)  -> versionstamp (the fencing token) + msgpack
                                                   {wid, incarnation}
    (root, "r", role, "inbox", wid)             -> versionstamp, bumped when a claim this
                                                   worker waits for was released; watched
    (root, "r", role, "retired", wid)           -> {inc: {incarnation: version}}: incarnations
                                                   of wid that run nothing any more
    (root, "r", role, "handoff", wid, partition) -> {from, incarnation}: a leaving worker
                                                   handed this partition's jobs to wid
    (root, "r", role, "jobhealth", job_id)      -> JobHealth {wid, incarnation, token, state,
                                                   failures, restarts, last_error, since,
                                                   last_failure_at}: written by the job's
                                                   owner while the job fails (a handler
                                                   crash, an --exec exit != 0) or is parked;
                                                   cleared once it ran healthy_after seconds
                                                   without failing, when it stops there,
                                                   and when the job is removed. Counts only
                                                   while its token is the claim's.
    (root, "r", role, "pcount", partition)      -> int64 LE: jobs in the partition (atomic
                                                   ADD; absent when zero)
    (root, "r", role, "pcounted")               -> present once every job is counted
    (root, "r", role, "plan")                   -> {seq, chunks}: the stored plan's header;
                                                   watched
    (root, "r", role, "planchunk", i)           -> the plan (_core/plan.py), in chunks
    (root, "events", vs)                        -> Event: bounded audit log
    (root, "events_head")                       -> versionstamp of the latest event; watched
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from .._errors import ConfigError, CorruptDataError
from .tuples import VERSIONSTAMP_SIZE, pack, pack_int_str, strinc, unpack

#: The layout this version of fdbworkers reads and writes.
LAYOUT_VERSION: Final = 1
#: Placeholder for a versionstamp inside a key or value.
VS_PLACEHOLDER: Final = b"\xff" * VERSIONSTAMP_SIZE
#: Tuple-layer type code of a 96-bit Versionstamp (10 bytes + 2 user bytes).
_TUPLE_VERSIONSTAMP_CODE: Final = 0x33

DEFAULT_ROOT: Final = ("fdbworkers",)
MAX_NAME_LENGTH: Final = 200


def validate_name(kind: str, name: str) -> str:
    """Role, worker and job ids: non-empty printable text of bounded length."""
    if not isinstance(name, str):
        raise ConfigError(f"{kind} must be a string, got {type(name).__name__}")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{kind} must be 1 to {MAX_NAME_LENGTH} characters, got {name!r}")
    if not name.isprintable():
        raise ConfigError(f"{kind} must be printable text, got {name!r}")
    return name


def parse_root(root: str | bytes | tuple[str, ...] | None) -> bytes:
    """The raw key prefix of a root given as a tuple path, a '/'-separated path, raw bytes
    (used as is), or None for the default ``("fdbworkers",)``."""
    if root is None:
        return pack(DEFAULT_ROOT)
    if isinstance(root, bytes):
        if not root or root.startswith(b"\xff"):
            raise ConfigError("a raw root prefix must be non-empty and outside the system keys")
        return root
    if isinstance(root, str):
        parts = tuple(p for p in root.split("/") if p)
        if not parts:
            raise ConfigError(f"root path {root!r} is empty")
        return pack(parts)
    if isinstance(root, tuple) and root and all(isinstance(p, str) and p for p in root):
        return pack(root)
    raise ConfigError(f"root must be a path like 'app/workers', bytes or a tuple, got {root!r}")


@dataclass(frozen=True)
class Layout:
    """The root-level keys of one root (layout version, role configs, events); the keys
    of one role are on its :class:`RoleSpace` (:meth:`role`). Methods are pure."""

    prefix: bytes

    @classmethod
    def for_root(cls, root: str | bytes | tuple[str, ...] | None = None) -> Layout:
        return cls(parse_root(root))

    def key(self, *parts: Any) -> bytes:
        return self.prefix + pack(parts)

    def unpack(self, key: bytes) -> tuple[Any, ...]:
        if not key.startswith(self.prefix):
            raise CorruptDataError(f"key {key!r} is outside the root {self.prefix!r}")
        try:
            return unpack(key[len(self.prefix) :])
        except Exception as e:
            raise CorruptDataError(f"key {key!r} is not a tuple-layer key: {e}") from e

    def unpack_below(self, parent: bytes, key: bytes) -> tuple[Any, ...]:
        """The tuple elements of ``key`` after ``parent`` (the begin of one of this
        layout's ranges): what :meth:`unpack` returns past the parent, without decoding
        the root and role again (the hot path of membership and partition reads)."""
        if not key.startswith(parent):
            raise CorruptDataError(f"key {key!r} is outside {parent!r}")
        try:
            return unpack(key, len(parent))
        except Exception as e:
            raise CorruptDataError(f"key {key!r} is not a tuple-layer key: {e}") from e

    def range(self, *parts: Any) -> tuple[bytes, bytes]:
        """[begin, end) of every key strictly below the tuple ``parts``."""
        begin = self.key(*parts)
        return begin, strinc(begin)

    def role(self, role: str) -> RoleSpace:
        """The keys of one role (see :class:`RoleSpace`)."""
        return RoleSpace(self, role)

    # Root-level keys.
    @property
    def layout_key(self) -> bytes:
        return self.key("layout")

    def role_key(self, role: str) -> bytes:
        return self.key("role", role)

    def roles_range(self) -> tuple[bytes, bytes]:
        return self.range("role")

    # The events (root level: the audit log of every role).
    def events_range(self) -> tuple[bytes, bytes]:
        return self.range("events")

    @property
    def events_head_key(self) -> bytes:
        """Bumped (a versionstamped value) with every event: what ``events --follow``
        and the live view watch. Outside ``events_range``."""
        return self.key("events_head")

    def event_key_template(self) -> bytes:
        return self._stamped_key("events")

    def event_key_at(self, stamp: bytes) -> bytes:
        return self._stamp_key(("events",), stamp)

    def events_before_version(self, version: int) -> bytes:
        return self._stamp_key(("events",), version.to_bytes(8, "big") + b"\0\0")

    def _stamp_key(self, parts: tuple[Any, ...], stamp: bytes) -> bytes:
        # A tuple-layer Versionstamp element: code 0x33, 10-byte stamp, 2 user bytes (0).
        return self.key(*parts) + bytes([_TUPLE_VERSIONSTAMP_CODE]) + stamp + b"\0\0"

    def _stamped_key(self, *parts: Any) -> bytes:
        head = self.key(*parts) + bytes([_TUPLE_VERSIONSTAMP_CODE])
        return head + VS_PLACEHOLDER + b"\0\0" + struct.pack("<I", len(head))

    def stamp_of_key(self, key: bytes) -> bytes:
        """The versionstamp at the end of an events or change-log key."""
        if len(key) < VERSIONSTAMP_SIZE + 3 or key[-13] != _TUPLE_VERSIONSTAMP_CODE:
            raise CorruptDataError(f"key {key!r} does not end with a versionstamp")
        return key[-12:-2]


@dataclass(frozen=True)
class RoleSpace:
    """Every key of one role under one root: a role-bound subspace, in the style of
    FoundationDB's ``Subspace``, so that code passes one value (by convention named
    ``space``) instead of the pair ``(layout, role)``. Methods are pure; the root-level
    keys (layout version, role configs, events) stay on :attr:`layout`."""

    layout: Layout
    role: str
    #: ``(root, "r", role)`` packed: every key below starts with it.
    prefix: bytes = field(init=False, repr=False, compare=False)
    #: The packed heads of the job and claim keys (``prefix + pack(("job",))``...): a
    #: job or claim key is its head and the packed (partition, job id), built on every
    #: claim and add without packing the head again.
    job_head: bytes = field(init=False, repr=False, compare=False)
    claim_head: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_name("role", self.role)
        prefix = self.layout.key("r", self.role)
        object.__setattr__(self, "prefix", prefix)
        object.__setattr__(self, "job_head", prefix + pack(("job",)))
        object.__setattr__(self, "claim_head", prefix + pack(("claim",)))

    def key(self, *parts: Any) -> bytes:
        return self.prefix + pack(parts)

    def range(self, *parts: Any) -> tuple[bytes, bytes]:
        """[begin, end) of every key strictly below ``parts`` (the whole role if none)."""
        begin = self.key(*parts)
        return (begin, strinc(begin)) if parts else (self.prefix + b"\x00", self.prefix + b"\xff")

    def unpack(self, key: bytes) -> tuple[Any, ...]:
        """The tuple elements of ``key`` after the root (see :meth:`Layout.unpack`)."""
        return self.layout.unpack(key)

    def unpack_below(self, parent: bytes, key: bytes) -> tuple[Any, ...]:
        return self.layout.unpack_below(parent, key)

    @property
    def config_key(self) -> bytes:
        """The role's :class:`RoleConfig` (root level: ``(root, "role", role)``)."""
        return self.layout.role_key(self.role)

    # Membership.
    @property
    def epoch_key(self) -> bytes:
        return self.key("epoch")

    def member_key(self, wid: str) -> bytes:
        return self.key("member", wid)

    def members_range(self) -> tuple[bytes, bytes]:
        return self.range("member")

    def member_keys(self, wids: Iterable[str]) -> list[bytes]:
        """:meth:`member_key` of many ids (the role's prefix packed once)."""
        head = self.key("member")
        return [head + pack((wid,)) for wid in wids]

    def health_key(self, wid: str) -> bytes:
        return self.key("health", wid)

    def health_range(self) -> tuple[bytes, bytes]:
        return self.range("health")

    def inbox_key(self, wid: str) -> bytes:
        return self.key("inbox", wid)

    def retired_key(self, wid: str) -> bytes:
        """Incarnations of ``wid`` that run nothing any more (see :func:`.records.retire`)."""
        return self.key("retired", wid)

    def handoff_key(self, wid: str, partition: int) -> bytes:
        return self.key("handoff", wid, partition)

    def handoffs_range(self, wid: str) -> tuple[bytes, bytes]:
        return self.range("handoff", wid)

    def memberchange_range(self) -> tuple[bytes, bytes]:
        return self.range("mchange")

    def memberchange_key_template(self, wid: str) -> bytes:
        """A SET_VERSIONSTAMPED_KEY parameter for a membership change-log entry
        ``(..., "mchange", stamp, wid)``, written with every epoch bump."""
        head = self.key("mchange") + bytes([_TUPLE_VERSIONSTAMP_CODE])
        return head + VS_PLACEHOLDER + b"\0\0" + pack((wid,)) + struct.pack("<I", len(head))

    def memberchange_entries(self, keys: Iterable[bytes]) -> list[tuple[bytes, str]]:
        """:meth:`memberchange_entry` of many keys (the role's prefix packed once)."""
        at = len(self.key("mchange")) + 1
        return [self._memberchange_entry(at, key) for key in keys]

    def memberchange_entry(self, key: bytes) -> tuple[bytes, str]:
        """(versionstamp, worker id) of a membership change-log key."""
        return self._memberchange_entry(len(self.key("mchange")) + 1, key)

    def _memberchange_entry(self, at: int, key: bytes) -> tuple[bytes, str]:
        if len(key) < at + VERSIONSTAMP_SIZE + 2 or key[at - 1] != _TUPLE_VERSIONSTAMP_CODE:
            raise CorruptDataError(f"membership change-log key {key!r} has no versionstamp")
        try:
            (wid,) = unpack(key, at + VERSIONSTAMP_SIZE + 2)
        except Exception as e:
            raise CorruptDataError(f"membership change-log key {key!r}: {e}") from e
        return key[at : at + VERSIONSTAMP_SIZE], str(wid)

    def memberchange_after(self, stamp: bytes) -> bytes:
        """The first membership change-log key after every entry stamped ``stamp``."""
        return strinc(self._stamp_key("mchange", stamp))

    def memberchange_before_version(self, version: int) -> bytes:
        return self._stamp_key("mchange", version.to_bytes(8, "big") + b"\0\0")

    # Jobs and claims.
    @property
    def job_count_key(self) -> bytes:
        """An 8-byte little-endian counter of the role's jobs (atomic ADD)."""
        return self.key("job_count")

    @property
    def jobs_epoch_key(self) -> bytes:
        return self.key("jobs_epoch")

    def job_key(self, partition: int, job_id: str) -> bytes:
        if type(partition) is int and type(job_id) is str:
            return self.job_head + pack_int_str(partition, job_id)
        return self.key("job", partition, job_id)

    def partition_range(self, partition: int) -> tuple[bytes, bytes]:
        return self.range("job", partition)

    def jobs_range(self) -> tuple[bytes, bytes]:
        return self.range("job")

    def claim_key(self, partition: int, job_id: str) -> bytes:
        if type(partition) is int and type(job_id) is str:
            return self.claim_head + pack_int_str(partition, job_id)
        return self.key("claim", partition, job_id)

    def claims_range(self, partition: int | None = None) -> tuple[bytes, bytes]:
        return self.range("claim") if partition is None else self.range("claim", partition)

    def jobhealth_key(self, job_id: str) -> bytes:
        return self.key("jobhealth", job_id)

    def jobhealth_range(self) -> tuple[bytes, bytes]:
        return self.range("jobhealth")

    def jobchange_range(self) -> tuple[bytes, bytes]:
        return self.range("jobchange")

    def jobchange_key_template(self, job_id: str) -> bytes:
        """A SET_VERSIONSTAMPED_KEY parameter for a new change-log entry
        ``(..., "jobchange", stamp, job_id)``: the job id keeps several changes made
        in one transaction (one stamp) apart."""
        head = self.key("jobchange") + bytes([_TUPLE_VERSIONSTAMP_CODE])
        return head + VS_PLACEHOLDER + b"\0\0" + pack((job_id,)) + struct.pack("<I", len(head))

    def jobchange_stamp(self, key: bytes) -> bytes:
        """The versionstamp of a change-log key."""
        at = len(self.key("jobchange")) + 1
        if len(key) < at + VERSIONSTAMP_SIZE or key[at - 1] != _TUPLE_VERSIONSTAMP_CODE:
            raise CorruptDataError(f"change-log key {key!r} has no versionstamp")
        return key[at : at + VERSIONSTAMP_SIZE]

    def jobchange_after(self, stamp: bytes) -> bytes:
        """The first change-log key after every entry stamped ``stamp``."""
        return strinc(self._stamp_key("jobchange", stamp))

    def jobchange_before_version(self, version: int) -> bytes:
        return self._stamp_key("jobchange", version.to_bytes(8, "big") + b"\0\0")

    # Per-partition job counts and the stored plan.
    def part_count_key(self, partition: int) -> bytes:
        """An 8-byte little-endian count of one partition's jobs (atomic ADD; cleared at
        zero with COMPARE_AND_CLEAR, so only non-empty partitions have one)."""
        return self.key("pcount", partition)

    def part_counts_range(self) -> tuple[bytes, bytes]:
        return self.range("pcount")

    def part_counts_partition(self, key: bytes) -> int:
        """The partition of a :meth:`part_count_key`."""
        return self._int_below("pcount", key, "partition count key", "partition")

    def _int_below(self, part: str, key: bytes, what: str, name: str) -> int:
        """The one integer after ``part`` in ``key`` (a partition, a sequence number)."""
        t = self.unpack_below(self.key(part), key)
        if len(t) != 1 or not isinstance(t[0], int):
            raise CorruptDataError(f"{what} {key!r} has no {name}")
        return t[0]

    @property
    def counted_key(self) -> bytes:
        """Present once every job of the role is in the per-partition counts (a role
        created before the counts existed is recounted once, see _store/plan.py)."""
        return self.key("pcounted")

    @property
    def plan_key(self) -> bytes:
        """The stored plan's header: its sequence number and chunk count (_core/plan.py)."""
        return self.key("plan")

    def plan_chunk_key(self, index: int) -> bytes:
        return self.key("planchunk", index)

    def plan_chunks_range(self) -> tuple[bytes, bytes]:
        return self.range("planchunk")

    def plan_delta_key(self, seq: int) -> bytes:
        """What changed from plan ``seq - 1`` to plan ``seq`` (_core/plan_delta.py)."""
        return self.key("plandelta", seq)

    def plan_deltas_range(self) -> tuple[bytes, bytes]:
        return self.range("plandelta")

    def plan_delta_seq(self, key: bytes) -> int:
        """The plan sequence number of a :meth:`plan_delta_key`."""
        return self._int_below("plandelta", key, "plan delta key", "sequence number")

    def _stamp_key(self, part: str, stamp: bytes) -> bytes:
        # A tuple-layer Versionstamp element: code 0x33, 10-byte stamp, 2 user bytes (0).
        return self.key(part) + bytes([_TUPLE_VERSIONSTAMP_CODE]) + stamp + b"\0\0"

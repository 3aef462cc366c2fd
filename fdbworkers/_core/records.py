"""The stored records and their codec (pure: no I/O).

Values are msgpack maps carrying a small schema version ``"v"`` (:func:`encode`,
:func:`decode`); a newer schema is refused with :class:`LayoutError` rather than
misread. Here: the records (:class:`RoleConfig`, :class:`MemberRecord`, :class:`Claim`,
:class:`JobHealth`, the retired incarnations), versionstamped values, the layout
version's value, job spec checks, and the JSON form of a stored value. Where each is
stored: :mod:`.keys`.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from .._errors import ConfigError, CorruptDataError, LayoutError
from .assign import ALGORITHM_VERSION
from .keys import LAYOUT_VERSION, VS_PLACEHOLDER
from .tuples import VERSIONSTAMP_SIZE

#: Schema version written into every value.
SCHEMA_VERSION: Final = 1


def encode(obj: dict[str, Any]) -> bytes:
    """A value: msgpack map with the schema version."""
    packed: bytes = msgpack.packb({"v": SCHEMA_VERSION, **obj}, use_bin_type=True)
    return packed


#: FoundationDB's largest value (bytes); a job record (spec, weight, added_at) must fit.
MAX_VALUE_BYTES: Final = 100_000
#: The deepest nesting of lists and maps a job spec may have.
MAX_SPEC_DEPTH: Final = 64


def check_spec(spec: Any) -> None:
    """Refuse a job spec that cannot be stored or read back as given: deeper than
    MAX_SPEC_DEPTH, holding NaN or an infinity (not JSON; never equal to itself, so
    the idempotent add would rewrite it forever), or of a type msgpack cannot carry.
    The size is checked on the whole record (``check_record_size``)."""
    stack: list[tuple[Any, int]] = [(spec, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ConfigError(f"job spec holds {value!r}: only finite numbers are allowed")
        elif isinstance(value, dict | list | tuple):
            if depth >= MAX_SPEC_DEPTH:
                raise ConfigError(
                    f"job spec is nested too deeply: at most {MAX_SPEC_DEPTH} levels of "
                    "lists and maps"
                )
            items = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value]
            for k, v in items:
                if k is not None:
                    stack.append((k, depth + 1))
                stack.append((v, depth + 1))
        elif value is not None and not isinstance(value, bool | int | str | bytes):
            raise ConfigError(
                f"job spec holds a {type(value).__name__}: use None, bool, int, float, str, "
                "bytes, lists and maps"
            )


def check_record_size(what: str, value: bytes) -> None:
    """Refuse a value larger than FoundationDB stores, naming the limit."""
    if len(value) > MAX_VALUE_BYTES:
        raise ConfigError(
            f"{what} is too large: {len(value):,} bytes encoded, the limit is "
            f"{MAX_VALUE_BYTES:,} bytes (FoundationDB's value size limit); keep large data "
            "elsewhere and put a reference in the spec"
        )


def decode(key: bytes, value: bytes) -> dict[str, Any]:
    """Decode a value written by :func:`encode`; corrupt or newer data raises clearly."""
    try:
        obj = msgpack.unpackb(value, raw=False)
    except Exception as e:  # msgpack raises several unrelated exception types
        raise CorruptDataError(f"cannot decode the value at {key!r}: {e}") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("v"), int):
        raise CorruptDataError(f"the value at {key!r} is not an fdbworkers record")
    if obj["v"] > SCHEMA_VERSION:
        raise LayoutError(
            f"the value at {key!r} has schema version {obj['v']}, newer than this "
            f"fdbworkers understands ({SCHEMA_VERSION}); upgrade fdbworkers"
        )
    return obj


def stamped_value(obj: dict[str, Any]) -> bytes:
    """A SET_VERSIONSTAMPED_VALUE parameter: the stamp first, then a msgpack tail."""
    return VS_PLACEHOLDER + encode(obj) + struct.pack("<I", 0)


def split_stamped(key: bytes, value: bytes) -> tuple[bytes, dict[str, Any]]:
    """(versionstamp, tail) of a value written with :func:`stamped_value`."""
    if len(value) < VERSIONSTAMP_SIZE:
        raise CorruptDataError(f"the value at {key!r} is too short for a versionstamp")
    tail = value[VERSIONSTAMP_SIZE:]
    return value[:VERSIONSTAMP_SIZE], (decode(key, tail) if tail else {})


def epoch_value() -> bytes:
    """A SET_VERSIONSTAMPED_VALUE parameter that stores just the commit's stamp."""
    return VS_PLACEHOLDER + struct.pack("<I", 0)


def stamp_version(stamp: bytes) -> int:
    """The commit version inside a versionstamp."""
    return int.from_bytes(stamp[:8], "big")


@dataclass(frozen=True)
class RoleConfig:
    """Set once when the role is created: the partition count and the version of the
    assignment algorithm (all members must compute the same map)."""

    partitions: int
    created_at: float = 0.0
    algorithm: int = 1

    def encode(self) -> bytes:
        return encode(
            {
                "partitions": self.partitions,
                "created_at": self.created_at,
                "algorithm": self.algorithm,
            }
        )

    @classmethod
    def decode(cls, key: bytes, value: bytes) -> RoleConfig:
        obj = decode(key, value)
        p = obj.get("partitions")
        if not isinstance(p, int) or p < 1:
            raise CorruptDataError(f"role config at {key!r} has no valid partition count")
        algorithm = obj.get("algorithm", 1)
        if not isinstance(algorithm, int) or algorithm > ALGORITHM_VERSION:
            raise LayoutError(
                f"role config at {key!r} uses assignment algorithm {algorithm!r}; this "
                f"fdbworkers implements up to {ALGORITHM_VERSION}: upgrade fdbworkers"
            )
        return cls(p, float(obj.get("created_at", 0.0)), algorithm)


#: Decoded member records kept for reuse (see ``MemberRecord.decode``).
RECORD_MEMO_SIZE: Final = 65_536
_RECORD_MEMO: dict[tuple[bytes, bytes], MemberRecord] = {}


@dataclass(frozen=True)
class MemberRecord:
    """What a worker publishes about itself under ``(root, "r", role, "member", wid)``."""

    wid: str
    incarnation: str
    timeout: float
    weight: float = 1.0
    host: str = ""
    pid: int = 0
    joined_at: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    #: Set by an operator (``fdbworkers drain``): the worker leaves gracefully.
    drain: bool = False
    #: The incarnation this one replaced (a restart with the same id), if any.
    replaced: str | None = None
    #: The replaced incarnation's timeout: its lease may outlast ours (a restart that
    #: lowered the timeout), and its claims are taken only once that lease ran out.
    replaced_timeout: float | None = None

    def encode(self) -> bytes:
        return encode(
            {
                "incarnation": self.incarnation,
                "timeout": self.timeout,
                "weight": self.weight,
                "host": self.host,
                "pid": self.pid,
                "joined_at": self.joined_at,
                "meta": self.meta,
                "drain": self.drain,
                "replaced": self.replaced,
                "replaced_timeout": self.replaced_timeout,
            }
        )

    @classmethod
    def decode(cls, wid: str, key: bytes, value: bytes) -> MemberRecord:
        """The record stored as ``value``. Records are immutable, so the same stored
        bytes give the same object (a bounded memo): a full membership read decodes only
        the records that changed, and workers simulated in one process share records
        instead of holding N copies each."""
        memo = _RECORD_MEMO.get((key, value))
        if memo is not None and memo.wid == wid:
            return memo
        rec = cls._decode(wid, key, value)
        if len(_RECORD_MEMO) >= RECORD_MEMO_SIZE:
            del _RECORD_MEMO[next(iter(_RECORD_MEMO))]  # the oldest
        _RECORD_MEMO[(key, value)] = rec
        return rec

    @classmethod
    def decode_stored(
        cls, key: bytes, value: bytes, wid_of: Callable[[bytes], str]
    ) -> MemberRecord:
        """:meth:`decode` of a stored key and value, the id read from the key
        (``wid_of``) only when the record is not known yet; the record's ``wid`` is
        then the one id string shared by every view holding it."""
        memo = _RECORD_MEMO.get((key, value))
        if memo is not None:
            return memo
        return cls.decode(wid_of(key), key, value)

    @classmethod
    def _decode(cls, wid: str, key: bytes, value: bytes) -> MemberRecord:
        obj = decode(key, value)
        try:
            return cls(
                wid=wid,
                incarnation=str(obj["incarnation"]),
                timeout=float(obj["timeout"]),
                weight=float(obj.get("weight", 1.0)),
                host=str(obj.get("host", "")),
                pid=int(obj.get("pid", 0)),
                joined_at=float(obj.get("joined_at", 0.0)),
                meta=dict(obj.get("meta") or {}),
                drain=bool(obj.get("drain", False)),
                replaced=obj.get("replaced"),
                replaced_timeout=(
                    float(obj["replaced_timeout"])
                    if obj.get("replaced_timeout") is not None
                    else None
                ),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptDataError(f"member record at {key!r} is malformed: {e}") from e


@dataclass(frozen=True)
class Claim:
    """Who holds a job: its stamp is the fencing token (the claim's commit versionstamp)."""

    token: bytes
    wid: str
    incarnation: str
    #: The holder's timeout when it claimed (its lease is at most this long); None in
    #: claims written before it was recorded.
    timeout: float | None = None

    @classmethod
    def decode(cls, key: bytes, value: bytes) -> Claim:
        stamp, obj = split_stamped(key, value)
        try:
            t = obj.get("timeout")
            timeout = float(t) if isinstance(t, int | float) and math.isfinite(t) else None
            return cls(stamp, str(obj["wid"]), str(obj["incarnation"]), timeout)
        except KeyError as e:
            raise CorruptDataError(f"claim at {key!r} is malformed: missing {e}") from e

    @staticmethod
    def encode_new(wid: str, incarnation: str, timeout: float | None = None) -> bytes:
        obj: dict[str, Any] = {"wid": wid, "incarnation": incarnation}
        if timeout is not None:
            obj["timeout"] = timeout
        return stamped_value(obj)


#: The longest last error a job health record keeps (characters).
MAX_JOB_ERROR: Final = 1000


@dataclass(frozen=True)
class JobHealth:
    """A job that fails on its owner: written by the owner (``state`` ``failing``, or
    ``parked`` once it stopped running it after ``park_after`` failures in a row)."""

    wid: str
    incarnation: str
    #: The claim's token when written: the record counts only while it is the claim's.
    token: bytes
    state: str
    #: Failures in a row (since it last ran ``healthy_after`` seconds without failing).
    failures: int
    #: Restarts on this owner since it claimed the job.
    restarts: int
    last_error: str
    #: Wall times (informational): the first failure in a row, the latest one.
    since: float
    last_failure_at: float

    def encode(self) -> bytes:
        return encode(
            {
                "wid": self.wid,
                "incarnation": self.incarnation,
                "token": self.token,
                "state": self.state,
                "failures": self.failures,
                "restarts": self.restarts,
                "last_error": self.last_error[:MAX_JOB_ERROR],
                "since": self.since,
                "last_failure_at": self.last_failure_at,
            }
        )

    @classmethod
    def decode(cls, key: bytes, value: bytes) -> JobHealth:
        obj = decode(key, value)
        try:
            return cls(
                str(obj["wid"]),
                str(obj["incarnation"]),
                bytes(obj["token"]),
                str(obj["state"]),
                int(obj["failures"]),
                int(obj.get("restarts", 0)),
                str(obj.get("last_error", "")),
                float(obj.get("since", 0.0)),
                float(obj.get("last_failure_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptDataError(f"job health at {key!r} is malformed: {e!r}") from e

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "failures": self.failures,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "since": self.since,
            "last_failure_at": self.last_failure_at,
        }


#: Retired incarnations kept per worker id (the newest; older ones are dropped).
RETIRED_CAP: Final = 16


def decode_retired(key: bytes, value: bytes | None) -> dict[str, int]:
    """The retired incarnations of one worker id: incarnation -> the cluster version at
    which it was attested (see :func:`retire`)."""
    if value is None:
        return {}
    inc = decode(key, value).get("inc")
    if not isinstance(inc, dict):
        raise CorruptDataError(f"retired record at {key!r} has no incarnations")
    return {str(k): int(v) for k, v in inc.items() if isinstance(v, int)}


def retire(entries: dict[str, int], incarnation: str, version: int) -> dict[str, int]:
    """``entries`` with ``incarnation`` retired at ``version``, keeping the newest
    :data:`RETIRED_CAP`. A retired incarnation runs no job any more: its handlers
    stopped (a graceful leave), or its lease ran out (an eviction, or a supersession
    observed for longer than its timeout). Dropping an old entry is safe: a claim of
    that incarnation then takes the ordinary path (a wait for its lease)."""
    out = dict(entries)
    out[incarnation] = max(version, out.get(incarnation, 0))
    newest = sorted(out.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:RETIRED_CAP]
    return dict(newest)


def encode_retired(entries: dict[str, int]) -> bytes:
    return encode({"inc": entries})


def check_layout(key: bytes, value: bytes | None) -> int | None:
    """The stored layout version; a newer one raises :class:`LayoutError`."""
    if value is None:
        return None
    version = decode(key, value).get("layout")
    if not isinstance(version, int):
        raise CorruptDataError(f"layout key {key!r} holds no layout version")
    if version > LAYOUT_VERSION:
        raise LayoutError(
            f"the data under this root uses layout version {version}; this fdbworkers "
            f"understands up to {LAYOUT_VERSION}. Upgrade fdbworkers, or use another --root."
        )
    return version


def layout_value() -> bytes:
    return encode({"layout": LAYOUT_VERSION})


#: Versions advance about this many per second (FDB's VERSIONS_PER_SECOND).
VERSIONS_PER_SECOND = 1_000_000


def jsonable(value: Any) -> Any:
    """A msgpack value as JSON: bytes become ``{"$bytes": "<base64>"}``, tuples lists,
    non-finite floats strings; map keys become strings."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {
            str(k) if not isinstance(k, bytes) else k.hex(): jsonable(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value

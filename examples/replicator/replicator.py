"""A replication job runner on fdbworkers: CouchDB's replicator in miniature.

A *database* here is a key space with documents and a changes feed, as in CouchDB on
FoundationDB:

    (root, "db", name, "doc", doc_id)     -> versionstamp (the doc's seq) + {body, deleted}
    (root, "db", name, "changes", seq)    -> {id}: one entry per document, at its last seq
    (root, "db", name, "head")            -> versionstamp, bumped by every write (watched)

A *replication* is a job of the role ``replicator`` whose spec is a replication document
``{"source": "db1", "target": "db2", "filter": {"type": "order"}}`` (the optional filter
keeps documents whose body has these top-level field values). Its handler reads the
source's changes feed after its checkpoint, in batches, and commits each batch to the
target **together with the checkpoint in one transaction fenced with job.fence(tr)**:

    (root, "checkpoint", job_id)          -> {seq, docs_written, batches}

So a worker that lost the job can never write a batch or move the checkpoint again (its
transaction conflicts with the new owner's claim, and the retry raises FencedError), and
a new owner resumes exactly where the last committed batch ended. A retry after
``commit_unknown_result`` (1021) re-reads the checkpoint in the same transaction, so a
batch that did commit is not applied again.

With ``audit=True`` every applied change also adds 1 to ``(root, "audit", job, doc, seq)``
and every checkpoint move appends ``{prev, new}`` to ``(root, "audit_ckpt", job, vs)``:
tests use them to prove that no change was applied twice and that checkpoints only move
forward (tests/test_replicator.py).

Run it on the dev server: see README.md next to this file.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import structlog
import trio

from fdbworkers import (
    ConfigError,
    Database,
    FencedError,
    Job,
    Transaction,
    Watch,
    add_job,
    remove_job,
)
from fdbworkers._core.keys import Layout, validate_name

ROLE: Final = "replicator"
DATA_ROOT: Final = "replicator-example"
BATCH_SIZE: Final = 100
#: How long an idle replication waits on the source's head watch before looking again.
IDLE_WAIT: Final = 5.0
_VS_CODE: Final = 0x33  # the tuple layer's 96-bit versionstamp element
_VS_PLACEHOLDER: Final = b"\xff" * 10
_ZERO_SEQ: Final = b"\x00" * 10

log = structlog.get_logger("replicator")


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def _unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)


@dataclass(frozen=True)
class ReplicationSpec:
    """A replication document: copy ``source`` to ``target``, keeping the documents
    whose body has every field of ``filter`` with that value (all when ``None``)."""

    source: str
    target: str
    filter: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, spec: Any) -> ReplicationSpec:
        if not isinstance(spec, Mapping):
            raise ConfigError(f"a replication spec is a map {{source, target, filter}}: {spec!r}")
        unknown = set(spec) - {"source", "target", "filter"}
        if unknown:
            raise ConfigError(f"unknown fields in the replication spec: {sorted(unknown)}")
        source = validate_name("source", spec.get("source"))  # type: ignore[arg-type]
        target = validate_name("target", spec.get("target"))  # type: ignore[arg-type]
        if source == target:
            raise ConfigError(f"source and target are the same database {source!r}")
        flt = spec.get("filter")
        if flt is not None and not isinstance(flt, Mapping):
            raise ConfigError(f"filter must be a map of field -> value, got {flt!r}")
        return cls(source, target, dict(flt) if flt is not None else None)

    def to_spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "target": self.target}
        if self.filter is not None:
            out["filter"] = dict(self.filter)
        return out

    def accepts(self, body: Any) -> bool:
        if self.filter is None:
            return True
        return isinstance(body, Mapping) and all(
            k in body and body[k] == v for k, v in self.filter.items()
        )


@dataclass(frozen=True)
class Checkpoint:
    seq: bytes = _ZERO_SEQ
    docs_written: int = 0
    batches: int = 0

    def encode(self) -> bytes:
        return _pack({"seq": self.seq, "docs_written": self.docs_written, "batches": self.batches})

    @classmethod
    def decode(cls, raw: bytes | None) -> Checkpoint:
        if raw is None:
            return cls()
        obj = _unpack(raw)
        return cls(bytes(obj["seq"]), int(obj["docs_written"]), int(obj["batches"]))


@dataclass(frozen=True)
class BatchResult:
    """What one batch transaction did: changes read, documents written to the target,
    and (when it found nothing new) a watch on the source's head."""

    changes: int
    written: int
    checkpoint: Checkpoint
    watch: Watch | None = None


@dataclass(frozen=True)
class Store:
    """The key spaces of the example (databases, checkpoints, audit)."""

    layout: Layout = field(default_factory=lambda: Layout.for_root(DATA_ROOT))

    @classmethod
    def at(cls, root: str = DATA_ROOT) -> Store:
        return cls(Layout.for_root(root))

    # -- keys ------------------------------------------------------------------------

    def doc_key(self, db: str, doc_id: str) -> bytes:
        return self.layout.key("db", db, "doc", doc_id)

    def docs_range(self, db: str) -> tuple[bytes, bytes]:
        return self.layout.range("db", db, "doc")

    def head_key(self, db: str) -> bytes:
        return self.layout.key("db", db, "head")

    def changes_range(self, db: str) -> tuple[bytes, bytes]:
        return self.layout.range("db", db, "changes")

    def change_key(self, db: str, seq: bytes) -> bytes:
        return self.layout.key("db", db, "changes") + bytes([_VS_CODE]) + seq + b"\0\0"

    def change_key_template(self, db: str) -> bytes:
        head = self.layout.key("db", db, "changes") + bytes([_VS_CODE])
        return head + _VS_PLACEHOLDER + b"\0\0" + struct.pack("<I", len(head))

    @staticmethod
    def seq_of_change(key: bytes) -> bytes:
        return key[-12:-2]

    def checkpoint_key(self, job_id: str) -> bytes:
        return self.layout.key("checkpoint", job_id)

    def audit_key(self, job_id: str, doc_id: str, seq: bytes) -> bytes:
        return self.layout.key("audit", job_id, doc_id, seq)

    def audit_range(self, job_id: str) -> tuple[bytes, bytes]:
        return self.layout.range("audit", job_id)

    def audit_ckpt_range(self, job_id: str) -> tuple[bytes, bytes]:
        return self.layout.range("audit_ckpt", job_id)

    def audit_ckpt_template(self, job_id: str) -> bytes:
        head = self.layout.key("audit_ckpt", job_id) + bytes([_VS_CODE])
        return head + _VS_PLACEHOLDER + b"\0\0" + struct.pack("<I", len(head))

    # -- documents (the application writing to a source database) --------------------

    async def tx_put_doc(
        self, tr: Transaction, db: str, doc_id: str, body: Any, *, deleted: bool = False
    ) -> None:
        """Write (or delete, leaving a tombstone) a document: its value carries its new
        seq (the commit versionstamp), its old changes entry is replaced by a new one."""
        validate_name("document id", doc_id)
        key = self.doc_key(db, doc_id)
        old = await tr.get(key)
        if old is not None:
            tr.clear(self.change_key(db, old[:10]))
        tr.set_versionstamped_value(
            key, _VS_PLACEHOLDER + _pack({"body": body, "deleted": deleted}) + struct.pack("<I", 0)
        )
        tr.set_versionstamped_key(self.change_key_template(db), _pack({"id": doc_id}))
        tr.set_versionstamped_value(self.head_key(db), _VS_PLACEHOLDER + struct.pack("<I", 0))

    async def put_doc(self, database: Database, db: str, doc_id: str, body: Any) -> None:
        await database.transact(self.tx_put_doc, db, doc_id, body)

    async def delete_doc(self, database: Database, db: str, doc_id: str) -> None:
        await database.transact(self.tx_put_doc, db, doc_id, None, deleted=True)

    async def read_docs(self, database: Database, db: str) -> dict[str, Any]:
        """Live documents of ``db`` (tombstones left out): id -> body."""
        begin, end = self.docs_range(db)
        out: dict[str, Any] = {}
        while True:

            async def page(tr: Transaction, begin: bytes = begin) -> list[tuple[bytes, bytes]]:
                return [
                    (kv.key, kv.value) for kv in await tr.snapshot.get_range(begin, end, limit=1000)
                ]

            kvs = await database.transact(page)
            for k, v in kvs:
                obj = _unpack(v[10:])  # the seq, then the document
                if not obj.get("deleted"):
                    out[str(self.layout.unpack(k)[-1])] = obj.get("body")
            if len(kvs) < 1000:
                return out
            begin = kvs[-1][0] + b"\x00"

    async def read_head(self, database: Database, db: str) -> bytes:
        async def tx(tr: Transaction) -> bytes | None:
            return await tr.snapshot.get(self.head_key(db))

        raw = await database.transact(tx)
        return raw[:10] if raw else _ZERO_SEQ

    async def last_change(self, database: Database, db: str) -> bytes:
        """The seq of the newest entry of the changes feed (zeros when empty)."""

        async def tx(tr: Transaction) -> bytes:
            begin, end = self.changes_range(db)
            kvs = await tr.snapshot.get_range(begin, end, limit=1, reverse=True)
            return self.seq_of_change(kvs[0].key) if kvs else _ZERO_SEQ

        result: bytes = await database.transact(tx)
        return result

    async def read_checkpoint(self, database: Database, job_id: str) -> Checkpoint:
        async def tx(tr: Transaction) -> bytes | None:
            return await tr.snapshot.get(self.checkpoint_key(job_id))

        return Checkpoint.decode(await database.transact(tx))

    # -- replication ---------------------------------------------------------------------

    async def tx_copy_batch(
        self, tr: Transaction, job: Job, spec: ReplicationSpec, batch_size: int, audit: bool
    ) -> BatchResult:
        """One batch, fenced: the changes after the checkpoint, their documents copied
        to the target, the checkpoint moved, all in this one transaction."""
        await job.fence(tr)  # commits only while this worker still holds the job
        ckey = self.checkpoint_key(job.id)
        ck = Checkpoint.decode(await tr.get(ckey))  # read conflict: one writer at a time
        begin, end = self.changes_range(spec.source)
        if ck.seq != _ZERO_SEQ:
            begin = self.change_key(spec.source, ck.seq) + b"\x00"
        # Snapshot reads of the source: all at this transaction's read version (so they
        # agree with each other), without conflicting with the application's writes.
        kvs = await tr.snapshot.get_range(begin, end, limit=batch_size)
        if not kvs:
            return BatchResult(0, 0, ck, tr.watch(self.head_key(spec.source)))
        written = 0
        seq = ck.seq
        for kv in kvs:
            seq = self.seq_of_change(kv.key)
            doc_id = str(_unpack(kv.value)["id"])
            raw = await tr.snapshot.get(self.doc_key(spec.source, doc_id))
            if raw is None or raw[:10] != seq:
                continue  # replaced by a newer change, which comes later in the feed
            obj = _unpack(raw[10:])
            if not obj.get("deleted") and not spec.accepts(obj.get("body")):
                continue
            tkey = self.doc_key(spec.target, doc_id)
            if obj.get("deleted"):
                tr.clear(tkey)
            else:
                tr.set(tkey, seq + _pack({"body": obj.get("body"), "deleted": False}))
            written += 1
            if audit:
                tr.add(self.audit_key(job.id, doc_id, seq), struct.pack("<q", 1))
        new = Checkpoint(seq, ck.docs_written + written, ck.batches + 1)
        tr.set(ckey, new.encode())
        if audit:
            tr.set_versionstamped_key(
                self.audit_ckpt_template(job.id), _pack({"prev": ck.seq, "new": seq})
            )
        return BatchResult(len(kvs), written, new)


def make_handler(
    store: Store,
    *,
    batch_size: int = BATCH_SIZE,
    idle_wait: float = IDLE_WAIT,
    audit: bool = False,
    on_batch: Callable[[Job, BatchResult], Awaitable[None]] | None = None,
) -> Callable[[Job], Awaitable[None]]:
    """The job handler: replicate until the job is stopped (moved, fenced, drained)."""
    if batch_size < 1:
        raise ConfigError("batch_size must be >= 1")

    async def replicate(job: Job) -> None:
        spec = ReplicationSpec.parse(job.spec)
        log.info("replication_started", job=job.id, source=spec.source, target=spec.target)
        while not job.stopping.is_set():
            job.check()  # raises FencedError once this worker's lease expired
            result: BatchResult = await job.db.transact(
                store.tx_copy_batch, job, spec, batch_size, audit
            )
            if on_batch is not None:
                await on_batch(job, result)
            if result.watch is None:
                continue
            # Caught up: wait for the next write to the source (or a stop).
            try:
                with trio.move_on_after(idle_wait):
                    async with trio.open_nursery() as n:

                        async def fired(n: trio.Nursery = n, w: Watch = result.watch) -> None:
                            try:
                                await w.wait()
                            except Exception:
                                await trio.sleep(0.5)  # a failed watch: look again soon
                            n.cancel_scope.cancel()

                        async def stopped(n: trio.Nursery = n) -> None:
                            await job.stopping.wait()
                            n.cancel_scope.cancel()

                        n.start_soon(fired)
                        n.start_soon(stopped)
            finally:
                result.watch.cancel()
        log.info("replication_stopping", job=job.id)

    return replicate


async def add_replication(
    database: Database,
    job_id: str,
    source: str,
    target: str,
    filter: Mapping[str, Any] | None = None,
    *,
    role: str = ROLE,
    root: str | None = None,
    partitions: int | None = None,
) -> bool:
    spec = ReplicationSpec.parse({"source": source, "target": target, "filter": filter})
    kwargs: dict[str, Any] = {"root": root}
    if partitions is not None:
        kwargs["partitions"] = partitions
    return await add_job(database, role, job_id, spec.to_spec(), **kwargs)


async def remove_replication(
    database: Database, job_id: str, *, role: str = ROLE, root: str | None = None
) -> bool:
    return await remove_job(database, role, job_id, root=root)


def in_sync(source: Mapping[str, Any], target: Mapping[str, Any], spec: ReplicationSpec) -> bool:
    return {k: v for k, v in source.items() if spec.accepts(v)} == dict(target)


__all__ = [
    "ROLE",
    "BatchResult",
    "Checkpoint",
    "FencedError",
    "ReplicationSpec",
    "Store",
    "add_replication",
    "in_sync",
    "make_handler",
    "remove_replication",
]

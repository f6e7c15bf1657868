"""The trainer side of parameter sync: deltas, dense weights and snapshots."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from torch import nn

from headrace.embedding_store import EmbeddingStore
from headrace.model import ModelSpec, dense_state_bytes
from headrace.serving.protocol import SlotRows, Update
from headrace.serving.scorer import model_meta
from headrace.serving.transport import UpdateWriter

__all__ = ["ParameterPublisher", "attach_publisher"]

log = logging.getLogger(__name__)


class TrainerLike(Protocol):
    """What the publisher reads of a trainer (:class:`headrace.trainer.Trainer`).

    Serving does not import the trainer: the CLI hands its trainer over.
    """

    store: EmbeddingStore
    model: nn.Module
    model_spec: ModelSpec
    after_step: list[Callable[[Any, Any], None]]
    #: ``state.sample_rate``: the rate the newest trained negatives were kept at.
    state: Any


class ParameterPublisher:
    """Publishes what the trainer changed, so serving stays seconds behind.

    Call it after every training step (it is the trainer's after-step hook).
    Every ``sync_interval`` seconds it drains the store's touched set into a
    delta; dense weights ride along every ``dense_sync_interval``; a full
    snapshot goes out at the first call, every ``snapshot_interval``, and
    instead of a delta larger than ``max_delta_rows``. The touched set is
    never trimmed, so no update is lost: a large backlog becomes a snapshot.

    Parameters
    ----------
    store
        The trainer's embedding store.
    writer
        Where updates go (see :func:`headrace.serving.open_writer`).
    dense_state
        Returns the serialized dense weights.
    meta
        The model description serving needs to build the model, or a
        callable returning the current one: when its answer changes (e.g.
        the stream's negative sample rate), a snapshot goes out at once.
    first_version
        Version of the first snapshot; a restarted trainer continues after
        the newest version its transport holds.
    clock
        Wall-clock seconds (injectable for tests).
    registry
        Where the ``headrace_sync_*`` metrics are registered.
    shard, shards
        A rank of a distributed trainer publishes the rows of its shard
        ``shard`` of ``shards``; shard 0 adds the dense weights and the model
        description. Every rank publishes the same versions together (see
        :meth:`due` and :meth:`publish`), and serving applies a version once
        all shards' parts arrived.
    """

    def __init__(
        self,
        store: EmbeddingStore,
        writer: UpdateWriter,
        dense_state: Callable[[], bytes],
        meta: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        *,
        sync_interval: float = 1.0,
        dense_sync_interval: float = 30.0,
        snapshot_interval: float = 600.0,
        max_delta_rows: int = 1_000_000,
        first_version: int = 1,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
        shard: int = 0,
        shards: int = 1,
    ) -> None:
        self.store = store
        self.shard, self.shards = shard, shards
        self.writer = writer
        self.dense_state = dense_state
        self._meta_now = meta if callable(meta) else lambda: meta
        self.meta = dict(self._meta_now())
        self.sync_interval = sync_interval
        self.dense_sync_interval = dense_sync_interval
        self.snapshot_interval = snapshot_interval
        self.max_delta_rows = max_delta_rows
        self.version = first_version - 1
        self.event_time = 0.0  # of the newest step seen
        self.clock = clock
        self._last_sync = self._last_dense = self._last_snapshot = -float("inf")
        registry = registry if registry is not None else CollectorRegistry()
        self._rows = Counter(
            "headrace_sync_published_rows", "Rows published to serving.", registry=registry
        )
        self._duration = Histogram(
            "headrace_sync_publish_duration_seconds",
            "Time to build and write one update.",
            registry=registry,
        )
        self._version = Gauge(
            "headrace_sync_version", "Version of the last published update.", registry=registry
        )
        self._snapshots = Counter(
            "headrace_sync_snapshot", "Snapshots published.", registry=registry
        )

    @classmethod
    def for_trainer(
        cls, trainer: TrainerLike, writer: UpdateWriter, **options: Any
    ) -> ParameterPublisher:
        """A publisher of ``trainer``'s rows, dense weights and model description.

        Versions continue after the newest one ``writer`` already holds;
        ``options`` are the keyword arguments of the constructor (a given
        ``first_version`` wins).
        """
        meta = model_meta(trainer.model_spec)  # dumped once: the rate is all that changes
        if "first_version" not in options:
            options["first_version"] = writer.latest_version() + 1
        return cls(
            trainer.store,
            writer,
            lambda: dense_state_bytes(trainer.model),
            lambda: meta | {"sample_rate": trainer.state.sample_rate},
            **options,
        )

    def __call__(self, event_time: float) -> Update | None:
        """Publish if an interval has passed; returns the update published, if any."""
        self.event_time = max(self.event_time, event_time)
        kind = self.due()
        return None if kind is None else self.publish(kind, event_time)

    def due(self) -> Literal["snapshot", "delta"] | None:
        """What :meth:`__call__` would publish now: a snapshot, a delta or nothing."""
        now = self.clock()
        if now - self._last_snapshot >= self.snapshot_interval or self._meta_now() != self.meta:
            return "snapshot"
        if now - self._last_sync < self.sync_interval:
            return None
        if self.store.changes_lost():
            log.info("the store let go of its unpublished changes; sending a snapshot")
            return "snapshot"
        if self.store.pending_changes() > self.max_delta_rows:
            log.info(
                "%d rows changed since the last delta; sending a snapshot instead",
                self.store.pending_changes(),
            )
            return "snapshot"
        return "delta"

    def publish(self, kind: Literal["snapshot", "delta"], event_time: float) -> Update:
        """:meth:`publish_snapshot` or :meth:`publish_delta`."""
        if kind == "snapshot":
            return self.publish_snapshot(event_time)
        return self.publish_delta(event_time)

    def publish_delta(self, event_time: float) -> Update:
        """Drain the touched set into a delta (with dense weights when they are due)."""
        now = self.clock()
        with_dense = now - self._last_dense >= self.dense_sync_interval
        slots = {
            name: SlotRows(c.fids, c.vectors, c.removed)
            for name, c in self.store.drain_changes().items()
        }
        return self._write("delta", event_time, slots, with_dense, meta=None)

    def publish_snapshot(self, event_time: float) -> Update:
        """Every row, the dense weights and the model description."""
        self.store.reset_changes()  # everything goes out below
        self.meta = dict(self._meta_now())
        slots = {}
        for cfg in self.store.slots:
            fids, vectors = self.store.export(cfg.name)
            slots[cfg.name] = SlotRows(fids, vectors, SlotRows.empty(cfg.dim).removed)
        update = self._write("snapshot", event_time, slots, with_dense=True, meta=self.meta)
        self._last_snapshot = self._last_sync
        self._snapshots.inc()
        return update

    def _write(
        self,
        kind: str,
        event_time: float,
        slots: dict[str, SlotRows],
        with_dense: bool,
        meta: Mapping[str, Any] | None,
    ) -> Update:
        start = time.perf_counter()
        now = self.clock()
        lead = self.shard == 0  # the one shard that carries what all ranks hold alike
        update = Update(
            kind=kind,  # type: ignore[arg-type]
            version=self.version + 1,
            event_time=float(event_time),
            published_at=now,
            slots=slots,
            dense=self.dense_state() if with_dense and lead else None,
            meta=meta if lead else None,
            shard=self.shard,
            shards=self.shards,
        )
        self.writer.write(update)
        self.version = update.version
        self._last_sync = now
        if with_dense:
            self._last_dense = now
        self._rows.inc(update.rows)
        self._version.set(update.version)
        self._duration.observe(time.perf_counter() - start)
        return update


def attach_publisher(
    trainer: TrainerLike, writer: UpdateWriter, **options: Any
) -> ParameterPublisher:
    """:meth:`ParameterPublisher.for_trainer`, called after every training step."""
    publisher = ParameterPublisher.for_trainer(trainer, writer, **options)
    trainer.after_step.append(lambda _, step: publisher(float(step.batch.ts.max())))
    return publisher

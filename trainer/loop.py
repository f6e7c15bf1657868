"""The online training loop: predict, then train, batch after batch, with checkpoints.

Each step scores a batch with the current parameters (those scores are the
progressive-validation predictions), then learns from it: sparse rows
through the embedding store's optimizers, dense weights through torch. A
checkpoint writes the rows, dense weights, optimizer state, counters and the
source positions after the last trained batch in one atomic write; on start
the trainer restores it and seeks the source there, so after a crash no event
is lost and none is trained twice. A :class:`BatchPrefetcher` thread polls
and parses the next batches meanwhile; what it read ahead is never counted
or checkpointed, and is rewound when :meth:`Trainer.run` returns.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from prometheus_client import CollectorRegistry
from torch.nn import functional as F

from headrace.embedding_store import (
    EmbeddingStore,
    SlotConfig,
    StoreError,
    StoreStats,
    TrainingLookup,
)
from headrace.embedding_store.table import RowTable
from headrace.model import (
    CtrModel,
    ModelError,
    batch_fids,
    build_model,
    dense_state_bytes,
    load_dense_state,
    model_inputs,
)
from headrace.model.compiled_ctr import CompiledCtr, RowLayout
from headrace.stream import (
    Batch,
    DeadLetterSink,
    EventParser,
    EventStream,
    JsonlDeadLetterSink,
    ParserConfig,
    Source,
)
from headrace.trainer.checkpoint import (
    CONFIG_BLOB,
    MODEL_BLOB,
    MONITOR_BLOB,
    OPTIMIZER_BLOB,
    RECENT_IDS_BLOB,
    STATE_BLOB,
    YOUNG_IDS_BLOB,
    TrainingState,
)
from headrace.trainer.config import TrainerConfig
from headrace.trainer.correction import calibrated_probabilities, metric_weights
from headrace.trainer.dedup import RecentEventIds
from headrace.trainer.dense_optimizer import DenseOptimizer
from headrace.trainer.drift import DriftMonitor, SignalWindow
from headrace.trainer.evaluation import ProgressiveMetrics
from headrace.trainer.peers import Peers
from headrace.trainer.prefetch import BatchPrefetcher, Fetched
from headrace.trainer.telemetry import TrainerTelemetry
from headrace.trainer.unknown_rows import UnknownRows, YoungIds

__all__ = ["StepResult", "Summary", "Trainer", "TrainerError"]

log = logging.getLogger(__name__)

#: How often gauges that cost more than a counter (AUC, lag, store figures) refresh.
_TICK_S = 0.5
_LAG_EVERY_S = 2.0
#: Distributed: steps between the ranks' agreements to stop or checkpoint (a
#: collective each; checkpoint and stop decisions wait up to this many steps).
_AGREE_EVERY = 8


class TrainerError(RuntimeError):
    """The trainer cannot start or continue; the message says what to change."""


@dataclass(frozen=True)
class StepResult:
    """One training step: the batch, its progressive predictions and its loss."""

    batch: Batch
    probabilities: np.ndarray
    loss: float
    duration_s: float


@dataclass(frozen=True)
class Summary:
    """What a run did, for the CLI's closing JSON line."""

    events: int
    trained: int
    dead_letters: int
    auc: float
    logloss: float
    rolling_auc: float
    calibration: float
    rows: int
    seconds: float

    def to_json(self) -> dict[str, float | int | None]:
        def clean(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 6)

        return {
            "events": self.events,
            "trained": self.trained,
            "dead_letters": self.dead_letters,
            "auc": clean(self.auc),
            "logloss": clean(self.logloss),
            "rolling_auc": clean(self.rolling_auc),
            "calibration": clean(self.calibration),
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events / self.seconds, 1) if self.seconds else None,
        }


def _configure_torch(config: TrainerConfig, deterministic: bool) -> None:
    if deterministic:
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
    elif config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)


def _flat_parameters(model: torch.nn.Module) -> torch.nn.Parameter:
    """One parameter holding all of ``model``'s, whose own become views of it.

    Their gradients are views of the flat one's, which backward accumulates
    into, so the optimizer steps one tensor: per-tensor optimizer overhead
    was a tenth of a small batch's step. Zero the gradient with
    ``flat.grad.zero_()``.
    """
    params = list(model.parameters())
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        size = p.numel()
        p.data = flat.data[offset : offset + size].view_as(p)
        p.grad = flat.grad[offset : offset + size].view_as(p)
        offset += size
    return flat


_KERNELS_LOCK = threading.Lock()
_kernels_loaded = False


def load_kernels() -> None:
    """Load (or compile) the compiled kernels of the training step, once per process.

    Numba sets itself up and loads a kernel from its disk cache on the
    kernel's first call: about 0.4 s of CPU (0.75 s with numba's import),
    which the first step would otherwise take. Each kernel is called here
    as the step calls it (same argument types), on throwaway objects; the
    warm-up draws no random numbers, so it may run on a thread while
    another seeds torch (see :func:`load_kernels_meanwhile`).
    """
    global _kernels_loaded
    with _KERNELS_LOCK:
        if _kernels_loaded:
            return
        table = RowTable(SlotConfig(name="warm-up", dim=3), ["warm-up"], [0], seed=0)
        fids = np.arange(1, 5, dtype=np.int64)
        table.create(0, fids[:2], 0.0)
        table.see(table.find(0, fids[:2]), 1.0)
        rows, _, _ = table.train_lookup(0, fids, 1.0)
        table.apply(rows, np.ones((4, 3), np.float32))
        with torch.device("meta"):  # no initial values drawn
            model = CtrModel("deepfm", n_slots=2, dim=3, n_dense=1, hidden=(2, 2), id_bias=True)
        model = model.to_empty(device="cpu")
        for p in model.parameters():
            p.data.zero_()
            p.grad = torch.zeros_like(p)
        layout = RowLayout(np.array([[0, 1, 2], [0, 0, 2]]), np.array([0, 1]), 2)
        ones = np.ones(2, np.float32)
        logits, _, _ = CompiledCtr(model, "sum").loss_and_gradients(
            np.ones((4, 3), np.float32), layout, np.ones((2, 1), np.float32), ones, None, 2
        )
        ProgressiveMetrics(window=4).update(calibrated_probabilities(logits, None), ones)
        _kernels_loaded = True


def load_kernels_meanwhile() -> None:
    """:func:`load_kernels` on a thread, e.g. while a Kafka reader process starts.

    The trainer waits for it when built.
    """
    threading.Thread(target=load_kernels, name="load-kernels", daemon=True).start()


def _close_all(source: Source, dead_letters: DeadLetterSink | None) -> None:
    """Close what :meth:`Trainer.open` was given, when it cannot use it."""
    try:
        source.close()
    finally:
        if dead_letters is not None:
            dead_letters.close()


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class _TableGrouping:
    """Slots that share a table are one store slot: their fids go to the store together.

    A store lookup takes each table's fids as one run; :meth:`slot_order`
    brings the vectors back into slot order where that differs (only when
    a table's slots are not adjacent in model order).
    """

    def __init__(self, slots: tuple[str, ...], tables: tuple[str, ...]) -> None:
        self.table_of = dict(zip(slots, tables, strict=True))
        self.shared = len(set(tables)) < len(tables)
        self.identity = slots == tables
        grouped = sorted(slots, key=lambda slot: tables.index(self.table_of[slot]))
        self.reordered = grouped != list(slots)

    def store_fids(self, fids: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Store slot -> fids: each table's slots' fids concatenated in model order."""
        if self.identity:
            return fids
        if not self.shared:
            return {self.table_of[slot]: array for slot, array in fids.items()}
        runs: dict[str, list[np.ndarray]] = {}
        for slot, array in fids.items():
            runs.setdefault(self.table_of[slot], []).append(array)
        return {table: np.concatenate(parts) for table, parts in runs.items()}

    def slot_order(self, values: torch.Tensor, fids: dict[str, np.ndarray]) -> torch.Tensor:
        """``values`` (in :meth:`store_fids` order) in slot order (gradients flow back)."""
        if not self.reordered:
            return values
        tables = dict.fromkeys(self.table_of[slot] for slot in fids)
        grouped = [slot for table in tables for slot in fids if self.table_of[slot] == table]
        starts = dict(zip(grouped, np.cumsum([0] + [len(fids[s]) for s in grouped]), strict=False))
        order = np.concatenate(
            [np.arange(starts[slot], starts[slot] + len(array)) for slot, array in fids.items()]
        )
        return values[torch.from_numpy(order)]


class Trainer:
    """Trains a model online from an :class:`EventStream` into an :class:`EmbeddingStore`.

    Use :meth:`open` to build one on a data directory; it restores the last
    checkpoint there and seeks the stream to it.

    Parameters
    ----------
    config
        Model and training settings.
    store
        The sparse rows (the trainer owns it and closes it).
    stream
        The events (the trainer owns it and closes it).
    registry
        Prometheus registry for this trainer's metrics (a new one if ``None``).
    deterministic
        One torch thread and deterministic kernels, so a run from given
        positions gives bit-identical weights.
    peers
        The other ranks of a distributed run (``None``: one process). Every
        rank then steps together, with an empty batch when it has nothing.

    Attributes
    ----------
    after_step
        Callables ``hook(trainer, result)`` run after every step, e.g. the
        parameter publisher (which drains the store's touched set there).
    tick_hooks
        Callables ``hook(trainer)`` run about twice a second by :meth:`run`,
        after the gauges are refreshed, whether or not events came in (the
        dashboard's history samples there, so that an idle source shows as such).
    lag
        Kafka lag per partition, as of the last refresh (empty for other sources).
    state
        Counters and positions as of the last step.
    """

    def __init__(
        self,
        config: TrainerConfig,
        store: EmbeddingStore,
        stream: EventStream,
        *,
        registry: CollectorRegistry | None = None,
        deterministic: bool = False,
        peers: Peers | None = None,
    ) -> None:
        _configure_torch(config, deterministic)
        load_kernels()
        self.config = config
        self.peers = peers
        self.store = store
        self.stream = stream
        self.model_spec = config.model_spec
        self.model = build_model(self.model_spec)
        self._sequence_slots = tuple(getattr(self.model, "sequence_slots", ()))
        self._tables = _TableGrouping(self.model_spec.slots, self.model_spec.tables)
        self._dense = _flat_parameters(self.model)
        self._pooling = config.model.pooling
        self._unknown = None
        if config.model.unknown_rows and peers is not None:
            # Ids without a row then stay zero vectors, as serving answers while
            # a slot has no unknown row.
            log.warning(
                "model.unknown_rows: a distributed run does not train unknown rows yet; "
                "ids without a row count as zero vectors (set model.unknown_rows = false "
                "to say so in the config)"
            )
        elif config.model.unknown_rows:
            self._unknown = UnknownRows(
                dict(zip(self.model_spec.slots, self.model_spec.tables, strict=True)),
                config.unknown_rows_young_s,
            )
        # The built-in models step without autograd, in a few compiled calls;
        # other models, and tables whose slots are not adjacent in model
        # order, go through autograd.
        self._compiled_model = (
            CompiledCtr(self.model, self._pooling)
            if type(self.model) is CtrModel and not self._tables.reordered
            else None
        )
        self.optimizer = DenseOptimizer(
            config.dense_optimizer.kind, self._dense, config.dense_optimizer.lr
        )
        self.metrics = ProgressiveMetrics(config.window)
        self.drift = DriftMonitor(config.drift, self._store_slots)
        self.signals = SignalWindow(config.drift.window_events, self._store_slots)
        self.state = TrainingState()
        self.recent_ids = RecentEventIds(config.dedup_window)
        self.telemetry = TrainerTelemetry(registry or CollectorRegistry())
        self.after_step: list[Callable[[Trainer, StepResult], None]] = []
        self.tick_hooks: list[Callable[[Trainer], None]] = []
        self.lag: dict[str, int] = {}
        self._stats: StoreStats = store.stats()
        # The store's lookups without a row when the drift signal window last started.
        self._window_unseen = store.unseen_lookups()
        # Stream counters already folded into ``state`` (they count per process).
        self._stream_seen: tuple[int, dict[str, int]] = (0, {})
        #: Distributed: waits for the last step's dense gradient summed over the ranks.
        self._reduced: Callable[[], None] | None = None
        self._restore()

    @classmethod
    def open(
        cls,
        config: TrainerConfig,
        data_dir: str | Path,
        source: Source,
        *,
        registry: CollectorRegistry | None = None,
        deterministic: bool = False,
        store: EmbeddingStore | None = None,
        peers: Peers | None = None,
        dead_letters: DeadLetterSink | None = None,
    ) -> Trainer:
        """A trainer on ``data_dir`` (store in ``store/``, dead letters in ``dead_letters.jsonl``).

        ``store`` replaces the one in ``store/`` (a distributed run's shard),
        ``peers`` are the other ranks (see :class:`Trainer`). ``dead_letters``
        replaces the file (the trainer owns it and closes it), e.g. a
        :class:`~headrace.stream.KafkaDeadLetterSink`.

        Raises
        ------
        TrainerError
            When the model cannot be built (naming its class and what is
            wrong), or the directory holds a store of another model or is
            unusable.
        """
        data_dir = Path(data_dir)
        try:
            # A model class that cannot be built fails before the data dir is touched.
            build_model(config.model_spec)
        except ModelError as exc:
            _close_all(source, dead_letters)
            raise TrainerError(str(exc)) from exc
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            store = store or EmbeddingStore.open(
                data_dir / "store",
                config.store_slots,
                seed=config.seed,
                memory_budget=config.store.memory_budget,
                eviction=config.store.eviction,
            )
        except (StoreError, OSError) as exc:
            _close_all(source, dead_letters)
            raise TrainerError(str(exc)) from exc
        parser = EventParser(
            ParserConfig(
                dense_names=config.model.dense_features,
                fid_names=tuple(config.model_spec.shared_tables.items()),
            )
        )
        sink = dead_letters or JsonlDeadLetterSink(data_dir / "dead_letters.jsonl")
        stream = EventStream(source, sink, parser)
        try:
            return cls(
                config, store, stream, registry=registry, deterministic=deterministic, peers=peers
            )
        except BaseException:
            stream.close()
            store.close()
            raise

    @functools.cached_property
    def _slot_names(self) -> tuple[str, ...]:
        return tuple(slot.name for slot in self.config.slots)

    @functools.cached_property
    def _store_slots(self) -> tuple[str, ...]:
        """The store's slots: the slots with rows of their own, then the shared tables."""
        return tuple(slot.name for slot in self.config.store_slots)

    @functools.cached_property
    def _slot_index(self) -> dict[str, int]:
        return {slot: k for k, slot in enumerate(self._store_slots)}

    # -- checkpoints ---------------------------------------------------------

    def _restore(self) -> None:
        extra = self.store.extra
        if STATE_BLOB not in extra:
            # No checkpoint: whatever a crashed run dead-lettered is read again.
            self.stream.dead_letters.resume(None, self.stream.positions())
            return
        saved = TrainerConfig.model_validate_json(extra[CONFIG_BLOB])
        if saved.model != self.config.model:
            raise TrainerError(
                f"the data directory {self.store.path.parent} holds a model trained with "
                f"{saved.model!r}; the config asks for {self.config.model!r}. "
                "Use the same model settings or a new --data-dir"
            )
        load_dense_state(self.model, extra[MODEL_BLOB])
        try:
            self.optimizer.load_state_dict(torch.load(io.BytesIO(extra[OPTIMIZER_BLOB])))
        except ValueError as exc:
            raise TrainerError(
                f"the data directory {self.store.path.parent} holds dense optimizer state "
                f"that cannot be restored: {exc}. Use the dense_optimizer settings it was "
                "trained with, or a new --data-dir"
            ) from exc
        self.state = TrainingState.from_bytes(extra[STATE_BLOB])
        # Pickle of our own numpy arrays and River detectors, written by this class.
        monitors = pickle.loads(extra[MONITOR_BLOB])
        # Checkpoints before the signal window held (metrics, drift) only.
        self.metrics, self.drift = monitors[:2]
        if len(monitors) > 2:
            self.signals = monitors[2]
        if RECENT_IDS_BLOB in extra:
            self.recent_ids = RecentEventIds.from_bytes(
                extra[RECENT_IDS_BLOB], self.config.dedup_window
            )
        young = self._unknown.young if self._unknown is not None else None
        if young is not None and YOUNG_IDS_BLOB in extra:
            self._unknown.young = YoungIds.from_bytes(extra[YOUNG_IDS_BLOB], young.age_s)
        if self.state.positions:
            self.stream.seek(self.state.positions)
        # The records after the saved positions are read (and dead-lettered) again.
        self.stream.dead_letters.resume(self.state.dead_letter_mark, self.stream.positions())
        log.info(
            "restored checkpoint: %d examples trained, resuming at %s",
            self.state.trained,
            self.state.positions,
        )

    def checkpoint(self) -> None:
        """Persist rows, dense weights, optimizer state, counters and positions atomically."""
        started = time.perf_counter()
        self._settle()
        self.state.dead_letter_mark = self.stream.dead_letters.mark()
        young = {}
        if self._unknown is not None and self._unknown.young is not None:
            young[YOUNG_IDS_BLOB] = self._unknown.young.to_bytes()
        self.store.checkpoint(
            {
                CONFIG_BLOB: self.config.model_dump_json().encode(),
                MODEL_BLOB: dense_state_bytes(self.model),
                OPTIMIZER_BLOB: _torch_bytes(self.optimizer.state_dict()),
                STATE_BLOB: self.state.to_bytes(),
                MONITOR_BLOB: pickle.dumps((self.metrics, self.drift, self.signals)),
                RECENT_IDS_BLOB: self.recent_ids.to_bytes(),
                **young,
            }
        )
        self.telemetry.checkpoint_duration.observe(time.perf_counter() - started)

    def _read_ahead(self, upcoming: Batch | None) -> None:
        """Start reading the rows of ``upcoming``, the batch after this one, from disk."""
        if upcoming is not None and len(upcoming):
            fids = batch_fids(upcoming, self._slot_names)
            self.store.prefetch(self._tables.store_fids(fids))

    # -- one step ------------------------------------------------------------

    def step(self, batch: Batch) -> StepResult | None:
        """Score ``batch`` with the current parameters, then learn from it.

        One store lookup and one gradient update cover every slot; the
        vectors of all slots ``(n_fids, dim)`` are pooled in one operation
        into ``(n, slots, dim)``. With :attr:`peers` the loss is the mean
        over every rank's events and ``batch`` may be empty; ``None`` when
        no rank had an event.
        """
        started = time.perf_counter()
        n = len(batch)
        examples, event_time = n, float(batch.ts.max()) if n else -math.inf
        fids = batch_fids(batch, self._slot_names)
        store_fids = self._tables.store_fids(fids)
        if self.peers is not None:
            examples, event_time = self.peers.begin_step(examples, event_time, store_fids)
            if not examples:
                return None
        lookup = self.store.lookup_slots(store_fids, event_time)
        self._settle()
        values, stand_ins, copy_grads = lookup.values, None, None
        if self._unknown is not None:
            stand_ins = self._unknown.stand_ins(self.store, lookup, fids, batch.offsets, event_time)
        if stand_ins is not None:
            values = stand_ins.fill_missing(values)
            copy = stand_ins.copy_inputs(values, n, batch.weights)
            if copy is not None:
                # The copy's dense gradients are dropped: the main pass overwrites them.
                copy_grads = self._gradients(batch, fids, copy[0], copy[1], examples)[2]
        logits, loss, row_grads = self._gradients(batch, fids, values, batch.weights, examples)
        if self.peers is None:
            self.store.apply_gradients(lookup, row_grads)
            if stand_ins is not None:
                self.store.apply_gradients(
                    stand_ins.lookup, stand_ins.gradients(row_grads, copy_grads)
                )
            self.optimizer.step()
        else:
            # Every rank's dense gradients are summed while this rank goes on to its next
            # batch; the next step's forward pass waits for them (see _settle). The sparse
            # ones go to their owners with the next step's ids. (No unknown rows here.)
            self._reduced = self.peers.reduce_dense(self._dense.grad)
            self.store.apply_gradients(lookup, row_grads)
        probabilities = calibrated_probabilities(logits, batch.sample_rates)
        # The loss is the mean over every rank's events; this rank's own mean:
        loss_value = loss * examples / max(n, 1)
        if n:
            self.metrics.update(probabilities, batch.labels, metric_weights(batch))
            if self.signals.add(
                loss_value * n, float(batch.labels.sum()), n, self._lookup_counts(lookup)
            ):
                self._detect_drift(event_time)
        self._expire(event_time)
        self.state.trained += n
        self.state.batches += 1
        duration = time.perf_counter() - started
        self.telemetry.examples.inc(n)
        self.telemetry.step_duration.observe(duration)
        self.telemetry.last_event.set(event_time)
        return StepResult(batch, probabilities, loss_value, duration)

    def _lookup_counts(self, lookup: TrainingLookup) -> np.ndarray:
        """The ids ``lookup`` looked up per slot, in :attr:`_store_slots` order."""
        counts = lookup.bounds[1:] - lookup.bounds[:-1]
        if lookup.slots == self._store_slots:
            return counts
        lookups = np.zeros(len(self._store_slots), dtype=np.int64)
        lookups[[self._slot_index[slot] for slot in lookup.slots]] = counts
        return lookups

    def _settle(self) -> None:
        """Step the dense weights with the last step's gradient, summed over the ranks.

        Distributed steps leave it in flight (see :meth:`step`); whatever
        reads the weights next (the next step, a checkpoint) settles first.
        """
        if self._reduced is not None:
            self._reduced()
            self._reduced = None
            self.optimizer.step()

    def _gradients(
        self,
        batch: Batch,
        fids: dict[str, np.ndarray],
        values: np.ndarray,
        weights: np.ndarray | None,
        examples: int,
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """Logits, loss (the weighted mean over ``examples`` events) and the gradients of
        ``values``; the dense weights' gradients replace their ``.grad``."""
        if self._compiled_model is not None:
            return self._compiled_model.loss_and_gradients(
                values,
                RowLayout.of(batch, self._slot_names),
                batch.dense,
                batch.labels,
                weights,
                examples,
            )
        return self._autograd_step(batch, fids, values, weights, examples)

    def _autograd_step(
        self,
        batch: Batch,
        fids: dict[str, np.ndarray],
        values: np.ndarray,
        weights: np.ndarray | None,
        examples: int,
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """Logits, loss (the mean over ``examples`` events) and row gradients, by autograd."""
        # Backward adds to the dense gradients: they start from zero. (The compiled
        # step writes them whole, so it needs no zeroing.)
        self._dense.grad.zero_()
        rows = torch.from_numpy(values).requires_grad_()
        pooled, sequences = model_inputs(
            batch,
            self._slot_names,
            self._tables.slot_order(rows, fids),
            self._pooling,
            self.config.dim,
            self._sequence_slots,
        )
        logits = self.model(pooled, sequences, torch.from_numpy(batch.dense))
        labels = torch.from_numpy(batch.labels)
        # The sum over the events of all ranks: their gradients add up to one process's.
        loss = F.binary_cross_entropy_with_logits(
            logits,
            labels,
            weight=None if weights is None else torch.from_numpy(weights),
            reduction="sum",
        ).div(examples)
        loss.backward()
        return logits.detach().numpy(), float(loss.detach()), rows.grad.numpy()

    def _empty_batch(self, positions: dict[str, int]) -> Batch:
        """A batch of no events at the current positions (a rank with nothing to read)."""
        dense = self.config.model.dense_features
        empty = np.empty(0, dtype=np.int64)
        return Batch(
            fids=dict.fromkeys(self._slot_names, empty),
            offsets=dict.fromkeys(self._slot_names, np.zeros(1, dtype=np.int64)),
            dense=np.empty((0, len(dense)), dtype=np.float32),
            dense_names=tuple(dense),
            labels=np.empty(0, dtype=np.float32),
            ts=np.empty(0, dtype=np.float64),
            request_ids=(),
            positions=dict(positions),
        )

    def _detect_drift(self, event_time: float) -> None:
        """Feed a full signal window to the drift detectors."""
        now, before = self.store.unseen_lookups(), self._window_unseen
        unseen = {slot: now[slot] - before[slot] for slot in self._store_slots}
        self._window_unseen = now
        for detection in self.drift.update(*self.signals.take(unseen), event_time):
            self.telemetry.drift.labels(detector=detection.detector, signal=detection.signal).inc()

    def _expire(self, event_time: float) -> None:
        """Run the store's expiry sweep once per ``expire_every`` seconds of event time."""
        if self.state.next_expiry is None:
            self.state.next_expiry = event_time + self.config.expire_every
        elif event_time >= self.state.next_expiry:
            if self._unknown is not None:
                self._unknown.keep(self.store, event_time)
            removed = self.store.expire(event_time)
            self.state.next_expiry = event_time + self.config.expire_every
            if any(removed.values()):
                log.info("expiry at event time %.0f removed %s rows", event_time, removed)

    # -- the loop ------------------------------------------------------------

    def _absorb_stream_counters(self, fetched: Fetched) -> None:
        """Fold the stream counts up to a taken batch into the persisted counters."""
        records, dead = self._stream_seen
        self.state.records += fetched.records_read - records
        for reason, count in fetched.dead_letters.items():
            new = count - dead.get(reason, 0)
            if new:
                self.state.dead_letters[reason] = self.state.dead_letters.get(reason, 0) + new
        self._stream_seen = (fetched.records_read, fetched.dead_letters)

    def _refresh_gauges(self, with_lag: bool) -> None:
        t = self.telemetry
        t.evaluation(self.metrics)
        self._stats = self.store.stats()
        t.store(self._stats)
        # The counters as of the last batch taken: the reader thread moves the stream's own.
        t.ingest(*self._stream_seen)
        lag = getattr(self.stream.source, "lag", None)
        if with_lag and lag is not None:
            self.lag = lag()
            t.kafka_lag(self.lag)

    def run(
        self,
        *,
        max_events: int | None = None,
        stop: threading.Event | None = None,
        on_tick: Callable[[Trainer], None] | None = None,
    ) -> Summary:
        """Train until the source is exhausted, ``max_events`` records were read, or ``stop``.

        The batch in progress always finishes, and a final checkpoint is
        written before returning.

        Parameters
        ----------
        max_events
            Records to read in this run (dead letters included).
        stop
            Set it (e.g. from a signal handler) to stop after the current batch.
        on_tick
            Called about twice a second, e.g. to draw a progress line.
        """
        stop = stop or threading.Event()
        if self.peers is not None:
            # Ranks take different times to start; the run's clock starts together.
            self.peers.ready()
        started = time.monotonic()
        last_checkpoint = (started, self.state.trained)
        last_tick = last_lag = 0.0
        cfg = self.config
        first_records = last_records = self.stream.records_read
        peers, ended, rounds = self.peers, False, 0
        # A store with a memory budget reads the next batch's rows from disk on
        # a thread while this one trains (a sharded store's lookups go to owners).
        reads_ahead = peers is None and self.store.memory_budget is not None
        with BatchPrefetcher(self.stream, cfg.batch_size, max_events) as prefetcher:
            while peers is not None or not stop.is_set():
                fetched = None
                if not ended:
                    try:
                        fetched = prefetcher.get()
                    except TimeoutError:
                        if peers is None:
                            continue
                    else:
                        ended = fetched is None
                if ended and peers is None:
                    break
                if fetched is None:
                    # Nothing read: this rank steps with the other ranks, on no events.
                    batch = self._empty_batch(prefetcher.taken)
                else:
                    self._absorb_stream_counters(fetched)
                    last_records = fetched.records_read
                    batch = self.recent_ids.fresh(fetched.batch)
                    self.state.duplicates += len(fetched.batch) - len(batch)
                    if reads_ahead:
                        self._read_ahead(prefetcher.peek())
                if len(batch) or peers is not None:
                    if batch.sample_rates is not None and len(batch):
                        self.state.sample_rate = float(batch.sample_rates[-1])
                    result = self.step(batch)
                    if result is not None and len(batch):
                        for hook in self.after_step:
                            hook(self, result)
                self.state.positions = dict(batch.positions)
                now = time.monotonic()
                rounds += 1
                # Ranks take the same rounds, so they agree on the same ones.
                decide = peers is None or rounds % _AGREE_EVERY == 0
                due_s = (
                    decide
                    and cfg.checkpoint_every_s is not None
                    and now - last_checkpoint[0] >= cfg.checkpoint_every_s
                )
                due_events = (
                    decide
                    and cfg.checkpoint_every_events is not None
                    and (self.state.trained - last_checkpoint[1] >= cfg.checkpoint_every_events)
                )
                forced = decide and self.store.checkpoint_due
                if forced and not (due_s or due_events):
                    log.info(
                        "checkpoint taken early: rows changed since the last one fill half "
                        "the room the store's memory budget (%d bytes) leaves for rows; raise "
                        "store.memory_budget if this happens often",
                        self.store.memory_budget,
                    )
                    self.telemetry.forced_checkpoints.inc()
                due, halt = due_s or due_events or forced, False
                if peers is not None and decide:
                    halt, due = peers.agree(stop.is_set(), ended, due)
                if due:
                    self.checkpoint()
                    last_checkpoint = (now, self.state.trained)
                if now - last_tick >= _TICK_S:
                    self._refresh_gauges(with_lag=now - last_lag >= _LAG_EVERY_S)
                    last_lag = now if now - last_lag >= _LAG_EVERY_S else last_lag
                    last_tick = now
                    for hook in self.tick_hooks:
                        hook(self)
                    if on_tick is not None:
                        on_tick(self)
                if halt:
                    break
        events = last_records - first_records
        # Records read ahead were rewound: the stream's counters will count them again.
        self._stream_seen = (self.stream.records_read, dict(self.stream.dead_letter_counts))
        self.checkpoint()
        self._refresh_gauges(with_lag=False)
        return Summary(
            events=events,
            trained=self.state.trained,
            dead_letters=sum(self.state.dead_letters.values()),
            auc=self.metrics.auc(),
            logloss=self.metrics.logloss(),
            rolling_auc=self.metrics.rolling_auc(),
            calibration=self.metrics.calibration(),
            rows=sum(self._stats.rows.values()),
            seconds=time.monotonic() - started,
        )

    def close(self) -> None:
        """Close the stream and the store (without a checkpoint: :meth:`run` writes one)."""
        try:
            self.stream.close()
        finally:
            self.store.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

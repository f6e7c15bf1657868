"""One training run, assembled: config, source, store, trainer, on one process or one rank.

Without ``RANK``/``WORLD_SIZE`` in the environment a run is the
single-process trainer of :meth:`Trainer.open`, unchanged. Under torchrun
each rank joins the gloo process group, reads its share of the source,
keeps its shard of the rows (:class:`ShardedStore`) and restores the newest
generation all ranks committed (:func:`open_shard`).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from prometheus_client import CollectorRegistry

from headrace.distributed.collectives import Collectives, TorchPeers, World
from headrace.distributed.ranks import RankLabels, RankWatch
from headrace.distributed.sharded import ShardedStore
from headrace.distributed.shards import open_shard
from headrace.kafka_client import KafkaClientSettings
from headrace.serving import ParameterPublisher, attach_publisher
from headrace.serving.transport import UpdateWriter
from headrace.stream import DeadLetterSink, Source
from headrace.trainer import (
    StepResult,
    Summary,
    Trainer,
    TrainerConfig,
    open_dead_letters,
    open_source,
)
from headrace.trainer.history import RanksStatus

__all__ = ["TrainingRun"]

log = logging.getLogger(__name__)

_SWITCH_INTERVAL_S = 0.0005
#: What a publisher votes for, in order of precedence (the ranks take the maximum).
_KINDS: tuple[Literal["delta", "snapshot"] | None, ...] = (None, "delta", "snapshot")


class TrainingRun:
    """A trainer on its data dir and source, as one process or as one rank of several.

    Use :meth:`open`; close it (or use it as a context manager) when done.

    Attributes
    ----------
    trainer
        The trainer; attach publishers and dashboards to it as to any.
    world
        This rank and the number of ranks; ``None`` for a single process.
    collectives
        The process group and the time and bytes its collectives took
        (``None`` for a single process).
    data_dir
        Where this process keeps its store, dead letters and dashboard history.
    """

    def __init__(
        self,
        trainer: Trainer,
        data_dir: Path,
        world: World | None = None,
        collectives: Collectives | None = None,
    ) -> None:
        self.trainer = trainer
        self.data_dir = data_dir
        self.world = world
        self.collectives = collectives

    @classmethod
    def open(
        cls,
        config: TrainerConfig,
        data_dir: str | Path,
        source: str,
        *,
        until_end: bool = False,
        deterministic: bool = False,
        kafka: KafkaClientSettings | None = None,
        registry: CollectorRegistry | None = None,
        env: Mapping[str, str] | None = None,
        dead_letters: Literal["auto", "topic", "file"] | None = None,
    ) -> TrainingRun:
        """Open the run that ``env`` (default: the process environment) describes.

        ``dead_letters`` picks the sink of bad records (see
        :func:`~headrace.trainer.open_dead_letters`; default: the config's).
        Every rank writes its partitions' letters to it.

        Raises
        ------
        headrace.trainer.SourceUrlError
            For a malformed source URL or one that cannot be split over the ranks.
        headrace.trainer.TrainerError
            As :meth:`Trainer.open`.
        headrace.stream.BrokerUnavailable, ValueError
            As :func:`~headrace.trainer.open_dead_letters`.
        DistributedError
            When the process group cannot form or the data dir is not a
            distributed run's.
        """
        data_dir = Path(data_dir)
        world = World.from_env() if env is None else World.from_env(env)
        choice = dead_letters or config.dead_letters

        def open_trainer(directory: Path, rank: int, size: int, **extra: Any) -> Trainer:
            """A trainer on the source's share ``rank`` of ``size`` (one process: 0 of 1)."""
            events = open_source(
                source,
                until_end=until_end,
                deterministic=deterministic,
                kafka=kafka,
                rank=rank,
                world=size,
            )
            return Trainer.open(
                config,
                directory,
                events,
                registry=registry,
                deterministic=deterministic,
                dead_letters=_dead_letters(source, choice, kafka, events),
                **extra,
            )

        if world is None:
            return cls(open_trainer(data_dir, 0, 1), data_dir)
        # A collective returns while the reader thread parses: with the default 5 ms
        # switch interval, taking the GIL back cost each collective milliseconds.
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        collectives = Collectives(world)
        collectives.start()
        try:
            store, generations = open_shard(config, data_dir, collectives)
        except BaseException:
            collectives.close()
            raise
        sharded = ShardedStore(store, collectives, generations)
        rank_dir = data_dir / f"rank-{world.rank}"
        try:
            trainer = open_trainer(
                rank_dir,
                world.rank,
                world.size,
                store=sharded,  # the same interface, sharded
                peers=TorchPeers(collectives, sharded),
            )
        except BaseException:
            sharded.close()
            collectives.close()
            raise
        log.info(
            "rank %d of %d: %d rows in this shard, resuming at %s",
            world.rank,
            world.size,
            sum(store.stats().rows.values()),
            trainer.state.positions,
        )
        return cls(trainer, rank_dir, world, collectives)

    def attach_publisher(self, writer: UpdateWriter, **options: Any) -> ParameterPublisher:
        """Publish this run's parameters to ``writer`` (as ``serving.attach_publisher``).

        One process publishes after its steps as always. Ranks publish
        together: at each periodic agreement of the ranks (every few steps)
        every rank says what its publisher would send (nothing, a delta or
        a snapshot) and its newest event time; if any rank would publish,
        all publish that version, each its own shard's rows, the most any
        rank asked for (a snapshot over a delta). Versions go on after the
        newest one any rank's writer holds.
        """
        if self.world is None:
            return attach_publisher(self.trainer, writer, **options)
        assert self.collectives is not None and self.trainer.peers is not None
        newest = torch.tensor([writer.latest_version()], dtype=torch.int64)
        self.collectives.all_reduce(newest, dist.ReduceOp.MAX)
        publisher = ParameterPublisher.for_trainer(
            self.trainer,
            writer,
            first_version=int(newest) + 1,
            shard=self.world.rank,
            shards=self.world.size,
            **options,
        )

        trained = [False]  # since the last publish: idle ranks publish nothing, as one process

        def seen(_: Trainer, step: StepResult) -> None:
            publisher.event_time = max(publisher.event_time, float(step.batch.ts.max()))
            trained[0] = True

        def vote() -> list[float]:
            kind = publisher.due() if trained[0] else None
            return [_KINDS.index(kind), publisher.event_time]

        def act(agreed: list[float]) -> None:
            kind, publisher.event_time = _KINDS[int(agreed[0])], agreed[1]
            if kind is not None:
                publisher.publish(kind, publisher.event_time)
                trained[0] = False

        self.trainer.after_step.append(seen)
        self.trainer.peers.add_vote(vote, act)  # type: ignore[attr-defined]  # TorchPeers
        return publisher

    def watch_ranks(
        self, registry: CollectorRegistry
    ) -> tuple[CollectorRegistry | RankLabels, Callable[[], RanksStatus | None] | None]:
        """What this process's /metrics serves, and (rank 0) the figures of all ranks.

        One process: ``registry`` itself and ``None``. A rank: ``registry``
        with a ``rank`` label on every sample; every rank exchanges its
        figures about once a second (:class:`RankWatch`), and rank 0 gets
        the function that returns the latest (for its dashboard) and the
        ``headrace_all_ranks_eval_*`` gauges in ``registry``.
        """
        if self.world is None:
            return registry, None
        assert self.collectives is not None
        lead = self.world.rank == 0
        watch = RankWatch(
            self.trainer,
            self.collectives,
            self.trainer.peers,  # type: ignore[arg-type]  # TorchPeers in a rank
            registry=registry if lead else None,
        )
        return RankLabels(registry, self.world.rank), (lambda: watch.status) if lead else None

    @property
    def rank(self) -> int:
        return 0 if self.world is None else self.world.rank

    def run(
        self,
        *,
        max_events: int | None = None,
        stop: threading.Event | None = None,
        on_tick: Callable[[Trainer], None] | None = None,
    ) -> Summary:
        """Train until every rank's source ended, ``max_events`` or ``stop``: see Trainer.run."""
        return self.trainer.run(max_events=max_events, stop=stop, on_tick=on_tick)

    def close(self) -> None:
        try:
            self.trainer.close()
        finally:
            if self.collectives is not None:
                self.collectives.close()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dead_letters(
    url: str,
    choice: Literal["auto", "topic", "file"],
    kafka: KafkaClientSettings | None,
    events: Source,
) -> DeadLetterSink | None:
    """:func:`open_dead_letters`, closing the opened source ``events`` if it fails."""
    try:
        return open_dead_letters(url, choice, kafka=kafka)
    except BaseException:
        events.close()
        raise

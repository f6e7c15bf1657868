"""What the ranks of a run show together: metrics over all events, each rank's ingest, a label.

Each rank keeps the progressive metrics of its own events. About once a
second the ranks sum them (histograms and loss sums add up over disjoint
events) in one all_reduce, together with each rank's records, trained events
and consumer lag in a column of its own; rank 0's dashboard and /metrics
show the result. Every rank's /metrics carries a ``rank`` label.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from headrace.distributed.collectives import Collectives, TorchPeers
from headrace.trainer import Trainer
from headrace.trainer.evaluation import summed_figures
from headrace.trainer.history import RanksStatus, RankStatus

__all__ = ["RankLabels", "RankWatch"]

#: Per-rank figures exchanged: records read, events trained, consumer lag (-1: none).
_COLUMNS = 3


class RankWatch:
    """Sums the ranks' progressive metrics and gathers their ingest, every ``every_s`` seconds.

    It rides on the ranks' periodic agreement (a vote of
    :class:`~headrace.distributed.collectives.TorchPeers`): once any rank's
    interval has passed, all ranks exchange their figures in that round,
    in one all_reduce of ``(4 * bins + 8 + 3 * ranks,)`` float64 (512 KB at
    the default bins). With ``registry`` (rank 0's) it sets
    ``headrace_all_ranks_eval_auc`` and ``headrace_all_ranks_eval_logloss``.
    """

    def __init__(
        self,
        trainer: Trainer,
        collectives: Collectives,
        peers: TorchPeers,
        *,
        every_s: float = 1.0,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trainer = trainer
        self.collectives = collectives
        self.every_s = every_s
        self.clock = clock
        self.status: RanksStatus | None = None
        self._last = -math.inf
        self._records: np.ndarray | None = None  # per rank, at the exchange before
        self._auc = self._logloss = None
        if registry is not None:
            self._auc = Gauge(
                "headrace_all_ranks_eval_auc",
                "Progressive AUC over the events of all ranks",
                ["window"],
                registry=registry,
            )
            self._logloss = Gauge(
                "headrace_all_ranks_eval_logloss",
                "Progressive log loss over the events of all ranks",
                ["window"],
                registry=registry,
            )
        peers.add_vote(self._vote, self._act)

    def _vote(self) -> list[float]:
        return [float(self.clock() - self._last >= self.every_s)]

    def _act(self, agreed: list[float]) -> None:
        if agreed[0]:
            self.exchange()

    def exchange(self) -> RanksStatus:
        """Sum every rank's figures (all ranks call it together); returns and keeps the result."""
        world, trainer = self.collectives.world, self.trainer
        now = self.clock()
        own = np.zeros((world.size, _COLUMNS))
        lag = sum(trainer.lag.values()) if trainer.lag else -1
        own[world.rank] = (trainer.stream.records_read, trainer.state.trained, lag)
        additive = trainer.metrics.additive()
        packed = torch.from_numpy(np.concatenate([additive, own.ravel()]))
        self.collectives.all_reduce(packed, dist.ReduceOp.SUM)
        totals = packed.numpy()
        columns = totals[len(additive) :].reshape(world.size, _COLUMNS)
        elapsed = now - self._last
        rates = (
            (columns[:, 0] - self._records) / elapsed
            if self._records is not None and elapsed > 0
            else np.zeros(world.size)
        )
        self._last, self._records = now, columns[:, 0].copy()
        figures = summed_figures(totals[: len(additive)])
        self.status = RanksStatus(
            {name: None if math.isnan(v) else round(v, 6) for name, v in figures.items()},
            {
                str(rank): RankStatus(
                    int(records), int(trained), round(float(rate), 1), None if lag < 0 else int(lag)
                )
                for rank, ((records, trained, lag), rate) in enumerate(
                    zip(columns, rates, strict=True)
                )
            },
        )
        if self._auc is not None and self._logloss is not None:
            self._auc.labels(window="run").set(figures["auc"])
            self._auc.labels(window="rolling").set(figures["rolling_auc"])
            self._logloss.labels(window="run").set(figures["logloss"])
            self._logloss.labels(window="rolling").set(figures["rolling_logloss"])
        return self.status


class RankLabels(Collector):
    """A registry's metrics with a ``rank`` label on every sample (what a rank's /metrics serves).

    Examples
    --------
    >>> from prometheus_client import Counter, generate_latest
    >>> registry = CollectorRegistry()
    >>> Counter("headrace_demo", "A demo", registry=registry).inc()
    >>> b'headrace_demo_total{rank="1"} 1.0' in generate_latest(RankLabels(registry, 1))
    True
    """

    def __init__(self, registry: CollectorRegistry, rank: int) -> None:
        self.registry = registry
        self.rank = str(rank)

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                s._replace(labels={**s.labels, "rank": self.rank}) for s in family.samples
            ]
            yield labelled

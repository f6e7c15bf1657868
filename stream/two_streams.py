"""Synthetic impressions and delayed actions, for the joiner (``headrace join``).

Each event of the :class:`~headrace.stream.CtrGenerator` becomes an
impression (the event without its label). An event whose drawn label is 1
converts: its action (a click) comes an exponentially distributed delay
later, in event time; the others never convert. Labels within a window
``W`` are those whose delay is at most ``W``; their probability is
``p * (1 - exp(-W / mean_delay))``, a monotone function of the hidden
``p``, so the Bayes AUC of the labels a joiner with window ``W`` should
produce is that of ``p`` against them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import orjson

from .synthetic import BayesAuc, CtrGenerator, SyntheticConfig, _Draws

__all__ = ["ActionQueue", "TwoStreamConfig", "TwoStreamGenerator", "TwoStreams"]

_DELAY = 30  # purpose of the delay draws (see synthetic._Draws)


class _Sink(Protocol):
    def send(self, value: bytes, key: bytes | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class TwoStreamConfig:
    """The world of the impressions and how late its actions come.

    Attributes
    ----------
    synthetic
        The generator's world (the events behind the impressions).
    mean_delay_s
        Mean of the exponential delay from an impression to its action.
    window_s
        The join window the Bayes AUC is computed for.
    """

    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    mean_delay_s: float = 600.0
    window_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.mean_delay_s <= 0 or self.window_s <= 0:
            raise ValueError("mean_delay_s and window_s must be positive")


@dataclass(frozen=True, slots=True)
class TwoStreams:
    """One chunk: impressions in order, the actions they cause, the ground truth.

    Attributes
    ----------
    impressions
        ``(ts, request_id, message)`` in order.
    actions
        ``(ts, request_id, message)`` of the converting impressions, in
        impression order (not action-time order).
    probabilities
        The hidden click probability of each impression.
    labels
        1 where the impression converts within the window.
    late
        Impressions that convert after the window.
    """

    impressions: list[tuple[float, str, bytes]]
    actions: list[tuple[float, str, bytes]]
    probabilities: np.ndarray
    labels: np.ndarray
    late: int


class TwoStreamGenerator:
    """Impressions and delayed actions; event ``i`` is the same however chunked.

    Parameters
    ----------
    config
        The world and the delays.

    Examples
    --------
    >>> gen = TwoStreamGenerator(TwoStreamConfig(mean_delay_s=60.0))
    >>> chunk = gen.generate(0, 200)
    >>> len(chunk.impressions), len(chunk.actions) == int(chunk.labels.sum()) + chunk.late
    (200, True)
    """

    def __init__(self, config: TwoStreamConfig | None = None) -> None:
        self.config = config or TwoStreamConfig()
        self.events = CtrGenerator(self.config.synthetic)
        self._draws = _Draws(self.config.synthetic.seed)

    def generate(self, start: int, count: int) -> TwoStreams:
        """Impressions ``start`` to ``start + count - 1`` and their actions."""
        generated = self.events.generate(start, count)
        index = np.arange(start, start + count, dtype=np.int64)
        delays = -self.config.mean_delay_s * np.log(self._draws.uniform(_DELAY, index))
        impressions, actions = [], []
        in_window = np.zeros(count, dtype=np.int8)
        dumps = orjson.dumps
        for k, event in enumerate(generated.events):
            label = event.pop("label")
            request_id = event["request_id"]
            impressions.append((event["ts"], request_id, dumps(event)))
            if label:
                ts = event["ts"] + float(delays[k])
                action = {"ts": ts, "request_id": request_id, "type": "click"}
                actions.append((ts, request_id, dumps(action)))
                in_window[k] = delays[k] <= self.config.window_s
        late = int(generated.labels.sum()) - int(in_window.sum())
        return TwoStreams(impressions, actions, generated.probabilities, in_window, late)

    def write(
        self,
        count: int,
        impressions: _Sink,
        actions: _Sink,
        *,
        chunk: int = 10_000,
        on_progress: Callable[[int], None] | None = None,
    ) -> BayesAuc:
        """Send ``count`` impressions and their actions, each action once event time reaches it.

        Messages are keyed by request id, so that Kafka puts an impression
        and its actions in partitions of the same number. Actions whose time
        comes after the last impression are sent at the end, in time order.

        Returns
        -------
        BayesAuc
            The Bayes-optimal AUC of the labels within the window.
        """
        auc = BayesAuc()
        queue = ActionQueue()
        for begin in range(0, count, chunk):
            part = self.generate(begin, min(chunk, count - begin))
            auc.update(part.probabilities, part.labels)
            queue.send(part, impressions, actions)
            if on_progress is not None:
                on_progress(len(part.impressions))
        queue.flush(actions)
        return auc


class ActionQueue:
    """Actions waiting until event time reaches them, so each is sent after its impression."""

    def __init__(self) -> None:
        self._waiting: list[tuple[float, str, bytes]] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def send(self, part: TwoStreams, impressions: _Sink, actions: _Sink) -> None:
        """Send ``part``'s impressions in order, each after the actions due by its time."""
        waiting = self._waiting
        for action in part.actions:
            heapq.heappush(waiting, action)
        for ts, request_id, message in part.impressions:
            while waiting and waiting[0][0] <= ts:
                _, key, value = heapq.heappop(waiting)
                actions.send(value, key.encode())
            impressions.send(message, request_id.encode())

    def flush(self, actions: _Sink) -> None:
        """Send every waiting action, in time order (the impressions have ended)."""
        while self._waiting:
            _, key, value = heapq.heappop(self._waiting)
            actions.send(value, key.encode())

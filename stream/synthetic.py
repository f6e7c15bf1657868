"""A seeded generator of CTR events with known ground truth.

Every random draw is a hash of (seed, event index, purpose), not a step of a
sequential generator, so event ``i`` is the same however the stream is cut
into chunks or resumed: the synthetic source seeks in constant time.

The hidden model: the click probability is ``sigmoid(bias + taste + item
bias + device, position and hour effects)``; the label is a Bernoulli draw of
it. The taste mixes a shared part, ``<segment, category>`` of latent vectors
of the user's segment (an event feature, like a demographic bucket) and the
item's category, with a personal part ``<user, item>`` of per-id vectors.
The shared part recurs often enough to be learned online within the stream;
the personal part, for all but the heaviest users, does not (in 200k events a
quarter of the events come from users seen fewer than ten times before).
Users and items are drawn Zipf-popular from universes that grow over time
(new ids appear), and scheduled :class:`Drift` points redraw the tastes of a
share of segments and rotate item popularity. Because the probabilities are
known, the generator reports the Bayes-optimal AUC of the labels it drew:
the bar a trained model is measured against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import orjson

from headrace.metrics import histogram_auc
from headrace.schema import mix64

from .batch import Positions, Record, position_for

__all__ = [
    "BayesAuc",
    "CtrGenerator",
    "Drift",
    "GeneratedEvents",
    "SyntheticConfig",
    "SyntheticSource",
]

_DEVICES = ("ios", "android", "web")
_DEVICE_BIAS = np.array([0.25, 0.0, -0.3])
_N_TAGS = 200
_N_CATEGORIES = 40
_N_POSITIONS = 8
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Drift:
    """A scheduled change in the hidden model.

    Attributes
    ----------
    at
        Event index from which the change holds.
    taste_share
        Share of user segments whose latent tastes (the segment's and its
        users' personal ones) are redrawn.
    popularity_shift
        Whether item popularity ranks rotate, so other items become popular.
    """

    at: int
    taste_share: float = 0.3
    popularity_shift: bool = True

    def __post_init__(self) -> None:
        if self.at < 0:
            raise ValueError(f"Drift.at must be >= 0, not {self.at}")
        if not 0.0 <= self.taste_share <= 1.0:
            raise ValueError(f"Drift.taste_share must be in [0, 1], not {self.taste_share}")


@dataclass(frozen=True, slots=True)
class SyntheticConfig:
    """The generator's world.

    Attributes
    ----------
    seed
        Everything follows from it.
    users, items
        Ids at the start; ``new_users_per_1k`` and ``new_items_per_1k`` more
        appear per thousand events.
    user_zipf, item_zipf
        Zipf exponents of popularity (> 0, not 1).
    segments
        Number of user segments (the ``segment`` feature).
    latent_dim
        Size of the hidden taste vectors.
    taste_scale
        Weight of the taste in the logit: the larger, the more a model can
        learn (and the higher the Bayes AUC).
    personal_share
        Share of the taste's variance that is personal (user x item) rather
        than shared (segment x category).
    base_logit
        Sets the click-through rate (about 10% by default).
    start_ts, events_per_s
        Event ``i`` has ``ts = start_ts + i / events_per_s``.
    drifts
        Scheduled changes, see :class:`Drift`.
    """

    seed: int = 0
    users: int = 50_000
    items: int = 10_000
    new_users_per_1k: float = 10.0
    new_items_per_1k: float = 2.0
    user_zipf: float = 1.1
    item_zipf: float = 1.2
    segments: int = 8
    latent_dim: int = 8
    taste_scale: float = 2.0
    personal_share: float = 0.1
    base_logit: float = -2.8
    start_ts: float = 1_700_000_000.0
    events_per_s: float = 50.0
    drifts: tuple[Drift, ...] = field(default=(Drift(at=200_000),))

    def __post_init__(self) -> None:
        if self.users < 1 or self.items < 1 or self.segments < 1:
            raise ValueError("users, items and segments must be at least 1")
        if not 0.0 <= self.personal_share <= 1.0:
            raise ValueError(f"personal_share must be in [0, 1], not {self.personal_share}")
        if self.events_per_s <= 0:
            raise ValueError(f"events_per_s must be positive, not {self.events_per_s}")
        for name in ("user_zipf", "item_zipf"):
            exponent = getattr(self, name)
            if exponent <= 0 or exponent == 1.0:
                raise ValueError(f"{name} must be > 0 and not 1, not {exponent}")


class GeneratedEvents(NamedTuple):
    """Events with the hidden click probability each label was drawn from."""

    events: list[dict]
    probabilities: np.ndarray
    labels: np.ndarray


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 (its gamma step, then the finaliser), elementwise on uint64."""
    # Wrapping addition is the point of the step, not an accident.
    with np.errstate(over="ignore"):
        return mix64(x + np.uint64(0x9E3779B97F4A7C15))


class _Draws:
    """Uniform and normal draws that are pure functions of (seed, purpose, keys)."""

    def __init__(self, seed: int) -> None:
        self._seed = np.uint64(seed & _MASK64)

    def bits(self, purpose: int, *keys: np.ndarray | int) -> np.ndarray:
        h = _splitmix64(np.asarray(self._seed ^ np.uint64(purpose), dtype=np.uint64))
        for key in keys:
            h = _splitmix64(h ^ np.asarray(key).astype(np.uint64))
        return h

    def uniform(self, purpose: int, *keys: np.ndarray | int) -> np.ndarray:
        """Uniform in (0, 1), never exactly 0."""
        return ((self.bits(purpose, *keys) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53

    def normal(self, purpose: int, *keys: np.ndarray | int) -> np.ndarray:
        u1 = self.uniform(purpose, *keys)
        u2 = self.uniform(purpose + 1, *keys)
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


# Purposes of draws; normal() uses purpose and purpose + 1.
_USER_RANK, _ITEM_RANK, _DEVICE, _POSITION, _LABEL, _NOISE = 1, 2, 3, 4, 5, 6
_USER_VEC, _ITEM_VEC, _ITEM_BIAS, _PRICE, _TAGS, _TASTE_CHANGE, _SHIFT = 10, 12, 14, 16, 18, 19, 20
_SEGMENT, _SEGMENT_VEC, _CATEGORY_VEC = 21, 22, 24


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of standard normal vectors, scaled to unit variance."""
    return (a * b).sum(axis=1) / math.sqrt(a.shape[1])


def _zipf_ranks(u: np.ndarray, size: np.ndarray, exponent: float) -> np.ndarray:
    """Ranks in [0, size) with P(rank) ~ (rank + 1) ** -exponent (continuous inverse CDF)."""
    one_minus = 1.0 - exponent
    x = (1.0 + u * (np.power(size + 1.0, one_minus) - 1.0)) ** (1.0 / one_minus)
    return np.minimum(np.floor(x).astype(np.int64) - 1, size - 1)


class CtrGenerator:
    """Generates synthetic CTR events; see the module docstring for the model.

    Parameters
    ----------
    config
        The world to generate.
    """

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config or SyntheticConfig()
        self._draws = _Draws(self.config.seed)
        self._drifts = sorted(self.config.drifts, key=lambda d: d.at)

    def generate(self, start: int, count: int) -> GeneratedEvents:
        """Events ``start`` to ``start + count - 1``, the same on every call.

        Parameters
        ----------
        start
            Index of the first event.
        count
            How many events.

        Returns
        -------
        GeneratedEvents
            The events as JSON-ready dicts, with their hidden probabilities
            and drawn labels.
        """
        cfg, draws = self.config, self._draws
        index = np.arange(start, start + count, dtype=np.int64)
        n_users = cfg.users + (index * cfg.new_users_per_1k / 1000.0).astype(np.int64)
        n_items = cfg.items + (index * cfg.new_items_per_1k / 1000.0).astype(np.int64)
        users = _zipf_ranks(draws.uniform(_USER_RANK, index), n_users, cfg.user_zipf)
        item_ranks = _zipf_ranks(draws.uniform(_ITEM_RANK, index), n_items, cfg.item_zipf)
        items = (item_ranks + self._popularity_offset(index)) % n_items
        segments = (draws.bits(_SEGMENT, users) % np.uint64(cfg.segments)).astype(np.int64)
        categories = items % _N_CATEGORIES
        taste_version = self._taste_version(segments, index)

        dims = np.arange(cfg.latent_dim)[None, :]
        version = taste_version[:, None]
        shared = _dot(
            draws.normal(_SEGMENT_VEC, segments[:, None], version, dims),
            draws.normal(_CATEGORY_VEC, categories[:, None], dims),
        )
        personal = _dot(
            draws.normal(_USER_VEC, users[:, None], version, dims),
            draws.normal(_ITEM_VEC, items[:, None], dims),
        )
        # Both parts have unit variance, so the taste has too.
        affinity = (
            math.sqrt(1.0 - cfg.personal_share) * shared + math.sqrt(cfg.personal_share) * personal
        )
        item_bias = 0.5 * draws.normal(_ITEM_BIAS, items)
        device = (draws.uniform(_DEVICE, index) * len(_DEVICES)).astype(np.int64)
        position = (draws.uniform(_POSITION, index) * _N_POSITIONS).astype(np.int64)
        ts = cfg.start_ts + index / cfg.events_per_s
        hour = ((ts // 3600) % 24).astype(np.int64)
        logit = (
            cfg.base_logit
            + cfg.taste_scale * affinity
            + item_bias
            + _DEVICE_BIAS[device]
            - 0.15 * position
            + 0.3 * np.sin(2 * np.pi * hour / 24)
        )
        prob = 1.0 / (1.0 + np.exp(-logit))
        labels = (draws.uniform(_LABEL, index) < prob).astype(np.int8)
        # An upstream ranker's noisy view of the affinity: a useful dense feature.
        ctx_score = affinity + draws.normal(_NOISE, index)
        price = np.exp(2.0 + 0.8 * draws.normal(_PRICE, items))
        tags = draws.bits(_TAGS, items[:, None], np.arange(3)[None, :]) % np.uint64(_N_TAGS)
        n_tags = 1 + (items % 3)
        events = [
            {
                "ts": float(ts[k]),
                "label": int(labels[k]),
                "sparse": {
                    "user_id": f"u{users[k]}",
                    "item_id": int(items[k]),
                    "segment": f"s{segments[k]}",
                    "category": f"c{categories[k]}",
                    "tags": [f"t{t}" for t in tags[k, : n_tags[k]].tolist()],
                    "device": _DEVICES[device[k]],
                    "position": int(position[k]),
                    "hour": int(hour[k]),
                },
                "dense": {
                    "price": round(float(price[k]), 2),
                    "ctx_score": round(float(ctx_score[k]), 4),
                },
                "request_id": f"r{cfg.seed}-{start + k}",
            }
            for k in range(count)
        ]
        return GeneratedEvents(events, prob, labels)

    def _popularity_offset(self, index: np.ndarray) -> np.ndarray:
        """Rotation of item popularity ranks in force at each event."""
        offset = np.zeros(len(index), dtype=np.int64)
        for k, drift in enumerate(self._drifts):
            if drift.popularity_shift:
                shift = int(self._draws.bits(_SHIFT, k)) % self.config.items
                offset = np.where(index >= drift.at, shift, offset)
        return offset

    def _taste_version(self, segments: np.ndarray, index: np.ndarray) -> np.ndarray:
        """How many times the tastes of each event's segment have been redrawn by then."""
        version = np.zeros(len(segments), dtype=np.int64)
        n = self.config.segments
        for k, drift in enumerate(self._drifts):
            # Exactly round(share * n) segments change, chosen by a seeded shuffle:
            # with few segments an independent draw per segment could change none.
            order = np.argsort(self._draws.uniform(_TASTE_CHANGE, np.arange(n), k))
            changed = np.zeros(n, dtype=bool)
            changed[order[: round(drift.taste_share * n)]] = True
            version += (changed[segments] & (index >= drift.at)).astype(np.int64)
        return version


class BayesAuc:
    """Streaming AUC of the hidden probabilities against the drawn labels.

    Probabilities are counted in ``bins`` equal bins per label, so memory is
    fixed however many events pass; ties within a bin count one half, which
    with the default 65536 bins moves the AUC by well under 1e-4.
    """

    def __init__(self, bins: int = 1 << 16) -> None:
        self._pos = np.zeros(bins, dtype=np.int64)
        self._neg = np.zeros(bins, dtype=np.int64)

    def update(self, probabilities: np.ndarray, labels: np.ndarray) -> None:
        """Count a chunk of (probability, label) pairs."""
        bins = len(self._pos)
        which = np.minimum((np.asarray(probabilities) * bins).astype(np.int64), bins - 1)
        positive = np.asarray(labels).astype(bool)
        self._pos += np.bincount(which[positive], minlength=bins)
        self._neg += np.bincount(which[~positive], minlength=bins)

    @property
    def count(self) -> int:
        """Pairs counted."""
        return int(self._pos.sum() + self._neg.sum())

    def value(self) -> float:
        """The AUC so far; NaN until both labels have been seen."""
        return histogram_auc(self._pos, self._neg)


class SyntheticSource:
    """A source of generated events as raw JSON records.

    Parameters
    ----------
    config
        The generator's world.
    limit
        Stop after this many events; ``None`` for an endless stream.
    """

    def __init__(self, config: SyntheticConfig | None = None, limit: int | None = None) -> None:
        self.generator = CtrGenerator(config)
        self.limit = limit
        self.key = f"synthetic:{self.generator.config.seed}"
        self.bayes_auc = BayesAuc()
        self._next = 0

    @property
    def exhausted(self) -> bool:
        """True once ``limit`` events have been read."""
        return self.limit is not None and self._next >= self.limit

    def poll(self, max_records: int, timeout_s: float = 0.0) -> list[Record]:
        """Up to ``max_records`` events; ``timeout_s`` is unused (never waits)."""
        count = max_records if self.limit is None else min(max_records, self.limit - self._next)
        if count <= 0:
            return []
        start = self._next
        generated = self.generator.generate(start, count)
        self.bayes_auc.update(generated.probabilities, generated.labels)
        self._next += count
        dumps, key = orjson.dumps, self.key
        return [Record(key, start + k, dumps(e)) for k, e in enumerate(generated.events)]

    def positions(self) -> Positions:
        """``{key: next event index}``."""
        return {self.key: self._next}

    def seek(self, positions: Positions) -> None:
        """Continue from saved positions; the Bayes AUC counts from here on."""
        self._next = position_for(self.key, positions)
        self.bayes_auc = BayesAuc()

    def close(self) -> None:
        """Nothing to release."""

"""What the trainer benchmarks share: exact AUC, River's online baselines, a timed trainer run."""

from __future__ import annotations

import gc
import math
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from headrace.stream import DeadLetterSink
from headrace.trainer import StepResult, Trainer, TrainerConfig
from headrace.trainer.sources import open_source


def rank_auc(p: np.ndarray, y: np.ndarray) -> float:
    """Exact AUC by ranks (ties broken by order, fine for continuous scores)."""
    ranks = np.empty(len(p))
    ranks[np.argsort(p, kind="stable")] = np.arange(1, len(p) + 1)
    positives = float((y >= 0.5).sum())
    negatives = len(y) - positives
    return float(
        (ranks[y >= 0.5].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    )


def quality(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Progressive AUC over the whole run and over its second half."""
    half = len(p) // 2
    return {
        "auc": round(rank_auc(p, y), 4),
        "auc_second_half": round(rank_auc(p[half:], y[half:]), 4),
    }


def river_features(event: dict[str, Any]) -> dict[str, float]:
    """One-hot sparse values and signed-log dense values, as River models take them."""
    x = {}
    for slot, value in event["sparse"].items():
        for v in value if isinstance(value, list) else [value]:
            x[f"{slot}={v}"] = 1.0
    for name, value in event.get("dense", {}).items():
        x[name] = math.copysign(math.log1p(abs(value)), value)
    return x


def river_models(seed: int) -> dict[str, Any]:
    """River's logistic regression and FM (8 factors), learning one event at a time.

    The LR takes the one-hot values as they are (a StandardScaler in front,
    tried first, turns rare one-hot features into huge inputs: 0.617
    second-half AUC on MovieLens against 0.784 without it).
    """
    from river import facto, linear_model, optim

    return {
        "lr": linear_model.LogisticRegression(optim.SGD(0.05)),
        "fm": facto.FMClassifier(n_factors=8, seed=seed),
    }


def river_run(
    model: Any, events: Iterable[tuple[dict[str, float], bool]]
) -> tuple[float, np.ndarray, np.ndarray]:
    """Predict, then learn, one event at a time; returns (events/s, predictions, labels)."""
    events = list(events)
    predictions = np.empty(len(events))
    gc.collect()  # as train() does: earlier garbage is not this run's cost
    started = time.perf_counter()
    for i, (x, y) in enumerate(events):
        predictions[i] = model.predict_proba_one(x).get(True, 0.0)
        model.learn_one(x, y)
    rate = len(events) / (time.perf_counter() - started)
    return rate, predictions, np.array([y for _, y in events], dtype=np.float32)


def train(
    config: TrainerConfig,
    source_url: str,
    dead_letters: Callable[[], DeadLetterSink | None] = lambda: None,
    **source_options: bool,
) -> tuple[float, np.ndarray, np.ndarray]:
    """One end-to-end trainer run on a fresh data dir; returns (events/s, predictions, labels).

    ``dead_letters`` makes the run's dead-letter sink (``None``: the data dir's file).
    """
    probabilities, labels = [], []
    # This process holds every event for River's runs: a full collection
    # (0.14-0.3 s here) that their garbage sets off belongs before the timed run.
    gc.collect()

    def collect(_trainer: Trainer, result: StepResult) -> None:
        probabilities.append(result.probabilities)
        labels.append(result.batch.labels)

    with tempfile.TemporaryDirectory() as data_dir:
        source = open_source(source_url, **source_options)
        with Trainer.open(config, data_dir, source, dead_letters=dead_letters()) as trainer:
            trainer.after_step.append(collect)
            summary = trainer.run()
    return summary.events / summary.seconds, np.concatenate(probabilities), np.concatenate(labels)

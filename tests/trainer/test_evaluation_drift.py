"""Progressive metrics against exact figures, and the drift monitor."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from headrace.trainer import DriftConfig, DriftMonitor, ProgressiveMetrics


def _rank_auc(p: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(p, kind="stable")
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    positives = y.sum()
    return (ranks[y == 1].sum() - positives * (positives + 1) / 2) / (
        positives * (len(y) - positives)
    )


def test_whole_run_and_rolling_metrics_match_exact_ones():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 5000)
    y = (rng.uniform(0, 1, 5000) < p**2).astype(np.float32)
    metrics = ProgressiveMetrics(window=1000)
    for start in range(0, 5000, 64):
        metrics.update(p[start : start + 64], y[start : start + 64])
    assert metrics.count == 5000
    assert metrics.auc() == pytest.approx(_rank_auc(p, y), abs=1e-3)
    assert metrics.rolling_auc() == pytest.approx(_rank_auc(p[-1000:], y[-1000:]), abs=1e-3)
    logloss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert metrics.logloss() == pytest.approx(logloss.mean(), rel=1e-6)
    assert metrics.rolling_logloss() == pytest.approx(logloss[-1000:].mean(), rel=1e-6)
    assert metrics.rolling_label_rate() == pytest.approx(y[-1000:].mean())


def test_a_batch_larger_than_the_window():
    metrics = ProgressiveMetrics(window=100)
    metrics.update(np.linspace(0.01, 0.99, 300), (np.arange(300) % 2).astype(np.float32))
    assert metrics.rolling_label_rate() == 0.5
    assert np.isnan(ProgressiveMetrics(window=100).rolling_auc())


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_drift_is_detected_counted_and_timed(detector, caplog):
    monitor = DriftMonitor(DriftConfig(detector=detector), ("item_id",))
    rng = np.random.default_rng(1)
    detections = []
    for k in range(600):
        loss = (0.25 if k < 300 else 0.6) + rng.normal(0, 0.02)
        unseen = {"item_id": 0.05 if k < 300 else 0.6}
        detections += monitor.update(loss, 0.08, unseen, event_time=1000.0 + k)
    signals = {d.signal for d in detections}
    assert {"loss", "unseen_ids.item_id"} <= signals
    assert all(d.event_time >= 1300.0 for d in detections if d.signal == "loss")
    assert sum(monitor.counts.values()) == len(detections)
    assert "drift detected" in caplog.text


def test_metrics_pickled_before_event_weights_restore_and_go_on():
    old = ProgressiveMetrics(window=100)
    rng = np.random.default_rng(0)
    old.update(rng.random(50), (rng.random(50) < 0.3).astype(np.float32))
    auc = old.auc()
    # What a checkpoint written before weights held: count histograms, no weights.
    state = dict(old.__dict__)
    for name in ("_ring_weight", "_ring_predicted", "_weight_sum", "_predicted_sum"):
        del state[name]
    del state["_label_sum"]
    for name in ("_pos", "_neg", "_win_pos", "_win_neg"):
        state[name] = state[name].astype(np.int64)
    restored = ProgressiveMetrics.__new__(ProgressiveMetrics)
    restored.__setstate__(pickle.loads(pickle.dumps(state)))
    assert restored.auc() == auc
    restored.update(rng.random(100), (rng.random(100) < 0.3).astype(np.float32))
    assert 0.0 <= restored.auc() <= 1.0 and restored.rolling_calibration() > 0.0

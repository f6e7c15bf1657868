"""The synthetic generator: determinism, popularity, new ids, drift, Bayes AUC."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from headrace.stream import (
    BayesAuc,
    CtrGenerator,
    Drift,
    EventParser,
    SyntheticConfig,
    SyntheticSource,
)


def test_events_do_not_depend_on_chunking_or_seeking():
    generator = CtrGenerator(SyntheticConfig(seed=3))
    whole = generator.generate(0, 300).events
    assert generator.generate(100, 50).events == whole[100:150]
    source = SyntheticSource(SyntheticConfig(seed=3), limit=300)
    source.seek({"synthetic:3": 120})
    assert [r.offset for r in source.poll(5)] == [120, 121, 122, 123, 124]
    assert CtrGenerator(SyntheticConfig(seed=4)).generate(0, 300).events != whole


def test_events_parse_cleanly():
    source = SyntheticSource(limit=2000)
    result = EventParser().parse(source.poll(5000), source.positions())
    assert len(result.batch) == 2000 and not result.dead_letters
    assert set(result.batch.slots) >= {"user_id", "item_id", "device", "position", "hour", "tags"}
    assert source.exhausted and source.positions() == {"synthetic:0": 2000}


def test_popularity_is_skewed_and_new_ids_appear():
    config = SyntheticConfig(users=1000, new_users_per_1k=50, drifts=())
    events = CtrGenerator(config).generate(0, 20_000).events
    users = Counter(e["sparse"]["user_id"] for e in events)
    top_share = sum(n for _, n in users.most_common(10)) / len(events)
    assert top_share > 0.15  # Zipf: ten users of 1000+ take a large share
    late = {e["sparse"]["user_id"] for e in events[-5000:]}
    early = {e["sparse"]["user_id"] for e in events[:5000]}
    assert any(int(u[1:]) >= 1000 for u in late - early)  # ids beyond the start universe


def test_drift_changes_popular_items_and_tastes():
    drift_at = 10_000
    config = SyntheticConfig(drifts=(Drift(at=drift_at, taste_share=1.0),))
    generator = CtrGenerator(config)
    before = generator.generate(drift_at - 5000, 5000)
    after = generator.generate(drift_at, 5000)
    top = lambda g: Counter(e["sparse"]["item_id"] for e in g.events).most_common(1)[0][0]  # noqa: E731
    assert top(before) != top(after)
    no_drift = CtrGenerator(SyntheticConfig(drifts=())).generate(drift_at, 5000)
    # Same users and items would click alike without drift; with it, tastes moved.
    assert not np.allclose(after.probabilities, no_drift.probabilities)


def test_ctr_and_bayes_auc_are_realistic_and_exact():
    generated = CtrGenerator().generate(0, 20_000)
    assert 0.03 < generated.labels.mean() < 0.2
    auc = BayesAuc()
    auc.update(generated.probabilities, generated.labels)
    p, y = generated.probabilities, generated.labels.astype(bool)
    ranks = np.empty(len(p))
    ranks[np.argsort(p)] = np.arange(1, len(p) + 1)
    exact = (ranks[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum())
    assert auc.value() == pytest.approx(exact, abs=1e-3)
    assert 0.7 < auc.value() < 0.95
    assert auc.count == 20_000


def test_bad_config_fails_at_start():
    with pytest.raises(ValueError, match="taste_share"):
        Drift(at=1, taste_share=2)
    with pytest.raises(ValueError, match="item_zipf"):
        SyntheticConfig(item_zipf=1.0)

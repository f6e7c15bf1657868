"""Two ranks publish their shards of each version; a serving worker scores as the trainer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from headrace.embedding_store import EmbeddingStore
from headrace.serving import Scorer, build_worker
from headrace.stream import CtrGenerator, Record, SyntheticConfig
from headrace.trainer import load_trainer_config
from headrace.trainer.checkpoint import MODEL_BLOB
from tests.distributed.conftest import sharded_training, torchrun_train, write_config
from tests.trainer.conftest import write_log

pytestmark = pytest.mark.slow

PROBE = CtrGenerator(SyntheticConfig(seed=99)).generate(0, 40).events
for event in PROBE:
    del event["label"]


def _expected_scores(config: Path, data_dir: Path) -> np.ndarray:
    """What the ranks' saved rows (all shards) and dense weights say about PROBE."""
    _, rows, _ = sharded_training(data_dir, 2)
    with EmbeddingStore.open(data_dir / "rank-0" / "store", read_only=True) as store:
        dense = store.extra[MODEL_BLOB]
    scorer = Scorer(load_trainer_config(config).model_spec, dense)

    def lookup(slot: str, fids: np.ndarray) -> np.ndarray:
        known, vectors = rows[slot]
        at = np.clip(np.searchsorted(known, fids), 0, len(known) - 1)
        found = known[at] == fids
        return np.where(found[:, None], vectors[at], 0.0).astype(np.float32)

    records = [Record("p", i, json.dumps(e).encode()) for i, e in enumerate(PROBE)]
    batch = scorer.parser.parse(records, {}).batch
    return scorer.predict(scorer.embed(batch, lookup), batch)


def test_serving_applies_whole_versions_of_both_shards(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    events = write_log(log, 2400)
    config = write_config(tmp_path / "two.toml", batch_size=32)
    params = tmp_path / "params"
    ranks = torchrun_train(
        2,
        *("--source", f"file://{log}", "--deterministic", "--config", str(config)),
        *("--data-dir", str(tmp_path / "two"), "--publish", f"dir://{params}"),
        *("--sync-interval", "0", "--dense-sync-interval", "0"),
    )
    assert sum(r["trained"] for r in ranks) == events

    # Every version is two files, one per rank's shard, with disjoint rows.
    names = sorted(p.name for p in params.iterdir())
    versions: dict[int, list[str]] = {}
    for name in names:
        match = re.fullmatch(r"(\d{12})\.(delta|snapshot)\.(\d)-of-2", name)
        assert match, name
        versions.setdefault(int(match[1]), []).append(match[3])
    assert len(versions) >= 3
    assert all(shards == ["0", "1"] for shards in versions.values()), versions

    app, sync = build_worker(f"dir://{params}")
    try:
        for _ in range(50):
            sync.step(timeout_s=0.2)
            if sync.state.version == max(versions):
                break
        assert sync.state.version == max(versions)
        expected = _expected_scores(config, tmp_path / "two")
        body = TestClient(app).post("/v1/predict", json={"events": PROBE}).json()
    finally:
        sync.stop()
    assert body["version"] == max(versions)
    np.testing.assert_allclose(body["scores"], expected, rtol=0, atol=1e-6)
    assert len(set(np.round(expected, 4))) > 10  # the model tells events apart
    # The worker holds every row of both shards.
    _, rows, _ = sharded_training(tmp_path / "two", 2)
    assert sync.state.rows() == {slot: len(fids) for slot, (fids, _) in rows.items()}

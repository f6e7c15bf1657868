"""A 2-rank run from Kafka: its metrics, its dashboard and the parameters it publishes.

Each rank's /metrics carries its rank; rank 0 shows metrics over all ranks;
every rank publishes its shard of each version and a serving worker scores
as the ranks' saved rows and weights (one torchrun launch for all three, to
keep the suite short).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from headrace.embedding_store import EmbeddingStore
from headrace.serving import Scorer, build_worker
from headrace.stream import CtrGenerator, KafkaSink, Record, SyntheticConfig
from headrace.tansu import free_port
from headrace.trainer import load_trainer_config
from headrace.trainer.checkpoint import MODEL_BLOB, MONITOR_BLOB
from headrace.trainer.evaluation import summed_figures
from tests.demo.test_exported_metrics import family_name
from tests.deploy.conftest import read_metric_list
from tests.distributed.conftest import (
    rank_pids,
    sharded_training,
    torchrun_command,
    write_config,
)
from tests.distributed.test_kafka_ranks import _topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PROBE = CtrGenerator(SyntheticConfig(seed=99)).generate(0, 40).events
for event in PROBE:
    del event["label"]  # serving input carries no label

EVENTS = 1200


def _samples(port: int) -> list:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _families(port: int) -> dict[str, tuple[str, list[dict[str, str]]]]:
    """The headrace families a rank exports: name -> (type, label sets of its samples)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        family.name: (family.type, [sample.labels for sample in family.samples])
        for family in text_string_to_metric_families(text)
        # The text format parses prometheus-client's ``_created`` samples as families of their own.
        if family.name.startswith("headrace_") and not family.name.endswith("_created")
    }


def _value(samples: list, name: str, **labels: str) -> float | None:
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    return found[0] if found else None


def _saved_metrics(data_dir: Path, rank: int):
    with EmbeddingStore.open(data_dir / f"rank-{rank}" / "store", read_only=True) as store:
        assert MODEL_BLOB in store.extra
        metrics, _, _ = pickle.loads(store.extra[MONITOR_BLOB])
    return metrics


def _expected_scores(config: Path, data_dir: Path) -> np.ndarray:
    """What the ranks' saved rows (all shards) and dense weights say about PROBE."""
    _, rows, _ = sharded_training(data_dir, 2)
    with EmbeddingStore.open(data_dir / "rank-0" / "store", read_only=True) as store:
        dense = store.extra[MODEL_BLOB]
    scorer = Scorer(load_trainer_config(config).model_spec, dense)

    def lookup(slot: str, fids: np.ndarray, fill: np.ndarray | None) -> np.ndarray:
        known, vectors = rows[slot]
        at = np.clip(np.searchsorted(known, fids), 0, len(known) - 1)
        found = known[at] == fids
        missing = 0.0 if fill is None else fill
        return np.where(found[:, None], vectors[at], missing).astype(np.float32)

    records = [Record("p", i, json.dumps(e).encode()) for i, e in enumerate(PROBE)]
    batch = scorer.parser.parse(records, {}).batch
    return scorer.predict(scorer.embed(batch, lookup), batch)


def _served(params: Path) -> tuple[list[int], dict, dict[str, int]]:
    """The versions published (each must be two shard files), and a worker's answer to PROBE."""
    versions: dict[int, list[str]] = {}
    for name in sorted(p.name for p in params.iterdir()):
        match = re.fullmatch(r"(\d{12})\.(delta|snapshot)\.(\d)-of-2", name)
        assert match, name
        versions.setdefault(int(match[1]), []).append(match[3])
    assert all(shards == ["0", "1"] for shards in versions.values()), versions
    app, sync = build_worker(f"dir://{params}")
    try:
        for _ in range(50):
            sync.step(timeout_s=0.2)
            if sync.state.version == max(versions):
                break
        body = TestClient(app).post("/v1/predict", json={"events": PROBE}).json()
        return sorted(versions), body, sync.state.rows()
    finally:
        sync.stop()


def test_ranks_label_metrics_show_all_ranks_and_publish_whole_versions(
    kafka_bootstrap, topic_name, tmp_path: Path
) -> None:
    topic = topic_name("watched")
    url = _topic(kafka_bootstrap, topic, 2, 0)
    config = write_config(tmp_path / "trainer.toml", batch_size=32)
    data_dir, port, params = tmp_path / "data", free_port(), tmp_path / "params"
    ports = [port, port + 1]
    args = ["--source", url, "--data-dir", str(data_dir), "--config", str(config)]
    args += ["--publish", f"dir://{params}", "--sync-interval", "0", "--dense-sync-interval", "0"]
    proc = subprocess.Popen(
        torchrun_command(2, "-m", "headrace.cli", "train", *args, "--metrics-port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONHASHSEED": "0"},
    )
    try:
        deadline = time.monotonic() + 180
        while True:  # until both ranks serve their metrics
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            try:
                [_samples(p) for p in ports]
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        # Events arrive over a few seconds, so that the dashboard samples the ranks' ingest.
        sink = KafkaSink(kafka_bootstrap, topic)
        for i, event in enumerate(CtrGenerator(SyntheticConfig(seed=3)).generate(0, EVENTS).events):
            sink.send(json.dumps(event).encode(), partition=i % 2)
            if i % 200 == 199:
                sink.flush()
                time.sleep(0.7)
        sink.close()
        trained = 0.0
        while trained < EVENTS:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.3)
            try:
                scraped = [_samples(p) for p in ports]
            except httpx.HTTPError:
                continue
            trained = sum(
                _value(s, "headrace_train_examples_total", rank=str(r)) or 0
                for r, s in enumerate(scraped)
            )
        assert trained == EVENTS
        time.sleep(3)  # the ranks exchange their figures every second, reading nothing more
        scraped = [_samples(p) for p in ports]
        families = [_families(p) for p in ports]
        history = httpx.get(f"http://127.0.0.1:{port}/api/history", timeout=5).json()
        page = httpx.get(f"http://127.0.0.1:{port}/dashboard", timeout=5).text
        rank_1_history = httpx.get(f"http://127.0.0.1:{port + 1}/api/history", timeout=5).json()
        # A stopped rank stops all: they checkpoint and exit 0, and so does torchrun.
        os.kill(rank_pids(proc.pid)[1], signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]

    # Every sample of every rank names its rank.
    for rank, samples in enumerate(scraped):
        assert len(samples) > 20
        assert {s.labels.get("rank") for s in samples} == {str(rank)}
    # deploy/metrics.txt lists every family a rank exports, with the rank label beside its own.
    listed = {family_name(spec): spec for spec in read_metric_list().values()}
    for rank, exported in enumerate(families):
        for name, (kind, label_sets) in exported.items():
            spec = listed.get(name)
            assert spec is not None, f"rank {rank} exports {name}, not in deploy/metrics.txt"
            assert spec.exporter in ({"trainer", "rank-0"} if rank == 0 else {"trainer"}), spec
            assert kind == spec.type, spec
            for labels in label_sets:
                assert set(labels) <= spec.labels | {"rank", "le"}, (name, labels)
    rank_0_only = {name for name, spec in listed.items() if spec.exporter == "rank-0"}
    assert rank_0_only and rank_0_only <= set(families[0])
    # Rank 0's all-rank figures are those of the summed metrics of both ranks' events.
    saved = [_saved_metrics(data_dir, rank) for rank in (0, 1)]
    assert sum(m.count for m in saved) == EVENTS
    expected = summed_figures(saved[0].additive() + saved[1].additive())
    for window, key in (("run", ""), ("rolling", "rolling_")):
        auc = _value(scraped[0], "headrace_all_ranks_eval_auc", window=window)
        logloss = _value(scraped[0], "headrace_all_ranks_eval_logloss", window=window)
        assert auc == pytest.approx(expected[f"{key}auc"], abs=1e-9)
        assert logloss == pytest.approx(expected[f"{key}logloss"], abs=1e-9)
    own = [m.auc() for m in saved]
    assert 0.5 < expected["auc"] < 1 and expected["auc"] not in own
    assert _value(scraped[1], "headrace_all_ranks_eval_auc") is None  # rank 0's only

    # Rank 0's dashboard: the all-rank metrics and each rank's ingest and lag.
    latest = [s["ranks"] for s in history["samples"] if s["ranks"]]
    assert latest, history["samples"][-3:]
    assert set(latest[-1]["ranks"]) == {"0", "1"}
    assert max(r["ingest_rate"] for s in latest for r in s["ranks"].values()) > 0
    assert all(r["consumer_lag"] is not None for r in latest[-1]["ranks"].values())
    assert 0 < latest[-1]["metrics"]["auc"] < 1
    assert "All ranks" in page and "Ingest per rank" in page and "rank 1:" in page
    assert not any(s["ranks"] for s in rank_1_history["samples"])

    # Serving applied whole versions of both shards and scores as the ranks' saved state.
    versions, body, served_rows = _served(params)
    assert len(versions) >= 3 and body["version"] == versions[-1]
    expected = _expected_scores(config, data_dir)
    np.testing.assert_allclose(body["scores"], expected, rtol=0, atol=1e-6)
    assert len(set(np.round(expected, 4))) > 10  # the model tells events apart
    _, rows, _ = sharded_training(data_dir, 2)
    assert served_rows == {slot: len(fids) for slot, (fids, _) in rows.items()}

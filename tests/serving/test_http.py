"""Serving workers over HTTP: parity with the trainer, versions under concurrency, bad input."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from headrace.model import dense_state_bytes
from headrace.serving import (
    ParameterPublisher,
    Scorer,
    WorkerOptions,
    attach_publisher,
    build_worker,
    open_writer,
)
from headrace.stream import CtrGenerator, Record, SyntheticConfig, SyntheticSource
from headrace.tansu import free_port
from headrace.trainer import Trainer, TrainerConfig

CONFIG = TrainerConfig(batch_size=128, checkpoint_every_s=None)
PROBE = CtrGenerator(SyntheticConfig(seed=99)).generate(0, 40).events
for event in PROBE:
    del event["label"]  # serving input carries no label


def _trainer(tmp_path, events: int, config: TrainerConfig = CONFIG) -> Trainer:
    source = SyntheticSource(SyntheticConfig(seed=5), limit=events)
    return Trainer.open(config, tmp_path / "data", source)


def _publisher(trainer: Trainer, url: str, **intervals) -> ParameterPublisher:
    return attach_publisher(trainer, open_writer(url), **intervals)


def _trainer_scores(trainer: Trainer, events: list[dict]) -> np.ndarray:
    """What the trainer's own model and rows say about ``events``, right now."""
    scorer = Scorer(trainer.model_spec, dense_state_bytes(trainer.model))
    records = [Record("p", i, json.dumps(e).encode()) for i, e in enumerate(events)]
    batch = scorer.parser.parse(records, {}).batch
    return scorer.predict(scorer.embed(batch, trainer.store.lookup), batch)


def _parity(tmp_path, url: str) -> None:
    trainer = _trainer(tmp_path, 3000)
    publisher = _publisher(trainer, url, sync_interval=0.0, snapshot_interval=3600)
    with trainer:
        trainer.run()
        update = publisher.publish_snapshot(publisher.event_time)
        expected = _trainer_scores(trainer, PROBE)
    app, sync = build_worker(url)
    client = TestClient(app)
    assert client.get("/readyz").status_code == 503
    for _ in range(50):
        sync.step(timeout_s=0.5)
        if sync.state.version == update.version:
            break
    assert client.get("/readyz").json() == {"ready": True, "version": update.version}
    response = client.post("/v1/predict", json={"events": PROBE})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == update.version
    np.testing.assert_allclose(body["scores"], expected, rtol=0, atol=1e-6)
    assert len(set(np.round(expected, 4))) > 10  # the model tells events apart
    sync.stop()


def test_scores_equal_the_trainers_through_the_directory(tmp_path):
    _parity(tmp_path, f"dir://{tmp_path}/params")


@pytest.mark.kafka
def test_scores_equal_the_trainers_through_kafka(tmp_path, kafka_bootstrap, topic_name):
    _parity(tmp_path, f"kafka://{kafka_bootstrap}/{topic_name('params')}")


def test_an_id_without_a_row_is_served_its_slots_unknown_row(tmp_path):
    url = f"dir://{tmp_path}/params"
    model = CONFIG.model.model_copy(update={"unknown_rows": True})
    trainer = _trainer(tmp_path, 3000, CONFIG.model_copy(update={"model": model}))
    publisher = _publisher(trainer, url, sync_interval=0.0, snapshot_interval=3600)
    # Two users the trainer never saw, in the same event otherwise.
    unseen = [
        dict(PROBE[0], sparse=dict(PROBE[0]["sparse"], user_id=f"never-seen-{k}")) for k in (1, 2)
    ]
    with trainer:
        trainer.run()
        update = publisher.publish_snapshot(publisher.event_time)
        expected = _trainer_scores(trainer, unseen)
        spec = trainer.model_spec
        plain = spec.model_copy(
            update={"model": spec.model.model_copy(update={"unknown_rows": False})}
        )
        scorer = Scorer(plain, dense_state_bytes(trainer.model))
        records = [Record("p", i, json.dumps(e).encode()) for i, e in enumerate(unseen)]
        batch = scorer.parser.parse(records, {}).batch
        zero_vector = scorer.predict(scorer.embed(batch, trainer.store.lookup), batch)
    app, sync = build_worker(url)
    for _ in range(50):
        sync.step(timeout_s=0.5)
        if sync.state.version == update.version:
            break
    response = TestClient(app).post("/v1/predict", json={"events": unseen})
    assert response.status_code == 200, response.text
    served = np.array(response.json()["scores"])
    assert served[0] == served[1]
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
    # Not the zero vector's answer: the unknown user row came with the snapshot.
    assert abs(served[0] - zero_vector[0]) > 1e-4
    sync.stop()


def test_every_response_matches_the_version_it_names(tmp_path):
    url = f"dir://{tmp_path}/params"
    trainer = _trainer(tmp_path, 12_000)
    # Every step publishes rows and dense weights, so each version is a
    # different model.
    publisher = _publisher(trainer, url, sync_interval=0.0, dense_sync_interval=0.0)
    expected: dict[int, np.ndarray] = {}
    trainer.after_step.append(
        lambda t, _: expected.update({publisher.version: _trainer_scores(t, PROBE)})
    )

    app, sync = build_worker(url, WorkerOptions(poll_interval=0.005))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    sync.start()
    done = threading.Event()
    responses: list[dict] = []

    def hammer() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while not done.is_set():
                r = client.post("/v1/predict", json={"events": PROBE})
                if r.status_code == 200:
                    responses.append(r.json())
                else:
                    assert r.status_code == 503  # before the first snapshot only
                    assert not responses

    with ThreadPoolExecutor(4) as pool:
        while not server.started:
            time.sleep(0.01)
        futures = [pool.submit(hammer) for _ in range(4)]
        with trainer:
            trainer.run()
        time.sleep(0.5)
        done.set()
        for f in futures:
            f.result()
    sync.stop()
    server.should_exit = True

    versions = {r["version"] for r in responses}
    assert len(responses) > 50 and len(versions) > 5
    for r in responses:
        np.testing.assert_allclose(r["scores"], expected[r["version"]], rtol=0, atol=1e-6)


def test_bad_requests_get_a_4xx_that_says_what_is_wrong(tmp_path):
    url = f"dir://{tmp_path}/params"
    trainer = _trainer(tmp_path, 500)
    publisher = _publisher(trainer, url)
    with trainer:
        trainer.run()
    app, sync = build_worker(url)
    sync.step()
    client = TestClient(app)
    assert client.post("/v1/predict", json={"events": []}).status_code == 422
    assert client.post("/v1/predict", content=b"not json").status_code == 422
    bad = client.post("/v1/predict", json={"events": [PROBE[0], {"sparse": {"user_id": "u"}}]})
    assert bad.status_code == 422
    assert bad.json()["detail"]["errors"][0]["event"] == 1
    assert "ts" in json.dumps(bad.json()["detail"]["errors"][0])
    huge = dict(PROBE[0], sparse={"user_id": 2**70})
    assert client.post("/v1/predict", json={"events": [huge]}).status_code == 422
    # An id never seen in training scores with zero vectors, like in training.
    unknown = dict(PROBE[0], sparse={"user_id": "never-seen", "item_id": "never-seen"})
    ok = client.post("/v1/predict", json={"events": [unknown]})
    assert ok.status_code == 200 and 0.0 < ok.json()["scores"][0] < 1.0
    assert client.get("/v1/version").json()["version"] == publisher.version
    assert client.get("/healthz").json() == {"status": "ok"}
    metrics = client.get("/metrics").text
    assert 'headrace_serving_requests_total{code="422"} 4.0' in metrics
    assert "headrace_serving_request_duration_seconds_bucket" in metrics
    assert f"headrace_serving_version {float(publisher.version)}" in metrics
    assert "openapi" in client.get("/openapi.json").json()

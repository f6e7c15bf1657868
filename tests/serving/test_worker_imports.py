"""A serving worker process loads the model package, never the trainer, River or the readers."""

from __future__ import annotations

import json

import httpx

from headrace.serving import attach_publisher, open_writer
from headrace.stream import CtrGenerator, SyntheticConfig, SyntheticSource
from headrace.trainer import Trainer, TrainerConfig
from tests.serving.processes import serving_worker


def _imported(importtime_log: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_log.splitlines()
        if line.startswith("import time:") and "|" in line
    } - {"imported package"}


def test_a_worker_imports_no_trainer_module_and_keeps_its_rss(tmp_path):
    url = f"dir://{tmp_path}/params"
    source = SyntheticSource(SyntheticConfig(seed=5), limit=2000)
    with Trainer.open(TrainerConfig(checkpoint_every_s=None), tmp_path / "data", source) as t:
        attach_publisher(t, open_writer(url))
        t.run()
    events = CtrGenerator(SyntheticConfig(seed=9)).generate(0, 64).events
    with (
        serving_worker(url, python_options=("-X", "importtime")) as worker,
        httpx.Client(base_url=worker.url, timeout=10) as client,
    ):
        assert client.post("/v1/predict", json={"events": events}).status_code == 200
        rss_before = worker.rss_bytes()
        for _ in range(1500):
            assert client.post("/v1/predict", json={"events": events}).status_code == 200
        rss_after = worker.rss_bytes()
    modules = _imported(worker.stderr)
    assert "headrace.model" in modules and "headrace.serving.scorer" in modules
    assert not [m for m in modules if m.startswith("headrace.trainer")]
    assert not [m for m in modules if m == "river" or m.startswith("river.")]
    # Nor numba (the trainer's compiled step): ~150 MB of RSS a worker.
    assert not [m for m in modules if m == "numba" or m.startswith("numba.")]
    # The event readers and generators stay out too: the worker parses events, nothing more.
    readers = {
        "reader_process",
        "kafka_process",
        "file_process",
        "pipeline",
        "synthetic",
        "two_streams",
        "replay",
        "movielens",
    }
    assert not [m for m in modules if m.rsplit(".", 1)[-1] in readers], sorted(modules)
    print(
        json.dumps(
            {
                "worker_rss_mb_after_first_request": round(rss_before / 2**20, 1),
                "worker_rss_mb_after_1500_more": round(rss_after / 2**20, 1),
                "headrace_modules": sorted(m for m in modules if m.startswith("headrace")),
            }
        )
    )
    # 1500 requests of 64 events allocate ~100k tensors: a leak would show.
    assert rss_after - rss_before < 8 * 2**20

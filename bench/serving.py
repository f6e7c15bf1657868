"""Serving benchmark: prints one JSON object.

(a) Freshness: seconds from the end of the training step that changed rows
    to the first predict response (from a separate ``headrace serve``
    process) at a version that holds the change, with a 1 s sync interval,
    over the directory and the Kafka transports; p50 and p99.
(b) Sync throughput: rows/s from draining the store to the rows applied in a
    worker's state, both transports.
(c) Predict latency p50/p99 with 1 and 100 events per request at a fixed
    request rate, from a separate load-generating process, and the highest
    rate whose p99 stays under 50 ms.

Run: ``python bench/serving.py [--quick]``. Kafka comes from
``KAFKA_BOOTSTRAP_SERVERS`` or the Tansu broker of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from headrace.embedding_store import EmbeddingStore, SlotConfig
from headrace.serving import (
    ParameterPublisher,
    ParameterState,
    SyncLoop,
    open_reader,
    open_writer,
)
from headrace.stream import CtrGenerator, SyntheticConfig, SyntheticSource
from headrace.tansu import free_port, kafka_bootstrap
from headrace.trainer import Trainer, TrainerConfig

CONFIG = TrainerConfig(batch_size=256, checkpoint_every_s=None)
PROBE = [
    {k: v for k, v in e.items() if k != "label"}
    for e in CtrGenerator(SyntheticConfig(seed=42)).generate(0, 100).events
]


def _percentiles(values: list[float], scale: float = 1.0) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(values) * scale, [50, 99])
    return round(float(p50), 4), round(float(p99), 4)


class ServeProcess:
    """``headrace serve`` in its own process."""

    def __init__(self, params: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headrace.cli",
                "serve",
                "--params",
                params,
                "--port",
                str(self.port),
                "--poll-interval",
                "0.02",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the serving worker did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def freshness(params: str, data_dir: Path, seconds: float) -> list[float]:
    """Step-end to first fresh response, for every step trained in ``seconds``."""
    source = SyntheticSource(SyntheticConfig(seed=3), limit=None)
    trainer = Trainer.open(CONFIG, data_dir, source)
    writer = open_writer(params)
    publisher = ParameterPublisher.for_trainer(trainer, writer, sync_interval=1.0)
    step_ends: list[float] = []
    pending: list[float] = []
    published: list[tuple[int, list[float]]] = []  # version -> the step ends it covers

    def record_end(_trainer: Trainer, _step: object) -> None:
        pending.append(time.time())

    def publish(_trainer: Trainer, step: object) -> None:
        before = publisher.version
        publisher(float(step.batch.ts.max()))
        if publisher.version != before:
            published.append((publisher.version, list(pending)))
            step_ends.extend(pending)
            pending.clear()

    trainer.after_step += [record_end, publish]
    trainer.run(max_events=2 * CONFIG.batch_size)  # the first snapshot
    worker = ServeProcess(params)
    worker.wait_ready()

    seen: dict[int, float] = {}  # version -> first time a response named it
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=worker.url, timeout=5) as client:
            while not stop.is_set():
                version = client.post("/v1/predict", json={"events": PROBE[:1]}).json()["version"]
                seen.setdefault(version, time.time())

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    published.clear()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        trainer.run(max_events=CONFIG.batch_size)
    time.sleep(2.0)
    stop.set()
    poller.join()
    worker.stop()
    trainer.close()
    writer.close()
    delays = []
    for version, ends in published:
        first = min((t for v, t in seen.items() if v >= version), default=None)
        if first is not None:
            delays += [first - end for end in ends]
    return delays


def sync_throughput(params: str, data_dir: Path, rows: int = 200_000) -> float:
    """Rows/s from a drained store to rows applied in a worker's state."""
    slots = [SlotConfig(name="s", dim=16)]
    store = EmbeddingStore.open(data_dir, slots)
    writer = open_writer(params)
    publisher = ParameterPublisher(
        store, writer, lambda: b"", {}, first_version=writer.latest_version() + 1
    )
    state = ParameterState(lambda meta, dense: None)
    loop = SyncLoop(open_reader(params), state)
    publisher.publish_snapshot(0.0)
    while loop.step(timeout_s=1.0) == 0:
        pass
    ids = np.arange(rows, dtype=np.int64)
    hit = store.lookup_for_training("s", ids, 1.0)
    store.apply_gradients(hit, np.ones_like(hit.values))
    start = time.perf_counter()
    update = publisher.publish_delta(1.0)
    while state.version != update.version:
        loop.step(timeout_s=1.0)
    elapsed = time.perf_counter() - start
    loop.stop()
    writer.close()
    store.close()
    return update.rows / elapsed


LOAD_SCRIPT = r"""
import asyncio, json, sys, time
import httpx

url, rate, seconds, body = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
content = body.encode()

async def main():
    latencies, errors = [], 0
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        async def one():
            nonlocal errors
            start = time.perf_counter()
            try:
                r = await client.post(url, content=content,
                                      headers={"content-type": "application/json"})
                if r.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - start)
        async def run(seconds):
            tasks, start = [], time.perf_counter()
            for i in range(int(rate * seconds)):  # open loop: requests leave on schedule
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one()))
            await asyncio.gather(*tasks)

        # A first second at the same rate, not counted: first requests pay
        # for lazy set-up on both sides (connections, allocations).
        await run(1.0)
        latencies.clear()
        errors = 0
        await run(seconds)
    print(json.dumps({"latencies": latencies, "errors": errors}))

asyncio.run(main())
"""


def load(url: str, rate: float, seconds: float, events: int) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, errors) of predict requests sent at ``rate`` per second."""
    body = json.dumps({"events": PROBE[:events]})
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, f"{url}/v1/predict", str(rate), str(seconds), body],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    p50, p99 = _percentiles(result["latencies"], scale=1000)
    return p50, p99, result["errors"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test)")
    args = parser.parse_args()
    seconds = 6.0 if args.quick else 20.0
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        with kafka_bootstrap() as bootstrap:
            transports = {
                "dir": f"dir://{tmp_path}/params",
                "kafka": f"kafka://{bootstrap}/bench-params-{os.getpid()}",
            }
            for name, url in transports.items():
                delays = freshness(url, tmp_path / f"fresh-{name}", seconds)
                figures[f"freshness_{name}_p50_s"], figures[f"freshness_{name}_p99_s"] = (
                    _percentiles(delays)
                )
                figures[f"freshness_{name}_steps"] = len(delays)
                sync_url = url + "-sync" if name == "kafka" else f"dir://{tmp_path}/sync"
                figures[f"sync_{name}_rows_per_s"] = round(
                    sync_throughput(sync_url, tmp_path / f"sync-{name}")
                )
            figures["sync_rows_per_s"] = min(
                figures["sync_dir_rows_per_s"], figures["sync_kafka_rows_per_s"]
            )

            worker = ServeProcess(transports["dir"])
            worker.wait_ready()
            rate_seconds = 3.0 if args.quick else 8.0
            for events in (1, 100):
                p50, p99, errors = load(worker.url, 50, rate_seconds, events)
                figures[f"predict_{events}_p50_ms"], figures[f"predict_{events}_p99_ms"] = p50, p99
                figures[f"predict_{events}_errors"] = errors
            figures["predict_rate_per_s"] = 50
            best = 0
            for rate in (50, 100, 150, 200, 300, 400, 600, 800, 1200, 1600):
                _, p99, errors = load(worker.url, rate, rate_seconds, 1)
                if p99 >= 50 or errors:
                    break
                best = rate
            figures["max_rps_p99_under_50ms"] = best
            worker.stop()
    json.dump(figures, sys.stdout)
    print()


if __name__ == "__main__":
    main()

"""Running serving workers: sync loop plus HTTP server, one process each."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from headrace.kafka_client import KafkaClientSettings
from headrace.serving.app import create_app
from headrace.serving.params import ParameterState
from headrace.serving.protocol import SyncKey
from headrace.serving.scorer import Scorer
from headrace.serving.sync import SyncLoop
from headrace.serving.transport import open_reader

__all__ = ["WorkerOptions", "build_worker", "run_worker", "run_workers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker syncs and whom it answers (picklable: workers are spawned).

    Attributes
    ----------
    poll_interval
        Seconds between looks for new parameters.
    key
        Apply only updates signed with this key; ``None`` applies any.
    kafka
        TLS and SASL settings of a ``kafka://`` parameter location.
    token
        Bearer token required by the API (all but ``/healthz`` and ``/readyz``).
    memory_budget
        Bytes of memory for rows; ``None`` keeps every row in memory. With a
        budget the rows live in a local RocksDB replica under ``replica_dir``
        (see :class:`~headrace.serving.params.ParameterState`).
    replica_dir
        Where replicas are created; the system's temporary directory if ``None``.
    """

    poll_interval: float = 0.1
    key: SyncKey | None = None
    kafka: KafkaClientSettings = field(default_factory=KafkaClientSettings)
    token: str | None = field(default=None, repr=False)
    memory_budget: int | None = None
    replica_dir: str | None = None


def build_worker(params: str, options: WorkerOptions | None = None) -> tuple[FastAPI, SyncLoop]:
    """The app and the (not yet started) sync loop of one worker."""
    options = options or WorkerOptions()
    registry = CollectorRegistry()
    state: ParameterState[Scorer] = ParameterState(
        Scorer.from_update, memory_budget=options.memory_budget, replica_dir=options.replica_dir
    )
    sync = SyncLoop(
        open_reader(params, client=options.kafka),
        state,
        poll_interval=options.poll_interval,
        registry=registry,
        key=options.key,
    )
    return create_app(state, registry, token=options.token), sync


def run_worker(params: str, host: str, port: int, options: WorkerOptions | None = None) -> None:
    """Serve on ``host:port`` until SIGTERM or SIGINT, syncing from ``params``."""
    # Requests are small: one torch thread per worker avoids threads
    # waiting on each other across workers on a small machine.
    torch.set_num_threads(1)
    app, sync = build_worker(params, options)
    sync.start()
    log.info("serving worker on http://%s:%d, parameters from %s", host, port, params)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        sync.stop()
        sync.state.close()  # removes a replica


def run_workers(
    params: str, host: str, ports: Sequence[int], options: WorkerOptions | None = None
) -> int:
    """One worker process per port; returns once all have stopped (0 if all exited cleanly)."""
    if len(ports) == 1:
        run_worker(params, host, ports[0], options)
        return 0
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=run_worker, args=(params, host, port, options), daemon=False)
        for port in ports
    ]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        # uvicorn stops gracefully on either signal; each worker gets it once.
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()
    return max((abs(p.exitcode or 0) for p in processes), default=0)

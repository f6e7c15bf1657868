"""Running serving workers: sync loop plus HTTP server, one process each."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence

import torch
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from headrace.serving.app import create_app
from headrace.serving.params import ParameterState
from headrace.serving.scorer import Scorer
from headrace.serving.sync import SyncLoop
from headrace.serving.transport import open_reader

__all__ = ["build_worker", "run_worker", "run_workers"]

log = logging.getLogger(__name__)


def build_worker(params: str, poll_interval: float = 0.1) -> tuple[FastAPI, SyncLoop]:
    """The app and the (not yet started) sync loop of one worker."""
    registry = CollectorRegistry()
    state: ParameterState[Scorer] = ParameterState(Scorer.from_update)
    sync = SyncLoop(open_reader(params), state, poll_interval=poll_interval, registry=registry)
    return create_app(state, registry), sync


def run_worker(params: str, host: str, port: int, poll_interval: float = 0.1) -> None:
    """Serve on ``host:port`` until SIGTERM or SIGINT, syncing from ``params``."""
    # Requests are small: one torch thread per worker avoids threads
    # waiting on each other across workers on a small machine.
    torch.set_num_threads(1)
    app, sync = build_worker(params, poll_interval)
    sync.start()
    log.info("serving worker on http://%s:%d, parameters from %s", host, port, params)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        sync.stop()


def run_workers(params: str, host: str, ports: Sequence[int], poll_interval: float = 0.1) -> int:
    """One worker process per port; returns once all have stopped (0 if all exited cleanly)."""
    if len(ports) == 1:
        run_worker(params, host, ports[0], poll_interval)
        return 0
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=run_worker, args=(params, host, port, poll_interval), daemon=False)
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

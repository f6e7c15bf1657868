"""Distributed training benchmark: 1 rank against 2 ranks on the same events, in one run.

Both train the same synthetic event log (a file: the ranks split it by line)
with the same per-rank batch, for each of the batch sizes given (1024, 256
and 4096 by default). Prints one JSON object with the first batch size's
figures at the top level: ``events_per_s_1``, ``events_per_s_2``,
``speedup_2`` (their ratio), ``collective_share_2`` (time in collectives
over training time, mean of the ranks), ``bytes_per_event_2`` (bytes the
ranks sent each other per event); the same for every batch size in
``by_batch_size``; and a projection to 8, 32 and 128 ranks (also printed as
a table on stderr).

The projection keeps each rank's measured compute per step and prices the
step's collectives (2 all_to_all: the ids with the step's agreement and the
last step's gradients, the vectors; the dense all_reduce and one every 8
steps) with a latency and a per-byte cost fitted from all_to_all probes
between the two ranks here (loopback: a real network has a higher latency
and a lower bandwidth).

With ``--repeats R`` the 1-rank and 2-rank runs alternate R times and the
figures are medians (the machine is shared: its load average, at the start
and the end of each batch size, is in the JSON as ``load_average``).

Usage: ``python bench/distributed.py [--events N] [--batch-size B [B ...]] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: Collectives per training step: the ids (with the step's agreement and the last
#: step's gradients) and the vectors; the dense gradient (it overlaps the next step's
#: exchange, but is priced in full), and every 8th step the stop/checkpoint flags.
_ALL_TO_ALL, _ALL_REDUCE = 2, 1.125
_PROBE_BYTES = (8, 1 << 20)


def _headrace(*args: str) -> list[str]:
    return [sys.executable, "-m", "headrace.cli", *args]


def _summaries(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _train(log: Path, config: Path, nproc: int, data_dir: Path) -> list[dict]:
    args = ["train", "--source", f"file://{log}", "--data-dir", str(data_dir)]
    args += ["--config", str(config)]
    if nproc > 1:
        args += ["--nproc", str(nproc), "--max-restarts", "0"]
    done = subprocess.run(_headrace(*args), capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return _summaries(done.stdout)


def _probe() -> None:
    """Under torchrun: time all_to_all of small and large payloads; rank 0 prints seconds."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    size, times = dist.get_world_size(), []
    for nbytes in _PROBE_BYTES:
        send = torch.zeros(max(nbytes // 4, 1) * size, dtype=torch.float32)
        out = torch.empty_like(send)
        for _ in range(5):
            dist.all_to_all_single(out, send)
        started, rounds = time.perf_counter(), 50
        for _ in range(rounds):
            dist.all_to_all_single(out, send)
        times.append((time.perf_counter() - started) / rounds)
    if dist.get_rank() == 0:
        print(json.dumps({"a2a_seconds": times}))
    dist.destroy_process_group()


def _fit(seconds: list[float]) -> tuple[float, float]:
    """Latency per message and seconds per byte from the two probes (two ranks: one peer)."""
    small, large = seconds
    per_byte = max(large - small, 0.0) / (_PROBE_BYTES[1] - _PROBE_BYTES[0])
    return small, per_byte


def _project(
    compute_s: float, a2a_bytes: float, dense_bytes: float, fit: tuple[float, float], batch: int
) -> list[dict]:
    """Events/s and collective share of N ranks, each stepping ``batch`` events per step."""
    latency, per_byte = fit
    rows = []
    for n in (2, 8, 32, 128):
        peers = n - 1
        # all_to_all: a message to every peer, (N-1)/N of the bytes leave the rank.
        a2a = _ALL_TO_ALL * latency * peers + per_byte * a2a_bytes * peers / n
        # Ring all_reduce: 2(N-1) rounds; the dense gradient is the only big one.
        reduce = _ALL_REDUCE * 2 * latency * peers + per_byte * 2 * dense_bytes * peers / n
        step = compute_s + a2a + reduce
        rows.append(
            {
                "ranks": n,
                "events_per_s": round(n * batch / step),
                "collective_share": round((a2a + reduce) / step, 3),
            }
        )
    return rows


def _run_batch(
    log: Path, folder: Path, batch: int, repeats: int, events: int
) -> tuple[dict, float, float]:
    """1 and 2 ranks at per-rank ``batch``, alternating ``repeats`` times (medians).

    Returns the figures and the 2-rank run's compute seconds per step and
    sparse bytes a rank sends per step (for the projection).
    """
    config = folder / f"trainer-{batch}.toml"
    config.write_text(f"batch_size = {batch}\ncheckpoint_every_s = 600.0\n")
    load_start = os.getloadavg()[0]
    ones, twos = [], []
    for repeat in range(repeats):
        ones += _train(log, config, 1, folder / f"one-{batch}-{repeat}")
        twos.append(_train(log, config, 2, folder / f"two-{batch}-{repeat}"))
    one = ones[int(np.argsort([r["seconds"] for r in ones])[len(ones) // 2])]
    two = twos[int(np.argsort([max(r["seconds"] for r in t) for t in twos])[len(twos) // 2])]
    seconds_2 = max(r["seconds"] for r in two)
    sent = sum(r["bytes_sent"] for r in two)
    steps = events / 2 / batch
    compute = float(np.mean([r["seconds"] - r["collective_seconds"] for r in two])) / steps
    figures = {
        "batch_size_per_rank": batch,
        "events_per_s_1": round(events / one["seconds"]),
        "events_per_s_2": round(events / seconds_2),
        "speedup_2": round(one["seconds"] / seconds_2, 2),
        "collective_share_2": round(
            float(np.mean([r["collective_seconds"] / r["seconds"] for r in two])), 3
        ),
        "bytes_per_event_2": round(sent / events, 1),
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    return figures, compute, sent / 2 / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[1024, 256, 4096],
        help="per-rank batch sizes; the first gives the top-level figures and the projection",
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.probe:
        _probe()
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        log = folder / "events.jsonl"
        subprocess.run(
            _headrace("generate", "--events", str(options.events), "--out", str(log)),
            check=True,
            capture_output=True,
        )
        runs = [
            _run_batch(log, folder, batch, options.repeats, options.events)
            for batch in options.batch_size
        ]
        probe = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=2",
                __file__,
                "--probe",
            ],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ,
        )
        fit = _fit(_summaries(probe.stdout)[0]["a2a_seconds"])
        from headrace.model import build_model
        from headrace.trainer import load_trainer_config

        spec = load_trainer_config(folder / f"trainer-{options.batch_size[0]}.toml").model_spec
        dense_bytes = 4 * sum(p.numel() for p in build_model(spec).parameters())
    main_figures, compute, sent_per_step = runs[0]
    # The sparse bytes a rank sends per step (the dense gradient's are priced apart).
    a2a_bytes = max(sent_per_step - dense_bytes, 0.0)
    projection = _project(compute, a2a_bytes, dense_bytes, fit, options.batch_size[0])
    result = {
        "events": options.events,
        **main_figures,
        "repeats": options.repeats,
        "by_batch_size": [figures for figures, _, _ in runs],
        "a2a_latency_s": round(fit[0], 6),
        "seconds_per_gb": round(fit[1] * 1e9, 3),
        "projection": projection[1:],
    }
    print("| ranks | events/s | collective share |", file=sys.stderr)
    print("| --- | --- | --- |", file=sys.stderr)
    for row in projection:
        print(
            f"| {row['ranks']} | {row['events_per_s']:,} | {row['collective_share']:.0%} |",
            file=sys.stderr,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

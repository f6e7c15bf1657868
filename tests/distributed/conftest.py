"""Helpers for the distributed tests: torchrun launches of the CLI, per-rank results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from headrace.distributed import GENERATION_BLOB
from tests.trainer.conftest import SMALL_MODEL, saved_training

#: Small and fast; checkpoints by events, so that a restarted run trains the same batches.
CONFIG = (
    """
batch_size = {batch_size}
checkpoint_every_events = 200
checkpoint_every_s = 0.3
expire_every = 60.0
"""
    + SMALL_MODEL
)


def write_config(path: Path, batch_size: int) -> Path:
    path.write_text(CONFIG.format(batch_size=batch_size))
    return path


def torchrun_command(nproc: int, *args: str, max_restarts: int = 0) -> list[str]:
    """``torchrun --standalone --nproc-per-node N ... -m headrace.cli ARGS``, with this Python."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        *args,
    ]


def torchrun_train(nproc: int, *args: str, timeout: float = 300) -> list[dict]:
    """Train with ``nproc`` ranks to the end; returns each rank's closing JSON line, by rank."""
    done = subprocess.run(
        torchrun_command(nproc, "-m", "headrace.cli", "train", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"PYTHONHASHSEED": "0"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == nproc, done.stdout
    return sorted(lines, key=lambda line: line["rank"])


def rank_pids(agent: int) -> dict[int, int]:
    """Rank -> pid of the worker processes under a torchrun agent (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        ranks = [v[5:] for v in environ if v.startswith(b"RANK=")]
        if parent == agent and ranks:
            found[int(ranks[0])] = int(entry.name)
    return found


def manifest(data_dir: Path) -> dict:
    return json.loads((data_dir / "generations" / "manifest.json").read_text())


def sharded_training(data_dir: Path, ranks: int) -> tuple[list, dict[str, tuple], list[dict]]:
    """Every rank's state and dense weights, and the rows of all shards (sorted by fid)."""
    states, weights, parts = [], [], {}
    for rank in range(ranks):
        state, rows, dense = saved_training(data_dir / f"rank-{rank}")
        states.append(state)
        weights.append(dense)
        for slot, (fids, vectors) in rows.items():
            parts.setdefault(slot, []).append((fids, vectors))
    rows = {}
    for slot, pieces in parts.items():
        fids = np.concatenate([f for f, _ in pieces])
        vectors = np.concatenate([v for _, v in pieces])
        order = np.argsort(fids)
        assert len(np.unique(fids)) == len(fids), f"{slot}: a fid has rows on two ranks"
        rows[slot] = (fids[order], vectors[order])
    return states, rows, weights


def generation_of(data_dir: Path, rank: int) -> bytes | None:
    from headrace.embedding_store import EmbeddingStore

    with EmbeddingStore.open(
        data_dir / f"rank-{rank}" / "store", read_only=True, memory_budget=1 << 20
    ) as store:
        return store.extra.get(GENERATION_BLOB)

"""Run the trainer CLI and SIGKILL it when its checkpoints pass random points."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from headrace.embedding_store import EmbeddingStore, StoreError
from headrace.trainer.checkpoint import STATE_BLOB, TrainingState
from tests.trainer.conftest import headrace_command, run_cli


def persisted_trained(data_dir: Path) -> int:
    """Examples trained as of the last checkpoint (0 before the first)."""
    try:
        with EmbeddingStore.open(data_dir / "store", read_only=True) as store:
            blob = store.extra.get(STATE_BLOB)
    except StoreError:
        return 0
    return TrainingState.from_bytes(blob).trained if blob else 0


def kill_at_progress(
    args: list[str],
    progress: Callable[[], float],
    targets: list[float],
    rng: random.Random,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run the CLI with ``args`` once per target; SIGKILL it when ``progress()`` passes it.

    Each kill comes a random 0-50 ms after the target is passed, so it lands
    at any point of the work.
    """
    for target in targets:
        proc = subprocess.Popen(
            headrace_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        try:
            deadline = time.monotonic() + 120
            while progress() < target and proc.poll() is None:
                assert time.monotonic() < deadline, "the process made no progress"
                time.sleep(0.01)
            assert proc.poll() is None, f"the process exited with {proc.returncode} before the kill"
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            proc.kill()
            proc.wait()


def train_with_kills(args: list[str], data_dir: Path, total: int, seed: int) -> list[int]:
    """Kill the trainer three times at random points, then let it finish.

    Each kill comes a random 0-50 ms after the persisted count passes a
    random share of ``total``, so it lands mid-run, at any point of a step or
    a checkpoint. Returns the persisted counts seen right after each kill.
    """
    rng = random.Random(seed)
    # Up to 60%: a kill lands up to 50 ms after its target, and a fast trainer
    # trains thousands of events in that time; it must still find work left.
    targets = sorted(rng.uniform(0.1, 0.6) * total for _ in range(3))
    after_kills = []
    for target in targets:
        kill_at_progress(args, lambda: persisted_trained(data_dir), [target], rng)
        after_kills.append(persisted_trained(data_dir))
    run_cli(*args)
    return after_kills

"""Coordinated checkpoints of a distributed run, and restoring them on any number of ranks.

Layout of a distributed run's data dir::

    rank-R/store/               rank R's shard (its live RocksDB store)
    rank-R/dead_letters.jsonl   rank R's dead letters
    generations/G/rank-R/       rank R's part of checkpoint generation G
    generations/manifest.json   the newest generation every rank wrote, and the world size

Every rank checkpoints at the same step (the ranks agree on it). A rank
writes its store's checkpoint, then copies it into the generation's folder
(a RocksDB checkpoint: hard links); after a barrier rank 0 commits the
manifest and only then removes older generations. A generation therefore
counts once every rank has written its part, and a crash at any moment
leaves the previous one whole. On start every rank restores the
manifest's generation: its live store if that is the generation's part,
its part copied back otherwise, or, when the number of ranks changed, the
rows it owns gathered from every part (re-sharding).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from headrace.distributed.collectives import Collectives, DistributedError
from headrace.distributed.sharded import owner_of
from headrace.embedding_store import EmbeddingStore
from headrace.trainer import TrainerConfig, TrainingState
from headrace.trainer.checkpoint import STATE_BLOB

__all__ = ["GENERATION_BLOB", "Generations", "Manifest", "open_shard"]

log = logging.getLogger(__name__)

#: ``"<generation>/<world size>"`` of the checkpoint a shard's store holds.
GENERATION_BLOB = "distributed.generation"
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """The newest generation that every rank of a ``world_size`` run wrote."""

    generation: int
    world_size: int


class Generations:
    """The generations folder of a distributed run's data dir, seen from one rank."""

    def __init__(self, data_dir: Path, collectives: Collectives, generation: int = 0) -> None:
        self.data_dir = data_dir
        self.root = data_dir / "generations"
        self.collectives = collectives
        self.generation = generation

    def part(self, generation: int, rank: int) -> Path:
        return self.root / f"{generation:010d}" / f"rank-{rank}"

    def manifest(self) -> Manifest | None:
        path = self.root / _MANIFEST
        if not path.exists():
            return None
        try:
            return Manifest(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise DistributedError(
                f"{path} is unreadable ({exc}); it is written by rank 0"
            ) from exc

    def _commit(self, manifest: Manifest) -> None:
        """Replace the manifest atomically (write, fsync, rename)."""
        path = self.root / _MANIFEST
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as out:
            json.dump(dataclasses.asdict(manifest), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def prune(self, keep: int | None, *, newer: bool) -> None:
        """Remove the generation folders older than ``keep`` (rank 0 only), and newer ones if asked.

        Newer folders are parts of a generation never committed: removed at
        start only, since while training the other ranks may be writing the
        next generation's parts already.
        """
        if not self.root.exists():
            return
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            generation = int(folder.name)
            if keep is None or generation < keep or (newer and generation > keep):
                shutil.rmtree(folder)

    def write(self, store: EmbeddingStore, extra: Mapping[str, bytes] | None) -> None:
        """Checkpoint ``store`` as this rank's part of the next generation; commit it on rank 0."""
        world = self.collectives.world
        generation = self.generation + 1
        blobs = dict(store.extra if extra is None else extra)
        blobs[GENERATION_BLOB] = f"{generation}/{world.size}".encode()
        store.checkpoint(blobs)
        part = self.part(generation, world.rank)
        if part.exists():  # left by a crash before this generation was committed
            shutil.rmtree(part)
        part.parent.mkdir(parents=True, exist_ok=True)
        store.snapshot(part)
        self.collectives.barrier()
        if world.rank == 0:
            self._commit(Manifest(generation, world.size))
            self.prune(generation, newer=False)
        self.generation = generation


def _link_or_copy(source: str, target: str) -> None:
    # SST files never change once written: a hard link is a safe copy.
    if source.endswith(".sst"):
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)


def _holds(store_dir: Path, generation: int, world_size: int) -> bool:
    """Whether the live store at ``store_dir`` is the given generation's part."""
    if not (store_dir / "CURRENT").exists():
        return False
    # A budget: only metadata and blobs are read.
    with EmbeddingStore.open(store_dir, read_only=True, memory_budget=1 << 20) as store:
        return store.extra.get(GENERATION_BLOB) == f"{generation}/{world_size}".encode()


def _ceil_in_class(position: int, rank: int, world_size: int) -> int:
    """The first line at or after ``position`` that rank ``rank`` of ``world_size`` reads."""
    return position + (rank - position) % world_size


def merged_state(
    states: list[TrainingState], rank: int, dead_letter_mark: dict[str, int]
) -> TrainingState:
    """Rank ``rank``'s training state in a new world, from every old rank's.

    Rank 0 takes the counters' totals (so that sums over ranks stay true),
    the others start at zero. A Kafka partition's position comes from the one
    old rank that read it; a file read by all ranks (line i by rank
    i mod N) resumes at the first line some old rank had not read.
    """
    positions: dict[str, int] = {}
    readers: dict[str, list[tuple[int, int]]] = {}
    for old_rank, state in enumerate(states):
        for key, offset in state.positions.items():
            readers.setdefault(key, []).append((old_rank, offset))
    for key, offsets in readers.items():
        if len(offsets) == 1:
            positions[key] = offsets[0][1]
            continue
        firsts = [_ceil_in_class(offset, r, len(states)) for r, offset in offsets]
        positions[key] = min(firsts)
        if max(firsts) - min(firsts) > len(states):
            log.warning(
                "%s: the ranks had read up to lines %s; lines after %d are read again",
                key,
                firsts,
                min(firsts),
            )
    first = states[0]
    if rank != 0:
        return TrainingState(
            positions=positions,
            next_expiry=first.next_expiry,
            dead_letter_mark=dead_letter_mark,
            sample_rate=first.sample_rate,
        )
    dead_letters: dict[str, int] = {}
    for state in states:
        for reason, count in state.dead_letters.items():
            dead_letters[reason] = dead_letters.get(reason, 0) + count
    return TrainingState(
        trained=sum(s.trained for s in states),
        records=sum(s.records for s in states),
        dead_letters=dead_letters,
        batches=sum(s.batches for s in states),
        positions=positions,
        next_expiry=first.next_expiry,
        dead_letter_mark=dead_letter_mark,
        duplicates=sum(s.duplicates for s in states),
        sample_rate=first.sample_rate,
    )


def _reshard(
    generations: Generations, manifest: Manifest, config: TrainerConfig, store_dir: Path
) -> None:
    """Build this rank's live store from the rows it owns in every part of a generation."""
    world = generations.collectives.world
    old_size = manifest.world_size
    log.info(
        "re-sharding generation %d from %d to %d ranks", manifest.generation, old_size, world.size
    )
    states: list[TrainingState] = []
    blobs: dict[str, bytes] = {}
    with EmbeddingStore.open(store_dir, config.store_slots, seed=config.seed) as store:
        for old_rank in range(old_size):
            part = generations.part(manifest.generation, old_rank)
            with EmbeddingStore.open(part, read_only=True) as old:
                store.adopt_rows(old, lambda fids: owner_of(fids, world.size) == world.rank)
                store.adopt_pending(old)  # ids seen, not admitted yet: their counts go on
                states.append(TrainingState.from_bytes(old.extra[STATE_BLOB]))
                if old_rank == min(world.rank, old_size - 1):
                    blobs = dict(old.extra)
        blobs[STATE_BLOB] = merged_state(
            states, world.rank, _dead_letter_mark(states, world.rank, generations.data_dir)
        ).to_bytes()
        blobs[GENERATION_BLOB] = f"{manifest.generation}/{world.size}".encode()
        store.checkpoint(blobs)


def _dead_letter_mark(states: list[TrainingState], rank: int, data_dir: Path) -> dict[str, int]:
    """Rank ``rank``'s dead-letter mark in a new world.

    A dead-letter topic's mark is per source partition, and a partition may
    move to another rank: every rank takes all of them. A file's mark
    (``"bytes"``) is the rank's own file's: the size an old rank of the same
    number saved, or the whole file a rank beyond the old world left.
    """
    mark = {key: offset for s in states for key, offset in s.dead_letter_mark.items()}
    mark.pop("bytes", None)
    if rank < len(states):
        own = states[rank].dead_letter_mark.get("bytes")
    else:
        letters = data_dir / f"rank-{rank}" / "dead_letters.jsonl"
        own = letters.stat().st_size if letters.exists() else None
    if own is not None:
        mark["bytes"] = own
    return mark


def open_shard(
    config: TrainerConfig, data_dir: Path, collectives: Collectives
) -> tuple[EmbeddingStore, Generations]:
    """This rank's live store, restored to the newest committed generation.

    Raises
    ------
    DistributedError
        When ``data_dir`` holds a single-process run's store.
    """
    world = collectives.world
    if (data_dir / "store").exists():
        raise DistributedError(
            f"{data_dir} holds the store of a single-process run; distributed runs keep "
            "one store per rank: use a new --data-dir"
        )
    generations = Generations(data_dir, collectives)
    manifest = generations.manifest()
    if world.rank == 0:
        # Parts of a generation that was never committed.
        generations.prune(None if manifest is None else manifest.generation, newer=True)
    collectives.barrier()
    rank_dir = data_dir / f"rank-{world.rank}"
    store_dir = rank_dir / "store"
    if manifest is None:
        if rank_dir.exists():  # a first run that died before its first checkpoint
            shutil.rmtree(rank_dir)
    elif not _holds(store_dir, manifest.generation, world.size):
        if store_dir.exists():
            shutil.rmtree(store_dir)
        if manifest.world_size == world.size:
            log.info("restoring generation %d from its copy", manifest.generation)
            shutil.copytree(
                generations.part(manifest.generation, world.rank),
                store_dir,
                copy_function=_link_or_copy,
            )
        else:
            _reshard(generations, manifest, config, store_dir)
    store_dir.parent.mkdir(parents=True, exist_ok=True)
    store = EmbeddingStore.open(
        store_dir,
        config.store_slots,
        seed=config.seed,
        memory_budget=config.store.memory_budget,
        eviction=config.store.eviction,
    )
    generations.generation = 0 if manifest is None else manifest.generation
    # No rank writes a generation before every rank has restored the last.
    collectives.barrier()
    return store, generations

"""Distributed training on torch.distributed (``headrace.distributed``).

Launched by torchrun: every rank reads its share of the source, owns a
shard of the sparse rows (exchanged with ``all_to_all`` each step), holds
the same dense weights (gradients all-reduced) and writes its part of
coordinated checkpoints. :class:`TrainingRun` assembles a run, on one
process or on one rank of several, for the CLI, the benchmarks and tests.
"""

from headrace.distributed.collectives import Collectives, DistributedError, TorchPeers, World
from headrace.distributed.run import TrainingRun
from headrace.distributed.sharded import ShardedLookup, ShardedStore, owner_of
from headrace.distributed.shards import GENERATION_BLOB, Generations, Manifest, open_shard

__all__ = [
    "GENERATION_BLOB",
    "Collectives",
    "DistributedError",
    "Generations",
    "Manifest",
    "ShardedLookup",
    "ShardedStore",
    "TorchPeers",
    "TrainingRun",
    "World",
    "open_shard",
    "owner_of",
]

"""The ranks of a distributed run and the collectives they call, on numpy arrays.

Launched by torchrun (or anything that sets the same variables): ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. The process group uses
gloo, torch.distributed's CPU backend; ``all_to_all_single`` with uneven
splits carries the sparse ids, vectors and gradients.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from headrace.distributed.sharded import ShardedStore

__all__ = ["Collectives", "DistributedError", "TorchPeers", "World"]

#: Seconds a collective (and joining the group) waits for the other ranks before
#: this rank fails, and torchrun restarts the group; a restore that re-shards a
#: large table must fit in it.
TIMEOUT_ENV = "HEADRACE_COLLECTIVE_TIMEOUT_S"
_DEFAULT_TIMEOUT_S = 300.0
#: Seconds a thread holds the GIL when another asks for it (Python's default: 0.005).
_SWITCH_INTERVAL_S = 0.0005


class DistributedError(RuntimeError):
    """A distributed run cannot start or go on; the message says what to change."""


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` ranks.

    Examples
    --------
    >>> World.from_env({"RANK": "1", "WORLD_SIZE": "2"})
    World(rank=1, size=2)
    >>> World.from_env({}) is None  # one process, as without torchrun
    True
    """

    rank: int
    size: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> World | None:
        """The world torchrun describes in ``env``; ``None`` for a single process.

        Raises
        ------
        DistributedError
            When ``RANK`` or ``WORLD_SIZE`` is malformed.
        """
        if "WORLD_SIZE" not in env and "RANK" not in env:
            return None
        try:
            rank, size = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
        except ValueError:
            raise DistributedError(
                f"RANK={env.get('RANK')!r} and WORLD_SIZE={env.get('WORLD_SIZE')!r} must be "
                "integers; launch with torchrun, which sets them"
            ) from None
        if size < 1 or not 0 <= rank < size:
            raise DistributedError(f"RANK={rank} must be in 0..WORLD_SIZE-1 (WORLD_SIZE={size})")
        return None if size == 1 else cls(rank, size)


class Collectives:
    """The gloo process group of a :class:`World`, and what its collectives cost.

    ``seconds`` and ``bytes_sent`` add up every collective's wall time and
    the bytes this rank sent to other ranks (for the benchmark and the
    metrics).
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.seconds = 0.0
        self.bytes_sent = 0
        self.calls = 0
        #: Seconds per kind of collective ("all_to_all", "all_reduce", "barrier").
        self.seconds_by_kind: dict[str, float] = {}

    def start(self) -> None:
        """Join the process group (``MASTER_ADDR``/``MASTER_PORT``); waits for every rank."""
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise DistributedError(
                f"{' and '.join(missing)} not set: launch with torchrun "
                "(or headrace train --nproc N), which sets them"
            )
        try:
            timeout = float(os.environ.get(TIMEOUT_ENV, _DEFAULT_TIMEOUT_S))
        except ValueError:
            raise DistributedError(
                f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r} must be a number of seconds"
            ) from None
        if dist.is_initialized():
            return
        # After each collective the main thread waits for the GIL while the prefetch
        # thread parses; by default it gets it back only after 5 ms, twice a step, and
        # the other ranks wait as long.
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        rank, size, wait = self.world.rank, self.world.size, timedelta(seconds=timeout)
        # torchrun's agent hosts the store; without it rank 0 does.
        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            size,
            is_master=not agent and rank == 0,
            timeout=wait,
        )
        # Each restart of the group meets under its own keys: a rank must never read
        # the address of a rank of the group that died (it connected there, refused).
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            "gloo",
            store=dist.PrefixStore(f"headrace/attempt-{attempt}", store),
            rank=rank,
            world_size=size,
            timeout=wait,
        )

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def _timed(self, kind: str, started: float, sent: int) -> None:
        took = time.perf_counter() - started
        self.seconds += took
        self.seconds_by_kind[kind] = self.seconds_by_kind.get(kind, 0.0) + took
        self.bytes_sent += sent
        self.calls += 1

    def all_to_all(
        self, send: np.ndarray, split: np.ndarray, receive: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows ``(n, ...)`` of ``send``, in runs of ``split[j]`` rows for rank j.

        ``receive[j]`` rows come from rank j (the same as ``split`` when
        omitted); returns them concatenated in rank order.
        """
        started = time.perf_counter()
        receive = split if receive is None else receive
        source = torch.from_numpy(np.ascontiguousarray(send))
        out = torch.empty((int(receive.sum()), *send.shape[1:]), dtype=source.dtype)
        dist.all_to_all_single(out, source, receive.tolist(), split.tolist())
        row = send.itemsize * math.prod(send.shape[1:])
        self._timed("all_to_all", started, (int(split.sum()) - int(split[self.world.rank])) * row)
        return out.numpy()

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp) -> None:
        """Reduce ``tensor`` over all ranks, in place."""
        started = time.perf_counter()
        dist.all_reduce(tensor, op=op)
        self._timed(
            "all_reduce", started, tensor.numel() * tensor.element_size() * (self.world.size - 1)
        )

    def start_all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp) -> Callable[[], None]:
        """Start reducing ``tensor`` over all ranks, in place; returns the wait for it."""
        work = dist.all_reduce(tensor, op=op, async_op=True)
        sent = self._reduced_bytes(tensor)

        def wait() -> None:
            # Time waiting only: the reduction overlaps other work.
            waited = time.perf_counter()
            work.wait()
            self._timed("all_reduce", waited, sent)

        return wait

    def _reduced_bytes(self, tensor: torch.Tensor) -> int:
        """What a rank sends in an all_reduce: its tensor to each other rank, at most."""
        return tensor.numel() * tensor.element_size() * (self.world.size - 1)

    def barrier(self) -> None:
        started = time.perf_counter()
        dist.barrier()
        self._timed("barrier", started, 0)


#: What a rank adds to the periodic agreement: its values, maxed over all ranks.
Vote = Callable[[], Sequence[float]]
#: What every rank then does with the maxima, in the same round.
Act = Callable[[list[float]], None]


class TorchPeers:
    """The :class:`~headrace.trainer.peers.Peers` of a training step, over :class:`Collectives`.

    Other parts of a rank that must act in step with the other ranks (the
    parameter publisher) add a vote with :meth:`add_vote`; it rides on the
    periodic :meth:`agree`, so it costs no collective of its own.
    """

    def __init__(self, collectives: Collectives, store: ShardedStore) -> None:
        self.collectives = collectives
        self.store = store
        self._votes: list[tuple[Vote, Act]] = []

    def add_vote(self, vote: Vote, act: Act) -> None:
        """At every agreement, max ``vote()`` over the ranks and call ``act`` with it on each."""
        self._votes.append((vote, act))

    def ready(self) -> None:
        # Not counted in the collectives' time: it waits out the ranks' start, not training.
        dist.barrier()

    def begin_step(
        self, examples: int, event_time: float, fids: Mapping[str, np.ndarray]
    ) -> tuple[int, float]:
        # The step's agreement rides on the all_to_all that sends its fids to their owners.
        return self.store.begin_step(fids, examples, event_time)

    def reduce_dense(self, grad: torch.Tensor) -> Callable[[], None]:
        return self.collectives.start_all_reduce(grad, dist.ReduceOp.SUM)

    def agree(self, stop: bool, ended: bool, checkpoint: bool) -> tuple[bool, bool]:
        votes = [list(vote()) for vote, _ in self._votes]
        flags = torch.tensor(
            [stop, not ended, checkpoint, *(v for each in votes for v in each)],
            dtype=torch.float64,
        )
        self.collectives.all_reduce(flags, dist.ReduceOp.MAX)
        any_stop, any_reading, any_due, *maxima = flags.tolist()
        for (_, act), each in zip(self._votes, votes, strict=True):
            act(maxima[: len(each)])
            maxima = maxima[len(each) :]
        return bool(any_stop or not any_reading), bool(any_due)

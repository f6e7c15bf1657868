"""RocksDB plumbing of the store and of serving replicas.

Options for tables read by point lookups (:func:`options`), multi-gets in
chunks (:func:`multi_get`), and a checkpoint written as one sorted SST file
and ingested at once (:class:`Checkpoint`).

RocksDB ingests an external SST file in one MANIFEST record: after a crash
the database holds all of the file or none of it, as it would a write batch.
The file goes neither through the WAL nor through a memtable, so a
checkpoint takes no memory beyond one chunk of encoded rows (a write batch
of a million rows held the batch and then a memtable of it, ~2x its size),
and it is written ~4x faster (measured here: 0.96M rows/s into the file
against 0.22M rows/s for a synced write batch of the same rows).

An SST file takes its keys in strictly increasing order, so the puts and
deletes of a checkpoint are collected first: fixed-length keys of one kind
(rows, expiry index) as numpy arrays, sorted with ``np.lexsort``, and a few
odd keys (metadata, filter chunks, blobs) in a dict.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    IngestExternalFileOptions,
    Options,
    Rdict,
    SstFileWriter,
)

from headrace.embedding_store._layout import split_keys

__all__ = ["Checkpoint", "KeyRun", "memory_bytes", "multi_get", "multi_get_chunks", "options"]

# Keys a multi-get asks RocksDB for at a time: it holds a copy of the data
# block of every key until the call returns (~4 KB a key), so one call for
# the misses of a large batch took hundreds of MB. 1024 keys held ~20 MB
# less RSS than 4096 on the bench's table, at the same CPU per key.
_GET_CHUNK = 1024
_BLOCK_CACHE_BYTES = 8 << 20
_WRITE_BUFFER_BYTES = 16 << 20
# Keys (and their encoded values) turned into Python bytes at a time.
_CHUNK = 65_536

#: Values of a run's keys: ``None`` deletes them, bytes is every key's value,
#: a function gives the values of the items (ints) passed to :meth:`KeyRun.add`.
Values = Callable[[np.ndarray], list[bytes]] | bytes | None


class KeyRun:
    """Puts and deletes of fixed-length keys of one kind, added in any order.

    Where one key is added twice, the later add wins.

    Examples
    --------
    >>> run = KeyRun(2)
    >>> run.add(np.array([[1, 2], [0, 9]], dtype=np.uint8), b"v")
    >>> run.add(np.array([[1, 2]], dtype=np.uint8), None)
    >>> [(key, value) for key, value in run.items()]
    [(b'\\x00\\t', b'v'), (b'\\x01\\x02', None)]
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self._keys: list[np.ndarray] = []
        self._items: list[np.ndarray] = []
        self._sources: list[Values] = []

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._keys)

    def add(self, packed: np.ndarray, values: Values, items: np.ndarray | None = None) -> None:
        """Add keys ``(n, width)`` uint8 with their ``values`` (see :data:`Values`)."""
        if packed.shape[1:] != (self.width,):
            raise ValueError(f"keys of shape {packed.shape}, expected (n, {self.width})")
        self._keys.append(packed)
        self._items.append(np.zeros(len(packed), np.int64) if items is None else items)
        self._sources.append(values)

    def items(self):
        """``(key, value or None for a delete)`` in increasing key order."""
        for keys, values in self.chunks():
            yield from zip(keys, values, strict=True)

    def chunks(self):
        """``(keys, values)`` lists of up to ``_CHUNK`` items each, in increasing key order.

        A value is ``None`` for a delete.
        """
        if not self._keys:
            return
        keys = np.concatenate(self._keys)
        order = _key_order(keys)
        keys = keys[order]
        items = np.concatenate(self._items)[order]
        sources = np.repeat(
            np.arange(len(self._keys), dtype=np.int32), [len(k) for k in self._keys]
        )[order]
        del order
        # The stable sort keeps equal keys in the order added: keep the last.
        last = np.ones(len(keys), dtype=bool)
        last[:-1] = np.any(keys[1:] != keys[:-1], axis=1)
        if not last.all():  # else spare a copy of every array (a checkpoint's rows are distinct)
            keys, items, sources = keys[last], items[last], sources[last]
        del last
        for start in range(0, len(keys), _CHUNK):
            stop = start + _CHUNK
            values: list[bytes | None] = [None] * len(keys[start:stop])
            chunk_sources, chunk_items = sources[start:stop], items[start:stop]
            for i, source in enumerate(self._sources):
                if source is None:
                    continue
                positions = np.flatnonzero(chunk_sources == i)
                if not len(positions):
                    continue
                got = source(chunk_items[positions]) if callable(source) else None
                if got is not None and len(positions) == len(values):
                    values = got  # the whole chunk from one source: the common case
                    continue
                for k, position in enumerate(positions.tolist()):
                    values[position] = source if got is None else got[k]
            yield split_keys(keys[start:stop]), values


def _key_order(keys: np.ndarray) -> np.ndarray:
    """The stable order that sorts fixed-length keys ``(n, width)`` uint8 bytewise.

    >>> keys = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 9], [1, 0, 0, 0, 0, 0, 0, 0, 2], [0] * 9])
    >>> _key_order(keys.astype(np.uint8)).tolist()
    [2, 1, 0]
    """
    n, width = keys.shape
    # By the first 8 bytes, which tell most keys apart (a row key's slot and
    # most of its fid), at the cost of one quicksort; then the runs of equal
    # first words by all words and position (np.lexsort of every key and
    # column took 3-5x as long). Only the tied keys are widened to words.
    first = np.zeros((n, 8), dtype=np.uint8)
    first[:, : min(width, 8)] = keys[:, :8]
    first = first.view(">u8").ravel().astype(np.uint64)
    order = np.argsort(first)
    first = first[order]
    tied = np.flatnonzero(first[1:] == first[:-1])
    if len(tied):
        in_run = np.zeros(n, dtype=bool)
        in_run[tied] = in_run[tied + 1] = True
        positions = np.flatnonzero(in_run)
        run = order[positions]
        # Zero padding keeps the order of keys of one length.
        padded = np.zeros((len(run), -(-width // 8) * 8), dtype=np.uint8)
        padded[:, :width] = keys[run]
        words = padded.view(">u8").astype(np.uint64)
        order[positions] = run[np.lexsort((run, *words.T[::-1]))]
    return order


class Checkpoint:
    """The puts and deletes of one checkpoint, applied by :meth:`ingest` at once."""

    def __init__(self) -> None:
        self._runs: dict[int, KeyRun] = {}
        self._streams: dict[int, Iterable[KeyRun]] = {}
        self._odd: dict[bytes, bytes | None] = {}

    def run(self, prefix: bytes, width: int) -> KeyRun:
        """The run of keys starting with ``prefix`` (one byte), all ``width`` bytes long."""
        run = self._runs.setdefault(prefix[0], KeyRun(width))
        if run.width != width:
            raise ValueError(f"keys of prefix {prefix!r} are {run.width} bytes long, not {width}")
        return run

    def stream(self, prefix: bytes, runs: Iterable[KeyRun]) -> None:
        """Keys starting with ``prefix`` (one byte), as runs made while the file is written.

        Every key of a run must sort before every key of the runs after it
        (e.g. one run per slot, in slot order). A generator of runs keeps one
        run in memory at a time: one run of a million rows held ~45 MB of
        sort and encode temporaries.
        """
        if prefix[0] in self._runs:
            raise ValueError(f"keys of prefix {prefix!r} are in a run already")
        self._streams[prefix[0]] = runs

    def put(self, key: bytes, value: bytes) -> None:
        self._odd[key] = value

    def delete(self, key: bytes) -> None:
        self._odd[key] = None

    def ingest(self, db: Rdict, options: Options, file: Path) -> None:
        """Write everything to ``file`` as one SST file and ingest it into ``db``.

        ``file`` is removed afterwards, also when this fails (and then the
        database is as before). ``options`` are the database's.
        """
        odd_prefixes = {key[0] for key in self._odd}
        runs = {p: [run] for p, run in self._runs.items() if len(run)}
        runs.update(self._streams)
        clash = odd_prefixes & runs.keys()
        if clash:
            raise ValueError(f"keys with prefixes {sorted(clash)} are both in runs and odd")
        try:
            writer = SstFileWriter(options)
            writer.open(str(file))
            for prefix in sorted(odd_prefixes | runs.keys()):
                if prefix in runs:
                    for run in runs[prefix]:
                        for keys, values in run.chunks():
                            _write(writer, keys, values)
                else:
                    odd = self._odd_items(prefix)
                    _write(writer, [key for key, _ in odd], [value for _, value in odd])
            writer.finish()
            ingest = IngestExternalFileOptions()
            ingest.set_move_files(True)
            db.ingest_external_file([str(file)], ingest)
        finally:
            file.unlink(missing_ok=True)

    def _odd_items(self, prefix: int):
        return sorted((k, v) for k, v in self._odd.items() if k[0] == prefix)


def _write(writer: SstFileWriter, keys: list[bytes], values: list[bytes | None]) -> None:
    """Add sorted ``keys`` to an SST file: puts of their values, deletes where ``None``."""
    if None not in values:
        # The whole chunk in one C-level loop: a Python loop of puts cost
        # ~30% more per row.
        collections.deque(map(writer.__setitem__, keys, values), maxlen=0)
        return
    for key, value in zip(keys, values, strict=True):
        if value is None:
            del writer[key]
        else:
            writer[key] = value


def options(memory_budget: int | None = None) -> Options:
    """RocksDB settings for point reads of rows and writes by SST ingestion.

    Pass them as the default column family's too (``column_families=
    {"default": ...}``): otherwise rocksdict reopens a database with the
    options of its OPTIONS file, which lose the bloom filter. With a store's
    ``memory_budget`` (bytes), the block cache is 1/64 of it and the
    memtable 1/32 (at most 8 and 16 MB): both count in the budget.
    """
    block_cache, write_buffer = _BLOCK_CACHE_BYTES, _WRITE_BUFFER_BYTES
    if memory_budget is not None:
        block_cache = min(block_cache, memory_budget // 64)
        # A memtable takes an arena block of 1/8 of it once anything is written.
        write_buffer = min(write_buffer, max(64 << 10, memory_budget // 32))
    db_options = Options(raw_mode=True)
    # Rows are float32 noise: compression saves nothing and costs a
    # decompression per read (measured: 1.2x faster multi-gets without).
    db_options.set_compression_type(DBCompressionType.none())
    table = BlockBasedOptions()
    # Ids that were never admitted (most misses of new ids) cost no block read.
    table.set_bloom_filter(10, False)
    # Reads of a table many times the memory budget hit a larger block cache
    # no more often (measured: 8 MB and 256 MB alike); RSS is what it costs.
    table.set_block_cache(Cache(block_cache))
    db_options.set_block_based_table_factory(table)
    # Checkpoints bypass the memtables; only small writes use them.
    db_options.set_write_buffer_size(write_buffer)
    return db_options


def memory_bytes(db: Rdict) -> int:
    """RocksDB's memory for ``db``: table readers (bloom filters, index blocks) and
    memtables as RocksDB estimates them, and the block cache's capacity.

    The capacity, not the usage: blocks read by a multi-get stay charged to
    the cache past its capacity until a later read evicts them (measured:
    100 KB in a cache of 23 bytes), so the usage of a small cache says little.
    """
    return sum(
        db.property_int_value(name) or 0
        for name in (
            "rocksdb.estimate-table-readers-mem",
            "rocksdb.block-cache-capacity",
            "rocksdb.cur-size-all-mem-tables",
        )
    )


def multi_get(db: Rdict, keys: list[bytes]) -> list[bytes | None]:
    """The values of ``keys`` (``None`` where absent), read in chunks to bound memory.

    On the calling thread. A pool of two reader threads gave no more keys/s
    on the shared 2-core machine (the same CPU per key), and each reader's
    malloc arena kept its own free memory: 15 MB more peak RSS on the bench's
    20M-row table (562 against 547 MB).
    """
    values: list[bytes | None] = []
    for _, chunk in multi_get_chunks(db, keys):
        values += chunk
    return values


def multi_get_chunks(db: Rdict, keys: list[bytes]) -> Iterator[tuple[int, list[bytes | None]]]:
    """:func:`multi_get` a chunk at a time: (position of the chunk's first key, its values).

    A caller that decodes each chunk as it comes holds one chunk of bytes
    objects rather than all of them (~5 MB on the bench's misses of a batch).
    """
    for start in range(0, len(keys), _GET_CHUNK):
        yield start, db.get(keys[start : start + _GET_CHUNK])

"""Where parameter updates travel: a directory (the default) or a Kafka topic.

Both sides of both transports move encoded frames (see
:mod:`headrace.serving.protocol`); a reader starts at the newest complete
snapshot and then returns every frame after it, in order.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from headrace.kafka_client import KafkaClientSettings
from headrace.serving.protocol import CorruptUpdate, SyncKey, Update, decode_part, encode
from headrace.stream import KafkaSink, KafkaSource, KafkaSourceConfig, ensure_topic

__all__ = [
    "DirectoryReader",
    "DirectoryWriter",
    "KafkaReader",
    "KafkaWriter",
    "UpdateReader",
    "UpdateWriter",
    "open_reader",
    "open_writer",
    "parse_location",
]

log = logging.getLogger(__name__)


class UpdateWriter(Protocol):
    def write(self, update: Update) -> int:
        """Publish one update; returns the bytes written."""

    def latest_version(self) -> int:
        """The newest version already published here (0 when none), so a
        restarted trainer continues after it."""

    def close(self) -> None: ...


class UpdateReader(Protocol):
    def read(self, timeout_s: float) -> list[bytes]:
        """Frames published since the last call (from the newest snapshot on the first)."""

    def close(self) -> None: ...


# -- directory -----------------------------------------------------------------

_FILE = re.compile(r"^(\d{12})\.(delta|snapshot)(?:\.(\d+)-of-(\d+))?$")


def _file_name(update: Update) -> str:
    name = f"{update.version:012d}.{update.kind}"
    return name if update.shards == 1 else f"{name}.{update.shard}-of-{update.shards}"


def _listing(path: Path) -> list[tuple[int, str, Path]]:
    """(version, kind, path) of every complete update file, in version order."""
    found = []
    for entry in os.scandir(path):
        if match := _FILE.match(entry.name):
            found.append((int(match[1]), match[2], Path(entry.path)))
    return sorted(found)


def _whole_versions(path: Path) -> dict[int, tuple[str, list[Path]]]:
    """kind and files of every version whose shards' files are all there, in version order.

    A version some shard has not written yet is left out; so is one a
    shard never wrote (its rank died), which a newer version follows.
    """
    files: dict[int, tuple[str, list[Path]]] = {}
    shards: dict[int, int] = {}
    for version, kind, file in _listing(path):
        files.setdefault(version, (kind, []))[1].append(file)
        match = _FILE.match(file.name)
        shards[version] = int(match[4]) if match and match[4] else 1
    return {v: entry for v, entry in files.items() if len(entry[1]) == shards[v]}


class DirectoryWriter:
    """Writes each update as one file, made visible by an atomic rename.

    Files older than the snapshot before the newest one are deleted, so a
    reader that is one snapshot behind can still catch up. With ``key``
    every update is signed. The shards of a distributed trainer's version
    are files of their own (``VERSION.KIND.SHARD-of-SHARDS``) in the same
    directory.
    """

    def __init__(self, path: str | Path, key: SyncKey | None = None) -> None:
        self.path = Path(path)
        self.key = key
        self.path.mkdir(parents=True, exist_ok=True)

    def write(self, update: Update) -> int:
        (frame,) = encode(update, max_part_bytes=1 << 62, key=self.key)
        final = self.path / _file_name(update)
        partial = self.path / f".{final.name}.partial"
        with open(partial, "wb") as f:
            f.write(frame)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, final)
        if update.kind == "snapshot":
            self._prune()
        return len(frame)

    def latest_version(self) -> int:
        listing = _listing(self.path)
        return listing[-1][0] if listing else 0

    def _prune(self) -> None:
        snapshots = [v for v, (kind, _) in _whole_versions(self.path).items() if kind == "snapshot"]
        if len(snapshots) < 2:
            return
        keep_from = snapshots[-2]
        for version, _, file in _listing(self.path):
            if version < keep_from:
                file.unlink(missing_ok=True)

    def close(self) -> None:
        pass


class DirectoryReader:
    """Reads update files in version order, starting at the newest snapshot.

    A version is read once the files of all its shards are there.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._next_version: int | None = None

    def read(self, timeout_s: float = 0.0) -> list[bytes]:
        if not self.path.is_dir():
            return []
        versions = _whole_versions(self.path)
        if self._next_version is None:
            snapshots = [v for v, (kind, _) in versions.items() if kind == "snapshot"]
            if not snapshots:
                return []
            self._next_version = snapshots[-1]
        frames = []
        for version, (_, files) in versions.items():
            if version < self._next_version:
                continue
            try:
                frames += [file.read_bytes() for file in files]
            except FileNotFoundError:  # pruned meanwhile; the next snapshot follows
                continue
            self._next_version = version + 1
        return frames

    def close(self) -> None:
        pass


# -- Kafka ---------------------------------------------------------------------

# Below the broker's default message size limit of 1 MiB, with room for
# the record overhead.
_KAFKA_PART_BYTES = 900_000


class KafkaWriter:
    """Produces update frames to a single-partition topic, one message per part.

    With ``key`` every frame is signed; ``client`` holds the TLS and SASL settings.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        max_part_bytes: int = _KAFKA_PART_BYTES,
        key: SyncKey | None = None,
        client: KafkaClientSettings | None = None,
    ) -> None:
        self._client = client or KafkaClientSettings()
        ensure_topic(bootstrap_servers, topic, partitions=1, client=self._client)
        self._servers, self._topic = bootstrap_servers, topic
        self.max_part_bytes = max_part_bytes
        self.key = key
        self._sink = KafkaSink(
            bootstrap_servers,
            topic,
            linger_ms=0,
            options={"max_request_size": 1 << 20},
            client=self._client,
        )

    def write(self, update: Update) -> int:
        frames = encode(update, max_part_bytes=self.max_part_bytes, key=self.key)
        for frame in frames:
            self._sink.send(frame, partition=0)
        self._sink.flush()
        return sum(map(len, frames))

    def latest_version(self) -> int:
        source = KafkaSource(
            KafkaSourceConfig(self._servers, self._topic, partitions=(0,), client=self._client)
        )
        try:
            key = f"{self._topic}:0"
            end = source.positions()[key] + source.lag()[key]
            if end == 0:
                return 0
            source.seek({key: end - 1})
            for _ in range(10):
                if records := source.poll(1, timeout_s=1.0):
                    return decode_part(records[0].value or b"").update.version
            raise TimeoutError(f"the last message of {self._topic!r} did not arrive")
        finally:
            source.close()

    def close(self) -> None:
        self._sink.close()


class KafkaReader:
    """Reads update frames from the topic, starting at the newest snapshot.

    At start it looks backwards from the end of the topic, a window at a
    time, for the first part of the newest snapshot (of every shard, for a
    distributed trainer's), so a worker never replays more history than one
    snapshot interval. ``client`` holds the
    TLS and SASL settings.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        window: int = 256,
        client: KafkaClientSettings | None = None,
    ) -> None:
        client = client or KafkaClientSettings()
        ensure_topic(bootstrap_servers, topic, partitions=1, client=client)
        self._source = KafkaSource(
            KafkaSourceConfig(
                bootstrap_servers,
                topic,
                partitions=(0,),
                start="earliest",
                # Updates are few and should arrive at once: do not let the
                # broker hold an empty fetch for long.
                options={"fetch_max_wait_ms": 20},
                client=client,
            )
        )
        self._key = f"{topic}:0"
        self._window = window
        self._started = False

    def _seek_newest_snapshot(self) -> bool:
        end = self._source.positions()[self._key] + self._source.lag()[self._key]
        stop = end
        # version -> shard -> offset of the first part of that shard's snapshot
        starts: dict[int, dict[int, int]] = {}
        shards: dict[int, int] = {}
        while stop > 0:
            start = max(0, stop - self._window)
            self._source.seek({self._key: start})
            while (position := self._source.positions()[self._key]) < stop:
                records = self._source.poll(self._window, timeout_s=1.0)
                if not records:
                    log.warning("parameter topic stopped answering at offset %d", position)
                    return False
                for r in records:
                    if r.offset < stop and (first := _snapshot_start(r.value)) is not None:
                        starts.setdefault(first.version, {})[first.shard] = r.offset
                        shards[first.version] = first.shards
            whole = [v for v, found in starts.items() if len(found) == shards[v]]
            if whole:
                self._source.seek({self._key: min(starts[max(whole)].values())})
                return True
            stop = start
        return False

    def read(self, timeout_s: float = 0.5) -> list[bytes]:
        if not self._started:
            self._started = self._seek_newest_snapshot()
            if not self._started:
                return []
        return [r.value for r in self._source.poll(10_000, timeout_s=timeout_s) if r.value]

    def close(self) -> None:
        self._source.close()


def _snapshot_start(frame: bytes | None) -> Update | None:
    """The snapshot (of one shard) whose first part ``frame`` is, if it is one."""
    if not frame:
        return None
    try:
        part = decode_part(frame)
    except CorruptUpdate:
        return None
    return part.update if part.update.kind == "snapshot" and part.part == 0 else None


# -- URLs ----------------------------------------------------------------------


def parse_location(url: str) -> tuple[str, str, str]:
    """``(kind, bootstrap servers, path or topic)`` of a parameter location URL."""
    parsed = urlparse(url)
    if parsed.scheme == "dir":
        return "dir", "", (parsed.netloc + parsed.path) or "."
    if parsed.scheme == "kafka" and parsed.netloc and parsed.path.strip("/"):
        return "kafka", parsed.netloc, parsed.path.strip("/")
    raise ValueError(
        f"parameter location {url!r} is neither dir://PATH nor kafka://HOST:PORT/TOPIC"
    )


def open_writer(
    url: str, key: SyncKey | None = None, client: KafkaClientSettings | None = None
) -> UpdateWriter:
    """A writer for ``dir://PATH`` or ``kafka://HOST:PORT/TOPIC``; signing with ``key``."""
    kind, servers, where = parse_location(url)
    if kind == "dir":
        return DirectoryWriter(where, key=key)
    return KafkaWriter(servers, where, key=key, client=client)


def open_reader(url: str, client: KafkaClientSettings | None = None) -> UpdateReader:
    """A reader for ``dir://PATH`` or ``kafka://HOST:PORT/TOPIC``."""
    kind, servers, where = parse_location(url)
    return DirectoryReader(where) if kind == "dir" else KafkaReader(servers, where, client=client)

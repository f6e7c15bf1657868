"""Signed parameter updates: a worker with the key applies only what the trainer signed."""

from __future__ import annotations

import pickle
import zlib

import pytest
from fastapi.testclient import TestClient

from headrace.config import ConfigError
from headrace.serving import (
    CorruptUpdate,
    SyncKey,
    WorkerOptions,
    attach_publisher,
    build_worker,
    open_writer,
)
from headrace.serving.protocol import SIGNED_MAGIC, decode_part, encode
from headrace.serving.transport import DirectoryWriter
from headrace.stream import CtrGenerator, SyntheticConfig, SyntheticSource
from headrace.trainer import Trainer, TrainerConfig
from tests.serving.test_protocol import _update

KEY = SyncKey(b"k" * 32)
OTHER = SyncKey(b"o" * 32)
PROBE = [
    {k: v for k, v in event.items() if k != "label"}
    for event in CtrGenerator(SyntheticConfig(seed=99)).generate(0, 5).events
]


def _forge(frame: bytes) -> bytes:
    """The frame with one vector byte changed, its public CRC fixed, the tag kept."""
    body, tag = bytearray(frame[:-32]), frame[-32:]
    body[-5] ^= 0xFF
    body[-4:] = zlib.crc32(bytes(body[8:-4])).to_bytes(4, "little")
    return bytes(body) + tag


def test_signed_frames_decode_with_the_key_and_without_one():
    (frame,) = encode(_update(20), key=KEY)
    assert frame[:4] == SIGNED_MAGIC
    assert decode_part(frame, KEY).update.version == 3
    # A worker without a key behaves as before signing: it takes both kinds.
    assert decode_part(frame).update.version == 3
    assert decode_part(encode(_update(20))[0]).update.version == 3


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (encode(_update(20))[0], "signature"),  # unsigned
        (encode(_update(20), key=OTHER)[0], "signature"),  # another key
        (_forge(encode(_update(20), key=KEY)[0]), "signature"),  # content changed, CRC fixed
        (encode(_update(20), key=KEY)[0][:-40], "checksum"),  # truncated
        (encode(_update(20), key=KEY)[0][:20], "checksum"),  # truncated to a stub
    ],
    ids=["unsigned", "other-key", "forged", "truncated", "stub"],
)
def test_a_worker_with_the_key_refuses_frames_not_signed_with_it(frame, reason):
    with pytest.raises(CorruptUpdate) as refused:
        decode_part(frame, KEY)
    assert refused.value.reason == reason


def test_the_key_never_shows_and_survives_pickling(tmp_path):
    secret = b"a-secret-of-thirty-two-bytes-abc"
    key = SyncKey(secret)
    assert secret.decode() not in repr(key) + str(WorkerOptions(key=key, token="tok-123"))
    assert "tok-123" not in repr(WorkerOptions(token="tok-123"))
    assert pickle.loads(pickle.dumps(key)).sign(b"x") == key.sign(b"x")


def test_keys_load_from_a_file_or_the_environment_and_short_ones_are_refused(tmp_path):
    path = tmp_path / "sync.key"
    path.write_bytes(b"0123456789abcdef0123\n")
    from_file = SyncKey.load(path, environ={})
    assert from_file is not None and from_file.sign(b"x") == SyncKey(b"0123456789abcdef0123").sign(
        b"x"
    )
    assert SyncKey.load(environ={}) is None
    from_env = SyncKey.load(environ={"HEADRACE_SYNC_KEY": "0123456789abcdef0123"})
    assert from_env is not None and from_env.sign(b"x") == from_file.sign(b"x")
    with pytest.raises(ConfigError, match="HEADRACE_SYNC_KEY: the sync key has 5 bytes") as short:
        SyncKey.load(environ={"HEADRACE_SYNC_KEY": "short"})
    assert "short" not in str(short.value).split(":", 1)[1]
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        SyncKey.load(tmp_path / "missing.key", environ={})


def _rejected(sync) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for metric in sync._rejected.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }


def test_forged_replayed_and_truncated_updates_are_refused_while_the_worker_answers(tmp_path):
    params = tmp_path / "params"
    url = f"dir://{params}"
    trainer = Trainer.open(
        TrainerConfig(batch_size=128, checkpoint_every_s=None),
        tmp_path / "data",
        SyntheticSource(SyntheticConfig(seed=5), limit=2000),
    )
    publisher = attach_publisher(trainer, open_writer(url, key=KEY), snapshot_interval=3600)
    with trainer:
        trainer.run()
    assert publisher.version == 1  # one snapshot: the later deltas are not due yet
    app, sync = build_worker(url, WorkerOptions(key=KEY))
    client = TestClient(app)
    sync.step()
    assert sync.state.version == 1
    answer = client.post("/v1/predict", json={"events": PROBE}).json()

    legit = (params / "000000000001.snapshot").read_bytes()
    DirectoryWriter(params, key=OTHER).write(_update(0, kind="delta", version=2, dims=()))
    DirectoryWriter(params).write(_update(0, kind="delta", version=3, dims=()))
    (params / "000000000004.snapshot").write_bytes(legit)  # an old update, replayed
    (params / "000000000005.snapshot").write_bytes(_forge(legit))
    (params / "000000000006.snapshot").write_bytes(legit[: len(legit) // 2])
    sync.step()

    assert _rejected(sync) == {"signature": 3.0, "stale": 1.0, "checksum": 1.0}
    assert sync.state.version == 1
    again = client.post("/v1/predict", json={"events": PROBE})
    assert again.status_code == 200 and again.json() == answer

    # The trainer's next signed snapshot applies.
    publisher.version = 6
    publisher.publish_snapshot(publisher.event_time)
    sync.step()
    assert sync.state.version == 7
    sync.stop()

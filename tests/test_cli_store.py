"""`headrace inspect-store` on a real store."""

import json
import subprocess
import sys

import numpy as np

from headrace.embedding_store import EmbeddingStore, SlotConfig


def _headrace(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "headrace.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_inspect_store_reports_rows_and_blobs(tmp_path):
    with EmbeddingStore.open(tmp_path, [SlotConfig(name="user", dim=4)]) as store:
        store.lookup_for_training("user", np.arange(5, dtype=np.int64), event_time=0.0)
        store.checkpoint({"offsets": b"12345"})
    result = _headrace("inspect-store", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == {"user": 5}
    assert report["extra"] == {"offsets": 5}
    assert report["slots"]["user"]["dim"] == 4


def test_inspect_store_explains_a_wrong_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("not a store")
    result = _headrace("inspect-store", str(tmp_path))
    assert result.returncode == 2
    assert "holds no RocksDB database" in result.stderr
    missing = _headrace("inspect-store", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not a directory" in missing.stderr

"""Bring your own model: README's example trains and serves; a broken class fails at start."""

from __future__ import annotations

import json
import re
import sys

import httpx
import numpy as np
import pytest

from headrace.config import load_config
from headrace.embedding_store import EmbeddingStore
from headrace.model import dense_state_bytes
from headrace.serving import Scorer, attach_publisher, open_writer
from headrace.serving.protocol import decode_part
from headrace.stream import CtrGenerator, Record, SyntheticConfig, SyntheticSource
from headrace.trainer import Trainer, TrainerConfig, TrainerError
from tests.layers import ROOT
from tests.serving.processes import serving_worker


def _readme_example() -> tuple[str, str]:
    """The module and the config of README's "Bring your own model" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Bring your own model", 1)[1].split("\n## ", 1)[0]
    (module,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (config,) = re.findall(r"```toml\n(.*?)```", section, re.S)
    return module, config


@pytest.fixture
def own_model(tmp_path, monkeypatch):
    """README's module importable as ``my_models``, and its config."""
    module, config = _readme_example()
    package = tmp_path / "models"
    package.mkdir()
    (package / "my_models.py").write_text(module)
    monkeypatch.syspath_prepend(str(package))
    (tmp_path / "trainer.toml").write_text("batch_size = 64\ncheckpoint_every_s = 60\n" + config)
    yield package, load_config(TrainerConfig, tmp_path / "trainer.toml")
    sys.modules.pop("my_models", None)


def test_the_readme_example_trains_and_serves_the_trainers_scores(tmp_path, own_model):
    package, config = own_model
    assert config.model.kind == "my_models:WideAndDeep"
    url = f"dir://{tmp_path}/params"
    source = SyntheticSource(SyntheticConfig(seed=5), limit=6000)
    with Trainer.open(config, tmp_path / "data", source) as trainer:
        assert type(trainer.model).__name__ == "WideAndDeep"
        publisher = attach_publisher(trainer, open_writer(url), snapshot_interval=3600)
        summary = trainer.run()
        update = publisher.publish_snapshot(publisher.event_time)
        probe = CtrGenerator(SyntheticConfig(seed=99)).generate(0, 40).events
        scorer = Scorer(trainer.model_spec, dense_state_bytes(trainer.model))
        records = [Record("p", i, json.dumps(e).encode()) for i, e in enumerate(probe)]
        batch = scorer.parser.parse(records, {}).batch
        expected = scorer.predict(scorer.embed(batch, trainer.store.lookup), batch)
    assert summary.auc > 0.6  # it learned (0.5 is chance)
    # The checkpoint and the snapshot name the class.
    with EmbeddingStore.open(tmp_path / "data" / "store", read_only=True) as store:
        assert b'"my_models:WideAndDeep"' in store.extra["trainer.config"]
    snapshot = (tmp_path / "params" / f"{update.version:012d}.snapshot").read_bytes()
    assert decode_part(snapshot).update.meta["spec"]["model"]["kind"] == "my_models:WideAndDeep"
    with (
        serving_worker(url, env={"PYTHONPATH": str(package)}) as worker,
        httpx.Client(base_url=worker.url, timeout=10) as client,
    ):
        body = client.post("/v1/predict", json={"events": probe}).json()
    assert body["version"] == update.version
    np.testing.assert_allclose(body["scores"], expected, rtol=0, atol=1e-6)
    assert len(set(np.round(expected, 4))) > 10


BROKEN = """
import torch
from torch import nn

class NotAModule:
    pass

class NeedsMore(nn.Module):
    def __init__(self, layout, options, extra):
        super().__init__()

class WrongShape(nn.Module):
    def __init__(self, layout, options):
        super().__init__()
        self.linear = nn.Linear(layout.dim, 1)

    def forward(self, pooled, sequences, dense):
        return self.linear(pooled.sum(1))  # (n, 1), not (n,)

class UnknownSequence(WrongShape):
    sequence_slots = ("history",)

class BadOption(WrongShape):
    def __init__(self, layout, options):
        super().__init__(layout, options)
        if options.get("size", 1) < 1:
            raise ValueError(f"options.size must be >= 1, got {options['size']}")
"""


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("no_such_module:Model", {}, r"cannot import module 'no_such_module'"),
        ("broken_models:Missing", {}, r"broken_models has no attribute 'Missing'"),
        ("broken_models:NotAModule", {}, r"NotAModule is not a torch.nn.Module subclass"),
        ("broken_models:NeedsMore", {}, r"NeedsMore\(layout, options\) failed: TypeError"),
        ("broken_models:BadOption", {"size": 0}, r"options.size must be >= 1, got 0"),
        ("broken_models:WrongShape", {}, r"must return logits of shape \(n,\), got \(2, 1\)"),
        ("broken_models:UnknownSequence", {}, r"sequence_slots must be .* got \('history',\)"),
    ],
)
def test_a_model_that_breaks_the_interface_fails_at_start(
    tmp_path, monkeypatch, kind, options, message
):
    (tmp_path / "broken_models.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = TrainerConfig(model={"kind": kind, "options": options})
    with pytest.raises(TrainerError, match=message) as caught:
        Trainer.open(config, tmp_path / "data", SyntheticSource(SyntheticConfig(), limit=10))
    assert kind in str(caught.value)
    assert not (tmp_path / "data").exists()  # refused before the data dir is touched
    sys.modules.pop("broken_models", None)

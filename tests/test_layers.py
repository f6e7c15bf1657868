"""``make lint``'s import-layer check: it passes on the tree and fails on a wrong import."""

from __future__ import annotations

import shutil
import tomllib

import pytest

from tests.layers import ROOT, lint_imports


def test_the_packages_keep_their_layers():
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "broken"),
    [
        # The model package is below the trainer and serving.
        ("headrace/model/pooling.py", "import headrace.trainer.loop", "headrace.model.pooling"),
        # Serving and the trainer are independent.
        ("serving/scorer.py", "from headrace.trainer import Trainer", "headrace.serving.scorer"),
    ],
)
def test_an_import_against_the_layers_fails_the_check(tmp_path, module, wrong_import, broken):
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for folder in {*config["package-dir"].values()}:
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    source = tmp_path / module
    source.write_text(source.read_text() + f"\n{wrong_import}\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and broken in result.stdout, result.stdout

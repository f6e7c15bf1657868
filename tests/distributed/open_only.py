"""Open a training run (restoring, and re-sharding if the ranks changed) and close it.

Run under torchrun: ``open_only.py CONFIG DATA_DIR SOURCE``.
"""

import sys
from pathlib import Path

from headrace.distributed import TrainingRun
from headrace.trainer import load_trainer_config

if __name__ == "__main__":
    config, data_dir, source = sys.argv[1:4]
    TrainingRun.open(load_trainer_config(Path(config)), data_dir, source).close()

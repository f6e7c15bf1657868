"""What a trainer checkpoint holds besides the store's rows, and how to read it back.

A checkpoint is one :meth:`EmbeddingStore.checkpoint` call: the rows plus
these blobs, written atomically. Serving reads :data:`CONFIG_BLOB` and
:data:`MODEL_BLOB` through :func:`saved_model` to rebuild the dense half of
the model without the training loop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from torch import nn

from headrace.model import build_model, load_dense_state
from headrace.trainer.config import TrainerConfig

__all__ = [
    "CONFIG_BLOB",
    "MODEL_BLOB",
    "MONITOR_BLOB",
    "OPTIMIZER_BLOB",
    "RECENT_IDS_BLOB",
    "STATE_BLOB",
    "YOUNG_IDS_BLOB",
    "TrainingState",
    "saved_model",
]

CONFIG_BLOB = "trainer.config"  # TrainerConfig as JSON
MODEL_BLOB = "trainer.model"  # the model's state_dict (torch.save)
OPTIMIZER_BLOB = "trainer.optimizer"  # the dense optimizer's state_dict (torch.save)
STATE_BLOB = "trainer.state"  # TrainingState as JSON
MONITOR_BLOB = "trainer.monitor"  # pickled metrics and drift detectors
RECENT_IDS_BLOB = "trainer.recent_ids"  # RecentEventIds.to_bytes()
YOUNG_IDS_BLOB = "trainer.young_ids"  # YoungIds.to_bytes() (with unknown_rows_young_s)


@dataclass
class TrainingState:
    """The counters and positions that must move together with the weights.

    Attributes
    ----------
    trained
        Examples trained on, over every run on this data directory.
    records
        Records read from the source, including dead letters.
    dead_letters
        Dead letters per reason.
    batches
        Training steps taken.
    positions
        Where the source resumes: just after the last batch trained.
    next_expiry
        Event time of the next expiry sweep (``None`` before the first batch).
    dead_letter_mark
        The dead-letter sink's mark when the positions were saved
        (``DeadLetterSink.mark``: the file's size, or per source partition
        the dead-letter topic's offset): a restart reads the records after
        the positions again, and the sink writes their letters only once.
    duplicates
        Events dropped because their ``event_id`` was trained already.
    sample_rate
        The rate at which the newest trained event's negatives were kept;
        serving adds ``ln(sample_rate)`` to the logit.
    """

    trained: int = 0
    records: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    positions: dict[str, int] = field(default_factory=dict)
    next_expiry: float | None = None
    dead_letter_mark: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    sample_rate: float = 1.0

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> TrainingState:
        fields = json.loads(blob)
        # Checkpoints before the Kafka dead-letter sink saved the file's size alone.
        size = fields.pop("dead_letter_bytes", None)
        if size is not None:
            fields["dead_letter_mark"] = {"bytes": size}
        return cls(**fields)


def saved_model(extra: Mapping[str, bytes]) -> tuple[TrainerConfig, nn.Module]:
    """The config and dense model of a checkpoint (``EmbeddingStore.extra``).

    Raises
    ------
    KeyError
        When the store holds no trainer checkpoint yet.
    """
    missing = [name for name in (CONFIG_BLOB, MODEL_BLOB) if name not in extra]
    if missing:
        raise KeyError(f"the store holds no trainer checkpoint (missing {missing})")
    config = TrainerConfig.model_validate_json(extra[CONFIG_BLOB])
    model = build_model(config.model_spec)
    load_dense_state(model, extra[MODEL_BLOB])
    model.eval()
    return config, model

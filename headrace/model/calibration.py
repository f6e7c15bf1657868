"""The log-odds correction of a model trained on downsampled negatives.

A negative kept with probability ``r`` makes the model's odds ``1 / r`` too
high, so its logit is ``ln(r)`` too high (Monolith's log-odds correction):
adding ``ln(r)`` calibrates it. Serving adds it to every logit; the trainer
to its progressive predictions.
"""

from __future__ import annotations

import math

__all__ = ["logit_offset"]


def logit_offset(sample_rate: float) -> float:
    """What to add to the logit of a model trained on negatives kept at ``sample_rate``.

    >>> logit_offset(1.0)
    0.0
    >>> round(logit_offset(0.1), 4)
    -2.3026
    """
    return math.log(sample_rate)

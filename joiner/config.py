"""The joiner's settings: a TOML file, ``HEADRACE_JOIN__*`` variables, then flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from headrace.config import load_config

__all__ = ["ENV_PREFIX", "JoinConfig", "load_join_config"]

ENV_PREFIX = "HEADRACE_JOIN__"


class JoinConfig(BaseModel):
    """How impressions and actions are joined into labelled events.

    Parameters
    ----------
    window_s
        Seconds of event time after an impression during which an action
        makes it a positive.
    mode
        ``"wait"``: emit each impression once its window closes, labelled 1
        if an action came in it, else 0. ``"fake-negative"``: emit it at once
        as a negative, and again as a positive when its action comes (Ktena
        et al., RecSys 2019); the positive carries an importance weight.
    negative_rate
        Keep each negative with this probability (deterministic per join
        key); emitted events carry it as ``sample_rate``.
    item_key
        When one request shows several items: the field naming the item, in
        the impression's ``sparse`` (or at its top level) and at the
        action's top level. ``None``: ``request_id`` alone is the join key.
    positive_types
        Action types that make a positive; empty for every type.
    allowed_lateness_s
        The watermark trails the newest impression by this much, so
        impressions that much out of order are joined as if in order.
    max_early_actions
        Actions buffered while their impression has not come; beyond it the
        oldest goes to the late-actions sink.
    align_slack_s
        How far (in event time) one input may be read ahead of the other.
    commit_every_s
        Seconds between commits of state, positions and output.
    seed
        Seed of the negative sampling.
    max_message_bytes
        Larger input messages are dead letters (``too_large``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_s: float = Field(3600.0, gt=0)
    mode: Literal["wait", "fake-negative"] = "wait"
    negative_rate: float = Field(1.0, gt=0, le=1)
    item_key: str | None = None
    positive_types: tuple[str, ...] = ()
    allowed_lateness_s: float = Field(10.0, ge=0)
    max_early_actions: int = Field(1_000_000, ge=1)
    align_slack_s: float = Field(60.0, ge=0)
    commit_every_s: float = Field(1.0, gt=0)
    seed: int = Field(0, ge=0)
    max_message_bytes: int = Field(1 << 20, ge=1)

    def identity(self) -> dict[str, object]:
        """The settings a data directory's state depends on (a restart must keep them)."""
        return {"window_s": self.window_s, "mode": self.mode, "item_key": self.item_key}


def load_join_config(path: str | Path | None = None, **flags: object) -> JoinConfig:
    """Defaults, the TOML file, ``HEADRACE_JOIN__*`` variables, then non-None ``flags``.

    Raises
    ------
    headrace.config.ConfigError
        Naming the bad key.
    """
    base = load_config(JoinConfig, path, env_prefix=ENV_PREFIX)
    given = {name: value for name, value in flags.items() if value is not None}
    return JoinConfig.model_validate(base.model_dump() | given) if given else base

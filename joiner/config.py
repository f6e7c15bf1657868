"""The joiner's settings: a TOML file, ``HEADRACE_JOIN__*`` variables, then flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    fake_negative_wait_s
        Fake-negative mode: seconds of event time an impression waits before
        its first copy goes out, labelled by the actions come so far (a
        negative that a later action turns into a fake one, then followed by
        a positive). 0: at once, as Ktena et al.; a wait catches the quick
        actions, so fewer first copies are fake (as ES-DFM's elapsed time,
        Yang et al., AAAI 2021). Unset: a quarter of ``window_s``, which
        served a better AUC than both 0 and mode ``wait`` at mean action
        delays of a sixth and a third of the window (README, "Online
        joiner"). See :attr:`first_copy_wait_s`.
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
    fake_negative_wait_s: float | None = Field(None, ge=0)
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
        identity: dict[str, object] = {
            "window_s": self.window_s,
            "mode": self.mode,
            "item_key": self.item_key,
        }
        if self.first_copy_wait_s:  # (absent before it existed: old states stay valid)
            identity["fake_negative_wait_s"] = self.first_copy_wait_s
        return identity

    @property
    def first_copy_wait_s(self) -> float:
        """The fake-negative wait in effect: as set, else a quarter of the window (0 in wait mode).

        >>> JoinConfig(mode="fake-negative", window_s=3600).first_copy_wait_s
        900.0
        """
        if self.mode != "fake-negative":
            return 0.0
        if self.fake_negative_wait_s is None:
            return self.window_s / 4
        return self.fake_negative_wait_s

    @model_validator(mode="after")
    def _wait_within_window(self) -> JoinConfig:
        if self.fake_negative_wait_s and self.mode != "fake-negative":
            raise ValueError("fake_negative_wait_s is for mode 'fake-negative'")
        if self.first_copy_wait_s >= self.window_s:
            raise ValueError(
                f"fake_negative_wait_s ({self.fake_negative_wait_s}) must be below window_s "
                f"({self.window_s}); with a wait that long, use mode 'wait'"
            )
        return self


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

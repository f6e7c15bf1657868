"""Impressions and actions: checking raw messages and finding their join keys.

An impression is an event without a label (the features at request time)
with a ``request_id``; an action is ``{"ts", "request_id", "type"}``. With an
item key configured, both carry the item too and the join key is
``request_id`` and item together. A message that breaks a rule raises
:class:`~headrace.schema.SchemaError` with the reason, for the dead letters.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec
import orjson

from headrace.schema import (
    FastEvent,
    Reason,
    SchemaError,
    check_ts,
    event_decoder,
    validate_event,
)

__all__ = ["Action", "Impression", "ImpressionReader", "join_key", "read_action"]

#: Fields the joiner writes into an emitted event; an impression's own are dropped.
_OWNED = ("label", "weight", "sample_rate", "event_id")


class Impression(NamedTuple):
    """A checked impression: its time, join key and JSON body without joiner fields."""

    ts: float
    key: str
    body: bytes


class Action(NamedTuple):
    """A checked action."""

    ts: float
    key: str
    type: str


def join_key(request_id: str, item: str | int | None) -> str:
    """The key impressions and actions meet on.

    >>> join_key("r1", None), join_key("r1", 981), join_key("r1", "981")
    ('r1', 'r1\\x1f981', 'r1\\x1f981')
    """
    return request_id if item is None else f"{request_id}\x1f{item}"


def _item(value: object, where: str, item_key: str) -> str | int:
    if type(value) is str or type(value) is int:
        return value  # type: ignore[return-value]
    raise SchemaError(
        Reason.MISSING_JOIN_KEY,
        f"{where} needs the item key {item_key!r} as a string or an int, not {value!r}",
    )


def _too_large(raw: bytes | None, limit: int) -> bytes:
    if raw is None:
        raise SchemaError(Reason.NOT_JSON, "empty message (a tombstone?)")
    if len(raw) > limit:
        raise SchemaError(Reason.TOO_LARGE, f"{len(raw)} bytes, the limit is {limit}")
    return raw


def _loads(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(Reason.NOT_JSON, str(exc)) from None


class ImpressionReader:
    """Checks impressions: the event schema (no label needed) plus a join key.

    Parameters
    ----------
    item_key
        See :attr:`JoinConfig.item_key <headrace.joiner.JoinConfig>`.
    max_message_bytes
        Larger messages are refused (``too_large``).

    Examples
    --------
    >>> read = ImpressionReader(item_key="item_id")
    >>> read(b'{"ts": 5, "sparse": {"item_id": 7}, "request_id": "r1", "label": 1}')
    Impression(ts=5.0, key='r1\\x1f7', body=b'{"ts":5,"sparse":{"item_id":7},"request_id":"r1"}')
    """

    def __init__(self, item_key: str | None = None, max_message_bytes: int = 1 << 20) -> None:
        self.item_key = item_key
        self.max_message_bytes = max_message_bytes
        self._decode = event_decoder(require_label=False)

    def __call__(self, raw: bytes | None) -> Impression:
        """Check one message; raises :class:`SchemaError` with the reason."""
        if raw is None or len(raw) > self.max_message_bytes:
            _too_large(raw, self.max_message_bytes)
        try:
            event: FastEvent | object = self._decode(raw)
        except Exception:  # not a verdict: the full check gives the reason or accepts
            event = validate_event(_loads(raw), require_label=False)
        key = event.request_id  # type: ignore[attr-defined]
        if key is None:
            raise SchemaError(Reason.MISSING_JOIN_KEY, "an impression needs a request_id")
        if self.item_key is not None:
            sparse = event.sparse  # type: ignore[attr-defined]
            item = sparse.get(self.item_key)
            if item is None:
                item = _loads(raw).get(self.item_key)  # type: ignore[union-attr]
            key = join_key(key, _item(item, "an impression", self.item_key))
        return Impression(event.ts, key, self._body(raw))  # type: ignore[attr-defined]

    def many(self, raws: list[bytes | None]) -> tuple[list[float], list[str]] | None:
        """Check a chunk of messages at once: their ``ts`` and join keys.

        Their bodies are the messages as they are. ``None`` when any message
        needs a closer look (a bad one, one with a field the joiner writes,
        one over several lines...): check each with :meth:`__call__` then.

        >>> ImpressionReader().many([b'{"ts":1,"sparse":{},"request_id":"a"}'] * 2)
        ([1.0, 1.0], ['a', 'a'])
        >>> ImpressionReader().many([b'{"ts":1,"sparse":{}}'])  # no request_id
        """
        try:
            lines = b"\n".join(raws)  # type: ignore[arg-type]
        except TypeError:  # an empty message (None)
            return None
        # The body checks of the whole chunk in a few C calls: with no
        # newline inside a message, "}\n" n - 1 times means every message
        # ends with "}".
        n = len(raws)
        if (
            not n
            or lines.count(b"\n") != n - 1
            or lines.count(b"}\n") != n - 1
            or not lines.endswith(b"}")
            or max(map(len, raws)) > self.max_message_bytes  # type: ignore[arg-type]
            or any(f'"{name}"'.encode() in lines for name in _OWNED)
        ):
            return None
        # One message at a time: each decoded event dies before the next is
        # made (decoding a chunk at once, e.g. msgspec's decode_lines, keeps
        # them all alive and measured 2.5x slower here).
        decode, item_key = self._decode, self.item_key
        times: list[float] = []
        keys: list[str | None] = []
        items: list[object] = []
        try:
            for event in map(decode, raws):  # type: ignore[arg-type]
                times.append(event.ts)
                keys.append(event.request_id)
                if item_key is not None:
                    items.append(event.sparse.get(item_key))
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        if None in keys:
            return None
        if item_key is not None:
            if not all(type(item) is str or type(item) is int for item in items):
                return None
            keys = [f"{key}\x1f{item}" for key, item in zip(keys, items, strict=True)]
        return times, keys  # type: ignore[return-value]

    @staticmethod
    def _body(raw: bytes) -> bytes:
        """The impression as a JSON object without the fields the joiner writes."""
        body = raw if raw.endswith(b"}") else raw.strip()
        # Four substring searches in C (a regex alternation or a generator
        # costs several times more, per impression).
        if body.endswith(b"}") and not (
            b'"label"' in body
            or b'"weight"' in body
            or b'"sample_rate"' in body
            or b'"event_id"' in body
        ):
            return body
        # Rare: the impression carries a field the joiner owns (or the bytes
        # mention one inside a string); rewrite it without them.
        event = orjson.loads(raw)
        for name in _OWNED:
            event.pop(name, None)
        return orjson.dumps(event)


def read_action(raw: bytes | None, item_key: str | None, max_message_bytes: int) -> Action:
    """Check one action message; raises :class:`SchemaError` with the reason.

    >>> read_action(b'{"ts": 9, "request_id": "r1", "type": "click"}', None, 1024)
    Action(ts=9.0, key='r1', type='click')
    """
    action = _loads(_too_large(raw, max_message_bytes))
    ts = check_ts(action, "an action")
    request_id = action.get("request_id")
    if type(request_id) is not str:
        raise SchemaError(
            Reason.MISSING_JOIN_KEY, f"an action needs a request_id string, not {request_id!r}"
        )
    kind = action.get("type")
    if type(kind) is not str:
        raise SchemaError(Reason.BAD_ACTION_TYPE, f"type must be a string, not {kind!r}")
    item = None if item_key is None else _item(action.get(item_key), "an action", item_key)
    return Action(ts, join_key(request_id, item), kind)

"""The online joiner (``headrace.joiner``): impressions + delayed actions -> labelled events.

Impressions (events without labels, with a ``request_id``) and actions
(``{"ts", "request_id", "type"}``) are joined in event time: an impression
whose window sees an action becomes a positive. ``wait`` mode emits each
impression when its window closes; ``fake-negative`` mode emits it at once
as a negative and again as a weighted positive when its action comes.
Negatives can be downsampled (the events carry ``sample_rate``). State and
input positions are committed together to RocksDB, and every emitted event
carries a deterministic ``event_id``, so the trainer trains each joined
example exactly once across joiner crashes.

Examples
--------
>>> from headrace.joiner import JoinConfig, JoinCore, ImpressionReader, read_action
>>> core = JoinCore(JoinConfig(window_s=60, mode="wait"))
>>> core.impression(ImpressionReader()(b'{"ts": 0, "sparse": {"u": 1}, "request_id": "r1"}'))
>>> core.action(read_action(b'{"ts": 30, "request_id": "r1", "type": "click"}', None, 1024), b"")
>>> core.advance(60.0)
>>> [event.value for event in core.take_output()[0]]
[b'{"ts": 0, "sparse": {"u": 1}, "request_id": "r1","label":1,"event_id":"r1#w"}']
"""

from headrace.joiner.config import JoinConfig, load_join_config
from headrace.joiner.core import Emitted, JoinCore, Late, keep_negative
from headrace.joiner.endpoints import EndpointError, Sink, my_partitions, open_inputs, open_sink
from headrace.joiner.records import Action, Impression, ImpressionReader, join_key, read_action
from headrace.joiner.runner import Joiner, JoinSummary
from headrace.joiner.state import JoinState, JoinStateError

__all__ = [
    "Action",
    "Emitted",
    "EndpointError",
    "Impression",
    "ImpressionReader",
    "JoinConfig",
    "JoinCore",
    "JoinState",
    "JoinStateError",
    "JoinSummary",
    "Joiner",
    "Late",
    "Sink",
    "join_key",
    "keep_negative",
    "load_join_config",
    "my_partitions",
    "open_inputs",
    "open_sink",
    "read_action",
]

"""Sources, sinks, parsing and dead letters (``headrace.stream``).

Raw records come from a :class:`KafkaSource` (or a
:class:`ProcessKafkaSource`, its consumer in a child process), a :class:`FileSource` or a
:class:`SyntheticSource`; an :class:`EventStream` parses them into columnar
:class:`Batch` objects and sends bad ones to a dead-letter sink.

Submodules load on first use of one of their names (PEP 562), so a process
that needs only the parser, such as a serving worker, loads neither the
reader process nor the generators nor the replay code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batch import Batch, Positions, Record
    from .deadletter import (
        DeadLetter,
        DeadLetterSink,
        JsonlDeadLetterSink,
        ListDeadLetterSink,
    )
    from .file import FileSource, open_log
    from .file_process import ProcessFileSource
    from .kafka import (
        BrokerUnavailable,
        DeliveryError,
        KafkaDeadLetterSink,
        KafkaSink,
        KafkaSource,
        KafkaSourceConfig,
        ensure_topic,
        parse_kafka_url,
        read_dead_letters,
        topic_partitions,
    )
    from .kafka_process import ProcessKafkaSource
    from .movielens import MOVIELENS_SLOTS, MovieLensError, movielens_events
    from .parse import EventParser, ParserConfig, ParseResult
    from .pipeline import EventStream, ParsingSource, Source
    from .rdkafka import RdKafkaSink, RdKafkaSource
    from .reader_process import ReaderProcessError
    from .replay import LogSink, MessageSink, generate_events, replay_log, write_log
    from .synthetic import (
        BayesAuc,
        CtrGenerator,
        Drift,
        GeneratedEvents,
        SyntheticConfig,
        SyntheticSource,
    )
    from .two_streams import ActionQueue, TwoStreamConfig, TwoStreamGenerator, TwoStreams

#: Public name -> the submodule that defines it.
_MODULES = {
    "ActionQueue": "two_streams",
    "Batch": "batch",
    "BayesAuc": "synthetic",
    "BrokerUnavailable": "kafka",
    "CtrGenerator": "synthetic",
    "DeadLetter": "deadletter",
    "DeadLetterSink": "deadletter",
    "DeliveryError": "kafka",
    "Drift": "synthetic",
    "EventParser": "parse",
    "EventStream": "pipeline",
    "FileSource": "file",
    "GeneratedEvents": "synthetic",
    "JsonlDeadLetterSink": "deadletter",
    "KafkaDeadLetterSink": "kafka",
    "KafkaSink": "kafka",
    "KafkaSource": "kafka",
    "KafkaSourceConfig": "kafka",
    "ListDeadLetterSink": "deadletter",
    "LogSink": "replay",
    "MOVIELENS_SLOTS": "movielens",
    "MessageSink": "replay",
    "MovieLensError": "movielens",
    "ParseResult": "parse",
    "ParsingSource": "pipeline",
    "ParserConfig": "parse",
    "Positions": "batch",
    "ProcessFileSource": "file_process",
    "ProcessKafkaSource": "kafka_process",
    "RdKafkaSink": "rdkafka",
    "RdKafkaSource": "rdkafka",
    "ReaderProcessError": "reader_process",
    "Record": "batch",
    "Source": "pipeline",
    "SyntheticConfig": "synthetic",
    "SyntheticSource": "synthetic",
    "TwoStreamConfig": "two_streams",
    "TwoStreamGenerator": "two_streams",
    "TwoStreams": "two_streams",
    "ensure_topic": "kafka",
    "generate_events": "replay",
    "movielens_events": "movielens",
    "open_log": "file",
    "parse_kafka_url": "kafka",
    "read_dead_letters": "kafka",
    "replay_log": "replay",
    "topic_partitions": "kafka",
    "write_log": "replay",
}

__all__ = [
    "MOVIELENS_SLOTS",
    "ActionQueue",
    "Batch",
    "BayesAuc",
    "BrokerUnavailable",
    "CtrGenerator",
    "DeadLetter",
    "DeadLetterSink",
    "DeliveryError",
    "Drift",
    "EventParser",
    "EventStream",
    "FileSource",
    "GeneratedEvents",
    "JsonlDeadLetterSink",
    "KafkaDeadLetterSink",
    "KafkaSink",
    "KafkaSource",
    "KafkaSourceConfig",
    "ListDeadLetterSink",
    "LogSink",
    "MessageSink",
    "MovieLensError",
    "ParseResult",
    "ParserConfig",
    "ParsingSource",
    "Positions",
    "ProcessFileSource",
    "ProcessKafkaSource",
    "RdKafkaSink",
    "RdKafkaSource",
    "ReaderProcessError",
    "Record",
    "Source",
    "SyntheticConfig",
    "SyntheticSource",
    "TwoStreamConfig",
    "TwoStreamGenerator",
    "TwoStreams",
    "ensure_topic",
    "generate_events",
    "movielens_events",
    "open_log",
    "parse_kafka_url",
    "read_dead_letters",
    "replay_log",
    "topic_partitions",
    "write_log",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

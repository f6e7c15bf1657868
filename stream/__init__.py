"""Sources, sinks, parsing and dead letters (``headrace.stream``).

Raw records come from a :class:`KafkaSource` (or a
:class:`ProcessKafkaSource`, its consumer in a child process), a :class:`FileSource` or a
:class:`SyntheticSource`; an :class:`EventStream` parses them into columnar
:class:`Batch` objects and sends bad ones to a dead-letter sink.
"""

from .batch import Batch, Positions, Record
from .deadletter import (
    DeadLetter,
    DeadLetterSink,
    JsonlDeadLetterSink,
    KafkaDeadLetterSink,
    ListDeadLetterSink,
)
from .file import FileSource, open_log
from .kafka import (
    BrokerUnavailable,
    DeliveryError,
    KafkaSink,
    KafkaSource,
    KafkaSourceConfig,
    ensure_topic,
    parse_kafka_url,
    topic_partitions,
)
from .kafka_process import ProcessKafkaSource, ReaderProcessError
from .movielens import MOVIELENS_SLOTS, MovieLensError, movielens_events
from .parse import EventParser, ParserConfig, ParseResult
from .pipeline import EventStream, Source
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
    "Positions",
    "ProcessKafkaSource",
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
    "replay_log",
    "topic_partitions",
    "write_log",
]

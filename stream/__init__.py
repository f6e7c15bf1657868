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
)
from .kafka_process import ProcessKafkaSource, ReaderProcessError
from .movielens import MOVIELENS_SLOTS, MovieLensError, movielens_events
from .parse import EventParser, ParserConfig, ParseResult
from .pipeline import EventStream, Source
from .replay import MessageSink, generate_events, replay_log, write_log
from .synthetic import (
    BayesAuc,
    CtrGenerator,
    Drift,
    GeneratedEvents,
    SyntheticConfig,
    SyntheticSource,
)

__all__ = [
    "MOVIELENS_SLOTS",
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
    "ensure_topic",
    "generate_events",
    "movielens_events",
    "open_log",
    "parse_kafka_url",
    "replay_log",
    "write_log",
]

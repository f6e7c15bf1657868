"""Parameter sync and serving workers (``headrace.serving``).

The trainer side publishes :class:`~headrace.serving.protocol.Update` objects
(deltas and snapshots) through a transport (a directory or a Kafka topic);
each serving worker applies them whole to its :class:`ParameterState` and
answers ``POST /v1/predict`` with the model code the trainer runs.
"""

from headrace.serving.app import create_app
from headrace.serving.params import ParameterState, RejectedUpdate
from headrace.serving.protocol import CorruptUpdate, SlotRows, SyncKey, Update
from headrace.serving.publisher import ParameterPublisher, attach_publisher
from headrace.serving.scorer import Scorer, model_meta
from headrace.serving.sync import SyncLoop
from headrace.serving.transport import open_reader, open_writer, parse_location
from headrace.serving.worker import WorkerOptions, build_worker, run_worker, run_workers

__all__ = [
    "CorruptUpdate",
    "ParameterPublisher",
    "ParameterState",
    "RejectedUpdate",
    "Scorer",
    "SlotRows",
    "SyncKey",
    "SyncLoop",
    "Update",
    "WorkerOptions",
    "attach_publisher",
    "build_worker",
    "create_app",
    "model_meta",
    "open_reader",
    "open_writer",
    "parse_location",
    "run_worker",
    "run_workers",
]

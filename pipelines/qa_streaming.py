"""Answer questions from Pub/Sub as they arrive (streaming Beam pipeline; DirectRunner locally, Dataflow on GCP).

Locally (Google's Pub/Sub emulator, PUBSUB_EMULATOR_HOST set; runs until Ctrl-C or SIGTERM):

    python -m pipelines.qa_streaming --subscription projects/local-qa/subscriptions/questions \\
        --topic projects/local-qa/topics/answers --rejected-topic projects/local-qa/topics/rejected \\
        --model models/minilm-l6-squad2

On Dataflow (submits the job and returns; --wait waits for it to end):

    python -m pipelines.qa_streaming --subscription projects/P/subscriptions/S \\
        --topic projects/P/topics/answers --rejected-topic projects/P/topics/rejected \\
        --model gs://BUCKET/models/minilm-bundle --backend tensorrt --engine gs://BUCKET/engines/t4.engine \\
        --runner DataflowRunner --project P --region R --temp_location gs://BUCKET/tmp

Each message is one JSON question ``{id, question, context}``. Answers go to ``--topic`` (JSON
messages) and/or ``--bigquery-table``; dead letters to ``--rejected-topic`` and/or
``--bigquery-rejected-table``. The graph is the batch pipeline's, but every message is its own
request: two messages that reuse an id get an answer each. A local run acks each message when it
pulls it: a stop pulls nothing new and finishes the messages it took, but a crash loses those in
flight (docs/streaming.md).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions

from pipelines.options import (
    QASettings,
    add_qa_arguments,
    new_parser,
    seconds,
    settings_or_exit,
    split_argv,
    threshold_note,
)
from pipelines.qa_batch import _LOCAL_RUNNERS, summary_line
from pipelines.records import reason_code
from pipelines.transforms import (
    AnswerQuestions,
    QAOutputs,
    answer_json,
    make_handler,
    rejection_json,
    report_progress,
    write_to_bigquery,
)

LOGGER = logging.getLogger(__name__)

__all__ = ["LocalCounts", "PublishAndCount", "StopAwarePulls", "WatchedModelHandler", "build_parser", "build_pipeline",
           "is_local", "lift_emulator_message_limit", "main", "parse_args", "pubsub_problem", "run", "run_local",
           "run_remote"]

# The batching timer where the runner fires it promptly (Dataflow). The DirectRunner runs everything on
# one thread that blocks up to 30 s in each Pub/Sub pull, so a timer there fires only when the next
# message arrives: locally the default is no timer (each pull's messages, up to 10, are one batch).
REMOTE_BATCH_DURATION_SECS = 1.0
# A local stop waits for the questions already read to be answered or dead-lettered: while outcomes
# keep coming at most DRAIN_SECS, and no longer than DRAIN_STALL_SECS without one. A second signal ends it.
DRAIN_SECS = 60.0
DRAIN_STALL_SECS = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser, io = new_parser("python -m pipelines.qa_streaming", __doc__)
    io.add_argument("--subscription", required=True,
                    help="Pub/Sub subscription to read questions from (projects/P/subscriptions/S)")
    io.add_argument("--topic", default=None, help="Pub/Sub topic for answers (JSON)")
    io.add_argument("--rejected-topic", default=None,
                    help="Pub/Sub topic for dead letters (JSON: reason, raw text up to 64,000 characters, its "
                         "length and sha256)")
    io.add_argument("--wait", action="store_true",
                    help="Dataflow: wait until the job ends (Ctrl-C stops waiting, the job keeps running); without "
                         "it the command returns once the job is submitted. Local runs always run until stopped")
    io.add_argument("--max-batch-duration-secs", type=seconds, default=None, metavar="SECS",
                    help="longest RunInference waits to fill a batch (Beam's timer); 0 = no timer, each bundle "
                         f"is batched as it comes. Default: {REMOTE_BATCH_DURATION_SECS:g} on Dataflow, 0 locally "
                         "(the DirectRunner fires the timer only when the next message arrives)")
    io.add_argument("--watch-model", default=None, metavar="PATTERN",
                    help="swap models without a restart: a file pattern (local or gs://) of ONNX files "
                         "(BUNDLE/model.onnx, --backend onnx) or engines (--backend tensorrt) watched with Beam's "
                         "WatchFilePattern; the newest match is loaded and later answers carry its model id, "
                         "sha256 and saved threshold. Each new model needs a new file name, and must use the "
                         "tokenizer of --model")
    io.add_argument("--watch-interval-secs", type=seconds, default=360.0,
                    help="how often --watch-model looks for new files (default 360)")
    add_qa_arguments(parser)
    return parser


def build_pipeline(
    messages: beam.PCollection, args: argparse.Namespace, settings: QASettings, handler: Any = None,
    model_metadata: Optional[beam.PCollection] = None,
) -> QAOutputs:
    """Message bodies (bytes) -> answers and dead letters written to their sinks.

    Tests inject ``messages`` (a TestStream) and ``model_metadata`` (Beam ModelMetadata, one per new
    model), which otherwise comes from ``--watch-model`` through Beam's WatchFilePattern.
    """
    if model_metadata is None and args.watch_model:
        if is_local(messages.pipeline.options):
            # The DirectRunner cannot run Beam's watch (below): the handler looks for new models itself.
            handler = WatchedModelHandler(handler if handler is not None else make_handler(settings),
                                          args.watch_model, args.watch_interval_secs)
        else:
            from apache_beam.ml.inference.utils import WatchFilePattern

            model_metadata = messages.pipeline | "WatchModel" >> WatchFilePattern(
                file_pattern=args.watch_model, interval=args.watch_interval_secs)
    local = is_local(messages.pipeline.options)
    if local:
        messages = messages | "CountRead" >> beam.Map(functools.partial(LocalCounts.add, "records_read"))
    out = messages | "AnswerQuestions" >> AnswerQuestions(settings, handler, unique_ids=False,
                                                          model_metadata=model_metadata)
    # UTF-8 JSON message bodies, each with the LocalCounts names it counts for once it is out
    sinks = (("Answers", out.answers, args.topic, lambda pair: (answer_json(pair, settings.top_k).encode(),
                                                                ("answered",))),
             ("Rejected", out.rejected, args.rejected_topic, lambda r: (rejection_json(r).encode(),
                                                                        ("rejected", f"rejected.{reason_code(r)}"))))
    for name, outcomes, topic, message in sinks:
        if topic:
            bodies = outcomes | f"{name}Messages" >> beam.Map(message)
            if local:  # counted once Pub/Sub has taken them: a local stop waits for that
                _ = bodies | f"Publish{name}" >> beam.ParDo(PublishAndCount(topic))
            else:
                _ = bodies | f"{name}Bodies" >> beam.Map(lambda body_names: body_names[0]) | f"Publish{name}" >> (
                    beam.io.WriteToPubSub(topic))
        elif local:
            _ = outcomes | f"Count{name}" >> beam.Map(lambda o, m=message: LocalCounts.add_all(m(o)[1]))
    write_to_bigquery(out, args.bigquery_table, args.bigquery_rejected_table, top_k=settings.top_k, streaming=True)
    return out


class PublishAndCount(beam.DoFn):
    """Local runs: publish each (message body, LocalCounts names) to ``topic``, and count the names once
    Pub/Sub has taken the message (the end of the bundle), so that a stop can wait for it. (Beam's
    WriteToPubSub does the same publishing on the DirectRunner, but says nothing when it is done.)"""

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._client: Any = None
        self._pending: List[Any] = []

    def setup(self) -> None:
        from google.cloud import pubsub_v1

        self._client = pubsub_v1.PublisherClient()

    def start_bundle(self) -> None:
        self._pending = []

    def process(self, element: Tuple[bytes, Sequence[str]]) -> None:
        body, names = element
        self._pending.append((self._client.publish(self._topic, body), names))

    def finish_bundle(self) -> None:
        for future, names in self._pending:
            future.result(timeout=120)
            LocalCounts.add_all(names)
        self._pending = []


def is_local(options: Union[PipelineOptions, Sequence[str]]) -> bool:
    """Whether these Beam options (or arguments) run the pipeline in this process (DirectRunner, the default)."""
    options = options if isinstance(options, PipelineOptions) else PipelineOptions(list(options))
    return options.view_as(StandardOptions).runner in _LOCAL_RUNNERS


class WatchedModelHandler(ModelHandler):
    """``base``, re-pointed at the newest file matching ``pattern`` (local or gs://) when one appears: the
    --watch-model of local runs. The DirectRunner cannot run Beam's WatchFilePattern in a streaming
    pipeline (its Watch and PeriodicImpulse are splittable DoFns that runner refuses: "... was not
    replaced as expected"), and would hold every question until a global-window side input is final.
    So between batches, at most every ``interval`` seconds, this looks for a file modified after the
    run started (or after the model in use) and loads it through the handler's own ``update_model_path``,
    the path Beam's side input drives on Dataflow. Answers after the swap carry the new model id."""

    def __init__(self, base: Any, pattern: str, interval: float) -> None:
        super().__init__()
        self._base = base
        self._pattern = pattern
        self._interval = interval
        self._since = time.time()  # like WatchFilePattern: only files changed after the start count
        self._next_check = 0.0
        self._swapped: Any = None  # the model loaded after a swap (RunInference keeps passing the first)

    def _newer_model(self) -> Optional[Any]:
        """The newest file of the pattern changed after ``_since``, or None."""
        from apache_beam.io.filesystems import FileSystems

        matched = FileSystems.match([self._pattern])[0].metadata_list
        fresh = [m for m in matched if m.last_updated_in_seconds > self._since]
        return max(fresh, key=lambda m: m.last_updated_in_seconds) if fresh else None

    def _maybe_swap(self) -> None:
        if time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + self._interval
        try:
            newer = self._newer_model()
        except Exception as exc:  # noqa: BLE001 - an unreadable pattern keeps the model in use
            LOGGER.warning("--watch-model %s: %s; keeping the model in use", self._pattern, exc)
            return
        if newer is None:
            return
        LOGGER.warning("--watch-model: loading the new model %s", newer.path)
        previous = getattr(self._base, "_model_path", None)
        self._since = newer.last_updated_in_seconds  # tried once: a file that fails to load is not retried
        try:
            self._base.update_model_path(newer.path)
            self._swapped = self._base.load_model()
        except Exception as exc:  # noqa: BLE001 - a broken new model must not stop the answers
            LOGGER.warning("--watch-model: %s cannot be loaded (%s: %s); keeping the model in use", newer.path,
                           type(exc).__name__, exc)
            if previous:
                self._base.update_model_path(previous)

    def load_model(self) -> Any:
        return self._base.load_model()

    def run_inference(self, batch: Sequence[Any], model: Any, inference_args: Optional[Dict[str, Any]] = None) -> Any:
        self._maybe_swap()
        return self._base.run_inference(batch, model if self._swapped is None else self._swapped, inference_args)

    # Everything else is the base handler's.
    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return int(self._base.get_num_bytes(batch))

    def get_metrics_namespace(self) -> str:
        return str(self._base.get_metrics_namespace())

    def get_resource_hints(self) -> dict:
        return dict(self._base.get_resource_hints())

    def batch_elements_kwargs(self) -> Any:
        return self._base.batch_elements_kwargs()

    def validate_inference_args(self, inference_args: Optional[Dict[str, Any]]) -> None:
        self._base.validate_inference_args(inference_args)

    def share_model_across_processes(self) -> bool:
        return bool(self._base.share_model_across_processes())

    def model_copies(self) -> int:
        return int(self._base.model_copies())


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple:
    """(args, settings, beam_args); refuses a job whose answers or dead letters would go nowhere, and
    bad batching flags, each with one line."""
    parser = build_parser()
    args, beam_args = split_argv(parser, argv)
    if not (args.topic or args.bigquery_table):
        parser.error("answers need a sink: --topic or --bigquery-table")
    if not (args.rejected_topic or args.bigquery_rejected_table):
        parser.error("dead letters need a sink: --rejected-topic or --bigquery-rejected-table")
    if not args.watch_interval_secs > 0:
        parser.error("--watch-interval-secs must be positive")
    local = is_local(beam_args)
    if args.max_batch_duration_secs is None:
        args.max_batch_duration_secs = 0.0 if local else REMOTE_BATCH_DURATION_SECS
    elif local and args.max_batch_duration_secs > 0:
        LOGGER.warning("--max-batch-duration-secs %g on the DirectRunner: its timer fires only when the next "
                       "Pub/Sub pull returns (up to 30 s when idle), so answers at a trickle wait that long; "
                       "leave it out (0) for prompt answers", args.max_batch_duration_secs)
    # 0 = no timer (the handler's per-bundle batching)
    args.max_batch_duration_secs = args.max_batch_duration_secs or None
    settings = settings_or_exit(parser, args)
    LOGGER.info("%s", threshold_note(make_handler(settings)))
    return args, settings, beam_args


class LocalCounts:
    """What this process's pipeline has read, answered and dead-lettered (by reason): the summary and the
    stop's drain of a local run read it (the DirectRunner's streaming metrics lose updates)."""

    _lock = threading.Lock()
    _counts: Dict[str, int] = {}

    @classmethod
    def add(cls, name: str, element: Any = None) -> Any:
        with cls._lock:
            cls._counts[name] = cls._counts.get(name, 0) + 1
        return element

    @classmethod
    def add_all(cls, names: Sequence[str]) -> None:
        for name in names:
            cls.add(name)

    @classmethod
    def snapshot(cls) -> Dict[str, int]:
        with cls._lock:
            return dict(cls._counts)

    @classmethod
    def clear(cls) -> None:
        with cls._lock:
            cls._counts.clear()

    @classmethod
    def in_flight(cls) -> int:
        """Messages taken from Pub/Sub (pulled, where StopAwarePulls counts them, else read) without an
        outcome published yet."""
        c = cls.snapshot()
        taken = max(c.get("records_read", 0), StopAwarePulls.pulled)
        return taken - c.get("answered", 0) - c.get("rejected", 0)


def _stop_signals(stop: threading.Event) -> List[int]:
    """SIGINT and SIGTERM set ``stop`` (the first of them is recorded); returns that record."""
    got: List[int] = []

    def handler(signum: int, _frame: Any) -> None:
        got.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return got


def pubsub_problem(args: argparse.Namespace) -> Optional[str]:
    """Why the subscription or a topic cannot be used (missing, unreachable), or None. A local run
    checks before it starts: it acks what it pulls, so a job that fails on its first publish loses
    the messages it took."""
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    where = os.environ.get("PUBSUB_EMULATOR_HOST")
    where = f"the Pub/Sub emulator at {where}" if where else "Pub/Sub (PUBSUB_EMULATOR_HOST is not set)"
    try:
        subscriber, publisher = pubsub_v1.SubscriberClient(), pubsub_v1.PublisherClient()
        checks = [("subscription", args.subscription, subscriber.get_subscription, "subscription")]
        checks += [("topic", topic, publisher.get_topic, "topic") for topic in (args.topic, args.rejected_topic) if topic]
        for what, name, get, key in checks:
            try:
                get(**{key: name}, retry=None, timeout=20)
            except exceptions.NotFound:
                return f"the {what} {name} does not exist on {where}; create it first"
    except Exception as exc:  # noqa: BLE001 - unreachable, no credentials, bad name: one line
        return f"cannot use {where}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return None


class StopAwarePulls:
    """The DirectRunner's Pub/Sub pulls, made safe to stop (local runs). Beam's local read acks every
    message as soon as a pull returns it; so, once :attr:`stopping` is set, no new pull is made, and
    messages a pull returns after that are handed back at once (ack deadline 0: redelivered to the
    next run) instead of acked. :attr:`pulled` counts the messages given to the pipeline, so that a
    stop waits for every one of them, also those not yet read by the first step."""

    stopping = threading.Event()
    pulled = 0
    _lock = threading.Lock()

    def __init__(self, client: Any) -> None:
        self._client = client

    def pull(self, *args: Any, **kwargs: Any) -> Any:
        from google.pubsub_v1 import PullResponse

        if self.stopping.is_set():
            time.sleep(0.2)  # Beam pulls again at once
            return PullResponse()
        response = self._client.pull(*args, **kwargs)
        received = list(response.received_messages)
        if received and self.stopping.is_set():
            self._client.modify_ack_deadline(subscription=kwargs["subscription"], ack_ids=[m.ack_id for m in received],
                                             ack_deadline_seconds=0)
            return PullResponse()
        with self._lock:
            StopAwarePulls.pulled += len(received)
        return response

    def __getattr__(self, name: str) -> Any:  # acknowledge, close, ...: the client's
        return getattr(self._client, name)

    @classmethod
    def install(cls) -> bool:
        """Wrap the client of Beam's DirectRunner Pub/Sub read (a private Beam API: False, and nothing
        done, where this Beam has none)."""
        from apache_beam.runners.direct import transform_evaluator

        evaluator = getattr(transform_evaluator, "_PubSubReadEvaluator", None)
        method = getattr(evaluator, "__dict__", {}).get("_get_subscriber_client")
        if not isinstance(method, classmethod):
            return False
        if getattr(method.__func__, "stop_aware", False):
            return True
        plain = method.__func__

        def get_client(klass: Any, transform: Any) -> Any:
            client = plain(klass, transform)
            return client if isinstance(client, StopAwarePulls) else StopAwarePulls(client)

        get_client.stop_aware = True  # type: ignore[attr-defined]
        evaluator._get_subscriber_client = classmethod(get_client)  # type: ignore[union-attr]
        return True


def lift_emulator_message_limit() -> None:
    """Let Pub/Sub clients of this process receive messages of any size from the emulator.

    google-cloud-pubsub talks to ``PUBSUB_EMULATOR_HOST`` over a plain gRPC channel with gRPC's default
    4 MB receive limit (its channels to Google have none); a pull whose messages add up to more (Beam's
    DirectRunner pulls up to 10 at a time, Pub/Sub takes messages up to 10 MB) then fails, and is
    retried, forever. Channels to the emulator get no limit, like those to Google."""
    import grpc

    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host or getattr(grpc.insecure_channel, "unlimited_for", None) == host:
        return
    plain = getattr(grpc.insecure_channel, "plain", grpc.insecure_channel)

    def insecure_channel(target: str, options: Any = None, compression: Any = None) -> Any:
        if target == host:
            options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                       *(options or ())]
        return plain(target, options, compression)

    insecure_channel.unlimited_for = host  # type: ignore[attr-defined]
    insecure_channel.plain = plain  # type: ignore[attr-defined]
    grpc.insecure_channel = insecure_channel


def _drain(signals: List[int], failure: List[BaseException], drain_secs: float) -> None:
    """Wait until every question read has its outcome: at most ``drain_secs``, ``DRAIN_STALL_SECS``
    without a new outcome, or until a second signal or a failure."""
    start = time.monotonic()
    done, last_progress = -1, start
    if LocalCounts.in_flight() > 0:
        print(f"stopping: finishing {LocalCounts.in_flight()} questions already read (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)
    while not failure and len(signals) < 2 and LocalCounts.in_flight() > 0:
        counts = LocalCounts.snapshot()
        now_done = counts.get("answered", 0) + counts.get("rejected", 0)
        now = time.monotonic()
        if now_done != done:
            done, last_progress = now_done, now
        if now - start > drain_secs or now - last_progress > DRAIN_STALL_SECS:
            return
        time.sleep(0.1)


def run_local(p: beam.Pipeline, args: argparse.Namespace, stop: Optional[threading.Event] = None,
              drain_secs: float = DRAIN_SECS) -> int:
    """Run ``p`` on the DirectRunner until SIGINT / SIGTERM, ``stop`` is set, or it fails: 0 when stopped,
    3 when it failed. On stop, the questions already read are finished first (:func:`_drain`), then a summary line."""
    stop = stop or threading.Event()
    signals = _stop_signals(stop) if threading.current_thread() is threading.main_thread() else []
    failure: List[BaseException] = []
    LocalCounts.clear()
    StopAwarePulls.stopping.clear()
    StopAwarePulls.pulled = 0
    if not StopAwarePulls.install():
        LOGGER.warning("this Beam's DirectRunner Pub/Sub read is not the one StopAwarePulls knows: a stop may "
                       "lose the messages of a pull that returns while it stops")
    t0 = time.perf_counter()
    with report_progress(args.progress_every):
        result = p.run()

        def wait() -> None:
            try:
                result.wait_until_finish()
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failure.append(exc)
            finally:
                stop.set()

        threading.Thread(target=wait, name="qa-streaming-wait", daemon=True).start()
        print(f"streaming: reading {args.subscription}; answers to {args.topic or args.bigquery_table}, dead letters "
              f"to {args.rejected_topic or args.bigquery_rejected_table}. Ctrl-C or SIGTERM stops.",
              file=sys.stderr, flush=True)
        stop.wait()
        StopAwarePulls.stopping.set()  # no new pulls; what a pull returns now goes back to Pub/Sub
        _drain(signals, failure, drain_secs)
    seconds_run = time.perf_counter() - t0
    counts = LocalCounts.snapshot()
    # The DirectRunner's cancel waits for its one thread, which may sit up to 30 s in a Pub/Sub pull; that
    # pull fails when the process exits (closed channel): nothing to report once stopped.
    logging.getLogger("apache_beam.runners.direct.executor").setLevel(logging.CRITICAL)
    threading.Thread(target=result.cancel, name="qa-streaming-cancel", daemon=True).start()
    if failure:
        text = " ".join(str(failure[0]).split())
        print(f"error: the streaming pipeline failed: {type(failure[0]).__name__}: {text[:600]}"
              f"{' ...' if len(text) > 600 else ''}", file=sys.stderr)
    why = f"stopped by {signal.Signals(signals[0]).name}" if signals else "stopped"
    print(f"{why}: {summary_line(counts, seconds_run)}", flush=True)
    lost = LocalCounts.in_flight()  # taken from Pub/Sub, acked, and without an outcome
    if lost > 0:
        print(f"warning: {lost} messages read but not answered when the run stopped are lost (the DirectRunner acks "
              "each message when it pulls it); publish them again", file=sys.stderr, flush=True)
    return 3 if failure else 0


def run_remote(p: beam.Pipeline, args: argparse.Namespace, options: PipelineOptions) -> int:
    """Submit ``p`` (Dataflow) and return, or with ``--wait`` wait until the job ends."""
    result = p.run()
    job_id = result.job_id() if callable(getattr(result, "job_id", None)) else None
    gcp = options.view_as(GoogleCloudOptions)
    if gcp.template_location:
        print(f"wrote the Dataflow template {gcp.template_location} (no job was run)")
        return 0
    print(f"submitted the streaming job {job_id}: it runs until drained or cancelled "
          f"(gcloud dataflow jobs drain {job_id} --region {gcp.region})", flush=True)
    if args.wait:
        try:
            state = result.wait_until_finish()
        except KeyboardInterrupt:
            print(f"stopped waiting; the job {job_id} keeps running", file=sys.stderr)
            return 0
        print(f"the job {job_id} ended: {state}")
    return 0


def run(argv: Optional[Sequence[str]] = None) -> int:
    args, settings, beam_args = parse_args(argv)
    options = PipelineOptions(beam_args)
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    messages = p | "ReadQuestions" >> beam.io.ReadFromPubSub(subscription=args.subscription)
    build_pipeline(messages, args, settings)
    if is_local(beam_args):
        lift_emulator_message_limit()
        problem = pubsub_problem(args)
        if problem:  # before any message is pulled (and acked)
            print(f"python -m pipelines.qa_streaming: error: {problem}", file=sys.stderr)
            return 2
        return run_local(p, args)
    return run_remote(p, args, options)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        # Beam warns this every batch when its optional scipy is missing; memory metrics are all it costs.
        handler.addFilter(lambda record: not record.getMessage().startswith("Resource module is not available"))
    LOGGER.setLevel(logging.INFO)
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())

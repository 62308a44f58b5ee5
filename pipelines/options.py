"""Command-line options shared by the batch and streaming pipelines, and the settings they become.
Our flags use dashes (``--max-seq-length``); the rest go to Beam untouched (``--runner``, ``--temp_location``)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pipelines.records import RecordLimits
from trt_handler.qa.batching import DEFAULT_BUCKETS, validate_buckets

BACKENDS = ("onnx", "tensorrt", "torch")


@dataclass(frozen=True)
class QASettings:
    """Everything the QA transforms need, as picklable values. ``model_dir``: a bundle folder (local or
    gs://; for PyTorch a Hugging Face checkpoint folder). Batching settings left None take the
    handler's defaults (an engine's: its sidecar's profiles). Invalid values raise ValueError."""

    model_dir: str
    backend: str = "onnx"
    engine: Optional[str] = None
    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    max_windows_per_question: Optional[int] = 128
    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: Optional[float] = None  # None: the model's saved one, else 0 (decided by the handler)
    version_2_with_negative: bool = True
    align_to_words: bool = False
    top_k: int = 1
    buckets: Optional[Tuple[int, ...]] = None
    max_batch: Optional[int] = None
    batch_windows: Optional[int] = None
    max_tokens: Optional[int] = None
    pad_to: Optional[str] = None
    max_batch_duration_secs: Optional[float] = None
    inference_timeout_secs: Optional[float] = None
    onnx_threads: Optional[int] = None
    torch_device: str = "auto"
    torch_dtype: str = "fp16"
    gpu_count: Optional[int] = None
    inference_server: bool = False
    server_pool_windows: Optional[int] = None
    server_max_wait_ms: Optional[float] = None
    server_queue_depth: Optional[int] = None
    server_linger_secs: Optional[float] = None
    engine_cache_dir: Optional[str] = None
    limits: RecordLimits = RecordLimits()
    feature_batch: int = 64

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "tensorrt" and not self.engine:
            raise ValueError("the tensorrt backend needs --engine (a serialized TensorRT engine, local or gs://)")
        for name in ("max_batch", "batch_windows", "max_tokens", "gpu_count", "feature_batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, got {value}")
        if self.max_batch_duration_secs is not None and not 0 < self.max_batch_duration_secs < math.inf:
            raise ValueError(f"the batching timer must be positive, finite seconds or None (no timer), got "
                             f"{self.max_batch_duration_secs}")
        if self.inference_timeout_secs is not None and not self.inference_timeout_secs > 0:
            raise ValueError(f"the inference timeout must be positive seconds, got {self.inference_timeout_secs}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.n_best:
            raise ValueError(f"top k must be between 1 and the n-best size ({self.n_best}), got {self.top_k!r}")
        if self.buckets is not None:
            object.__setattr__(self, "buckets", validate_buckets(self.buckets))
            if max(self.buckets) < self.max_seq_length:
                raise ValueError(f"the largest bucket ({max(self.buckets)}) is shorter than max_seq_length "
                                 f"({self.max_seq_length}); a full window would fit no bucket")
        # Build the configs now: a bad combination fails at launch, not on a worker.
        self.feature_config()
        self.answer_config()
        self.server_options()

    def feature_config(self):  # -> FeatureConfig (import kept lazy: it pulls in the tokenizer stack)
        from trt_handler.qa.windows import FeatureConfig

        return FeatureConfig(self.max_seq_length, self.doc_stride, self.max_query_length,
                             max_windows_per_question=self.max_windows_per_question)

    def answer_config(self):  # -> AnswerConfig
        from trt_handler.qa.answers import AnswerConfig

        return AnswerConfig(self.n_best, self.max_answer_length, self.null_threshold or 0.0,
                            self.version_2_with_negative, align_to_words=self.align_to_words)

    def server_options(self):  # -> Optional[ServerOptions]
        """The inference server's options (None without ``--inference-server``); unset flags: its defaults."""
        if not self.inference_server:
            return None
        from trt_handler.serving import ServerOptions

        given = {"pool_windows": self.server_pool_windows, "max_wait_ms": self.server_max_wait_ms,
                 "queue_depth": self.server_queue_depth, "linger_s": self.server_linger_secs,
                 "request_timeout_s": self.inference_timeout_secs}
        options = {k: v for k, v in given.items() if v is not None}
        pool = options.get("pool_windows", ServerOptions.pool_windows)
        options["max_pool_windows"] = max(ServerOptions.max_pool_windows, 4 * pool)
        return ServerOptions(**options)



def _int_list(text: str) -> Tuple[int, ...]:
    try:
        return validate_buckets([int(x) for x in text.split(",") if x.strip()])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of lengths: {exc}") from exc


def seconds(text: str) -> float:
    """An argparse type: finite seconds, 0 or more ("0.5"); anything else is a one-line usage error."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _optional_limit(text: str) -> Optional[int]:
    return int(text) or None  # 0 = no limit


def new_parser(prog: str, description: Optional[str]) -> Tuple[argparse.ArgumentParser, Any]:
    """A pipeline's parser (description kept as written) and its "input / output" group, with the BigQuery sinks."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("input / output")
    io.add_argument("--bigquery-table", default=None,
                    help="write answers to this BigQuery table (project:dataset.table); batch: instead of "
                         "OUTPUT-*.jsonl")
    io.add_argument("--bigquery-rejected-table", default=None,
                    help="write dead letters to this BigQuery table; batch: instead of OUTPUT-rejected-*.jsonl")
    io.add_argument("--progress-every", type=seconds, default=30.0, metavar="SECS",
                    help="local runs: print read / answered / rejected and questions/s on stderr every SECS "
                         "seconds; 0 = off (default 30)")
    return parser, io


def add_qa_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, feature, answer, batching and record-limit flags (both pipelines)."""
    m = parser.add_argument_group("model")
    m.add_argument("--model", required=True,
                   help="model bundle folder (model.onnx + tokenizer), checkpoint folder or hub id; "
                        "a checkpoint is exported to ONNX once into --cache-dir. gs:// bundles are used as is.")
    m.add_argument("--backend", choices=BACKENDS, default="onnx",
                   help="onnx: ONNX Runtime (CPU); tensorrt: --engine on a GPU; torch: PyTorch on a GPU or the CPU "
                        "(--model is then a Hugging Face checkpoint folder)")
    m.add_argument("--engine", default=None, help="TensorRT engine file (local or gs://), for --backend tensorrt")
    m.add_argument("--cache-dir", default="cache", help="where exported ONNX bundles are cached (default: cache)")
    m.add_argument("--engine-cache-dir", default=None,
                   help="with --backend tensorrt and no --engine on the worker's GPU: where the handler may build/cache engines")
    m.add_argument("--onnx-threads", type=int, default=None, help="ONNX Runtime intra-op threads per worker process")
    m.add_argument("--torch-device", default="auto",
                   help="torch backend: auto (one GPU of the worker per process, all GPUs used), cuda, cuda:N or cpu")
    m.add_argument("--torch-dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="torch backend precision")
    m.add_argument("--gpu-count", type=int, default=None,
                   help="GPUs per worker to spread the worker's processes over (default: all visible)")
    m.add_argument("--inference-timeout-secs", type=float, default=None,
                   help="a model load or batch running longer is abandoned; its questions are dead-lettered "
                        "as inference_timeout (default: no timeout)")

    from trt_handler.serving import ServerOptions

    s = parser.add_argument_group("inference server (one per GPU, shared by the worker's processes)")
    s.add_argument("--inference-server", action="store_true",
                   help="run the model in one server process per GPU that pools the windows of every process "
                        "of the worker, sorts them and cuts full model calls (Dataflow GPU jobs: on); without "
                        "it every process loads its own model")
    defaults = ServerOptions()  # the help states the defaults the server applies to flags left unset
    s.add_argument("--server-pool-windows", type=int, default=None,
                   help=f"the server starts a pool once this many windows wait (default {defaults.pool_windows})")
    s.add_argument("--server-max-wait-ms", type=float, default=None,
                   help=f"... or once the oldest request has waited this long (default {defaults.max_wait_ms:g})")
    s.add_argument("--server-queue-depth", type=int, default=None,
                   help=f"model calls in flight on the device (default {defaults.queue_depth})")
    s.add_argument("--server-linger-secs", type=float, default=None,
                   help=f"the server exits this long after its last client left (default {defaults.linger_s:g})")

    f = parser.add_argument_group("features (windows)")
    f.add_argument("--max-seq-length", type=int, default=384, help="tokens per window (default 384)")
    f.add_argument("--doc-stride", type=int, default=128, help="context tokens shared by neighbouring windows (default 128)")
    f.add_argument("--max-query-length", type=int, default=64, help="question tokens kept (default 64)")
    f.add_argument("--max-windows-per-question", type=_optional_limit, default=128,
                   help="a longer context is dead-lettered as too_many_windows; 0 = no limit (default 128)")

    a = parser.add_argument_group("answers")
    a.add_argument("--n-best", type=int, default=20, help="candidates per window and n-best list size (default 20)")
    a.add_argument("--max-answer-length", type=int, default=30, help="longest answer in tokens (default 30)")
    a.add_argument("--null-threshold", type=float, default=None,
                   help="answer '' when no-answer score - best span score exceeds this (SQuAD v2); default: the one "
                        "saved by --eval --save-threshold (bundle export.json / engine sidecar), else 0")
    a.add_argument("--top-k", type=int, default=1,
                   help="write the K best answers (score, probability) in each row's top_k list (default 1)")
    a.add_argument("--align-to-words", action="store_true",
                   help="widen answers to whole words of the context ('ashington' -> 'Washington')")
    a.add_argument("--v1", action="store_true", help="SQuAD v1.1 mode: always answer a span, never ''")

    b = parser.add_argument_group("batching")
    b.add_argument("--buckets", type=_int_list, default=None,
                   help="sequence-length buckets a batch is padded to, comma-separated "
                        f"(default: the engine's profiles; ONNX Runtime {','.join(map(str, DEFAULT_BUCKETS))})")
    b.add_argument("--max-batch", type=int, default=None,
                   help="rows per model call at most (default: the engine's profiles; otherwise 64)")
    b.add_argument("--batch-windows", type=int, default=None,
                   help="windows per RunInference batch; it is split into model calls (default 256)")
    b.add_argument("--max-tokens", type=int, default=None,
                   help="token budget per model call without an engine: rows = budget // bucket (default: none)")
    b.add_argument("--pad-to", choices=("longest", "bucket"), default=None,
                   help="pad a model call to its longest window (rounded up to 8; default) or to its bucket")
    b.add_argument("--feature-batch", type=int, default=64, help="questions tokenized per call (default 64)")

    r = parser.add_argument_group("record limits (larger records are dead-lettered)")
    r.add_argument("--max-context-chars", type=_optional_limit, default=100_000, help="0 = no limit (default 100000)")
    r.add_argument("--max-question-chars", type=_optional_limit, default=4_000, help="0 = no limit (default 4000)")


def settings_or_exit(parser: argparse.ArgumentParser, args: argparse.Namespace) -> QASettings:
    """QASettings from parsed flags (each field from the flag of its name) for the resolved, launch-
    checked model; a missing or failing model, or bad settings, exit with status 2 and the message."""
    try:
        model_dir = resolve_model(args.model, args.cache_dir, args.backend)
        check_model(model_dir, args.backend, args.engine)
        values: Dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(QASettings) if hasattr(args, f.name)}
        return QASettings(**values, model_dir=model_dir, version_2_with_negative=not args.v1, limits=RecordLimits(
            max_context_chars=args.max_context_chars, max_question_chars=args.max_question_chars))
    except (ValueError, FileNotFoundError, OSError) as exc:  # model / settings faults: the message, no usage
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


def threshold_note(handler: Any) -> str:
    """One line for the run summary: the no-answer threshold the handler decided for its model, and why."""
    provenance = handler.provenance()
    why = {"flag": "from --null-threshold",
           "model": "learned on labelled data and saved with the model (--eval --save-threshold)",
           "default": "the default; none saved with the model"}[provenance.threshold_source]
    return f"no-answer threshold {provenance.null_threshold:g} ({why})"


def resolve_model(model: str, cache_dir: str, backend: str) -> str:
    """The bundle folder the workers read: for ONNX Runtime a local checkpoint or hub id is exported
    once into ``cache_dir``; remote paths and tensorrt / torch models are used as given."""
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(model) not in (None, "file") or backend in ("tensorrt", "torch"):
        return model
    from trt_handler.engines.export import resolve_model_bundle

    return str(resolve_model_bundle(model, cache_dir))


def check_model(model_dir: str, backend: str, engine: Optional[str] = None) -> None:
    """The launch check (:mod:`pipelines.launch_checks`): the model files, engine and tokenizer are the ones
    exported / built and recorded, and give the recorded canary answers; ValueError otherwise."""
    from pipelines.launch_checks import check_model as check

    check(model_dir, backend, engine)


def split_argv(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, List[str]]:
    """Our flags, and Beam's for Beam. Anything else stops the run with one line (status 2) instead of
    Beam's "Discarding unparseable args" warning: a misspelt flag of ours ('--max-seq-lenght'), a flag
    neither knows, or a stray word (a path the shell expanded from an unquoted glob: only the first
    would have been read)."""
    args, rest = parser.parse_known_args(argv)
    ours = {s for a in parser._actions for s in a.option_strings}
    for token in rest:
        name = token.split("=", 1)[0]
        if name.startswith("--") and "-" in name[2:] and name not in ours:
            _refuse(parser, f"unknown option {name}: Beam options use underscores (--temp_location); "
                            "ours are listed by --help")
    unknown = _unknown_to_beam(rest)
    if unknown:
        word = unknown[0]
        if word.startswith("-"):
            _refuse(parser, f"unknown option {word.split('=', 1)[0]}: neither ours (--help lists them) nor Beam's")
        _refuse(parser, f"unexpected argument {word!r}{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}: "
                        "every value belongs to a flag; if the shell expanded an unquoted glob into several paths, "
                        "quote it (--input 'data/*.jsonl') so that every file it matches is read")
    return args, rest


def _refuse(parser: argparse.ArgumentParser, message: str) -> None:
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def _unknown_to_beam(args: Sequence[str]) -> List[str]:
    """The arguments no Beam PipelineOptions class knows, as Beam itself parses them (it would drop them
    with a warning). Beam internals: when they change, nothing is refused."""
    from apache_beam.options import pipeline_options as po

    try:
        beam_parser = po._BeamArgumentParser(allow_abbrev=False)
        classes = {str(cls): cls for cls in po.PipelineOptions.__subclasses__()}
        for cls in classes.values():
            cls._add_argparse_args(beam_parser)
        _, unknown = beam_parser.parse_known_args(list(args))
    except Exception:  # noqa: BLE001 - Beam changed: leave the arguments to Beam
        return []
    return list(unknown)

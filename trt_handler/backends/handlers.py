"""Beam RunInference model handlers for BERT QA: TensorRT engines, ONNX Runtime and PyTorch.

Elements are QuestionWindows; results ``PredictionResult(question, QuestionLogits | the ModelCallError of a
failed call holding one of its windows, model_id)``: the handlers run the model only; answers are the next
step (``trt_handler.qa.answers.answers_from_logits``; in pipelines ``pipelines.transforms.ExtractAnswers``).
Heavy imports happen in ``load_model`` only. The model runs in this process
(``load_local``: a runner and its plan) or, with ``inference_server=ServerOptions(...)``, in the one
inference server of this process's GPU, shared by every process of the worker (``trt_handler.serving``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import posixpath
from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from trt_handler.answer_batch import DEFAULT_BATCH_WINDOWS, PlannedRunner, Runner, WindowModel, question_logits
from trt_handler.engines.export import BUNDLE_META, BUNDLE_ONNX
from trt_handler.engines.sidecar import read_engine_profiles, read_sidecar
from trt_handler.planning import DEFAULT_TOKEN_BUDGET, BatchPlan, ModelCall
from trt_handler.qa.answers import Provenance, QuestionLogits
from trt_handler.qa.batching import DEFAULT_BUCKETS
from trt_handler.qa.types import QuestionWindows
from trt_handler.serving.options import ServerOptions

__all__ = [
    "METRICS_NAMESPACE",
    "OnnxRuntimeQAHandler",
    "QAHandler",
    "TensorRTQAHandler",
    "TorchQAHandler",
    "question_size",
]

LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "BertQA"  # one namespace for every backend; the backend is a metric label

PathLike = str | os.PathLike[str]


def question_size(element: Any) -> int:
    """Windows of a question: BatchElements' ``element_size_fn`` (module level, so it pickles)."""
    if isinstance(element, QuestionWindows):
        return len(element.windows)
    raise TypeError(
        f"expected QuestionWindows, got {type(element).__name__}; make them from "
        "trt_handler.qa.windows.WindowMaker's windows before RunInference"
    )


class _CallMetrics:
    """Beam metrics per model call; the model's own counters (context waits, GPU memory) only every
    ``STATE_EVERY`` batches: through Beam's cross-process proxy each read is a round trip."""

    STATE_EVERY = 16

    def __init__(self, backend: str) -> None:
        ns = METRICS_NAMESPACE
        self.per_call: Any = [Metrics.distribution(ns, f"{backend}_model_{name}") for name in
                              ("batch_size", "padded_tokens", "real_tokens", "latency_micro_secs")]
        self.calls: Any = Metrics.counter(ns, f"{backend}_model_calls")
        self.windows: Any = Metrics.counter(ns, f"{backend}_model_windows")
        self.context_wait: Any = Metrics.gauge(ns, f"{backend}_context_wait_micro_secs_total")
        self.max_context_wait: Any = Metrics.gauge(ns, f"{backend}_context_wait_micro_secs_max")
        self.gpu_memory: Any = Metrics.gauge(ns, f"{backend}_gpu_memory_used_bytes")
        # the inference server's totals (every process of the worker): calls, padded and real tokens
        self.server: Dict[str, Any] = {k: Metrics.gauge(ns, f"{backend}_server_{k}_total")
                                       for k in ("calls", "windows", "padded_tokens", "real_tokens")}
        self._batches = 0

    def __call__(self, call: ModelCall, real_tokens: int, elapsed_us: int) -> None:
        for metric, value in zip(self.per_call, (call.rows, call.rows * call.seq_len, real_tokens, elapsed_us)):
            metric.update(int(value))
        self.calls.inc()
        self.windows.inc(len(call.indices))

    def model_state(self, model: Any) -> None:
        self._batches += 1
        if self._batches % self.STATE_EVERY != 1:
            return
        stats = getattr(model, "stats", None)
        values = stats() if callable(stats) else None
        if values:
            self.context_wait.set(int(values.get("context_wait_us", 0)))
            self.max_context_wait.set(int(values.get("max_context_wait_us", 0)))
            for key, gauge in self.server.items():
                if key in values:
                    gauge.set(int(values[key]))
        memory = getattr(model, "gpu_memory", None)
        info = memory() if callable(memory) else None
        if info:
            self.gpu_memory.set(int(info["used_bytes"]))


class QAHandler(ModelHandler[QuestionWindows, PredictionResult, WindowModel]):
    """What every QA handler shares: batching by window count, planning, the model's logits, metrics.

    Subclasses provide ``load_runner`` and ``backend``, and set ``_model_path``; options: docs/handlers.md.
    ``null_threshold``: the no-answer threshold the answers apply; None: the one saved with the model
    (``--eval --save-threshold``), else 0. The handler decides it once per model and reports it in every
    result's provenance (``threshold_source``: flag | model | default).
    ``inference_server``: run the model in the inference server of this process's GPU, shared by all
    processes of the worker, instead of loading it in every process (see ``trt_handler.serving``).
    """

    backend = "qa"
    _model_path = ""

    def __init__(
        self,
        *,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        max_model_batch: int | None = None,
        max_tokens: int | None = DEFAULT_TOKEN_BUDGET,
        max_batch_windows: int = DEFAULT_BATCH_WINDOWS,
        min_batch_windows: int | None = None,
        pad_to: str = "longest",
        max_batch_duration_secs: float | None = None,
        inference_server: ServerOptions | None = None,
        null_threshold: float | None = None,
    ) -> None:
        _check_positive_ints(max_batch_windows=max_batch_windows, optional=False)
        _check_positive_ints(max_model_batch=max_model_batch, min_batch_windows=min_batch_windows,
                             max_tokens=max_tokens)
        if min_batch_windows is not None and min_batch_windows > max_batch_windows:
            raise ValueError(f"min_batch_windows ({min_batch_windows}) must not exceed max_batch_windows "
                             f"({max_batch_windows})")
        if max_batch_duration_secs is not None and not max_batch_duration_secs > 0:
            raise ValueError(f"max_batch_duration_secs must be positive or None, got {max_batch_duration_secs!r}")
        if null_threshold is not None and (isinstance(null_threshold, bool) or not np.isfinite(null_threshold)):
            raise ValueError(f"null_threshold must be a finite number or None (the model's), got {null_threshold!r}")
        if inference_server is not None and not isinstance(inference_server, ServerOptions):
            raise ValueError("inference_server must be a trt_handler.serving.ServerOptions (or None: the model "
                             f"runs in every process), got {inference_server!r}")
        # BatchElements' kwargs: min = max by default, so the GPU sees full batches (partial ones at bundle end).
        streaming: dict[str, Any] = {"max_batch_duration_secs": max_batch_duration_secs}  # Beam annotates int
        super().__init__(min_batch_size=max_batch_windows if min_batch_windows is None else min_batch_windows,
                         max_batch_size=max_batch_windows, element_size_fn=question_size, **streaming)
        if isinstance(buckets, (str, bytes)) or not all(isinstance(b, (int, np.integer)) for b in buckets):
            raise ValueError(f"buckets must be a sequence of ints like (128, 256, 384), got {buckets!r}")
        # for_buckets' own errors name "buckets" already; an engine's handler replaces it by its sidecar's profiles
        self.plan = BatchPlan.for_buckets(tuple(int(b) for b in buckets), max_model_batch, max_tokens=max_tokens,
                                          pad_to=pad_to)
        self._null_threshold = None if null_threshold is None else float(null_threshold)
        self._provenance: Provenance | None = None
        self._metrics: _CallMetrics | None = None
        self._server = inference_server

    def load_runner(self) -> Runner:
        """The backend's runner, loaded in this process."""
        raise NotImplementedError(type(self))

    def load_local(self) -> PlannedRunner:
        """The runner and its plan, in this process (what an inference server loads, too)."""
        runner = self.load_runner()
        return PlannedRunner(runner, self._plan_for(runner), record=self._call_metrics())

    def load_model(self) -> WindowModel:
        """:meth:`load_local`, or a client of this GPU's inference server (started if none runs)."""
        if self._server is None:
            return self.load_local()
        from trt_handler.serving.client import InferenceClient

        return InferenceClient(self._server_twin().load_local, self._server, self.server_device())

    def server_device(self) -> Optional[int]:
        """The GPU whose inference server this process uses; None: a CPU server."""
        return None

    def _server_twin(self) -> QAHandler:
        """A copy holding only what the server needs: the same key for every process of a worker."""
        twin = copy.copy(self)
        twin._null_threshold = twin._provenance = twin._metrics = twin._server = None
        return twin

    def _call_metrics(self) -> _CallMetrics:
        if self._metrics is None:
            self._metrics = _CallMetrics(self.backend)
        return self._metrics

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_metrics"] = None  # Beam metric handles: made again where the handler runs
        return state

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(
                f"inference_args {sorted(inference_args)} were given, but the QA handlers take none: "
                "configure them through the handler's constructor"
            )

    def get_num_bytes(self, batch: Sequence[QuestionWindows]) -> int:
        """Bytes of the windows' arrays (what the handler really moves), not of their pickles."""
        return sum(a.nbytes for q in batch for w in q.windows
                   for a in (w.input_ids, w.token_type_ids, w.offsets, w.is_context, w.max_context))

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def _plan_for(self, runner: Runner) -> BatchPlan:
        return self.plan  # engines override it with their own profiles

    def model_metadata(self) -> dict[str, Any]:
        """``sha256``, ``precision`` and learned ``null_threshold`` the model's files record."""
        return {}

    def update_model_path(self, model_path: str | None = None) -> None:
        """A new model (WatchFilePattern's side input): its answers carry its id, sha256 and threshold."""
        if model_path:
            self._model_path = _checked_path("model_path", model_path)
            self._provenance = None

    def provenance(self) -> Provenance:
        """The current model's Provenance, read once per model: the one place the no-answer threshold
        is decided (given, else saved with the model, else 0)."""
        if self._provenance is None:
            meta = self.model_metadata()
            saved = meta.get("null_threshold")
            threshold, source = ((self._null_threshold, "flag") if self._null_threshold is not None else
                                 (float(saved), "model") if saved is not None else (0.0, "default"))
            sha = meta.get("sha256")
            self._provenance = Provenance(
                model_id=self._model_path or self.backend, backend=self.backend,
                model_sha256=sha[:12] if isinstance(sha, str) and sha else None,  # 12 hex digits on every row
                precision=meta.get("precision"), null_threshold=threshold, threshold_source=source)
        return self._provenance

    def run_inference(
        self,
        batch: Sequence[QuestionWindows],
        model: WindowModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """One PredictionResult per question, in input order: its windows' logits with the model's
        provenance, or the ModelCallError of a failed call holding one of its windows; a failure of the
        whole batch raises (and Beam dead-letters the batch)."""
        self.validate_inference_args(inference_args)
        questions = list(batch)
        metrics = self._call_metrics()
        provenance = self.provenance()
        per_question = question_logits(questions, model)
        metrics.model_state(model)
        make: Any = PredictionResult  # Beam's __new__ is unannotated; Any keeps strict mypy quiet
        return [make(q, logits if isinstance(logits, Exception) else QuestionLogits(tuple(logits), provenance),
                     provenance.model_id) for q, logits in zip(questions, per_question)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._model_path!r}, buckets={self.plan.buckets})"


def _check_positive_ints(optional: bool = True, **values: Any) -> None:
    """ValueError naming the first value that is not a positive int (None passes when ``optional``)."""
    for name, value in values.items():
        if (value is not None or not optional) and (isinstance(value, bool) or not isinstance(value, int)
                                                    or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _checked_path(name: str, value: Any) -> str:
    value = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty path string, got {value!r}")
    return value


# Beam's FileSystems methods are unannotated; calling them through Any keeps strict mypy quiet.
_FS: Any = FileSystems


def _read_bytes(path: str) -> bytes:
    with _FS.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return bytes(f.read())


def _bundle_onnx(path: str) -> str:
    """``path`` itself when it is an ``.onnx`` file, else the ``model.onnx`` of the bundle folder ``path``."""
    return path if path.endswith(".onnx") else str(_FS.join(path, BUNDLE_ONNX))


def _recorded(meta: Any, sha256_key: str, default_precision: str | None) -> dict[str, Any]:
    """sha256, precision and learned null_threshold an export.json / sidecar records; None each without one."""
    if not isinstance(meta, dict):
        return {"sha256": None, "precision": None, "null_threshold": None}
    entry = meta.get("null_threshold")  # where --eval --save-threshold keeps it
    value: Any = entry.get("value") if isinstance(entry, dict) else entry
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))
    return {"sha256": meta.get(sha256_key), "precision": meta.get("precision") or default_precision,
            "null_threshold": float(value) if finite else None}


def bundle_metadata(model_path: str) -> dict[str, Any]:
    """:func:`_recorded` of an ONNX bundle (folder or its .onnx file), from its export.json (local or gs://)."""
    folder = (posixpath.dirname(model_path) or ".") if model_path.endswith(".onnx") else model_path.rstrip("/")
    path = str(_FS.join(folder, BUNDLE_META))
    try:
        meta = json.loads(_read_bytes(path).decode("utf-8")) if _FS.exists(path) else None
    except (OSError, ValueError) as err:
        LOGGER.warning("cannot read %s (%s): answers will not carry its provenance", path, err)
        meta = None
    quantized = isinstance(meta, dict) and isinstance(meta.get("quantization"), dict)
    return _recorded(meta, "sha256", "int8-weight-only" if quantized else "fp32")


def engine_metadata(engine_path: str) -> dict[str, Any]:
    """:func:`_recorded` of an engine, from its sidecar."""
    return _recorded(read_sidecar(engine_path), "engine_sha256", None)


class OnnxRuntimeQAHandler(QAHandler):
    """RunInference handler on ONNX Runtime (CPU): the reference backend and the no-GPU path.

    ``onnx_path_or_bundle``: a bundle folder or an ``.onnx`` file, local or gs:// (a remote model is
    read into memory: one file, < 2 GB). One session per process, shared by its threads.
    """

    backend = "onnx"

    def __init__(
        self,
        onnx_path_or_bundle: PathLike,
        *,
        intra_op_threads: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._model_path = _checked_path("onnx_path_or_bundle", onnx_path_or_bundle)
        _check_positive_ints(intra_op_threads=intra_op_threads)
        self._intra_op_threads = intra_op_threads

    def load_runner(self) -> Runner:
        from trt_handler.backends.onnx_runner import OnnxRunner

        path = _bundle_onnx(self._model_path)
        local = _FS.get_scheme(path) in (None, "file")  # OnnxRunner names a missing local file itself
        if not local and not _FS.exists(path):
            raise FileNotFoundError(
                f"ONNX model {path} does not exist; upload a model bundle (folder with {BUNDLE_ONNX}) "
                "made by `python -m trt_handler.engines.export`, or fix the path"
            )
        return OnnxRunner(path if local else _read_bytes(path), intra_op_threads=self._intra_op_threads)

    def model_metadata(self) -> dict[str, Any]:
        return bundle_metadata(self._model_path)


class TorchQAHandler(QAHandler):
    """RunInference handler on PyTorch: a local Hugging Face QA checkpoint folder on CUDA or the CPU.

    ``device="auto"``: this process's GPU of ``gpu_count`` (None: all visible) from
    ``backends.devices.assign_device``, the CPU without one; ``dtype`` is always fp32 on the CPU.
    """

    backend = "torch"

    def __init__(
        self,
        model_dir: PathLike,
        *,
        device: str = "auto",
        dtype: str = "fp16",
        gpu_count: int | None = None,
        **options: Any,
    ) -> None:
        if dtype not in ("fp16", "bf16", "fp32"):
            raise ValueError(f"dtype must be fp16, bf16 or fp32, got {dtype!r}")
        if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        _check_positive_ints(gpu_count=gpu_count)
        super().__init__(**options)
        self._model_path = _checked_path("model_dir", model_dir)
        self._device = device
        self._dtype = dtype
        self._gpu_count = gpu_count

    def resolved_device(self) -> str:
        """The device this process loads onto."""
        if self._device != "auto":
            return self._device
        from trt_handler.backends.devices import assign_device, visible_gpu_count

        return f"cuda:{assign_device(self._gpu_count)}" if visible_gpu_count() else "cpu"

    def server_device(self) -> Optional[int]:
        device = self.resolved_device()
        return None if device == "cpu" else int(device.partition(":")[2] or 0)

    def load_runner(self) -> Runner:
        from trt_handler.backends.torch_runner import TorchRunner

        device = self.resolved_device()
        dtype = "fp32" if device == "cpu" else self._dtype
        runner = TorchRunner(self._model_path, device=device, dtype=dtype)
        runner.warm_up([(p.max_batch, p.max_seq) for p in self.plan.profiles])
        LOGGER.info("PyTorch QA model %s loaded on %s (%s)", self._model_path, device, dtype)
        return runner

    def model_metadata(self) -> dict[str, Any]:
        """A learned threshold may sit in the checkpoint folder's export.json."""
        return {**bundle_metadata(self._model_path), "precision": self._dtype if self._device != "cpu" else "fp32"}


class TensorRTQAHandler(QAHandler):
    """RunInference handler on a TensorRT (or TensorRT-RTX) engine, through ``engines.session``.

    The sidecar ``<engine_path>.json`` gives the plan before the engine is loaded (``buckets`` apply
    only without one). ``onnx_path`` + ``cache_dir``: build an engine (``engines.cache.ensure_engine``
    with ``build_options``) when the given one is missing or cannot run here. ``gpu_count`` > 1: each
    process (or, with ``inference_server``, each GPU's server) loads its engine on its round-robin GPU.
    """

    backend = "tensorrt"

    def __init__(
        self,
        engine_path: PathLike,
        *,
        onnx_path: PathLike | None = None,
        cache_dir: PathLike | None = None,
        library: str = "auto",
        contexts_per_profile: int = 1,
        gpu_count: int | None = None,
        build_options: Any = None,
        **options: Any,
    ) -> None:
        self._model_path = _checked_path("engine_path", engine_path)
        _check_positive_ints(gpu_count=gpu_count)
        if onnx_path is not None and cache_dir is None:
            raise ValueError("onnx_path needs cache_dir: the folder (local or gs://) that keeps engines built from it")
        self._rebuild_from = None if onnx_path is None else (  # (onnx_path, cache_dir)
            _checked_path("onnx_path", onnx_path), _checked_path("cache_dir", cache_dir))
        if not isinstance(library, str) or not library:
            raise ValueError(f"library must be a non-empty string such as 'auto', got {library!r}")
        _check_positive_ints(contexts_per_profile=contexts_per_profile, optional=False)
        super().__init__(**options)
        self._use_sidecar_profiles(self._model_path, options.get("max_model_batch"))
        self._library = library
        self._contexts_per_profile = contexts_per_profile
        self._gpu_count = gpu_count
        self._build_options = build_options

    def server_device(self) -> Optional[int]:
        from trt_handler.backends.devices import assign_device

        return assign_device(self._gpu_count)

    def load_runner(self) -> Any:
        """An EngineSession; an engine built from ``onnx_path`` when the given one is missing or
        cannot run here (the cause is logged), else that error."""
        from trt_handler.engines.session import EngineCompatibilityError

        path = self._model_path
        try:
            if _FS.exists(path):
                return self._session(path)
            cause = f"engine {path} does not exist"
        except EngineCompatibilityError as e:
            if self._rebuild_from is None:
                raise
            cause = f"engine {path} cannot run here ({getattr(e, 'cause', 'unknown')}: {e})"
        if self._rebuild_from is None:
            raise FileNotFoundError(
                f"TensorRT engine {path} does not exist; build it with `python -m trt_handler.engines.build`, "
                "or pass onnx_path= and cache_dir= so the handler builds one on the worker"
            )
        from trt_handler.engines.cache import ensure_engine

        onnx, cache = _bundle_onnx(self._rebuild_from[0]), self._rebuild_from[1]
        LOGGER.warning("%s; using an engine built from %s (cache %s) instead", cause, onnx, cache)
        return self._session(str(ensure_engine(onnx, cache, self._build_options)))

    def _session(self, path: str) -> Any:
        """EngineSession over the engine's bytes (gs:// works) and its sidecar (explains version/GPU mismatches)."""
        from trt_handler.backends.devices import ENV_VAR, assign_device
        from trt_handler.engines.session import EngineSession

        # several GPUs, or a GPU's inference server (started with its GPU in ENV_VAR): a round-robin or given GPU
        spread = (self._gpu_count or 0) > 1 or bool(os.environ.get(ENV_VAR))
        device = assign_device(self._gpu_count) if spread else None
        return EngineSession(_read_bytes(path), library=self._library, contexts_per_profile=self._contexts_per_profile,
                             sidecar=read_sidecar(path), device=device)

    def _plan_for(self, runner: Any) -> BatchPlan:
        get_profiles = getattr(runner, "get_profiles", None)
        profiles = get_profiles() if get_profiles is not None else None
        return dataclasses.replace(self.plan, profiles=tuple(profiles)) if profiles else self.plan

    def _use_sidecar_profiles(self, engine: str, asked: int | None = None) -> None:
        """The profiles of the engine's sidecar (if it has one) replace the plan, ``asked`` rows per call at most."""
        profiles = read_engine_profiles(engine)
        if profiles:
            engine_max = max(p.max_batch for p in profiles)
            if asked is not None and asked > engine_max:
                raise ValueError(
                    f"max_model_batch={asked} exceeds the largest batch of engine {engine} ({engine_max}, from its "
                    ".json sidecar); leave it unset to use the engine's, or rebuild with a larger max batch"
                )
            self.plan = dataclasses.replace(self.plan, profiles=tuple(profiles), max_batch=asked or engine_max)

    def update_model_path(self, model_path: str | None = None) -> None:
        """A new engine: its sidecar's profiles replace the plan before it is loaded."""
        if model_path:
            self._use_sidecar_profiles(_checked_path("model_path", model_path))
            super().update_model_path(model_path)

    def model_metadata(self) -> dict[str, Any]:
        return engine_metadata(self._model_path)

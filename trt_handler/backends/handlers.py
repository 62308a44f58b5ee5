"""Beam RunInference model handlers for BERT QA: TensorRT engines, ONNX Runtime and PyTorch.

Every handler takes :class:`~trt_handler.qa.types.QuestionWindows` elements (one question with
all its windows) and returns ``PredictionResult(example=question, inference=outcome,
model_id=...)``, where the outcome is the question's :class:`~trt_handler.qa.types.Answer`, or
the exception that question alone raised (its logits were not finite, say). What the handlers
share lives in :class:`QAHandler`: the batch is answered by
:func:`trt_handler.answer_batch.answer_batch`, the same function evaluation and the GPU check
call, so nothing after RunInference has to put a question back together. The backends differ
only in how the model is loaded and where its profiles come from (the thin-adapter pattern of
Beam's own per-framework handlers).

Batches are sized by window count: ``BatchElements`` gets ``element_size_fn`` = windows per
question and ``max_batch_size`` = windows per Beam batch. The planner then splits the batch into
model calls that fit the profiles, whatever BatchElements handed over (its streaming path counts
elements, not sizes).

Heavy imports (onnxruntime, tensorrt, cuda, torch) happen in ``load_model``, so a pipeline can be
built and submitted from a machine that has none of them.
"""

from __future__ import annotations

import logging
import os
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from trt_handler.answer_batch import DEFAULT_BATCH_WINDOWS, BatchPlan, ModelCall, Runner, answer_batch
from trt_handler.engines.profiles import DEFAULT_TOKEN_BUDGET, ProfileSpec
from trt_handler.engines.sidecar import read_engine_profiles, read_sidecar
from trt_handler.qa.answers import AnswerConfig, Provenance, with_provenance
from trt_handler.qa.batching import DEFAULT_BUCKETS, validate_buckets
from trt_handler.qa.types import QuestionWindows

if TYPE_CHECKING:
    from trt_handler.backends.onnx_runner import OnnxRunner

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
_BUNDLE_ONNX = "model.onnx"  # same name as trt_handler.engines.export.BUNDLE_ONNX (not imported: no torch path)
_BUNDLE_META = "export.json"  # same as trt_handler.engines.export.BUNDLE_META
THRESHOLD_KEY = "null_threshold"  # where --eval --save-threshold keeps the learned threshold (export.json / sidecar)
SHA_PREFIX = 12  # hex digits of a model's sha256 written on every answer row

RunnerT = TypeVar("RunnerT", bound=Runner)


def question_size(element: Any) -> int:
    """Windows of a question: BatchElements' ``element_size_fn``, so batches are sized by model
    rows, not questions. Module level, so it pickles by reference."""
    if isinstance(element, QuestionWindows):
        return len(element.windows)
    raise TypeError(
        f"expected QuestionWindows, got {type(element).__name__}; make them with "
        "trt_handler.qa.windows.WindowMaker.questions before RunInference"
    )


class _CallMetrics:
    """Beam metrics per model call (units in the names, as Beam's own), in one namespace for all
    backends, plus what a GPU operator reads from the model itself every ``STATE_EVERY`` batches:
    time waited for a free execution context (engines) and GPU memory in use. Attributes are Any:
    Beam's metric methods are unannotated."""

    STATE_EVERY = 16

    def __init__(self, backend: str) -> None:
        ns = METRICS_NAMESPACE
        self.context_wait: Any = Metrics.gauge(ns, f"{backend}_context_wait_micro_secs_total")
        self.max_context_wait: Any = Metrics.gauge(ns, f"{backend}_context_wait_micro_secs_max")
        self.gpu_memory: Any = Metrics.gauge(ns, f"{backend}_gpu_memory_used_bytes")
        self._batches = 0
        self.batch_size: Any = Metrics.distribution(ns, f"{backend}_model_batch_size")
        self.padded_tokens: Any = Metrics.distribution(ns, f"{backend}_model_padded_tokens")
        self.real_tokens: Any = Metrics.distribution(ns, f"{backend}_model_real_tokens")
        self.latency: Any = Metrics.distribution(ns, f"{backend}_model_latency_micro_secs")
        self.calls: Any = Metrics.counter(ns, f"{backend}_model_calls")
        self.windows: Any = Metrics.counter(ns, f"{backend}_model_windows")

    def __call__(self, call: ModelCall, real_tokens: int, elapsed_us: int) -> None:
        self.batch_size.update(call.rows)
        self.padded_tokens.update(call.rows * call.seq_len)
        self.real_tokens.update(real_tokens)
        self.latency.update(int(elapsed_us))
        self.calls.inc()
        self.windows.inc(len(call.indices))

    def model_state(self, model: Any) -> None:
        """Read the model's own counters (``stats()``, ``gpu_memory()``) now and then: through
        Beam's cross-process proxy each read is a round trip."""
        self._batches += 1
        if self._batches % self.STATE_EVERY != 1:
            return
        stats = getattr(model, "stats", None)
        if callable(stats):
            values = stats()
            self.context_wait.set(int(values.get("context_wait_us", 0)))
            self.max_context_wait.set(int(values.get("max_context_wait_us", 0)))
        memory = getattr(model, "gpu_memory", None)
        if callable(memory):
            info = memory()
            if info:
                self.gpu_memory.set(int(info["used_bytes"]))


class QAHandler(ModelHandler[QuestionWindows, PredictionResult, RunnerT]):
    """What every QA handler shares: batching by window count, planning, answering, metrics.

    Subclasses provide ``load_model``, ``backend`` and, for engines, ``_runtime_profiles``.

    Args (keyword-only, shared by all backends):
        buckets: sequence-length buckets when the model has no profiles of its own (ONNX Runtime,
            PyTorch); one profile per bucket.
        max_model_batch: rows per model call at most (default: what the profiles allow).
        max_tokens: per-call token budget for backends without profiles (rows = budget // bucket,
            rounded down to a multiple of 8, capped by max_model_batch): the engine builder's
            default plan; None: every bucket gets max_model_batch (64) rows.
        max_batch_windows / min_batch_windows: BatchElements' batch size, counted in windows.
        pad_to: "longest" (pad a call to its longest window, rounded up to 8) or "bucket".
        answer_config: n-best, max answer length, no-answer threshold.
        max_batch_duration_secs: streaming: BatchElements buffers across bundles for this long.
    """

    backend = "qa"

    def __init__(
        self,
        *,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        max_model_batch: Optional[int] = None,
        max_tokens: Optional[int] = DEFAULT_TOKEN_BUDGET,
        max_batch_windows: int = DEFAULT_BATCH_WINDOWS,
        min_batch_windows: Optional[int] = None,
        pad_to: str = "longest",
        answer_config: AnswerConfig = AnswerConfig(),
        max_batch_duration_secs: Optional[float] = None,
        large_model: bool = False,
        model_copies: Optional[int] = None,
        profiles: Optional[Sequence[ProfileSpec]] = None,
        threshold_source: str = "config",
    ) -> None:
        kwargs: Dict[str, Any] = {"large_model": large_model}
        if model_copies is not None:
            _check_positive_int("model_copies", model_copies)
            kwargs["model_copies"] = model_copies
        super().__init__(**kwargs)
        _check_positive_int("max_batch_windows", max_batch_windows)
        if max_model_batch is not None:
            _check_positive_int("max_model_batch", max_model_batch)
        if min_batch_windows is not None:
            _check_positive_int("min_batch_windows", min_batch_windows)
            if min_batch_windows > max_batch_windows:
                raise ValueError(f"min_batch_windows ({min_batch_windows}) must not exceed max_batch_windows "
                                 f"({max_batch_windows})")
        if max_tokens is not None:
            _check_positive_int("max_tokens", max_tokens)
        if max_batch_duration_secs is not None and not max_batch_duration_secs > 0:
            raise ValueError(f"max_batch_duration_secs must be positive or None, got {max_batch_duration_secs!r}")
        if not isinstance(answer_config, AnswerConfig):
            raise ValueError(f"answer_config must be a trt_handler.qa.answers.AnswerConfig, got {answer_config!r}")
        if profiles:
            self._plan = BatchPlan(tuple(profiles), max_batch=max_model_batch or max(p.max_batch for p in profiles),
                                   pad_to=pad_to)
        else:
            self._plan = BatchPlan.for_buckets(_checked_buckets(buckets), max_model_batch, max_tokens=max_tokens,
                                               pad_to=pad_to)
        self._max_batch_windows = max_batch_windows
        self._min_batch_windows = min_batch_windows if min_batch_windows is not None else max_batch_windows
        self._max_batch_duration_secs = max_batch_duration_secs
        if threshold_source not in ("config", "flag", "model"):
            raise ValueError(f"threshold_source must be 'config', 'flag' or 'model', got {threshold_source!r}")
        self._answer_config = answer_config
        self._base_threshold = answer_config.null_threshold
        self._threshold_source = threshold_source
        self._provenance: Optional[Provenance] = None
        self._metrics: Optional[_CallMetrics] = None

    @property
    def plan(self) -> BatchPlan:
        return self._plan

    @property
    def buckets(self) -> Tuple[int, ...]:
        return self._plan.buckets

    @property
    def answer_config(self) -> AnswerConfig:
        return self._answer_config

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        """Batches of questions whose windows add up to ``max_batch_windows`` (a fixed size by
        default: min = max, so the GPU sees full batches; partial ones leave at bundle end)."""
        kwargs: Dict[str, Any] = {
            "min_batch_size": self._min_batch_windows,
            "max_batch_size": self._max_batch_windows,
            "element_size_fn": question_size,
        }
        if self._max_batch_duration_secs is not None:
            kwargs["max_batch_duration_secs"] = self._max_batch_duration_secs
        return kwargs

    def validate_inference_args(self, inference_args: Optional[Dict[str, Any]]) -> None:
        if inference_args:
            raise ValueError(
                f"inference_args {sorted(inference_args)} were given, but the QA handlers take none: "
                "configure them through the handler's constructor"
            )

    def get_num_bytes(self, batch: Sequence[QuestionWindows]) -> int:
        """Bytes of the windows' arrays (what the handler really moves), not of their pickles."""
        return sum(
            w.input_ids.nbytes + w.token_type_ids.nbytes + w.offsets.nbytes + w.is_context.nbytes
            + w.max_context.nbytes
            for q in batch for w in q.windows
        )

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def _runtime_profiles(self, model: RunnerT) -> Optional[List[ProfileSpec]]:
        """Profiles the loaded model reports (an engine's own); None keeps the handler's plan."""
        return None

    def _plan_for(self, model: RunnerT) -> BatchPlan:
        profiles = self._runtime_profiles(model)
        if profiles and tuple(profiles) != self._plan.profiles:
            return BatchPlan(tuple(profiles), max_batch=self._plan.max_batch, pad_to=self._plan.pad_to)
        return self._plan

    def model_label(self) -> str:
        """Which model produced an answer (``PredictionResult.model_id``)."""
        return self.backend

    def model_metadata(self) -> Dict[str, Any]:
        """What the current model's own files record: ``sha256``, ``precision`` and the learned
        ``null_threshold`` (None each when not recorded). Backends read their sidecar / bundle."""
        return {}

    def provenance(self) -> Provenance:
        """The :class:`~trt_handler.qa.answers.Provenance` of the current model, read once per
        model (at the first batch and again after ``update_model_path``). With
        ``threshold_source="model"`` the threshold saved with the model (``--eval --save-threshold``)
        replaces the configured one; a model without one keeps the configured threshold."""
        if self._provenance is None:
            meta = self.model_metadata()
            threshold, source = self._base_threshold, self._threshold_source
            if source == "model":
                saved = meta.get("null_threshold")
                if saved is None:
                    source = "default" if threshold == 0.0 else "config"
                else:
                    threshold = float(saved)
            if threshold != self._answer_config.null_threshold:
                from dataclasses import replace

                self._answer_config = replace(self._answer_config, null_threshold=threshold)
            sha = meta.get("sha256")
            self._provenance = Provenance(
                model_id=self.model_label(), backend=self.backend,
                model_sha256=sha[:SHA_PREFIX] if isinstance(sha, str) and sha else None,
                precision=meta.get("precision"), null_threshold=threshold, threshold_source=source)
        return self._provenance

    def _model_changed(self) -> None:
        """Forget what was read about the previous model (``update_model_path`` calls it)."""
        self._provenance = None

    def run_inference(
        self,
        batch: Sequence[QuestionWindows],
        model: RunnerT,
        inference_args: Optional[Dict[str, Any]] = None,
    ) -> Iterable[PredictionResult]:
        """One PredictionResult per question, in input order; a question's own failure is its
        outcome, a failure of the model call raises (and Beam dead-letters the batch)."""
        self.validate_inference_args(inference_args)
        questions = list(batch)
        if self._metrics is None:
            self._metrics = _CallMetrics(self.backend)
        provenance = self.provenance()  # first: it may set the model's learned threshold
        outcomes = answer_batch(questions, model, self._plan_for(model), self._answer_config, self._metrics)
        self._metrics.model_state(model)
        label = provenance.model_id
        make: Any = PredictionResult  # Beam's __new__ is unannotated; Any keeps strict mypy quiet
        return [make(q, outcome if isinstance(outcome, Exception) else with_provenance(outcome, provenance), label)
                for q, outcome in zip(questions, outcomes)]


def _checked_buckets(buckets: Sequence[int]) -> Tuple[int, ...]:
    if isinstance(buckets, (str, bytes)) or not all(isinstance(b, (int, np.integer)) for b in buckets):
        raise ValueError(f"buckets must be a sequence of ints like (128, 256, 384), got {buckets!r}")
    return tuple(int(b) for b in validate_buckets(buckets))  # its errors name "buckets" already


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _checked_path(name: str, value: Any) -> str:
    if hasattr(value, "__fspath__"):
        value = str(value.__fspath__())
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty path string, got {value!r}")
    return value


# Beam's FileSystems methods are unannotated; calling them through Any keeps strict mypy quiet.
_FS: Any = FileSystems


def _read_bytes(path: str) -> bytes:
    with _FS.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        data: bytes = f.read()
    return data


def _exists(path: str) -> bool:
    return bool(_FS.exists(path))


def _is_local(path: str) -> bool:
    return _FS.get_scheme(path) in (None, "file")


def _bundle_onnx(path: str) -> str:
    """``path`` itself when it is an ``.onnx`` file, else the ``model.onnx`` of the bundle folder ``path``."""
    return path if path.endswith(".onnx") else str(_FS.join(path, _BUNDLE_ONNX))


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    """A JSON object file (local or gs://), None when missing or not a JSON object."""
    import json

    try:
        if not _exists(path):
            return None
        meta = json.loads(_read_bytes(path).decode("utf-8"))
    except (OSError, ValueError) as err:
        LOGGER.warning("cannot read %s (%s): answers will not carry its provenance", path, err)
        return None
    return meta if isinstance(meta, dict) else None


def _saved_threshold(meta: Optional[Mapping[str, Any]]) -> Optional[float]:
    """The learned no-answer threshold recorded in an export.json / sidecar, if any."""
    entry = (meta or {}).get(THRESHOLD_KEY)
    value = entry.get("value") if isinstance(entry, dict) else entry
    if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
        return float(value)
    return None


def bundle_metadata(model_path: str) -> Dict[str, Any]:
    """sha256, precision and learned null_threshold of an ONNX bundle (folder or its .onnx file),
    from its export.json (local or gs://); None each when there is none."""
    if model_path.endswith(".onnx"):
        folder = model_path[:model_path.rfind("/")] if "/" in model_path else "."
    else:
        folder = model_path.rstrip("/")
    meta = _read_json(str(_FS.join(folder, _BUNDLE_META)))
    if meta is None:
        return {"sha256": None, "precision": None, "null_threshold": None}
    quant = meta.get("quantization")
    precision = meta.get("precision") or ("int8-weight-only" if isinstance(quant, dict) else "fp32")
    return {"sha256": meta.get("sha256"), "precision": precision, "null_threshold": _saved_threshold(meta)}


def engine_metadata(engine_path: str) -> Dict[str, Any]:
    """sha256, precision and learned null_threshold of an engine, from its sidecar."""
    meta = read_sidecar(engine_path)
    if meta is None:
        return {"sha256": None, "precision": None, "null_threshold": None}
    return {"sha256": meta.get("engine_sha256"), "precision": meta.get("precision"),
            "null_threshold": _saved_threshold(meta)}


# --------------------------------------------------------------------------------------------
# ONNX Runtime


class OnnxRuntimeQAHandler(QAHandler["OnnxRunner"]):
    """RunInference handler on ONNX Runtime (CPU): the reference backend and the no-GPU path.

    Args:
        onnx_path_or_bundle: a model bundle folder (``model.onnx`` inside) or an ``.onnx`` file;
            local or anything Beam's FileSystems reads (gs://). Remote models are read into memory,
            so they must be single-file (no external data, i.e. < 2 GB).
        intra_op_threads: ONNX Runtime threads per call (None: its default, one per core).
        **options: :class:`QAHandler`'s.

    The session is loaded once per worker process and shared by its threads (not across
    processes: it is CPU memory, and each process wants its own threads anyway).
    """

    backend = "onnx"

    def __init__(
        self,
        onnx_path_or_bundle: Union[str, os.PathLike[str]],
        *,
        intra_op_threads: Optional[int] = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._model_path = _checked_path("onnx_path_or_bundle", onnx_path_or_bundle)
        if intra_op_threads is not None:
            _check_positive_int("intra_op_threads", intra_op_threads)
        self._intra_op_threads = intra_op_threads

    @property
    def onnx_path(self) -> str:
        """The ``.onnx`` file this handler loads (``<bundle>/model.onnx`` for a bundle)."""
        return _bundle_onnx(self._model_path)

    def load_model(self) -> OnnxRunner:
        from trt_handler.backends.onnx_runner import OnnxRunner

        path = self.onnx_path
        if _is_local(path):
            return OnnxRunner(path, intra_op_threads=self._intra_op_threads)
        if not _exists(path):
            raise FileNotFoundError(
                f"ONNX model {path} does not exist; upload a model bundle (folder with {_BUNDLE_ONNX}) "
                "made by `python -m trt_handler.engines.export`, or fix the path"
            )
        return OnnxRunner(_read_bytes(path), intra_op_threads=self._intra_op_threads)

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        """A new bundle (folder or its model.onnx; WatchFilePattern's side input): the next batch
        runs on it and its answers carry its id, sha256 and learned threshold."""
        if model_path:
            self._model_path = _checked_path("model_path", model_path)
            self._model_changed()

    def model_label(self) -> str:
        return self._model_path

    def model_metadata(self) -> Dict[str, Any]:
        return bundle_metadata(self._model_path)

    def share_model_across_processes(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"OnnxRuntimeQAHandler({self._model_path!r}, buckets={self.buckets})"


# --------------------------------------------------------------------------------------------
# PyTorch


class TorchQAHandler(QAHandler[Any]):
    """RunInference handler on PyTorch: a Hugging Face QA checkpoint folder on CUDA (fp16/bf16,
    SDPA attention) or on the CPU. It runs where TensorRT cannot (the lent H200, a laptop), with
    the same planning and answers as the engine handler; its figures are PyTorch figures.

    Args:
        model_dir: local Hugging Face checkpoint folder (config.json, weights, tokenizer).
        device: "cuda", "cuda:N", "cpu", or "auto" (a GPU of this host chosen per process by
            ``backends.devices.assign_device``, so every GPU of a worker is used).
        dtype: "fp16", "bf16" or "fp32".
        gpu_count: GPUs per worker to spread processes over (None: all visible).
        large_model: share one model per GPU across the worker's processes (Beam's
            MultiProcessShared) instead of one copy per process.
        **options: :class:`QAHandler`'s.
    """

    backend = "torch"

    def __init__(
        self,
        model_dir: Union[str, os.PathLike[str]],
        *,
        device: str = "auto",
        dtype: str = "fp16",
        gpu_count: Optional[int] = None,
        large_model: bool = False,
        **options: Any,
    ) -> None:
        if dtype not in ("fp16", "bf16", "fp32"):
            raise ValueError(f"dtype must be fp16, bf16 or fp32, got {dtype!r}")
        if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        if gpu_count is not None:
            _check_positive_int("gpu_count", gpu_count)
        super().__init__(large_model=large_model, **options)
        self._model_dir = _checked_path("model_dir", model_dir)
        self._device = device
        self._dtype = dtype
        self._gpu_count = gpu_count

    def resolved_device(self) -> str:
        """The device this process loads onto."""
        if self._device != "auto":
            return self._device
        from trt_handler.backends.devices import assign_device, visible_gpu_count

        if visible_gpu_count() == 0:
            return "cpu"
        return f"cuda:{assign_device(self._gpu_count)}"

    def load_model(self) -> Any:
        from trt_handler.backends.torch_runner import TorchRunner

        device = self.resolved_device()
        dtype = "fp32" if device == "cpu" else self._dtype
        runner = TorchRunner(self._model_dir, device=device, dtype=dtype)
        runner.warm_up([(p.max_batch, p.max_seq) for p in self._plan.profiles])
        LOGGER.info("PyTorch QA model %s loaded on %s (%s)", self._model_dir, device, dtype)
        return runner

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        if model_path:
            self._model_dir = _checked_path("model_path", model_path)
            self._model_changed()

    def model_label(self) -> str:
        return self._model_dir

    def model_metadata(self) -> Dict[str, Any]:
        """A checkpoint records no sha256; precision is the dtype this process runs in; a learned
        threshold may sit in the folder's export.json (a bundle converted back to a checkpoint)."""
        meta = bundle_metadata(self._model_dir)
        return {"sha256": meta["sha256"], "precision": self._dtype if self._device != "cpu" else "fp32",
                "null_threshold": meta["null_threshold"]}

    def __repr__(self) -> str:
        return f"TorchQAHandler({self._model_dir!r}, device={self._device!r}, dtype={self._dtype!r})"


# --------------------------------------------------------------------------------------------
# TensorRT


class TensorRTQAHandler(QAHandler[Any]):
    """RunInference handler on a TensorRT (or TensorRT-RTX) engine, through ``engines.session``.

    Args:
        engine_path: serialized engine, local or gs:// (read through Beam's FileSystems). Its
            sidecar ``<engine_path>.json`` (written by the builder) is the one source of the
            batch plan: profiles (sequence ranges and batch limits).
        onnx_path: optional ONNX file or bundle to build from when the engine can't run on this
            worker (wrong GPU, library version, missing file); needs ``cache_dir``.
        cache_dir: where ``engines.cache.ensure_engine`` keeps engines built from ``onnx_path``.
        library: "auto", or the engine library to force; passed to ``EngineSession``.
        contexts_per_profile: execution contexts per profile, so that Beam threads run concurrently.
        large_model: True shares one engine across the worker's SDK processes (Beam's
            MultiProcessShared: one GPU); False loads one per process.
        gpu_count: GPUs per worker. Above 1 each process loads its engine on the GPU that
            ``backends.devices.assign_device`` gives it (round-robin), so every GPU is used; that
            needs large_model=False (one shared engine lives on one GPU), and is refused otherwise.
        build_options: ``engines.build.BuildOptions`` for a rebuild (None: ensure_engine's default).
        **options: :class:`QAHandler`'s (``buckets`` apply only when the engine has no sidecar).

    ``load_model`` returns an ``EngineSession``. At run time the engine's own profiles decide
    padding and splitting; through Beam's cross-process proxy (which only forwards method calls)
    its ``get_profiles()`` method does.
    """

    backend = "tensorrt"

    def __init__(
        self,
        engine_path: Union[str, os.PathLike[str]],
        *,
        onnx_path: Optional[Union[str, os.PathLike[str]]] = None,
        cache_dir: Optional[Union[str, os.PathLike[str]]] = None,
        library: str = "auto",
        contexts_per_profile: int = 1,
        large_model: bool = True,
        gpu_count: Optional[int] = None,
        build_options: Any = None,
        **options: Any,
    ) -> None:
        engine = _checked_path("engine_path", engine_path)
        if gpu_count is not None:
            _check_positive_int("gpu_count", gpu_count)
            if gpu_count > 1 and large_model:
                raise ValueError(
                    f"gpu_count={gpu_count} with large_model=True would use one GPU: a shared engine lives on one "
                    "GPU. Pass large_model=False so each SDK process loads its engine on its own GPU (round-robin), "
                    "or gpu_count=1"
                )
        onnx = None if onnx_path is None else _checked_path("onnx_path", onnx_path)
        cache = None if cache_dir is None else _checked_path("cache_dir", cache_dir)
        if onnx is not None and cache is None:
            raise ValueError(
                "onnx_path needs cache_dir: the folder (local or gs://) where engines built from it are kept"
            )
        if not isinstance(library, str) or not library:
            raise ValueError(f"library must be a non-empty string such as 'auto', got {library!r}")
        _check_positive_int("contexts_per_profile", contexts_per_profile)
        profiles = read_engine_profiles(engine)
        if profiles:
            engine_max = max(p.max_batch for p in profiles)
            asked = options.get("max_model_batch")
            if asked is not None and asked > engine_max:
                raise ValueError(
                    f"max_model_batch={asked} exceeds the largest batch of engine {engine} ({engine_max}, from its "
                    ".json sidecar); leave it unset to use the engine's, or rebuild with a larger max batch"
                )
            options.setdefault("max_model_batch", engine_max)
            options["profiles"] = profiles
        super().__init__(large_model=bool(large_model), **options)
        self._engine_path = engine
        self._onnx_path = onnx
        self._cache_dir = cache
        self._library = library
        self._contexts_per_profile = contexts_per_profile
        self._gpu_count = gpu_count
        self._build_options = build_options

    @property
    def engine_path(self) -> str:
        return self._engine_path

    def load_model(self) -> Any:
        from trt_handler.engines.session import EngineCompatibilityError

        path = self._engine_path
        if _exists(path):
            try:
                return self._session(path)
            except EngineCompatibilityError as e:
                if self._onnx_path is None:
                    raise
                cause = f"engine {path} cannot run here ({getattr(e, 'cause', 'unknown')}: {e})"
        elif self._onnx_path is None:
            raise FileNotFoundError(
                f"TensorRT engine {path} does not exist; build it with `python -m trt_handler.engines.build`, "
                "or pass onnx_path= and cache_dir= so the handler builds one on the worker"
            )
        else:
            cause = f"engine {path} does not exist"
        return self._session(self._rebuild(cause))

    def _session(self, path: str) -> Any:
        """EngineSession over the engine's bytes (read through FileSystems, so gs:// works), given
        its sidecar so version/GPU mismatches are explained before deserializing."""
        from trt_handler.engines.session import EngineSession

        kwargs: Dict[str, Any] = {}
        if self._gpu_count is not None and self._gpu_count > 1:
            from trt_handler.backends.devices import assign_device

            kwargs["device"] = assign_device(self._gpu_count)
        return EngineSession(
            _read_bytes(path), library=self._library, contexts_per_profile=self._contexts_per_profile,
            sidecar=read_sidecar(path), **kwargs,
        )

    def _rebuild(self, cause: str) -> str:
        """Engine path from ``ensure_engine`` (cached per GPU, library version, precision, ONNX), logging why."""
        from trt_handler.engines.cache import ensure_engine

        if self._onnx_path is None or self._cache_dir is None:  # checked in __init__
            raise RuntimeError(cause)
        onnx = _bundle_onnx(self._onnx_path)
        LOGGER.warning("%s; using an engine built from %s (cache %s) instead", cause, onnx, self._cache_dir)
        return str(ensure_engine(onnx, self._cache_dir, self._build_options))

    def _runtime_profiles(self, model: Any) -> Optional[List[ProfileSpec]]:
        # An EngineSession has the .profiles property; Beam's cross-process proxy forwards only
        # methods, so there get_profiles() is used.
        value = getattr(model, "profiles", None)
        if value is None:
            value = getattr(model, "get_profiles", None)
        if callable(value):
            value = value()
        if value:
            return [p if isinstance(p, ProfileSpec) else ProfileSpec(**p) for p in value]
        return None

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        """A new engine (WatchFilePattern's side input): its sidecar's profiles replace the plan
        before it is loaded, and its answers carry its id, sha256, precision and threshold."""
        if model_path:
            path = _checked_path("model_path", model_path)
            profiles = read_engine_profiles(path)
            if profiles:
                self._plan = BatchPlan(tuple(profiles), max_batch=max(p.max_batch for p in profiles),
                                       pad_to=self._plan.pad_to)
            self._engine_path = path
            self._model_changed()

    def model_label(self) -> str:
        return self._engine_path

    def model_metadata(self) -> Dict[str, Any]:
        return engine_metadata(self._engine_path)

    def __repr__(self) -> str:
        return f"TensorRTQAHandler({self._engine_path!r}, buckets={self.buckets})"

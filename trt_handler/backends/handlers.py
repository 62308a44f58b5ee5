"""Beam RunInference model handlers for BERT QA windows: TensorRT engines and ONNX Runtime.

Both handlers take :class:`~trt_handler.qa.types.Window` elements (wrap them in
``KeyedModelHandler`` for ``(question_id, Window)`` pairs) and return
``PredictionResult(example=window, inference=WindowLogits)`` with logits cut to the window's
length. What they share lives in :class:`WindowQAHandler`: a Beam batch is grouped by sequence
bucket, each group is padded to its bucket (or to the engine profile's opt length), split to the
max batch, run, and the results come back in input order. The backends differ only in how the
model is loaded and where the profiles come from.

Heavy imports (onnxruntime, tensorrt, cuda) happen in ``load_model``, so a pipeline can be built
and submitted from a machine that has none of them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Protocol,
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

from trt_handler.qa.batching import DEFAULT_BUCKETS, chunks, group_by_bucket, pad_windows, validate_buckets
from trt_handler.engines.profiles import ProfileSpec, choose_profile
from trt_handler.qa.types import ModelBatch, Window, WindowLogits

if TYPE_CHECKING:
    from trt_handler.backends.onnx_runner import OnnxRunner

__all__ = [
    "ModelCall",
    "OnnxRuntimeQAHandler",
    "QASession",
    "TensorRTQAHandler",
    "WindowQAHandler",
    "beam_bucket_boundaries",
    "plan_model_calls",
    "read_engine_profiles",
    "window_length",
]

LOGGER = logging.getLogger(__name__)

_BUNDLE_ONNX = "model.onnx"  # same name as trt_handler.engines.export.BUNDLE_ONNX (not imported: no torch path)


class QASession(Protocol):
    """What a handler's model is: OnnxRunner, EngineSession, or a proxy of one (Beam's shared model)."""

    def run(self, batch: ModelBatch) -> Tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]: ...


SessionT = TypeVar("SessionT", bound=QASession)


# --------------------------------------------------------------------------------------------
# pure planning helpers (no Beam, no model)


def window_length(element: Any) -> int:
    """Token count of a Window or of a ``(key, Window)`` pair: BatchElements' ``length_fn``.

    A module-level function, not a lambda, so it pickles by reference; it accepts pairs because
    ``KeyedModelHandler`` hands the unkeyed handler's batching kwargs to a BatchElements that sees
    the keyed elements.
    """
    if isinstance(element, Window):
        return element.length
    if isinstance(element, tuple) and len(element) == 2 and isinstance(element[1], Window):
        return element[1].length
    raise TypeError(
        f"expected a Window or a (key, Window) pair, got {type(element).__name__}; "
        "make features with trt_handler.qa.windows.WindowMaker before RunInference"
    )


def beam_bucket_boundaries(buckets: Sequence[int]) -> List[int]:
    """BatchElements ``bucket_boundaries`` that match our buckets.

    Ours are upper-inclusive (a 128-token window fits bucket 128); Beam's are lower-inclusive
    (``bisect_right``: boundaries [129, 257] give (-inf, 129), [129, 257), [257, inf)). So each
    boundary is bucket + 1; the last one sends over-long windows to their own Beam bucket, where
    they fail alone with a clear error instead of failing a batch of good windows.
    """
    return [b + 1 for b in validate_buckets(buckets)]


@dataclass(frozen=True)
class ModelCall:
    """One padded model call: which windows (indices into the batch), padded to ``seq_len``,
    with ``rows`` >= len(indices) (extra filler rows when an engine profile's min batch needs them)."""

    indices: Tuple[int, ...]
    seq_len: int
    rows: int

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.rows, self.seq_len)


def plan_model_calls(
    windows: Sequence[Window],
    buckets: Sequence[int],
    max_batch: int,
    profiles: Optional[Sequence[ProfileSpec]] = None,
) -> List[ModelCall]:
    """Group windows by bucket, choose each group's padded length, and split it to the max batch.

    Without profiles (ONNX Runtime) a group is padded to its bucket. With engine profiles it is
    padded to the opt length of the profile its longest window fits (``profiles.padded_seq_for``'s
    rule) and split to that profile's max batch too. Calls come smallest bucket first; indices
    keep input order inside a call.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be positive, got {max_batch}")
    buckets = validate_buckets(buckets)
    _check_lengths(windows, buckets)
    calls: List[ModelCall] = []
    for bucket, idx in sorted(group_by_bucket(windows, buckets).items()):
        longest = max((windows[i] for i in idx), key=lambda w: w.length)
        seq, cap, min_rows = bucket, max_batch, 1
        if profiles:
            profile = _profile_for_seq(profiles, longest)
            seq = max(profile.opt_seq, longest.length)
            cap, min_rows = min(max_batch, profile.max_batch), profile.min_batch
        for part in chunks(len(idx), cap):
            members = tuple(idx[part])
            rows = max(len(members), min_rows)
            if profiles:
                choose_profile(profiles, rows, seq)  # raises, naming the profiles, if none accepts it
            calls.append(ModelCall(members, seq, rows))
    return calls


def _check_lengths(windows: Sequence[Window], buckets: Sequence[int]) -> None:
    for w in windows:
        if w.length > buckets[-1]:
            raise ValueError(
                f"window {w.example_id!r}#{w.window_index} has {w.length} tokens, more than the largest "
                f"bucket {buckets[-1]}; pass buckets that reach FeatureConfig.max_seq_length, or make "
                "windows with a smaller max_seq_length"
            )


def _profile_for_seq(profiles: Sequence[ProfileSpec], longest: Window) -> ProfileSpec:
    """The profile a group pads to: the smallest max_seq that holds its longest window."""
    seq = longest.length
    fitting = [p for p in profiles if p.min_seq <= seq <= p.max_seq]
    if not fitting:
        ranges = ", ".join(f"{p.min_seq}-{p.max_seq}" for p in profiles)
        raise ValueError(
            f"window {longest.example_id!r}#{longest.window_index} ({seq} tokens) fits no engine profile "
            f"(sequence ranges {ranges}); build the engine with profiles that cover the handler's buckets, "
            "or lower FeatureConfig.max_seq_length"
        )
    return min(fitting, key=lambda p: p.max_seq)


def _with_filler_rows(batch: ModelBatch, rows: int) -> ModelBatch:
    """Append rows holding one unmasked [PAD] token; their outputs are dropped. Not all-masked
    rows: attention that masks with -inf turns those into NaN, which is harmless but noisy."""
    b, s = batch.shape
    if rows <= b:
        return batch
    extra = rows - b
    mask = np.zeros((extra, s), dtype=np.int32)
    mask[:, 0] = 1
    zeros = np.zeros((extra, s), dtype=np.int32)
    return ModelBatch(
        np.concatenate([batch.input_ids, zeros]),
        np.concatenate([batch.attention_mask, mask]),
        np.concatenate([batch.token_type_ids, zeros]),
    )


# --------------------------------------------------------------------------------------------
# shared handler logic


class WindowQAHandler(ModelHandler[Window, PredictionResult, SessionT]):
    """What both handlers share: validation, batching kwargs, bucketed model calls, metrics.

    Subclasses provide ``load_model``, ``get_metrics_namespace`` and, for engines, ``_profiles``.
    """

    def __init__(
        self,
        *,
        buckets: Sequence[int],
        min_batch_size: int,
        max_batch_size: int,
        max_batch_duration_secs: Optional[float],
        large_model: bool,
    ) -> None:
        super().__init__(large_model=large_model)
        self._buckets = _checked_buckets(buckets)
        _check_positive_int("min_batch_size", min_batch_size)
        _check_positive_int("max_batch_size", max_batch_size)
        if min_batch_size > max_batch_size:
            raise ValueError(f"min_batch_size ({min_batch_size}) must not exceed max_batch_size ({max_batch_size})")
        if max_batch_duration_secs is not None and not max_batch_duration_secs > 0:
            raise ValueError(f"max_batch_duration_secs must be positive or None, got {max_batch_duration_secs!r}")
        self._min_batch_size = min_batch_size
        self._max_batch_size = max_batch_size
        self._max_batch_duration_secs = max_batch_duration_secs

    @property
    def buckets(self) -> Tuple[int, ...]:
        return self._buckets

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        """Batch sizes for BatchElements, and length bucketing so similar windows meet in a batch.

        Beam 2.77's BatchElements uses ``length_fn``/``bucket_boundaries`` only on its stateful
        path (when ``max_batch_duration_secs`` is set, the streaming case); the default batch path
        ignores them and ``run_inference`` buckets each batch itself either way.
        """
        kwargs: Dict[str, Any] = {
            "min_batch_size": self._min_batch_size,
            "max_batch_size": self._max_batch_size,
            "length_fn": window_length,
            "bucket_boundaries": beam_bucket_boundaries(self._buckets),
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

    def get_num_bytes(self, batch: Sequence[Window]) -> int:
        """Bytes of the windows' arrays (what the handler really moves), not of their pickles."""
        return sum(
            w.input_ids.nbytes + w.token_type_ids.nbytes + w.offsets.nbytes + w.is_context.nbytes
            + w.max_context.nbytes
            for w in batch
        )

    def _profiles(self, model: SessionT) -> Optional[List[ProfileSpec]]:
        """Engine profiles that decide padding and row counts; None pads to buckets (ONNX Runtime)."""
        return None

    def run_inference(
        self,
        batch: Sequence[Window],
        model: SessionT,
        inference_args: Optional[Dict[str, Any]] = None,
    ) -> Iterable[PredictionResult]:
        """Logits for each window, in input order, each a copy cut to the window's length."""
        self.validate_inference_args(inference_args)
        windows = list(batch)
        if not windows:
            return []
        calls = plan_model_calls(windows, self._buckets, self._max_batch_size, self._profiles(model))
        results: List[Optional[PredictionResult]] = [None] * len(windows)
        metrics = _CallMetrics(self.get_metrics_namespace())
        for call in calls:
            members = [windows[i] for i in call.indices]
            inputs = _with_filler_rows(pad_windows(members, call.seq_len), call.rows)
            t0 = time.perf_counter_ns()
            start, end = model.run(inputs)
            elapsed_us = (time.perf_counter_ns() - t0) // 1000
            start, end = _checked_logits(start, end, call.shape)
            for row, (i, w) in enumerate(zip(call.indices, members)):
                n = w.length
                logits = WindowLogits(np.array(start[row, :n], copy=True), np.array(end[row, :n], copy=True))
                results[i] = _prediction(w, logits)
            metrics.record(call, sum(w.length for w in members), elapsed_us)
        return [r for r in results if r is not None]


def _checked_logits(
    start: Any, end: Any, shape: Tuple[int, int]
) -> Tuple[np.ndarray[Any, np.dtype[np.float32]], np.ndarray[Any, np.dtype[np.float32]]]:
    s = np.asarray(start, dtype=np.float32)
    e = np.asarray(end, dtype=np.float32)
    if s.shape != shape or e.shape != shape:
        raise RuntimeError(
            f"the model returned logits of shapes {s.shape} and {e.shape} for an input of shape {shape}; "
            "the session must return float32 [batch, seq] start and end logits"
        )
    return s, e


def _prediction(window: Window, logits: WindowLogits) -> PredictionResult:
    make: Any = PredictionResult  # Beam's __new__ is unannotated; Any keeps strict mypy quiet
    result: PredictionResult = make(window, logits)
    return result


class _CallMetrics:
    """Beam metrics per model call, in the handler's namespace (units in the names, like Beam's).

    Attributes are Any: Beam's metric methods are unannotated.
    """

    def __init__(self, namespace: str) -> None:
        self.batch_size: Any = Metrics.distribution(namespace, "model_batch_size")
        self.padded_tokens: Any = Metrics.distribution(namespace, "model_padded_tokens")
        self.real_tokens: Any = Metrics.distribution(namespace, "model_real_tokens")
        self.latency: Any = Metrics.distribution(namespace, "model_latency_micro_secs")
        self.calls: Any = Metrics.counter(namespace, "model_calls")
        self.windows: Any = Metrics.counter(namespace, "model_windows")

    def record(self, call: ModelCall, real_tokens: int, elapsed_us: int) -> None:
        self.batch_size.update(call.rows)
        self.padded_tokens.update(call.rows * call.seq_len)
        self.real_tokens.update(real_tokens)
        self.latency.update(int(elapsed_us))
        self.calls.inc()
        self.windows.inc(len(call.indices))


def _checked_buckets(buckets: Sequence[int]) -> Tuple[int, ...]:
    if isinstance(buckets, (str, bytes)) or not all(isinstance(b, (int, np.integer)) for b in buckets):
        raise ValueError(f"buckets must be a sequence of ints like (128, 256, 384), got {buckets!r}")
    return tuple(int(b) for b in validate_buckets(buckets))  # its errors name "buckets" already


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# Beam's FileSystems methods are unannotated; calling them through Any keeps strict mypy quiet.
_FS: Any = FileSystems


def _read_bytes(path: str) -> bytes:
    with _FS.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        data: bytes = f.read()
    return data


def _exists(path: str) -> bool:
    return bool(_FS.exists(path))


def _join(base: str, name: str) -> str:
    return str(_FS.join(base, name))


def _is_local(path: str) -> bool:
    return _FS.get_scheme(path) in (None, "file")


def _bundle_onnx(path: str) -> str:
    """``path`` itself when it is an ``.onnx`` file, else the ``model.onnx`` of the bundle folder ``path``."""
    return path if path.endswith(".onnx") else _join(path, _BUNDLE_ONNX)


# --------------------------------------------------------------------------------------------
# ONNX Runtime


class OnnxRuntimeQAHandler(WindowQAHandler["OnnxRunner"]):
    """RunInference handler on ONNX Runtime (CPU): the reference backend and the no-GPU path.

    Args:
        onnx_path_or_bundle: a model bundle folder (``model.onnx`` inside) or an ``.onnx`` file;
            local or anything Beam's FileSystems reads (gs://). Remote models are read into memory,
            so they must be single-file (no external data, i.e. < 2 GB).
        buckets: sequence-length buckets; each batch is grouped and padded per bucket.
        min_batch_size, max_batch_size: BatchElements' range, and the largest ORT call.
        intra_op_threads: ONNX Runtime threads per call (None: its default, one per core).
        max_batch_duration_secs: set for streaming: BatchElements then buffers across bundles and
            keys by length bucket (its stateful path).

    The session is loaded once per worker process and shared by its threads (not across
    processes: it is CPU memory, and each process wants its own threads anyway).
    """

    def __init__(
        self,
        onnx_path_or_bundle: Union[str, os.PathLike[str]],
        *,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        min_batch_size: int = 1,
        max_batch_size: int = 64,
        intra_op_threads: Optional[int] = None,
        max_batch_duration_secs: Optional[float] = None,
    ) -> None:
        super().__init__(
            buckets=buckets, min_batch_size=min_batch_size, max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs, large_model=False,
        )
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
        if model_path:
            self._model_path = _checked_path("model_path", model_path)

    def get_metrics_namespace(self) -> str:
        return "OnnxBertQA"

    def share_model_across_processes(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"OnnxRuntimeQAHandler({self._model_path!r}, buckets={self._buckets})"


def _checked_path(name: str, value: Any) -> str:
    if hasattr(value, "__fspath__"):
        value = str(value.__fspath__())
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty path string, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# TensorRT


def _load_json(path: str) -> Any:
    """The JSON value in file ``path`` (read through FileSystems); ValueError when it is not JSON."""
    return json.loads(_read_bytes(path).decode("utf-8"))


def _read_sidecar(engine_path: str) -> Optional[Dict[str, Any]]:
    """The builder's ``<engine_path>.json`` as a dict, or None when absent or unreadable."""
    sidecar = engine_path + ".json"
    if not _exists(sidecar):
        return None
    try:
        meta = _load_json(sidecar)
    except ValueError as e:
        LOGGER.warning("ignoring engine sidecar %s: not JSON (%s)", sidecar, e)
        return None
    return meta if isinstance(meta, dict) else None


def read_engine_profiles(engine_path: str) -> Optional[List[ProfileSpec]]:
    """Profiles from the engine's JSON sidecar (``<engine_path>.json``, written by the builder);
    None when there is none. Raises ValueError when it exists but holds no valid profiles."""
    sidecar = engine_path + ".json"
    try:
        if not _exists(sidecar):
            return None
        meta = _load_json(sidecar)
        raw = meta["profiles"]
        profiles = [ProfileSpec(**{k: int(v) for k, v in p.items()}) for p in raw]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(
            f"engine sidecar {sidecar} is not valid ({type(e).__name__}: {e}); it needs a \"profiles\" list of "
            "{min_batch, opt_batch, max_batch, min_seq, opt_seq, max_seq} objects - rebuild the engine with "
            "`python -m trt_handler.engines.build` or delete the sidecar"
        ) from None
    if not profiles:
        raise ValueError(f"engine sidecar {sidecar} lists no profiles; rebuild the engine")
    return profiles


class TensorRTQAHandler(WindowQAHandler[QASession]):
    """RunInference handler on a TensorRT (or TensorRT-RTX) engine, through ``trt_handler.engines.session``.

    Args:
        engine_path: serialized engine, local or gs:// (read through Beam's FileSystems).
        onnx_path: optional ONNX file or bundle to build from when the engine can't run on this
            worker (wrong GPU, library version, missing file); needs ``cache_dir``.
        cache_dir: where ``engine_cache.ensure_engine`` keeps engines built from ``onnx_path``.
        library: "auto", or the engine library to force; passed to ``EngineSession``.
        min_batch_size, max_batch_size: BatchElements' range. By default they come from the engine's
            profiles, read from the sidecar ``<engine_path>.json`` when the handler is built (Beam
            asks for batching kwargs at pipeline construction, before any engine is loaded); without
            a sidecar, from these args, else 1 and 64. An explicit max above the engine's is an error.
        contexts_per_profile: execution contexts per profile, so that Beam threads run concurrently.
        large_model: True shares one engine per GPU across the worker's SDK processes (Beam's
            MultiProcessShared); False loads one per process.
        buckets: grouping buckets; default: the profiles' max_seq values, else (128, 256, 384).
        build_options: ``trt_handler.engines.build.BuildOptions`` for a rebuild (None: ensure_engine's default).
        max_batch_duration_secs: streaming; see OnnxRuntimeQAHandler.

    ``load_model`` returns a ``trt_handler.engines.session.EngineSession``. At run time the engine's own
    profiles decide padding and splitting; when the model is Beam's cross-process proxy (which
    only forwards method calls) the sidecar's profiles are used instead.
    """

    def __init__(
        self,
        engine_path: Union[str, os.PathLike[str]],
        *,
        onnx_path: Optional[Union[str, os.PathLike[str]]] = None,
        cache_dir: Optional[Union[str, os.PathLike[str]]] = None,
        library: str = "auto",
        min_batch_size: Optional[int] = None,
        max_batch_size: Optional[int] = None,
        contexts_per_profile: int = 1,
        large_model: bool = True,
        buckets: Optional[Sequence[int]] = None,
        build_options: Any = None,
        max_batch_duration_secs: Optional[float] = None,
    ) -> None:
        engine = _checked_path("engine_path", engine_path)
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
        lo, hi = _batch_range(profiles, min_batch_size, max_batch_size, engine)
        if buckets is None:
            buckets = sorted({p.max_seq for p in profiles}) if profiles else DEFAULT_BUCKETS
        super().__init__(
            buckets=buckets, min_batch_size=lo, max_batch_size=hi,
            max_batch_duration_secs=max_batch_duration_secs, large_model=bool(large_model),
        )
        self._engine_path = engine
        self._onnx_path = onnx
        self._cache_dir = cache
        self._library = library
        self._contexts_per_profile = contexts_per_profile
        self._sidecar_profiles = profiles
        self._build_options = build_options

    @property
    def engine_path(self) -> str:
        return self._engine_path

    def load_model(self) -> QASession:
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

    def _session(self, path: str) -> QASession:
        """EngineSession over the engine's bytes (read through FileSystems, so gs:// works), given
        its sidecar so version/GPU mismatches are explained before deserializing."""
        from trt_handler.engines.session import EngineSession

        session: QASession = EngineSession(
            _read_bytes(path), library=self._library, contexts_per_profile=self._contexts_per_profile,
            sidecar=_read_sidecar(path),
        )
        return session

    def _rebuild(self, cause: str) -> str:
        """Engine path from ``ensure_engine`` (cached per GPU, library version, precision, ONNX), logging why."""
        from trt_handler.engines.cache import ensure_engine

        assert self._onnx_path is not None and self._cache_dir is not None  # checked in __init__
        onnx = _bundle_onnx(self._onnx_path)
        LOGGER.warning("%s; using an engine built from %s (cache %s) instead", cause, onnx, self._cache_dir)
        return str(ensure_engine(onnx, self._cache_dir, self._build_options))

    def _profiles(self, model: QASession) -> Optional[List[ProfileSpec]]:
        # An EngineSession has the .profiles property; Beam's cross-process proxy forwards only
        # methods, so there a get_profiles() method is used if the session has one, else the
        # sidecar's profiles stand in.
        value = getattr(model, "profiles", None)
        if value is None:
            value = getattr(model, "get_profiles", None)
        if callable(value):
            value = value()
        if value:
            return [p if isinstance(p, ProfileSpec) else ProfileSpec(**p) for p in value]
        return self._sidecar_profiles

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        if model_path:
            self._engine_path = _checked_path("model_path", model_path)

    def get_metrics_namespace(self) -> str:
        return "TrtBertQA"

    def __repr__(self) -> str:
        return f"TensorRTQAHandler({self._engine_path!r}, buckets={self._buckets})"


def _batch_range(
    profiles: Optional[Sequence[ProfileSpec]],
    min_batch_size: Optional[int],
    max_batch_size: Optional[int],
    engine_path: str,
) -> Tuple[int, int]:
    """BatchElements' (min, max): the engine's profiles, narrowed by explicit args, else defaults."""
    for name, value in (("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size)):
        if value is not None:
            _check_positive_int(name, value)
    if not profiles:
        return (min_batch_size or 1, max_batch_size or 64)
    engine_lo = min(p.min_batch for p in profiles)
    engine_hi = max(p.max_batch for p in profiles)
    if max_batch_size is not None and max_batch_size > engine_hi:
        raise ValueError(
            f"max_batch_size={max_batch_size} exceeds the largest batch of engine {engine_path} ({engine_hi}, "
            "from its .json sidecar); leave it unset to use the engine's, or rebuild with a larger max batch"
        )
    return (min_batch_size or engine_lo, max_batch_size or engine_hi)

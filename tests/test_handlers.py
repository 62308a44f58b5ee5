"""The RunInference handlers: bucketing, splitting, order, profiles, Beam wiring, errors, gs://.

Most tests drive the shared logic with a fake session whose logits are a function of its input
(start = token id, end = -token id), so every result can be checked against its own window and
every call's shape is recorded. The ONNX Runtime handler also runs the real model, in a Beam
pipeline and from a gs:// bundle on a local GCS emulator.
"""

from __future__ import annotations

import json
import logging
import pickle
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.testing.util import assert_that

from tests.gcs_emulator import gcs_emulator  # noqa: F401  (pytest fixture)
from trt_handler.engines.export import BUNDLE_ONNX, export_random_bert, resolve_model_bundle
from trt_handler.backends.handlers import (
    OnnxRuntimeQAHandler,
    TensorRTQAHandler,
    WindowQAHandler,
    beam_bucket_boundaries,
    plan_model_calls,
    window_length,
)
from trt_handler.backends.onnx_runner import OnnxRunner
from trt_handler.engines.profiles import ProfileSpec, profiles_for_buckets
from trt_handler.qa.types import ModelBatch, QAExample, Window, WindowLogits

# --------------------------------------------------------------------------------------------
# helpers


def make_window(example_id: str, length: int, index: int = 0) -> Window:
    """A window whose token ids encode its position (so logits can be traced back to it)."""
    ids = (np.arange(length, dtype=np.int32) + 1000 * (index + 1)) % 30000
    zeros = np.zeros(length, dtype=np.int32)
    return Window(example_id, index, ids, zeros, np.full((length, 2), -1, np.int32),
                  zeros.astype(bool), zeros.astype(bool))


class FakeSession:
    """EngineSession's interface; start = ids, end = -ids, written into ONE reused buffer (as an
    engine's output buffers are), so results that are not copied get overwritten by later calls."""

    def __init__(self, profiles: Optional[List[ProfileSpec]] = None) -> None:
        self.shapes: List[Tuple[int, int]] = []
        self.masks: List[np.ndarray] = []
        self._buffer = np.zeros((2, 512, 512), dtype=np.float32)
        if profiles is not None:
            self.profiles = profiles

    def recorded_shapes(self) -> List[Tuple[int, int]]:
        """A method, so the shapes are readable through Beam's cross-process proxy too."""
        return list(self.shapes)

    def run(self, batch: ModelBatch) -> Tuple[np.ndarray, np.ndarray]:
        b, s = batch.shape
        self.shapes.append((b, s))
        self.masks.append(batch.attention_mask.copy())
        self._buffer[0, :b, :s] = batch.input_ids
        self._buffer[1, :b, :s] = -batch.input_ids
        return self._buffer[0, :b, :s], self._buffer[1, :b, :s]


class FakeHandler(WindowQAHandler[FakeSession]):
    """The shared base with a fake session (no model files)."""

    def __init__(self, buckets: Sequence[int] = (128, 256, 384), max_batch_size: int = 64, **kw: Any) -> None:
        super().__init__(buckets=buckets, min_batch_size=1, max_batch_size=max_batch_size,
                         max_batch_duration_secs=kw.pop("max_batch_duration_secs", None), large_model=False)

    def load_model(self) -> FakeSession:
        return FakeSession()

    def get_metrics_namespace(self) -> str:
        return "FakeBertQA"


# Batches that reached run_inference in a pipeline (DirectRunner runs in this process; the
# handler pickles by reference because this module is importable).
SEEN_BATCHES: List[List[int]] = []


class RecordingHandler(FakeHandler):
    def run_inference(self, batch: Sequence[Window], model: FakeSession,
                      inference_args: Optional[Dict[str, Any]] = None) -> Any:
        SEEN_BATCHES.append([w.length for w in batch])
        return super().run_inference(batch, model, inference_args)


def check_results(windows: Sequence[Window], results: Sequence[PredictionResult]) -> None:
    assert len(results) == len(windows)
    for w, r in zip(windows, results):
        assert r.example is w
        assert isinstance(r.inference, WindowLogits)
        np.testing.assert_array_equal(r.inference.start_logits, w.input_ids.astype(np.float32))
        np.testing.assert_array_equal(r.inference.end_logits, -w.input_ids.astype(np.float32))


# --------------------------------------------------------------------------------------------
# planning and run_inference through the shared base class


def test_groups_by_bucket_pads_to_it_splits_and_keeps_input_order() -> None:
    lengths = [10, 300, 130, 20, 384, 129, 128, 5]
    windows = [make_window(f"q{i}", n, i) for i, n in enumerate(lengths)]
    handler, session = FakeHandler(max_batch_size=2), FakeSession()
    results = list(handler.run_inference(windows, session))
    # bucket 128: q0, q3, q6, q7 -> 2 + 2; bucket 256: q2, q5; bucket 384: q1, q4
    assert session.shapes == [(2, 128), (2, 128), (2, 256), (2, 384)]
    check_results(windows, results)  # also proves outputs were copied out of the reused buffer
    assert [m.sum(axis=1).tolist() for m in session.masks] == [[10, 20], [128, 5], [130, 129], [300, 384]]


def test_plan_is_pure_and_smallest_bucket_first() -> None:
    windows = [make_window(f"q{i}", n) for i, n in enumerate([200, 50, 60, 250])]
    calls = plan_model_calls(windows, (128, 256), max_batch=8)
    assert [(c.indices, c.shape) for c in calls] == [((1, 2), (2, 128)), ((0, 3), (2, 256))]


def test_engine_profiles_choose_padding_batch_cap_and_filler_rows() -> None:
    profiles = [ProfileSpec(1, 2, 3, 1, 96, 128), ProfileSpec(2, 4, 8, 129, 300, 384)]
    handler = TensorRTQAHandler("/nonexistent/model.engine", buckets=(128, 384), max_batch_size=8)
    session = FakeSession(profiles)
    windows = [make_window(f"q{i}", n, i) for i, n in enumerate([40, 200, 90, 10, 30, 120])]
    results = list(handler.run_inference(windows, session))
    # <=128: five windows on profile 0, padded to its opt 96 unless longer (120 is), split to its
    # max batch 3. 129-384: one window on profile 1, padded to its opt 300, plus one filler row
    # because that profile's min batch is 2.
    assert session.shapes == [(3, 120), (2, 120), (2, 300)]
    check_results(windows, results)
    assert session.masks[-1][1].tolist()[:2] == [1, 0], "filler row: one unmasked token"


def test_profiles_opt_length_used_when_it_holds_the_group() -> None:
    session = FakeSession(profiles_for_buckets((128, 256, 384), opt_batch=4, max_batch=4))
    handler = TensorRTQAHandler("/nonexistent/model.engine")
    windows = [make_window(f"q{i}", n, i) for i, n in enumerate([7, 8, 9, 10, 11, 140])]
    check_results(windows, list(handler.run_inference(windows, session)))
    assert session.shapes == [(4, 128), (1, 128), (1, 256)]


def test_windows_longer_than_the_largest_bucket_are_named() -> None:
    windows = [make_window("ok", 100), make_window("too-long", 400, index=2)]
    with pytest.raises(ValueError, match=r"'too-long'#2 has 400 tokens, more than the largest bucket 384"):
        FakeHandler().run_inference(windows, FakeSession())


def test_windows_no_profile_accepts_are_named() -> None:
    session = FakeSession([ProfileSpec(1, 1, 4, 1, 128, 128)])
    handler = TensorRTQAHandler("/nonexistent/model.engine", buckets=(128, 256))
    with pytest.raises(ValueError, match=r"'long'#1 \(200 tokens\) fits no engine profile .*1-128"):
        handler.run_inference([make_window("q", 150), make_window("long", 200, 1)], session)


def test_bad_session_output_is_reported() -> None:
    class Truncating(FakeSession):
        def run(self, batch: ModelBatch) -> Tuple[np.ndarray, np.ndarray]:
            start, end = super().run(batch)
            return start[:, :-1], end[:, :-1]

    with pytest.raises(RuntimeError, match=r"logits of shapes \(1, 127\).*input of shape \(1, 128\)"):
        FakeHandler().run_inference([make_window("q", 5)], Truncating())


def test_empty_batch_and_inference_args() -> None:
    assert list(FakeHandler().run_inference([], FakeSession())) == []
    with pytest.raises(ValueError, match="take none"):
        FakeHandler().run_inference([make_window("q", 5)], FakeSession(), {"x": 1})


def test_num_bytes_are_the_window_arrays() -> None:
    w = make_window("q", 10)
    expected = 10 * 4 + 10 * 4 + 10 * 2 * 4 + 10 + 10
    assert FakeHandler().get_num_bytes([w, w]) == 2 * expected


# --------------------------------------------------------------------------------------------
# batching kwargs, Beam hooks, constructor validation


def test_length_fn_and_bucket_boundaries_match_our_buckets() -> None:
    kwargs = OnnxRuntimeQAHandler("bundle", buckets=(256, 128, 384)).batch_elements_kwargs()
    assert kwargs["min_batch_size"] == 1 and kwargs["max_batch_size"] == 64
    assert kwargs["bucket_boundaries"] == [129, 257, 385] == beam_bucket_boundaries((128, 256, 384))
    w = make_window("q", 128)
    assert kwargs["length_fn"](w) == 128 and kwargs["length_fn"](("key", w)) == 128
    with pytest.raises(TypeError, match="Window or a \\(key, Window\\) pair"):
        window_length("text")
    # Beam accepts them, and they survive pickling (module-level function, no lambdas)
    beam.BatchElements(**kwargs)
    again = pickle.loads(pickle.dumps(kwargs))
    assert again["length_fn"] is window_length
    assert "max_batch_duration_secs" not in kwargs
    assert OnnxRuntimeQAHandler("b", max_batch_duration_secs=0.01).batch_elements_kwargs()[
        "max_batch_duration_secs"] == 0.01


def test_hooks_and_keyed_wrapping() -> None:
    ort = OnnxRuntimeQAHandler("gs://bucket/bundle", max_batch_size=32)
    trt = TensorRTQAHandler("/nonexistent/model.engine")
    assert ort.get_metrics_namespace() == "OnnxBertQA" and trt.get_metrics_namespace() == "TrtBertQA"
    assert ort.share_model_across_processes() is False
    assert trt.share_model_across_processes() is True
    assert TensorRTQAHandler("/x.engine", large_model=False).share_model_across_processes() is False
    assert ort.model_copies() == trt.model_copies() == 1
    assert ort.onnx_path == "gs://bucket/bundle/model.onnx"
    keyed = KeyedModelHandler(trt)
    assert keyed.batch_elements_kwargs() == trt.batch_elements_kwargs()
    assert keyed.share_model_across_processes() is True
    from apache_beam.internal import pickler

    for handler in (ort, trt, keyed):
        clone = pickler.loads(pickler.dumps(handler))
        assert clone.batch_elements_kwargs() == handler.batch_elements_kwargs()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"buckets": ()}, "buckets must name at least one"),
        ({"buckets": (128, 128)}, "buckets must be distinct positive"),
        ({"buckets": (0, 128)}, "buckets must be distinct positive"),
        ({"buckets": "128"}, "buckets must be a sequence of ints"),
        ({"min_batch_size": 0}, "min_batch_size must be a positive int"),
        ({"max_batch_size": 2.5}, "max_batch_size must be a positive int"),
        ({"min_batch_size": 8, "max_batch_size": 4}, r"min_batch_size \(8\) must not exceed max_batch_size \(4\)"),
        ({"intra_op_threads": 0}, "intra_op_threads must be a positive int"),
        ({"max_batch_duration_secs": 0}, "max_batch_duration_secs must be positive"),
    ],
)
def test_onnx_handler_argument_errors(kwargs: Dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OnnxRuntimeQAHandler("bundle", **kwargs)


def test_tensorrt_handler_argument_errors() -> None:
    with pytest.raises(ValueError, match="engine_path must be a non-empty path"):
        TensorRTQAHandler("")
    with pytest.raises(ValueError, match="onnx_path needs cache_dir"):
        TensorRTQAHandler("/x.engine", onnx_path="/bundle")
    with pytest.raises(ValueError, match="contexts_per_profile must be a positive int"):
        TensorRTQAHandler("/x.engine", contexts_per_profile=0)
    with pytest.raises(ValueError, match="library must be a non-empty string"):
        TensorRTQAHandler("/x.engine", library="")
    with pytest.raises(ValueError, match="onnx_path_or_bundle must be a non-empty path"):
        OnnxRuntimeQAHandler(None)  # type: ignore[arg-type]


def write_engine(tmp_path: Path, profiles: Optional[List[ProfileSpec]], name: str = "model.engine",
                 content: bytes = b"engine-bytes") -> str:
    engine = tmp_path / name
    engine.write_bytes(content)
    if profiles is not None:
        sidecar = {"library": "tensorrt", "profiles": [p.to_dict() for p in profiles]}
        (tmp_path / f"{name}.json").write_text(json.dumps(sidecar))
    return str(engine)


def test_tensorrt_batching_comes_from_the_engine_sidecar(tmp_path: Path) -> None:
    profiles = profiles_for_buckets((64, 192), min_batch=2, opt_batch=8, max_batch=16)
    engine = write_engine(tmp_path, profiles)
    handler = TensorRTQAHandler(engine)
    kw = handler.batch_elements_kwargs()
    assert (kw["min_batch_size"], kw["max_batch_size"]) == (2, 16)
    assert handler.buckets == (64, 192) and kw["bucket_boundaries"] == [65, 193]
    assert TensorRTQAHandler(engine, max_batch_size=8).batch_elements_kwargs()["max_batch_size"] == 8
    with pytest.raises(ValueError, match=r"max_batch_size=32 exceeds the largest batch of engine .* \(16"):
        TensorRTQAHandler(engine, max_batch_size=32)
    # without a sidecar: explicit args, else 1..64 and the default buckets
    bare = write_engine(tmp_path, None, "bare.engine")
    assert TensorRTQAHandler(bare).batch_elements_kwargs()["max_batch_size"] == 64
    assert TensorRTQAHandler(bare, min_batch_size=4, max_batch_size=24).batch_elements_kwargs()[
        "min_batch_size"] == 4
    assert TensorRTQAHandler(bare).buckets == (128, 256, 384)


def test_tensorrt_sidecar_without_profiles_is_an_error(tmp_path: Path) -> None:
    engine = write_engine(tmp_path, None)
    Path(engine + ".json").write_text(json.dumps({"profiles": [{"min_batch": 1}]}))
    with pytest.raises(ValueError, match="sidecar .* is not valid .*rebuild the engine"):
        TensorRTQAHandler(engine)


# --------------------------------------------------------------------------------------------
# TensorRT load_model with a stand-in engine module (the real one needs a GPU)


class CompatError(RuntimeError):
    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause


@pytest.fixture()
def fake_engine_modules(monkeypatch: pytest.MonkeyPatch) -> Dict[str, Any]:
    """trt_handler.engines.session / engine_cache stand-ins: record what load_model passes to them."""
    record: Dict[str, Any] = {"sessions": [], "built": [], "fail_bytes": set()}

    class StubSession(FakeSession):
        def __init__(self, engine: bytes, *, library: str, contexts_per_profile: int,
                     sidecar: Optional[Dict[str, Any]] = None) -> None:
            if engine in record["fail_bytes"]:
                raise CompatError("gpu_arch", "built for sm_90, this GPU is sm_89")
            profiles = [ProfileSpec(**p) for p in (sidecar or {}).get("profiles", [])] or None
            super().__init__(profiles)
            record["sessions"].append((engine, library, contexts_per_profile, sidecar))

    def ensure_engine(onnx_path: str, cache_dir: str, options: Any = None) -> str:
        record["built"].append((onnx_path, cache_dir, options))
        return write_engine(Path(cache_dir), profiles_for_buckets((128, 256, 384)), "rebuilt.engine",
                            b"rebuilt-bytes")

    engine_mod = types.ModuleType("trt_handler.engines.session")
    engine_mod.EngineSession = StubSession  # type: ignore[attr-defined]
    engine_mod.EngineCompatibilityError = CompatError  # type: ignore[attr-defined]
    cache_mod = types.ModuleType("trt_handler.engines.cache")
    cache_mod.ensure_engine = ensure_engine  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "trt_handler.engines.session", engine_mod)
    monkeypatch.setitem(sys.modules, "trt_handler.engines.cache", cache_mod)
    return record


def test_tensorrt_load_model_reads_bytes_and_sidecar(tmp_path: Path, fake_engine_modules: Dict[str, Any]) -> None:
    engine = write_engine(tmp_path, profiles_for_buckets((128, 256)))
    handler = TensorRTQAHandler(engine, library="tensorrt_rtx", contexts_per_profile=2)
    session = handler.load_model()
    engine_bytes, library, contexts, sidecar = fake_engine_modules["sessions"][0]
    assert (engine_bytes, library, contexts) == (b"engine-bytes", "tensorrt_rtx", 2)
    assert sidecar["library"] == "tensorrt" and len(sidecar["profiles"]) == 2
    windows = [make_window("a", 30), make_window("b", 200)]
    check_results(windows, list(handler.run_inference(windows, session)))
    assert fake_engine_modules["built"] == []


def test_tensorrt_rebuilds_when_the_engine_cannot_run_here(tmp_path: Path, fake_engine_modules: Dict[str, Any],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    engine = write_engine(tmp_path, profiles_for_buckets((128, 256, 384)))
    fake_engine_modules["fail_bytes"].add(b"engine-bytes")
    with pytest.raises(CompatError):  # no onnx_path: the real cause surfaces
        TensorRTQAHandler(engine).load_model()
    cache = tmp_path / "cache"
    cache.mkdir()
    handler = TensorRTQAHandler(engine, onnx_path=str(tmp_path / "bundle"), cache_dir=str(cache))
    with caplog.at_level(logging.WARNING, logger="trt_handler.backends.handlers"):
        handler.load_model()
    assert fake_engine_modules["built"] == [(str(tmp_path / "bundle" / BUNDLE_ONNX), str(cache), None)]
    assert "cannot run here (gpu_arch: built for sm_90" in caplog.text
    assert "using an engine built from" in caplog.text
    assert fake_engine_modules["sessions"][-1][0] == b"rebuilt-bytes"


def test_tensorrt_missing_engine(tmp_path: Path, fake_engine_modules: Dict[str, Any],
                                 caplog: pytest.LogCaptureFixture) -> None:
    missing = str(tmp_path / "missing.engine")
    with pytest.raises(FileNotFoundError, match="missing.engine does not exist; build it with"):
        TensorRTQAHandler(missing).load_model()
    handler = TensorRTQAHandler(missing, onnx_path=str(tmp_path / "m.onnx"), cache_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="trt_handler.backends.handlers"):
        handler.load_model()
    assert "missing.engine does not exist; using an engine built from" in caplog.text
    assert fake_engine_modules["sessions"][-1][0] == b"rebuilt-bytes"


def test_tensorrt_handler_in_a_keyed_beam_pipeline(tmp_path: Path, fake_engine_modules: Dict[str, Any]) -> None:
    """In-process (large_model=False) so the stand-in engine module is the one Beam's DoFn loads."""
    engine = write_engine(tmp_path, profiles_for_buckets((128, 256, 384), opt_batch=4, max_batch=4))
    windows = [make_window(f"q{i}", n, i) for i, n in enumerate([12, 300, 140, 64, 99, 7, 255])]
    expected = {w.example_id: w.input_ids.astype(np.float32) for w in windows}

    def matches(results: List[Tuple[str, PredictionResult]]) -> None:
        assert sorted(k for k, _ in results) == sorted(expected)
        for key, r in results:
            np.testing.assert_array_equal(r.inference.start_logits, expected[key])

    with beam.Pipeline() as p:
        out = (p | beam.Create([(w.example_id, w) for w in windows])
               | RunInference(KeyedModelHandler(TensorRTQAHandler(engine, large_model=False))))
        assert_that(out, matches)
    assert len(fake_engine_modules["sessions"]) >= 1


def load_small_engine_session() -> FakeSession:
    """What a MultiProcessShared server process constructs (module-level: it must pickle)."""
    return FakeSession(profiles_for_buckets((128, 256), opt_batch=2, max_batch=2))


class SessionWithGetProfiles(FakeSession):
    def get_profiles(self) -> List[ProfileSpec]:
        return list(self.profiles)


def load_session_with_get_profiles() -> FakeSession:
    return SessionWithGetProfiles([ProfileSpec(1, 1, 1, 1, 200, 256)])


def test_tensorrt_profiles_through_beams_cross_process_proxy(tmp_path: Path) -> None:
    """With share_model_across_processes, RunInference hands run_inference a MultiProcessShared
    proxy, which forwards method calls only: .profiles is unreachable, so the sidecar's count,
    unless the session offers a get_profiles() method."""
    import uuid

    from apache_beam.utils.multi_process_shared import MultiProcessShared

    engine = write_engine(tmp_path, profiles_for_buckets((128, 256), opt_batch=2, max_batch=2))
    handler = TensorRTQAHandler(engine)
    windows = [make_window(f"q{i}", 10 + i, i) for i in range(3)] + [make_window("long", 200, 3)]
    for loader, shapes in ((load_small_engine_session, [(2, 128), (1, 128), (1, 256)]),
                           (load_session_with_get_profiles, [(1, 200)] * 3 + [(1, 200)])):
        shared = MultiProcessShared(loader, tag=f"test-{uuid.uuid4().hex}", always_proxy=True)
        proxy = shared.acquire()
        try:
            assert getattr(proxy, "profiles", None) is None
            check_results(windows, list(handler.run_inference(windows, proxy)))
            assert proxy.recorded_shapes() == shapes
        finally:
            shared.release(proxy)
            shared.unsafe_hard_delete()


# --------------------------------------------------------------------------------------------
# Beam pipelines


def test_stateful_batch_elements_groups_by_length_bucket_for_keyed_windows() -> None:
    """What Beam 2.77 really does with length_fn/bucket_boundaries: only the stateful path
    (max_batch_duration_secs set) keys by bucket; the default path mixes lengths."""
    rng = np.random.default_rng(0)
    windows = [make_window(f"q{i}", int(rng.integers(5, 385)), i) for i in range(120)]

    expected_keys = sorted(w.example_id for w in windows)

    def all_keys_once(keys: List[str]) -> None:
        assert sorted(keys) == expected_keys, "windows were lost or duplicated"

    def run(duration: Optional[float]) -> List[List[int]]:
        SEEN_BATCHES.clear()
        with beam.Pipeline() as p:
            out = (p | beam.Create([(w.example_id, w) for w in windows])
                   | RunInference(KeyedModelHandler(RecordingHandler(max_batch_duration_secs=duration))))
            assert_that(out | beam.Map(lambda kv: kv[0]), all_keys_once)
        return list(SEEN_BATCHES)

    def mixed(batches: List[List[int]]) -> int:
        return sum(1 for b in batches if len({(n - 1) // 128 for n in b}) > 1)

    stateful = run(0.05)
    assert sum(len(b) for b in stateful) == len(windows) and mixed(stateful) == 0
    plain = run(None)
    assert sum(len(b) for b in plain) == len(windows)
    assert mixed(plain) > 0, "Beam's default BatchElements path now honours length_fn: update docs/handlers.md"


@pytest.fixture(scope="module")
def bundle(model_dir: Path, test_cache: Path) -> Path:
    return resolve_model_bundle(model_dir, test_cache)


@pytest.fixture(scope="module")
def short_windows(bundle: Path, squad_a: Path) -> List[Window]:
    from trt_handler.qa.reading import load_examples
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    maker = WindowMaker(load_tokenizer(bundle))
    examples = load_examples(squad_a)[:5]
    examples.append(QAExample("tiny", examples[0].question, examples[0].context.split(". ")[0] + "."))
    return [w for ex in examples for w in maker.windows(ex)]


def test_onnx_handler_in_a_keyed_beam_pipeline(bundle: Path, short_windows: List[Window]) -> None:
    runner = OnnxRunner(bundle / BUNDLE_ONNX)
    expected = {}
    for w in short_windows:  # reference: each window alone, unpadded
        start, end = runner.run(ModelBatch(w.input_ids[None], np.ones((1, w.length), np.int32), w.token_type_ids[None]))
        expected[(w.example_id, w.window_index)] = (start[0], end[0])

    def matches(results: List[Tuple[str, PredictionResult]]) -> None:
        assert len(results) == len(short_windows)
        for key, r in results:
            assert key == r.example.example_id
            ref_start, ref_end = expected[(key, r.example.window_index)]
            assert r.inference.start_logits.shape == (r.example.length,)
            np.testing.assert_allclose(r.inference.start_logits, ref_start, atol=1e-4)
            np.testing.assert_allclose(r.inference.end_logits, ref_end, atol=1e-4)

    handler = KeyedModelHandler(OnnxRuntimeQAHandler(str(bundle), max_batch_size=4, intra_op_threads=1))
    p = beam.Pipeline()
    out = p | beam.Create([(w.example_id, w) for w in short_windows]) | RunInference(handler)
    assert_that(out, matches)
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in
                result.metrics().query(MetricsFilter().with_namespace("OnnxBertQA"))["counters"]}
    assert counters["model_windows"] == len(short_windows) and counters["model_calls"] >= 2


@pytest.fixture(scope="module")
def tiny_bundle(model_dir: Path, test_cache: Path) -> Path:
    return export_random_bert(test_cache / "onnx" / "tiny-random-bert-test", model_dir, 2, 64, 2, 128, seed=3)


def test_onnx_handler_loads_a_bundle_from_gs(tiny_bundle: Path, gcs_emulator: Any) -> None:  # noqa: F811
    url = gcs_emulator.upload(tiny_bundle, "models/tiny")
    handler = OnnxRuntimeQAHandler(url)
    assert handler.onnx_path == f"{url}/model.onnx"
    remote = handler.load_model()
    local = OnnxRuntimeQAHandler(str(tiny_bundle)).load_model()
    windows = [make_window("a", 50), make_window("b", 150, 1)]
    for got, want in zip(handler.run_inference(windows, remote), handler.run_inference(windows, local)):
        np.testing.assert_array_equal(got.inference.start_logits, want.inference.start_logits)
    with pytest.raises(FileNotFoundError, match="does not exist; upload a model bundle"):
        OnnxRuntimeQAHandler(gcs_emulator.url("models/none")).load_model()


def test_onnx_handler_local_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.onnx does not exist"):
        OnnxRuntimeQAHandler(str(tmp_path)).load_model()

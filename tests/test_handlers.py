"""The RunInference handlers: question elements, batch sizing, profiles, Beam wiring, errors, gs://.

Most tests drive the shared logic with a fake session whose logits are a function of its input
(start = end = token id), so every answer can be predicted from its own question and every call's
shape is recorded. The ONNX Runtime handler also runs the real model, in a Beam pipeline (against
answers computed without Beam) and from a gs:// bundle on a local GCS emulator.
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
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.testing.util import assert_that, equal_to

from pipelines.transforms import ExtractAnswers
from tests.gcs_emulator import gcs_emulator  # noqa: F401  (pytest fixture)
from tests.helpers import coded_question, coded_window
from trt_handler.answer_batch import PlannedRunner, answer_batch
from trt_handler.backends.handlers import (
    METRICS_NAMESPACE,
    OnnxRuntimeQAHandler,
    QAHandler,
    TensorRTQAHandler,
    TorchQAHandler,
    question_size,
)
from trt_handler.backends.onnx_runner import OnnxRunner
from trt_handler.engines.export import BUNDLE_ONNX, export_random_bert, resolve_model_bundle
from trt_handler.planning import BatchPlan, ProfileSpec, profiles_for_buckets
from trt_handler.qa.answers import AnswerConfig, QuestionLogits, answers_from_logits
from trt_handler.qa.batching import DEFAULT_BUCKETS
from trt_handler.qa.types import Answer, ModelBatch, QAExample, QuestionWindows

# --------------------------------------------------------------------------------------------
# helpers


make_window, make_question = coded_window, coded_question


class FakeSession:
    """EngineSession's interface: start = ids, end = +ids (the best span is a question's last
    context token), written into ONE reused buffer as an engine's outputs are."""

    def __init__(self, profiles: Optional[List[ProfileSpec]] = None) -> None:
        self.shapes: List[Tuple[int, int]] = []
        self._buffer = np.zeros((2, 512, 512), dtype=np.float32)
        self._profiles = profiles

    def get_profiles(self) -> Optional[List[ProfileSpec]]:
        """EngineSession.get_profiles (None: a session without profiles of its own, the plan stands)."""
        return self._profiles

    def recorded_shapes(self) -> List[Tuple[int, int]]:
        """A method, so the shapes are readable through Beam's cross-process proxy too."""
        return list(self.shapes)

    def run(self, batch: ModelBatch, profile: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        b, s = batch.shape
        self.shapes.append((b, s))
        self._buffer[0, :b, :s] = batch.input_ids
        self._buffer[1, :b, :s] = batch.input_ids
        return self._buffer[0, :b, :s], self._buffer[1, :b, :s]


class FakeHandler(QAHandler):
    """The shared base with a fake session (no model files)."""

    backend = "fake"

    def load_runner(self) -> FakeSession:
        return FakeSession()


def model_of(handler: QAHandler, session: Any) -> PlannedRunner:
    """What ``handler.load_model()`` makes of ``session``: the session with the handler's plan for it."""
    handler.load_runner = lambda: session  # type: ignore[method-assign]
    return handler.load_local()


def expected_answer(q: QuestionWindows) -> str:
    """What FakeSession's logits make the answer: the last context token of the window whose last
    id is largest (ids grow with the window index)."""
    w = q.windows[-1]
    start, end = w.offsets[-1]
    return q.example.context[start:end]


def answers_of(results: Sequence[PredictionResult]) -> List[Any]:
    """The answer step after RunInference (what ExtractAnswers runs): each result's Answer, or its error."""
    ok = [r for r in results if isinstance(r.inference, QuestionLogits)]
    answers = iter(answers_from_logits([(r.example.example, r.example.windows, r.inference) for r in ok]))
    return [next(answers) if isinstance(r.inference, QuestionLogits) else r.inference for r in results]


def check_results(questions: Sequence[QuestionWindows], results: Sequence[PredictionResult]) -> None:
    assert len(results) == len(questions)
    for q, r, a in zip(questions, results, answers_of(results)):
        assert r.example is q
        assert isinstance(a, Answer) and a.id == q.example.id
        assert a.text == expected_answer(q)


# --------------------------------------------------------------------------------------------
# run_inference through the shared base class


def test_one_result_per_question_in_input_order_with_its_answer() -> None:
    questions = [make_question(f"q{i}", *lengths) for i, lengths in
                 enumerate([(10,), (300, 200), (130,), (20, 384, 129), (5,)])]
    handler, session = FakeHandler(max_model_batch=2), FakeSession()
    results = list(handler.run_inference(questions, model_of(handler, session)))
    check_results(questions, results)
    assert sum(b for b, _ in session.shapes) == sum(q.num_windows for q in questions)
    assert all(b <= 2 for b, _ in session.shapes)
    assert {r.model_id for r in results} == {"fake"}


def test_a_question_that_cannot_be_answered_is_its_own_outcome() -> None:
    bad = QuestionWindows(QAExample("bad", "q?", "ab"), (make_window("bad", 3),))  # no context token
    handler = FakeHandler()
    results = list(handler.run_inference([make_question("ok", 8), bad], handler.load_model()))
    answers = answers_of(results)
    assert all(isinstance(r.inference, QuestionLogits) for r in results)  # the handler gives logits only
    assert isinstance(answers[0], Answer)
    assert isinstance(answers[1], ValueError) and "no window has a valid answer span" in str(answers[1])


def test_engine_profiles_from_the_session_decide_the_calls() -> None:
    profiles = [ProfileSpec(1, 2, 3, 1, 96, 128), ProfileSpec(2, 4, 8, 129, 300, 384)]
    handler = TensorRTQAHandler("/nonexistent/model.engine", pad_to="bucket")
    session = FakeSession(profiles)
    questions = [make_question(f"q{i}", n) for i, n in enumerate([40, 200, 90, 10, 30, 120])]
    check_results(questions, list(handler.run_inference(questions, model_of(handler, session))))
    assert session.shapes == [(3, 96), (2, 120), (2, 300)]


def test_too_long_windows_fail_the_batch_with_a_reason() -> None:
    with pytest.raises(ValueError, match=r"has 400 tokens, more than the longest profile \(384\)"):
        handler = FakeHandler()
        handler.run_inference([make_question("ok", 100), make_question("too-long", 400)], handler.load_model())


def test_empty_batch_and_inference_args() -> None:
    handler = FakeHandler()
    assert list(handler.run_inference([], handler.load_model())) == []
    with pytest.raises(ValueError, match="take none"):
        handler.run_inference([make_question("q", 5)], handler.load_model(), {"x": 1})


def test_num_bytes_are_the_window_arrays() -> None:
    q = make_question("q", 10, 10)
    expected = 10 * 4 + 10 * 4 + 10 * 2 * 4 + 10 + 10
    assert FakeHandler().get_num_bytes([q, q]) == 4 * expected


# --------------------------------------------------------------------------------------------
# batching kwargs, Beam hooks, constructor validation


def test_batches_are_sized_by_window_count() -> None:
    kwargs = OnnxRuntimeQAHandler("bundle", max_batch_windows=96).batch_elements_kwargs()
    assert kwargs["min_batch_size"] == kwargs["max_batch_size"] == 96
    assert kwargs["element_size_fn"] is question_size
    assert question_size(make_question("q", 10, 20, 30)) == 3
    with pytest.raises(TypeError, match="expected QuestionWindows"):
        question_size("text")
    beam.BatchElements(**kwargs)  # Beam accepts them, and they survive pickling (no lambdas)
    assert pickle.loads(pickle.dumps(kwargs))["element_size_fn"] is question_size
    assert "max_batch_duration_secs" not in kwargs
    streaming = OnnxRuntimeQAHandler("b", max_batch_duration_secs=0.01, min_batch_windows=1).batch_elements_kwargs()
    assert streaming["max_batch_duration_secs"] == 0.01 and streaming["min_batch_size"] == 1


SEEN_BATCHES: List[List[int]] = []


class RecordingHandler(FakeHandler):
    def run_inference(self, batch: Sequence[QuestionWindows], model: Any,
                      inference_args: Optional[Dict[str, Any]] = None) -> Any:
        SEEN_BATCHES.append([q.num_windows for q in batch])
        return super().run_inference(batch, model, inference_args)


def test_beam_batches_hold_about_max_batch_windows() -> None:
    rng = np.random.default_rng(0)
    questions = [make_question(f"q{i}", *([50] * int(rng.integers(1, 4)))) for i in range(200)]
    SEEN_BATCHES.clear()
    with beam.Pipeline() as p:
        out = p | beam.Create(questions) | RunInference(RecordingHandler(max_batch_windows=32))
        assert_that(out | beam.Map(lambda r: r.example.example.id), equal_to([q.example.id for q in questions]))
    sizes = [sum(b) for b in SEEN_BATCHES]
    assert sum(sizes) == sum(q.num_windows for q in questions)
    assert max(sizes) < 32 + 3 and sorted(sizes)[len(sizes) // 2] >= 32  # full batches; the last may be partial


def test_hooks() -> None:
    ort = OnnxRuntimeQAHandler("gs://bucket/bundle", max_model_batch=32)
    trt = TensorRTQAHandler("/nonexistent/model.engine")
    torch = TorchQAHandler("/models/qa", device="cpu")
    assert ort.get_metrics_namespace() == trt.get_metrics_namespace() == METRICS_NAMESPACE
    # processes share a model through the GPU's inference server, never through Beam's proxy
    assert not any(h.share_model_across_processes() for h in (ort, trt, torch))
    assert ort.model_copies() == trt.model_copies() == torch.model_copies() == 1
    assert torch.resolved_device() == "cpu"
    from apache_beam.internal import pickler

    for handler in (ort, trt, torch):
        clone = pickler.loads(pickler.dumps(handler))
        assert clone.batch_elements_kwargs() == handler.batch_elements_kwargs()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"buckets": ()}, "buckets must name at least one"),
        ({"buckets": (128, 128)}, "buckets must be distinct positive"),
        ({"buckets": (0, 128)}, "buckets must be distinct positive"),
        ({"buckets": "128"}, "buckets must be a sequence of ints"),
        ({"max_model_batch": 0}, "max_model_batch must be a positive int"),
        ({"max_batch_windows": 2.5}, "max_batch_windows must be a positive int"),
        ({"min_batch_windows": 8, "max_batch_windows": 4}, r"min_batch_windows \(8\) must not exceed max_batch_windows"),
        ({"max_tokens": 0}, "max_tokens must be a positive int"),
        ({"pad_to": "max"}, "pad_to must be one of"),
        ({"null_threshold": float("nan")}, "null_threshold must be a finite number or None"),
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
    with pytest.raises(ValueError, match="dtype must be fp16, bf16 or fp32"):
        TorchQAHandler("/m", dtype="int4")
    with pytest.raises(ValueError, match="device must be"):
        TorchQAHandler("/m", device="tpu")


def write_engine(tmp_path: Path, profiles: Optional[List[ProfileSpec]], name: str = "model.engine",
                 content: bytes = b"engine-bytes") -> str:
    engine = tmp_path / name
    engine.write_bytes(content)
    if profiles is not None:
        sidecar = {"library": "tensorrt", "profiles": [p.to_dict() for p in profiles]}
        (tmp_path / f"{name}.json").write_text(json.dumps(sidecar))
    return str(engine)


def test_tensorrt_plan_comes_from_the_engine_sidecar(tmp_path: Path) -> None:
    profiles = profiles_for_buckets((64, 192), min_batch=2, opt_batch=8, max_batch=16)
    engine = write_engine(tmp_path, profiles)
    handler = TensorRTQAHandler(engine)
    assert handler.plan.profiles == tuple(profiles) and handler.plan.max_batch == 16
    assert handler.plan.buckets == (64, 192)
    assert TensorRTQAHandler(engine, max_model_batch=8).plan.max_batch == 8
    with pytest.raises(ValueError, match=r"max_model_batch=32 exceeds the largest batch of engine .* \(16"):
        TensorRTQAHandler(engine, max_model_batch=32)
    # without a sidecar: the handler's buckets (the engine's own profiles are used once loaded)
    bare = write_engine(tmp_path, None, "bare.engine")
    assert TensorRTQAHandler(bare).plan.buckets == DEFAULT_BUCKETS == (128, 160, 192, 224, 288, 384)
    assert TensorRTQAHandler(bare, buckets=(128, 384)).plan.buckets == (128, 384)


def test_tensorrt_sidecar_without_profiles_is_an_error(tmp_path: Path) -> None:
    engine = write_engine(tmp_path, None)
    Path(engine + ".json").write_text(json.dumps({"profiles": [{"min_batch": 1}]}))
    with pytest.raises(ValueError, match="sidecar .* is not valid .*rebuild the engine"):
        TensorRTQAHandler(engine)
    Path(engine + ".json").write_text("{not json")
    with pytest.raises(ValueError, match="sidecar .* is not JSON"):
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
                     sidecar: Optional[Dict[str, Any]] = None, device: Optional[int] = None) -> None:
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
    questions = [make_question("a", 30), make_question("b", 200, 20)]
    check_results(questions, list(handler.run_inference(questions, session)))
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


def test_tensorrt_handler_in_a_beam_pipeline(tmp_path: Path, fake_engine_modules: Dict[str, Any]) -> None:
    """In-process, so the stand-in engine module is the one Beam's DoFn loads."""
    engine = write_engine(tmp_path, profiles_for_buckets((128, 256, 384), opt_batch=4, max_batch=4))
    questions = [make_question(f"q{i}", n, 20) for i, n in enumerate([12, 300, 140, 64, 99, 7, 255])]
    expected = {q.example.id: expected_answer(q) for q in questions}

    def matches(answered: List[Any]) -> None:
        assert sorted(a.id for _, a in answered) == sorted(expected)
        for _, a in answered:
            assert a.text == expected[a.id] and a.provenance.model_id == engine

    with beam.Pipeline() as p:
        out = (p | beam.Create(questions) | RunInference(TensorRTQAHandler(engine))
               | ExtractAnswers(AnswerConfig())).answers
        assert_that(out, matches)
    assert len(fake_engine_modules["sessions"]) >= 1


def test_tensorrt_calls_follow_the_loaded_sessions_profiles(tmp_path: Path) -> None:
    """The sidecar's profiles plan the calls until the engine is loaded; then the session's own
    profiles do (a session whose profiles differ from the sidecar's decides the calls)."""
    engine = write_engine(tmp_path, profiles_for_buckets((128, 256), opt_batch=2, max_batch=2))
    handler = TensorRTQAHandler(engine, pad_to="bucket")
    questions = [make_question(f"q{i}", 10 + i) for i in range(3)] + [make_question("long", 200)]
    for session, shapes in ((FakeSession(profiles_for_buckets((128, 256), opt_batch=2, max_batch=2)),
                             [(2, 128), (1, 128), (1, 256)]),
                            (FakeSession([ProfileSpec(1, 1, 1, 1, 200, 256)]), [(1, 200)] * 4)):
        check_results(questions, list(handler.run_inference(questions, model_of(handler, session))))
        assert session.recorded_shapes() == shapes


# --------------------------------------------------------------------------------------------
# Beam pipelines


@pytest.fixture(scope="module")
def bundle(model_dir: Path, test_cache: Path) -> Path:
    return resolve_model_bundle(model_dir, test_cache)


@pytest.fixture(scope="module")
def short_questions(bundle: Path, squad_a: Path) -> List[QuestionWindows]:
    from trt_handler.qa.reading import load_examples
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    maker = WindowMaker(load_tokenizer(bundle))
    everything = load_examples(squad_a)[:300]
    examples = everything[:12]
    examples.append(QAExample("tiny", examples[0].question, examples[0].context.split(". ")[0] + "."))
    contexts = list(dict.fromkeys(e.context for e in everything))[:4]
    examples.append(QAExample("long", examples[1].question, " ".join(contexts)))
    return [QuestionWindows(ex, tuple(ws)) for ex, ws in zip(examples, maker.windows_many(examples))]


def test_onnx_handler_in_a_beam_pipeline(bundle: Path, short_questions: List[QuestionWindows]) -> None:
    assert any(q.num_windows > 1 for q in short_questions)
    runner = OnnxRunner(bundle / BUNDLE_ONNX, intra_op_threads=1)
    # reference without Beam: the whole list in one call of the same answer path, padded to buckets
    reference = answer_batch(short_questions, PlannedRunner(runner, BatchPlan.for_buckets(pad_to="bucket")))
    expected = {q.example.id: (a.text, a.score) for q, a in zip(short_questions, reference)}  # type: ignore[union-attr]

    def matches(answered: List[Any]) -> None:
        assert len(answered) == len(short_questions)
        for example, a in answered:
            text, score = expected[example.id]
            assert a.text == text and a.score == pytest.approx(score, abs=1e-3)

    handler = OnnxRuntimeQAHandler(str(bundle), max_model_batch=4, max_batch_windows=5, intra_op_threads=1)
    p = beam.Pipeline()
    out = (p | beam.Create(short_questions) | RunInference(handler) | ExtractAnswers(AnswerConfig())).answers
    assert_that(out, matches)
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in
                result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]}
    assert counters["onnx_model_windows"] == sum(q.num_windows for q in short_questions)
    assert counters["onnx_model_calls"] >= 4


@pytest.fixture(scope="module")
def tiny_bundle(model_dir: Path, test_cache: Path) -> Path:
    return export_random_bert(test_cache / "onnx" / "tiny-random-bert-test", model_dir, 2, 64, 2, 128, seed=3)


def test_onnx_handler_loads_a_bundle_from_gs(tiny_bundle: Path, gcs_emulator: Any) -> None:  # noqa: F811
    url = gcs_emulator.upload(tiny_bundle, "models/tiny")
    handler = OnnxRuntimeQAHandler(url)
    remote = handler.load_model()
    local = OnnxRuntimeQAHandler(str(tiny_bundle)).load_model()
    batch = ModelBatch(np.arange(60, dtype=np.int32).reshape(2, 30) % 100, np.ones((2, 30), np.int32),
                       np.zeros((2, 30), np.int32))
    for got, want in zip(remote.runner.run(batch), local.runner.run(batch)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(FileNotFoundError, match="does not exist; upload a model bundle"):
        OnnxRuntimeQAHandler(gcs_emulator.url("models/none")).load_model()


def test_onnx_handler_local_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.onnx does not exist"):
        OnnxRuntimeQAHandler(str(tmp_path)).load_model()


# --------------------------------------------------------------------------------------------
# PyTorch


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _answers_through_beam(handler: Any, questions: List[QuestionWindows]) -> Dict[str, str]:
    """Answer texts by id from RunInference(handler) in a Beam pipeline (read back from a file:
    pipeline results cannot be returned directly)."""
    import tempfile

    out: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="torch-handler-") as folder:
        with beam.Pipeline() as p:
            _ = ((p | beam.Create(questions) | RunInference(handler) | ExtractAnswers(AnswerConfig())).answers
                 | beam.Map(lambda pair: json.dumps([pair[1].id, pair[1].text]))
                 | beam.io.WriteToText(f"{folder}/answers", file_name_suffix=".jsonl"))
        for f in Path(folder).glob("answers*.jsonl"):
            for line in f.read_text(encoding="utf-8").splitlines():
                qid, text = json.loads(line)
                out[qid] = text
    return out


def test_torch_handler_on_cpu_answers_like_onnx_runtime(model_dir: Path, bundle: Path,
                                                        short_questions: List[QuestionWindows]) -> None:
    """The PyTorch backend (fp32, CPU) gives the ONNX Runtime backend's answers on the same
    checkpoint: two runtimes, one plan and answer path."""
    pytest.importorskip("torch")
    torch_answers = _answers_through_beam(TorchQAHandler(str(model_dir), device="cpu", max_batch_windows=8),
                                          short_questions)
    onnx_answers = _answers_through_beam(OnnxRuntimeQAHandler(str(bundle), max_batch_windows=8, intra_op_threads=1),
                                         short_questions)
    assert len(torch_answers) == len(short_questions)
    assert torch_answers == onnx_answers


@pytest.mark.gpu
@pytest.mark.skipif(not _torch_cuda(), reason="needs PyTorch with a CUDA GPU")
def test_torch_handler_on_cuda_fp16_agrees_with_cpu_fp32(model_dir: Path, short_questions: List[QuestionWindows]) -> None:
    """On a GPU (fp16, SDPA) the answers match CPU fp32 for nearly every question (fp16 may flip a
    near-tie)."""
    gpu = _answers_through_beam(TorchQAHandler(str(model_dir), device="cuda", dtype="fp16", max_batch_windows=8),
                                short_questions)
    cpu = _answers_through_beam(TorchQAHandler(str(model_dir), device="cpu", max_batch_windows=8), short_questions)
    assert gpu.keys() == cpu.keys()
    same = sum(gpu[k] == cpu[k] for k in cpu)
    assert same >= len(cpu) - 1, {k: (gpu[k], cpu[k]) for k in cpu if gpu[k] != cpu[k]}


@pytest.mark.gpu
@pytest.mark.skipif(not _torch_cuda(), reason="needs PyTorch with a CUDA GPU")
def test_torch_handler_auto_device_picks_a_visible_gpu(model_dir: Path) -> None:
    handler = TorchQAHandler(str(model_dir), device="auto", gpu_count=1)
    assert handler.resolved_device() == "cuda:0"
    with pytest.raises(ValueError, match="GPU"):
        import torch

        TorchQAHandler(str(model_dir), device="auto", gpu_count=torch.cuda.device_count() + 1).resolved_device()


class StatefulSession(FakeSession):
    """A session with the engine session's stats() and gpu_memory()."""

    def stats(self) -> Dict[str, int]:
        return {"runs": len(self.shapes), "context_wait_us": 1234, "max_context_wait_us": 99}

    def gpu_memory(self) -> Dict[str, int]:
        return {"free_bytes": 10, "total_bytes": 30, "used_bytes": 20}


def test_torch_auto_device_is_this_processs_round_robin_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from trt_handler.backends import devices

    monkeypatch.setattr(devices, "visible_gpu_count", lambda: 2)
    monkeypatch.setenv(devices.ENV_VAR, "1")
    assert TorchQAHandler("/models/qa", device="auto").resolved_device() == "cuda:1"


def test_model_state_lands_in_the_one_metrics_namespace() -> None:
    """Context waits and GPU memory read from the model reach Beam's metrics (one namespace)."""
    questions = [make_question(f"q{i}", 20) for i in range(3)]
    p = beam.Pipeline()
    _ = p | beam.Create(questions) | RunInference(StateHandler(max_batch_windows=1))
    result = p.run()
    result.wait_until_finish()
    gauges = {g.key.metric.name: g.committed.value for g in
              result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["gauges"]}
    assert gauges["fake_context_wait_micro_secs_total"] == 1234
    assert gauges["fake_context_wait_micro_secs_max"] == 99
    assert gauges["fake_gpu_memory_used_bytes"] == 20


class StateHandler(FakeHandler):
    def load_runner(self) -> FakeSession:
        return StatefulSession()


def test_every_gpu_of_a_worker_or_a_clear_refusal(tmp_path: Path, fake_engine_modules: Dict[str, Any]) -> None:
    """gpu_count > 1: each process (or each GPU's server) loads its engine on its round-robin GPU;
    with fewer GPUs visible the devices module names the problem instead of stacking them on GPU 0."""
    engine = write_engine(tmp_path, profiles_for_buckets((128, 256, 384)))
    handler = TensorRTQAHandler(engine, gpu_count=2)
    from trt_handler.backends.devices import visible_gpu_count

    if visible_gpu_count() < 2:
        with pytest.raises(ValueError, match="GPU"):
            handler.load_model()

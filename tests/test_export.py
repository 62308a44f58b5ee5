"""ONNX export: the shared MiniLM QA model against PyTorch, the bundle cache, random BERT bundles.

The shared model's bundle is exported once into the test cache (``test_cache``) and reused by
every later session and by the other test modules (resolve_model_bundle's cache is what they use).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from trt_handler.backends.onnx_runner import OnnxRunner
from trt_handler.engines import export
from trt_handler.engines.export import (
    BUNDLE_META,
    BUNDLE_ONNX,
    ExportCheckError,
    export_random_bert,
    model_cache_key,
    resolve_model_bundle,
)
from trt_handler.qa.types import INPUT_NAMES, OUTPUT_NAMES, ModelBatch


@pytest.fixture(scope="module")
def bundle(model_dir: Path, test_cache: Path) -> Path:
    return resolve_model_bundle(model_dir, test_cache)


@pytest.fixture(scope="module")
def tiny_bundle(model_dir: Path, test_cache: Path) -> Path:
    # A 2-layer random BERT (the perf work's kind of model); reused across sessions like the export.
    return export_random_bert(test_cache / "onnx" / "tiny-random-bert-test", model_dir, 2, 64, 2, 128, seed=3)


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / BUNDLE_META).read_text(encoding="utf-8"))


def test_bundle_holds_checked_int32_model(bundle: Path) -> None:
    meta = _meta(bundle)
    assert meta["checked"] is True
    assert set(meta["max_abs_diff"]) == {"1x17", "3x128", "2x384"}
    assert max(meta["max_abs_diff"].values()) < 1e-3
    assert meta["sha256"] == hashlib.sha256((bundle / BUNDLE_ONNX).read_bytes()).hexdigest()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (bundle / name).is_file()
    graph = onnx.load(str(bundle / BUNDLE_ONNX), load_external_data=False).graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES)
    for i in graph.input:
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT32
        dims = i.type.tensor_type.shape.dim
        assert len(dims) == 2 and all(d.dim_param and not d.dim_value for d in dims), "batch and seq must be dynamic"
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in graph.output)


def test_export_matches_pytorch_at_unchecked_shapes(bundle: Path, model_dir: Path) -> None:
    """Independent of the export's own check: other shapes, padded rows, the HF model called directly."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(model_dir, dtype=torch.float32).eval()
    runner = OnnxRunner(bundle / BUNDLE_ONNX)
    rng = np.random.default_rng(42)
    for b, s in ((3, 61), (2, 160)):
        ids = rng.integers(1000, 30000, size=(b, s)).astype(np.int32)
        mask = np.ones((b, s), dtype=np.int32)
        mask[1:, s // 2 + 3:] = 0
        types = np.zeros((b, s), dtype=np.int32)
        types[:, 9:] = 1
        start, end = runner.run(ModelBatch(ids, mask, types))
        with torch.no_grad():
            ref = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                        token_type_ids=torch.from_numpy(types).long())
        assert start.shape == end.shape == (b, s) and start.dtype == np.float32
        assert np.max(np.abs(start - ref.start_logits.numpy())) < 1e-3
        assert np.max(np.abs(end - ref.end_logits.numpy())) < 1e-3


def test_resolve_reuses_the_cached_export(bundle: Path, model_dir: Path, test_cache: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(*args: object, **kwargs: object) -> Path:
        raise AssertionError("resolve_model_bundle exported again instead of reusing the cache")

    monkeypatch.setattr(export, "export_onnx", no_export)
    mtime = (bundle / BUNDLE_ONNX).stat().st_mtime_ns
    assert resolve_model_bundle(model_dir, test_cache) == bundle
    assert resolve_model_bundle(str(model_dir), test_cache) == bundle
    assert (bundle / BUNDLE_ONNX).stat().st_mtime_ns == mtime
    assert bundle.parent == test_cache / "onnx" and bundle.name.startswith("minilm-l6-squad2-")
    # a bundle and its model.onnx resolve to the bundle itself
    assert resolve_model_bundle(bundle, test_cache / "elsewhere") == bundle
    assert resolve_model_bundle(bundle / BUNDLE_ONNX, test_cache / "elsewhere") == bundle


def test_resolve_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither an existing folder"):
        resolve_model_bundle(tmp_path / "no" / "such" / "model", tmp_path)
    other = tmp_path / "other.onnx"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a model bundle"):
        resolve_model_bundle(other, tmp_path)


def test_cache_key_follows_file_contents(model_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        shutil.copy(model_dir / "config.json", d / "config.json")
    assert model_cache_key(a) == model_cache_key(b), "a copy of a checkpoint reuses its export"
    (b / "config.json").write_text((b / "config.json").read_text() + " ")
    assert model_cache_key(a) != model_cache_key(b), "an edited checkpoint exports again"
    assert model_cache_key(a, opset=17) != model_cache_key(a)
    assert model_cache_key("org/name") != model_cache_key("org/other")


def test_random_bert_bundle(tiny_bundle: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = _meta(tiny_bundle)
    assert meta["source"].startswith("random-bert:layers=2,hidden=64,heads=2,intermediate=128")
    assert max(meta["max_abs_diff"].values()) < 1e-3
    config = json.loads((tiny_bundle / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["intermediate_size"]) == (2, 64, 2, 128)
    start, end = OnnxRunner(tiny_bundle / BUNDLE_ONNX).run(
        ModelBatch(np.full((3, 40), 2000, np.int32), np.ones((3, 40), np.int32), np.zeros((3, 40), np.int32)))
    assert start.shape == end.shape == (3, 40) and np.isfinite(start).all()

    def no_export(*args: object, **kwargs: object) -> Path:
        raise AssertionError("export_random_bert rebuilt a bundle it could reuse")

    monkeypatch.setattr(export, "_write_bundle", no_export)
    assert export_random_bert(tiny_bundle, model_dir, 2, 64, 2, 128, seed=3) == tiny_bundle


def test_wrong_export_fails_loudly_and_writes_nothing(model_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate an exporter that gets the math wrong (as the legacy one did): scale one weight."""
    real_export_graph = export._export_graph

    def skewed_export_graph(wrapper: object, onnx_path: Path, **kwargs: object) -> None:
        real_export_graph(wrapper, onnx_path, **kwargs)
        model = onnx.load(str(onnx_path))
        weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.data_type == 1 else 0)
        skewed = onnx.numpy_helper.to_array(weight) * 1.5
        weight.CopyFrom(onnx.numpy_helper.from_array(skewed.astype(np.float32), weight.name))
        onnx.save(model, str(onnx_path))

    monkeypatch.setattr(export, "_export_graph", skewed_export_graph)
    out = tmp_path / "bundle"
    with pytest.raises(ExportCheckError, match="differs from PyTorch"):
        export_random_bert(out, model_dir, 1, 32, 2, 64, max_position_embeddings=64)
    assert list(tmp_path.iterdir()) == [], "no bundle and no temporary folder may be left behind"


def test_random_bert_rejects_bad_shapes(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hidden .* multiple of heads"):
        export_random_bert(tmp_path, model_dir, 2, 65, 2, 128)
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        export_random_bert(tmp_path, model_dir, 0, 64, 2, 128)


def test_cli_prints_the_bundle_path(bundle: Path, model_dir: Path, test_cache: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert export.main(["--model", str(model_dir), "--cache-dir", str(test_cache)]) == 0
    assert capsys.readouterr().out.strip() == str(bundle)

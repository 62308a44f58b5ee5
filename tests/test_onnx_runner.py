"""OnnxRunner: logits on real tokenized SQuAD windows against PyTorch, and its input checks."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trt_handler.backends.onnx_runner import OnnxRunner
from trt_handler.engines.export import BUNDLE_ONNX, resolve_model_bundle
from trt_handler.qa.batching import pad_windows
from trt_handler.qa.types import ModelBatch, QAExample, Window


@pytest.fixture(scope="module")
def bundle(model_dir: Path, test_cache: Path) -> Path:
    return resolve_model_bundle(model_dir, test_cache)


@pytest.fixture(scope="module")
def runner(bundle: Path) -> OnnxRunner:
    return OnnxRunner(bundle / BUNDLE_ONNX, intra_op_threads=1)


@pytest.fixture(scope="module")
def windows(bundle: Path, squad_a: Path) -> List[Window]:
    """Real windows of varied length: a few SQuAD questions, one with a short context, one long."""
    from trt_handler.qa.reading import load_examples
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    examples = load_examples(squad_a)[:4]
    short = QAExample("short", examples[0].question, examples[0].context.split(". ")[0] + ".")
    long = QAExample("long", examples[1].question, " ".join(ex.context for ex in load_examples(squad_a)[:60:6]))
    maker = WindowMaker(load_tokenizer(bundle))
    return [w for ex in [*examples, short, long] for w in maker.windows(ex)]


def _torch_logits(model_dir: Path, batch) -> tuple:
    import torch
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v).long() for k, v in batch.as_feed().items()})
    return out.start_logits.numpy(), out.end_logits.numpy()


def test_logits_match_pytorch_on_real_windows(runner: OnnxRunner, windows: List[Window], model_dir: Path) -> None:
    lengths = sorted(w.length for w in windows)
    assert lengths[0] < 64 and lengths[-1] == 384 and len(windows) >= 7, lengths
    batch = pad_windows(windows)
    start, end = runner.run(batch)
    ref_start, ref_end = _torch_logits(model_dir, batch)
    assert start.dtype == end.dtype == np.float32 and start.shape == batch.shape
    for i, w in enumerate(windows):  # compare real tokens; padded positions are never read
        n = w.length
        assert np.max(np.abs(start[i, :n] - ref_start[i, :n])) < 1e-3
        assert np.max(np.abs(end[i, :n] - ref_end[i, :n])) < 1e-3


def test_padding_does_not_change_a_windows_logits(runner: OnnxRunner, windows: List[Window]) -> None:
    w = min(windows, key=lambda x: x.length)
    alone = runner.run(pad_windows([w]))
    padded = runner.run(pad_windows([w], seq_len=384))
    for a, p in zip(alone, padded):
        assert np.max(np.abs(a[0] - p[0, : w.length])) < 1e-4


def _onnx_with_inputs(path: Path, names: tuple, elem_type: int) -> Path:
    """A valid tiny graph whose inputs are ``names`` of ``elem_type``, outputs like the QA model's."""
    inputs = [helper.make_tensor_value_info(n, elem_type, ["batch", "seq"]) for n in names]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "seq"])
               for n in ("start_logits", "end_logits")]
    nodes = [
        helper.make_node("Cast", [names[0]], ["start_logits"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [names[0]], ["end_logits"], to=TensorProto.FLOAT),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_rejects_models_with_other_inputs(tmp_path: Path) -> None:
    wrong_names = _onnx_with_inputs(tmp_path / "names.onnx", ("x", "attention_mask", "token_type_ids"),
                                    TensorProto.INT32)
    with pytest.raises(ValueError, match=r"inputs \[attention_mask .*x tensor\(int32\).*need int32"):
        OnnxRunner(wrong_names)
    int64 = _onnx_with_inputs(tmp_path / "int64.onnx", ("input_ids", "attention_mask", "token_type_ids"),
                              TensorProto.INT64)
    with pytest.raises(ValueError, match=r"input_ids tensor\(int64\).*re-export"):
        OnnxRunner(int64)


def test_a_right_signature_is_accepted(tmp_path: Path) -> None:
    ok = _onnx_with_inputs(tmp_path / "ok.onnx", ("input_ids", "attention_mask", "token_type_ids"), TensorProto.INT32)
    runner = OnnxRunner(ok.read_bytes())  # bytes: how the handler passes a model read from gs://
    ids = np.arange(6, dtype=np.int32).reshape(2, 3)
    start, end = runner.run(ModelBatch(ids, np.ones_like(ids), np.zeros_like(ids)))
    np.testing.assert_array_equal(start, ids.astype(np.float32))


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxRunner(tmp_path / "nope.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load"):
        OnnxRunner(broken)
    with pytest.raises(ValueError, match="intra_op_threads"):
        OnnxRunner(broken, intra_op_threads=0)

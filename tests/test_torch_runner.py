"""TorchRunner against references computed another way: the Hugging Face model called directly with
eager attention, ONNX Runtime on an export of the same checkpoint, and fp32 for the fp16/bf16 runs.

Models are tiny random BertForQuestionAnswering checkpoints made here (no download, no shared data).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.helpers import run_threads  # noqa: E402
from trt_handler.backends.torch_runner import Pending, TorchRunner  # noqa: E402
from trt_handler.qa.types import ModelBatch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOCAB = 300
MAX_POS = 128
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to PyTorch")


def _make_model(seed: int = 0) -> transformers.BertForQuestionAnswering:
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=MAX_POS)
    torch.manual_seed(seed)
    model = transformers.BertForQuestionAnswering(config).eval()
    # The default init gives logits ~1e-2: scale the QA head so differences are measured on logits
    # of a realistic size (a few units), where a wrong mask or segment would show.
    with torch.no_grad():
        model.qa_outputs.weight.mul_(50.0)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_bert_qa")
    _make_model().save_pretrained(out)
    return out


def _batch(rng: np.random.Generator, b: int, s: int, *, full_first: bool = True) -> ModelBatch:
    """Random windows: [CLS] ids, question segment 0, context segment 1, rows padded with zeros."""
    ids = rng.integers(5, VOCAB, size=(b, s)).astype(np.int32)
    mask = np.zeros((b, s), np.int32)
    types = np.zeros((b, s), np.int32)
    for row in range(b):
        n = s if (row == 0 and full_first) else int(rng.integers(max(2, s // 3), s + 1))
        mask[row, :n] = 1
        types[row, max(1, n // 3):n] = 1
        ids[row, 0] = 1
        ids[row, n:] = 0
    return ModelBatch(ids, mask, types)


def _hf_reference(checkpoint: Path, batch: ModelBatch, attn: str = "eager"):
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(
        str(checkpoint), attn_implementation=attn, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(batch.input_ids).long(),
                    attention_mask=torch.from_numpy(batch.attention_mask).long(),
                    token_type_ids=torch.from_numpy(batch.token_type_ids).long())
    return out.start_logits.numpy(), out.end_logits.numpy()


def _masked_max_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)[mask.astype(bool)]))


@pytest.fixture(scope="module")
def cpu_runner(checkpoint: Path) -> TorchRunner:
    runner = TorchRunner(checkpoint, device="cpu", dtype="fp32")
    yield runner
    runner.close()


def test_import_is_cheap() -> None:
    code = ("import sys, trt_handler.backends.torch_runner, trt_handler.backends.devices; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_fp32_matches_hf_eager_on_real_positions(cpu_runner: TorchRunner, checkpoint: Path) -> None:
    batch = _batch(np.random.default_rng(1), 5, 48)
    start, end = cpu_runner.run(batch)
    assert start.dtype == np.float32 and end.dtype == np.float32
    assert start.shape == end.shape == (5, 48)
    ref_start, ref_end = _hf_reference(checkpoint, batch)
    assert np.max(np.abs(ref_start)) > 1.0  # logits of a size where mistakes show
    assert _masked_max_diff(start, ref_start, batch.attention_mask) < 1e-4
    assert _masked_max_diff(end, ref_end, batch.attention_mask) < 1e-4
    assert cpu_runner.attn_implementation == "sdpa"


def test_mask_and_segments_change_the_logits(cpu_runner: TorchRunner) -> None:
    """Guards the comparison above: a runner that ignored the mask or segments would fail here."""
    batch = _batch(np.random.default_rng(2), 3, 40, full_first=False)
    start, _ = cpu_runner.run(batch)
    no_mask = ModelBatch(batch.input_ids, np.ones_like(batch.attention_mask), batch.token_type_ids)
    no_types = ModelBatch(batch.input_ids, batch.attention_mask, np.zeros_like(batch.token_type_ids))
    assert _masked_max_diff(cpu_runner.run(no_mask)[0], start, batch.attention_mask) > 1e-2
    assert _masked_max_diff(cpu_runner.run(no_types)[0], start, batch.attention_mask) > 1e-2


def test_padding_does_not_change_real_positions(cpu_runner: TorchRunner) -> None:
    rng = np.random.default_rng(3)
    batch = _batch(rng, 4, 64, full_first=False)
    start, end = cpu_runner.run(batch)
    for row in range(4):
        n = int(batch.attention_mask[row].sum())
        alone = ModelBatch(batch.input_ids[row:row + 1, :n], batch.attention_mask[row:row + 1, :n],
                           batch.token_type_ids[row:row + 1, :n])
        s1, e1 = cpu_runner.run(alone)
        np.testing.assert_allclose(start[row, :n], s1[0], atol=1e-4, rtol=0)
        np.testing.assert_allclose(end[row, :n], e1[0], atol=1e-4, rtol=0)


def test_matches_onnx_runtime_of_the_exported_checkpoint(checkpoint: Path, cpu_runner: TorchRunner,
                                                         tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from trt_handler.backends.onnx_runner import OnnxRunner
    from trt_handler.engines.export import _export_graph, _int32_wrapper

    model = transformers.AutoModelForQuestionAnswering.from_pretrained(str(checkpoint), attn_implementation="eager")
    onnx_path = tmp_path / "model.onnx"
    _export_graph(_int32_wrapper(model.eval()), onnx_path, opset=18, max_seq=MAX_POS)
    batch = _batch(np.random.default_rng(4), 3, 32)
    ref_start, ref_end = OnnxRunner(onnx_path, intra_op_threads=1).run(batch)
    start, end = cpu_runner.run(batch)
    assert _masked_max_diff(start, ref_start, batch.attention_mask) < 1e-3
    assert _masked_max_diff(end, ref_end, batch.attention_mask) < 1e-3


def test_bf16_close_to_fp32(checkpoint: Path, cpu_runner: TorchRunner) -> None:
    batch = _batch(np.random.default_rng(5), 3, 40)
    ref_start, _ = cpu_runner.run(batch)
    with TorchRunner(checkpoint, device="cpu", dtype="bf16") as runner:
        start, _ = runner.run(batch)
    assert start.dtype == np.float32
    diff = _masked_max_diff(start, ref_start, batch.attention_mask)
    scale = float(np.max(np.abs(ref_start)))
    assert 0 < diff < 0.05 * scale  # bf16 rounds (diff > 0) but stays close


def test_submit_result_equals_run_with_several_outstanding(cpu_runner: TorchRunner) -> None:
    rng = np.random.default_rng(6)
    batches = [_batch(rng, b, s) for b, s in ((2, 16), (3, 40), (1, 7))]
    pendings = [cpu_runner.submit(b) for b in batches]
    assert all(isinstance(p, Pending) and p.done() for p in pendings)
    for batch, pending in zip(batches, pendings):
        got = pending.result()
        assert got is pending.result()  # idempotent
        want = cpu_runner.run(batch)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_threads_share_one_runner(cpu_runner: TorchRunner) -> None:
    rng = np.random.default_rng(7)
    batches = [_batch(rng, 2, int(s)) for s in rng.integers(8, 64, size=12)]
    want = [cpu_runner.run(b) for b in batches]
    got: dict = {}

    def work(i: int) -> None:
        for k in range(i, len(batches), 4):
            got[k] = cpu_runner.submit(batches[k]).result()

    run_threads(work, 4)
    for k, (ws, we) in enumerate(want):
        np.testing.assert_allclose(got[k][0], ws, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got[k][1], we, atol=1e-5, rtol=0)


def test_warm_up_and_close(checkpoint: Path) -> None:
    runner = TorchRunner(checkpoint, device="cpu")
    runner.warm_up([(1, 8), (2, 16)])
    runner.close()
    runner.close()
    with pytest.raises(RuntimeError, match="closed"):
        runner.run(_batch(np.random.default_rng(0), 1, 8))


def test_refusals(checkpoint: Path, cpu_runner: TorchRunner, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        TorchRunner(tmp_path / "nothing")
    with pytest.raises(ValueError, match="dtype"):
        TorchRunner(checkpoint, dtype="int4")
    with pytest.raises(ValueError, match="device"):
        TorchRunner(checkpoint, device="tpu")
    with pytest.raises(ValueError, match="positions"):
        cpu_runner.run(_batch(np.random.default_rng(0), 1, MAX_POS + 8))
    bad = _batch(np.random.default_rng(0), 2, 8)
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        cpu_runner.run(ModelBatch(bad.input_ids, bad.attention_mask[:1], bad.token_type_ids))


def test_from_model_wraps_an_existing_module(cpu_runner: TorchRunner) -> None:
    batch = _batch(np.random.default_rng(8), 2, 24)
    runner = TorchRunner.from_model(_make_model(), device="cpu", dtype="fp32")
    np.testing.assert_allclose(runner.run(batch)[0], cpu_runner.run(batch)[0], atol=1e-5, rtol=0)


# --- CUDA ------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_cuda_fp32_matches_cpu_fp32(checkpoint: Path, cpu_runner: TorchRunner) -> None:
    batch = _batch(np.random.default_rng(10), 6, 96)
    ref_start, ref_end = cpu_runner.run(batch)
    with TorchRunner(checkpoint, device="cuda:0", dtype="fp32") as gpu:
        start, end = gpu.run(batch)
    assert _masked_max_diff(start, ref_start, batch.attention_mask) < 1e-3
    assert _masked_max_diff(end, ref_end, batch.attention_mask) < 1e-3


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cuda_half_close_to_cpu_fp32(checkpoint: Path, cpu_runner: TorchRunner, dtype: str) -> None:
    batch = _batch(np.random.default_rng(11), 8, 128)
    ref_start, ref_end = cpu_runner.run(batch)
    with TorchRunner(checkpoint, device="cuda", dtype=dtype) as gpu:
        start, end = gpu.run(batch)
    scale = float(np.max(np.abs(ref_start)))
    tol = (0.01 if dtype == "fp16" else 0.05) * scale
    assert 0 < _masked_max_diff(start, ref_start, batch.attention_mask) < tol
    assert _masked_max_diff(end, ref_end, batch.attention_mask) < tol


@pytest.mark.gpu
@needs_cuda
def test_cuda_submit_is_async_pinned_and_equals_run(checkpoint: Path) -> None:
    rng = np.random.default_rng(12)
    batches = [_batch(rng, 16, s) for s in (64, 128, 32, 96)]
    with TorchRunner(checkpoint, device="cuda", dtype="fp16") as gpu:
        want = [gpu.run(b) for b in batches]
        pendings = [gpu.submit(b) for b in batches]
        assert all(p._host.is_pinned() for p in pendings if p._host is not None)
        for p, (ws, we) in zip(reversed(pendings), reversed(want)):  # results in any order
            s, e = p.result()
            assert p.done()
            np.testing.assert_array_equal(s, ws)
            np.testing.assert_array_equal(e, we)


@pytest.mark.gpu
@needs_cuda
def test_cuda_threads_get_their_own_streams(checkpoint: Path) -> None:
    rng = np.random.default_rng(13)
    batches = [_batch(rng, 8, int(s)) for s in rng.integers(16, 128, size=16)]
    with TorchRunner(checkpoint, device="cuda", dtype="fp32") as gpu:
        want = [gpu.run(b) for b in batches]
        streams: dict = {}
        got: dict = {}

        def work(i: int) -> None:
            pend = [(k, gpu.submit(batches[k])) for k in range(i, len(batches), 4)]
            streams[i] = gpu._stream()
            for k, p in pend:
                got[k] = p.result()

        run_threads(work, 4)
        assert len({s.cuda_stream for s in streams.values()}) == 4
        assert torch.cuda.current_stream().cuda_stream not in {s.cuda_stream for s in streams.values()}
        for k, (ws, we) in enumerate(want):
            np.testing.assert_allclose(got[k][0], ws, atol=1e-4, rtol=0)
            np.testing.assert_allclose(got[k][1], we, atol=1e-4, rtol=0)

"""Make the repository's bundled default model: the shared MiniLM QA checkpoint as an int8 ONNX bundle.

    PYTHONPATH=. .venv/bin/python models/make_bundled_model.py \
        --model ../shared/models/minilm-l6-squad2 --out models/minilm-l6-squad2

Steps (same checkpoint + same library versions -> the same graph and weights; the model.onnx
sha256 is the same only while the traced source is too: torch.onnx.export stores each node's
Python stack trace, with absolute file paths and line numbers of export.py, transformers and
torch, in its ``pkg.torch.onnx.stack_trace`` metadata; tests/test_bundled_model.py compares
rebuilds without that field):

1. ``trt_handler.engines.export.export_onnx`` exports the checkpoint to a float32 bundle in a
   temporary folder (checked against PyTorch as every export is).
2. ``quantize_weight_only`` (default ``--method weight-only``) stores the large weights of the
   MatMul and Gather (embedding) nodes as int8 with a float32 scale per output column / row,
   turned back into float32 by Cast + Mul nodes that ONNX Runtime folds at load time: int8 on
   disk, float32 arithmetic. ``--method dynamic`` uses
   ``onnxruntime.quantization.quantize_dynamic`` instead (int8 activations too; measured 2.7 F1
   worse on B1, kept for comparison; ``--per-channel`` applies to it). ``--exclude`` takes
   node-name substrings that stay float32.
3. The quantized graph is compared with the float32 one on real SQuAD windows (the committed B1
   sample; max |diff| per batch shape recorded), and written as ``model.onnx`` with the float32
   bundle's tokenizer files and config.json, plus ``export.json`` in the same format as any
   export: ``sha256``/``onnx_bytes``/``max_abs_diff`` describe the int8 file, ``float32_export``
   keeps the float32 export's own check against PyTorch, ``quantization`` says how it was made.
4. Self-check: ``models/bundle_to_checkpoint.py`` (how tests rebuild a PyTorch checkpoint from the
   bundle on a clone without ../shared) must read the checkpoint's exact weights back from the
   float32 export.
5. The float32 export's ``tokenizer`` (sha256 of the tokenizer files) and ``canaries`` (questions with
   the answers the checkpoint gave) are kept, and the int8 model must give those answers too; runs
   replay them at launch. ``--record-only`` writes just these two into an existing bundle's export.json
   (from the checkpoint, checked on the bundle's int8 model) without quantizing again.

MODEL_CARD.md in the output folder is kept (it is written by hand, with the measured accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from trt_handler.engines.export import (
    BUNDLE_META,
    BUNDLE_ONNX,
    EXPORT_FORMAT_VERSION,
    export_onnx,
    file_sha256,
    model_checks,
    replay_canaries,
)
from trt_handler.qa.types import OUTPUT_NAMES, ModelBatch

REPO = Path(__file__).resolve().parents[1]
KEEP = ("MODEL_CARD.md", ".gitignore")
SAMPLE_DATA = REPO / "tests" / "data" / "squad_B1_sample.json"




def _random_batch(rng: np.random.Generator, batch: int, seq: int, vocab: int) -> ModelBatch:
    ids = rng.integers(1000, vocab, size=(batch, seq)).astype(np.int32)
    ids[:, 0] = 101
    mask = np.ones((batch, seq), dtype=np.int32)
    types = np.zeros((batch, seq), dtype=np.int32)
    types[:, seq // 3:] = 1
    return ModelBatch(ids, mask, types)


def real_batches(tokenizer_dir: Path, squad: Path = SAMPLE_DATA, n: int = 48) -> List[ModelBatch]:
    """Padded batches of real SQuAD windows (the committed B1 sample): short and full-length ones."""
    from trt_handler.qa.batching import pad_windows
    from trt_handler.qa.reading import load_examples
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    examples = load_examples(str(squad))[::7][:n]
    windows = [w for ws in WindowMaker(load_tokenizer(tokenizer_dir)).windows_many(examples) for w in ws]
    windows.sort(key=lambda w: w.length)
    half = len(windows) // 2
    return [pad_windows(windows[:half]), pad_windows(windows[half:])]


def compare(reference: Path, candidate: Path, batches: Sequence[ModelBatch]) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Max |candidate - reference| over both logits per batch shape, and max |reference logit|."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    ref = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
    diffs: Dict[str, float] = {}
    scales: Dict[str, float] = {}
    for mb in batches:
        feed = mb.as_feed()
        a = ref.run(list(OUTPUT_NAMES), feed)
        c = got.run(list(OUTPUT_NAMES), feed)
        key = "x".join(map(str, mb.shape))
        diffs[key] = round(max(float(np.max(np.abs(x - y))) for x, y in zip(a, c)), 4)
        scales[key] = round(max(float(np.max(np.abs(x))) for x in a), 4)
    return diffs, scales


def check_weight_mapping(model: str, fp32_onnx: Path) -> float:
    """models/bundle_to_checkpoint.py must read back exactly the checkpoint's weights from the
    float32 export (so the tests' rebuilt checkpoint is this model); returns the max |diff|."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bundle_to_checkpoint import onnx_state_dict

    ref = AutoModelForQuestionAnswering.from_pretrained(model, dtype=torch.float32).state_dict()
    got = onnx_state_dict(fp32_onnx)
    missing = [k for k in ref if k not in got and not k.endswith(("position_ids", "token_type_ids"))]
    if missing:
        raise RuntimeError(f"bundle_to_checkpoint misses {missing}")
    worst = max(float(np.max(np.abs(got[k] - ref[k].numpy()))) for k in got)
    if worst > 0:
        raise RuntimeError(f"bundle_to_checkpoint reads weights off by {worst}")
    return worst


def quantize(fp32_onnx: Path, out_onnx: Path, *, per_channel: bool, exclude: Sequence[str],
             op_types: Sequence[str]) -> List[str]:
    """int8 dynamic quantization; returns the names of the nodes left in float32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_onnx)).graph
    excluded = sorted(n.name for n in graph.node if n.op_type in op_types and any(e in n.name for e in exclude))
    quantize_dynamic(
        str(fp32_onnx), str(out_onnx), op_types_to_quantize=list(op_types), per_channel=per_channel,
        weight_type=QuantType.QInt8, nodes_to_exclude=excluded or None,
        extra_options={"MatMulConstBOnly": True},
    )
    return excluded


def quantize_weight_only(fp32_onnx: Path, out_onnx: Path, *, op_types: Sequence[str], min_elements: int = 65536,
                         exclude: Sequence[str] = ()) -> List[str]:
    """Weight-only int8: each large constant weight of a MatMul (B, [in, out]) or Gather (the
    embedding table, [rows, dim]) is stored as symmetric int8 with one float32 scale per output
    column / per row; ``Cast`` + ``Mul`` in the graph turn it back into float32 (folded at load
    time); all arithmetic stays float32 (no activation quantization). Returns the names of the
    quantized initializers."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32_onnx))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    targets: Dict[str, int] = {}  # initializer -> axis that keeps its own scale
    for node in graph.node:
        if node.op_type not in op_types or any(e and e in node.name for e in exclude):
            continue
        slot, axis = (1, 1) if node.op_type == "MatMul" else (0, 0)
        if node.op_type == "Gather" and next((a.i for a in node.attribute if a.name == "axis"), 0) != 0:
            continue
        name = node.input[slot] if len(node.input) > slot else ""
        init = inits.get(name)
        if init is None or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2:
            continue
        n = int(np.prod(init.dims))
        if n >= min_elements and targets.setdefault(name, axis) != axis:
            raise ValueError(f"{name} is used along two axes")
    dq_nodes = []
    for name, axis in sorted(targets.items()):
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        amax = np.max(np.abs(w), axis=1 - axis, keepdims=True)  # [1, out] (MatMul) or [rows, 1] (Gather)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                                  numpy_helper.from_array(scale, f"{name}_scale")])
        # Cast + Mul rather than DequantizeLinear: both have only constant inputs, so ONNX Runtime
        # (and TensorRT's parser) fold them into a float32 weight once at load time and the model
        # computes in float32. A DequantizeLinear -> MatMul pair is instead fused by ONNX Runtime's
        # extended optimizations into a MatMul that quantizes activations too (logits off by ~0.2).
        dq_nodes.append(helper.make_node("Cast", [f"{name}_int8"], [f"{name}_int8_as_float"],
                                         name=f"{name}_cast", to=onnx.TensorProto.FLOAT))
        dq_nodes.append(helper.make_node("Mul", [f"{name}_int8_as_float", f"{name}_scale"], [name],
                                         name=f"{name}_dequantize"))
    nodes = dq_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_onnx))
    return sorted(targets)


def make(model: str, out_dir: Path, *, method: str = "weight-only", per_channel: bool = False,
         exclude: Sequence[str] = (), op_types: Sequence[str] = ("MatMul", "Gather")) -> Dict[str, Any]:
    import onnxruntime

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bundled-model-") as tmp_s:
        tmp = Path(tmp_s)
        fp32 = export_onnx(model, tmp / "fp32")
        staged = tmp / "int8"
        staged.mkdir()
        if method == "weight-only":
            quantized = quantize_weight_only(fp32 / BUNDLE_ONNX, staged / BUNDLE_ONNX, op_types=op_types, exclude=exclude)
            how: Dict[str, Any] = {
                "method": "weight-only int8 (models/make_bundled_model.py: quantize_weight_only)",
                "weights": "symmetric int8, one float32 scale per MatMul output column / embedding row; "
                           "Cast + Mul in the graph (constant-folded at load); activations and arithmetic float32",
                "quantized_initializers": quantized,
            }
        elif method == "dynamic":
            excluded = quantize(fp32 / BUNDLE_ONNX, staged / BUNDLE_ONNX, per_channel=per_channel,
                                exclude=exclude, op_types=op_types)
            how = {
                "method": "onnxruntime.quantization.quantize_dynamic",
                "weight_type": "QInt8",
                "per_channel": per_channel,
                "excluded_nodes": excluded,
            }
        else:
            raise ValueError(f"unknown method {method!r}")
        meta = json.loads((fp32 / BUNDLE_META).read_text(encoding="utf-8"))
        check_int8_canaries(meta["canaries"], fp32, staged / BUNDLE_ONNX)
        check_weight_mapping(model, fp32 / BUNDLE_ONNX)
        diffs, scales = compare(fp32 / BUNDLE_ONNX, staged / BUNDLE_ONNX, real_batches(fp32))
        for f in sorted(fp32.iterdir()):
            if f.is_file() and f.name not in (BUNDLE_ONNX, BUNDLE_META):
                shutil.copy2(f, staged / f.name)
        onnx_path = staged / BUNDLE_ONNX
        src = Path(model).resolve()
        shown = os.path.relpath(src, REPO) if src.exists() else model
        float32_export = {k: meta[k] for k in ("sha256", "onnx_bytes", "tolerance", "max_abs_diff", "max_abs_logit")}
        meta.update({
            "source": f"{shown} (int8 {method} quantization of its float32 export; models/make_bundled_model.py)",
            "sha256": file_sha256(onnx_path),
            "onnx_bytes": onnx_path.stat().st_size,
            # what model.onnx (int8) was checked against: the float32 export below, which itself
            # matched PyTorch within its tolerance; measured on real SQuAD windows (B1 sample)
            "checked": True,
            "tolerance": None,
            "max_abs_diff": diffs,
            "max_abs_logit": scales,
            "export_seconds": None,
            "quantization": {
                **how,
                "op_types": list(op_types),
                "onnxruntime": onnxruntime.__version__,
                "compared_with": "float32 export on real windows of tests/data/squad_B1_sample.json",
            },
            "float32_export": float32_export,
        })
        (staged / BUNDLE_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for f in out_dir.iterdir():
            if f.name not in KEEP:
                if f.is_dir():
                    shutil.rmtree(f)
                else:
                    f.unlink()
        for f in staged.iterdir():
            shutil.copy2(f, out_dir / f.name)
    return meta


def check_int8_canaries(record: Dict[str, Any], tokenizer_dir: Path, int8_onnx: Path) -> int:
    """The int8 model must give the canary answers the checkpoint gave (ModelCheckError otherwise)."""
    from trt_handler.engines.canaries import onnx_answers
    from trt_handler.qa.windows import load_tokenizer

    return replay_canaries(record, load_tokenizer(tokenizer_dir), onnx_answers(str(int8_onnx)),
                           "the checkpoint (float32), replayed on the int8 model")


def record_only(model: str, out_dir: Path) -> Dict[str, Any]:
    """Add the tokenizer and canary record (:func:`trt_handler.engines.export.model_checks`) of checkpoint
    ``model`` to the existing bundle ``out_dir``'s export.json; its tokenizer files must be the checkpoint's."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    from trt_handler.engines.export import _int32_wrapper

    with tempfile.TemporaryDirectory(prefix="bundled-model-record-") as tmp:
        for f in out_dir.iterdir():  # the bundle's tokenizer files, as a run loads them
            if f.is_file() and f.suffix == ".json" and f.name != BUNDLE_META:
                shutil.copy2(f, Path(tmp) / f.name)
        qa_model = AutoModelForQuestionAnswering.from_pretrained(model, dtype=torch.float32)
        checks = model_checks(Path(tmp), _int32_wrapper(qa_model), None, model)
    check_int8_canaries(checks["canaries"], out_dir, out_dir / BUNDLE_ONNX)
    meta = json.loads((out_dir / BUNDLE_META).read_text(encoding="utf-8"))
    meta.update(format_version=EXPORT_FORMAT_VERSION, **checks)
    (out_dir / BUNDLE_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(REPO.parent / "shared" / "models" / "minilm-l6-squad2"),
                   help="Hugging Face QA checkpoint folder (default: the shared MiniLM model)")
    p.add_argument("--out", type=Path, default=REPO / "models" / "minilm-l6-squad2")
    p.add_argument("--method", choices=["weight-only", "dynamic"], default="weight-only",
                   help="weight-only: int8 weights, float32 compute (default; ~0 accuracy cost); "
                        "dynamic: onnxruntime quantize_dynamic, int8 MatMulInteger (lost 2.7 F1 on B1)")
    p.add_argument("--per-channel", action="store_true", help="dynamic only: per-output-channel MatMul weight scales")
    p.add_argument("--exclude", nargs="*", default=[], help="node-name substrings kept in float32")
    p.add_argument("--op-types", nargs="+", default=["MatMul", "Gather"], help="op types to quantize")
    p.add_argument("--record-only", action="store_true",
                   help="only add the tokenizer sha256 and canary answers to the existing bundle's export.json")
    args = p.parse_args(argv)
    if args.record_only:
        meta = record_only(args.model, args.out)
        print(f"{args.out}: recorded {len(meta['canaries']['questions'])} canary answers and the tokenizer files "
              f"{sorted(meta['tokenizer']['files'])}")
        return 0
    meta = make(args.model, args.out, method=args.method, per_channel=args.per_channel, exclude=args.exclude,
                op_types=args.op_types)
    print(f"{args.out}: model.onnx {meta['onnx_bytes'] / 1e6:.1f} MB "
          f"(float32 {meta['float32_export']['onnx_bytes'] / 1e6:.1f} MB), sha256 {meta['sha256'][:12]}, "
          f"max |int8 - float32| {meta['max_abs_diff']} (max |logit| {meta['max_abs_logit']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

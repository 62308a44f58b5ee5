"""Rebuild a Hugging Face ``BertForQuestionAnswering`` checkpoint from an exported or int8 bundle.

The bundled model (``models/minilm-l6-squad2``) stores only ONNX; some tests (export, PyTorch
parity) need a PyTorch checkpoint folder. On a clone without ``../shared`` the test fixtures use
the checkpoint this module writes: the bundle's weights read from ``model.onnx``, int8 weights
dequantized (``(q - zero_point) * scale``) to float32 exactly as the graph does it, plus the bundle's config and tokenizer files.

It is *not* the original shared checkpoint (its weights carry the int8 rounding), so accuracy
figures of the model card do not apply to it; it is a real trained model of the same shape and
vocabulary, which is what plumbing and parity tests need.

How weights are found: initializers named after the PyTorch parameters (``inner.<param>``,
possibly stored as ``_int8`` + ``_scale`` and rebuilt by Cast + Mul nodes, or quantize_dynamic's
``_quantized``/``_scale``/``_zero_point``) map directly; a MatMul / MatMulInteger with
a constant weight ``[in, out]`` is the Linear whose bias the graph adds right after it (the Add's
initializer ``inner.<module>.bias``), stored transposed. Every parameter of the model must be found
(``load_state_dict(strict=True)``), or this fails.

    PYTHONPATH=. python models/bundle_to_checkpoint.py models/minilm-l6-squad2 OUT_DIR
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

PREFIX = "inner."  # export.py wraps the model in Int32QA(inner=model)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: Optional[np.ndarray], axis: int) -> np.ndarray:
    x = q.astype(np.float32)
    zp = np.zeros_like(scale, dtype=np.float32) if zero_point is None else zero_point.astype(np.float32)
    if scale.ndim == 0 or scale.size == 1:
        return (x - zp.reshape(())) * scale.astype(np.float32).reshape(())
    shape = [1] * q.ndim
    shape[axis] = -1
    return (x - zp.reshape(shape)) * scale.astype(np.float32).reshape(shape)


def onnx_state_dict(onnx_path: os.PathLike[str] | str) -> Dict[str, np.ndarray]:
    """PyTorch parameter name -> float32 array, read from an exported (float32 or int8) model.onnx."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    def attr(node: Any, name: str, default: int) -> int:
        for a in node.attribute:
            if a.name == name:
                return int(a.i)
        return default

    consumers: Dict[str, List[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    # 0. constant dequantization (weight-only int8 bundles: Cast + Mul; quantize_dynamic's
    #    embeddings: DequantizeLinear): the output is the float32 weight under its original name
    for node in graph.node:
        if not node.input or not all(i in inits for i in node.input if i):
            continue
        if node.op_type == "DequantizeLinear":
            zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            inits[node.output[0]] = _dequantize(inits[node.input[0]], inits[node.input[1]], zp, attr(node, "axis", 1))
        elif node.op_type == "Cast" and attr(node, "to", 0) == onnx.TensorProto.FLOAT:
            inits[node.output[0]] = inits[node.input[0]].astype(np.float32)
        elif node.op_type == "Mul" and inits[node.input[0]].ndim == 2:
            inits[node.output[0]] = (inits[node.input[0]] * inits[node.input[1]]).astype(np.float32)

    out: Dict[str, np.ndarray] = {}
    # 1. parameters stored under their own name (float32, or DequantizeLinear'd int8 embeddings)
    for name, value in inits.items():
        if not name.startswith(PREFIX):
            continue
        if name.endswith("_quantized"):
            base = name[: -len("_quantized")]
            axis = next((attr(n, "axis", 1) for n in consumers.get(name, []) if n.op_type == "DequantizeLinear"), 1)
            out[base[len(PREFIX):]] = _dequantize(value, inits[base + "_scale"], inits.get(base + "_zero_point"), axis)
        elif not name.endswith(("_scale", "_zero_point", "_as_float")) and value.dtype == np.float32:
            out[name[len(PREFIX):]] = value.astype(np.float32)

    # 2. Linear weights: the constant B of a MatMul/MatMulInteger, named by the bias added after it
    def bias_after(node: Any, depth: int = 6) -> Optional[str]:
        frontier = [node]
        for _ in range(depth):
            nxt = []
            for n in frontier:
                for o in n.output:
                    for c in consumers.get(o, []):
                        if c.op_type == "Add":
                            for i in c.input:
                                if i.startswith(PREFIX) and i.endswith(".bias") and i in inits:
                                    return i
                        nxt.append(c)
            frontier = nxt
        return None

    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            weight = inits[node.input[1]].astype(np.float32)
        elif node.op_type == "MatMulInteger" and node.input[1] in inits:
            b = node.input[1]
            base = b[: -len("_quantized")] if b.endswith("_quantized") else b
            zp = inits.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            weight = _dequantize(inits[b], inits[base + "_scale"], zp, axis=1)
        else:
            continue
        bias = bias_after(node)
        if bias is None:
            raise ValueError(f"cannot tell which Linear the MatMul {node.name!r} belongs to (no bias Add after it)")
        key = bias[len(PREFIX): -len(".bias")] + ".weight"
        if key in out:
            raise ValueError(f"two MatMuls map to {key}")
        out[key] = np.ascontiguousarray(weight.T)
    return out


def checkpoint_from_bundle(bundle: os.PathLike[str] | str, out_dir: os.PathLike[str] | str) -> Path:
    """Write a float32 Hugging Face checkpoint rebuilt from ``bundle`` into ``out_dir`` (reused when
    ``out_dir/rebuilt_from.json`` names the same model.onnx sha256)."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    src, out = Path(bundle), Path(out_dir)
    meta = json.loads((src / "export.json").read_text(encoding="utf-8"))
    stamp = {"bundle": src.name, "sha256": meta["sha256"]}
    marker = out / "rebuilt_from.json"
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == stamp:
        return out
    config = BertConfig.from_pretrained(str(src))
    config.dtype = "float32"
    model = BertForQuestionAnswering(config).eval()
    state = {k: torch.from_numpy(v.copy()) for k, v in onnx_state_dict(src / "model.onnx").items()}
    expected = set(model.state_dict())
    unknown = sorted(set(state) - expected)
    state = {k: v for k, v in state.items() if k in expected}
    missing = sorted(expected - set(state) - {"bert.embeddings.position_ids", "bert.embeddings.token_type_ids"})
    if missing or unknown:
        raise ValueError(f"bundle {src} does not map onto BertForQuestionAnswering: missing {missing}, unknown {unknown}")
    model.load_state_dict(state, strict=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(str(tmp))
        for name in _TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        (tmp / "rebuilt_from.json").write_text(json.dumps(stamp) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    print(checkpoint_from_bundle(sys.argv[1], sys.argv[2]))

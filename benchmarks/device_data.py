"""Data for runs on a lent GPU machine, small enough to travel with the working tree.

The trained MiniLM QA model travels as the bundled int8 model's weights, exactly: every large weight
matrix of the bundle has at most 256 distinct values per row or column, so it is stored as uint8
codes plus a step and a scale per slice (the int8 dequantization, exactly; ~20 MB instead of 90 MB), and rebuilt into a
float32 Hugging Face checkpoint on the machine, without the ``onnx`` package (which is not there).

    python -m benchmarks.device_data pack models/minilm-l6-squad2 .devdata/minilm-packed.npz   # here
    python -m benchmarks.device_data unpack .devdata/minilm-packed.npz models/minilm-l6-squad2 OUT_DIR   # there
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def pack(bundle: Path, out: Path) -> Path:
    """The bundle's parameters (``models/bundle_to_checkpoint.onnx_state_dict``) as codes + codebooks."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    from bundle_to_checkpoint import onnx_state_dict

    arrays: Dict[str, np.ndarray] = {}
    for name, value in onnx_state_dict(bundle / "model.onnx").items():
        affine = _affine(value) if value.ndim == 2 and value.size > 65536 else None
        if affine is None:
            arrays[name] = value.astype(np.float32)
        else:
            axis, codes, low, scale = affine
            arrays[f"{name}|codes|{axis}"], arrays[f"{name}|low|{axis}"], arrays[f"{name}|scale|{axis}"] = codes, low, scale
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    restored = unpacked_state(out)
    assert all(np.array_equal(restored[k], v) for k, v in onnx_state_dict(bundle / "model.onnx").items())
    return out


def _affine(value: np.ndarray) -> Optional[Tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(axis, uint8 codes, per-slice lowest step, per-slice float32 scale) with
    value == float32(float32(code + low) * scale) exactly (the int8 dequantization), along the axis with
    the fewer slices that allows it; None if neither does."""
    for axis in sorted((0, 1), key=lambda a: value.shape[a]):
        slices = np.moveaxis(value, axis, 0).astype(np.float32)
        codes = np.empty(slices.shape, dtype=np.uint8)
        lows = np.empty(len(slices), dtype=np.int16)
        scales = np.empty(len(slices), dtype=np.float32)
        for i, row in enumerate(slices):
            found = _row_affine(row)
            if found is None:
                break
            codes[i], lows[i], scales[i] = found
        else:
            return axis, codes, lows, scales
    return None


def _row_affine(row: np.ndarray) -> Optional[Tuple[np.ndarray, int, np.float32]]:
    uniques = np.unique(row)
    if len(uniques) > 256 or len(uniques) < 2:
        return None
    step = float(np.diff(uniques.astype(np.float64)).min())  # adjacent levels: about one scale apart
    n = np.rint(row.astype(np.float64) / step).astype(np.int64)
    j = int(np.abs(n).argmax())
    guess = np.float32(float(row[j]) / float(n[j]))
    for k in range(-4, 5):  # the float32 scale is a few ulps from this estimate
        scale = np.float32(guess + k * np.spacing(guess))
        if np.array_equal((n.astype(np.float32) * scale).astype(np.float32), row) and np.ptp(n) <= 255:
            return (n - n.min()).astype(np.uint8), int(n.min()), scale
    return None


def unpacked_state(path: Path) -> Dict[str, np.ndarray]:
    """Parameter name -> float32 array, exactly the packed values."""
    data = np.load(path)
    out: Dict[str, np.ndarray] = {}
    for key in data.files:
        if "|" not in key:
            out[key] = data[key]
        elif "|codes|" in key:
            name, _, axis = key.split("|")
            n = data[key].astype(np.int64) + data[f"{name}|low|{axis}"].astype(np.int64)[:, None]
            rows = (n.astype(np.float32) * data[f"{name}|scale|{axis}"][:, None]).astype(np.float32)
            out[name] = np.ascontiguousarray(np.moveaxis(rows, 0, int(axis)))
    return out


def unpack(path: Path, bundle: Path, out: Path) -> Path:
    """A float32 ``BertForQuestionAnswering`` checkpoint folder with the bundle's config and tokenizer."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    config = BertConfig.from_pretrained(str(bundle))
    model = BertForQuestionAnswering(config).eval()
    state = {k: torch.from_numpy(v) for k, v in unpacked_state(path).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise ValueError(f"packed weights do not fit BertForQuestionAnswering: missing {missing}, unknown {unexpected}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    for name in _TOKENIZER_FILES:
        if (bundle / name).is_file():
            shutil.copy2(bundle / name, out / name)
    (out / "rebuilt_from.json").write_text(json.dumps({"packed": str(path), "bundle": str(bundle)}) + "\n")
    return out


if __name__ == "__main__":
    verb, *rest = sys.argv[1:]
    if verb == "pack":
        print(pack(Path(rest[0]), Path(rest[1])))
    elif verb == "unpack":
        print(unpack(Path(rest[0]), Path(rest[1]), Path(rest[2])))
    else:
        raise SystemExit(__doc__)

"""Hugging Face BERT-family QA checkpoint -> ONNX "model bundle", checked against PyTorch.

A bundle is a folder with ``model.onnx`` (int32 inputs, float32 logits, all [batch, seq] with both axes
dynamic), the tokenizer files, config.json and ``export.json`` (source, versions, sha256 of model.onnx,
max |ONNX - PyTorch| per checked shape). The torch.export ("dynamo") exporter is used because the legacy
one with ``dynamic_axes`` gave logits 8-20% off PyTorch; an export above the tolerance is not bundled.
CLI: ``python -m trt_handler.engines.export --model MODEL_DIR_OR_HUB_ID --cache-dir cache [--out-dir DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from trt_handler.engines.canaries import CanaryError, make_record, onnx_answers, padded_answers, replay
from trt_handler.qa.types import INPUT_NAMES, OUTPUT_NAMES, ModelBatch

__all__ = [
    "BUNDLE_META",
    "BUNDLE_ONNX",
    "ExportCheckError",
    "ModelCheckError",
    "bundle_onnx_path",
    "check_model_bundle",
    "export_onnx",
    "export_random_bert",
    "model_checks",
    "record_checkpoint",
    "replay_canaries",
    "resolve_model_bundle",
    "verify_bundle",
]

LOGGER = logging.getLogger("trt_handler.engines.export")

BUNDLE_ONNX = "model.onnx"
BUNDLE_META = "export.json"
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-3
# (batch, seq) shapes every export is checked at; seqs above the model's max positions are skipped.
CHECK_SHAPES: Tuple[Tuple[int, int], ...] = ((1, 17), (3, 128), (2, 384))
# Part of the cache key: bump when the exported graph changes for the same checkpoint.
EXPORT_FORMAT_VERSION = 2  # 2: export.json records the tokenizer files' sha256 and canary answers
_EXTERNAL_DATA_BYTES = 2 * 1024**3  # protobuf's hard limit for one file
_MAX_EXPORT_BATCH = 4096


class ExportCheckError(RuntimeError):
    """The exported ONNX disagrees with PyTorch beyond the tolerance; no bundle is written."""


class ModelCheckError(ValueError):
    """A model bundle or checkpoint that must not be used; the message names the cause and the fix."""


PathLike = Union[str, "os.PathLike[str]"]


def is_model_bundle(path: PathLike) -> bool:
    """True for a folder holding ``model.onnx`` (an exported bundle or one copied elsewhere)."""
    p = Path(path)
    return p.is_dir() and (p / BUNDLE_ONNX).is_file()


def bundle_onnx_path(bundle: PathLike) -> Path:
    """``bundle/model.onnx``; raises FileNotFoundError naming the fix when it is missing."""
    p = Path(bundle) / BUNDLE_ONNX
    if not p.is_file():
        raise FileNotFoundError(
            f"{bundle} is not a model bundle (no {BUNDLE_ONNX}); export one with "
            "`python -m trt_handler.engines.export --model M --cache-dir C`"
        )
    return p


_REEXPORT = (
    "export the checkpoint again (python -m trt_handler.engines.export --model CHECKPOINT --out-dir DIR), "
    "or delete the bundle folder if it is in the cache so the next run re-exports it"
)


def verify_bundle(bundle: PathLike) -> None:
    """Raise ModelCheckError (a ValueError) unless ``bundle/model.onnx`` has the size and sha256 its
    export.json recorded (none: a hand-made bundle, accepted with a warning); cheap on every use (memoized)."""
    path = Path(bundle)
    if not is_model_bundle(path):
        raise ModelCheckError(f"{path} is not a model bundle (no {BUNDLE_ONNX}): {_REEXPORT}")
    onnx_path, meta_path = path / BUNDLE_ONNX, path / BUNDLE_META
    if not meta_path.exists():
        LOGGER.warning("model bundle %s has no %s: its model.onnx cannot be checked against a recorded "
                       "sha256 (a hand-made bundle?); export it with trt_handler.engines.export to get one",
                       path, BUNDLE_META)
        return
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelCheckError(
            f"The model bundle {path} has an unreadable {BUNDLE_META} ({err}), so its model.onnx cannot be checked "
            f"against the sha256 its export recorded. Cause: the file was cut short or edited. Fix: {_REEXPORT}."
        ) from err
    want = meta.get("sha256") if isinstance(meta, dict) else None
    if not isinstance(want, str) or len(want) != 64:
        raise ModelCheckError(
            f"The model bundle {path} has a {BUNDLE_META} without a sha256 of {BUNDLE_ONNX}, so the model cannot "
            f"be checked. Cause: it was not written by trt_handler.engines.export, or was edited. Fix: {_REEXPORT}."
        )
    size, recorded_size = onnx_path.stat().st_size, meta.get("onnx_bytes")
    if isinstance(recorded_size, int) and recorded_size != size:
        found = f"is {size:,} bytes, its export recorded {recorded_size:,}"
    elif (got := file_sha256(onnx_path)) != want:
        found = f"has sha256 {got[:16]}..., its export recorded {want[:16]}..."
    else:
        return
    raise ModelCheckError(
        f"The model in bundle {path} is not the one that was exported and checked: {onnx_path} {found}. "
        "Cause: model.onnx was changed after export (weights edited, a partial copy, a different model "
        f"copied over it), so its answers were never compared with PyTorch. Fix: {_REEXPORT}; if the new "
        f"model.onnx is intended, export it properly so {BUNDLE_META} records it."
    )


def _verify_tokenizer_files(folder: PathLike, record: Any, recorded_by: str) -> None:
    """ModelCheckError unless ``folder``'s tokenizer files have the sha256 ``record`` lists."""
    from trt_handler.qa.windows import TokenizerCheckError, check_tokenizer_record

    try:
        check_tokenizer_record(folder, record, recorded_by)
    except TokenizerCheckError as err:
        raise ModelCheckError(str(err)) from None


# Bundles (model file, tokenizer files, record) whose canary answers this process has replayed.
_REPLAYED: set[Tuple[Any, ...]] = set()


def check_model_bundle(path: PathLike) -> None:
    """A pipeline's launch check: ModelCheckError (cause and fix) unless ``path`` passes
    :func:`verify_bundle` (model.onnx as exported), its tokenizer ``qa.windows.load_tokenizer``, and,
    where its export recorded them, the tokenizer files' sha256 and the canary questions' answers (a
    handful of questions on ONNX Runtime)."""
    verify_bundle(path)
    tokenizer = _checked_tokenizer(path, f"The model bundle {path} cannot be used because of its tokenizer")
    meta = _read_meta(Path(path))
    if meta.get("tokenizer") is not None:
        _verify_tokenizer_files(path, meta["tokenizer"], f"the {BUNDLE_META} of bundle {path}")
    if meta.get("canaries") is not None:
        from trt_handler.qa.windows import tokenizer_record

        onnx = Path(path) / BUNDLE_ONNX
        st = onnx.stat()  # a replay stands for the same model file, tokenizer files and record (one per process)
        key = (str(onnx.resolve()), st.st_ino, st.st_size, st.st_mtime_ns,
               json.dumps([meta["canaries"], tokenizer_record(path)], sort_keys=True))
        if key not in _REPLAYED:
            replay_canaries(meta["canaries"], tokenizer, onnx_answers(str(onnx)), f"the export of bundle {path}")
            _REPLAYED.add(key)


def replay_canaries(record: Any, tokenizer: Any, answer_fn: Any, where: str) -> int:
    """:func:`canaries.replay`, its refusal a ModelCheckError; returns the answers compared."""
    try:
        return replay(record, tokenizer, answer_fn, where)
    except CanaryError as err:
        raise ModelCheckError(str(err)) from None


def model_cache_key(model: PathLike, *, opset: int = DEFAULT_OPSET) -> str:
    """Short hash naming a checkpoint's export: the exporter version, opset and the file contents
    of a local folder (a copy reuses its export, an edit exports again), or the hub id."""
    h = hashlib.sha256(f"export-v{EXPORT_FORMAT_VERSION}/opset{opset}\n".encode())
    p = Path(model)
    if p.is_dir():
        for f in sorted(p.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                h.update(f"{f.name}\n".encode())
                hash_file(h, f)
    else:
        h.update(f"hub:{model}".encode())
    return h.hexdigest()[:12]


def _slug(model: PathLike) -> str:
    p = Path(model)
    name = p.name if p.is_dir() else str(model).replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:60] or "model"


def resolve_model_bundle(model: PathLike, cache_dir: PathLike) -> Path:
    """The verified model bundle for ``model``: a bundle folder or its ``model.onnx`` as is (else
    ModelCheckError), or a checkpoint folder or hub id exported once into ``cache_dir/onnx/<slug>-<hash>/``
    (a damaged cached export is exported again)."""
    s = os.fspath(model)
    p = Path(s)
    if p.is_file() and p.name == BUNDLE_ONNX:
        p = p.parent
    if is_model_bundle(p):
        verify_bundle(p)
        return p
    if p.is_file():
        raise ValueError(
            f"{p} is not a model bundle: a bundle is a folder with {BUNDLE_ONNX} (+ tokenizer files); "
            f"rename the file to {BUNDLE_ONNX} next to its tokenizer files, or export the checkpoint "
            "with `python -m trt_handler.engines.export`"
        )
    hub_id = re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", s) and not s.endswith((".onnx", ".json"))
    if not p.is_dir() and not hub_id:
        raise FileNotFoundError(
            f"model {s!r} is neither an existing folder/file nor a Hugging Face hub id; "
            "pass a checkpoint folder, a model bundle, a model.onnx file or a hub id like 'org/name'"
        )
    target = Path(cache_dir) / "onnx" / f"{_slug(s)}-{model_cache_key(s)}"
    if is_model_bundle(target) and (target / BUNDLE_META).is_file():
        try:
            verify_bundle(target)
        except ModelCheckError as err:
            LOGGER.warning("cached ONNX bundle %s is damaged, exporting it again: %s", target, err)
        else:
            LOGGER.info("reusing exported ONNX bundle %s for %s", target, s)
            return target
    LOGGER.info("exporting %s to ONNX bundle %s (once; later runs reuse it)", s, target)
    return export_onnx(s, target)


def export_onnx(model: PathLike, out_dir: PathLike, *, opset: int = DEFAULT_OPSET, check: bool = True) -> Path:
    """Export a Hugging Face QA checkpoint (folder or hub id) to a model bundle in ``out_dir`` (replaced
    only when empty or a bundle). ExportCheckError: ONNX Runtime and PyTorch differ beyond the tolerance
    (when ``check``); ModelCheckError: a tokenizer that would not serve the model."""
    from transformers import AutoModelForQuestionAnswering

    torch = _torch()
    src = os.fspath(model)
    if Path(src).is_file():
        raise ValueError(f"{src} is a file; export_onnx takes a checkpoint folder or a hub id")
    tokenizer = _checked_tokenizer(src, f"Not exporting {src}")
    qa_model: Any = AutoModelForQuestionAnswering.from_pretrained(src, dtype=torch.float32)
    vocab_size = getattr(qa_model.config, "vocab_size", None)
    if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:  # a hub id has no local config.json
        raise ModelCheckError(
            f"The tokenizer of {src} has {len(tokenizer)} tokens but the model has {vocab_size} token "
            "embeddings, so ids past the table would reach it. Cause: tokenizer files from another model. "
            "Fix: put the tokenizer of the checkpoint the weights were trained with next to them."
        )
    return _write_bundle(qa_model, tokenizer, Path(out_dir), source=src, opset=opset, check=check)


def _checked_tokenizer(src: PathLike, refusal: str) -> Any:
    """``load_tokenizer(src)``; its refusals become ModelCheckError("<refusal>: <why>")."""
    from trt_handler.qa.windows import load_tokenizer

    try:
        return load_tokenizer(os.fspath(src))
    except (ValueError, TypeError) as err:
        raise ModelCheckError(f"{refusal}: {err}") from err


def export_random_bert(
    out_dir: PathLike,
    tokenizer_dir: PathLike,
    num_layers: int,
    hidden: int,
    heads: int,
    intermediate: int,
    seed: int = 0,
    *,
    max_position_embeddings: int = 512,
) -> Path:
    """Bundle of a BertForQuestionAnswering with seeded random weights of this shape (BERT-large: 24, 1024,
    16, 4096) for build and throughput work; one of the same shape, seed and vocab in ``out_dir`` is reused."""
    from transformers import BertConfig, BertForQuestionAnswering

    for name, value in (("num_layers", num_layers), ("hidden", hidden), ("heads", heads),
                        ("intermediate", intermediate), ("max_position_embeddings", max_position_embeddings)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    tokenizer = _checked_tokenizer(tokenizer_dir, f"Not exporting a random BERT with the tokenizer {tokenizer_dir}")
    source = (
        f"random-bert:layers={num_layers},hidden={hidden},heads={heads},intermediate={intermediate},"
        f"max_pos={max_position_embeddings},seed={seed},vocab={len(tokenizer)},opset={DEFAULT_OPSET}"
    )
    out = Path(out_dir)
    if is_model_bundle(out) and _read_meta(out).get("source") == source:
        LOGGER.info("reusing random BERT bundle %s", out)
        return out
    torch = _torch()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=num_layers,
        num_attention_heads=heads, intermediate_size=intermediate,
        max_position_embeddings=max_position_embeddings, pad_token_id=tokenizer.pad_token_id or 0,
    )
    torch.manual_seed(seed)
    qa_model: Any = BertForQuestionAnswering(config)
    return _write_bundle(qa_model, tokenizer, out, source=source, opset=DEFAULT_OPSET, check=True)


def _torch() -> Any:
    try:
        import torch
    except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "exporting to ONNX needs torch and onnxscript: pip install 'trt-bert-qa-beam[export]'"
        ) from e
    return torch


def _int32_wrapper(qa_model: Any) -> Any:
    """nn.Module in eval mode (``qa_model`` too) taking int32 inputs, as TensorRT and the handlers feed."""
    torch = _torch()

    class Int32QA(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Tuple[Any, Any]:
            out = self.inner(input_ids=input_ids.long(), attention_mask=attention_mask.long(),
                             token_type_ids=token_type_ids.long(), return_dict=True)
            return out.start_logits, out.end_logits

    return Int32QA(qa_model).eval()


def _export_graph(wrapper: Any, onnx_path: Path, *, opset: int, max_seq: int) -> None:
    torch = _torch()
    batch = torch.export.Dim("batch", min=1, max=_MAX_EXPORT_BATCH)
    seq = torch.export.Dim("seq", min=2, max=max_seq)
    # Three distinct sample tensors: with one tensor passed three times, torch 2.13 exported a graph
    # that read token_type_ids for all three inputs (logits off by ~5; the check below caught it).
    sample = _random_batch(np.random.default_rng(0), 2, 16, 1024)
    args = tuple(torch.from_numpy(a.copy()) for a in (sample.input_ids, sample.attention_mask, sample.token_type_ids))
    dynamic = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
    with torch.no_grad(), warnings.catch_warnings():
        # torch notes that the two inputs share "batch"/"seq" (intended) and deprecations of its own.
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        program = torch.onnx.export(
            wrapper, args, dynamo=True, dynamic_shapes=dynamic,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), opset_version=opset,
            verbose=False,
        )
        n_params = sum(p.numel() * p.element_size() for p in wrapper.parameters())
        program.save(str(onnx_path), external_data=n_params >= _EXTERNAL_DATA_BYTES)


def _random_batch(rng: np.random.Generator, batch: int, seq: int, vocab: int) -> ModelBatch:
    """Random int32 inputs shaped like real windows: [CLS] ids, two segments, padded rows."""
    ids = rng.integers(1000, max(1001, vocab), size=(batch, seq)).astype(np.int32)
    ids[:, 0] = 101 if vocab > 101 else 0
    mask, types = np.zeros((2, batch, seq), dtype=np.int32)
    for row in range(batch):
        n = seq if row == 0 else int(rng.integers(max(1, seq // 2), seq + 1))
        mask[row, :n] = 1
        types[row, max(1, n // 3):n] = 1
        ids[row, n:] = 0
    return ModelBatch(ids, mask, types)


def _compare_with_torch(
    wrapper: Any, onnx_path: Path, vocab: int, max_seq: int
) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Max |ONNX Runtime - PyTorch| over both logits per checked shape ("BxS" -> diff), and the
    max |PyTorch logit| per shape, the scale that says what the diff means."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    torch = _torch()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    diffs: Dict[str, float] = {}
    scales: Dict[str, float] = {}
    for b, s in ((b, s) for b, s in CHECK_SHAPES if 2 <= s <= max_seq):
        mb = _random_batch(rng, b, s, vocab)
        with torch.no_grad():
            ref = wrapper(*(torch.from_numpy(a) for a in (mb.input_ids, mb.attention_mask, mb.token_type_ids)))
        got = session.run(list(OUTPUT_NAMES), mb.as_feed())
        refs = [r.float().numpy() for r in ref]
        diffs[f"{b}x{s}"] = max(float(np.max(np.abs(g - r))) for g, r in zip(got, refs))
        scales[f"{b}x{s}"] = max(float(np.max(np.abs(r))) for r in refs)
    return diffs, scales


def _write_bundle(qa_model: Any, tokenizer: Any, out_dir: Path, *, source: str, opset: int, check: bool) -> Path:
    """Export into a temporary sibling folder, check, then move it into place (never half-written)."""
    import onnx
    import transformers

    t0 = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; a cache is often shared
    try:
        config = qa_model.config
        max_seq = int(getattr(config, "max_position_embeddings", 512))
        wrapper = _int32_wrapper(qa_model)
        onnx_path = tmp / BUNDLE_ONNX
        _export_graph(wrapper, onnx_path, opset=opset, max_seq=max_seq)
        diffs, scales = _compare_with_torch(wrapper, onnx_path, int(config.vocab_size), max_seq) if check else ({}, {})
        worst = max(diffs.values(), default=0.0)
        if worst > DEFAULT_TOLERANCE:
            raise ExportCheckError(
                f"ONNX export of {source} differs from PyTorch by up to {worst:.3g} (tolerance {DEFAULT_TOLERANCE:g}; "
                f"per shape: {diffs}); the exported graph is wrong - check the torch/onnxscript versions"
            )
        tokenizer.save_pretrained(str(tmp))
        config.save_pretrained(str(tmp))
        checks = model_checks(tmp, wrapper, onnx_path if check else None, source)
        meta = {
            "source": source,
            "format_version": EXPORT_FORMAT_VERSION,
            "opset": opset,
            "inputs": {n: ["batch", "seq"] for n in INPUT_NAMES},
            "input_dtype": "int32",
            "outputs": {n: ["batch", "seq"] for n in OUTPUT_NAMES},
            "output_dtype": "float32",
            "max_seq": max_seq,
            "sha256": file_sha256(onnx_path),
            "onnx_bytes": onnx_path.stat().st_size,
            "checked": check,
            "tolerance": DEFAULT_TOLERANCE,
            "max_abs_diff": diffs,
            "max_abs_logit": scales,
            "versions": {"torch": _torch().__version__, "transformers": transformers.__version__,
                         "onnx": onnx.__version__},
            "export_seconds": round(time.perf_counter() - t0, 1),
            **checks,
        }
        (tmp / BUNDLE_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOGGER.info("exported %s -> %s in %.1f s, max |diff| %s", source, out_dir, time.perf_counter() - t0, diffs)
    return out_dir


def _torch_answers(wrapper: Any) -> Any:
    """An AnswerFn over an :func:`_int32_wrapper` (PyTorch float32 on the CPU)."""
    torch = _torch()

    def run(batch: ModelBatch) -> Tuple[Any, Any]:
        with torch.no_grad():
            start, end = wrapper(*(torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask,
                                                                   batch.token_type_ids)))
        return start.float().numpy(), end.float().numpy()

    return padded_answers(run)


def model_checks(folder: Path, wrapper: Any, onnx_path: Optional[Path], source: str) -> Dict[str, Any]:
    """What an export records so that a model is proven before data flows: the sha256 of the tokenizer
    files in ``folder`` and canary questions with the answers the checkpoint (``wrapper``) gives, with
    the tokenizer as a run loads it from ``folder``; ``onnx_path``: the export must give them too
    (ExportCheckError)."""
    from trt_handler.qa.windows import tokenizer_record

    tokenizer = _checked_tokenizer(folder, f"Not exporting {source}")
    record = make_record(tokenizer, _torch_answers(wrapper), "PyTorch float32 (the checkpoint)")
    if onnx_path is not None:
        try:
            replay(record, tokenizer, onnx_answers(str(onnx_path)), f"the checkpoint {source}")
        except CanaryError as err:
            raise ExportCheckError(f"the ONNX export of {source} does not answer as its checkpoint: {err}") from None
    return {"tokenizer": tokenizer_record(folder), "canaries": record}


def record_checkpoint(model: PathLike) -> Path:
    """Write the tokenizer and canary record (:func:`model_checks`) of a local Hugging Face checkpoint into its
    ``export.json`` (other keys kept), so runs with ``--backend torch`` prove it before data flows."""
    from transformers import AutoModelForQuestionAnswering

    from trt_handler.engines.sidecar import atomic_write

    folder = Path(model)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a checkpoint folder")
    qa_model: Any = AutoModelForQuestionAnswering.from_pretrained(str(folder), dtype=_torch().float32)
    meta = {**_read_meta(folder), **model_checks(folder, _int32_wrapper(qa_model), None, str(folder))}
    atomic_write(folder / BUNDLE_META, (json.dumps(meta, indent=2) + "\n").encode())
    return folder / BUNDLE_META


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move a finished bundle into ``out_dir``; replaces an empty folder or an older bundle only."""
    if out_dir.exists():
        if not out_dir.is_dir() or (any(out_dir.iterdir()) and not is_model_bundle(out_dir)):
            raise FileExistsError(
                f"{out_dir} exists and is not a model bundle; choose an empty or new --out-dir"
            )
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if not is_model_bundle(out_dir):  # lost a race to another exporter only if it finished
            raise


def hash_file(h: Any, path: Path) -> Any:
    """``h`` updated with the file's bytes, read in 1 MiB blocks; returns ``h``."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


# (device, inode, size, mtime_ns) -> sha256: one hash per file version and process, kept across a rename
_SHA256: Dict[Tuple[int, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The file's sha256, memoized per file version (so a just-exported bundle is not hashed again)."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        _SHA256[key] = str(hash_file(hashlib.sha256(), path).hexdigest())
    return _SHA256[key]


def _read_meta(bundle: Path) -> Dict[str, Any]:
    try:
        meta = json.loads((bundle / BUNDLE_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trt_handler.engines.export",
        description="Export a Hugging Face BERT QA checkpoint to a checked ONNX model bundle; prints its path.",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder, hub id, bundle or model.onnx")
    parser.add_argument("--cache-dir", default="cache", type=Path, help="bundles are cached in CACHE/onnx/")
    parser.add_argument("--out-dir", type=Path, default=None, help="export here instead of the cache")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    parser.add_argument("--record-checkpoint", action="store_true",
                        help="export nothing: write the tokenizer sha256 and canary answers of the checkpoint "
                             "folder --model into its export.json (runs with --backend torch then prove it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("trt_handler").setLevel(logging.INFO)
    if args.record_checkpoint:
        print(record_checkpoint(args.model))
        return 0
    if args.out_dir is not None:
        bundle = export_onnx(args.model, args.out_dir, opset=args.opset, check=not args.no_check)
    else:
        if args.opset != DEFAULT_OPSET or args.no_check:
            parser.error("--opset/--no-check apply to --out-dir exports; the cache always uses the checked default")
        bundle = resolve_model_bundle(args.model, args.cache_dir)
    if diffs := _read_meta(bundle).get("max_abs_diff"):
        print(f"max |ONNX - PyTorch| per shape: {diffs}", file=sys.stderr)
    print(bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())

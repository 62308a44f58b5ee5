"""Model checks at launch: tokenizers that would answer nothing right are refused, a bundle's
model.onnx must match the sha256 its export recorded, nothing broken is exported or cached."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from trt_handler.engines import export
from trt_handler.engines.export import (
    BUNDLE_META,
    BUNDLE_ONNX,
    ModelCheckError,
    check_model_bundle,
    export_random_bert,
    resolve_model_bundle,
    verify_bundle,
)
from trt_handler.qa.windows import TOKENIZER_FILES, TokenizerCheckError, load_tokenizer

TOKENIZER_FILE_NAMES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _tiny_checkpoint(out: Path, vocab_size: int, *, seed: int = 0) -> Path:
    """A 1-layer random BertForQuestionAnswering saved with save_pretrained (weights + config only)."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertForQuestionAnswering(config).save_pretrained(out)
    return out


def _copy_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILE_NAMES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


def _config(folder: Path, vocab_size: int) -> None:
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": vocab_size}))


# --- tokenizer ----------------------------------------------------------------------------

def test_folder_without_tokenizer_files_is_refused(tmp_path: Path) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "ckpt", 30522)
    assert not any((ckpt / n).exists() for n in TOKENIZER_FILES)
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(str(ckpt))) < 10  # what would load without the check
    with pytest.raises(TokenizerCheckError, match="has no tokenizer files") as err:
        load_tokenizer(ckpt)
    assert "[UNK]" in str(err.value) and "save_pretrained" in str(err.value)


def test_tiny_vocabulary_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(4)
    words = sorted({"".join(rng.choice(list("abcdefgh"), int(rng.integers(2, 6)))) for _ in range(200)})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]")
    fast.save_pretrained(tmp_path)
    with pytest.raises(TokenizerCheckError, match=f"has only {len(vocab)} tokens"):
        load_tokenizer(tmp_path)
    assert len(load_tokenizer(tmp_path, min_vocab=len(vocab))) == len(vocab)


def test_vocabulary_must_fit_the_model_config(tokenizer, tmp_path: Path) -> None:
    n = len(tokenizer)
    folder = tmp_path / "m"
    tokenizer.save_pretrained(folder)
    _config(folder, n)
    assert len(load_tokenizer(folder)) == n
    for vocab_size, what in ((n - 1, "past the model's embedding table"), (2 * n + 1, "under half")):
        _config(folder, vocab_size)
        with pytest.raises(TokenizerCheckError, match=what) as err:
            load_tokenizer(folder)
        assert f"vocab_size {vocab_size}" in str(err.value) and "Fix:" in str(err.value)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json.* not (a valid|readable) JSON"):  # transformers or ours
        load_tokenizer(folder)


def test_export_refuses_a_checkpoint_without_tokenizer_before_caching(tmp_path: Path) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "ckpt", 30522)
    cache = tmp_path / "cache"
    with pytest.raises(ModelCheckError, match="Not exporting .*has no tokenizer files"):
        resolve_model_bundle(ckpt, cache)
    assert not (cache / "onnx").exists() or list((cache / "onnx").iterdir()) == []


# --- bundle hash ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_bundle(model_dir: Path, test_cache: Path) -> Path:
    # the same bundle test_export.py makes (reused across sessions)
    return export_random_bert(test_cache / "onnx" / "tiny-random-bert-test", model_dir, 2, 64, 2, 128, seed=3)


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _scale_largest_weight(onnx_path: Path, factor: float) -> None:
    model = onnx.load(str(onnx_path))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.data_type == 1 else 0)
    scaled = onnx.numpy_helper.to_array(weight) * factor
    weight.CopyFrom(onnx.numpy_helper.from_array(scaled.astype(np.float32), weight.name))
    onnx.save(model, str(onnx_path))


def test_intact_bundle_passes_the_launch_check(bundle_copy: Path) -> None:
    check_model_bundle(bundle_copy)
    assert resolve_model_bundle(bundle_copy, bundle_copy.parent / "cache") == bundle_copy


def test_changed_weights_are_found(bundle_copy: Path) -> None:
    _scale_largest_weight(bundle_copy / BUNDLE_ONNX, 1.01)
    with pytest.raises(ModelCheckError, match="not the one that was exported") as err:
        check_model_bundle(bundle_copy)
    assert "sha256" in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(ModelCheckError):
        resolve_model_bundle(bundle_copy, bundle_copy.parent / "cache")
    with pytest.raises(ModelCheckError):
        resolve_model_bundle(bundle_copy / BUNDLE_ONNX, bundle_copy.parent / "cache")


def test_verification_is_cached_by_size_and_mtime(bundle_copy: Path) -> None:
    onnx_path = bundle_copy / BUNDLE_ONNX
    verify_bundle(bundle_copy)
    st = onnx_path.stat()
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    with open(onnx_path, "r+b") as f:  # in place: same inode
        f.write(data)
    os.utime(onnx_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    verify_bundle(bundle_copy)  # same (size, mtime, inode): the cached verdict stands, no re-hash
    os.utime(onnx_path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(ModelCheckError, match="has sha256"):
        verify_bundle(bundle_copy)
    with open(onnx_path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelCheckError, match="bytes, its export recorded"):
        verify_bundle(bundle_copy)


def test_bundle_tokenizer_and_metadata_problems(bundle_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelCheckError, match="not a model bundle"):
        check_model_bundle(tmp_path / "nothing")
    meta = (bundle_copy / BUNDLE_META).read_text()
    (bundle_copy / BUNDLE_META).write_text(meta[: len(meta) // 2])
    with pytest.raises(ModelCheckError, match="unreadable export.json"):
        check_model_bundle(bundle_copy)
    (bundle_copy / BUNDLE_META).write_text(json.dumps({k: v for k, v in json.loads(meta).items() if k != "sha256"}))
    with pytest.raises(ModelCheckError, match="without a sha256"):
        check_model_bundle(bundle_copy)
    (bundle_copy / BUNDLE_META).unlink()  # a hand-made bundle: nothing recorded, accepted
    check_model_bundle(bundle_copy)
    (bundle_copy / BUNDLE_META).write_text(meta)
    for name in TOKENIZER_FILE_NAMES:
        (bundle_copy / name).unlink(missing_ok=True)
    with pytest.raises(ModelCheckError, match="because of its tokenizer: .*no tokenizer files"):
        check_model_bundle(bundle_copy)


def test_damaged_cached_export_is_exported_again(model_dir: Path, tmp_path: Path) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "ckpt", len(load_tokenizer(model_dir)), seed=1)
    _copy_tokenizer(model_dir, ckpt)
    cache = tmp_path / "cache"
    bundle = resolve_model_bundle(ckpt, cache)
    check_model_bundle(bundle)
    sha = json.loads((bundle / BUNDLE_META).read_text())["sha256"]
    _scale_largest_weight(bundle / BUNDLE_ONNX, 2.0)
    again = resolve_model_bundle(ckpt, cache)
    assert again == bundle
    check_model_bundle(again)
    assert json.loads((again / BUNDLE_META).read_text())["sha256"] == sha  # the same export, restored
    assert export.file_sha256(again / BUNDLE_ONNX) == sha

"""The right tokenizer proven before data flows (issue 19): a tokenizer whose casing contradicts its
vocabulary is refused on every backend; a bundle, an engine sidecar or a checkpoint that records its
tokenizer files' sha256 and canary answers refuses another tokenizer (a shuffled vocabulary) and a
model whose answers changed; ``--engine`` must be the engine its sidecar describes. Real bundles,
a real TensorRT-RTX engine built here, the real command line; nothing is read or written when refused."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, Dict

import pytest

from pipelines import qa_batch
from pipelines.options import check_model
from tests.conftest import REPO
from tests.helpers import link_bundle
from trt_handler.qa.windows import TokenizerCheckError, load_tokenizer

SAMPLE = REPO / "samples" / "squad_sample.jsonl"


def _launch(capsys: pytest.CaptureFixture, tmp_path: Path, model: Path, *extra: str) -> tuple:
    out = tmp_path / "out" / "answers"
    try:
        code = qa_batch.main(["--input", str(SAMPLE), "--output", str(out), "--model", str(model), *extra])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert not out.parent.exists(), "a refused run wrote outputs"
    return code, err


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data), encoding="utf-8")


def _keep_case(folder: Path) -> None:
    """The tokenizer of ``folder`` made not to lowercase (tokenizer_config.json and tokenizer.json alike)."""
    _edit_json(folder / "tokenizer_config.json", do_lower_case=False)
    if (folder / "tokenizer.json").is_file():
        tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        tok["normalizer"]["lowercase"] = False
        (folder / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")


def _shuffle_vocabulary(folder: Path) -> None:
    """The same tokens, ids in another order (special tokens kept): a vocabulary of the same size."""
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    words = [w for w in vocab if not (w.startswith("[") and w.endswith("]"))]
    ids = [vocab[w] for w in words]
    random.Random(19).shuffle(ids)
    vocab.update(zip(words, ids))
    (folder / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")


def _link_checkpoint(src: Path, dest: Path) -> Path:
    """A checkpoint folder whose small files are copies and whose weights are links."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".safetensors", ".bin"):
            (dest / f.name).symlink_to(f.resolve())
        elif f.is_file():
            shutil.copy(f, dest / f.name)
    return dest


@pytest.fixture()
def bundle(bundled_model: Path, tmp_path: Path) -> Path:
    return link_bundle(bundled_model, tmp_path / "bundle")


# --- casing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnx", "torch", "tensorrt"])
def test_a_tokenizer_that_keeps_case_on_an_uncased_vocabulary_is_refused(
        backend: str, bundled_model: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Refused by the casing check itself (the bundle's tokenizer record is removed, the checkpoint has none)."""
    if backend == "torch":
        folder, extra = _link_checkpoint(model_dir, tmp_path / "ckpt"), ["--backend", "torch"]
    else:
        folder = link_bundle(bundled_model, tmp_path / "bundle")
        _edit_json(folder / "export.json", tokenizer=None)
        extra = ["--backend", "tensorrt", "--engine", str(tmp_path / "not-built.engine")] if backend == "tensorrt" else []
    _keep_case(folder)
    code, err = _launch(capsys, tmp_path, folder, *extra)
    assert code == 2 and "keeps upper case" in err and "uncased" in err and len(err.strip().splitlines()) == 1


def test_a_lowercasing_tokenizer_on_a_cased_vocabulary_is_refused(bundled_model: Path, tmp_path: Path) -> None:
    folder = link_bundle(bundled_model, tmp_path / "bundle")
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    for word in [w for w in vocab if w.isalpha() and w.islower() and w.capitalize() not in vocab][::10]:
        vocab[word.capitalize()] = vocab.pop(word)  # a tenth of the words capitalized: a cased vocabulary
    (folder / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    with pytest.raises(TokenizerCheckError, match="lowercases its input, but its vocabulary is cased"):
        load_tokenizer(folder)
    _keep_case(folder)  # the same vocabulary with a tokenizer that keeps case is accepted
    assert len(load_tokenizer(folder)) == len(vocab)


# --- bundles ------------------------------------------------------------------------------------------


def test_a_shuffled_vocabulary_is_refused_on_a_bundle_that_records_its_tokenizer(
        bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """By the files' sha256; with that record removed, by the token ids of the canary questions."""
    check_model(str(bundle), "onnx")  # as exported: passes, canaries replayed
    _shuffle_vocabulary(bundle)
    code, err = _launch(capsys, tmp_path, bundle)
    assert code == 2 and "is not the one the export.json of bundle" in err and "tokenizer.json has sha256" in err
    _edit_json(bundle / "export.json", tokenizer=None)
    code, err = _launch(capsys, tmp_path, bundle)
    assert code == 2 and "does not make the token ids" in err


def test_a_bundle_whose_answers_changed_is_refused(bundle: Path, model_dir: Path, test_cache: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """Another model's model.onnx under the bundle's export.json with its sha256 and size updated (what a
    hand edit does): only the canary answers tell."""
    from trt_handler.engines.export import export_random_bert, file_sha256

    other = export_random_bert(test_cache / "onnx" / "tiny-random-bert-test", model_dir, 2, 64, 2, 128, seed=3)
    (bundle / "model.onnx").unlink()
    shutil.copy(other / "model.onnx", bundle / "model.onnx")
    _edit_json(bundle / "export.json", sha256=file_sha256(bundle / "model.onnx"),
               onnx_bytes=(bundle / "model.onnx").stat().st_size)
    code, err = _launch(capsys, tmp_path, bundle)
    assert code == 2 and "the model does not give the answers" in err and "recorded" in err


# --- a PyTorch checkpoint with a record ----------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded_checkpoint(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trt_handler.engines.export import record_checkpoint

    folder = _link_checkpoint(model_dir, tmp_path_factory.mktemp("recorded") / "ckpt")
    record_checkpoint(folder)
    return folder


def test_a_recorded_checkpoint_refuses_another_tokenizer_and_changed_weights(
        recorded_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from safetensors.numpy import load_file, save_file

    meta = json.loads((recorded_checkpoint / "export.json").read_text(encoding="utf-8"))
    assert meta["canaries"]["questions"] and meta["tokenizer"]["files"]
    check_model(str(recorded_checkpoint), "torch")  # as recorded: passes, canaries replayed on PyTorch
    shuffled = _link_checkpoint(recorded_checkpoint, tmp_path / "shuffled")
    _shuffle_vocabulary(shuffled)
    code, err = _launch(capsys, tmp_path, shuffled, "--backend", "torch")
    assert code == 2 and "is not the one the export.json of checkpoint" in err

    swapped = _link_checkpoint(recorded_checkpoint, tmp_path / "swapped")
    [weights] = swapped.glob("*.safetensors")
    tensors: Dict[str, Any] = load_file(str(weights))
    for name in ("qa_outputs.weight", "qa_outputs.bias"):  # start and end logits swapped
        tensors[name] = tensors[name][::-1].copy()
    weights.unlink()
    save_file(tensors, str(weights), metadata={"format": "pt"})
    code, err = _launch(capsys, tmp_path, swapped, "--backend", "torch")
    assert code == 2 and "the model does not give the answers" in err


# --- an engine and its sidecar ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(model_dir: Path, test_cache: Path) -> Dict[str, Path]:
    """A real TensorRT-RTX engine (built here without a GPU; the one tests/test_build.py caches) of the
    exported bundle, whose sidecar takes the bundle's tokenizer and canary record."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX builds engines here: pip install 'trt-bert-qa-beam[rtx]'")
    from tests.test_build import SMALL, _code_version
    from trt_handler.engines.builder import BuildOptions
    from trt_handler.engines.cache import build_into_cache
    from trt_handler.engines.export import bundle_onnx_path, resolve_model_bundle

    bundle = resolve_model_bundle(model_dir, test_cache)
    path, _ = build_into_cache(bundle_onnx_path(bundle), test_cache / f"build-{_code_version()}",
                               BuildOptions(library="tensorrt_rtx", precision="fp32", **SMALL))
    return {"engine": Path(path), "bundle": Path(bundle)}


def test_an_engine_is_checked_against_its_sidecar_and_its_tokenizer_record(
        engine: Dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "e.engine"
    shutil.copy(engine["engine"], copy)
    shutil.copy(f"{engine['engine']}.json", f"{copy}.json")
    sidecar = json.loads(Path(f"{copy}.json").read_text(encoding="utf-8"))
    assert sidecar["tokenizer"] and sidecar["canaries"]["ids_sha256"]
    check_model(str(engine["bundle"]), "tensorrt", str(copy))  # the engine and tokenizer as built: passes
    trt = ["--backend", "tensorrt", "--engine", str(copy)]

    tokenizer = link_bundle(engine["bundle"], tmp_path / "tokenizer")
    _shuffle_vocabulary(tokenizer)
    code, err = _launch(capsys, tmp_path, tokenizer, *trt)
    assert code == 2 and f"is not the one the sidecar of engine {copy} recorded" in err
    _edit_json(Path(f"{copy}.json"), tokenizer=None)  # the canary ids still tell
    code, err = _launch(capsys, tmp_path, tokenizer, *trt)
    assert code == 2 and "does not make the token ids the sidecar of engine" in err

    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    code, err = _launch(capsys, tmp_path, engine["bundle"], *trt)
    assert code == 2 and "is not the engine its sidecar" in err and "sha256" in err
    copy.write_bytes(bytes(data[:-10]))
    code, err = _launch(capsys, tmp_path, engine["bundle"], *trt)
    assert code == 2 and "is not the engine its sidecar" in err and "bytes, its sidecar recorded" in err

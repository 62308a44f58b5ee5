"""Engine builds: real TensorRT-RTX builds of the shared MiniLM model on this CPU-only machine,
their sidecars, option checks, the timing cache, engine validity without a GPU, and the CLI.

Builds are CPU-heavy, so each engine is built once per session with the smallest profiles that
still show per-bucket profiles (two buckets, batch 1-4), and cached under the test cache keyed by
the ONNX hash, the options and the builder's own source (a code change rebuilds).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO
from trt_handler.engines import library as trt_lib
from trt_handler.engines.build import main
from trt_handler.engines.builder import BuildError, BuildOptions, build_serialized, write_engine_files
from trt_handler.engines.calibration import calibration_batches
from trt_handler.engines.library import GpuDescriptor, check_engine_bytes, sidecar_mismatches

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX builds engines here: pip install 'trt-bert-qa-beam[rtx]'")

SMALL = {"buckets": (64, 128), "min_batch": 1, "opt_batch": 2, "max_batch": 4}
EXPECTED_PROFILES = [
    {"min_batch": 1, "opt_batch": 2, "max_batch": 4, "min_seq": 1, "opt_seq": 64, "max_seq": 64},
    {"min_batch": 1, "opt_batch": 2, "max_batch": 4, "min_seq": 65, "opt_seq": 128, "max_seq": 128},
]
ONE_PROFILE = {"buckets": (64,), "min_batch": 1, "opt_batch": 1, "max_batch": 2}


def _has_gpu() -> bool:
    from trt_handler.engines import cuda_runtime

    return cuda_runtime.unavailable_reason() is None


def _code_version() -> str:
    h = hashlib.sha256()
    for name in ("engines/build.py", "engines/library.py", "engines/cache.py", "engines/calibration.py",
                 "planning.py", "engines/sidecar.py"):
        h.update((REPO / "trt_handler" / name).read_bytes())
    return h.hexdigest()[:10]


@pytest.fixture(scope="session")
def shared_onnx(model_dir: Path, test_cache: Path) -> Path:
    from trt_handler.engines.export import bundle_onnx_path, resolve_model_bundle

    return bundle_onnx_path(resolve_model_bundle(model_dir, test_cache))


@pytest.fixture(scope="session")
def engine_dir(test_cache: Path) -> Path:
    return test_cache / f"build-{_code_version()}"


def _cached_build(onnx: Path, cache: Path, options: BuildOptions) -> tuple[Path, dict[str, Any]]:
    from trt_handler.engines.cache import build_into_cache

    path, sidecar = build_into_cache(onnx, cache, options)
    return Path(path), sidecar


@pytest.fixture(scope="session")
def t4_l4_engine(shared_onnx: Path, engine_dir: Path) -> tuple[Path, dict[str, Any]]:
    """fp16 engine for T4 (sm75) and L4 (sm89): the Dataflow GPUs, which need an fp16 network."""
    return _cached_build(shared_onnx, engine_dir, BuildOptions(library="tensorrt_rtx", targets=("sm75", "sm89"), **SMALL))


@pytest.fixture(scope="session")
def default_engine(shared_onnx: Path, engine_dir: Path) -> tuple[Path, dict[str, Any]]:
    """fp32 engine for TensorRT-RTX's default targets (Ampere and later)."""
    return _cached_build(shared_onnx, engine_dir, BuildOptions(library="tensorrt_rtx", precision="fp32", **SMALL))


# ---------------------------------------------------------------------------------------------
# real builds and their sidecars


@pytest.mark.parametrize("which", ["t4_l4_engine", "default_engine"])
def test_sidecar_describes_the_engine(which: str, request: pytest.FixtureRequest, shared_onnx: Path) -> None:
    path, returned = request.getfixturevalue(which)
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert {k: v for k, v in returned.items() if k != "cache_hit"} == sidecar
    assert sidecar["library"] == "tensorrt_rtx"
    assert sidecar["library_version"] == trt.__version__
    assert sidecar["profiles"] == EXPECTED_PROFILES
    assert sidecar["onnx_sha256"] == hashlib.sha256(shared_onnx.read_bytes()).hexdigest()
    assert [(t["name"], t["dtype"], len(t["shape"])) for t in sidecar["inputs"]] == [
        ("input_ids", "int32", 2), ("attention_mask", "int32", 2), ("token_type_ids", "int32", 2)]
    assert [(t["name"], t["dtype"]) for t in sidecar["outputs"]] == [("start_logits", "float32"), ("end_logits", "float32")]
    data = path.read_bytes()
    assert sidecar["engine_bytes"] == len(data)
    assert sidecar["engine_sha256"] == hashlib.sha256(data).hexdigest()
    assert sidecar["engine"] == path.name
    assert sidecar["build_seconds"] > 0


def test_targets_and_precision_reach_the_engine(t4_l4_engine: Any, default_engine: Any) -> None:
    _, fp16 = t4_l4_engine
    _, fp32 = default_engine
    assert (fp16["targets"], fp16["precision"], fp16["fp16_network"]) == (["sm75", "sm89"], "fp16", True)
    assert (fp32["targets"], fp32["precision"], fp32["fp16_network"]) == ([], "fp32", False)
    # float16 weights: the fp16 engine holds about half the bytes of the fp32 one
    assert fp16["engine_bytes"] < 0.7 * fp32["engine_bytes"]


def test_write_engine_files_writes_engine_and_sidecar(shared_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "m.engine"
    built = build_serialized(shared_onnx, BuildOptions(library="tensorrt_rtx", precision="fp32", **ONE_PROFILE))
    sidecar = write_engine_files(out, *built)
    assert out.stat().st_size == sidecar["engine_bytes"]
    assert json.loads(Path(f"{out}.json").read_text())["profiles"] == [
        {"min_batch": 1, "opt_batch": 1, "max_batch": 2, "min_seq": 1, "opt_seq": 64, "max_seq": 64}]
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.engine", "m.engine.json"]  # no temp files left


# ---------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"precision": "bf16"}, "precision must be one of fp16, fp32, int8"),
        ({"library": "onnxruntime"}, "library must be auto, tensorrt or tensorrt_rtx"),
        ({"buckets": ()}, "buckets must name at least one"),
        ({"min_batch": 8, "opt_batch": 4}, "min_batch <= opt_batch"),
        ({"targets": ("t4",)}, "'t4' is not a compute capability"),
        ({"targets": ("current", "sm89")}, "cannot be combined"),
        ({"workspace_mib": 0}, "positive number of MiB"),
        ({"precision": "fp32", "targets": ("sm75",)}, "sm75 .* cannot run FP32"),
        ({"library": "tensorrt", "targets": ("sm89",)}, "--targets is for TensorRT-RTX"),
        ({"library": "tensorrt_rtx", "precision": "int8", "calibration_data": "x.json"}, "int8 PTQ needs TensorRT"),
        ({"library": "tensorrt", "precision": "int8"}, "needs --calibration-data"),
        ({"calibration_data": "x.json"}, "apply to --precision int8 only"),
    ],
)
def test_invalid_options_say_why(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BuildOptions(**kwargs)


def test_targets_are_normalized() -> None:
    assert BuildOptions(targets=("SM_75", "8.9", "sm89", "86")).targets == ("sm75", "sm89", "sm86")


def test_key_fields_ignore_how_it_is_built() -> None:
    a = BuildOptions(**SMALL)
    assert a.key_fields() == replace(a, library="tensorrt_rtx", workspace_mib=512, timing_cache="t", verbose=True).key_fields()
    assert a.key_fields() != replace(a, precision="fp32").key_fields()
    assert a.key_fields() != replace(a, max_batch=8).key_fields()


def test_target_the_library_lacks_names_the_alternative(shared_onnx: Path) -> None:
    with pytest.raises(BuildError, match=r"cannot target sm90.*supports .*sm75.*--library tensorrt"):
        build_serialized(shared_onnx, BuildOptions(library="tensorrt_rtx", precision="fp32", targets=("sm90",), **ONE_PROFILE))


def test_missing_onnx_and_wrong_io_say_how_to_export(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="trt_handler.engines.export"):
        build_serialized(tmp_path / "nope.onnx", BuildOptions(library="tensorrt_rtx"))
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(BuildError, match=r"needs exactly input_ids, attention_mask, token_type_ids as int32.*export"):
        build_serialized(path, BuildOptions(library="tensorrt_rtx", precision="fp32", **ONE_PROFILE))


# ---------------------------------------------------------------------------------------------
# the TensorRT (>= 10) code path, run through TensorRT-RTX under TensorRT's name


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """``import tensorrt`` gives TensorRT-RTX's API under TensorRT's name and a 10.x version, so the
    TensorRT branch (timing cache, no targets, INT8 checks) runs for real on this CPU box."""
    fake = types.ModuleType("tensorrt")
    fake.__dict__.update({k: v for k, v in vars(trt).items() if not k.startswith("__")})
    fake.__version__ = "10.13.0.35"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def test_timing_cache_is_written_then_reused(fake_tensorrt: types.ModuleType, shared_onnx: Path, tmp_path: Path) -> None:
    cache = tmp_path / "timing.cache"
    options = BuildOptions(library="tensorrt", precision="fp32", timing_cache=str(cache), **ONE_PROFILE)
    _, first = build_serialized(shared_onnx, options)
    assert first["library"] == "tensorrt" and first["targets"] == []
    assert first["timing_cache"]["loaded_bytes"] == 0
    assert cache.stat().st_size == first["timing_cache"]["saved_bytes"] > 0
    _, second = build_serialized(shared_onnx, options)
    assert second["timing_cache"]["loaded_bytes"] == cache.stat().st_size


def test_rtx_skips_the_timing_cache_and_says_so(shared_onnx: Path, tmp_path: Path) -> None:
    cache = tmp_path / "timing.cache"
    _, sidecar = build_serialized(shared_onnx, BuildOptions(library="tensorrt_rtx", precision="fp32",
                                                            timing_cache=str(cache), **ONE_PROFILE))
    assert "no-ops in TensorRT-RTX" in sidecar["timing_cache"]["skipped"]
    assert not cache.exists()


def test_int8_without_implicit_quantization_points_to_qdq(fake_tensorrt: types.ModuleType, shared_onnx: Path,
                                                          squad_b1: Path) -> None:
    fake_tensorrt.__version__ = "11.0.0"  # TensorRT 11 removed IInt8EntropyCalibrator2 (so does this module)
    options = BuildOptions(library="tensorrt", precision="int8", calibration_data=str(squad_b1), **ONE_PROFILE)
    with pytest.raises(BuildError, match=r"TensorRT 11.0.0 removed implicit INT8.*Q/DQ"):
        build_serialized(shared_onnx, options)


def test_calibration_batches_are_real_padded_windows(squad_b1: Path, model_dir: Path) -> None:
    batches = list(calibration_batches(str(squad_b1), str(model_dir), batch_size=4, seq_len=128, max_batches=3))
    assert len(batches) == 3
    for b in batches:
        assert b.shape == (4, 128)
        assert all(a.dtype == np.int32 for a in (b.input_ids, b.attention_mask, b.token_type_ids))
        assert (b.input_ids[:, 0] == 101).all()  # [CLS]
        assert (b.attention_mask[:, 0] == 1).all() and (b.input_ids[b.attention_mask == 0] == 0).all()
        assert b.token_type_ids.max() == 1  # question and context segments


# ---------------------------------------------------------------------------------------------
# can the engine run here?


def test_sidecar_mismatches_name_cause_and_fix() -> None:
    side = {"library": "tensorrt_rtx", "library_version": "1.7.1.116", "targets": ["sm75", "sm89"]}
    l4 = GpuDescriptor("NVIDIA L4", (8, 9))
    h100 = GpuDescriptor("NVIDIA H100 80GB HBM3", (9, 0))
    assert sidecar_mismatches(side, "tensorrt_rtx", "1.7.1.116", l4) == []
    [version] = sidecar_mismatches(side, "tensorrt_rtx", "1.8.0", l4)
    assert "built with tensorrt_rtx 1.7.1.116 but 1.8.0 is installed" in version and "Fix" in version
    [arch] = sidecar_mismatches(side, "tensorrt_rtx", "1.7.1.116", h100)
    assert "targets sm75, sm89 but this GPU (NVIDIA H100 80GB HBM3) is sm90" in arch and "use TensorRT" in arch
    [t4] = sidecar_mismatches({**side, "targets": []}, "tensorrt_rtx", "1.7.1.116", GpuDescriptor("Tesla T4", (7, 5)))
    assert "--targets sm75" in t4  # the default targets leave Turing out
    trt_side = {"library": "tensorrt", "library_version": "10.13", "gpu": {"name": "NVIDIA L4", "sm": "sm89"}}
    [other_gpu] = sidecar_mismatches(trt_side, "tensorrt", "10.13", GpuDescriptor("NVIDIA A100", (8, 0)))
    assert "built on NVIDIA L4 (sm89)" in other_gpu and "rebuild it on this GPU" in other_gpu


@pytest.mark.skipif(_has_gpu(), reason="checks the no-GPU error path; this machine has a GPU")
def test_engine_is_invalid_without_gpu_and_the_message_says_why(t4_l4_engine: Any) -> None:
    path, sidecar = t4_l4_engine
    data = path.read_bytes()
    runtime = trt.Runtime(trt_lib.make_logger(trt))
    state, _ = runtime.get_engine_validity(data)
    assert state == trt.EngineValidity.INVALID
    assert runtime.deserialize_cuda_engine(data) is None
    ok, reason = check_engine_bytes(data, "tensorrt_rtx")
    assert not ok
    assert "no usable GPU here" in reason and "Fix: check and run the engine on a machine with an NVIDIA GPU" in reason
    ok, reason = check_engine_bytes(data, "tensorrt_rtx", sidecar={**sidecar, "library_version": "0.9"})
    assert not ok and "built with tensorrt_rtx 0.9" in reason and "no usable GPU" in reason
    assert check_engine_bytes(b"", "tensorrt_rtx")[0] is False


@pytest.mark.skipif(_has_gpu(), reason="checks the no-GPU error path; this machine has a GPU")
def test_engine_session_refuses_with_the_cause(t4_l4_engine: Any) -> None:
    from trt_handler.engines.session import EngineCompatibilityError, EngineSession

    path, _ = t4_l4_engine
    with pytest.raises(EngineCompatibilityError) as info:
        EngineSession(str(path), library="tensorrt_rtx")
    assert info.value.cause == "no_gpu"
    assert "Fix:" in str(info.value)


# ---------------------------------------------------------------------------------------------
# CLI


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "trt_handler.engines.build", *args], cwd=REPO, env=env, check=False,
                          capture_output=True, text=True, timeout=600)


def test_cli_help_lists_the_flags() -> None:
    out = _cli("--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--onnx", "--model", "--bert-large-random", "--library", "--precision", "--buckets", "--batch",
                 "--targets", "--workspace-mib", "--timing-cache", "--calibration-data", "--vocab", "--tokenizer"):
        assert flag in out.stdout


def test_cli_builds_and_prints_the_engine_path(shared_onnx: Path, tmp_path: Path) -> None:
    engine = tmp_path / "cli.engine"
    out = _cli("--onnx", str(shared_onnx), "--output", str(engine), "--library", "tensorrt_rtx",
               "--precision", "fp32", "--buckets", "64", "--batch", "1,1,2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(engine)
    assert "build took" in out.stderr
    assert json.loads(Path(f"{engine}.json").read_text())["engine_bytes"] == engine.stat().st_size


def test_cli_model_mode_uses_the_cache(t4_l4_engine: Any, shared_onnx: Path, engine_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = t4_l4_engine
    rc = main(["--model", str(shared_onnx.parent), "--cache-dir", str(engine_dir), "--library", "tensorrt_rtx",
               "--targets", "sm75,sm89", "--buckets", "64,128", "--batch", "1,2,4"])
    out = capsys.readouterr()
    assert rc == 0 and out.out.strip() == str(path)
    assert "already in the cache" in out.err


@pytest.mark.parametrize(
    "args, match",
    [
        (["--onnx", "m.onnx"], "--onnx needs --output"),
        (["--model", "m", "--library", "tensorrt_rtx", "--precision", "int8", "--calibration-data", "d.json"],
         "int8 PTQ needs TensorRT"),
        (["--bert-large-random", "--library", "tensorrt_rtx"], "needs a vocabulary: pass --vocab"),
        (["--onnx", "missing.onnx", "--output", "x.engine", "--library", "tensorrt_rtx"], "does not exist"),
    ],
)
def test_cli_errors_are_sentences(args: list[str], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        rc = main(args)
    except SystemExit as exit_:  # argparse's own usage errors
        rc = exit_.code
    assert rc == 2
    assert match in capsys.readouterr().err


def test_cli_bert_large_random_exports_that_shape_and_builds(shared_onnx: Path, engine_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The real 24-layer export takes minutes (`make engine-bert-large`); here it is stood in for
    by the shared bundle, so the test checks what the CLI asks for and that it builds the result."""
    from trt_handler.engines import export

    asked: dict[str, Any] = {}

    def fake_export(out_dir: Path, tokenizer_dir: Path, *, seed: int = 0, **shape: int) -> Path:
        asked.update(out_dir=out_dir, tokenizer=Path(tokenizer_dir), shape=shape, seed=seed)
        return shared_onnx.parent

    monkeypatch.setattr(export, "export_random_bert", fake_export)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\ncat\n")
    rc = main(["--bert-large-random", "--cache-dir", str(engine_dir), "--vocab", str(vocab), "--seed", "3",
               "--library", "tensorrt_rtx", "--precision", "fp32", "--buckets", "64", "--batch", "1,1,2"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert asked["shape"] == {"num_layers": 24, "hidden": 1024, "heads": 16, "intermediate": 4096}
    assert asked["seed"] == 3
    assert asked["out_dir"] == engine_dir / "onnx" / "bert-large-random-seed3"
    assert (asked["tokenizer"] / "tokenizer.json").is_file()  # a fast tokenizer made from the vocab
    assert "BERT-large-shaped ONNX ready" in out.err and "build took" in out.err
    assert Path(out.out.strip()).is_file()


# ---------------------------------------------------------------------------------------------
# version-compatible engines (full TensorRT) and token-budget profiles from data


def test_tensorrt_rtx_refuses_version_compatible() -> None:
    with pytest.raises(ValueError, match="--version-compatible is a full TensorRT flag"):
        BuildOptions(library="tensorrt_rtx", version_compatible=True)
    with pytest.raises(ValueError, match="--version-compatible is a full TensorRT flag"):
        BuildOptions(version_compatible=True).check_library("tensorrt_rtx")  # "auto" that resolved to RTX
    rc = main(["--onnx", "m.onnx", "--output", "x.engine", "--library", "tensorrt_rtx", "--version-compatible"])
    assert rc == 2


def test_version_compatible_build_sets_both_flags_and_the_sidecar_says_so(
    fake_tensorrt: types.ModuleType, shared_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full-TensorRT branch, run for real by TensorRT-RTX's builder standing in for TensorRT."""
    flags_set: list[str] = []
    real_set_flag = trt.IBuilderConfig.set_flag

    def recording_set_flag(config: Any, flag: Any) -> Any:
        flags_set.append(flag.name)
        return real_set_flag(config, flag)

    monkeypatch.setattr(trt.IBuilderConfig, "set_flag", recording_set_flag)  # records, then really sets
    options = BuildOptions(library="tensorrt", precision="fp32", version_compatible=True, **ONE_PROFILE)
    data, sidecar = build_serialized(shared_onnx, options)
    assert {"VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"} <= set(flags_set)
    assert sidecar["version_compatible"] is True and sidecar["library"] == "tensorrt" and len(data) > 0
    plain = BuildOptions(library="tensorrt", precision="fp32", **ONE_PROFILE)
    assert plain.key_fields() != options.key_fields()  # a different engine, a different cache key


def test_token_budget_plan_defaults_keep_the_budget() -> None:
    from trt_handler.planning import token_budget_profiles
    from trt_handler.qa.batching import DEFAULT_BUCKETS

    plan = token_budget_profiles()
    assert [p.max_seq for p in plan] == list(DEFAULT_BUCKETS) == [128, 160, 192, 224, 288, 384]
    assert [p.max_batch for p in plan] == [192, 152, 128, 104, 80, 64]
    assert all(0.9 * 64 * 384 <= p.max_batch * p.max_seq <= 64 * 384 for p in plan)
    assert [p.min_seq for p in plan] == [1, 129, 161, 193, 225, 289]  # contiguous
    with pytest.raises(ValueError, match="below max_seq"):
        token_budget_profiles(token_budget=100)


def test_token_budget_plan_from_window_lengths() -> None:
    from trt_handler.planning import token_budget_profiles

    lengths = [40] * 50 + [100] * 30 + [250] * 20
    plan = token_budget_profiles(lengths, token_budget=64 * 256, count=3, max_seq=256)
    assert [p.max_seq for p in plan] == [48, 112, 256]  # multiples of 16 hugging the data, the last max_seq
    assert [p.max_batch for p in plan] == [336, 144, 64]


def test_cli_data_plan_reaches_the_sidecar(shared_onnx: Path, tmp_path: Path) -> None:
    """A real TensorRT-RTX build whose profiles come from SQuAD window lengths and a token budget."""
    from trt_handler.engines.build import window_lengths
    from trt_handler.engines.sidecar import read_engine_profiles
    from trt_handler.planning import ProfileSpec
    from trt_handler.qa.batching import suggest_buckets

    data = REPO / "samples" / "squad_sample.jsonl"
    engine = tmp_path / "planned.engine"
    rc = main(["--onnx", str(shared_onnx), "--output", str(engine), "--library", "tensorrt_rtx", "--precision", "fp32",
               "--data", str(data), "--bucket-count", "2", "--buckets", "128", "--token-budget", "512",
               "--batch", "1,2,64"])
    assert rc == 0
    sidecar = json.loads(Path(f"{engine}.json").read_text())
    lengths = window_lengths(data, shared_onnx.parent, 128)
    assert len(lengths) >= 20 and max(lengths) <= 128
    buckets = list(suggest_buckets(lengths, 2, 128))  # least padding for these windows, the last 128
    assert [p["max_seq"] for p in sidecar["profiles"]] == buckets and buckets[-1] == 128
    assert [p["max_batch"] for p in sidecar["profiles"]] == [512 // b for b in buckets]  # the token budget
    assert [p["min_seq"] for p in sidecar["profiles"]] == [1, buckets[0] + 1]
    assert all(p["opt_batch"] == 2 and p["min_batch"] == 1 for p in sidecar["profiles"])
    assert sidecar["token_budget"] == 512
    assert read_engine_profiles(str(engine)) == [ProfileSpec(**p) for p in sidecar["profiles"]]  # what the pipeline plans with


def test_sidecar_batch_limits_must_be_sane(tmp_path: Path) -> None:
    from trt_handler.engines.sidecar import SidecarError, profiles_from_sidecar

    good = [{"min_batch": 1, "opt_batch": 2, "max_batch": 4, "min_seq": 1, "opt_seq": 64, "max_seq": 64},
            {"min_batch": 1, "opt_batch": 2, "max_batch": 4, "min_seq": 65, "opt_seq": 128, "max_seq": 128}]
    assert len(profiles_from_sidecar({"profiles": good})) == 2
    with pytest.raises(SidecarError, match="max_batch 5000 \\(limit 4096\\)"):
        profiles_from_sidecar({"profiles": [dict(good[0], max_batch=5000)]})
    with pytest.raises(SidecarError, match="a gap .* starts at 70, expected 65"):
        profiles_from_sidecar({"profiles": [good[0], dict(good[1], min_seq=70)]})
    with pytest.raises(SidecarError, match="an overlap"):
        profiles_from_sidecar({"profiles": [good[0], dict(good[1], min_seq=60)]})
    with pytest.raises(SidecarError, match="starts at 2, expected 1"):
        profiles_from_sidecar({"profiles": [dict(good[0], min_seq=2)]})

"""Engine cache: keys (pure, injected GPUs), hits and misses, local and gs:// stores, concurrent writers."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.gcs_emulator import gcs_emulator  # noqa: F401  (pytest fixture)
from trt_handler.engines import cache as engine_cache
from trt_handler.engines.builder import BuildOptions, onnx_sha256, write_engine_files
from trt_handler.engines.cache import engine_key, engine_location, ensure_engine
from trt_handler.engines.library import GpuDescriptor

L4 = GpuDescriptor("NVIDIA L4", (8, 9))
T4 = GpuDescriptor("Tesla T4", (7, 5))
A100 = GpuDescriptor("NVIDIA A100-SXM4-40GB", (8, 0))
SHA = "ab" * 32
ONE_PROFILE = {"buckets": (64,), "min_batch": 1, "opt_batch": 1, "max_batch": 2}


# ---------------------------------------------------------------------------------------------
# keys


def test_key_names_gpu_library_version_precision_and_onnx() -> None:
    key = engine_key(SHA, "tensorrt_rtx", "1.7.1.116", BuildOptions(), L4)
    assert key.startswith(f"nvidia-l4-sm89-tensorrt_rtx-1.7.1.116-fp16-{SHA[:12]}-")
    assert key == engine_key(SHA, "tensorrt_rtx", "1.7.1.116", BuildOptions(), GpuDescriptor("NVIDIA L4", (8, 9)))
    aot = engine_key(SHA, "tensorrt_rtx", "1.7.1.116", BuildOptions(targets=("sm75", "sm89")), None)
    assert aot.startswith("aot-sm75-sm89-tensorrt_rtx-")
    assert engine_key(SHA, "tensorrt_rtx", "1.7.1.116", BuildOptions(), None).startswith("aot-default-")


def test_key_changes_with_everything_that_changes_the_engine() -> None:
    base = BuildOptions()
    variants = [
        engine_key(SHA, "tensorrt", "10.13.0", base, L4),
        engine_key(SHA, "tensorrt", "10.13.0", base, T4),
        engine_key(SHA, "tensorrt", "10.13.0", base, GpuDescriptor("NVIDIA A10G", (8, 6))),
        engine_key(SHA, "tensorrt", "10.13.0", base, GpuDescriptor("NVIDIA L4 ", (8, 9))),  # other name, same sm
        engine_key(SHA, "tensorrt", "10.14.1", base, L4),
        engine_key(SHA, "tensorrt_rtx", "10.13.0", base, L4),
        engine_key(SHA, "tensorrt", "10.13.0", replace(base, precision="fp32"), L4),
        engine_key("cd" * 32, "tensorrt", "10.13.0", base, L4),
        engine_key(SHA, "tensorrt", "10.13.0", replace(base, buckets=(128, 384)), L4),
        engine_key(SHA, "tensorrt", "10.13.0", replace(base, max_batch=128), L4),
        engine_key(SHA, "tensorrt_rtx", "10.13.0", replace(base, targets=("sm89",)), L4),
    ]
    assert len(set(variants)) == len(variants)


def test_key_ignores_how_the_engine_is_built() -> None:
    base = BuildOptions(library="tensorrt")
    same = replace(base, library="auto", workspace_mib=1024, timing_cache="/tmp/t.cache", verbose=True)
    assert engine_key(SHA, "tensorrt", "10.13.0", base, L4) == engine_key(SHA, "tensorrt", "10.13.0", same, L4)


def test_engine_location_local_and_gcs(tmp_path: Path) -> None:
    onnx = tmp_path / "minilm-bundle" / "model.onnx"
    assert engine_location(tmp_path / "c", onnx, "KEY") == str(tmp_path / "c" / "engines" / "minilm-bundle-KEY.engine")
    assert engine_location("gs://b/cache/", onnx, "KEY") == "gs://b/cache/engines/minilm-bundle-KEY.engine"


# ---------------------------------------------------------------------------------------------
# ensure_engine: a real TensorRT-RTX build for an injected GPU, then cache hits


@pytest.fixture(scope="session")
def shared_onnx(model_dir: Path, test_cache: Path) -> Path:
    from trt_handler.engines.export import bundle_onnx_path, resolve_model_bundle

    return bundle_onnx_path(resolve_model_bundle(model_dir, test_cache))


def test_ensure_engine_builds_for_the_gpu_then_hits(shared_onnx: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorrt_rtx")
    options = BuildOptions(library="tensorrt_rtx", precision="fp32", **ONE_PROFILE)
    path = ensure_engine(shared_onnx, tmp_path, options, gpu=L4)
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert Path(path).stat().st_size == sidecar["engine_bytes"]
    assert sidecar["targets"] == ["sm89"]  # built for exactly this GPU's architecture
    assert "nvidia-l4-sm89-tensorrt_rtx-" in Path(path).name

    def no_build(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cache hit must not build")

    monkeypatch.setattr(engine_cache, "build_serialized", no_build)
    assert ensure_engine(shared_onnx, tmp_path, options, gpu=L4) == path
    with pytest.raises(AssertionError, match="must not build"):
        ensure_engine(shared_onnx, tmp_path, options, gpu=A100)  # another GPU is another engine
    with pytest.raises(ValueError, match="sm75 .* cannot run FP32"):
        ensure_engine(shared_onnx, tmp_path, options, gpu=T4)  # T4 engines from TensorRT-RTX must be fp16


def test_a_damaged_cached_engine_is_rebuilt_not_served(shared_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    options = BuildOptions(library="tensorrt_rtx", precision="fp32", targets=("sm89",), **ONE_PROFILE)  # as ensure_engine
    path, first = engine_cache.build_into_cache(shared_onnx, tmp_path, options, gpu=L4)
    whole = Path(path).read_bytes()
    assert first["engine_bytes"] == len(whole) and first["engine_sha256"] == hashlib.sha256(whole).hexdigest()
    assert engine_cache.build_into_cache(shared_onnx, tmp_path, options, gpu=L4)[1]["cache_hit"] is True

    Path(path).write_bytes(whole[: len(whole) // 2])  # a truncated upload or copy
    assert ensure_engine(shared_onnx, tmp_path, options, gpu=L4) == path
    rebuilt = Path(path).read_bytes()
    side = json.loads(Path(f"{path}.json").read_text())
    assert len(rebuilt) == side["engine_bytes"] and hashlib.sha256(rebuilt).hexdigest() == side["engine_sha256"]
    assert side["built_at"] and "cache_hit" not in side

    damaged = bytearray(rebuilt)
    damaged[len(damaged) // 2] ^= 0xFF  # same size, one flipped byte
    Path(path).write_bytes(bytes(damaged))
    again_path, again = engine_cache.build_into_cache(shared_onnx, tmp_path, options, gpu=L4)
    assert again_path == path and "cache_hit" not in again  # rebuilt, not served
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == again["engine_sha256"]


def test_a_sidecar_that_is_not_json_is_a_miss(shared_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorrt_rtx")
    calls: list[str] = []
    monkeypatch.setattr(engine_cache, "build_serialized", _fake_build(calls))
    options = BuildOptions(library="tensorrt_rtx", **ONE_PROFILE)
    path = Path(ensure_engine(shared_onnx, tmp_path, options, gpu=L4))
    Path(f"{path}.json").write_text("{not json")
    assert Path(ensure_engine(shared_onnx, tmp_path, options, gpu=L4)) == path
    assert len(calls) == 2 and json.loads(Path(f"{path}.json").read_text())["engine_bytes"] == 600


def test_ensure_engine_rejects_targets_without_this_gpu(shared_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    options = BuildOptions(library="tensorrt_rtx", targets=("sm75",))
    with pytest.raises(ValueError, match=r"do not include this GPU \(NVIDIA L4, sm89\); add sm89"):
        ensure_engine(shared_onnx, tmp_path, options, gpu=L4)


def test_ensure_engine_without_a_gpu_says_what_to_do(shared_onnx: Path, tmp_path: Path) -> None:
    from trt_handler.engines import cuda_runtime

    if cuda_runtime.unavailable_reason() is None:
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match=r"none is usable here .*Fix: .*--targets"):
        ensure_engine(shared_onnx, tmp_path, BuildOptions(library="tensorrt_rtx"))


# ---------------------------------------------------------------------------------------------
# stores


def _fake_build(calls: list[str]) -> Any:
    def build(onnx_path: Any, options: BuildOptions, **kwargs: Any) -> tuple[bytes, dict[str, Any]]:
        calls.append(str(options.targets))
        data = b"ENGINE" * 100
        return data, {"library": "tensorrt_rtx", "engine_bytes": len(data), "engine_sha256": hashlib.sha256(data).hexdigest(),
                      "targets": list(options.targets)}

    return build


def test_gcs_cache_stores_then_hits(gcs_emulator: Any, shared_onnx: Path,  # noqa: F811
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorrt_rtx")
    from apache_beam.io.filesystems import FileSystems

    calls: list[str] = []
    monkeypatch.setattr(engine_cache, "build_serialized", _fake_build(calls))
    cache = gcs_emulator.url("engine-cache")
    onnx = gcs_emulator.upload(shared_onnx, "bundles/minilm/model.onnx")  # workers get the ONNX from GCS too
    options = BuildOptions(library="tensorrt_rtx", **ONE_PROFILE)
    path = ensure_engine(onnx, cache, options, gpu=L4)
    rtx = pytest.importorskip("tensorrt_rtx")
    key = engine_key(onnx_sha256(shared_onnx), "tensorrt_rtx", rtx.__version__, replace(options, targets=("sm89",)), L4)
    assert path == f"{cache}/engines/minilm-{key}.engine"  # keyed by the ONNX's content, named by its folder
    with FileSystems.open(path) as f:
        assert f.read() == b"ENGINE" * 100
    with FileSystems.open(path + ".json") as f:
        assert json.loads(f.read())["engine"] == path.rsplit("/", 1)[-1]
    assert ensure_engine(onnx, cache, options, gpu=L4) == path
    assert calls == ["('sm89',)"]  # built once


def test_concurrent_local_writers_leave_a_whole_engine(tmp_path: Path) -> None:
    path = tmp_path / "engines" / "e.engine"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=write_engine_files, args=(path, p, {"writer": i})) for i, p in enumerate(payloads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_bytes() in payloads  # one writer's engine, never a mix or a half
    assert json.loads(Path(f"{path}.json").read_text())["writer"] in range(8)
    assert sorted(p.name for p in path.parent.iterdir()) == ["e.engine", "e.engine.json"]  # no temp files left


def test_an_engine_without_its_sidecar_is_a_miss(shared_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorrt_rtx")
    calls: list[str] = []
    monkeypatch.setattr(engine_cache, "build_serialized", _fake_build(calls))
    options = BuildOptions(library="tensorrt_rtx", **ONE_PROFILE)
    path = Path(ensure_engine(shared_onnx, tmp_path, options, gpu=L4))
    Path(f"{path}.json").unlink()  # e.g. a writer died between the two renames
    assert Path(ensure_engine(shared_onnx, tmp_path, options, gpu=L4)) == path
    assert len(calls) == 2 and Path(f"{path}.json").is_file()


def test_processes_on_one_worker_build_a_missing_engine_once(shared_onnx: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorrt_rtx")
    calls: list[str] = []
    fake = _fake_build(calls)

    def slow_build(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # long enough for every other thread to reach the lock
        return fake(*args, **kwargs)

    monkeypatch.setattr(engine_cache, "build_serialized", slow_build)
    options = BuildOptions(library="tensorrt_rtx", **ONE_PROFILE)
    paths: list[str] = []
    threads = [threading.Thread(target=lambda: paths.append(ensure_engine(shared_onnx, tmp_path, options, gpu=L4)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 4 and len(set(paths)) == 1
    assert len(calls) == 1

"""ONNX -> serialized TensorRT / TensorRT-RTX engine, with a JSON sidecar that says what was built.

Two libraries, one recipe (docs/engines.md says which to use when):

* ``tensorrt_rtx`` builds ahead of time on any machine, GPU or not, for the GPU architectures
  named by ``targets`` (default: Ampere and later, not Turing/T4 and not Hopper/H100).
* ``tensorrt`` (TensorRT >= 10, NGC containers) builds on the GPU it will run on.

Precision comes from the network's types, not from builder flags: ``fp16`` converts the ONNX to
float16 (onnxconverter-common, int32 inputs and float32 outputs kept) and builds a strongly typed
network; ``fp32`` builds the ONNX as is. TensorRT-RTX is always strongly typed, and TensorRT 11
removed the FP16/INT8 builder flags, so this is the one recipe that works for all three. ``int8``
is the exception: post-training calibration (IInt8EntropyCalibrator2 on SQuAD windows) exists
only in TensorRT 10's weakly typed mode, so it builds the fp32 ONNX with the FP16 and INT8 flags.

One optimization profile per sequence bucket (:func:`trt_handler.engines.profiles.profiles_for_buckets`),
the same ranges on all three inputs, so the handlers can run short batches on short kernels.

CLI (``python -m trt_handler.engines.build --help``, console script ``trt-qa-engine``)::

    python -m trt_handler.engines.build --onnx model.onnx --output model.engine --targets sm75,sm89
    python -m trt_handler.engines.build --model MODEL --cache-dir cache        # prints the engine's path
    python -m trt_handler.engines.build --bert-large-random --cache-dir cache --vocab vocab.txt
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from trt_handler.qa.batching import DEFAULT_BUCKETS, pad_windows, validate_buckets
from trt_handler.engines.profiles import ProfileSpec, profiles_for_buckets
from trt_handler.qa.types import INPUT_NAMES, OUTPUT_NAMES, ModelBatch
from trt_handler.engines.library import (
    LIBRARIES,
    GpuDescriptor,
    check_engine_bytes,
    library_name,
    library_version,
    load_trt,
    local_gpu,
    make_logger,
)

__all__ = [
    "BERT_LARGE",
    "PRECISIONS",
    "BuildError",
    "BuildOptions",
    "build_engine",
    "build_serialized",
    "calibration_batches",
    "check_engine_bytes",
    "main",
    "onnx_sha256",
    "tokenizer_from_vocab",
    "write_engine_files",
]

LOGGER = logging.getLogger(__name__)

SIDECAR_FORMAT = 1
PRECISIONS: tuple[str, ...] = ("fp16", "fp32", "int8")
BERT_LARGE: dict[str, int] = {"num_layers": 24, "hidden": 1024, "heads": 16, "intermediate": 4096}
_ONNX_FIX = "Fix: export the model with `python -m trt_handler.engines.export --model M --cache-dir C`."
_QDQ_FIX = (
    "quantize explicitly instead: insert Q/DQ nodes into the ONNX (NVIDIA ModelOpt, "
    "`python -m modelopt.onnx.quantization --onnx_path model.onnx --quantize_mode int8`) and build that "
    "ONNX with --precision fp32, which keeps the Q/DQ types (strongly typed)"
)


class BuildError(RuntimeError):
    """The ONNX could not be turned into an engine; the message says why and what to do."""


def _normalize_target(text: str) -> str:
    """"sm75" from "sm75", "SM_75", "7.5" or "75"; "current" stays (build for this machine's GPU)."""
    t = text.strip().lower().replace("_", "")
    if t == "current":
        return t
    m = re.fullmatch(r"(?:sm)?(\d{1,2})\.?(\d)", t)
    if not m:
        raise ValueError(f"target {text!r} is not a compute capability; write e.g. sm75 (T4) or sm89 (L4)")
    return f"sm{m.group(1)}{m.group(2)}"


@dataclass(frozen=True)
class BuildOptions:
    """What to build. Fields that change the engine's bytes are in :meth:`key_fields`; the rest
    (library choice "auto", caches, logging) only change how it is built.

    Attributes:
        library: "auto" (tensorrt if importable, else tensorrt_rtx), "tensorrt" or "tensorrt_rtx".
        precision: "fp16" (default), "fp32" or "int8" (TensorRT 10 only, needs calibration data).
        buckets: sequence-length buckets; one optimization profile each.
        min_batch, opt_batch, max_batch: batch range of every profile.
        targets: TensorRT-RTX compute capabilities ("sm75", "sm89", ...); () = the library default.
        workspace_mib: builder workspace limit; None = the library default (all GPU memory).
        timing_cache: TensorRT timing-cache file, loaded if present and saved after the build.
        calibration_data: SQuAD JSON/JSONL whose windows calibrate INT8.
        calibration_cache: INT8 calibration cache file (read if present, written after).
        calibration_batches: at most this many calibration batches (of opt_batch windows).
        tokenizer: folder with tokenizer files for calibration; default: the ONNX's folder.
    """

    library: str = "auto"
    precision: str = "fp16"
    buckets: tuple[int, ...] = tuple(DEFAULT_BUCKETS)
    min_batch: int = 1
    opt_batch: int = 16
    max_batch: int = 64
    targets: tuple[str, ...] = ()
    workspace_mib: int | None = None
    timing_cache: str | None = None
    calibration_data: str | None = None
    calibration_cache: str | None = None
    calibration_batches: int = 32
    tokenizer: str | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "buckets", tuple(validate_buckets(self.buckets)))
        object.__setattr__(self, "targets", tuple(dict.fromkeys(_normalize_target(t) for t in self.targets)))
        if self.library not in ("auto", *LIBRARIES):
            raise ValueError(f"library must be auto, tensorrt or tensorrt_rtx, got {self.library!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        self.profiles()  # ProfileSpec checks 1 <= min <= opt <= max
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise ValueError(f"workspace_mib must be a positive number of MiB, got {self.workspace_mib}")
        if self.calibration_batches < 1:
            raise ValueError(f"calibration_batches must be at least 1, got {self.calibration_batches}")
        if "current" in self.targets and len(self.targets) > 1:
            raise ValueError("target 'current' (this machine's GPU) cannot be combined with other targets")
        self.check_library(self.library)

    def check_library(self, library: str) -> None:
        """Raise ValueError when these options cannot be built with ``library`` (a resolved name or auto)."""
        if self.precision == "fp32" and "sm75" in self.targets:
            raise ValueError(
                "sm75 (T4, Turing) cannot run FP32 matrix multiplies in TensorRT-RTX; build sm75 engines "
                "with --precision fp16 (the default) or drop sm75 from --targets"
            )
        if library == "tensorrt" and self.targets:
            raise ValueError(
                "--targets is for TensorRT-RTX ahead-of-time builds; TensorRT builds for the GPU it runs on: "
                "drop --targets or use --library tensorrt_rtx"
            )
        if self.precision == "int8":
            if library == "tensorrt_rtx":
                raise ValueError(
                    "int8 PTQ needs TensorRT: TensorRT-RTX has no INT8 calibration; use --library tensorrt "
                    f"on the GPU (NGC container), or {_QDQ_FIX}"
                )
            if not (self.calibration_data or self.calibration_cache):
                raise ValueError(
                    "--precision int8 needs --calibration-data FILE (SQuAD JSON or JSONL) or an existing "
                    "--calibration-cache FILE"
                )
        elif self.calibration_data or self.calibration_cache:
            raise ValueError("--calibration-data/--calibration-cache apply to --precision int8 only")

    def profiles(self) -> list[ProfileSpec]:
        return profiles_for_buckets(self.buckets, self.min_batch, self.opt_batch, self.max_batch)

    def key_fields(self) -> dict[str, Any]:
        """The options that change the engine's bytes (engine_cache hashes these)."""
        out: dict[str, Any] = {
            "precision": self.precision,
            "profiles": [p.to_dict() for p in self.profiles()],
            "targets": list(self.targets),
        }
        if self.precision == "int8":
            out["calibration"] = [self.calibration_data, self.calibration_batches]
        return out


# --------------------------------------------------------------------------------------------
# ONNX


def onnx_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of the ONNX file, then of each external-data file it names (sorted), if any.

    For a self-contained model.onnx this is the plain file hash (as export.json records it); the
    external-data part keeps the cache key honest for models whose weights live beside the graph.
    Memoized per (path, size, mtime), since a build and its cache key both need it.
    """
    p = Path(path).resolve()
    st = p.stat()
    return _onnx_sha256(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _onnx_sha256(path: str, size: int, mtime_ns: int) -> str:
    import onnx

    p = Path(path)
    h = hashlib.sha256()
    _hash_file(h, p)
    model = onnx.load(str(p), load_external_data=False)
    locations = sorted(
        {
            e.value
            for t in model.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data
            if e.key == "location"
        }
    )
    for loc in locations:
        _hash_file(h, p.parent / loc)
    return h.hexdigest()


def _hash_file(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def _fp16_onnx(src: Path, out_dir: Path) -> Path:
    """The ONNX with float16 weights and math, int32 inputs and float32 outputs kept."""
    import onnx
    from onnxconverter_common import float16  # type: ignore[import-untyped]

    model = onnx.load(str(src))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model16 = float16.convert_float_to_float16(model, keep_io_types=True)
    if caught:
        LOGGER.info("fp16 conversion clamped %d constants to the float16 range", len(caught))
    out = out_dir / "model.fp16.onnx"
    onnx.save_model(
        model16, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
        location=out.name + ".data", size_threshold=1024,
    )
    return out


# --------------------------------------------------------------------------------------------
# network, profiles, config


def _dtype_name(trt: ModuleType, dtype: Any) -> str:
    try:
        import numpy as np

        return str(np.dtype(trt.nptype(dtype)).name)
    except (TypeError, ValueError, AttributeError):
        return str(getattr(dtype, "name", dtype)).lower()


def _parse(trt: ModuleType, builder: Any, path: Path, source: Path, strongly_typed: bool, logger: Any) -> tuple[Any, Any]:
    """(network, parser); the parser owns the weights and must outlive the build."""
    flags = 0
    strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and strong is not None:
        flags |= 1 << int(strong)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors[-3:]
        raise BuildError(f"the ONNX parser rejected {source}: {'; '.join(errors[:5])}. {_ONNX_FIX}")
    return network, parser


def _io(trt: ModuleType, tensors: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"name": t.name, "dtype": _dtype_name(trt, t.dtype), "shape": list(t.shape)} for t in tensors]


def _check_io(trt: ModuleType, network: Any, source: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The network's inputs and outputs, checked against what the QA features and handlers use."""
    inputs = _io(trt, [network.get_input(i) for i in range(network.num_inputs)])
    outputs = _io(trt, [network.get_output(i) for i in range(network.num_outputs)])
    want = [(INPUT_NAMES, inputs, "int32"), (OUTPUT_NAMES, outputs, "float32")]
    for names, got, dtype in want:
        found = {t["name"]: t for t in got}
        bad = [t for n, t in found.items() if t["dtype"] != dtype or len(t["shape"]) != 2]
        if set(found) != set(names) or bad:
            raise BuildError(
                f"{source} has tensors {[(t['name'], t['dtype'], t['shape']) for t in got]}; the QA engine needs "
                f"exactly {', '.join(names)} as {dtype} [batch, seq]. {_ONNX_FIX}"
            )
    return inputs, outputs


def _add_profiles(builder: Any, config: Any, profiles: Sequence[ProfileSpec]) -> list[Any]:
    objs = []
    for spec in profiles:
        profile = builder.create_optimization_profile()
        for name in INPUT_NAMES:
            profile.set_shape(name, *spec.shapes())
        if config.add_optimization_profile(profile) < 0:
            raise BuildError(f"TensorRT rejected the optimization profile {spec}; check --buckets and --batch")
        objs.append(profile)
    return objs


def _set_targets(trt: ModuleType, config: Any, targets: Sequence[str]) -> None:
    """TensorRT-RTX's target GPU architectures: ``num_compute_capabilities`` then one per index."""
    if not targets:
        return
    known = {name.lower(): member for name, member in trt.ComputeCapability.__members__.items()}
    supported = sorted(n for n in known if n.startswith("sm"))
    missing = [t for t in targets if t not in known]
    if missing:
        raise BuildError(
            f"{library_name(trt)} {library_version(trt)} cannot target {', '.join(missing)}; it supports "
            f"{', '.join(supported)} (and 'current'). Hopper (sm90, H100) and sm100 need TensorRT: "
            "use --library tensorrt on that GPU."
        )
    config.num_compute_capabilities = len(targets)
    for i, t in enumerate(targets):
        if not config.set_compute_capability(known[t], i):
            raise BuildError(f"TensorRT-RTX refused target {t} at index {i}")


def _load_timing_cache(config: Any, path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    p = Path(path)
    data = p.read_bytes() if p.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)
    return {"path": str(p), "loaded_bytes": len(data)}


def _save_timing_cache(config: Any, info: dict[str, Any] | None) -> None:
    if info is None or "skipped" in info:
        return
    cache = config.get_timing_cache()
    data = bytes(cache.serialize()) if cache is not None else b""
    if data:
        _atomic_write(Path(info["path"]), data)
    info["saved_bytes"] = len(data)


# --------------------------------------------------------------------------------------------
# INT8 calibration (TensorRT 10)


def calibration_batches(
    data: str, tokenizer: str, *, batch_size: int, seq_len: int, max_batches: int
) -> Iterator[ModelBatch]:
    """[batch_size, seq_len] int32 batches of real SQuAD windows from ``data``, in file order.

    Windows are made exactly as the pipeline makes them (WindowMaker), so INT8 ranges are measured
    on the token distributions the engine will see.
    """
    from trt_handler.qa.reading import load_examples
    from trt_handler.qa.windows import FeatureConfig, WindowMaker, load_tokenizer

    query = min(64, seq_len // 4)
    config = FeatureConfig(max_seq_length=seq_len, doc_stride=min(128, (seq_len - query - 3) // 2), max_query_length=query)
    maker = WindowMaker(load_tokenizer(tokenizer), config)
    examples = load_examples(data)
    pending: list[Any] = []
    made = 0
    for start in range(0, len(examples), 64):  # tokenize lazily: a few batches need few questions
        for windows in maker.windows_many(examples[start:start + 64]):
            if not isinstance(windows, Exception):
                pending.extend(windows)
        while len(pending) >= batch_size and made < max_batches:
            yield pad_windows(pending[:batch_size], seq_len)
            del pending[:batch_size]
            made += 1
        if made >= max_batches:
            return
    if made == 0:
        raise BuildError(f"{data} gave fewer than {batch_size} windows; INT8 calibration needs at least one full batch")


def _make_calibrator(trt: ModuleType, batches: Sequence[ModelBatch], batch_size: int, cache_path: str | None) -> Any:
    """An IInt8EntropyCalibrator2 feeding ``batches`` to the GPU through cuda_runtime buffers
    (one device buffer per input, reused; ``close()`` frees them after the build)."""
    from trt_handler.engines import cuda_runtime

    base: Any = trt.IInt8EntropyCalibrator2
    pending = iter(batches)

    class SquadCalibrator(base):  # type: ignore[misc]
        def __init__(self) -> None:
            base.__init__(self)
            self.buffers: dict[str, Any] = {}
            self.count = 0

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            batch = next(pending, None)
            if batch is None:
                return None
            feed = batch.as_feed()
            rt = cuda_runtime.cudart()
            ptrs = []
            for name in names:
                host = feed[name]
                buf = self.buffers.get(name)
                if buf is None or buf.nbytes < host.nbytes:
                    if buf is not None:
                        buf.close()
                    buf = self.buffers[name] = cuda_runtime.DeviceBuffer(host.nbytes)
                kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
                cuda_runtime.check(rt.cudaMemcpy(buf.ptr, host.ctypes.data, host.nbytes, kind), "cudaMemcpy")
                ptrs.append(buf.ptr)
            self.count += 1
            return ptrs

        def read_calibration_cache(self) -> bytes | None:
            if cache_path and Path(cache_path).is_file():
                return Path(cache_path).read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_path:
                _atomic_write(Path(cache_path), bytes(cache))

        def close(self) -> None:
            for buf in self.buffers.values():
                buf.close()
            self.buffers.clear()

    return SquadCalibrator()


def _setup_int8(trt: ModuleType, config: Any, profiles: Sequence[Any], specs: Sequence[ProfileSpec],
                options: BuildOptions, onnx_path: Path) -> tuple[Any, dict[str, Any]]:
    """Weakly typed INT8 (+FP16 fallback) with entropy calibration on the largest bucket's profile."""
    flags = trt.BuilderFlag.__members__
    if not hasattr(trt, "IInt8EntropyCalibrator2") or "INT8" not in flags:
        raise BuildError(
            f"TensorRT {library_version(trt)} removed implicit INT8 (calibration and BuilderFlag.INT8); "
            f"{_QDQ_FIX}."
        )
    spec = specs[-1]  # TensorRT calibrates at the calibration profile's opt shape
    batches = [] if not options.calibration_data else list(calibration_batches(
        options.calibration_data, options.tokenizer or str(onnx_path.parent),
        batch_size=spec.opt_batch, seq_len=spec.opt_seq, max_batches=options.calibration_batches,
    ))
    calibrator = _make_calibrator(trt, batches, spec.opt_batch, options.calibration_cache)
    config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.FP16)
    config.int8_calibrator = calibrator
    config.set_calibration_profile(profiles[-1])
    info = {"data": options.calibration_data, "cache": options.calibration_cache,
            "batch": [spec.opt_batch, spec.opt_seq], "batches": len(batches)}
    return calibrator, info


# --------------------------------------------------------------------------------------------
# build


def _resolve(options: BuildOptions, module: ModuleType | None) -> tuple[ModuleType, str, str]:
    trt = module if module is not None else load_trt(options.library)
    name, version = library_name(trt), library_version(trt)
    options.check_library(name)
    return trt, name, version


def _io_from_engine(trt: ModuleType, data: bytes, logger: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """Inputs and outputs as the built engine reports them, when it can be deserialized here (GPU)."""
    ok, _ = check_engine_bytes(data, library_name(trt))
    if not ok:
        return None
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        return None
    ins: list[dict[str, Any]] = []
    outs: list[dict[str, Any]] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        entry = {"name": name, "dtype": _dtype_name(trt, engine.get_tensor_dtype(name)),
                 "shape": list(engine.get_tensor_shape(name))}
        is_input = getattr(engine.get_tensor_mode(name), "name", "") == "INPUT"
        (ins if is_input else outs).append(entry)
    return ins, outs


def build_serialized(
    onnx_path: str | os.PathLike[str],
    options: BuildOptions = BuildOptions(),
    *,
    module: ModuleType | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """(engine bytes, sidecar dict) for ``onnx_path``; nothing is written except caches.

    Raises BuildError (parse/build failures, wrong I/O), ValueError (options this library cannot
    build) and FileNotFoundError (no ONNX), each naming the fix.
    """
    t0 = time.perf_counter()
    trt, lib, version = _resolve(options, module)
    src = Path(onnx_path)
    if not src.is_file():
        raise FileNotFoundError(f"ONNX file {src} does not exist. {_ONNX_FIX}")
    gpu = local_gpu()
    logger = make_logger(trt, verbose=options.verbose)
    builder = trt.Builder(logger)
    specs = options.profiles()
    with tempfile.TemporaryDirectory(prefix="trt-qa-build-") as tmp:
        fp16 = options.precision == "fp16"
        net_onnx = _fp16_onnx(src, Path(tmp)) if fp16 else src
        network, parser = _parse(trt, builder, net_onnx, src, options.precision != "int8", logger)
        inputs, outputs = _check_io(trt, network, src)
        config, timing, calibrator, calibration = _configure(trt, lib, builder, options, specs, src)
        t_build = time.perf_counter()
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            if calibrator is not None:
                calibrator.close()
        build_seconds = time.perf_counter() - t_build
        if serialized is None:
            said = " | ".join(logger.errors[-5:]) or "no error was logged; rerun with --verbose"
            raise BuildError(f"{lib} {version} could not build an engine from {src}: {said}")
        data = bytes(serialized)
        _save_timing_cache(config, timing)
        del parser  # owns the weights the build read
    engine_io = _io_from_engine(trt, data, logger) if gpu is not None else None
    sidecar = _sidecar(
        lib=lib, version=version, options=options, src=src, data=data, gpu=gpu, fp16_network=fp16,
        io=engine_io or (inputs, outputs), io_source="engine" if engine_io else "network",
        timing=timing, calibration=calibration, build_seconds=build_seconds,
        total_seconds=time.perf_counter() - t0,
    )
    return data, sidecar


def _configure(trt: ModuleType, lib: str, builder: Any, options: BuildOptions, specs: Sequence[ProfileSpec],
               src: Path) -> tuple[Any, dict[str, Any] | None, Any, dict[str, Any] | None]:
    """(builder config, timing-cache info, INT8 calibrator, calibration info) for these options."""
    config = builder.create_builder_config()
    profiles = _add_profiles(builder, config, specs)
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if lib == "tensorrt_rtx":
        _set_targets(trt, config, options.targets)
    timing = _load_timing_cache(config, options.timing_cache) if lib == "tensorrt" else None
    if lib == "tensorrt_rtx" and options.timing_cache:
        timing = {"path": options.timing_cache, "skipped": "timing caches are no-ops in TensorRT-RTX"}
    if options.precision != "int8":
        return config, timing, None, None
    calibrator, calibration = _setup_int8(trt, config, profiles, specs, options, src)
    return config, timing, calibrator, calibration


def _sidecar(*, lib: str, version: str, options: BuildOptions, src: Path, data: bytes, gpu: GpuDescriptor | None,
             fp16_network: bool, io: tuple[list[dict[str, Any]], list[dict[str, Any]]], io_source: str,
             timing: dict[str, Any] | None, calibration: dict[str, Any] | None, build_seconds: float,
             total_seconds: float) -> dict[str, Any]:
    return {
        "format": SIDECAR_FORMAT,
        "library": lib,
        "library_version": version,
        "precision": options.precision,
        "strongly_typed": options.precision != "int8",
        "fp16_network": fp16_network,
        "targets": list(options.targets) if lib == "tensorrt_rtx" else [],
        "gpu": gpu.to_dict() if gpu is not None else None,
        "profiles": [p.to_dict() for p in options.profiles()],
        "onnx": str(src),
        "onnx_sha256": onnx_sha256(src),
        "inputs": io[0],
        "outputs": io[1],
        "io_source": io_source,
        "engine_bytes": len(data),
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "workspace_mib": options.workspace_mib,
        "timing_cache": timing,
        "calibration": calibration,
        "build_seconds": round(build_seconds, 3),
        "total_seconds": round(total_seconds, 3),
        "host": socket.gethostname(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()},
    }


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary sibling and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_engine_files(engine_path: str | os.PathLike[str], data: bytes, sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``<engine_path>`` and ``<engine_path>.json`` atomically (sidecar first, engine last,
    so an engine file never exists without its sidecar); returns the sidecar as written."""
    path = Path(engine_path)
    out = dict(sidecar, engine=path.name)
    _atomic_write(Path(f"{path}.json"), (json.dumps(out, indent=2, sort_keys=True) + "\n").encode())
    _atomic_write(path, data)
    return out


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    options: BuildOptions = BuildOptions(),
) -> dict[str, Any]:
    """Build ``onnx_path`` into ``engine_path`` (+ ``<engine_path>.json``); returns the sidecar."""
    data, sidecar = build_serialized(onnx_path, options)
    return write_engine_files(engine_path, data, sidecar)


# --------------------------------------------------------------------------------------------
# CLI


def tokenizer_from_vocab(vocab_file: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """A folder with a BERT WordPiece fast tokenizer (uncased) made from a vocab.txt; reused if present."""
    import transformers

    vocab, out = Path(vocab_file), Path(out_dir)
    if not vocab.is_file():
        raise FileNotFoundError(f"vocab file {vocab} does not exist; pass a BERT vocab.txt with --vocab")
    if (out / "tokenizer.json").is_file():
        return out
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        shutil.copy(vocab, Path(tmp) / "vocab.txt")
        # transformers 5 made BertTokenizer the fast one and kept BertTokenizerFast as an alias
        cls = getattr(transformers, "BertTokenizerFast", None) or transformers.BertTokenizer
        tokenizer = cls.from_pretrained(tmp, do_lower_case=True)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out))
    return out


def _ints(text: str, n: int | None = None) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if n is not None and len(values) != n:
        raise argparse.ArgumentTypeError(f"expected {n} comma-separated integers (min,opt,max), got {text!r}")
    return values


def _arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trt_handler.engines.build",
        description="Build a TensorRT or TensorRT-RTX engine (+ <engine>.json sidecar) for BERT SQuAD QA; "
        "prints the engine's path. See docs/engines.md.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", help="ONNX file to build (with --output)")
    src.add_argument("--model", help="checkpoint folder, hub id, model bundle or model.onnx; exported and "
                     "built into --cache-dir")
    src.add_argument("--bert-large-random", action="store_true",
                     help="build a BERT-large-shaped model (24 layers, hidden 1024, random weights); prints the build time")
    p.add_argument("--output", help="engine file to write (with --onnx)")
    p.add_argument("--cache-dir", default="cache", help="cache folder for --model/--bert-large-random (default: cache)")
    p.add_argument("--library", default="auto", choices=("auto", *LIBRARIES),
                   help="auto prefers tensorrt when importable (default: auto)")
    p.add_argument("--precision", default="fp16", choices=PRECISIONS, help="default: fp16")
    p.add_argument("--buckets", type=_ints, default=tuple(DEFAULT_BUCKETS),
                   help="sequence-length buckets, one profile each (default: 128,256,384)")
    p.add_argument("--batch", type=lambda s: _ints(s, 3), default=(1, 16, 64), help="min,opt,max batch (default: 1,16,64)")
    p.add_argument("--targets", type=lambda s: tuple(t for t in s.split(",") if t.strip()), default=(),
                   help="TensorRT-RTX GPU targets, e.g. sm75,sm89 (T4, L4); default: the library's (Ampere+)")
    p.add_argument("--workspace-mib", type=int, help="builder workspace limit in MiB")
    p.add_argument("--timing-cache", help="TensorRT timing cache file (loaded if present, saved after)")
    p.add_argument("--calibration-data", help="SQuAD JSON/JSONL for INT8 calibration (--precision int8)")
    p.add_argument("--calibration-cache", help="INT8 calibration cache file (read if present, written after)")
    p.add_argument("--calibration-batches", type=int, default=32, help="INT8 calibration batches (default: 32)")
    p.add_argument("--tokenizer", help="folder with tokenizer files (calibration; --bert-large-random vocab)")
    p.add_argument("--vocab", help="BERT vocab.txt for --bert-large-random when no --tokenizer is given")
    p.add_argument("--seed", type=int, default=0, help="random-weight seed for --bert-large-random")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache has the engine")
    p.add_argument("--verbose", action="store_true", help="log TensorRT's info messages; show tracebacks")
    return p


def _options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        library=args.library, precision=args.precision, buckets=args.buckets, min_batch=args.batch[0],
        opt_batch=args.batch[1], max_batch=args.batch[2], targets=args.targets, workspace_mib=args.workspace_mib,
        timing_cache=args.timing_cache, calibration_data=args.calibration_data,
        calibration_cache=args.calibration_cache, calibration_batches=args.calibration_batches,
        tokenizer=args.tokenizer, verbose=args.verbose,
    )


def _random_bert_bundle(args: argparse.Namespace, cache: Path) -> Path:
    from trt_handler.engines.export import export_random_bert

    if args.tokenizer:
        tokenizer = Path(args.tokenizer)
    elif args.vocab:
        digest = hashlib.sha256(Path(args.vocab).read_bytes()).hexdigest()[:12]
        tokenizer = tokenizer_from_vocab(args.vocab, cache / "tokenizers" / f"bert-uncased-{digest}")
    else:
        raise ValueError("--bert-large-random needs a vocabulary: pass --vocab path/to/bert-vocab.txt "
                         "(an uncased BERT WordPiece vocab) or --tokenizer DIR")
    return export_random_bert(
        cache / "onnx" / f"bert-large-random-seed{args.seed}", tokenizer, BERT_LARGE["num_layers"],
        BERT_LARGE["hidden"], BERT_LARGE["heads"], BERT_LARGE["intermediate"], seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _arg_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.onnx and not args.output:
        parser.error("--onnx needs --output ENGINE_FILE")
    if args.output and not args.onnx:
        parser.error("--output goes with --onnx; --model/--bert-large-random write into --cache-dir")
    try:
        options = _options(args)
        if args.onnx:
            sidecar = build_engine(args.onnx, args.output, options)
            path = args.output
        else:
            from trt_handler.engines.cache import build_into_cache
            from trt_handler.engines.export import bundle_onnx_path, resolve_model_bundle

            cache = Path(args.cache_dir)
            t0 = time.perf_counter()
            if args.model:
                bundle = resolve_model_bundle(args.model, cache)
            else:
                bundle = _random_bert_bundle(args, cache)
                print(f"BERT-large-shaped ONNX ready in {time.perf_counter() - t0:.1f} s: {bundle}", file=sys.stderr)
            options = replace(options, tokenizer=options.tokenizer or str(bundle))
            path, sidecar = build_into_cache(bundle_onnx_path(bundle), cache, options, force=args.force)
    except (RuntimeError, ValueError, FileNotFoundError, ModuleNotFoundError) as exc:  # BuildError included
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if sidecar.get("cache_hit"):
        print(f"engine already in the cache (built {sidecar.get('built_at')}; --force rebuilds)", file=sys.stderr)
    targets = ",".join(sidecar["targets"]) or ("library default" if sidecar["library"] == "tensorrt_rtx" else "this GPU")
    print(
        f"engine: {sidecar['library']} {sidecar['library_version']}, {sidecar['precision']}, targets {targets}, "
        f"{len(sidecar['profiles'])} profiles, {sidecar['engine_bytes'] / 2**20:.1f} MiB; "
        f"build took {sidecar['build_seconds']:.1f} s ({sidecar['total_seconds']:.1f} s with parsing/conversion)",
        file=sys.stderr,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

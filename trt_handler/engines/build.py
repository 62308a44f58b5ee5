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

The command line lives in :mod:`trt_handler.engines.build_cli` (``python -m trt_handler.engines.build``
still works: it runs that CLI) and INT8 calibration in :mod:`trt_handler.engines.calibration`; this
module is the builder only and imports neither the cache nor the CLI.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from trt_handler.engines.calibration import QDQ_FIX, CalibrationError, setup_int8
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
from trt_handler.engines.profiles import ProfileSpec, profiles_for_buckets
from trt_handler.engines.sidecar import atomic_write
from trt_handler.qa.batching import DEFAULT_BUCKETS, validate_buckets
from trt_handler.qa.types import INPUT_NAMES, OUTPUT_NAMES

__all__ = [
    "PRECISIONS",
    "BuildError",
    "BuildOptions",
    "build_engine",
    "build_serialized",
    "check_engine_bytes",
    "onnx_sha256",
    "write_engine_files",
]

LOGGER = logging.getLogger(__name__)

SIDECAR_FORMAT = 1
PRECISIONS: tuple[str, ...] = ("fp16", "fp32", "int8")
_ONNX_FIX = "Fix: export the model with `python -m trt_handler.engines.export --model M --cache-dir C`."


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
        min_batch, opt_batch, max_batch: batch range of every profile (max_batch caps the token-budget
            plan's per-profile max; default 192 = 64 x 384 tokens at 128).
        targets: TensorRT-RTX compute capabilities ("sm75", "sm89", ...); () = the library default.
        workspace_mib: builder workspace limit; None = the library default (all GPU memory).
        timing_cache: TensorRT timing-cache file, loaded if present and saved after the build.
        calibration_data: SQuAD JSON/JSONL whose windows calibrate INT8.
        calibration_cache: INT8 calibration cache file (read if present, written after).
        calibration_batches: at most this many calibration batches (of opt_batch windows).
        tokenizer: folder with tokenizer files for calibration; default: the ONNX's folder.
        max_batches: per-bucket max batch (one per bucket, e.g. from
            :func:`~trt_handler.engines.profiles.token_budget_profiles`); () = ``max_batch`` for all;
            None (the default) = the token-budget plan: each bucket gets ``token_budget`` (default
            64 x 384) tokens' worth of rows (a multiple of 8), at most ``max_batch``: the plan the
            handlers use without an engine.
            opt_batch is capped at each profile's max.
        token_budget: the token budget the per-bucket max batches came from (recorded only).
        version_compatible: full TensorRT only: VERSION_COMPATIBLE + EXCLUDE_LEAN_RUNTIME, so the
            engine runs on later TensorRT versions of its major and on the lean runtime
            (``library="tensorrt_lean"``); TensorRT-RTX refuses it.
    """

    library: str = "auto"
    precision: str = "fp16"
    buckets: tuple[int, ...] = tuple(DEFAULT_BUCKETS)
    min_batch: int = 1
    opt_batch: int = 16
    max_batch: int = 192
    targets: tuple[str, ...] = ()
    workspace_mib: int | None = None
    timing_cache: str | None = None
    calibration_data: str | None = None
    calibration_cache: str | None = None
    calibration_batches: int = 32
    tokenizer: str | None = None
    verbose: bool = False
    max_batches: tuple[int, ...] | None = None
    token_budget: int | None = None
    version_compatible: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "buckets", tuple(validate_buckets(self.buckets)))
        object.__setattr__(self, "targets", tuple(dict.fromkeys(_normalize_target(t) for t in self.targets)))
        if self.max_batches is None:  # the default plan: a constant token budget per profile
            from trt_handler.engines.profiles import DEFAULT_TOKEN_BUDGET

            object.__setattr__(self, "token_budget", self.token_budget or DEFAULT_TOKEN_BUDGET)
        else:
            object.__setattr__(self, "max_batches", tuple(int(b) for b in self.max_batches))
        if self.max_batches and len(self.max_batches) != len(self.buckets):
            raise ValueError(
                f"max_batches needs one max batch per bucket ({len(self.buckets)}), got {len(self.max_batches)}"
            )
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
        if self.version_compatible and library == "tensorrt_rtx":
            raise ValueError(
                "--version-compatible is a full TensorRT flag (VERSION_COMPATIBLE + EXCLUDE_LEAN_RUNTIME, for the "
                "lean runtime); TensorRT-RTX engines are not version-compatible: use --library tensorrt on the GPU "
                "(NGC container), or drop --version-compatible"
            )
        if self.version_compatible and self.precision == "int8":
            raise ValueError("--version-compatible cannot be combined with --precision int8 (weakly typed INT8)")
        if library == "tensorrt" and self.targets:
            raise ValueError(
                "--targets is for TensorRT-RTX ahead-of-time builds; TensorRT builds for the GPU it runs on: "
                "drop --targets or use --library tensorrt_rtx"
            )
        if self.precision == "int8":
            if library == "tensorrt_rtx":
                raise ValueError(
                    "int8 PTQ needs TensorRT: TensorRT-RTX has no INT8 calibration; use --library tensorrt "
                    f"on the GPU (NGC container), or {QDQ_FIX}"
                )
            if not (self.calibration_data or self.calibration_cache):
                raise ValueError(
                    "--precision int8 needs --calibration-data FILE (SQuAD JSON or JSONL) or an existing "
                    "--calibration-cache FILE"
                )
        elif self.calibration_data or self.calibration_cache:
            raise ValueError("--calibration-data/--calibration-cache apply to --precision int8 only")

    def profiles(self) -> list[ProfileSpec]:
        if self.max_batches is None:
            from trt_handler.engines.profiles import token_budget_profiles

            assert self.token_budget is not None  # set in __post_init__
            planned = token_budget_profiles(buckets=self.buckets, token_budget=self.token_budget,
                                            max_seq=max(self.buckets), min_batch=self.min_batch, opt_batch=self.opt_batch)
            return [ProfileSpec(p.min_batch, min(p.opt_batch, self.max_batch), min(p.max_batch, self.max_batch),
                                p.min_seq, p.opt_seq, p.max_seq) for p in planned]
        if not self.max_batches:
            return profiles_for_buckets(self.buckets, self.min_batch, self.opt_batch, self.max_batch)
        out, lower = [], 1
        for bucket, rows in zip(self.buckets, self.max_batches):
            out.append(ProfileSpec(self.min_batch, min(self.opt_batch, rows), rows, lower, bucket, bucket))
            lower = bucket + 1
        return out

    def key_fields(self) -> dict[str, Any]:
        """The options that change the engine's bytes (engine_cache hashes these)."""
        out: dict[str, Any] = {
            "precision": self.precision,
            "profiles": [p.to_dict() for p in self.profiles()],
            "targets": list(self.targets),
        }
        if self.version_compatible:
            out["version_compatible"] = True
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
        atomic_write(Path(info["path"]), data)
    info["saved_bytes"] = len(data)


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
    if options.version_compatible:
        _set_version_compatible(trt, config)
    timing = _load_timing_cache(config, options.timing_cache) if lib == "tensorrt" else None
    if lib == "tensorrt_rtx" and options.timing_cache:
        timing = {"path": options.timing_cache, "skipped": "timing caches are no-ops in TensorRT-RTX"}
    if options.precision != "int8":
        return config, timing, None, None
    try:
        calibrator, calibration = setup_int8(
            trt, config, profiles, specs, data=options.calibration_data,
            tokenizer=options.tokenizer or str(src.parent), cache=options.calibration_cache,
            max_batches=options.calibration_batches,
        )
    except CalibrationError as exc:
        raise BuildError(str(exc)) from exc
    return config, timing, calibrator, calibration


def _set_version_compatible(trt: ModuleType, config: Any) -> None:
    """VERSION_COMPATIBLE + EXCLUDE_LEAN_RUNTIME: the engine runs on later TensorRT of its major
    version and on the lean runtime, which the worker installs itself (tensorrt-lean)."""
    flags = trt.BuilderFlag.__members__
    missing = [f for f in ("VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME") if f not in flags]
    if missing:
        raise BuildError(
            f"{library_name(trt)} {library_version(trt)} has no BuilderFlag {' or '.join(missing)}; "
            "--version-compatible needs full TensorRT >= 8.6"
        )
    config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)


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
        "version_compatible": options.version_compatible,
        "token_budget": options.token_budget,
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


def write_engine_files(engine_path: str | os.PathLike[str], data: bytes, sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``<engine_path>`` and ``<engine_path>.json`` atomically (sidecar first, engine last,
    so an engine file never exists without its sidecar); returns the sidecar as written."""
    path = Path(engine_path)
    out = dict(sidecar, engine=path.name)
    atomic_write(Path(f"{path}.json"), (json.dumps(out, indent=2, sort_keys=True) + "\n").encode())
    atomic_write(path, data)
    return out


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    options: BuildOptions = BuildOptions(),
) -> dict[str, Any]:
    """Build ``onnx_path`` into ``engine_path`` (+ ``<engine_path>.json``); returns the sidecar."""
    data, sidecar = build_serialized(onnx_path, options)
    return write_engine_files(engine_path, data, sidecar)


if __name__ == "__main__":  # `python -m trt_handler.engines.build` is the CLI's historical name
    from trt_handler.engines.build_cli import main

    sys.exit(main())
